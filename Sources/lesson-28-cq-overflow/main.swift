// Lesson 28: CQ overflow
//
// The SQ limits how many requests you hand the kernel in one go; it does not limit how many
// are in flight. Twenty requests can wait in the kernel behind an SQ of 4, and if they all
// complete at once, their twenty CQEs need somewhere to go. The CQ holds `cq_entries`. What
// does not fit is an *overflow*: with IORING_FEAT_NODROP (Linux 5.5) the kernel keeps those
// CQEs on a list of its own, moves them into the CQ as room appears, but only when you enter
// the kernel to get events, and (since 5.8) says so with IORING_SQ_CQ_OVERFLOW in the SQ ring's
// flags. Nothing is lost, but a program that only reads the CQ from user space never sees the rest.
//
// This lesson makes a CQ of 8, arms 20 polls that all complete with one write, and recovers
// every CQE: it counts them, checks each user_data arrives exactly once, watches the flag set
// and cleared, and prints what this kernel does with a submit while the CQ is overflowed and
// what the CQ ring's overflow counter says. Then it sizes a ring so that nothing overflows.
//
// Read next: man 2 io_uring_setup (IORING_SETUP_CQSIZE, IORING_FEAT_NODROP),
// man 3 io_uring_queue_init_params, man 3 io_uring_get_events, man 3 io_uring_cq_has_overflow,
// man 2 io_uring_enter (IORING_ENTER_GETEVENTS, EBUSY, EBADR).

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-28-cq-overflow", max: 0)

// MARK: - 1. A CQ smaller than the work
//
// IORING_SETUP_CQSIZE (5.5) lets us choose cq_entries instead of the default, twice the SQ.
// We ask for 4 SQ entries and 8 CQ entries: the default size, but said out loud. The kernel
// reports in `features` whether it keeps overflowed CQEs (IORING_FEAT_NODROP, 5.5); before
// that it dropped them and only counted them, and this lesson would have nothing to recover.
// IORING_SQ_CQ_OVERFLOW came later, in 5.8 (kernel commit 6d5f90490460): 5.5 to 5.7 keep the
// CQEs but do not say so, and a program that only peeks cannot know it must enter the kernel.
// No feature bit marks 5.8; the first one after it, IORING_FEAT_POLL_32BITS (5.9), stands
// witness for the flag, so the lesson also skips on 5.8, which would have run it. (The
// requests we use, IORING_OP_POLL_ADD and IORING_OP_NOP, are 5.1: no probe.)

var params = io_uring_params()
params.flags = IORING_SETUP_CQSIZE
params.cq_entries = 8
let requested = params.cq_entries  // the call below overwrites it with what the kernel granted
let ring = makeRing(entries: 4, params: &params)
print("io_uring_queue_init_params(4, IORING_SETUP_CQSIZE, cq_entries \(requested)): "
    + "sq_entries=\(params.sq_entries) cq_entries=\(params.cq_entries)")
guard params.features & IORING_FEAT_NODROP != 0 else {
    skip("this kernel lacks IORING_FEAT_NODROP (added in Linux 5.5): overflowed CQEs are dropped")
}
guard params.features & IORING_FEAT_POLL_32BITS != 0 else {
    skip("this kernel may lack IORING_SQ_CQ_OVERFLOW (added in Linux 5.8; the lesson's witness "
        + "is IORING_FEAT_POLL_32BITS, Linux 5.9)")
}
print("IORING_FEAT_NODROP: set (the kernel keeps CQEs that do not fit)")

/// The SQ ring's flags word, which the kernel writes and we only read (`*ring->sq.kflags`).
func sqFlags(_ ring: Ring) -> UInt32 { ring.pointee.sq.kflags.pointee }

/// `0`, or `0x2 (CQ_OVERFLOW)`: IORING_SQ_* by name (man 2 io_uring_enter).
func format(sqFlags flags: UInt32) -> String {
    let names = [(IORING_SQ_NEED_WAKEUP, "NEED_WAKEUP"), (IORING_SQ_CQ_OVERFLOW, "CQ_OVERFLOW"),
                 (IORING_SQ_TASKRUN, "TASKRUN")].filter { flags & $0.0 != 0 }.map(\.1)
    return flags == 0 ? "0" : "0x" + String(flags, radix: 16) + " (" + names.joined(separator: "|") + ")"
}

/// What the rings say right now: CQEs waiting in the CQ (io_uring_cq_ready: the CQ's tail minus
/// its head, read from the shared ring), and the SQ flags.
func state(_ ring: Ring) -> String {
    "cq ready \(io_uring_cq_ready(ring)), SQ flags \(format(sqFlags: sqFlags(ring)))"
}

// MARK: - 2. Twenty requests in flight, completing together
//
// IORING_OP_POLL_ADD (lesson 26) completes when its fd becomes ready. We arm 20 polls for
// POLLIN on the read end of an empty pipe: none can complete yet, so all 20 wait in the kernel.
// The SQ has 4 entries, so they go in as 5 submits of 4; the SQ is free again after each one,
// since the kernel has taken the SQEs. Poll n has user_data 2800 + n (2801 to 2820).
//
// Then one write(2) makes the pipe readable and wakes all 20. Their completions run as task
// work of this thread on its way back from the write, so by the time write returns all 20
// CQEs have been posted: 8 into the CQ, 12 onto the overflow list.

typealias Pipe = (read: Int32, write: Int32)

/// A pipe, both ends; the lesson closes them itself.
func makePipe() -> Pipe {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { fail("pipe: \(describe(res: -errno))") }
    return (fds[0], fds[1])
}

/// Close both ends, then report `message`: a failed run leaves no fd of ours open.
func fail(closing pipe: Pipe, _ message: String) -> Never {
    close(pipe.read)
    close(pipe.write)
    fail(message)
}

/// Arm `count` polls for POLLIN on the pipe's read end, user_data `firstUserData`..., at most
/// `batch` per submit (so the SQ is never full when we ask for an SQE).
func armPolls(_ ring: Ring, pipe: Pipe, count: Int, firstUserData: UInt64, batch: Int) -> Int {
    var submits = 0
    for n in 0..<count {
        let sqe = getSQE(ring)
        io_uring_prep_poll_add(sqe, pipe.read, UInt32(POLLIN))
        io_uring_sqe_set_data64(sqe, firstUserData + UInt64(n))
        if (n + 1) % batch == 0 || n + 1 == count {
            let pending = (n % batch) + 1, ret = io_uring_submit(ring)
            guard ret == pending else { fail(closing: pipe, "io_uring_submit of \(pending) polls returned \(describe(res: ret))") }
            submits += 1
        }
    }
    return submits
}

let polls = 20, firstPoll: UInt64 = 2801, nop: UInt64 = 2800
let pipeFDs = makePipe()
let submits = armPolls(ring, pipe: pipeFDs, count: polls, firstUserData: firstPoll, batch: Int(params.sq_entries))
print("\(polls) polls (POLLIN, user_data \(firstPoll)-\(firstPoll + UInt64(polls) - 1)) armed on an empty pipe "
    + "in \(submits) submits of at most \(params.sq_entries): \(polls) requests in flight")
print("before the write: \(state(ring))")
let written = write(pipeFDs.write, "x", 1)
print("write(pipe, 1 byte) = \(written < 0 ? describe(res: -errno) : "\(written)")")
print("after the write: \(state(ring))")

// MARK: - 3. Submitting while overflowed
//
// What does the kernel do with new work while CQEs wait on its overflow list? Kernels 5.5 to
// 5.12 refused it: io_uring_enter returned -EBUSY until the application had reaped enough for
// the backlog to fit (back-pressure). Since 5.13 the submit is accepted; the new request's
// CQE joins the back of the overflow list, so completions still come out in the order they
// were posted. We submit one NOP (user_data 2800) and print what the submit returned.
//
// (liburing's io_uring_submit sees IORING_SQ_CQ_OVERFLOW and adds IORING_ENTER_GETEVENTS to
// the submit, so the kernel also tries to flush the list: with the CQ full, nothing moves.)

var sqe = getSQE(ring)
io_uring_prep_nop(sqe)
io_uring_sqe_set_data64(sqe, nop)
let submitted = io_uring_submit(ring)
let refused = submitted == -EBUSY
print("io_uring_submit (a NOP, user_data \(nop)) while overflowed = \(describe(res: submitted)): "
    + (submitted == 1 ? "accepted" : refused ? "refused until the CQ is reaped" : "unexpected"))
guard submitted == 1 || refused else { fail(closing: pipeFDs, "io_uring_submit returned \(describe(res: submitted))") }
print("after the submit: \(state(ring))")

// MARK: - 4. Recovering every CQE
//
// We reap what the CQ holds with io_uring_peek_batch_cqe and io_uring_cq_advance: a look at
// the shared ring, no system call (while the CQ is not empty liburing never enters the kernel
// here). Draining the CQ does not bring the rest: the flag stays set and the CQ stays empty
// until we enter the kernel with IORING_ENTER_GETEVENTS. We do that two ways:
//   - io_uring_get_events (liburing 2.3): io_uring_enter(fd, 0, 0, GETEVENTS), nothing else;
//   - io_uring_peek_cqe: normally a look at the ring, but on an empty CQ with the flag set,
//     liburing 2.3 enters the kernel with GETEVENTS too (as do wait_cqe and peek_batch_cqe).
// Each flush moves as many overflowed CQEs as fit, oldest first, and the kernel clears
// IORING_SQ_CQ_OVERFLOW when its list is empty; io_uring_cq_has_overflow tests that flag.

var seen: [UInt64: Int] = [:], order: [UInt64] = [], wrong: [String] = []
var cqes = [UnsafeMutablePointer<io_uring_cqe>?](repeating: nil, count: 32)
var round = 0
while true {
    round += 1
    let count = Int(io_uring_peek_batch_cqe(ring, &cqes, UInt32(cqes.count)))
    for cqe in cqes.prefix(count).compactMap({ $0?.pointee }) {
        seen[cqe.user_data, default: 0] += 1
        order.append(cqe.user_data)
        let expected = cqe.user_data == nop ? 0 : Int32(POLLIN)
        if cqe.res != expected { wrong.append(format(cqe)) }
    }
    io_uring_cq_advance(ring, UInt32(count))
    print("round \(round): \(count) CQEs reaped from the CQ")
    print("  CQ drained: \(state(ring))")
    if !io_uring_cq_has_overflow(ring) { break }  // liburing's test of IORING_SQ_CQ_OVERFLOW
    if round == 1 {
        print("  io_uring_get_events = \(describe(res: io_uring_get_events(ring))): \(state(ring))")
    } else {
        var first: UnsafeMutablePointer<io_uring_cqe>?
        print("  io_uring_peek_cqe = \(describe(res: io_uring_peek_cqe(ring, &first))): \(state(ring))")
    }
    guard round <= polls + 1 else { fail(closing: pipeFDs, "IORING_SQ_CQ_OVERFLOW still set after \(round) rounds") }
}
close(pipeFDs.read)  // every poll has completed (the checks below say if one had not)
close(pipeFDs.write)
if refused {  // 5.5-5.12: the NOP is still in the SQ; now there is room for its CQE
    checkSubmit(io_uring_submit(ring), 1)
    let cqe = waitCQE(ring, seconds: 5)
    seen[cqe.user_data, default: 0] += 1
    order.append(cqe.user_data)
}

// Every user_data we gave exactly once, nothing else, and the NOP's CQE last: it was posted
// after the 20 polls' and waited behind them.
let expected = (0..<UInt64(polls)).map { firstPoll + $0 } + [nop]
let missing = expected.filter { seen[$0] == nil }, twice = seen.filter { $0.value > 1 }.keys.sorted()
let strangers = seen.keys.filter { !expected.contains($0) }.sorted()
guard missing.isEmpty, twice.isEmpty, strangers.isEmpty, wrong.isEmpty else {
    fail("CQEs: missing \(missing), more than once \(twice), unknown \(strangers), wrong res \(wrong)")
}
print("recovered \(order.count) CQEs: polls \(firstPoll)-\(firstPoll + UInt64(polls) - 1) once each with "
    + "res=\(POLLIN) (POLLIN), NOP \(nop) once with res=0, \(order.last == nop ? "last" : "not last")")

// MARK: - 5. The CQ ring's overflow counter
//
// `*ring->cq.koverflow` is the kernel's `cq_overflow` field. Before IORING_FEAT_NODROP it
// counted every CQE that found the CQ full, and was the only trace of it. With NODROP it
// counts only CQEs the kernel really *dropped*: on Linux 6.18, when it cannot allocate the
// list entry for an overflowed CQE (io_cqring_add_overflow in io_uring/io_uring.c); the next
// io_uring_enter that would wait then fails once with -EBADR (5.19). Our 13 CQEs waited on the
// list and were all delivered, so it stays 0.

print("cq overflow (*cq.koverflow) = \(ring.pointee.cq.koverflow.pointee)")
destroyRing(ring)

// MARK: - 6. Sizing the CQ
//
// An overflow is a slow path (a memory allocation per CQE, a list, an extra system call to
// flush), not a failure; but a CQ large enough for everything in flight never takes it. The
// default CQ is twice the SQ; IORING_SETUP_CQSIZE sets it independently of the SQ (rounded up
// to a power of two, at least sq_entries, at most 65536; lesson 01 shows the limits). The same
// 20 polls on a ring with SQ 4 and a CQ asked for 20 (given 32): all 20 CQEs fit.

var defaults = io_uring_params()
let plain = makeRing(entries: 4, params: &defaults)
print("sizing: io_uring_queue_init_params(4) without CQSIZE: cq_entries=\(defaults.cq_entries) (2 x sq_entries)")
destroyRing(plain)
var sized = io_uring_params()
sized.flags = IORING_SETUP_CQSIZE
sized.cq_entries = UInt32(polls)
let big = makeRing(entries: 4, params: &sized)
print("sizing: io_uring_queue_init_params(4, IORING_SETUP_CQSIZE, cq_entries \(polls)): "
    + "sq_entries=\(sized.sq_entries) cq_entries=\(sized.cq_entries)")
let pipe2 = makePipe()
_ = armPolls(big, pipe: pipe2, count: polls, firstUserData: 2831, batch: Int(sized.sq_entries))
_ = write(pipe2.write, "x", 1)
print("sizing: the same \(polls) polls and write: \(state(big))")
var fits = 0
while case let count = io_uring_peek_batch_cqe(big, &cqes, UInt32(cqes.count)), count > 0 {
    fits += Int(count)
    io_uring_cq_advance(big, count)
}
print("sizing: \(fits) CQEs reaped from the CQ: \(state(big))")
close(pipe2.read)
close(pipe2.write)
destroyRing(big)
