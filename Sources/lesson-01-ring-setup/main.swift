// Lesson 01: setting up a ring
//
// An io_uring instance is two ring buffers the kernel shares with your process:
//
//   the submission queue (SQ)  you write requests (SQEs) here, the kernel reads them
//   the completion queue (CQ)  the kernel writes results (CQEs) here, you read them
//
// One system call, io_uring_setup(2), creates both and returns a file descriptor; liburing's
// `io_uring_queue_init_params` makes that call and then mmaps the rings into our address
// space. This lesson asks the kernel for rings of several sizes and prints what it granted:
// the sizes are rounded, the CQ is twice the SQ unless we say otherwise, and `params.features`
// tells us what this kernel can do. Then it asks for sizes the kernel refuses, and prints why.
//
// Read next: man 2 io_uring_setup, man 3 io_uring_queue_init_params, man 7 io_uring.

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

switch readSysctl("/proc/sys/kernel/io_uring_disabled") {
case nil: print("kernel.io_uring_disabled: not present (a kernel before 6.6 has no such switch)")
case "0": print("kernel.io_uring_disabled = 0: every process may create rings")
case let value?: print("kernel.io_uring_disabled = \(value): io_uring is restricted on this machine")
}

// MARK: - 2. The first ring
//
// `struct io_uring` is liburing's handle on the rings. It holds pointers into the mmap'd
// memory and the ring's fd, and every liburing call takes its address. So it must stay at one
// address for as long as the ring exists: we allocate it on the heap instead of passing
// `&ring` of a Swift `var`, whose address is only guaranteed for the length of one call.
//
// `io_uring_params` is both question and answer. We fill in `flags` (and, with some flags,
// more fields); the kernel writes back the sizes it granted, the `features` it has, and the
// offsets liburing used to mmap the rings. Its other fields must be zero.

let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
ring.initialize(to: io_uring())
var params = io_uring_params()

let ret = io_uring_queue_init_params(8, ring, &params)
if ret < 0 {
    // -EPERM or -ENOSYS: io_uring is unavailable here; LabSupport explains which and skips.
    exitBecauseSetupFailed(ret, entries: 8)
}
print("io_uring_queue_init_params(8) = \(ret): ring fd \(ring.pointee.ring_fd), "
    + "sq_entries=\(params.sq_entries), cq_entries=\(params.cq_entries)")

// `features` is a bitmask of IORING_FEAT_* flags (man 2 io_uring_setup, "features"). Later
// lessons test single bits before relying on them, e.g. lesson 05 checks FEAT_RW_CUR_POS
// before writing at offset -1. Bits past 12 (IORING_FEAT_LINKED_FILE) are written here by
// value, so that the table compiles with liburing 2.3's header, which names no newer ones.
//
// Two names to know when reading the man page: liburing's header and the kernel call bit 8
// IORING_FEAT_EXT_ARG, but man 2 io_uring_setup lists it as IORING_FEAT_ENTER_EXT_ARG. And
// NODROP is "almost never" dropping: a CQE that finds the CQ full waits in a kernel-side
// overflow list until there is room; only if the kernel cannot allocate memory for it is it
// lost, counted in the CQ ring's `overflow` field (and since 5.19 io_uring_enter returns -EBADR
// the next time it would wait). REG_REG_RING is not "the ring fd can be registered": that is
// IORING_REGISTER_RING_FDS (5.18), after which io_uring_enter(2) takes the registered index in
// place of the fd; the 6.3 bit says io_uring_register(2) accepts a registered index as well.
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

// Tearing down: `io_uring_queue_exit` unmaps the rings and closes the fd. Requests still in
// flight would be cancelled; we have none. Only then may the memory of `ring` be freed.
io_uring_queue_exit(ring)
ring.deallocate()

// MARK: - 3. What size do you get?
//
// `entries` is the number of SQEs. The kernel rounds it up to a power of two, and makes the
// CQ twice as large, because requests in flight plus completions not yet reaped can exceed
// the SQ: the SQ entries are free again as soon as the kernel has read them.
//
// `tryRing` creates a ring, reports what was granted (or the error), and tears it down again.

func tryRing(_ entries: UInt32, flags: UInt32 = 0, cqEntries: UInt32 = 0) -> String {
    let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
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

// IORING_SETUP_CQSIZE sets the CQ size ourselves, in `params.cq_entries` (rounded up too).
// A server with many requests in flight, or multishot requests that post many CQEs each, wants
// a CQ much larger than its SQ (lesson 28, coming later, shows what happens when the CQ
// fills up).
print("IORING_SETUP_CQSIZE, entries 8, cq_entries 100 -> \(tryRing(8, flags: IORING_SETUP_CQSIZE, cqEntries: 100))")

// MARK: - 4. Sizes the kernel refuses
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

extension String {
    /// Left-aligned in a column of `width` characters.
    func padding(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
