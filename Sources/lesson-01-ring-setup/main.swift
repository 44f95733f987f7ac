// Lesson 01: setting up a ring
//
// An io_uring instance is two ring buffers the kernel shares with your process:
//
//   the submission queue (SQ)  you write requests (SQEs) here, the kernel reads them
//   the completion queue (CQ)  the kernel writes results (CQEs) here, you read them
//
// One system call, io_uring_setup(2), creates both and returns a file descriptor; liburing's
// `io_uring_queue_init_params` makes that call and then mmaps the rings into our address
// space. This lesson creates a ring and looks inside it: where each ring's head and tail are,
// and how they move while one NOP makes the round trip. Then it asks the kernel for rings of
// several sizes and prints what it granted (the sizes are rounded, the CQ is twice the SQ
// unless we say otherwise) or why it refused. Last, it decodes `params.features`, the list of
// what this kernel can do.
//
// Read next: man 7 io_uring, man 2 io_uring_setup, man 3 io_uring_queue_init_params.

import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-01-ring-setup", max: 0)

// MARK: - 1. Is io_uring allowed here?
//
// Since Linux 6.6 an administrator can switch io_uring off with a sysctl:
//   0  every process may create rings (the default)
//   1  only members of the group in kernel.io_uring_group, and processes with CAP_SYS_ADMIN,
//      may; everyone else gets -EPERM
//   2  nobody may: io_uring_setup fails with -EPERM
// Containers may also block the system calls with a seccomp profile (-EPERM or -ENOSYS), and
// kernels before 5.1 have no io_uring at all (-ENOSYS). Every lesson checks setup's result
// and says which of these it met, then exits 77 (skipped). Here we just look at the setting.

switch readLines("/proc/sys/kernel/io_uring_disabled")?.first {
case nil: print("kernel.io_uring_disabled: not present (a kernel before 6.6 has no such switch)")
case "0": print("kernel.io_uring_disabled = 0: every process may create rings")
case let value?: print("kernel.io_uring_disabled = \(value): io_uring is restricted on this machine")
}

// MARK: - 2. The first ring
//
// `struct io_uring` is liburing's handle on the rings, not the kernel's: the kernel never sees
// it. It holds the ring's fd, pointers into the mmap'd memory (which does not move), and
// liburing's own state, such as its own SQ tail `sq.sqe_tail`, which every call reads and
// updates. So there must be exactly one copy, used by every call: two copies would each hand
// out the same SQE. A Swift `&ring` on a `var` is a pointer valid for one call only, possibly
// to a temporary, and we hand the ring from function to function; so we allocate it once on
// the heap and pass that pointer everywhere. (Later lessons get exactly this from
// LabSupport's `makeRing`.)
//
// `io_uring_params` is both question and answer. We fill in `flags` (and, with some flags,
// more fields); the kernel writes back the sizes it granted, the `features` it has, and the
// offsets liburing used to mmap the rings. Its other fields must be zero.

let ring = Ring.allocate(capacity: 1)
ring.initialize(to: io_uring())
var params = io_uring_params()

let ret = io_uring_queue_init_params(8, ring, &params)
if ret < 0 {
    // -EPERM or -ENOSYS: io_uring is unavailable here; LabSupport explains which and skips.
    // -ENOMEM: the ring's memory is over RLIMIT_MEMLOCK (see the prose); that fails, exit 1.
    ring.deallocate()
    exitBecauseSetupFailed(ret, entries: 8)
}
print("io_uring_queue_init_params(8) = \(ret): ring fd \(ring.pointee.ring_fd), "
    + "sq_entries=\(params.sq_entries), cq_entries=\(params.cq_entries)")

// MARK: - 3. What the kernel mapped
//
// io_uring_setup made three areas of memory, and liburing mapped them into our process (in two
// mappings since 5.4, see below):
//   the SQ ring  head, tail, ring_mask, ring_entries, flags, dropped, and `array`: one entry
//                per slot, holding the index of the SQE that slot submits
//   the SQEs     a separate array of `struct io_uring_sqe` (64 bytes each): the requests
//   the CQ ring  head, tail, ring_mask, ring_entries, overflow, flags, and the CQEs themselves
//                (`struct io_uring_cqe`, 16 bytes each), inside the ring
// `params.sq_off` and `params.cq_off` give each field's byte offset within its mapping;
// liburing turned them into the pointers in `ring.sq` and `ring.cq` (khead, ktail, array,
// sqes, cqes, ...). The offsets are the kernel's to choose, and they change: Linux 6.1 gives
// each head and tail a 64-byte cache line of its own (the SQ tail at byte 64), 6.6 and later
// pack all four into one line (the SQ tail at byte 4).
//
// head and tail are free-running 32-bit counters: entry n lives in slot n & ring_mask, which
// is why ring sizes are powers of two. The entries from head up to tail are the ones the
// producer has published and the consumer has not taken yet:
//   SQ  we produce (we store the tail), the kernel consumes (it stores the head)
//   CQ  the kernel produces (it stores the tail), we consume (we store the head)
// Full means tail - head == ring_entries; empty means head == tail.

print("SQ ring: ring_entries=\(ring.pointee.sq.kring_entries.pointee) "
    + "ring_mask=\(ring.pointee.sq.kring_mask.pointee); head at byte \(params.sq_off.head), "
    + "tail at \(params.sq_off.tail), array[] at \(params.sq_off.array)")
print("CQ ring: ring_entries=\(ring.pointee.cq.kring_entries.pointee) "
    + "ring_mask=\(ring.pointee.cq.kring_mask.pointee); head at byte \(params.cq_off.head), "
    + "tail at \(params.cq_off.tail), cqes[] at \(params.cq_off.cqes)")

// Since 5.4 (IORING_FEAT_SINGLE_MMAP) one mmap covers both rings, and liburing points
// ring.sq and ring.cq into the same memory; before that each ring had a mapping of its own.
// The SQEs are always a separate mapping (offset IORING_OFF_SQES).
let sqeBytes = Int(params.sq_entries) * MemoryLayout<io_uring_sqe>.size
if ring.pointee.sq.ring_ptr == ring.pointee.cq.ring_ptr {
    print("mmaps: both rings in one of \(ring.pointee.sq.ring_sz) bytes (IORING_FEAT_SINGLE_MMAP), "
        + "the \(params.sq_entries) SQEs in another of \(sqeBytes) bytes")
} else {
    print("mmaps: the SQ ring in one of \(ring.pointee.sq.ring_sz) bytes, the CQ ring in one of "
        + "\(ring.pointee.cq.ring_sz) bytes, the \(params.sq_entries) SQEs in a third of \(sqeBytes) bytes")
}

// The SQ ring does not hold SQEs: slot i of the SQ ring holds array[i], the index of an SQE
// in the SQE array. liburing 2.3 fills it once, array[i] = i, in io_uring_queue_init_params
// (src/setup.c), and from then on always hands out SQE i for slot i. (liburing 2.2 and older
// wrote array[] at every submit, as man 7 io_uring's example does.)
let indices = (0..<Int(params.sq_entries)).map { String(ring.pointee.sq.array[$0]) }
print("SQ index array after setup: array[0...\(params.sq_entries - 1)] = " + indices.joined(separator: " "))

// MARK: - 4. One NOP through the rings
//
// Now the four counters while a request makes the round trip. We read them with plain loads:
// with nothing but NOPs and no SQPOLL, the kernel moves them only inside the io_uring_enter
// calls this thread makes, and each call has returned before we look. (In general a request
// can complete at any time, from an interrupt or a kernel worker; that is why liburing reads
// the CQ tail with an acquire load, as io_uring_cq_ready below does.
// Lesson 32, coming later, does it all by hand.)
//
//   io_uring_get_sqe  checks there is room (its own tail minus the SQ head < ring_entries),
//                     returns &sqes[tail & ring_mask] and bumps its *own* tail. It stores
//                     nothing the kernel reads: the SQ tail has not moved.
//   io_uring_submit   stores that tail into the SQ tail, then calls
//                     io_uring_enter(fd, to_submit, 0, 0). Inside, the kernel reads each
//                     array[head & ring_mask], handles that SQE, and stores the new SQ head.
//                     A NOP completes on the spot, so the kernel also wrote a CQE at
//                     cqes[CQ tail & ring_mask] and stored the new CQ tail, before returning.
//   io_uring_wait_cqe returns &cqes[CQ head & ring_mask] if the CQ tail is past the head
//                     (it waits in io_uring_enter only if not).
//   io_uring_cqe_seen stores CQ head + 1: the slot is the kernel's again.
//
// Three small helpers print it: the four counters on one line, after a label in a column.

func counters(_ ring: Ring) -> String {
    "SQ head=\(ring.pointee.sq.khead.pointee) tail=\(ring.pointee.sq.ktail.pointee)  "
        + "CQ head=\(ring.pointee.cq.khead.pointee) tail=\(ring.pointee.cq.ktail.pointee)"
}
func column(_ text: String) -> String { "  " + text.padding(to: 30) }
extension String {
    /// Left-aligned in a column of `width` characters (here and in section 7's table).
    func padding(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}

print("one NOP through the rings:")
print(column("at the start") + counters(ring))
guard let sqe = io_uring_get_sqe(ring) else { fail("io_uring_get_sqe returned nil on an empty ring") }
let sqeSlot = ring.pointee.sq.sqes.distance(to: sqe)
io_uring_prep_nop(sqe)
io_uring_sqe_set_data64(sqe, 1)
print(column("io_uring_get_sqe = sqes[\(sqeSlot)]") + counters(ring)
    + "  (liburing's own tail: \(ring.pointee.sq.sqe_tail))")

let submitted = io_uring_submit(ring)
guard submitted == 1 else { fail("io_uring_submit returned \(describe(res: submitted)), expected 1") }
print(column("io_uring_submit = \(submitted)") + counters(ring))

var cqePointer: UnsafeMutablePointer<io_uring_cqe>? = nil
let waited = io_uring_wait_cqe(ring, &cqePointer)
guard waited == 0, let cqe = cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: waited))") }
print("  CQE in cqes[\(ring.pointee.cq.cqes.distance(to: cqe))]: " + format(cqe.pointee))
io_uring_cqe_seen(ring, cqe)
print(column("io_uring_cqe_seen") + counters(ring))

// Eight more: the SQ is 8 slots and its head is at 1, so the eighth SQE wraps around to
// slot 0 (8 & 7). The CQ has 16 slots: its eight new CQEs go in slots 1 to 8. We read them
// the way man 7 io_uring shows (CQE at head & ring_mask, then the next), and hand all eight
// slots back with one store to the CQ head: io_uring_cq_advance(ring, 8).
var slots: [String] = []
for n in 2...9 {
    guard let sqe = io_uring_get_sqe(ring) else { fail("io_uring_get_sqe returned nil after \(n - 2) SQEs") }
    slots.append("sqes[\(ring.pointee.sq.sqes.distance(to: sqe))]")
    io_uring_prep_nop(sqe)
    io_uring_sqe_set_data64(sqe, UInt64(n))
}
print("eight more NOPs: io_uring_get_sqe = " + slots.joined(separator: " "))
let batch = io_uring_submit(ring)
guard batch == 8 else { fail("io_uring_submit returned \(describe(res: batch)), expected 8") }
print(column("io_uring_submit = \(batch)") + counters(ring))

let ready = io_uring_cq_ready(ring)  // CQ tail (an acquire load) minus CQ head
let head = ring.pointee.cq.khead.pointee
var cqSlots: [String] = [], userData: [String] = [], results: [String] = []
for i in 0..<ready {
    let slot = (head &+ i) & ring.pointee.cq.ring_mask
    let cqe = ring.pointee.cq.cqes[Int(slot)]
    cqSlots.append(String(slot))
    userData.append(String(cqe.user_data))
    results.append(describe(res: cqe.res))
}
print("  CQ slots " + cqSlots.joined(separator: " ") + " hold user_data " + userData.joined(separator: " ")
    + ", res " + results.joined(separator: " "))
io_uring_cq_advance(ring, ready)
print(column("io_uring_cq_advance(\(ready))") + counters(ring))

// Tearing down: `io_uring_queue_exit` unmaps the rings and closes the fd. Requests still in
// flight would be cancelled; we have none. Only then may the memory of `ring` be freed.
io_uring_queue_exit(ring)
ring.deallocate()

// MARK: - 5. What size do you get?
//
// `entries` is the number of SQEs. The kernel rounds it up to a power of two, and makes the
// CQ twice as large, because requests in flight plus completions not yet reaped can exceed
// the SQ: the SQ entries are free again as soon as the kernel has read them.
//
// `tryRing` creates a ring, reports what was granted (or the error), and tears it down again.

func tryRing(_ entries: UInt32, flags: UInt32 = 0, cqEntries: UInt32 = 0) -> String {
    let ring = Ring.allocate(capacity: 1)
    ring.initialize(to: io_uring())
    defer { ring.deallocate() }
    var params = io_uring_params()
    params.flags = flags
    params.cq_entries = cqEntries  // read only with IORING_SETUP_CQSIZE
    let ret = io_uring_queue_init_params(entries, ring, &params)
    guard ret == 0 else {
        // A failed setup returns -errno and leaves nothing to tear down.
        return "ret=\(describe(res: ret))"
    }
    io_uring_queue_exit(ring)
    return "sq_entries=\(params.sq_entries) cq_entries=\(params.cq_entries)"
}

print("requested entries -> granted:")
for entries: UInt32 in [1, 5, 8, 100, 4096] {
    print("  \(entries) -> \(tryRing(entries))")
}

// IORING_SETUP_CQSIZE sets the CQ size ourselves, in `params.cq_entries`. It is rounded up to
// a power of two too, and only then compared with the SQ: it may not be smaller. (man 2
// io_uring_setup says "greater than entries"; this kernel accepts equal, and 5 for an SQ of 8,
// as the second line shows.) A server with many requests in flight, or multishot requests
// that post many CQEs each, wants a CQ much larger than its SQ (lesson 28
// shows what happens when the CQ fills up).
print("IORING_SETUP_CQSIZE, entries 8, cq_entries 100 -> \(tryRing(8, flags: IORING_SETUP_CQSIZE, cqEntries: 100))")
print("IORING_SETUP_CQSIZE, entries 8, cq_entries 5 -> \(tryRing(8, flags: IORING_SETUP_CQSIZE, cqEntries: 5))")

// MARK: - 6. Sizes the kernel refuses
//
// The limits are IORING_MAX_ENTRIES (32768 SQEs) and IORING_MAX_CQ_ENTRIES (65536 CQEs).
// Asking for 0, or for more than the maximum, gives -EINVAL, returned by the call (never in
// the global errno). IORING_SETUP_CLAMP turns "too many" into "the maximum" instead; it does
// nothing for 0, which stays -EINVAL.

print("entries 0 -> \(tryRing(0))")
print("entries 32769 -> \(tryRing(32769))")
print("entries 32769 with IORING_SETUP_CLAMP -> \(tryRing(32769, flags: IORING_SETUP_CLAMP))")
print("entries 0 with IORING_SETUP_CLAMP -> \(tryRing(0, flags: IORING_SETUP_CLAMP))")
print("IORING_SETUP_CQSIZE, entries 8, cq_entries 0 -> \(tryRing(8, flags: IORING_SETUP_CQSIZE, cqEntries: 0))")
print("IORING_SETUP_CQSIZE, entries 8, cq_entries 4 -> \(tryRing(8, flags: IORING_SETUP_CQSIZE, cqEntries: 4))")

// MARK: - 7. What this kernel can do: params.features
//
// The first ring's `params.features` is a bitmask of IORING_FEAT_* flags (man 2
// io_uring_setup, "features"). Later lessons test single bits before relying on them, e.g.
// lesson 05 checks FEAT_RW_CUR_POS before writing at offset -1. A kernel sets the bits it
// knows: Debian 12's Linux 6.1 the first 13, 6.12 the first 16, 6.18 all 18. Bits past 12
// (IORING_FEAT_LINKED_FILE) are written here by value, so that the table compiles with
// liburing 2.3's header, which names no newer ones. The appendix of lessons/01-ring-setup.md
// says more about three of them (NODROP, EXT_ARG, REG_REG_RING).
let knownFeatures: [(bit: UInt32, name: String, since: String, meaning: String)] = [
    (IORING_FEAT_SINGLE_MMAP, "SINGLE_MMAP", "5.4", "SQ and CQ rings share one mmap"),
    (IORING_FEAT_NODROP, "NODROP", "5.5", "completions are almost never dropped when the CQ is full"),
    (IORING_FEAT_SUBMIT_STABLE, "SUBMIT_STABLE", "5.5", "SQE data may be reused once submitted"),
    (IORING_FEAT_RW_CUR_POS, "RW_CUR_POS", "5.6", "offset -1 means the file's current position"),
    (IORING_FEAT_CUR_PERSONALITY, "CUR_PERSONALITY", "5.6", "requests run with the submitter's credentials"),
    (IORING_FEAT_FAST_POLL, "FAST_POLL", "5.7", "sockets wait by internal poll, not by a worker thread"),
    (IORING_FEAT_POLL_32BITS, "POLL_32BITS", "5.9", "poll masks have 32 bits (EPOLLEXCLUSIVE and up)"),
    (IORING_FEAT_SQPOLL_NONFIXED, "SQPOLL_NONFIXED", "5.11", "SQPOLL works without registered files"),
    (IORING_FEAT_EXT_ARG, "EXT_ARG", "5.11", "io_uring_enter takes a timeout argument"),
    (IORING_FEAT_NATIVE_WORKERS, "NATIVE_WORKERS", "5.12", "async workers are threads of this process"),
    (IORING_FEAT_RSRC_TAGS, "RSRC_TAGS", "5.13", "registered files and buffers can carry tags"),
    (IORING_FEAT_CQE_SKIP, "CQE_SKIP", "5.17", "IOSQE_CQE_SKIP_SUCCESS is supported"),
    (IORING_FEAT_LINKED_FILE, "LINKED_FILE", "5.17", "a linked request's file is looked up when it runs"),
    (1 << 13, "REG_REG_RING", "6.3", "io_uring_register(2) accepts a registered ring fd"),
    (1 << 14, "RECVSEND_BUNDLE", "6.10", "one send/recv may use several provided buffers"),
    (1 << 15, "MIN_TIMEOUT", "6.12", "waits can take a minimum batch timeout"),
    (1 << 16, "RW_ATTR", "6.14", "reads and writes can carry attributes (integrity data)"),
    (1 << 17, "NO_IOWAIT", "6.15", "waiting need not count as iowait"),
]
print("features = 0x\(String(params.features, radix: 16)):")
for feature in knownFeatures where params.features & feature.bit != 0 {
    let name = "IORING_FEAT_" + feature.name
    print("  " + name.padding(to: 28) + ("(" + feature.since + ")").padding(to: 7) + feature.meaning)
}
let unknownBits = params.features & ~knownFeatures.reduce(0) { $0 | $1.bit }
if unknownBits != 0 {
    print("  and bits 0x\(String(unknownBits, radix: 16)), newer than this lesson")
}
