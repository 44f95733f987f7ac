// Lesson 05: writing a file
//
// IORING_OP_WRITE is pwrite(2) as a request: fd, buffer, length, offset, and a CQE whose `res`
// is the number of bytes written. The offset decides where the bytes land, and there are
// three ways to use it:
//
//   an explicit offset   the bytes land there, whatever the file position; writes to
//                        different offsets are independent (so they may even be in flight
//                        together, and complete in any order)
//   offset -1            the file's current position, which the write then advances, like
//                        write(2); needs IORING_FEAT_RW_CUR_POS, and the writes must not
//                        overlap in time
//   an O_APPEND file     the kernel ignores the offset and writes at the end of the file
//
// After each part the lesson reads the file back, with plain pread(2) outside the ring, and
// prints what is really in it.
//
// Read next: man 3 io_uring_prep_write, man 2 io_uring_enter ("IORING_OP_WRITE"),
// man 2 io_uring_setup ("IORING_FEAT_RW_CUR_POS"), man 2 pwrite ("BUGS": O_APPEND).

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-05-write-file", max: 0)

// MARK: - 1. A ring, and what this kernel can do
//
// IORING_OP_WRITE arrived in Linux 5.6 (before it, IORING_OP_WRITEV with an iovec, lesson 09,
// was the only write; it has been there since 5.1). We probe for it rather than guess.
//
// Whether offset -1 means "the current position" is not an opcode but a feature bit, set by
// the kernel in the `features` field of io_uring_params when the ring is created (lesson 01);
// liburing keeps a copy in `ring.pointee.features`. IORING_FEAT_RW_CUR_POS came in the same
// release as IORING_OP_WRITE, 5.6, so on any kernel that passed the probe the bit is set and
// the check below never fails. It is there because the bit, not the opcode, is what promises
// the meaning of -1: a program that writes at -1 with WRITEV (5.1) must test it, since before
// 5.6 the kernel gave -1 no special meaning.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_WRITE)
guard ring.pointee.features & IORING_FEAT_RW_CUR_POS != 0 else {
    skip("this kernel lacks IORING_FEAT_RW_CUR_POS (Linux 5.6): offset -1 is not the current position")
}
print("IORING_FEAT_RW_CUR_POS: set, offset -1 means the file's current position")

// The three files live in one new temporary directory, removed at exit. They are opened with
// plain open(2), O_RDWR: lesson 04 showed opening through the ring, and here the writes are the
// point. After each part the lesson reads the file back with pread(2) on the same fd, outside
// the ring, a witness independent of what is being tested. Both are plain system calls, not
// io_uring, so their helpers are at the end of this file: `openFile` (open(2), or exit 1) and
// `printContents` (the file's whole contents, quoted, a NUL byte as \x00).
let dir = makeTempDir("lesson-05")

// The bytes of one write, copied to memory the lesson owns. The SQE holds only their address,
// and the kernel may copy from it at any moment until the CQE arrives: on 6.18 a buffered
// write to ext4 or tmpfs always goes to an io-wq worker thread, which runs after
// io_uring_submit has returned (lesson 04, "Where a request runs"). So they must stay at that
// address until then: a Swift array passed as `&bytes` is only pinned for one call. Freed
// after the CQE.
func allocateBytes(_ text: String) -> UnsafeMutableRawBufferPointer {
    let bytes = Array(text.utf8)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
    buffer.copyBytes(from: bytes)
    return buffer
}

// One write, start to finish, the way lesson 04 made each request: an SQE from `getSQE`
// (io_uring_get_sqe; at most two SQEs are taken before they complete, so the SQ of 8 cannot be
// full), io_uring_prep_write with the fd, the bytes and the offset, a fixed user_data (21, 22
// in section 2, 31, 32 in section 3, 41, 42 in section 4; the linked pair 33, 34 of section 3
// is made by hand), io_uring_submit (`checkSubmit`:
// exit 1 unless it took the SQE), then `waitCQE` (io_uring_wait_cqe, a copy of the CQE,
// io_uring_cqe_seen). Only then are the bytes freed. Sections 2 to 4 each use it.
func writeAndWait(_ ring: Ring, _ text: String, fd: Int32, offset: UInt64, userData: UInt64) -> io_uring_cqe {
    let buffer = allocateBytes(text)
    let sqe = getSQE(ring)
    io_uring_prep_write(sqe, fd, buffer.baseAddress, UInt32(buffer.count), offset)
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)
    let cqe = waitCQE(ring)
    buffer.deallocate()  // the CQE is here: the kernel is done with these bytes
    return cqe
}

// MARK: - 2. Explicit offsets: each piece lands where it says
//
// Two pieces of "hello world\n", the second one first. Writing "world\n" at offset 6 into an
// empty file makes it 12 bytes long: the 6 bytes before it, never written, read as zeros. (They
// are not a hole in the filesystem's sense: a file's space comes in blocks, typically 4096
// bytes, and the block that holds "world\n" holds these zeros too. Only a gap of whole blocks
// is left unallocated, a real hole; exercise 3.) The second write, "hello " at offset 0,
// overwrites them. The file position plays no part, and neither write depends on the other:
// they could be submitted together and finish in either order with the same result. (We wait
// for each here, to read the file in between.)

let piecesPath = dir + "/pieces.txt"
let piecesFD = openFile(piecesPath, O_RDWR | O_CREAT | O_TRUNC)
print("pieces.txt: explicit offsets, the second piece first")
for (text, offset, userData): (String, UInt64, UInt64) in [("world\n", 6, 21), ("hello ", 0, 22)] {
    printCQE(writeAndWait(ring, text, fd: piecesFD, offset: offset, userData: userData),
             "write \(quoted(text.utf8)) at offset \(offset)")
    printContents(piecesFD)
}
close(piecesFD)

// MARK: - 3. Offset -1: the file position
//
// With IORING_FEAT_RW_CUR_POS (5.6), an offset of -1 (all ones in the SQE's 64-bit `off`)
// means "the file's current position", and the write advances it, exactly like write(2).
// (Section 1 checked the bit: before 5.6, -1 had no special meaning.)
//
// The position belongs to the open file, and io_uring promises no order among requests in
// flight together: a request reads the position when it starts and stores the new one when it
// finishes, and unlike write(2) it takes no lock around the two (the prose's "Deeper" note).
// Two -1 writes in flight at once could both start from the same position, and the second
// would overwrite the first. (Whether you can see that depends on how the kernel schedules
// them: exercise 2 measures it.) So -1 writes must run one after another: either wait
// for each CQE before submitting the next, or submit them together linked. IOSQE_IO_LINK, an
// SQE flag (5.3), makes the next SQE wait until this one has completed, and cancels it if this
// one fails (lesson 07 is about links). We do both, and ask lseek(2) where the position is
// after each step.

let currentPosition = UInt64(bitPattern: -1)
let logPath = dir + "/log.txt"
let logFD = openFile(logPath, O_RDWR | O_CREAT | O_TRUNC)

print("log.txt: offset -1, one write at a time")
for (text, userData): (String, UInt64) in [("first\n", 31), ("second\n", 32)] {
    printCQE(writeAndWait(ring, text, fd: logFD, offset: currentPosition, userData: userData),
             "write \(quoted(text.utf8)) at offset -1")
    print("  lseek(fd, 0, SEEK_CUR) = \(lseek(logFD, 0, SEEK_CUR))")
}

// The linked pair: two SQEs, user_data 33 and 34, then one submit for both.
print("log.txt: offset -1, two writes linked with IOSQE_IO_LINK, one io_uring_submit")
let texts = ["third\n", "fourth\n"]
let buffers = texts.map(allocateBytes)
for (index, buffer) in buffers.enumerated() {
    let sqe = getSQE(ring)
    io_uring_prep_write(sqe, logFD, buffer.baseAddress, UInt32(buffer.count), currentPosition)
    io_uring_sqe_set_data64(sqe, 33 + UInt64(index))
    // The link flag goes on every SQE but the last: "the next one waits for me".
    if index < buffers.count - 1 { io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK) }
}
// Both buffers stay allocated until both CQEs are in. Linked, the CQEs arrive in order:
// the second write does not start before the first has completed.
checkSubmit(io_uring_submit(ring), buffers.count)
let cqes = buffers.map { _ in waitCQE(ring) }
for buffer in buffers { buffer.deallocate() }
for cqe in cqes {
    let text = texts[Int(cqe.user_data - 33)]  // user_data says which SQE this is
    printCQE(cqe, "write \(quoted(text.utf8)) at offset -1")
}
print("  lseek(fd, 0, SEEK_CUR) = \(lseek(logFD, 0, SEEK_CUR))")
printContents(logFD)
close(logFD)

// MARK: - 4. O_APPEND: the offset is ignored
//
// A file opened with O_APPEND is written at its end, whatever offset the request carries, so
// appends from requests in flight together never overwrite each other; only their order is
// open (the prose's "Deeper" note says which lock makes that so). O_APPEND needs no position.
// pwrite(2) behaves the same on Linux (man 2 pwrite, BUGS). We pass offset 0, so the file
// shows whether that offset was obeyed. The first line itself is written with plain
// write(2), so that the file has something to append to.

let appendPath = dir + "/append.txt"
let appendFD = openFile(appendPath, O_RDWR | O_CREAT | O_TRUNC | O_APPEND)
let firstLine = Array("line 1\n".utf8)
guard firstLine.withUnsafeBytes({ write(appendFD, $0.baseAddress, $0.count) }) == firstLine.count else {
    let error = errno
    close(appendFD)
    fail("cannot write the first line of \(appendPath): \(describe(res: -error))")
}
print("append.txt: opened O_APPEND, the first line written with write(2)")
printContents(appendFD)
for (text, userData): (String, UInt64) in [("line 2\n", 41), ("line 3\n", 42)] {
    printCQE(writeAndWait(ring, text, fd: appendFD, offset: 0, userData: userData), "write \(quoted(text.utf8)) at offset 0")
}
printContents(appendFD)
close(appendFD)

destroyRing(ring)

/// open(2) with mode 0644, or exit 1.
func openFile(_ path: String, _ flags: Int32) -> Int32 {
    let fd = open(path, flags, 0o644)
    guard fd >= 0 else { fail("cannot open \(path): \(describe(res: -errno))") }
    return fd
}

/// Print the file's whole contents, read with pread(2), quoted (a NUL byte shows as \x00).
func printContents(_ fd: Int32) {
    var contents: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(contents.count)) }
        guard n >= 0 else { let error = errno; close(fd); fail("cannot read back: \(describe(res: -error))") }
        if n == 0 { break }
        contents += chunk[..<n]
    }
    print("  read back with pread: \(quoted(contents)) (\(contents.count) bytes)")
}
