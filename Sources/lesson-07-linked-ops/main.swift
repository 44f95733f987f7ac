// Lesson 07: linked operations
//
// Requests submitted together are independent: the kernel may start them in any order and
// run them at the same time, so "write, then fsync, then read it back" as three plain SQEs is
// a race. Setting IOSQE_IO_LINK on an SQE ties the NEXT SQE to it: the next one starts only
// after this one has completed, and only if it succeeded. A run of linked SQEs is a chain;
// the first SQE without the flag ends it. If a link fails, every link after it completes with
// -ECANCELED without running. "Fails" means any unexpected result, so a short read, which is
// not an error for read(2), breaks a chain too. But what counts as failing is decided by each
// opcode's code in the kernel. On Linux 6.18 these opcodes post their -errno without marking
// the request failed, so the next link runs anyway: fsync, sync_file_range, fallocate, statx,
// mkdirat, renameat, linkat, symlinkat, unlinkat, ftruncate (6.9; section 6 shows it for
// fsync; lesson 12 meets the others). A request that fails before it even starts (an fd that is not open)
// breaks the chain whatever its opcode. IOSQE_IO_HARDLINK orders the same way but does not
// care about results: the chain goes on after a failure.
//
// This lesson runs one chain of each kind on a temp file and prints every CQE in the order it
// arrived, in one submit per chain.
//
// Read next: man 3 io_uring_sqe_set_flags, man 2 io_uring_enter (IOSQE_IO_LINK,
// IOSQE_IO_HARDLINK), man 3 io_uring_prep_fsync.

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-07-linked-ops", max: 0)

// MARK: - 1. A ring, a temp file, and two fds on it
//
// IORING_OP_READ and IORING_OP_WRITE came in Linux 5.6 (FSYNC in 5.1, links in 5.3,
// hard links in 5.5), so a kernel that has the first two has everything this lesson uses.
// The fds come from plain open(2): opening is not what this lesson is about (lesson 04 does
// it through the ring). `readOnly` is the same file opened for reading only; writing through
// it is the failure we will provoke.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_WRITE, IORING_OP_READ, IORING_OP_FSYNC)

let path = makeTempFile(named: "chain.txt", contents: [])
let readWrite = open(path, O_RDWR)
let readOnly = open(path, O_RDONLY)
guard readWrite >= 0, readOnly >= 0 else { fail("cannot open \(path): \(describe(res: -errno))") }

// The buffers the kernel reads from and writes into. They must stay at one address until the
// CQE of the request that uses them has arrived, and a linked request may run long after
// io_uring_submit has returned, so they are allocated on the heap (never `&array`, which is
// valid for one call only) and freed at the end, after every chain has completed.

let text = Array("linked: written, synced, read back\n".utf8)
let writeBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: text.count, alignment: 8)
writeBuffer.copyBytes(from: text)
let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 8)
let extra = Array("never written\n".utf8)
let extraBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: extra.count, alignment: 8)
extraBuffer.copyBytes(from: extra)

// Labels for the CQEs, by user_data: the CQE carries nothing else that says which request it
// answers.
let labels = RequestLabels()

// SQEs come from `getSQE` (io_uring_get_sqe, failing with an error line if the SQ is full).
// A chain must be submitted whole (a link never crosses submits), so a full SQ would be a bug
// here: each chain has at most 3 SQEs, the ring 8, and every chain is submitted and reaped
// before the next one is prepared.

/// Submit the prepared chain with one io_uring_submit, wait for `count` CQEs, and print them
/// in the order they arrived. Returns copies of the CQEs in that order.
func submitAndPrint(_ ring: Ring, count: Int, labels: RequestLabels) -> [io_uring_cqe] {
    let submitted = io_uring_submit(ring)
    print("io_uring_submit = \(describe(res: submitted))")
    guard submitted == count else { fail("expected to submit \(count) SQEs") }
    return waitAndPrint(ring, count: count, labels: labels)  // io_uring_wait_cqe + cqe_seen, count times
}

// MARK: - 2. write -> fsync -> read, linked
//
// Three SQEs, the first two with IOSQE_IO_LINK. The kernel starts the write; only when it has
// completed successfully does the fsync start; only after that the read. The read has no
// link flag, so the chain ends with it. (It is the last link, so a short read here would
// cancel nothing; we ask for exactly the bytes we wrote anyway.)

print("write -> fsync -> read, linked with IOSQE_IO_LINK:")
var sqe = getSQE(ring)
io_uring_prep_write(sqe, readWrite, writeBuffer.baseAddress, UInt32(text.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
labels.tag(sqe, "write")

sqe = getSQE(ring)
io_uring_prep_fsync(sqe, readWrite, 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
labels.tag(sqe, "fsync")

sqe = getSQE(ring)
io_uring_prep_read(sqe, readWrite, readBuffer.baseAddress, UInt32(text.count), 0)
labels.tag(sqe, "read")

let ordered = submitAndPrint(ring, count: 3, labels: labels)
if let read = ordered.last, read.res > 0 {
    print("read back: \(quoted(readBuffer.prefix(Int(read.res))))")
}

// MARK: - 3. A failing link cancels the rest
//
// The same chain, but the write goes through `readOnly`. The write fails with -EBADF (the fd
// is not open for writing), so the fsync and the read never start: each completes with
// -ECANCELED. They still get a CQE each, so every request is accounted for.

print("the same chain, writing through a read-only fd:")
sqe = getSQE(ring)
io_uring_prep_write(sqe, readOnly, extraBuffer.baseAddress, UInt32(extra.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
labels.tag(sqe, "write")

sqe = getSQE(ring)
io_uring_prep_fsync(sqe, readOnly, 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
labels.tag(sqe, "fsync")

sqe = getSQE(ring)
io_uring_prep_read(sqe, readOnly, readBuffer.baseAddress, UInt32(text.count), 0)
labels.tag(sqe, "read")

_ = submitAndPrint(ring, count: 3, labels: labels)

// MARK: - 4. A short read breaks a chain too
//
// read(2) returning fewer bytes than asked is normal, not an error. In a chain io_uring
// treats it as one: the read asked for 4096 bytes, the file holds fewer, so the linked write
// after it is cancelled. A chain means "do the next step if this one did all it was asked".
// We check the file's size afterwards with fstat(2): the write never happened.

print("a read asking for more than the file holds, linked to a write:")
sqe = getSQE(ring)
io_uring_prep_read(sqe, readWrite, readBuffer.baseAddress, UInt32(readBuffer.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
labels.tag(sqe, "read 4096")

sqe = getSQE(ring)
io_uring_prep_write(sqe, readWrite, extraBuffer.baseAddress, UInt32(extra.count), UInt64(text.count))
labels.tag(sqe, "write")

_ = submitAndPrint(ring, count: 2, labels: labels)
var info = stat()
guard fstat(readWrite, &info) == 0 else { fail("fstat: \(describe(res: -errno))") }
print("file size after: \(info.st_size) bytes")

// MARK: - 5. IOSQE_IO_HARDLINK: the chain goes on after a failure
//
// The chain of section 3 again, with IOSQE_IO_HARDLINK instead of IOSQE_IO_LINK. The order
// is kept (fsync after write, read after fsync) but the write's -EBADF does not cancel
// anything: the fsync and the read run, and the read shows the file as section 2 left it.
// (A hard link does break if a request cannot even be submitted, e.g. a malformed SQE; an
// error in the result is what it survives. man 2 io_uring_enter.)

print("the failing chain with IOSQE_IO_HARDLINK:")
sqe = getSQE(ring)
io_uring_prep_write(sqe, readOnly, extraBuffer.baseAddress, UInt32(extra.count), 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_HARDLINK)
labels.tag(sqe, "write")

sqe = getSQE(ring)
io_uring_prep_fsync(sqe, readOnly, 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_HARDLINK)
labels.tag(sqe, "fsync")

sqe = getSQE(ring)
io_uring_prep_read(sqe, readOnly, readBuffer.baseAddress, UInt32(text.count), 0)
labels.tag(sqe, "read")

let hard = submitAndPrint(ring, count: 3, labels: labels)
if let read = hard.last, read.res > 0 {
    print("read back: \(quoted(readBuffer.prefix(Int(read.res))))")
}

// MARK: - 6. Not every failure breaks a chain
//
// An fsync of a pipe fails: a pipe cannot be synchronized, and fsync(2) says EINVAL. Linked to
// a read, with plain IOSQE_IO_LINK, it should cancel the read. On Linux 6.18 it does not: the
// kernel's fsync code (io_uring/sync.c) stores the -EINVAL as the result but does not mark the
// request failed, and only a request marked failed breaks a chain. The same holds for
// sync_file_range, fallocate, statx, mkdirat, renameat, linkat, symlinkat and unlinkat (and
// madvise, shutdown, the xattr opcodes and 6.9's ftruncate); reads and writes (short ones too), openat, close,
// fadvise, splice, tee and timeouts do mark themselves failed. Older kernels marked failed
// fsyncs too (5.x's io_fsync called req_set_fail_links), so there the read is cancelled: the
// expected output allows both. So a chain stopping can never be what keeps a program safe:
// check each CQE.

print("an fsync that fails while it runs (a pipe), linked to a read:")
var pipeFDs: [Int32] = [-1, -1]
guard pipe(&pipeFDs) == 0 else { fail("pipe: \(describe(res: -errno))") }

sqe = getSQE(ring)
io_uring_prep_fsync(sqe, pipeFDs[0], 0)
io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
labels.tag(sqe, "fsync")

sqe = getSQE(ring)
io_uring_prep_read(sqe, readWrite, readBuffer.baseAddress, UInt32(text.count), 0)
labels.tag(sqe, "read")

let notBroken = submitAndPrint(ring, count: 2, labels: labels)
if let read = notBroken.last {
    print("the read after the failed fsync: " + (read.res == -ECANCELED ? "cancelled, the chain broke"
        : "ran, the chain did not break"))
}
close(pipeFDs[0])
close(pipeFDs[1])

// MARK: - 7. Cleaning up
//
// Every CQE has arrived, so the kernel is done with the buffers: only now may they be freed.

writeBuffer.deallocate()
readBuffer.deallocate()
extraBuffer.deallocate()
close(readWrite)
close(readOnly)
destroyRing(ring)
