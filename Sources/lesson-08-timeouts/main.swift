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

// MARK: - 1. A ring, the opcodes, and some bookkeeping
//
// TIMEOUT is Linux 5.4, TIMEOUT_REMOVE and LINK_TIMEOUT 5.5; the pipe reads of sections 5, 6
// and 8 use IORING_OP_READ (5.6). We ask the kernel rather than guess from its version.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_TIMEOUT, IORING_OP_TIMEOUT_REMOVE, IORING_OP_LINK_TIMEOUT,
               IORING_OP_READ, IORING_OP_NOP)

/// The lesson's record of its requests: a label for each user_data (LabSupport's RequestLabels;
/// a CQE says nothing else about the request it answers), and the labels of the SQEs queued
/// since the last submit.
struct Requests {
    let labels = RequestLabels()
    var queued: [String] = []

    /// Give `sqe` the next user_data, remember what it is for, and return the user_data.
    @discardableResult
    mutating func tag(_ sqe: UnsafeMutablePointer<io_uring_sqe>, _ label: String) -> UInt64 {
        queued.append(label)
        return labels.tag(sqe, label)
    }

    /// io_uring_submit, checking that the kernel took every queued SQE, and saying which.
    mutating func submit(_ ring: Ring) {
        let submitted = io_uring_submit(ring)
        print("io_uring_submit = \(describe(res: submitted)): " + queued.joined(separator: ", "))
        guard submitted == queued.count else { fail("expected to submit \(queued.count) SQEs") }
        queued = []
    }

    /// Wait for `count` CQEs and print them, by name, in the order they arrived. Returns copies.
    func waitAndPrint(_ ring: Ring, count: Int) -> [io_uring_cqe] {
        LabSupport.waitAndPrint(ring, count: count, labels: labels)
    }
}
var requests = Requests()

// SQEs come from `getSQE` (io_uring_get_sqe, or an error line if the SQ is full). Every
// section submits and reaps its (at most 4) SQEs before the next section takes any, and the
// ring has 8, so the SQ cannot be full here.

/// A relative time for the kernel, allocated so that it stays at one address until the CQE
/// of the request pointing at it has arrived. The caller deallocates it after that CQE.
func makeTimespec(milliseconds: Int) -> UnsafeMutablePointer<__kernel_timespec> {
    let ts = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
    ts.initialize(to: __kernel_timespec(tv_sec: Int64(milliseconds / 1000),
                                        tv_nsec: Int64(milliseconds % 1000) * 1_000_000))
    return ts
}

let clock = ContinuousClock()
func milliseconds(since start: ContinuousClock.Instant, _ clock: ContinuousClock) -> Int64 {
    let elapsed = (clock.now - start).components
    return elapsed.seconds * 1000 + elapsed.attoseconds / 1_000_000_000_000_000
}

// MARK: - 2. A timer: IORING_OP_TIMEOUT with count 0
//
// `io_uring_prep_timeout(sqe, ts, count, flags)` with count 0 is a plain timer: it completes
// when `ts` has passed (relative to the submit, on CLOCK_MONOTONIC), with res -ETIME. For a
// timer that is the normal result, not a failure. The SQE holds only the address of `ts`.
// (Since 5.5, IORING_FEAT_SUBMIT_STABLE, the kernel copies the timespec when it takes the SQE;
// 5.4 read it later. Keeping it until the CQE is right on every kernel, and it is the rule
// that buffers, which the kernel fills while a request runs, always need.)

print("a timer: IORING_OP_TIMEOUT of 30 ms, count 0")
let timerTime = makeTimespec(milliseconds: 30)
var sqe = getSQE(ring)
io_uring_prep_timeout(sqe, timerTime, 0, 0)
let timerUserData = requests.tag(sqe, "timeout 30 ms")
var started = clock.now
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 1)
print("it arrived \(milliseconds(since: started, clock)) ms after the submit")
timerTime.deallocate()  // its CQE is here: the kernel is done with the timespec

// MARK: - 3. A completion count: IORING_OP_TIMEOUT with count 3
//
// With count N the timeout also watches the CQ: it completes with res 0 as soon as N other
// CQEs have been posted after it was submitted, or with -ETIME if the time runs out first.
// Nearly every CQE counts; the exceptions are the CQEs of timeouts that expired or were
// completed by their own count (section 8 measures which). We give it a whole second, then
// three NOPs in the same submit. The NOPs complete at once, their three CQEs meet the count, and the timeout
// completes with 0 long before its second is up. (The time is only a safety net: if the count
// were never met it would still end.)

print("a completion count: IORING_OP_TIMEOUT of 1 s with count 3, then 3 NOPs, one submit")
let countTime = makeTimespec(milliseconds: 1000)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, countTime, 3, 0)
requests.tag(sqe, "timeout count 3")
for n in 1...3 {
    sqe = getSQE(ring)
    io_uring_prep_nop(sqe)
    requests.tag(sqe, "NOP \(n)")
}
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 4)
countTime.deallocate()

// MARK: - 4. Cancelling a timeout: IORING_OP_TIMEOUT_REMOVE
//
// `io_uring_prep_timeout_remove(sqe, user_data, 0)` finds the pending timeout that was
// submitted with that user_data and cancels it. Two CQEs answer: the timeout's, with
// -ECANCELED, and the remove's own, with 0. We submit a 10 s timer, then, in a second
// submit, the remove: the timer has no chance to fire first. Both CQEs are posted during the
// second submit. Their order is not promised; on 6.18 the remove's comes first, because the
// remove completes on the spot and the cancelled timeout is completed just after it.
//
// A user_data that matches no pending timeout gives -ENOENT: here the timer of section 2,
// which fired long ago, and 999, which was never used. (A timeout caught at the very moment
// it fires gives -EALREADY: too late to cancel, its CQE is on the way. That is what
// man 3 io_uring_prep_timeout_remove and the kernel's code say; man 2 io_uring_enter says
// -EBUSY.)

print("cancelling a pending timeout: IORING_OP_TIMEOUT of 10 s, then IORING_OP_TIMEOUT_REMOVE")
let longTime = makeTimespec(milliseconds: 10_000)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, longTime, 0, 0)
let longUserData = requests.tag(sqe, "timeout 10 s")
requests.submit(ring)

sqe = getSQE(ring)
io_uring_prep_timeout_remove(sqe, longUserData, 0)
requests.tag(sqe, "timeout_remove user_data=\(longUserData)")
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 2)
longTime.deallocate()

print("removing timeouts the kernel does not know: one that has fired, one never submitted")
sqe = getSQE(ring)
io_uring_prep_timeout_remove(sqe, timerUserData, 0)
requests.tag(sqe, "timeout_remove user_data=\(timerUserData)")
sqe = getSQE(ring)
io_uring_prep_timeout_remove(sqe, 999, 0)
requests.tag(sqe, "timeout_remove user_data=999")
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 2)

// MARK: - 5. A deadline for one request: IORING_OP_LINK_TIMEOUT, the timer wins
//
// A link timeout is linked *after* the request it guards: the request gets IOSQE_IO_LINK,
// and the next SQE is `io_uring_prep_link_timeout(sqe, ts, 0)`. Both go in with one submit.
// (A link timeout needs a request before it in the same chain; on its own it is -EINVAL.)
//
// The request is a read from a pipe nobody writes to: it can only wait. (A pipe has no
// offsets; the 0 we pass is ignored.) After 50 ms the timer fires, the kernel cancels the
// read, and two CQEs come back: the read with -ECANCELED and the link timeout with -ETIME.
// The read buffer, like the timespec, stays allocated until the read's CQE.
//
// Who wins is certain: the read cannot complete. Which CQE comes first is not promised by
// io_uring. On 6.18 it is the link timeout's: the expired timer completes the link timeout
// and asks for the read to be cancelled, and the read's cancellation completes after that.
// Match CQEs by user_data, never by their position.

var pipeFDs: [Int32] = [-1, -1]
guard pipe(&pipeFDs) == 0 else { fail("pipe: \(describe(res: -errno))") }
let (pipeRead, pipeWrite) = (pipeFDs[0], pipeFDs[1])
let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)

print("a read from an empty pipe, linked to an IORING_OP_LINK_TIMEOUT of 50 ms")
let deadline = makeTimespec(milliseconds: 50)
sqe = getSQE(ring)
io_uring_prep_read(sqe, pipeRead, readBuffer.baseAddress, UInt32(readBuffer.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
requests.tag(sqe, "read")
sqe = getSQE(ring)
io_uring_prep_link_timeout(sqe, deadline, 0)
requests.tag(sqe, "link_timeout 50 ms")
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 2)
deadline.deallocate()

// MARK: - 6. The other order: the read wins
//
// The same pair, but first we put 6 bytes into the pipe with a plain write(2). Now the read
// has data the moment the kernel issues it and completes during the submit itself. The read's
// res is the byte count, and the link timeout completes with -ECANCELED: it was cancelled
// because the request it guarded finished first.
//
// This too is a race, and the margin decides it: the read has its data at once, the timer
// has 50 ms, so the read wins on any machine (exercise 2 shrinks the margin). The order of
// the two CQEs is again the kernel's: on 6.18 the read's, then the link timeout's, because
// the read's completion is what cancels the timer.

print("the same pair with 6 bytes already in the pipe")
let ready = Array("ready\n".utf8)
guard write(pipeWrite, ready, ready.count) == ready.count else {
    fail("write to the pipe: \(describe(res: -errno))")
}
let deadline2 = makeTimespec(milliseconds: 50)
sqe = getSQE(ring)
io_uring_prep_read(sqe, pipeRead, readBuffer.baseAddress, UInt32(readBuffer.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
let readUserData = requests.tag(sqe, "read")
sqe = getSQE(ring)
io_uring_prep_link_timeout(sqe, deadline2, 0)
requests.tag(sqe, "link_timeout 50 ms")
requests.submit(ring)
let pair = requests.waitAndPrint(ring, count: 2)
deadline2.deallocate()
if let read = pair.first(where: { $0.user_data == readUserData }), read.res > 0 {
    print("read: \(quoted(readBuffer.prefix(Int(read.res))))")
}

// MARK: - 7. Waiting with a limit: io_uring_wait_cqe_timeout
//
// `io_uring_wait_cqe_timeout(ring, &cqe, ts)` is io_uring_wait_cqe with a limit on the wait.
// If no CQE arrives in time it *returns* -ETIME: that is the return value of the call, not a
// CQE, and the CQ stays empty. Here nothing is in flight, so it must time out.
//
// Since 5.11 (IORING_FEAT_EXT_ARG) liburing hands the time to io_uring_enter(2) directly.
// On older kernels it takes an SQE of our ring for an IORING_OP_TIMEOUT of its own (user_data
// LIBURING_UDATA_TIMEOUT) and submits it: so `ts` follows the same rule as every timespec.

print("io_uring_wait_cqe_timeout of 20 ms with nothing in flight")
let waitTime = makeTimespec(milliseconds: 20)
var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
started = clock.now
var ret = io_uring_wait_cqe_timeout(ring, &cqePointer, waitTime)
print("io_uring_wait_cqe_timeout = \(describe(res: ret)) after \(milliseconds(since: started, clock)) ms; "
    + "CQEs ready: \(io_uring_cq_ready(ring))")
waitTime.deallocate()

// When a CQE does arrive in time, the call returns 0 and hands it over like io_uring_wait_cqe.
// A 30 ms timer is in flight and we wait up to 1 s: the call returns 0, and it is the CQE
// whose res is -ETIME. The two -ETIMEs mean different things: "the wait ran out" is the
// return value, "the timer ran out" is a CQE's res.

print("io_uring_wait_cqe_timeout of 1 s with a 30 ms timer in flight")
let shortTimer = makeTimespec(milliseconds: 30)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, shortTimer, 0, 0)
requests.tag(sqe, "timeout 30 ms")
requests.submit(ring)
let longWait = makeTimespec(milliseconds: 1000)
ret = io_uring_wait_cqe_timeout(ring, &cqePointer, longWait)
guard ret == 0, let pointer = cqePointer else {
    fail("io_uring_wait_cqe_timeout returned \(describe(res: ret)) with a timer in flight")
}
let timerCQE = pointer.pointee
io_uring_cqe_seen(ring, pointer)
printCQE(timerCQE, "io_uring_wait_cqe_timeout = \(ret): \(requests.labels[timerCQE.user_data])")
longWait.deallocate()
shortTimer.deallocate()

// MARK: - 8. What a completion count counts
//
// A count timeout counts the CQEs posted after it, but not every CQE: the kernel keeps a
// separate tally of timeouts that completed by *firing* (their time ran out) or by *their own
// count*, and subtracts it (io_uring/timeout.c: cq_timeouts). Every other CQE counts, timeouts'
// included. Two experiments, each a count timeout with a time limit as a safety net:
//
// - count 2: a pending 10 s timer is removed (as in section 4). Two CQEs follow, the remove's
//   0 and the timer's -ECANCELED. If the cancelled timeout's CQE counts, the count timeout
//   completes with 0 at once; if not, it waits out its 1 s and completes with -ETIME.
// - count 2: a read from the empty pipe linked to a 10 ms link timeout (as in section 5). The
//   read's -ECANCELED and the link timeout's -ETIME follow: the count is met (0) only if the
//   link timeout's CQE counts.
// - count 1: a 10 ms timer that expires. Its -ETIME is the only other CQE, so the count
//   timeout completes with 0 if that CQE counts, and with -ETIME after 100 ms if it does not.

print("what a count counts: IORING_OP_TIMEOUT count 2 (1 s), then remove a pending 10 s timer")
let pendingTime = makeTimespec(milliseconds: 10_000)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, pendingTime, 0, 0)
let pendingUserData = requests.tag(sqe, "timeout 10 s")
requests.submit(ring)
let countRemoveTime = makeTimespec(milliseconds: 1000)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, countRemoveTime, 2, 0)
requests.tag(sqe, "timeout count 2")
sqe = getSQE(ring)
io_uring_prep_timeout_remove(sqe, pendingUserData, 0)
requests.tag(sqe, "timeout_remove user_data=\(pendingUserData)")
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 3)
pendingTime.deallocate()
countRemoveTime.deallocate()

print("what a count counts: IORING_OP_TIMEOUT count 2 (1 s), then an empty-pipe read with a 10 ms link timeout")
let countLinkTime = makeTimespec(milliseconds: 1000)
let shortDeadline = makeTimespec(milliseconds: 10)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, countLinkTime, 2, 0)
requests.tag(sqe, "timeout count 2")
sqe = getSQE(ring)
io_uring_prep_read(sqe, pipeRead, readBuffer.baseAddress, UInt32(readBuffer.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
requests.tag(sqe, "read")
sqe = getSQE(ring)
io_uring_prep_link_timeout(sqe, shortDeadline, 0)
requests.tag(sqe, "link_timeout 10 ms")
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 3)
countLinkTime.deallocate()
shortDeadline.deallocate()

print("what a count counts: IORING_OP_TIMEOUT count 1 (100 ms), then a 10 ms timer that expires")
let countTimerTime = makeTimespec(milliseconds: 100)
let expiringTime = makeTimespec(milliseconds: 10)
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, countTimerTime, 1, 0)
requests.tag(sqe, "timeout count 1")
sqe = getSQE(ring)
io_uring_prep_timeout(sqe, expiringTime, 0, 0)
requests.tag(sqe, "timeout 10 ms")
started = clock.now
requests.submit(ring)
_ = requests.waitAndPrint(ring, count: 2)
print("the count timeout's CQE arrived \(milliseconds(since: started, clock)) ms after the submit")
countTimerTime.deallocate()
expiringTime.deallocate()

// MARK: - 9. Cleaning up
//
// Every request has completed, so nothing points into our memory any more.

readBuffer.deallocate()
close(pipeRead)
close(pipeWrite)
destroyRing(ring)
