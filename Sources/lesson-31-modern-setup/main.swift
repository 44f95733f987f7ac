// Lesson 31: modern setup flags
//
// io_uring_setup(2) takes flags that change how a ring works, and the ones added from Linux
// 5.18 to 6.1 are what a modern program sets (lesson 37 measures them):
//   IORING_SETUP_SUBMIT_ALL (5.18)    a bad SQE in a batch no longer stops the submit;
//   IORING_SETUP_COOP_TASKRUN (5.19)  completion work waits for the task's next trip into the
//                                     kernel instead of interrupting it;
//   IORING_SETUP_TASKRUN_FLAG (5.19)  ... and IORING_SQ_TASKRUN in the SQ ring's flags says so;
//   IORING_SETUP_SINGLE_ISSUER (6.0)  one thread submits, and the kernel holds you to it;
//   IORING_SETUP_DEFER_TASKRUN (6.1)  completion work runs only when that thread enters the
//                                     kernel to get events: a completion can be done in the
//                                     kernel and still invisible in the CQ.
// And io_uring_register_ring_fd (5.18) lets io_uring_enter find the ring without an fd lookup.
//
// This lesson asks for each flag (and some combinations the kernel refuses) and prints the
// answer; sends a batch with a bad SQE in the middle to a ring with and without SUBMIT_ALL;
// watches one completion on four rings and sees where it shows up; has a second thread submit
// to single-issuer rings; and registers a ring fd, printing what liburing changes.
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
// task work finishes the request (here: the recv copies the data) and posts the CQE. When
// that work runs is what these flags change.
//   default: the kernel interrupts the task to run it at once (a signal-like notification; an
//            IPI if the task is running on another CPU), or at the latest when the task next
//            returns from the kernel;
//   COOP_TASKRUN: no interruption: it runs when the task next returns from the kernel for
//            any reason (a system call, an interrupt);
//   DEFER_TASKRUN: it runs only when the task enters io_uring_enter to get events
//            (io_uring_get_events, a wait), and nowhere else;
//   TASKRUN_FLAG: while such work is pending, the kernel sets IORING_SQ_TASKRUN in the SQ
//            ring's flags, so a program that only peeks knows it should enter.
//
// Each ring gets a recv on an empty socket (a socketpair(2), the other end ours), then this
// thread writes two bytes into the other end with send(2), a system call that does not touch
// the ring. The recv's task work is queued during that send. Then, without entering the
// kernel, we look: the SQ flags, io_uring_cq_ready (CQEs in the CQ), and io_uring_peek_cqe.
// (On default and COOP_TASKRUN rings, the work ran when send(2) returned: this thread wrote.)
// liburing 2.3's peek enters the kernel itself when it sees IORING_SQ_TASKRUN (or an
// overflow), and otherwise returns -EAGAIN without a system call.

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

// MARK: - 4. SINGLE_ISSUER: a second thread submits
//
// With IORING_SETUP_SINGLE_ISSUER the kernel may skip locking that several submitting threads
// would need, and it checks: io_uring_enter from any other thread that submits fails with
// -EEXIST. Which thread is "the" issuer? On Linux 6.1 and later (this lesson's kernels), the
// one that created the ring, from the start, for every SINGLE_ISSUER ring, not only
// DEFER_TASKRUN ones (io_uring_create sets ctx->submitter_task; Linux 6.0 waited for the first
// submit). With DEFER_TASKRUN, getting events is the issuer's too: it runs the ring's task
// work, which only the issuer may. The second thread's NOP is not lost: it stays in the SQ,
// and this thread's next submit takes it. The second thread uses the ring while this one waits
// in pthread_join, so the ring (liburing's struct is not thread-safe) has one user at a time.

/// A ring pointer for the second thread. Not Sendable (a raw pointer): `@unchecked` is our
/// word that the two threads take turns, joined by pthread_join.
struct RingForThread: @unchecked Sendable { let ring: Ring }

for (flags, userData) in [(singleIssuer, UInt64(3181)), (singleIssuer | deferTaskrun, 3191)] {
    let ring = ring(flags)
    let shared = RingForThread(ring: ring), answers = Mutex<(submit: Int32, events: Int32)>((0, 0))
    let thread = startThread {
        prepare(shared.ring, userData) { io_uring_prep_nop($0) }
        let submit = io_uring_submit(shared.ring), events = io_uring_get_events(shared.ring)
        answers.withLock { $0 = (submit, events) }
    }
    pthread_join(thread, nil)
    let (submit, events) = answers.withLock { $0 }
    print("\(names(flags)) ring, made by this thread, nothing submitted yet: a second thread's io_uring_submit = \(describe(res: submit)), "
        + "io_uring_get_events = \(describe(res: events))")
    print("  this thread: io_uring_submit = \(describe(res: io_uring_submit(ring))) (the NOP the second thread left in the SQ)")
    printCQE(waitCQE(ring, seconds: 5), "  CQE")
    destroyRing(ring)
}

// MARK: - 5. io_uring_register_ring_fd
//
// Every io_uring_enter starts by finding the ring from its fd: a lookup in the process's file
// table (fdget), and with several threads sharing that table, a reference taken and dropped
// on the ring's file. io_uring_register_ring_fd puts the ring in a small table of the calling
// thread's own (16 entries) and returns its index; io_uring_enter with
// IORING_ENTER_REGISTERED_RING then takes that index instead of an fd, with no lookup.
// liburing 2.3 keeps the index in the ring's `enter_ring_fd` and sets INT_FLAG_REG_RING (1)
// in `int_flags`; from then on its submit and wait calls pass the index and the flag by
// themselves. The index is not an fd: we try it both ways with the raw io_uring_enter.

let modern = ring(singleIssuer | deferTaskrun)
let ringFd = modern.pointee.ring_fd
print("SINGLE_ISSUER|DEFER_TASKRUN ring: ring_fd=\(ringFd), enter_ring_fd=\(modern.pointee.enter_ring_fd)"
    + " (\(modern.pointee.enter_ring_fd == ringFd ? "the ring fd" : "?")), int_flags=\(modern.pointee.int_flags)")
let registered = io_uring_register_ring_fd(modern)
print("io_uring_register_ring_fd = \(describe(res: registered)); enter_ring_fd=\(modern.pointee.enter_ring_fd)"
    + " (the registered index), int_flags=0x\(String(modern.pointee.int_flags, radix: 16)) (INT_FLAG_REG_RING)")
guard registered == 1 else { fail("io_uring_register_ring_fd returned \(describe(res: registered))") }
prepare(modern, 3201) { io_uring_prep_nop($0) }
print("io_uring_submit_and_wait, through the index = \(describe(res: io_uring_submit_and_wait(modern, 1)))")
printCQE(waitCQE(modern, seconds: 5), "  CQE")
let index = UInt32(modern.pointee.enter_ring_fd), getEvents = IORING_ENTER_GETEVENTS
print("io_uring_enter(\(index), 0, 0, GETEVENTS|REGISTERED_RING) = "
    + describe(res: io_uring_enter(index, 0, 0, getEvents | IORING_ENTER_REGISTERED_RING, nil)) + ": the ring at index \(index)")
print("io_uring_enter(\(index), 0, 0, GETEVENTS) = " + describe(res: io_uring_enter(index, 0, 0, getEvents, nil))
    + ": fd \(index) (standard input) is not a ring")
print("io_uring_enter(1, 0, 0, GETEVENTS|REGISTERED_RING) = "
    + describe(res: io_uring_enter(1, 0, 0, getEvents | IORING_ENTER_REGISTERED_RING, nil)) + ": index 1 holds no ring")
let unregistered = io_uring_unregister_ring_fd(modern)
print("io_uring_unregister_ring_fd = \(describe(res: unregistered)); enter_ring_fd=\(modern.pointee.enter_ring_fd)"
    + " (\(modern.pointee.enter_ring_fd == ringFd ? "the ring fd" : "?")), int_flags=\(modern.pointee.int_flags)")
destroyRing(modern)
