// Lesson 08: timeouts
//
// io_uring has no "wait at most this long" argument on a read. Time is a request of its own:
// IORING_OP_TIMEOUT completes when a time has passed (res -ETIME) or, if you give it a count,
// as soon as that many other CQEs have been posted (res 0; section 8 shows which CQEs count),
// whichever comes first. An
// IORING_OP_LINK_TIMEOUT linked after a request puts a deadline on that one request: if the
// time runs out first, the kernel cancels the request (-ECANCELED) and the link timeout
// completes with -ETIME; if the request finishes first, the timeout is cancelled instead
// (-ECANCELED). IORING_OP_TIMEOUT_REMOVE cancels a pending timeout by its user_data. And the
// waiting side has its own limit: io_uring_wait_cqe_timeout gives up after a time and
// *returns* -ETIME, with no CQE at all.
//
// Every timeout SQE holds a pointer to a `__kernel_timespec`. Like every buffer in this lab,
// it lives on the heap at one address until the request's CQE has arrived.
//
// This lesson prints every CQE by name, in the order it arrived.
//
// Read next: man 3 io_uring_prep_timeout, man 3 io_uring_prep_timeout_remove,
// man 3 io_uring_wait_cqe_timeout, man 2 io_uring_enter (IORING_OP_TIMEOUT,
// IORING_OP_LINK_TIMEOUT, IORING_OP_TIMEOUT_REMOVE; liburing 2.3 has no page of its own for
// io_uring_prep_link_timeout).

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-08-timeouts", max: 0)

// MARK: - 1. A ring, the opcodes, and the names of the requests
//
// TIMEOUT is Linux 5.4, TIMEOUT_REMOVE and LINK_TIMEOUT 5.5; the pipe reads of sections 5, 6
// and 8 use IORING_OP_READ (5.6). We ask the kernel rather than guess from its version.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_TIMEOUT, IORING_OP_TIMEOUT_REMOVE, IORING_OP_LINK_TIMEOUT,
               IORING_OP_READ, IORING_OP_NOP)

// A CQE names its request only by user_data (lesson 03). Each request has a fixed one whose
// tens say which experiment it belongs to (11: section 2, ..., 111 to 113: section 8's last).
// Every CQE is printed with its place in arrival order and its name from this table.
let requestNames: [UInt64: String] = [
    11: "timeout 30 ms",
    21: "timeout count 3", 22: "NOP 1", 23: "NOP 2", 24: "NOP 3",
    31: "timeout 10 s", 32: "timeout_remove user_data=31",
    41: "timeout_remove user_data=11", 42: "timeout_remove user_data=999",
    51: "read", 52: "link_timeout 50 ms",
    61: "read", 62: "link_timeout 50 ms",
    71: "timeout 30 ms",
    81: "timeout 10 s", 82: "timeout count 2", 83: "timeout_remove user_data=81",
    91: "timeout count 2", 92: "read", 93: "link_timeout 10 ms",
    101: "timeout count 1", 102: "timeout 10 ms",
    111: "timeout count 2", 112: "timeout count 1", 113: "NOP",
]
func name(_ cqe: io_uring_cqe) -> String { requestNames[cqe.user_data] ?? "?" }

// Every experiment reaps all its CQEs before the next takes an SQE: at most 4 SQEs at a time,
// on a ring of 8, so the SQ is never full.

// Every timeout SQE holds the address of a `__kernel_timespec`, which must stay put until the
// request's CQE (section 2). The times are allocated here and freed in section 9; requests
// with the same time share one, which the kernel only reads.

/// A relative time for the kernel, on the heap: it stays at one address until deallocated.
func makeTimespec(_ time: Duration) -> UnsafeMutablePointer<__kernel_timespec> {
    let ts = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
    ts.initialize(to: __kernel_timespec(tv_sec: time.components.seconds,
                                        tv_nsec: time.components.attoseconds / 1_000_000_000))
    return ts
}
let ms10 = makeTimespec(.milliseconds(10)), ms20 = makeTimespec(.milliseconds(20))
let ms30 = makeTimespec(.milliseconds(30)), ms50 = makeTimespec(.milliseconds(50))
let ms100 = makeTimespec(.milliseconds(100)), s1 = makeTimespec(.seconds(1)), s10 = makeTimespec(.seconds(10))

let clock = ContinuousClock()
func milliseconds(since start: ContinuousClock.Instant) -> Int64 { Int64((clock.now - start) / .milliseconds(1)) }

// MARK: - 2. A timer: IORING_OP_TIMEOUT with count 0
//
// `io_uring_prep_timeout(sqe, ts, count, flags)` with count 0 is a plain timer: it completes
// when `ts` has passed (relative to the submit, on CLOCK_MONOTONIC), with res -ETIME. For a
// timer that is the normal result, not a failure. The SQE holds only the address of `ts`.
// (Since 5.5, IORING_FEAT_SUBMIT_STABLE, the kernel copies the timespec when it takes the SQE;
// 5.4 read it later. Keeping it until the CQE is right on every kernel, as for any buffer.)

print("a timer: IORING_OP_TIMEOUT of 30 ms, count 0")
var sqe = getSQE(ring)
io_uring_prep_timeout(sqe, ms30, 0, 0)
io_uring_sqe_set_data64(sqe, 11)
var started = clock.now
checkSubmit(io_uring_submit(ring), 1)
var cqe = waitCQE(ring)
printCQE(cqe, "CQE 1: \(name(cqe))")
print("it arrived \(milliseconds(since: started)) ms after the submit")

// MARK: - 3. A completion count: IORING_OP_TIMEOUT with count 3
//
// With count N the timeout also watches the CQ: it completes with res 0 as soon as N other
// CQEs have been posted after it was submitted, or with -ETIME if the time runs out first
// (nearly every CQE counts: section 8 measures which do not). We give it a whole second, a
// safety net, then three NOPs in the same submit: their CQEs meet the count at once.

/// Queue an IORING_OP_TIMEOUT of `ts` that a `count` of other CQEs completes too (0: a timer).
func queueTimeout(_ ring: Ring, _ ts: UnsafeMutablePointer<__kernel_timespec>, count: UInt32, userData: UInt64) {
    let sqe = getSQE(ring)
    io_uring_prep_timeout(sqe, ts, count, 0)
    io_uring_sqe_set_data64(sqe, userData)
}

print("a completion count: IORING_OP_TIMEOUT of 1 s with count 3, then 3 NOPs, one submit")
queueTimeout(ring, s1, count: 3, userData: 21)
for userData: UInt64 in 22...24 {
    sqe = getSQE(ring)
    io_uring_prep_nop(sqe)
    io_uring_sqe_set_data64(sqe, userData)
}
checkSubmit(io_uring_submit(ring), 4)
for n in 1...4 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

// MARK: - 4. Cancelling a timeout: IORING_OP_TIMEOUT_REMOVE
//
// `io_uring_prep_timeout_remove(sqe, user_data, 0)` finds the pending timeout that was
// submitted with that user_data and cancels it. Two CQEs answer: the timeout's, with
// -ECANCELED, and the remove's own, with 0. We submit a 10 s timer, then, in a second
// submit, the remove. Their order is not promised; on 6.18 the remove's comes first: it
// completes on the spot, and the cancelled timeout just after it.
//
// A user_data that matches no pending timeout gives -ENOENT: here section 2's timer, which
// fired long ago, and 999, never used. (A timeout caught as it fires gives -EALREADY, says
// man 3 io_uring_prep_timeout_remove and the kernel's code; man 2 io_uring_enter says -EBUSY.)

/// Queue an IORING_OP_TIMEOUT_REMOVE of the timeout submitted with user_data `target`.
func queueTimeoutRemove(_ ring: Ring, _ target: UInt64, userData: UInt64) {
    let sqe = getSQE(ring)
    io_uring_prep_timeout_remove(sqe, target, 0)
    io_uring_sqe_set_data64(sqe, userData)
}

print("cancelling a pending timeout: IORING_OP_TIMEOUT of 10 s, then IORING_OP_TIMEOUT_REMOVE")
queueTimeout(ring, s10, count: 0, userData: 31)
checkSubmit(io_uring_submit(ring), 1)
queueTimeoutRemove(ring, 31, userData: 32)
checkSubmit(io_uring_submit(ring), 1)
for n in 1...2 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

print("removing timeouts the kernel does not know: one that has fired, one never submitted")
queueTimeoutRemove(ring, 11, userData: 41)
queueTimeoutRemove(ring, 999, userData: 42)
checkSubmit(io_uring_submit(ring), 2)
for n in 1...2 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

// MARK: - 5. A deadline for one request: IORING_OP_LINK_TIMEOUT, the timer wins
//
// A link timeout is linked *after* the request it guards: the request gets IOSQE_IO_LINK,
// and the next SQE is `io_uring_prep_link_timeout(sqe, ts, 0)`. Both go in with one submit.
// (A link timeout needs a request before it in the same chain; on its own it is -EINVAL.)
//
// The request is a read from a pipe nobody writes to (a pipe has no offsets; the 0 is
// ignored): it can only wait. After 50 ms the timer fires, the kernel cancels the read, and
// two CQEs come back: the read with -ECANCELED and the link timeout with -ETIME. The read
// buffer stays allocated until the read's CQE (here: until the end, sections 6 and 8 read too).
//
// Who wins is certain; which CQE comes first is not promised. On 6.18 (and 6.12) it is the
// link timeout's, which asks for the read's cancellation; on Debian 12's 6.1 the read's (the
// prose's Kernel section says why). Match CQEs by user_data, never by their position.

var pipeFDs: [Int32] = [-1, -1]
guard pipe(&pipeFDs) == 0 else { fail("pipe: \(describe(res: -errno))") }
let (pipeRead, pipeWrite) = (pipeFDs[0], pipeFDs[1])
/// Close the pipe, then fail: no error leaves its fds open.
func stop(_ message: String) -> Never { close(pipeRead); close(pipeWrite); fail(message) }
let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)

/// Queue a read of `fd` into `buffer` (user_data `read`) linked to a link timeout of `deadline`
/// (user_data `read + 1`).
func queueRead(_ ring: Ring, _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, read: UInt64,
               deadline: UnsafeMutablePointer<__kernel_timespec>) {
    var sqe = getSQE(ring)
    io_uring_prep_read(sqe, fd, buffer.baseAddress, UInt32(buffer.count), 0)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    io_uring_sqe_set_data64(sqe, read)
    sqe = getSQE(ring)
    io_uring_prep_link_timeout(sqe, deadline, 0)
    io_uring_sqe_set_data64(sqe, read + 1)
}

print("a read from an empty pipe, linked to an IORING_OP_LINK_TIMEOUT of 50 ms")
queueRead(ring, pipeRead, readBuffer, read: 51, deadline: ms50)
checkSubmit(io_uring_submit(ring), 2)
for n in 1...2 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

// MARK: - 6. The other order: the read wins
//
// The same pair, but first we put 6 bytes into the pipe with a plain write(2). Now the read
// completes during the submit itself with the byte count, and the link timeout with
// -ECANCELED: the request it guarded finished first. A race still, but the read has its data
// at once and the timer 50 ms, so the read wins on any machine (exercise 2 shrinks the
// margin). On 6.18 the read's CQE comes first: its completion is what cancels the timer.

print("the same pair with 6 bytes already in the pipe")
let ready = Array("ready\n".utf8)
guard write(pipeWrite, ready, ready.count) == ready.count else { stop("write to the pipe: \(describe(res: -errno))") }
queueRead(ring, pipeRead, readBuffer, read: 61, deadline: ms50)
checkSubmit(io_uring_submit(ring), 2)
var bytesRead: Int32 = 0
for n in 1...2 {
    cqe = waitCQE(ring)
    printCQE(cqe, "CQE \(n): \(name(cqe))")
    if cqe.user_data == 61 { bytesRead = cqe.res }
}
if bytesRead > 0 { print("read: \(quoted(readBuffer.prefix(Int(bytesRead))))") }

// MARK: - 7. Waiting with a limit: io_uring_wait_cqe_timeout
//
// `io_uring_wait_cqe_timeout(ring, &cqe, ts)` is io_uring_wait_cqe with a limit on the wait.
// If no CQE arrives in time it *returns* -ETIME: that is the return value of the call, not a
// CQE, and the CQ stays empty. Here nothing is in flight, so it must time out.
//
// Since 5.11 (IORING_FEAT_EXT_ARG) liburing hands the time to io_uring_enter(2); before, it
// submits an IORING_OP_TIMEOUT of its own (LIBURING_UDATA_TIMEOUT), so `ts` must stay put too.

print("io_uring_wait_cqe_timeout of 20 ms with nothing in flight")
var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
started = clock.now
var ret = io_uring_wait_cqe_timeout(ring, &cqePointer, ms20)
print("io_uring_wait_cqe_timeout = \(describe(res: ret)) after \(milliseconds(since: started)) ms; "
    + "CQEs ready: \(io_uring_cq_ready(ring))")

// When a CQE arrives in time, the call returns 0 and hands it over like io_uring_wait_cqe.
// With a 30 ms timer in flight and 1 s to wait: 0, and a CQE whose res is -ETIME. "The wait
// ran out" is the return value, "the timer ran out" is a CQE's res.

print("io_uring_wait_cqe_timeout of 1 s with a 30 ms timer in flight")
queueTimeout(ring, ms30, count: 0, userData: 71)
checkSubmit(io_uring_submit(ring), 1)
ret = io_uring_wait_cqe_timeout(ring, &cqePointer, s1)
guard ret == 0, let pointer = cqePointer else {
    stop("io_uring_wait_cqe_timeout returned \(describe(res: ret)) with a timer in flight")
}
cqe = pointer.pointee
io_uring_cqe_seen(ring, pointer)
printCQE(cqe, "io_uring_wait_cqe_timeout = \(ret): \(name(cqe))")

// MARK: - 8. What a completion count counts
//
// A count timeout counts the CQEs posted after it, but not every CQE: the kernel keeps a
// separate tally of timeouts that completed by *firing* (their time ran out) or by *their own
// count*, and subtracts it (io_uring/timeout.c: cq_timeouts). Every other CQE counts, timeouts'
// included. Four experiments, each a count timeout with a time limit as a safety net:
//
// - count 2: a pending 10 s timer is removed (as in section 4). Two CQEs follow, the remove's
//   0 and the timer's -ECANCELED. If the cancelled timeout's CQE counts, the count timeout
//   completes with 0 at once; if not, it waits out its 1 s and completes with -ETIME.
// - count 2: a read from the empty pipe linked to a 10 ms link timeout (as in section 5). The
//   read's -ECANCELED and the link timeout's -ETIME follow: the count is met (0) only if the
//   link timeout's CQE counts.
// - count 1: a 10 ms timer that expires. Its -ETIME is the only other CQE, so the count
//   timeout completes with 0 if that CQE counts, and with -ETIME after 100 ms if it does not.
// - count 2 (100 ms) and count 1 (1 s), then a NOP. The NOP's CQE counts for both, and meets
//   count 1 at once. Count 2 then completes with 0 if that timeout's CQE counts too, and with
//   -ETIME after its 100 ms if a timeout completed by its own count does not count.

print("what a count counts: IORING_OP_TIMEOUT count 2 (1 s), then remove a pending 10 s timer")
queueTimeout(ring, s10, count: 0, userData: 81)
checkSubmit(io_uring_submit(ring), 1)
queueTimeout(ring, s1, count: 2, userData: 82)
queueTimeoutRemove(ring, 81, userData: 83)
checkSubmit(io_uring_submit(ring), 2)
for n in 1...3 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

print("what a count counts: IORING_OP_TIMEOUT count 2 (1 s), then an empty-pipe read with a 10 ms link timeout")
queueTimeout(ring, s1, count: 2, userData: 91)
queueRead(ring, pipeRead, readBuffer, read: 92, deadline: ms10)
checkSubmit(io_uring_submit(ring), 3)
for n in 1...3 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

print("what a count counts: IORING_OP_TIMEOUT count 1 (100 ms), then a 10 ms timer that expires")
queueTimeout(ring, ms100, count: 1, userData: 101)
queueTimeout(ring, ms10, count: 0, userData: 102)
started = clock.now
checkSubmit(io_uring_submit(ring), 2)
for n in 1...2 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }
print("the count timeout's CQE arrived \(milliseconds(since: started)) ms after the submit")

print("what a count counts: IORING_OP_TIMEOUT count 2 (100 ms) and count 1 (1 s), then a NOP")
queueTimeout(ring, ms100, count: 2, userData: 111)
queueTimeout(ring, s1, count: 1, userData: 112)
sqe = getSQE(ring)
io_uring_prep_nop(sqe)
io_uring_sqe_set_data64(sqe, 113)
checkSubmit(io_uring_submit(ring), 3)
for n in 1...3 { cqe = waitCQE(ring); printCQE(cqe, "CQE \(n): \(name(cqe))") }

// MARK: - 9. Cleaning up
//
// Every request has completed: nothing points into our memory any more.

for ts in [ms10, ms20, ms30, ms50, ms100, s1, s10] { ts.deallocate() }
readBuffer.deallocate()
close(pipeRead)
close(pipeWrite)
destroyRing(ring)
