// Lesson 29: msg_ring, one ring per thread
//
// A ring is cheapest when one thread owns it: that thread alone fills its SQ and reaps its CQ,
// with no lock between threads (liburing's io_uring struct has none). Programs with many
// threads therefore give each thread a ring of its own, as the Haskell binding the lab grew
// from does with one ring per capability. Then the question is how thread A tells thread B
// something, when B sleeps in io_uring_wait_cqe on its own ring and A must never submit to it.
//
// IORING_OP_MSG_RING (Linux 5.18) is the answer: A submits, on A's ring, a request whose
// target is B's ring fd, and the kernel posts a CQE straight into B's CQ: its `res` is the
// `len` A chose, its `user_data` the `data` A chose. A gets its own CQE (res 0) on A's ring.
// B wakes up from its own wait, as for any completion. Since Linux 6.0 the same request with
// IORING_MSG_SEND_FD moves a direct descriptor (a slot of A's registered file table) into a
// slot of B's table: a file passed between rings without a regular fd.
//
// Two threads, a ring each, play ping-pong with msg_ring messages, each blocked only on its
// own ring; A passes a file to B through the file tables, and B reads it. The threads tear
// their rings down and are joined; the main thread then sends to a ring that no longer exists,
// and to a pipe.
//
// Read next: man 3 io_uring_prep_msg_ring, man 2 io_uring_enter (IORING_OP_MSG_RING),
// man 3 io_uring_register_files (liburing 2.3 has no io_uring_prep_msg_ring_fd: see section 4).

import Glibc
import CLiburing
import LabSupport
import LabNet
import Synchronization

let usage = "lesson-29-msg-ring [--messages N]"
let arguments = lessonArguments(usage: usage, max: 0, options: ["--messages"])
let messages = numberOption("--messages", in: arguments, 1...9999) ?? 200

// MARK: - 1. What the kernel offers
//
// MSG_RING is probed (5.18). IORING_MSG_SEND_FD is a command inside MSG_RING (sqe->addr) that
// the probe cannot see (an unknown one is -EINVAL, like any bad field). It came in 6.0 with
// IORING_OP_SEND_ZC, which the probe sees: SEND_ZC is its witness, and without it section 4 is
// left out. The main thread's own ring is made first (lowest fd) and used again in section 6.

let mainRing = makeRing(entries: 4)
requireOpcodes(mainRing, IORING_OP_MSG_RING, IORING_OP_NOP)
let canSendFD: Bool = {
    guard let probe = io_uring_get_probe_ring(mainRing) else { return false }
    defer { io_uring_free_probe(probe) }
    return io_uring_opcode_supported(probe, Int32(IORING_OP_SEND_ZC.rawValue)) != 0
}()
let notePath = makeTempFile(named: "note.txt", contents: Array("a file from ring A's table\n".utf8))

// MARK: - 2. A peer: one thread, one ring
//
// Each thread makes its ring itself and is its only submitter. The other thread learns the
// ring's fd (an atomic, published before a start barrier) and uses it only as the *target*
// of its own msg_ring requests. Every wait is io_uring_wait_cqe_timeout with 5 s: a peer that
// stops answering ends the lesson with an error, never a hang. What a thread sees is recorded
// and printed by the main thread after the join, in a fixed order: two threads fill each CQ
// (its owner's own requests, the other's messages), and nothing promises the order in which
// their CQEs land (the prose's Kernel section says how often each order was seen).
//
// user_data scheme: message k (1, 2, ... N) travels with data 2900000 + k (the receiver's
// user_data) and len k (the receiver's res); the sender's own SQE has user_data 2910000 + k.
// Section 4 uses 2921-2942, section 5 2951-2952.

/// One thread's side. @unchecked Sendable: `ringFD` is atomic; everything else is written by
/// the peer's own thread only, and read by the main thread only after pthread_join.
final class Peer: @unchecked Sendable {
    let name: String, sendsOdd: Bool
    let ringFD = Atomic<Int32>(-1)
    var ring: Ring? = nil, setup: Int32 = 0  // io_uring_queue_init's return
    var received: [Int: io_uring_cqe] = [:], own: [Int: io_uring_cqe] = [:]  // message k -> CQE
    var receivedCount = 0, ownCount = 0, problems: [String] = [], pingPongTime = Duration.zero
    var tableLine = "", lines: [String] = []  // section 4's events, in this thread's order
    init(_ name: String, sendsOdd: Bool) { (self.name, self.sendsOdd) = (name, sendsOdd) }

    /// The next CQE on this peer's own ring, within 5 s, or nil (recorded as a problem).
    func nextCQE() -> io_uring_cqe? {
        var cqe: UnsafeMutablePointer<io_uring_cqe>?, limit = __kernel_timespec(tv_sec: 5, tv_nsec: 0)
        let ret = io_uring_wait_cqe_timeout(ring, &cqe, &limit)
        guard ret == 0, let cqe else { problems.append("\(name): wait: \(describe(res: ret))"); return nil }
        defer { io_uring_cqe_seen(ring, cqe) }
        return cqe.pointee
    }
}

/// What both threads share: the two peers and a barrier (at a stable address) they meet at
/// twice, once with both rings made and once with both done.
final class Meeting: @unchecked Sendable {  // pthread_barrier_wait is made for many threads; Peer: above
    let a = Peer("A", sendsOdd: true), b = Peer("B", sendsOdd: false)
    let barrier = UnsafeMutablePointer<pthread_barrier_t>.allocate(capacity: 1)
    init() { pthread_barrier_init(barrier, nil, 2) }
    func meet() { pthread_barrier_wait(barrier) }
}

// MARK: - 3. Ping-pong with io_uring_prep_msg_ring
//
// `io_uring_prep_msg_ring(sqe, fd, len, data, 0)`: fd is the *target* ring's fd; the SQE goes
// into the sender's own SQ. The kernel posts {user_data = data, res = len, flags = 0} into the
// target's CQ at once, waking whoever waits there, and completes the sender's request with
// res 0. (A full target CQ is an overflow, lesson 28: the message waits on the target's list.
// Only if the kernel cannot even allocate that list entry does the sender get -EOVERFLOW.)

/// Send message `k` from `me`'s ring to `target`'s ring.
func send(_ k: Int, from me: Peer, to target: Int32) {
    guard let sqe = io_uring_get_sqe(me.ring) else { me.problems.append("\(me.name): SQ full"); return }
    io_uring_prep_msg_ring(sqe, target, UInt32(k), 2_900_000 + UInt64(k), 0)
    io_uring_sqe_set_data64(sqe, 2_910_000 + UInt64(k))
    let ret = io_uring_submit(me.ring)
    if ret != 1 { me.problems.append("\(me.name): submit of message \(k): \(describe(res: ret))") }
}

/// Sort one CQE of the ping-pong: the sender's own completion, or a message from the other ring.
/// Returns the number of the message received, if it was one.
func record(_ cqe: io_uring_cqe, by me: Peer) -> Int? {
    if cqe.user_data > 2_910_000, cqe.user_data <= 2_910_000 + UInt64(messages) {
        let k = Int(cqe.user_data - 2_910_000)
        me.ownCount += 1
        if k <= 3 { me.own[k] = cqe }
        if cqe.res != 0 { me.problems.append("\(me.name): own CQE of message \(k): \(format(cqe))") }
        return nil
    }
    let k = Int(cqe.user_data) - 2_900_000
    guard (1...messages).contains(k), cqe.res == Int32(k), cqe.flags == 0
    else { me.problems.append("\(me.name): unexpected CQE: \(format(cqe))"); return nil }
    me.receivedCount += 1
    if k <= 3 { me.received[k] = cqe }
    return k
}

/// One peer's conversation: send the messages that are its turn, wait (on its own ring only)
/// for the other's, and finally for its own last completions.
func pingPong(_ me: Peer, target: Int32) {
    var next = 1
    while next <= messages && me.problems.isEmpty {
        if (next % 2 == 1) == me.sendsOdd {
            send(next, from: me, to: target)
            next += 1
        } else if let cqe = me.nextCQE(), let k = record(cqe, by: me) {
            if k != next { me.problems.append("\(me.name): message \(k) arrived when \(next) was due") }
            next = k + 1
        }
    }
    let mine = (messages + (me.sendsOdd ? 1 : 0)) / 2
    while me.ownCount < mine && me.problems.isEmpty {
        if let cqe = me.nextCQE(), let k = record(cqe, by: me) { me.problems.append("\(me.name): extra message \(k)") }
    }
}

// MARK: - 4. Passing a direct descriptor: IORING_MSG_SEND_FD
//
// Both rings have a registered file table (lesson 13): A's slot 0 holds note.txt, B's table
// has 4 empty slots. A's request names A's slot (sqe->addr3) and a slot of B's table
// (sqe->file_index, plus one; or IORING_FILE_INDEX_ALLOC: the kernel picks a free one). The
// kernel installs the file in B's table, posts a CQE to B (user_data = data, res = the slot it
// filled if it picked one, else 0; sqe->len must be 0: 6.12 and 6.18 refuse anything else
// with -EINVAL) and completes A's request with the same res. B reads the file through its own
// slot: no fd was ever created on B's side. liburing 2.3 has no helper for this SQE; we fill
// it as 2.4's io_uring_prep_msg_ring_fd does, the fields io_msg_ring_prep reads.

/// A's msg_ring SEND_FD: A's `slot` to `targetSlot` of the ring `target` (nil: any free slot).
func sendFile(from me: Peer, slot: UInt64, to target: Int32, targetSlot: UInt32?, data: UInt64, userData: UInt64) {
    guard let sqe = io_uring_get_sqe(me.ring) else { me.problems.append("A: SQ full"); return }
    io_uring_prep_rw(Int32(IORING_OP_MSG_RING.rawValue), sqe, target,
                     UnsafeRawPointer(bitPattern: UInt(IORING_MSG_SEND_FD)), 0, data)
    sqe.pointee.addr3 = slot                                                   // A's slot
    sqe.pointee.file_index = targetSlot.map { $0 + 1 } ?? IORING_FILE_INDEX_ALLOC  // B's slot + 1
    io_uring_sqe_set_data64(sqe, userData)
    let ret = io_uring_submit(me.ring)
    if ret != 1 { me.problems.append("A: submit of SEND_FD: \(describe(res: ret))"); return }
    guard let cqe = me.nextCQE() else { return }
    me.lines.append("A: msg_ring SEND_FD, A's slot \(slot) -> B's "
        + (targetSlot.map { "slot \($0)" } ?? "IORING_FILE_INDEX_ALLOC") + ", data \(data): \(format(cqe))")
}

/// B's read of up to 64 bytes through its fixed `slot`, printed with the bytes.
func readSlot(_ me: Peer, _ slot: Int32, userData: UInt64) {
    guard let sqe = io_uring_get_sqe(me.ring) else { me.problems.append("B: SQ full"); return }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
    io_uring_prep_read(sqe, slot, buffer.baseAddress, UInt32(buffer.count), 0)
    io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE)
    io_uring_sqe_set_data64(sqe, userData)
    let ret = io_uring_submit(me.ring)
    if ret != 1 { me.problems.append("B: submit of read: \(describe(res: ret))"); return }
    guard let cqe = me.nextCQE() else { return }  // none in 5 s: it may still be in flight, keep the buffer
    me.lines.append("B: read slot \(slot) (IOSQE_FIXED_FILE): \(format(cqe))"
        + (cqe.res > 0 ? " " + quoted(buffer.prefix(Int(cqe.res))) : ""))
    buffer.deallocate()  // its CQE has arrived
}

/// Before the start barrier: A opens note.txt and registers it as slot 0 of its table; B
/// registers a sparse table of 4 empty slots (5.19).
func prepareTables(_ me: Peer) {
    if me.sendsOdd {
        let fd = open(notePath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { me.problems.append("A: open \(notePath): \(describe(res: -errno))"); return }
        let ret = io_uring_register_files(me.ring, [fd], 1)
        me.tableLine = "A: open note.txt = fd \(fd); io_uring_register_files([\(fd)]) = \(describe(res: ret)): "
            + "slot 0; close(\(fd)) = \(close(fd))"
        if ret != 0 { me.problems.append("A: io_uring_register_files: \(describe(res: ret))") }
    } else {
        let ret = io_uring_register_files_sparse(me.ring, 4)
        me.tableLine = "B: io_uring_register_files_sparse(4) = \(describe(res: ret))"
        if ret != 0 { me.problems.append("B: io_uring_register_files_sparse: \(describe(res: ret))") }
    }
}

/// After the ping-pong: A sends its slot 0 twice, to B's slot 2 and to a slot B's kernel
/// picks; B waits for both CQEs on its own ring, then reads both slots.
func passFile(_ me: Peer, target: Int32) {
    if me.sendsOdd {
        sendFile(from: me, slot: 0, to: target, targetSlot: 2, data: 2931, userData: 2921)
        sendFile(from: me, slot: 0, to: target, targetSlot: nil, data: 2932, userData: 2922)
        return
    }
    var slots: [UInt64: Int32] = [:]
    while slots.count < 2, me.problems.isEmpty, let cqe = me.nextCQE() {
        guard cqe.user_data == 2931 || cqe.user_data == 2932, cqe.res >= 0
        else { me.problems.append("B: unexpected CQE: \(format(cqe))"); break }
        me.lines.append("B: CQE on its ring: \(format(cqe))")
        slots[cqe.user_data] = cqe.user_data == 2931 ? 2 : cqe.res  // ALLOC: res is the slot
    }
    if let slot = slots[2931] { readSlot(me, slot, userData: 2941) }
    if let slot = slots[2932] { readSlot(me, slot, userData: 2942) }
}

/// A peer's thread, from ring to teardown. Not makeRing: a failed setup must not exit from this
/// thread (the exit handler would free rings the other thread waits on). It is recorded, both
/// threads still meet, see a ring missing and stop, and the main thread reports it.
func run(_ me: Peer, other: Peer, meeting: Meeting) {
    let ring = Ring.allocate(capacity: 1)
    ring.initialize(to: io_uring())
    me.setup = io_uring_queue_init(8, ring, 0)
    if me.setup == 0 {
        me.ring = ring
        me.ringFD.store(ring.pointee.ring_fd, ordering: .releasing)
        if canSendFD { prepareTables(me) }
    }
    meeting.meet()  // both rings exist (or one thread knows it has none), both tables are registered
    let target = other.ringFD.load(ordering: .acquiring)
    if me.ring != nil && target >= 0 {
        let clock = ContinuousClock(), started = clock.now
        pingPong(me, target: target)
        me.pingPongTime = clock.now - started
        if canSendFD && me.problems.isEmpty { passFile(me, target: target) }
    }
    meeting.meet()  // neither thread will target the other's ring again
    if me.ring != nil { io_uring_queue_exit(ring) }  // unmaps the rings, closes the fd, drops the table
    ring.deallocate()
    me.ring = nil
}

let meeting = Meeting()
let threads = [startThread { run(meeting.a, other: meeting.b, meeting: meeting) },
               startThread { run(meeting.b, other: meeting.a, meeting: meeting) }]
for thread in threads { pthread_join(thread, nil) }
let (a, b) = (meeting.a, meeting.b)
for peer in [a, b] where peer.setup < 0 { exitBecauseSetupFailed(peer.setup, entries: 8) }  // as makeRing would

// MARK: - 5. What the threads saw, printed after the join
//
// The first three messages in full, then what all of them did.
print("ring A and ring B: one ring per thread, each made, used and torn down by its own thread")
print("ping-pong: \(messages) messages; A sends the odd ones to ring B, B the even ones to ring A; "
    + "each thread waits only on its own ring")
for k in 1...min(3, messages) {
    let (sender, receiver) = k % 2 == 1 ? (a, b) : (b, a)
    print("message \(k), \(sender.name) -> \(receiver.name): io_uring_prep_msg_ring(ring \(receiver.name)'s fd, "
        + "len \(k), data \(2_900_000 + k))")
    if let cqe = receiver.received[k] { printCQE(cqe, "  ring \(receiver.name)") }
    if let cqe = sender.own[k] { printCQE(cqe, "  ring \(sender.name), the sender's own CQE") }
}
for peer in [a, b] {
    print("\(peer.name): received \(peer.receivedCount) messages, each with res = len and user_data = data; "
        + "\(peer.ownCount) own CQEs for its sends, res 0")
}
let time = a.pingPongTime.components
print("A's side of the ping-pong took \(time.seconds * 1_000_000 + time.attoseconds / 1_000_000_000_000) µs")
if canSendFD {
    print("passing a direct descriptor with IORING_MSG_SEND_FD (Linux 6.0):")
    for line in [a.tableLine, b.tableLine] + a.lines + b.lines { print(line) }
} else {
    print("IORING_MSG_SEND_FD needs Linux 6.0 (this kernel lacks IORING_OP_SEND_ZC, also 6.0): not shown")
}
let oldFD = a.ringFD.load(ordering: .relaxed)
guard a.problems.isEmpty && b.problems.isEmpty else { fail((a.problems + b.problems).joined(separator: "; ")) }

// MARK: - 6. Targets that are not rings
//
// The target fd is looked up when the kernel takes the SQE, like any request's fd. Ring A is
// gone (its thread called io_uring_queue_exit), so its old fd number is not open: -EBADF, as
// for a read on a closed fd. A pipe's fd is open but is no ring: msg_ring checks the file's
// type and says -EBADFD ("fd in bad state"). Both are CQEs on the main thread's ring.

/// One msg_ring from `ring` to `fd`, and its CQE; without one, `opened` is closed, then fail.
func message(_ ring: Ring, to fd: Int32, userData: UInt64, opened: [Int32] = []) -> io_uring_cqe {
    let sqe = getSQE(ring)
    io_uring_prep_msg_ring(sqe, fd, 1, 2959, 0)
    io_uring_sqe_set_data64(sqe, userData)
    var cqe: UnsafeMutablePointer<io_uring_cqe>?, limit = __kernel_timespec(tv_sec: 5, tv_nsec: 0)
    let submitted = io_uring_submit(ring)
    let ret = submitted == 1 ? io_uring_wait_cqe_timeout(ring, &cqe, &limit) : submitted
    guard ret == 0, let cqe else {
        for fd in opened { close(fd) }
        fail("msg_ring to fd \(fd): io_uring_\(submitted == 1 ? "wait_cqe_timeout" : "submit") returned \(describe(res: ret))")
    }
    defer { io_uring_cqe_seen(ring, cqe) }
    return cqe.pointee
}
print("joined A and B; ring A's old fd \(oldFD): fcntl(F_GETFD) "
    + (fcntl(oldFD, F_GETFD) < 0 ? "fails with \(describe(res: -errno))" : "succeeds: it is open"))
printCQE(message(mainRing, to: oldFD, userData: 2951), "msg_ring to ring A's old fd")
var pipeFDs: [Int32] = [-1, -1]
guard pipe(&pipeFDs) == 0 else { fail("pipe: \(describe(res: -errno))") }
printCQE(message(mainRing, to: pipeFDs[0], userData: 2952, opened: pipeFDs), "msg_ring to a pipe's fd \(pipeFDs[0]), not a ring")
pipeFDs.forEach { close($0) }
destroyRing(mainRing)
pthread_barrier_destroy(meeting.barrier)
meeting.barrier.deallocate()
