// Lesson 27: eventfd
//
// A program with an event loop of its own (a GUI toolkit's, libuv's, an epoll loop) cannot sit in
// io_uring_enter waiting for CQEs: it waits in poll(2) or epoll_wait(2) on its own fds. An eventfd
// bridges the two. io_uring_register_eventfd(ring, fd) gives the ring an eventfd, and the kernel
// signals it (adds 1 to its 8-byte counter, which makes it readable) when it posts CQEs. The other
// loop watches the eventfd like any fd, and when it fires, reads the counter (which resets it) and
// reaps the CQ.
//
// The counter counts signals, not CQEs: the kernel signals once per batch of CQEs it posts
// together. io_uring_register_eventfd_async signals only for CQEs posted by an io-wq worker
// thread. io_uring_cq_eventfd_toggle sets IORING_CQ_EVENTFD_DISABLED in the CQ ring's flags,
// and while it is set, no CQE signals at all.
//
// Read next: man 3 io_uring_register_eventfd (also _async and io_uring_unregister_eventfd),
// man 2 eventfd, man 2 io_uring_register (IORING_REGISTER_EVENTFD, IORING_REGISTER_EVENTFD_ASYNC,
// IORING_CQ_EVENTFD_DISABLED).

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-27-eventfd", max: 0)

// MARK: - 1. An eventfd, and a ring that signals it
//
// eventfd(2) comes from <sys/eventfd.h>, which Swift's Glibc module does not import: the lab's
// shim (Sources/CLiburing/shim.h) includes it. Non-blocking: a read of a counter of 0 fails with
// EAGAIN instead of waiting, so "no signal" is an answer, not a hang.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_NOP, IORING_OP_TIMEOUT, IORING_OP_RECV)
// Section 5 needs the CQ ring's flags word (5.8): liburing leaves cq.kflags nil without it.
if ring.pointee.cq.kflags == nil {
    skip("this kernel's CQ ring has no flags word for IORING_CQ_EVENTFD_DISABLED (added in Linux 5.8)")
}

/// The fds this lesson holds, closed by a failure before it ends the lesson.
nonisolated(unsafe) var heldFds: [Int32] = []  // one thread only; Swift 6 wants a word for a global var
func stop(_ message: String) -> Never {
    for fd in heldFds { close(fd) }
    fail(message)
}

let efd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
guard efd >= 0 else { stop("eventfd: \(describe(res: -errno))") }
heldFds.append(efd)
print("eventfd(0, EFD_NONBLOCK|EFD_CLOEXEC) = fd \(efd)")

// io_uring_register_eventfd is io_uring_register(IORING_REGISTER_EVENTFD) with the fd: a system
// call, done when it returns. A ring has at most one eventfd: a second registration is -EBUSY.
let registered = io_uring_register_eventfd(ring, efd)
print("io_uring_register_eventfd = \(describe(res: registered))")
if registered != 0 { stop("io_uring_register_eventfd returned \(describe(res: registered))") }
print("io_uring_register_eventfd again = \(describe(res: io_uring_register_eventfd(ring, efd)))")

// MARK: - 2. Reading the counter
//
// read(2) of an eventfd returns its 8-byte counter and sets it to 0; with a counter of 0 it fails
// with EAGAIN (the fd is non-blocking). Where the CQE is posted by this thread (inline during the
// submit, or by task work this thread runs), the kernel has signalled, or not, before our call
// returns: the counter can be read at once. Where an io-wq worker posts the CQE, it signals just
// after posting it, so we may see the CQE first: then we wait for the eventfd with poll(2), 5 s
// at most, before reading.

/// The eventfd's counter, read now: `1`, or `-EAGAIN (-11): no signal`.
func counter() -> String {
    var value: UInt64 = 0
    let n = read(efd, &value, 8), error = n < 0 ? errno : EIO
    return n == 8 ? "\(value)" : describe(res: -error) + (error == EAGAIN ? ": no signal" : "")
}
/// Wait until the eventfd is readable (poll(2), `milliseconds` at most), then read it.
func counterAfterWaiting(_ milliseconds: Int32 = 5000) -> String {
    var entry = pollfd(fd: efd, events: Int16(POLLIN), revents: 0)
    _ = poll(&entry, 1, milliseconds)
    return counter()
}

/// Queue a NOP with `userData` and SQE `flags` (not submitted).
@MainActor func queueNop(_ userData: UInt64, flags: UInt32 = 0) {  // @MainActor: it uses the top-level ring
    let sqe = getSQE(ring)
    io_uring_prep_nop(sqe)
    io_uring_sqe_set_flags(sqe, flags)
    io_uring_sqe_set_data64(sqe, userData)
}
/// The next CQE, which must come within 5 s (else the lesson stops, closing its fds).
@MainActor func waitNext() -> io_uring_cqe {
    var cqe: UnsafeMutablePointer<io_uring_cqe>?, limit = __kernel_timespec(tv_sec: 5, tv_nsec: 0)
    let ret = io_uring_wait_cqe_timeout(ring, &cqe, &limit)
    guard ret == 0, let cqe else { stop("io_uring_wait_cqe_timeout returned \(describe(res: ret))") }
    defer { io_uring_cqe_seen(ring, cqe) }
    return cqe.pointee
}
/// Wait for `count` CQEs (5 s at most each), and say what they were: `4 CQEs (user_data 2721-2724, res 0)`.
@MainActor func reap(_ count: Int) -> String {
    let cqes = (0..<count).map { _ in waitNext() }.sorted { $0.user_data < $1.user_data }
    let results = Set(cqes.map { describe(res: $0.res) })
    let ids = count == 1 ? "user_data \(cqes[0].user_data)" : "user_data \(cqes[0].user_data)-\(cqes[count - 1].user_data)"
    return "\(count) CQE\(count == 1 ? "" : "s") (\(ids), res \(results.sorted().joined(separator: "/")))"
}

// MARK: - 3. What the counter counts
//
// The kernel signals when it commits CQEs to the CQ (__io_commit_cqring_flush, then
// io_eventfd_signal in io_uring/eventfd.c), and only if the CQ's tail has moved since its last
// signal: one signal for a batch of CQEs posted together. Four NOPs in one submit complete
// inline and are committed together, at the end of the submit: one signal. Four submits: four
// commits, four signals. (CQEs that task work posts are batched too, but the kernel may commit
// part of a batch early when the scheduler wants the CPU: the prose says how often.) The count
// is a hint that the CQ has something, never a count of CQEs (man 3 io_uring_register_eventfd).

print("what the counter counts (one read of it after each step)")
queueNop(2711)
checkSubmit(io_uring_submit(ring), 1)
print("1 NOP: \(reap(1)); eventfd counter: \(counter())")
for n: UInt64 in 1...4 { queueNop(2720 + n) }
checkSubmit(io_uring_submit(ring), 4)
print("4 NOPs in one submit: \(reap(4)); eventfd counter: \(counter())")
for n: UInt64 in 1...4 {
    queueNop(2730 + n)
    checkSubmit(io_uring_submit(ring), 1)
}
print("4 NOPs in four submits: \(reap(4)); eventfd counter: \(counter())")

// The other loop. This thread now waits in poll(2) on the eventfd alone, as an event loop that
// knows nothing of io_uring would, while a 20 ms timeout runs out in the ring. The timeout's CQE
// is posted by task work that this very thread must run: the kernel interrupts its poll(2), runs
// the task work (the CQE is posted, the eventfd signalled), and restarts the poll(2), which then
// finds the eventfd readable (strace shows poll(2) ending in ERESTART_RESTARTBLOCK, then
// restart_syscall). Only then do we look at the CQ.
let twentyMs = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)  // the SQE points at it
twentyMs.initialize(to: __kernel_timespec(tv_sec: 0, tv_nsec: 20_000_000))
let timeoutSQE = getSQE(ring)
io_uring_prep_timeout(timeoutSQE, twentyMs, 0, 0)
io_uring_sqe_set_data64(timeoutSQE, 2751)
checkSubmit(io_uring_submit(ring), 1)
var entry = pollfd(fd: efd, events: Int16(POLLIN), revents: 0)
let ready = poll(&entry, 1, 5000)
print("a 20 ms timeout; poll(2) on the eventfd alone (5 s at most) returned \(ready < 0 ? describe(res: -errno) : "\(ready)")"
    + (entry.revents == Int16(POLLIN) ? ": revents = POLLIN" : ", revents = 0x\(String(entry.revents, radix: 16))"))
print("  then: eventfd counter: \(counter()); \(io_uring_cq_ready(ring)) CQE in the CQ: \(format(waitNext()))")
twentyMs.deallocate()

// MARK: - 4. register_eventfd_async: only io-wq workers signal
//
// io_uring_register_eventfd_async (IORING_REGISTER_EVENTFD_ASYNC) registers the eventfd so that
// only CQEs posted by an io-wq worker thread signal it: the kernel's test, io_eventfd_trigger in
// io_uring/eventfd.c, is "not async, or io_wq_current_is_worker()". Completing "later" is not
// enough. A NOP completes inline during the submit: no signal. With IOSQE_ASYNC it goes to a
// worker, which posts its CQE: a signal. A recv on an empty socket completes later, when data
// comes, but by task work in this thread (fast poll, lesson 26): no signal.

print("register_eventfd_async")
print("io_uring_unregister_eventfd = \(describe(res: io_uring_unregister_eventfd(ring)))")
print("io_uring_register_eventfd_async = \(describe(res: io_uring_register_eventfd_async(ring, efd)))")
queueNop(2761)
checkSubmit(io_uring_submit(ring), 1)
print("NOP, completed inline during the submit: \(reap(1)); eventfd counter: \(counter())")
queueNop(2762, flags: IOSQE_ASYNC)
checkSubmit(io_uring_submit(ring), 1)
print("NOP with IOSQE_ASYNC, completed by an io-wq worker: \(reap(1)); eventfd counter: \(counterAfterWaiting())")

var pair: [Int32] = [0, 0]
guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { stop("socketpair: \(describe(res: -errno))") }
heldFds += pair
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 1)  // the recv's, until its CQE
let recvSQE = getSQE(ring)
io_uring_prep_recv(recvSQE, pair[0], buffer.baseAddress, buffer.count, 0)
io_uring_sqe_set_data64(recvSQE, 2763)
checkSubmit(io_uring_submit(ring), 1)
var byte = UInt8(ascii: "x")
guard write(pair[1], &byte, 1) == 1 else { stop("write: \(describe(res: -errno))") }
print("recv on an empty socket, completed when the peer wrote: \(reap(1)); eventfd counter: \(counter())")
buffer.deallocate()

// MARK: - 5. IORING_CQ_EVENTFD_DISABLED
//
// io_uring_cq_eventfd_toggle(ring, false) sets IORING_CQ_EVENTFD_DISABLED in the CQ ring's flags
// word, memory the kernel shares with us: no system call. The kernel reads the word before
// each signal; CQEs posted while it is set do not signal, and are not signalled later either.
// toggle(ring, true) clears it, and the next CQE signals again.

print("IORING_CQ_EVENTFD_DISABLED")
print("io_uring_unregister_eventfd = \(describe(res: io_uring_unregister_eventfd(ring)))")
print("io_uring_register_eventfd = \(describe(res: io_uring_register_eventfd(ring, efd)))")
@MainActor func cqFlags() -> String {
    let flags = ring.pointee.cq.kflags.pointee
    return flags & IORING_CQ_EVENTFD_DISABLED != 0 ? "0x\(String(flags, radix: 16)) (IORING_CQ_EVENTFD_DISABLED)" : "0x\(String(flags, radix: 16))"
}
print("io_uring_cq_eventfd_toggle(false) = \(describe(res: io_uring_cq_eventfd_toggle(ring, false))); CQ flags: \(cqFlags())")
for n: UInt64 in 1...3 { queueNop(2770 + n) }
checkSubmit(io_uring_submit(ring), 3)
print("3 NOPs in one submit: \(reap(3)); eventfd counter: \(counter())")
print("io_uring_cq_eventfd_toggle(true) = \(describe(res: io_uring_cq_eventfd_toggle(ring, true))); CQ flags: \(cqFlags())")
print("  nothing new posted: eventfd counter: \(counter())")
for n: UInt64 in 4...5 { queueNop(2770 + n) }
checkSubmit(io_uring_submit(ring), 2)
print("2 NOPs in one submit: \(reap(2)); eventfd counter: \(counter())")

print("io_uring_unregister_eventfd = \(describe(res: io_uring_unregister_eventfd(ring)))")
print("io_uring_unregister_eventfd again = \(describe(res: io_uring_unregister_eventfd(ring)))")
for fd in heldFds { close(fd) }
heldFds = []
destroyRing(ring)
