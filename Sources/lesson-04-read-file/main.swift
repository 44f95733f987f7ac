// Lesson 04: reading a file
//
// Lesson 03 sent NOPs through the ring; now the requests do real work. A file is opened,
// read and closed, each step an SQE and each answer a CQE: `io_uring_prep_openat` (its `res`
// is the new fd), `io_uring_prep_read` at an offset we choose (its `res` is the number of
// bytes read), and `io_uring_prep_close` (its `res` is 0). The buffer is deliberately tiny
// (16 bytes), so the file takes several reads: full ones, then a short one (fewer bytes than
// asked), then a read that returns 0, which is how the kernel says "end of file".
//
// Nothing here throws. When a request fails, the failure is the CQE's `res`: a negated errno
// such as -ENOENT for a path that does not exist, or -EBADF for a read on a closed fd. The
// last section provokes both on purpose.
//
// Usage: lesson-04-read-file [PATH]   (without PATH it reads a temp file it writes itself;
// for standard input give /dev/stdin)
//
// Read next: man 3 io_uring_prep_openat, man 3 io_uring_prep_read, man 3 io_uring_prep_close,
// man 2 io_uring_enter ("IORING_OP_READ").

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLiburing
import LabSupport

let arguments = lessonArguments(usage: "lesson-04-read-file [PATH]", max: 1)
// LabSupport lets a lone "-" through, as many tools take it for standard input. This lesson
// opens PATH with openat, which would look for a file named "-": refuse it instead.
if arguments.first == "-" {
    fail("\"-\" is not a file this lesson can open: for standard input give /dev/stdin")
}

// MARK: - 1. A ring, and the opcodes this lesson needs
//
// OPENAT, READ and CLOSE arrived in Linux 5.6 (before that, a read went through READV with an
// iovec, lesson 09, or READ_FIXED into a registered buffer, lesson 14). We ask the kernel
// rather than guess from its version number.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_OPENAT, IORING_OP_READ, IORING_OP_CLOSE)

// Every request in this lesson goes the same way: take an SQE with `getSQE` (io_uring_get_sqe;
// the ring has 8 slots and each SQE is completed before the next is taken, so it cannot be
// full), fill it in, and `submitAndWait(ring)` (io_uring_submit, then lesson 03's
// io_uring_wait_cqe / io_uring_cqe_seen). It returns a copy of the CQE, taken before the slot
// went back to the kernel.

// MARK: - 2. The file
//
// By default, a temp file with three lines of known text (removed at exit). With an argument,
// whatever file the user names.

let defaultText = "io_uring reads files\nsixteen bytes at a time\nuntil a read returns 0\n"
let path = arguments.first ?? makeTempFile(named: "lines.txt", contents: Array(defaultText.utf8))
print("file: \(path)")

// MARK: - 3. openat
//
// IORING_OP_OPENAT is openat(2) as a request: a directory fd (AT_FDCWD: relative paths start
// at the current directory), the path, the open flags and a mode. The SQE holds only a
// *pointer* to the path. A Swift String has no C address that outlives one call, so we copy
// it into memory of our own with strdup and free it only after the CQE. (Since 5.5,
// IORING_FEAT_SUBMIT_STABLE, the kernel copies the path while it is submitted; the lab keeps
// every pointer alive until the CQE anyway: it is the rule that is always right, and for
// read buffers, which the kernel fills while the request runs, it is the only right one.)

var userData: UInt64 = 0  // a new number for each request, so each CQE names its SQE

guard let cPath = strdup(path) else { fail("strdup: out of memory") }
let openSQE = getSQE(ring)
io_uring_prep_openat(openSQE, AT_FDCWD, cPath, O_RDONLY, 0)
userData += 1
io_uring_sqe_set_data64(openSQE, userData)
let openCQE = submitAndWait(ring)[0]
free(cPath)  // the CQE is here: the kernel is done with the path

// On success `res` is the new file descriptor (its number varies, so the expected output in
// the prose shows it as {fd}). On failure it is -errno, and there is no fd to close.
printCQE(openCQE, "openat O_RDONLY")
guard openCQE.res >= 0 else {
    fail("cannot open \(path): openat completed with res=\(describe(res: openCQE.res))")
}
let fd = openCQE.res

// MARK: - 4. read, at explicit offsets
//
// IORING_OP_READ is pread(2) as a request: fd, buffer, length, offset. The offset is ours to
// choose, so the file position never moves (lesson 05 uses offset -1, the position). We start
// at 0 and move on by however many bytes each read returned.
//
// The kernel writes into the buffer while the request runs, perhaps on another thread after
// io_uring_submit has returned. So the buffer must stay at one address until the CQE arrives:
// a Swift array passed as `&array` is only pinned for one call, so we allocate raw memory
// ourselves and free it after the last CQE.
//
// `res` is the number of bytes read, and it may be less than we asked: a *short read*. For a
// regular file that happens at the end of the file; for pipes, sockets and some special files
// it can happen anywhere. A short read is not the end: the only end-of-file signal is a read
// that returns 0. So the loop continues from offset + res until res is 0.
//
// Offsets only mean something in a file that can seek. A pipe, a FIFO or a socket cannot:
// lseek(2) on it fails (ESPIPE), and for such a file the offset of a read "must be 0 or -1"
// (man 3 io_uring_prep_read). There we pass -1, "the current position" (lesson 05), which is
// what reading a stream means. The lesson's own file, like any regular file, can seek.
//
// A file named on the command line may be large, so it is read in 64 KiB pieces, only the
// first 8 reads are printed, and only its first 256 bytes are kept for printing. `offset`
// counts the bytes read so far; for a file that cannot seek, the read's offset is -1.

let chunkSize = arguments.isEmpty ? 16 : 65536
let printedReads = 8
let keptBytes = 256

let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
let seekable = lseek(fd, 0, SEEK_CUR) >= 0
var offset: UInt64 = 0
var reads = 0
var kept: [UInt8] = []

while true {
    let readOffset = seekable ? offset : UInt64(bitPattern: -1)
    let at = seekable ? "at offset \(offset)" : "at offset -1 (not seekable)"
    let readSQE = getSQE(ring)
    io_uring_prep_read(readSQE, fd, buffer.baseAddress, UInt32(chunkSize), readOffset)
    userData += 1
    io_uring_sqe_set_data64(readSQE, userData)
    let cqe = submitAndWait(ring)[0]
    reads += 1

    guard cqe.res >= 0 else {
        // Reading a directory fails here, not at openat: open(2) accepts a directory with
        // O_RDONLY, but read(2) on it is -EISDIR.
        printCQE(cqe, "read \(chunkSize) bytes \(at)")
        buffer.deallocate()
        close(fd)  // plain close(2): we are on the way out
        fail("cannot read \(path): read \(at) completed with res=\(describe(res: cqe.res))")
    }
    let bytes = Int(cqe.res)
    let got = buffer.prefix(bytes)
    kept += got.prefix(keptBytes - kept.count)

    if reads <= printedReads || bytes == 0 {
        if reads > printedReads + 1 {
            print("... \(reads - printedReads - 1) more reads not shown")
        }
        let note = bytes == 0 ? "  <- 0: end of file"
            : bytes < chunkSize ? "  <- short read: \(bytes) of \(chunkSize) bytes" : ""
        let shown = quoted(got.prefix(16)) + (bytes > 16 ? "..." : "")
        print("read \(chunkSize) bytes \(at): \(format(cqe))"
            + (bytes > 0 ? " \(shown)" : "") + note)
    }
    if bytes == 0 { break }
    offset += UInt64(bytes)
}
buffer.deallocate()  // the last read's CQE has arrived: the kernel no longer writes here

if offset <= UInt64(keptBytes) {
    print("the file's \(offset) bytes in \(reads) reads: \(quoted(kept))")
} else {
    print("the file's \(offset) bytes in \(reads) reads, the first \(keptBytes): \(quoted(kept))...")
}

// MARK: - 5. close
//
// IORING_OP_CLOSE is close(2) as a request; `res` 0 means the fd is gone. (Closing through the
// ring matters when the close is part of a chain of requests, lesson 07, or of a fixed file
// table, lesson 13; a plain close(2) would do here too.)

let closeSQE = getSQE(ring)
io_uring_prep_close(closeSQE, fd)
userData += 1
io_uring_sqe_set_data64(closeSQE, userData)
printCQE(submitAndWait(ring)[0], "close fd \(fd)")

// MARK: - 6. Failures are results
//
// A request that fails does not make any call fail: io_uring_submit still returns 1 (the SQE
// was accepted) and io_uring_wait_cqe still returns 0 (a CQE arrived). The error is the CQE's
// `res`, a negated errno, exactly what the system call would have put in errno.
//
// First, openat of a path that does not exist: a file in a new, empty directory.

guard let missingPath = strdup(makeTempDir("lesson-04") + "/missing.txt") else { fail("strdup: out of memory") }
let missingSQE = getSQE(ring)
io_uring_prep_openat(missingSQE, AT_FDCWD, missingPath, O_RDONLY, 0)
userData += 1
io_uring_sqe_set_data64(missingSQE, userData)
printCQE(submitAndWait(ring)[0], "openat missing.txt")
free(missingPath)

// Then a read on the fd we closed in section 5. The kernel looks the fd up when the request
// is issued, finds nothing and completes it with -EBADF. (In a program with other threads the
// number could already belong to a newly opened file, and this read would quietly read *that*
// file: using an fd after closing it is a bug, through the ring as much as without it.)

let smallBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
let badSQE = getSQE(ring)
io_uring_prep_read(badSQE, fd, smallBuffer.baseAddress, 16, 0)
userData += 1
io_uring_sqe_set_data64(badSQE, userData)
printCQE(submitAndWait(ring)[0], "read on the closed fd \(fd)")
smallBuffer.deallocate()

destroyRing(ring)
