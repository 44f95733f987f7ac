// Lesson 07: linked operations
//
// Requests submitted together are independent: the kernel may start them in any order and
// run them at the same time, so "write, then fsync, then read it back" as three plain SQEs is
// a race. Setting IOSQE_IO_LINK on an SQE ties the NEXT SQE to it: the next one starts only
// after this one has completed, and only if it succeeded. A run of linked SQEs is a chain;
// the first SQE without the flag ends it. If a link fails, every link after it completes with
// -ECANCELED without running. "Fails" means any unexpected result, so a short read, which is
// not an error for read(2), breaks a chain too. But what counts as failing is decided by each
// opcode's code in the kernel. On Linux 6.18 some opcodes post their -errno without marking
// the request failed, so the next link runs anyway: fsync among them (section 7 shows it;
// the prose has the whole measured list, and lesson 12 meets the others). A request that fails before it even starts (an fd that
// is not open) breaks the chain whatever its opcode. IOSQE_IO_HARDLINK orders the same way but
// does not care about results: the chain goes on after a failure.
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

// MARK: - 1. A ring, a temp file, two fds on it, and a pipe
//
// IORING_OP_READ and IORING_OP_WRITE came in Linux 5.6 (FSYNC in 5.1, links in 5.3,
// hard links in 5.5), so a kernel that has the first two has everything this lesson uses.
// The fds come from plain open(2) and pipe(2): opening is not what this lesson is about
// (lesson 04 does it through the ring). `readOnly` is the same file opened for reading only;
// writing through it is the failure we will provoke. The pipe is for section 7.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_WRITE, IORING_OP_READ, IORING_OP_FSYNC)

let path = makeTempFile(named: "chain.txt", contents: [])
let readWrite = open(path, O_RDWR), readOnly = open(path, O_RDONLY)
var pipeFDs: [Int32] = [-1, -1]

/// Close what section 1 opened: at the end, and before an error exit.
@MainActor func closeFDs() {
    for fd in [readWrite, readOnly] + pipeFDs where fd >= 0 { close(fd) }
}

guard readWrite >= 0, readOnly >= 0, pipe(&pipeFDs) == 0 else {
    let error = errno
    closeFDs()
    fail("cannot open \(path), or make a pipe: \(describe(res: -error))")
}

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

// MARK: - 2. One line per link
//
// Every request gets a fixed user_data, the only thing its CQE carries back to say which
// request it answers (lesson 03): the tens digit is the chain (1 to 5), the units digit the
// link. `names` keeps a name for each, to print beside its CQE.
//
// `queue` puts one link in the SQ: an SQE from getSQE (io_uring_get_sqe, or an error line if
// the SQ is full: a chain has at most 3 SQEs, the ring 8, and each chain is reaped before the
// next is queued), filled in by `prep`, and only then its flags, since every io_uring_prep_*
// call sets the SQE's flags to 0. So a chain is written as the list it is, IOSQE_IO_LINK on
// every line but the last. `nextCQE` waits for the next CQE (waitCQE: io_uring_wait_cqe, a
// copy, io_uring_cqe_seen) and prints it with its place in arrival order and its name.
// (@MainActor: they use the lesson's top-level variables, which Swift 6 gives to the main actor.)

var names: [UInt64: String] = [:]

@MainActor func queue(_ userData: UInt64, _ name: String, _ flags: UInt32 = 0,
                      prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    let sqe = getSQE(ring)
    prep(sqe)
    io_uring_sqe_set_flags(sqe, flags)
    io_uring_sqe_set_data64(sqe, userData)
    names[userData] = name
}

@discardableResult
@MainActor func nextCQE(_ position: Int) -> io_uring_cqe {
    let cqe = waitCQE(ring)
    printCQE(cqe, "CQE \(position): \(names[cqe.user_data] ?? "?")")
    return cqe
}

// MARK: - 3. write -> fsync -> read, linked
//
// Three SQEs, the first two with `flag`. With IOSQE_IO_LINK the kernel starts the write; only
// when it has completed successfully does the fsync start; only after that the read. The read
// has no link flag, so the chain ends with it. (It is the last link, so a short read here
// would cancel nothing; we ask for exactly the bytes we wrote anyway.) A chain must go in
// with one submit: a link never crosses a submit. The read's CQE is told by its user_data,
// not by when it arrives (lesson 03). Sections 4 and 6 run the same chain on other terms.

@MainActor func writeSyncRead(_ fd: Int32, _ flag: UInt32, userData first: UInt64) {
    queue(first, "write", flag)     { io_uring_prep_write($0, fd, writeBuffer.baseAddress, UInt32(text.count), 0) }
    queue(first + 1, "fsync", flag) { io_uring_prep_fsync($0, fd, 0) }
    queue(first + 2, "read")        { io_uring_prep_read($0, fd, readBuffer.baseAddress, UInt32(text.count), 0) }
    checkSubmit(io_uring_submit(ring), 3)
    for position in 1...3 {
        let cqe = nextCQE(position)
        if cqe.user_data == first + 2 && cqe.res > 0 { print("read back: \(quoted(readBuffer.prefix(Int(cqe.res))))") }
    }
}

print("write -> fsync -> read, linked with IOSQE_IO_LINK:")
writeSyncRead(readWrite, IOSQE_IO_LINK, userData: 11)

// MARK: - 4. A failing link cancels the rest
//
// The same chain, but through `readOnly`. The write fails with -EBADF (the fd is not open for
// writing), so the fsync and the read never start: each completes with -ECANCELED. They still
// get a CQE each, so every request is accounted for.

print("the same chain, writing through a read-only fd:")
writeSyncRead(readOnly, IOSQE_IO_LINK, userData: 21)

// MARK: - 5. A short read breaks a chain too
//
// read(2) returning fewer bytes than asked is normal, not an error. In a chain io_uring
// treats it as one: the read asks for 4096 bytes, the file holds fewer, so the linked write
// after it is cancelled. A chain means "do the next step if this one did all it was asked".
// We check the file's size afterwards with fstat(2): the write never happened.

print("a read asking for more than the file holds, linked to a write:")
queue(31, "read 4096", IOSQE_IO_LINK) { io_uring_prep_read($0, readWrite, readBuffer.baseAddress, UInt32(readBuffer.count), 0) }
queue(32, "write")                    { io_uring_prep_write($0, readWrite, extraBuffer.baseAddress, UInt32(extra.count), UInt64(text.count)) }
checkSubmit(io_uring_submit(ring), 2)
for position in 1...2 { nextCQE(position) }

var info = stat()
guard fstat(readWrite, &info) == 0 else {
    let error = errno
    closeFDs()
    fail("fstat: \(describe(res: -error))")
}
print("file size after: \(info.st_size) bytes")

// MARK: - 6. IOSQE_IO_HARDLINK: the chain goes on after a failure
//
// Section 4's chain again, with IOSQE_IO_HARDLINK instead of IOSQE_IO_LINK. The order is kept
// (fsync after write, read after fsync) but the write's -EBADF does not cancel anything: the
// fsync and the read run, and the read shows the file as section 3 left it. (A hard link does
// break if a request cannot even be submitted, e.g. a malformed SQE; an error in the result is
// what it survives. man 2 io_uring_enter.)

print("the failing chain with IOSQE_IO_HARDLINK:")
writeSyncRead(readOnly, IOSQE_IO_HARDLINK, userData: 41)

// MARK: - 7. Not every failure breaks a chain
//
// An fsync of a pipe fails: a pipe cannot be synchronized, and fsync(2) says EINVAL. Linked to
// a read, with plain IOSQE_IO_LINK, it should cancel the read. On Linux 6.18 it does not: the
// kernel's fsync code (io_uring/sync.c) stores the -EINVAL as the result but does not mark the
// request failed, and only a request marked failed breaks a chain. The same holds for
// sync_file_range, fallocate, statx, mkdirat, renameat, linkat, symlinkat and unlinkat (and
// madvise, shutdown, the xattr opcodes and 6.9's ftruncate); reads and writes (short ones
// too), openat, close, fadvise, splice, tee and timeouts do mark themselves failed. Older
// kernels marked failed fsyncs too (5.x's io_fsync called req_set_fail_links), so there the
// read is cancelled: the expected output allows both. So a chain stopping can never be what
// keeps a program safe: check each CQE.

print("an fsync that fails while it runs (a pipe), linked to a read:")
queue(51, "fsync", IOSQE_IO_LINK) { io_uring_prep_fsync($0, pipeFDs[0], 0) }
queue(52, "read")                 { io_uring_prep_read($0, readWrite, readBuffer.baseAddress, UInt32(text.count), 0) }
checkSubmit(io_uring_submit(ring), 2)
nextCQE(1)
let readAfterFsync = nextCQE(2)
print("the read after the failed fsync: " + (readAfterFsync.res == -ECANCELED ? "cancelled, the chain broke"
    : "ran, the chain did not break"))

// MARK: - 8. Cleaning up
//
// Every CQE has arrived, so the kernel is done with the buffers: only now may they be freed.

writeBuffer.deallocate()
readBuffer.deallocate()
extraBuffer.deallocate()
closeFDs()
destroyRing(ring)
