// Lesson 31: modern setup flags
//
// io_uring_setup(2) takes flags that change how a ring works, and the ones added from Linux
// 5.18 to 6.1 are what a modern program sets (lesson 37, coming later, measures them):
//   SUBMIT_ALL (5.18)     a bad SQE in a batch no longer stops the submit;
//   COOP_TASKRUN (5.19)   completion work sends no IPI to a task running in user space;
//   TASKRUN_FLAG (5.19)   IORING_SQ_TASKRUN in the SQ ring's flags says such work is pending;
//   SINGLE_ISSUER (6.0)   one thread submits, and the kernel holds you to it;
//   DEFER_TASKRUN (6.1)   completion work runs only when that thread enters the kernel to get
//                         events: a completion can be done and still invisible in the CQ.
// And io_uring_register_ring_fd (5.18) lets io_uring_enter find the ring without an fd lookup.
//
// This lesson asks for each flag (and combinations the kernel refuses); sends a batch with a
// bad SQE in the middle with and without SUBMIT_ALL; watches where one completion shows up on
// four rings, and which rings wake a blocking recv(2) for it; has a second thread submit to
// single-issuer rings; and registers a ring fd, printing what liburing changes.
//
// Read next: man 2 io_uring_setup (IORING_SETUP_*), man 3 io_uring_get_events,
// man 3 io_uring_register_ring_fd, man 2 io_uring_enter (IORING_ENTER_REGISTERED_RING).

import Glibc
import CLiburing
import LabSupport
import LabNet
import Synchronization

_ = lessonArguments(usage: "lesson-31-modern-setup", max: 0)

// MARK: - 1. Flags granted and refused
//
// io_uring_queue_init_params returns 0 or -errno, and a refused ring does not exist. The kernel
// answers -EINVAL both to a flag it does not know (a kernel too old) and to a combination it
// rejects, so the two cannot be told apart by the answer: the last line asks for a flag no
// kernel has (bit 31). Each granted ring here is torn down at once.

let setupNames: [(UInt32, String)] = [
    (IORING_SETUP_SQPOLL, "SQPOLL"), (IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"), (IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"),
    (IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"), (IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"),
    (IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"), (1 << 31, "1<<31 (no such flag)"),
]
func names(_ flags: UInt32) -> String { setupNames.filter { flags & $0.0 != 0 }.map(\.1).joined(separator: "|") }

/// Ask for a ring with `flags`, print the answer, tear the ring down: the answer.
func tryFlags(_ flags: UInt32) -> Int32 {
    let ring = Ring.allocate(capacity: 1)
    defer { ring.deallocate() }
    ring.initialize(to: io_uring())
    var params = io_uring_params()
    params.flags = flags
    let ret = io_uring_queue_init_params(4, ring, &params)
    if ret != 0 && ret != -EINVAL { exitBecauseSetupFailed(ret, entries: 4) }  // -EPERM: io_uring is off here
    if ret == 0 { io_uring_queue_exit(ring) }
    print("  \(names(flags)) = \(describe(res: ret))" + (ret == 0 ? ", granted" : ", refused"))
    return ret
}

print("io_uring_queue_init_params with these IORING_SETUP_ flags:")
let (submitAll, coop, taskrunFlag) = (IORING_SETUP_SUBMIT_ALL, IORING_SETUP_COOP_TASKRUN, IORING_SETUP_TASKRUN_FLAG)
let (singleIssuer, deferTaskrun) = (IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN)
var needed: [(flags: UInt32, since: String, ret: Int32)] = []
for (flags, since) in [(submitAll, "5.18"), (coop, "5.19"), (taskrunFlag, ""), (coop | taskrunFlag, "5.19"), (singleIssuer, "6.0"),
                       (deferTaskrun, ""), (singleIssuer | deferTaskrun, "6.1"), (singleIssuer | deferTaskrun | taskrunFlag, "6.1"),
                       (IORING_SETUP_SQPOLL | coop, ""), (IORING_SETUP_SQPOLL | singleIssuer | deferTaskrun, ""), (1 << 31, "")] {
    needed.append((flags, since, tryFlags(flags)))
}
// The lesson needs every flag it uses; a kernel that refuses one is too old for the lesson.
for (flags, since, ret) in needed where !since.isEmpty && ret != 0 {
    skip("this kernel refused \(names(flags)) (\(describe(res: ret))): IORING_SETUP_ flags that need Linux \(since)")
}

/// A ring with `flags` (all granted above), torn down by the section that made it.
func ring(_ flags: UInt32) -> Ring {
    var params = io_uring_params()
    params.flags = flags
    return makeRing(entries: 8, params: &params)
}

func prepare(_ ring: Ring, _ userData: UInt64, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    let sqe = getSQE(ring)
    prep(sqe)
    io_uring_sqe_set_data64(sqe, userData)
}
/// Every CQE in the CQ now, without entering the kernel for them, sorted by user_data.
func reap(_ ring: Ring) -> [io_uring_cqe] {
    var cqes: [io_uring_cqe] = []
    var cqe: UnsafeMutablePointer<io_uring_cqe>?
    while io_uring_cq_ready(ring) > 0, io_uring_peek_cqe(ring, &cqe) == 0, let found = cqe {
        cqes.append(found.pointee)
        io_uring_cqe_seen(ring, found)
    }
    return cqes.sorted { $0.user_data < $1.user_data }
}

// MARK: - 2. SUBMIT_ALL: a bad SQE in the middle of a batch
//
// Three SQEs: a NOP, an SQE with opcode 255 (no kernel has it: the kernel fails it while
// taking it from the SQ, -EINVAL in its CQE) and a NOP. By default the kernel stops at the
// failed SQE: io_uring_enter returns how many it consumed, the bad one included, and the NOP
// after it stays in the SQ until the next submit (io_uring_sq_ready counts it). With
// IORING_SETUP_SUBMIT_ALL it goes on: all three are consumed. Every CQE of this section is
// posted during the submit itself (NOPs complete at once), so `reap` finds them without a wait.

print("a batch: NOP, an SQE with opcode 255 (which no kernel has), NOP")
for (flags, base) in [(UInt32(0), UInt64(3120)), (submitAll, 3130)] {
    let ring = ring(flags)
    prepare(ring, base + 1) { io_uring_prep_nop($0) }
    prepare(ring, base + 2) { io_uring_prep_rw(255, $0, -1, nil, 0, 0) }
    prepare(ring, base + 3) { io_uring_prep_nop($0) }
    let submitted = io_uring_submit(ring)
    print("\(flags == 0 ? "default ring" : "SUBMIT_ALL ring"): io_uring_submit = \(describe(res: submitted)), "
        + "\(io_uring_sq_ready(ring)) SQE left in the SQ (io_uring_sq_ready)")
    for cqe in reap(ring) { printCQE(cqe, "  CQE") }
    if io_uring_sq_ready(ring) > 0 {
        print("io_uring_submit again = \(describe(res: io_uring_submit(ring)))")
        for cqe in reap(ring) { printCQE(cqe, "  CQE") }
    }
    destroyRing(ring)
}

// MARK: - 3. Where a completion shows up: COOP_TASKRUN, TASKRUN_FLAG, DEFER_TASKRUN
//
// Most requests finish in two steps. The event (data arriving on a socket) happens in some
// other context, and the kernel queues "task work" for the task that owns the request; the
// task work finishes it (the recv copies the data) and posts the CQE. By default the kernel
// notifies the task as a signal would (TIF_NOTIFY_SIGNAL): a task asleep in a system call is
// woken, one running on another CPU gets an IPI, and the work runs when the task next returns
// from the kernel. COOP_TASKRUN drops only the IPI (section 4). DEFER_TASKRUN runs the work
// only when the task enters io_uring_enter to get events (io_uring_get_events, a wait).
// TASKRUN_FLAG sets IORING_SQ_TASKRUN in the SQ ring's flags while such work is pending.
//
// Each ring gets a recv on an empty socket (a socketpair(2), the other end ours), then this
// thread writes two bytes into the other end with send(2), which does not touch the ring: the
// recv's task work is queued during it. Then, without entering the kernel, we look: the SQ
// flags, io_uring_cq_ready (CQEs in the CQ), io_uring_peek_cqe. (On default and COOP_TASKRUN
// rings the work ran as send(2) returned: this thread wrote.) liburing 2.3's peek enters the
// kernel itself on IORING_SQ_TASKRUN (or an overflow, or on an IOPOLL ring), and otherwise
// returns -EAGAIN without a system call.

nonisolated(unsafe) var heldFds: [Int32] = []  // one thread only; Swift 6 wants a word for a global var
func stop(_ message: String) -> Never {
    for fd in heldFds { close(fd) }
    fail(message)
}

func sqFlags(_ ring: Ring) -> String {
    let flags = ring.pointee.sq.kflags.pointee
    let names = [(IORING_SQ_NEED_WAKEUP, "IORING_SQ_NEED_WAKEUP"), (IORING_SQ_CQ_OVERFLOW, "IORING_SQ_CQ_OVERFLOW"),
                 (IORING_SQ_TASKRUN, "IORING_SQ_TASKRUN")].filter { flags & $0.0 != 0 }.map(\.1)
    return flags == 0 ? "0" : "0x\(String(flags, radix: 16)) (\(names.joined(separator: "|")))"
}
/// io_uring_peek_cqe: "= 0: <the CQE>" (marked seen), or "= -EAGAIN (-11)".
func peek(_ ring: Ring) -> String {
    var cqe: UnsafeMutablePointer<io_uring_cqe>?
    let ret = io_uring_peek_cqe(ring, &cqe)
    guard ret == 0, let found = cqe else { return "io_uring_peek_cqe = \(describe(res: ret))" }
    defer { io_uring_cqe_seen(ring, found) }
    return "io_uring_peek_cqe = 0: " + format(found.pointee)
}

let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)  // every recv's, one at a time
print("a recv on an empty socket, then send(2) of 2 bytes into the other end, on four rings:")
for (flags, userData) in [(UInt32(0), UInt64(3141)), (coop | taskrunFlag, 3151), (singleIssuer | deferTaskrun, 3161), (singleIssuer | deferTaskrun | taskrunFlag, 3171)] {
    let ring = ring(flags)
    var pair: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { stop("socketpair: \(describe(res: -errno))") }
    heldFds += pair
    prepare(ring, userData) { io_uring_prep_recv($0, pair[0], buffer.baseAddress, buffer.count, 0) }
    checkSubmit(io_uring_submit(ring), 1)
    guard send(pair[1], "hi", 2, 0) == 2 else { stop("send: \(describe(res: -errno))") }
    print("\(flags == 0 ? "default" : names(flags)): after send(2): sq flags \(sqFlags(ring)), "
        + "CQ ready \(io_uring_cq_ready(ring)); \(peek(ring))")
    if flags & deferTaskrun != 0 && flags & taskrunFlag == 0 {
        // Done in the kernel but not in the CQ: the recv's work waits for us to get events.
        print("  io_uring_get_events = \(describe(res: io_uring_get_events(ring))); CQ ready \(io_uring_cq_ready(ring)); \(peek(ring))")
        // Once more, and this time a wait does it: io_uring_wait_cqe enters with GETEVENTS.
        prepare(ring, userData + 1) { io_uring_prep_recv($0, pair[0], buffer.baseAddress, buffer.count, 0) }
        checkSubmit(io_uring_submit(ring), 1)
        guard send(pair[1], "hi", 2, 0) == 2 else { stop("send: \(describe(res: -errno))") }
        print("  again, after send(2): CQ ready \(io_uring_cq_ready(ring)); \(peek(ring))")
        printCQE(waitCQE(ring, seconds: 5), "  io_uring_wait_cqe")
    }
    for fd in pair { close(fd) }
    heldFds = []
    destroyRing(ring)
}
buffer.deallocate()

// MARK: - 4. Who is woken: a blocking recv(2) while a completion arrives
//
// Section 3's notification also wakes a task asleep in a system call. A second thread blocks
// in recv(2) on a socketpair nobody writes to, 0.25 s at most (SO_RCVTIMEO), one ring at a
// time; this thread sends to that ring's recv once /proc/self/task/TID/syscall shows the other
// asleep in a call on that socket. Woken, a recv(2) with a time limit ends with EINTR (one
// without is restarted, unseen), on COOP_TASKRUN too. DEFER_TASKRUN notifies nobody: the
// recv(2) times out (EAGAIN). Why a fresh thread: destroying a ring notifies every task that
// used it the same way (its exit work queues task work, TWA_SIGNAL): old rings could wake us.

let sockets = Mutex<[(writer: Int32, idle: Int32)]>([]), blockerTid = Atomic<Int32>(0)
let step = Atomic<Int>(0)  // 2k + 1: the blocking thread is about to recv(2) for ring k; 2k + 2: it is back
let demo = [(UInt32(0), UInt64(3145)), (coop, 3155), (singleIssuer | deferTaskrun, 3165)]
print("recv(2) on another socket, 0.25 s limit, while a send(2) completes the ring's recv:")
let blocker = startThread { [demo] in
    var link = [CChar](repeating: 0, count: 64)
    let length = max(0, readlink("/proc/thread-self", &link, 63))  // "PID/task/TID"
    let text = String(decoding: link[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    blockerTid.store(Int32(text.split(separator: "/").last ?? "") ?? 0, ordering: .releasing)
    var rings: [Ring] = [], fds: [Int32] = []
    let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * demo.count, alignment: 16)
    for (k, (flags, userData)) in demo.enumerated() {
        let ring = ring(flags)
        rings.append(ring)
        var pair: [Int32] = [-1, -1], idle: [Int32] = [-1, -1], limit = timeval(tv_sec: 0, tv_usec: 250_000)
        let stream = Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, stream, 0, &pair) == 0, socketpair(AF_UNIX, stream, 0, &idle) == 0 else { fail("socketpair: \(describe(res: -errno))") }
        fds += pair + idle
        setsockopt(idle[0], SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        prepare(ring, userData) { io_uring_prep_recv($0, pair[0], buffers.baseAddress! + 16 * k, 16, 0) }
        checkSubmit(io_uring_submit(ring), 1)
        sockets.withLock { $0.append((pair[1], idle[0])) }
        step.store(2 * k + 1, ordering: .releasing)
        var byte: UInt8 = 0
        let got = recv(idle[0], &byte, 1, 0), error = errno
        step.store(2 * k + 2, ordering: .releasing)
        print("\(flags == 0 ? "default" : names(flags)): recv(2) = \(got < 0 ? describe(res: -error) : "\(got)"); "
            + "CQ ready \(io_uring_cq_ready(ring))")
        printCQE(waitCQE(ring, seconds: 5), "  io_uring_wait_cqe")
    }
    for ring in rings { destroyRing(ring) }
    for fd in fds { close(fd) }
    buffers.deallocate()
}
for k in 0..<demo.count {  // each wait 5 s at most; a send that comes late changes the output, not the end
    var tries = 0
    while step.load(ordering: .acquiring) < 2 * k + 1 && tries < 5000 { usleep(1000); tries += 1 }
    let (writer, idle) = sockets.withLock { $0[k] }, file = "/proc/self/task/\(blockerTid.load(ordering: .acquiring))/syscall"
    let asleep = "0x\(String(idle, radix: 16))"  // the file says "45 0x6 ..." for recvfrom(6, ...), asleep; "running" if not
    while step.load(ordering: .acquiring) == 2 * k + 1 && tries < 5000,
          readLines(file)?.first?.split(separator: " ").dropFirst().first.map(String.init) != asleep { usleep(1000); tries += 1 }
    _ = send(writer, "hi", 2, 0)
    while step.load(ordering: .acquiring) < 2 * k + 2 && tries < 5000 { usleep(1000); tries += 1 }
}
pthread_join(blocker, nil)

// MARK: - 5. SINGLE_ISSUER: a second thread submits
//
// IORING_SETUP_SINGLE_ISSUER promises one submitting thread (for the kernel's optimisations),
// and the kernel checks: io_uring_enter from any other thread that submits fails with
// -EEXIST, and so does its io_uring_register. Which thread is "the" issuer? The one that
// created the ring, from the start (io_uring_create sets ctx->submitter_task; only Linux 6.0's
// release candidates waited for the first submit). With DEFER_TASKRUN, getting events is the
// issuer's too: it runs the ring's task work, which only the issuer may. A register that
// succeeded is undone at once. The second thread's NOP is not lost: it stays in the SQ,
// and this thread's next submit takes it. The second thread uses the ring while this one waits
// in pthread_join, so the ring (liburing's struct is not thread-safe) has one user at a time.

/// A ring pointer for the second thread. Not Sendable (a raw pointer): `@unchecked` is our
/// word that the two threads take turns, joined by pthread_join.
struct RingForThread: @unchecked Sendable { let ring: Ring }

for (flags, userData) in [(singleIssuer, UInt64(3181)), (singleIssuer | deferTaskrun, 3191)] {
    let ring = ring(flags)
    let shared = RingForThread(ring: ring), answers = Mutex<[Int32]>([])
    let thread = startThread {
        prepare(shared.ring, userData) { io_uring_prep_nop($0) }
        let submit = io_uring_submit(shared.ring), events = io_uring_get_events(shared.ring)
        let registered = io_uring_register_ring_fd(shared.ring)
        if registered == 1 { _ = io_uring_unregister_ring_fd(shared.ring) }
        answers.withLock { $0 = [submit, events, registered] }
    }
    pthread_join(thread, nil)
    let said = answers.withLock { $0.map { describe(res: $0) } }
    print("\(names(flags)) ring, made by this thread, nothing submitted yet; a second thread's calls:")
    print("  io_uring_submit = \(said[0]), io_uring_get_events = \(said[1]), io_uring_register_ring_fd = \(said[2])")
    print("  this thread: io_uring_submit = \(describe(res: io_uring_submit(ring))) (the NOP the second thread left in the SQ)")
    printCQE(waitCQE(ring, seconds: 5), "  CQE")
    destroyRing(ring)
}

// MARK: - 6. io_uring_register_ring_fd
//
// Every io_uring_enter starts by finding the ring from its fd (fdget: with several threads,
// a reference taken and dropped on the ring's file). io_uring_register_ring_fd puts the ring
// in a small table of the calling thread's own (16 entries) and returns its index, which
// io_uring_enter with IORING_ENTER_REGISTERED_RING takes instead of an fd. liburing 2.3 keeps
// it in `enter_ring_fd`, sets INT_FLAG_REG_RING (1) in `int_flags`, and from then on passes
// both by itself. The index is not an fd: we try it both ways with the raw io_uring_enter.

let modern = ring(singleIssuer | deferTaskrun)
let ringFd = modern.pointee.ring_fd
print("SINGLE_ISSUER|DEFER_TASKRUN ring: ring_fd=\(ringFd), enter_ring_fd=\(modern.pointee.enter_ring_fd)"
    + " (\(modern.pointee.enter_ring_fd == ringFd ? "the ring fd" : "?")), int_flags=\(modern.pointee.int_flags)")
let registered = io_uring_register_ring_fd(modern)
print("io_uring_register_ring_fd = \(describe(res: registered)); enter_ring_fd=\(modern.pointee.enter_ring_fd)"
    + " (the registered index), int_flags=0x\(String(modern.pointee.int_flags, radix: 16)) (INT_FLAG_REG_RING)")
guard registered == 1 else { fail("io_uring_register_ring_fd returned \(describe(res: registered))") }
prepare(modern, 3201) { io_uring_prep_nop($0) }  // a NOP completes during the submit: this wait has no time limit, and needs none
print("io_uring_submit_and_wait, through the index = \(describe(res: io_uring_submit_and_wait(modern, 1)))")
printCQE(waitCQE(modern, seconds: 5), "  CQE")
let index = UInt32(modern.pointee.enter_ring_fd), getEvents = IORING_ENTER_GETEVENTS
print("io_uring_enter(\(index), 0, 0, GETEVENTS|REGISTERED_RING) = "
    + describe(res: io_uring_enter(index, 0, 0, getEvents | IORING_ENTER_REGISTERED_RING, nil)) + ": the ring at index \(index)")
// Without the flag the number is an fd: standard input's, unless that was closed (then no fd, or a ring took its number).
let fdIs = Int32(index) == ringFd ? "this very ring (standard input was closed)"
    : fcntl(Int32(index), F_GETFD) < 0 ? "not open (standard input was closed)" : "standard input, not a ring"
print("io_uring_enter(\(index), 0, 0, GETEVENTS) = " + describe(res: io_uring_enter(index, 0, 0, getEvents, nil)) + ": fd \(index) is \(fdIs)")
print("io_uring_enter(1, 0, 0, GETEVENTS|REGISTERED_RING) = "
    + describe(res: io_uring_enter(1, 0, 0, getEvents | IORING_ENTER_REGISTERED_RING, nil)) + ": index 1 holds no ring")
let unregistered = io_uring_unregister_ring_fd(modern)
print("io_uring_unregister_ring_fd = \(describe(res: unregistered)); enter_ring_fd=\(modern.pointee.enter_ring_fd)"
    + " (\(modern.pointee.enter_ring_fd == ringFd ? "the ring fd" : "?")), int_flags=\(modern.pointee.int_flags)")
destroyRing(modern)
