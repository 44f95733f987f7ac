// Lesson 06: batching, and what to do when the SQ is full
//
// The submission queue has a fixed number of slots: the `entries` we gave io_uring_setup,
// rounded up to a power of two. `io_uring_get_sqe` hands out one free slot at a time and
// returns NULL (nil in Swift) when every slot holds an SQE the kernel has not consumed yet:
// when liburing's own SQ tail is sq_entries ahead of the SQ head (head and tail as in lesson
// 01's diagram, lessons/01-ring-setup.md).
// Nothing is lost and nothing blocks: it is the signal to submit what we have, which frees the
// slots, and to carry on. A program with more work than the ring holds therefore splits it
// into batches of at most `sq_entries` SQEs, one submit each: what this lesson does with 64
// NOPs through a ring of 8.
//
// The completion side has a limit too: the CQ (16 entries here, twice the SQ) must have room
// for every CQE the kernel posts. So we reap the completions of each batch before submitting
// the next, and show that the CQ never held more than one batch.
//
// Read next: man 3 io_uring_get_sqe, man 3 io_uring_sq_space_left, man 3 io_uring_sq_ready,
// man 3 io_uring_cq_ready, man 3 io_uring_submit_and_wait, man 2 io_uring_enter.

import CLiburing
import LabSupport

let usage = "lesson-06-batching [OPS [ENTRIES]]   (defaults: 64 operations, a ring of 8 entries)"
let arguments = lessonArguments(usage: usage, max: 2)
let ops = arguments.count > 0 ? parseNumber(arguments[0], name: "OPS", in: 1...1_000_000) : 64
let requested = arguments.count > 1 ? parseNumber(arguments[1], name: "ENTRIES", in: 1...4096) : 8

// MARK: - 1. A small ring
//
// We ask for `requested` entries; the kernel rounds up to a power of two (lesson 01) and
// gives the CQ twice as many. Everything below uses what was granted, read back from params.

var params = io_uring_params()
let ring = makeRing(entries: UInt32(requested), params: &params)
let sqEntries = Int(params.sq_entries)
let cqEntries = Int(params.cq_entries)
print("ring: asked for \(requested) entries, got sq_entries=\(sqEntries) cq_entries=\(cqEntries)")

// MARK: - 2. Filling the SQ until io_uring_get_sqe returns nil
//
// `io_uring_sq_ready` counts the SQEs we have taken with get_sqe that the kernel has not
// consumed yet (liburing 2.3: its own SQ tail minus the SQ head the kernel stores).
// `io_uring_sq_space_left` is sq_entries minus that. Both are plain loads from the shared
// ring: no system call.
//
// We take SQEs until get_sqe says no. Each one we get must be prepared (here as a NOP):
// an SQE handed out by get_sqe will be submitted with the next submit, whatever it contains.

print("filling the SQ:")
print("before: io_uring_sq_space_left = \(io_uring_sq_space_left(ring)), "
    + "io_uring_sq_ready = \(io_uring_sq_ready(ring))")
var prepared = 0
while let sqe = io_uring_get_sqe(ring) {
    io_uring_prep_nop(sqe)
    io_uring_sqe_set_data64(sqe, UInt64(prepared))
    prepared += 1
}
print("io_uring_get_sqe returned \(prepared) SQEs, then nil: the SQ is full")
print("after: io_uring_sq_space_left = \(io_uring_sq_space_left(ring)), "
    + "io_uring_sq_ready = \(io_uring_sq_ready(ring))")

// `io_uring_submit` stores the SQ tail and calls io_uring_enter(2) once. The kernel reads
// every SQE, moving the SQ head up to the tail: the slots are free again as soon as this returns,
// even for requests still in flight: the kernel has copied what the SQE says (the buffers an
// SQE points to are another matter, they must stay put until the CQE). NOPs complete during
// the call, so their CQEs are already there.

let firstSubmit = io_uring_submit(ring)
guard firstSubmit == prepared else {
    fail("io_uring_submit returned \(describe(res: firstSubmit)), expected \(prepared)")
}
print("io_uring_submit = \(firstSubmit); now io_uring_sq_space_left = \(io_uring_sq_space_left(ring)), "
    + "io_uring_sq_ready = \(io_uring_sq_ready(ring))")

// `io_uring_cq_ready` is the CQ's counterpart: CQEs posted (the CQ tail, the kernel's to move)
// that we have not consumed (the CQ head, ours). `io_uring_peek_batch_cqe` gives us pointers
// to up to that many, and one `io_uring_cq_advance` moves the CQ head past them all, handing
// their slots back to the kernel.

var cqes = [UnsafeMutablePointer<io_uring_cqe>?](repeating: nil, count: cqEntries)

/// Reap every CQE that is ready, calling `body` with a copy of each, and return how many.
func reapReady(_ ring: Ring, into cqes: inout [UnsafeMutablePointer<io_uring_cqe>?],
               _ body: (io_uring_cqe) -> Void) -> Int {
    let count = Int(io_uring_peek_batch_cqe(ring, &cqes, UInt32(cqes.count)))
    for index in 0..<count {
        if let cqe = cqes[index] { body(cqe.pointee) }
    }
    io_uring_cq_advance(ring, UInt32(count))  // the slots are the kernel's again
    return count
}

let readyAfterFirst = io_uring_cq_ready(ring)
var firstFailures = 0
let firstReaped = reapReady(ring, into: &cqes) { cqe in
    if cqe.res != 0 { firstFailures += 1 }
}
print("io_uring_cq_ready = \(readyAfterFirst): reaped \(firstReaped) CQEs, \(firstFailures) failed")

// MARK: - 3. More work than the ring holds: split it into batches
//
// Batch splitting, as one loop:
//   fill:   take SQEs while there is work left AND get_sqe gives one (nil = SQ full)
//   submit: io_uring_submit_and_wait(ring, n) submits the batch and waits until n CQEs are
//           there, in ONE io_uring_enter(2) call (to_submit = every SQE pending in the SQ,
//           min_complete = n; here both are the batch's size)
//   reap:   consume every CQE of the batch, which frees their CQ slots
//
// Why this never overflows the CQ: a batch is at most sq_entries (8) requests, we wait for all
// of them and reap them all before the next submit, so the CQ holds at most 8 CQEs of its 16.
// A CQE that finds the CQ full (CQ tail - CQ head == cq_entries) cannot go in: since Linux 5.5
// (IORING_FEAT_NODROP) the kernel keeps it on a list in kernel memory rather than dropping it,
// and since 5.8 it also sets IORING_SQ_CQ_OVERFLOW in the SQ ring's flags, which is what
// io_uring_cq_has_overflow reads. Such CQEs reach the CQ only once we have made room and the
// kernel is entered; kernels before 5.5 simply lose them. (Exercise 1 takes the reaping out;
// lesson 28 is about overflow.)
//
// Note the order in the fill condition: we check for work *before* asking for an SQE, because
// an SQE we took but did not prepare would still be submitted.
//
// We count completions by user_data in `timesSeen` to check that every operation completed
// exactly once: no missing CQE, no CQE twice, none with a user_data we never used.

print("\(ops) NOPs through the ring, in batches of at most \(sqEntries):")
var timesSeen = [UInt32](repeating: 0, count: ops)
var outOfRange = 0
var failed = 0
var reaped = 0
var next = 0
var submits = 0
var mostReadyAtOnce = 0
var sawOverflow = false
let shownSubmits = 8

while reaped < ops {
    let first = next
    while next < ops, let sqe = io_uring_get_sqe(ring) {
        io_uring_prep_nop(sqe)
        io_uring_sqe_set_data64(sqe, UInt64(next))
        next += 1
    }
    let queued = next - first
    let spaceLeft = io_uring_sq_space_left(ring)

    let waitFor = queued  // CQEs to wait for: the whole batch
    let submitted = io_uring_submit_and_wait(ring, UInt32(waitFor))
    submits += 1
    guard submitted == queued else {
        // A short submit (or -errno): the kernel stopped early and did not wait (man 2
        // io_uring_enter). For NOPs on a healthy ring this does not happen.
        fail("submit \(submits): io_uring_submit_and_wait returned \(describe(res: submitted)), expected \(queued)")
    }

    let ready = Int(io_uring_cq_ready(ring))
    mostReadyAtOnce = max(mostReadyAtOnce, ready)
    if io_uring_cq_has_overflow(ring) { sawOverflow = true }
    let reapedNow = reapReady(ring, into: &cqes) { cqe in
        if cqe.res != 0 { failed += 1 }
        if cqe.user_data < UInt64(ops) {
            timesSeen[Int(cqe.user_data)] += 1
        } else {
            outOfRange += 1
        }
    }
    reaped += reapedNow

    // One line per submit, the first few and the last (a large OPS would print thousands). The
    // line is built only when it is printed: with a large OPS this loop measures how fast NOPs
    // go through the ring, and in a release build (`swift build -c release`) nothing in it
    // allocates memory per batch (a debug build allocates a few times per NOP).
    if submits <= shownSubmits || reaped == ops {
        if submits > shownSubmits + 1 { print("(submits \(shownSubmits + 1) to \(submits - 1) not shown)") }
        print("submit \(submits): user_data \(first)...\(next - 1), sq_space_left \(spaceLeft), "
            + "io_uring_submit_and_wait(ring, \(waitFor)) = \(submitted), cq_ready \(ready), reaped \(reapedNow)")
    }
}

// MARK: - 4. What the kernel answered
//
// Every count below is computed from the CQEs we reaped; `strace -e trace=io_uring_enter`
// shows one io_uring_enter per submit (plus the one of section 2).

print("\(ops) operations through a ring of \(sqEntries): \(submits) submits")
let once = timesSeen.filter { $0 == 1 }.count
let missing = timesSeen.filter { $0 == 0 }.count
let duplicated = timesSeen.filter { $0 > 1 }.count
print("CQEs reaped: \(reaped), failed (res != 0): \(failed)")
print("user_data 0...\(ops - 1): \(once) completed exactly once, \(missing) missing, "
    + "\(duplicated) more than once, \(outOfRange) unknown")
print("most CQEs waiting at once: \(mostReadyAtOnce) of \(cqEntries); "
    + "CQ overflow seen: \(sawOverflow ? "yes" : "no")")

destroyRing(ring)
