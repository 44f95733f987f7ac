// Lesson 03: the round trip, NOP by NOP, and user_data
//
// A request goes into the ring as an SQE and comes back as a CQE. The CQE carries only three
// things: `res` (the result, or -errno), `flags`, and `user_data`, a 64-bit value copied
// unchanged from the SQE. It does not say which opcode, which fd or which buffer it belongs
// to: user_data is the only link between a request and its completion, so a program puts
// there whatever lets it find its own record of the request (an index, a key, a pointer).
//
// IORING_OP_NOP does nothing and completes with res 0: the round trip with no I/O in the way.
// This lesson sends one, then a batch of NOPs behind a 20 ms timer in a single io_uring_submit
// call, reaps the completions two ways, and shows that they do not come back in the order they
// were submitted.
//
// Read next: man 3 io_uring_prep_nop, man 3 io_uring_sqe_set_data64, man 3 io_uring_submit,
// man 3 io_uring_wait_cqe, man 3 io_uring_cqe_seen, man 3 io_uring_peek_cqe (liburing 2.3
// has no page for io_uring_peek_batch_cqe: it is declared in liburing.h), man 3
// io_uring_cq_advance, man 3 io_uring_prep_timeout.

import CLiburing
import LabSupport

let arguments = lessonArguments(
    usage: "lesson-03-nop-and-user-data [NOPS]   (NOPS: how many NOPs to batch, 1 to 63, default 8)",
    max: 1)
// The ring has 64 SQEs and the timer takes one, so one submit can carry up to 63 NOPs.
// Lesson 06 shows how to push through more requests than a ring holds.
let nopCount = arguments.first.map { parseNumber($0, name: "NOPS", in: 1...63) } ?? 8

let ring = makeRing(entries: 64)
print("ring: sq_entries=\(ring.pointee.sq.ring_entries) cq_entries=\(ring.pointee.cq.ring_entries)")

// The ordering demonstration below uses a timer, IORING_OP_TIMEOUT (Linux 5.4; lesson 08
// covers timeouts). NOP itself is as old as io_uring (5.1). We ask the kernel's probe
// (lesson 02) whether the timer is there, and the probe is 5.6: so this lesson runs from
// Linux 5.6, and on anything older skips, saying why.
requireOpcodes(ring, IORING_OP_TIMEOUT)

// MARK: - 1. One round trip
//
// Head and tail are lesson 01's (its diagram, lessons/01-ring-setup.md): each ring has two
// counters in shared memory; we move the SQ tail and the CQ head, the kernel the SQ head and
// the CQ tail.
//
// `io_uring_get_sqe` hands out the next free SQE (nil if the SQ is full; the ring is empty
// here, so it cannot be) and moves only liburing's own copy of the SQ tail. `io_uring_prep_nop`
// fills in the opcode, and `io_uring_sqe_set_data64` the user_data. Nothing reaches the
// kernel yet: the SQE sits in shared memory until `io_uring_submit` stores the SQ tail and
// calls io_uring_enter(2), which returns how many SQEs the kernel consumed.
//
// `io_uring_wait_cqe` returns a pointer to the CQE at the CQ head (waiting for one if the CQ
// is empty). That CQE is a slot in the shared CQ ring: we copy it out, then
// `io_uring_cqe_seen` moves the CQ head one on, and the slot is the kernel's again. After
// cqe_seen the pointer must not be used.

guard let firstSQE = io_uring_get_sqe(ring) else { fail("io_uring_get_sqe returned nil on an empty ring") }
io_uring_prep_nop(firstSQE)
io_uring_sqe_set_data64(firstSQE, 42)
let firstSubmitted = io_uring_submit(ring)
guard firstSubmitted >= 0 else { fail("io_uring_submit returned \(describe(res: firstSubmitted))") }
print("one NOP, user_data=42: io_uring_submit = \(firstSubmitted)")

var cqePointer: UnsafeMutablePointer<io_uring_cqe>? = nil
var ret = io_uring_wait_cqe(ring, &cqePointer)
guard ret == 0, let waited = cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: ret))") }
let firstCQE = waited.pointee
io_uring_cqe_seen(ring, waited)
printCQE(firstCQE, "io_uring_wait_cqe = \(ret)")

// MARK: - 2. Many SQEs, one submit
//
// Now a batch: first a timer that completes after 20 ms, then `nopCount` NOPs. All of them go
// to the kernel in ONE io_uring_submit, that is one io_uring_enter system call, however many
// SQEs there are; this is where io_uring saves system calls.
//
// The program's own record of what it asked for is `pending`, keyed by user_data. Each CQE is
// matched back to its request by that key alone, and removed, so a completion that came twice
// or never would show.
//
// The timer's timespec is memory the kernel reads. How long must it stay put? Since 5.5
// (IORING_FEAT_SUBMIT_STABLE) the kernel copies an argument struct like this one while the
// SQE is submitted (man 3 io_uring_prep_timeout, NOTES); 5.4 read it until the completion.
// A Swift `var` passed as `&ts` is guaranteed for one call only, not even for the submit, so
// it goes on the heap either way, and the lab keeps it there until the timer's CQE: that is
// the rule that is always right, whatever the kernel, and for buffers the kernel fills while
// the request runs (lesson 04) the only right one.

let timerID: UInt64 = 100
let timespec = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
timespec.initialize(to: __kernel_timespec(tv_sec: 0, tv_nsec: 20_000_000))

var pending: [UInt64: String] = [:]
var submissionOrder: [UInt64] = []

// 1 + nopCount <= 64 SQEs on an empty SQ of 64: io_uring_get_sqe cannot return nil here.
guard let timerSQE = io_uring_get_sqe(ring) else { fail("the SQ is full") }
io_uring_prep_timeout(timerSQE, timespec, 0, 0)  // count 0: a pure timer, no completion count
io_uring_sqe_set_data64(timerSQE, timerID)
pending[timerID] = "TIMEOUT (20 ms)"
submissionOrder.append(timerID)

for n in 1...nopCount {
    guard let sqe = io_uring_get_sqe(ring) else { fail("the SQ is full after \(n - 1) NOPs") }
    io_uring_prep_nop(sqe)
    io_uring_sqe_set_data64(sqe, UInt64(n))
    pending[UInt64(n)] = "NOP #\(n)"
    submissionOrder.append(UInt64(n))
}
print("queued: TIMEOUT (20 ms) user_data=\(timerID), then \(nopCount) NOPs user_data=1 to \(nopCount)")

let clock = ContinuousClock()
let submittedAt = clock.now
let submitted = io_uring_submit(ring)
guard submitted >= 0 else { fail("io_uring_submit returned \(describe(res: submitted))") }
print("io_uring_submit = \(submitted)")
print("submission order: " + submissionOrder.map { String($0) }.joined(separator: " "))

// MARK: - 3. Reaping a batch: peek_batch_cqe and cq_advance
//
// A NOP has nothing to wait for, so the kernel completes each one while it is still inside
// io_uring_enter, and their CQEs are in the CQ by the time io_uring_submit returns. The timer
// is still running.
//
// `io_uring_peek_batch_cqe` never waits: it fills our array with pointers to up to `count`
// CQEs that are ready and returns how many. We ask for at most the number of NOPs. (Were the
// machine to stall for 20 ms right here, the timer's CQE would be ready as well, behind the
// NOPs; the wait below would then simply return it at once.) Here it makes no system call:
// it reads the CQEs between the CQ head and the CQ tail. Only when it finds no CQE ready while
// the kernel has flagged completions it could not post yet (a full CQ, lesson 28)
// does it make one io_uring_enter to flush them, and look again. After reading them,
// `io_uring_cq_advance(ring, n)` releases n slots in one step: one store, CQ head plus n,
// instead of n calls to cqe_seen.

var completionOrder: [UInt64] = []

func settle(_ cqe: io_uring_cqe, in pending: inout [UInt64: String]) -> String {
    // The CQE says nothing about what it completes except user_data: look it up.
    guard let request = pending.removeValue(forKey: cqe.user_data) else {
        fail("a CQE with user_data=\(cqe.user_data) matches no request")
    }
    return request
}

var batch = [UnsafeMutablePointer<io_uring_cqe>?](repeating: nil, count: nopCount)
let ready = io_uring_peek_batch_cqe(ring, &batch, UInt32(nopCount))
print("io_uring_peek_batch_cqe(up to \(nopCount)) = \(ready), ready without waiting:")
for pointer in batch.prefix(Int(ready)) {
    guard let pointer else { fail("io_uring_peek_batch_cqe returned a nil CQE pointer") }
    let cqe = pointer.pointee
    print("  " + format(cqe) + "  " + settle(cqe, in: &pending))
    completionOrder.append(cqe.user_data)
}
io_uring_cq_advance(ring, ready)
print("io_uring_cq_advance(\(ready))")

// MARK: - 4. Waiting for the rest: wait_cqe and cqe_seen
//
// Whatever is still pending has not completed yet: here, the timer. `io_uring_wait_cqe` blocks
// in io_uring_enter until a CQE arrives. A timer that runs out completes with -ETIME: for a
// pure timer that is the expected result, not a failure.

while !pending.isEmpty {
    ret = io_uring_wait_cqe(ring, &cqePointer)
    guard ret == 0, let pointer = cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: ret))") }
    let cqe = pointer.pointee
    io_uring_cqe_seen(ring, pointer)
    let elapsed = (clock.now - submittedAt).components
    let milliseconds = elapsed.seconds * 1000 + elapsed.attoseconds / 1_000_000_000_000_000
    let request = settle(cqe, in: &pending)
    print("io_uring_wait_cqe = \(ret), \(milliseconds) ms after the submit: " + format(cqe) + "  " + request)
    completionOrder.append(cqe.user_data)
}
// Its CQE is here: whatever the kernel, it is done with the timespec.
timespec.deallocate()

// MARK: - 5. The order
//
// Completions arrive when requests finish, not in the order they were submitted: the timer was
// first in and last out. The NOPs came back in their own order only because each finished on
// the spot, one after another; reads from the page cache and from a disk, or sends and
// receives on sockets, finish in any order. Never rely on CQE order: match by user_data, and
// when order matters, say so with IOSQE_IO_LINK (lesson 07).

print("completion order: " + completionOrder.map { String($0) }.joined(separator: " "))
print("requests still pending: \(pending.count)")

destroyRing(ring)
