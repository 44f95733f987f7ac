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
// sixth section provokes both on purpose.
//
// It also shows *where* a request runs, the model behind this lab's buffer rule: inline,
// during io_uring_submit (the reads, on a disk filesystem such as ext4: each CQE is already in
// the CQ when submit returns), or handed to one of the kernel's io-wq worker threads (the
// openat of a name the kernel has not seen, and on tmpfs every read: a thread named iou-wrk-*
// appears in this process), or parked on an internal poll (a read from an empty pipe, the
// last section: no thread waits for it). Which filesystem the file is on decides where its
// reads run, so the lesson prints it.
//
// Usage: lesson-04-read-file [PATH]   (without PATH it reads a temp file it writes itself;
// for standard input give /dev/stdin)
//
// Read next: man 3 io_uring_prep_openat, man 3 io_uring_prep_read, man 3 io_uring_prep_close,
// man 2 io_uring_enter ("IORING_OP_READ"), man 5 proc ("/proc/pid/mountinfo").

import Glibc
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
//
// Every request of this lesson goes the same way: an SQE from `getSQE` (io_uring_get_sqe;
// each request completes before the next is taken, so the SQ of 8 cannot be full), an
// io_uring_prep_* call, a user_data of its own (lesson 03), io_uring_submit (`checkSubmit`
// exits 1 unless it took the one SQE), then `waitCQE`: io_uring_wait_cqe, a copy of the CQE,
// io_uring_cqe_seen. The user_data values are fixed: 1 to 5 for the openat, the close and
// the three requests of sections 6 and 7, and 100 + n for the nth read.

guard let cPath = strdup(path) else { fail("strdup: out of memory") }
let openSQE = getSQE(ring)
io_uring_prep_openat(openSQE, AT_FDCWD, cPath, O_RDONLY, 0)
io_uring_sqe_set_data64(openSQE, 1)
checkSubmit(io_uring_submit(ring), 1)
let openCQE = waitCQE(ring)
free(cPath)  // the CQE is here: the kernel is done with the path

// On success `res` is the new file descriptor (its number varies, so the expected output in
// the prose shows it as {fd}). On failure it is -errno, and there is no fd to close.
printCQE(openCQE, "openat O_RDONLY")
guard openCQE.res >= 0 else {
    fail("cannot open \(path): openat completed with res=\(describe(res: openCQE.res))")
}
let fd = openCQE.res

// Which filesystem is the file on? The answer decides where its reads will run (section 4),
// so we ask /proc: /proc/self/fdinfo/FD names the mount the fd is on (`mnt_id:`), and that
// mount's line in /proc/self/mountinfo names its filesystem type, the field after a lone "-"
// (man 5 proc, "/proc/pid/fdinfo" and "/proc/pid/mountinfo"). (fstatfs(2) would give the
// filesystem's magic number instead, but Swift's Glibc module does not declare it.)

let mountID = readLines("/proc/self/fdinfo/\(fd)")?.first { $0.hasPrefix("mnt_id:") }?
    .split(separator: "\t").last
let mountFields = readLines("/proc/self/mountinfo")?
    .first { $0.split(separator: " ").first == mountID }?.split(separator: " ") ?? []
let fsType = mountFields.firstIndex(of: "-")
    .flatMap { $0 + 1 < mountFields.count ? mountFields[$0 + 1] : nil }
print("filesystem: \(fsType ?? "none in /proc/self/mountinfo (a pipe or a socket has none)")")

// MARK: - 4. read, at explicit offsets
//
// IORING_OP_READ is pread(2) as a request: fd, buffer, length, offset. The offset is ours to
// choose, so the file position never moves (lesson 05 uses offset -1, the position). We start
// at 0 and move on by however many bytes each read returned.
//
// The kernel writes into the buffer while the request runs, and that may be after
// io_uring_submit has returned: a read parked on a poll is retried when data arrives, and a
// read handed to an io-wq worker runs on that thread (the prose's "Where a request runs").
// So the buffer must stay at one address until the CQE arrives: a Swift array passed as
// `&array` is only pinned for one call, so we allocate raw memory ourselves and free it after
// the last CQE.
//
// Where did each read run? Right after the submit, `io_uring_cq_ready` counts the CQEs posted
// and not yet consumed (lesson 06 uses it too). With one request in flight and an empty CQ
// before it, a CQE already there means the read was *done* by the time submit returned:
// usually because it ran inline, the kernel doing it during the submit's io_uring_enter(2),
// but an io-wq worker can also be quick enough to finish first (on tmpfs it often is, below).
// 0 means it was still running somewhere (parked on a poll, or on a worker) when submit
// returned. So the count alone cannot prove that a read ran inline; with the count of worker
// threads it can: where no worker thread exists, no read ran on one.
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
var readsDoneAtSubmit = 0
var kept: [UInt8] = []

while true {
    let readOffset = seekable ? offset : UInt64(bitPattern: -1)
    let at = seekable ? "at offset \(offset)" : "at offset -1 (not seekable)"
    reads += 1
    let readSQE = getSQE(ring)
    io_uring_prep_read(readSQE, fd, buffer.baseAddress, UInt32(chunkSize), readOffset)
    io_uring_sqe_set_data64(readSQE, 100 + UInt64(reads))
    checkSubmit(io_uring_submit(ring), 1)
    if io_uring_cq_ready(ring) > 0 { readsDoneAtSubmit += 1 }
    let cqe = waitCQE(ring)

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

// Where did the reads run? The kernel first issues a read "without waiting" (IOCB_NOWAIT),
// but only on a file whose filesystem promised, when it was opened, to honour that (the
// FMODE_NOWAIT flag; an fd opened O_NONBLOCK counts too). A disk filesystem such as ext4 does,
// so a read of pages already in its page cache (the lesson's own file, which it has just
// written) is done on the spot: the kernel copies the bytes during the submit and posts the
// CQE before io_uring_enter returns, and no worker appears. tmpfs makes no such promise (on
// 6.18), so the kernel does not even try: every read of a tmpfs file, cached or not, is handed
// to an io-wq worker, and the count of reads done at submit varies from run to run with how
// fast that worker is. A read that would have to wait is not done at submit either, yet needs
// no worker: a pipe with no data is parked on an internal poll, and (on 6.18, ext4) a read of
// pages not yet in memory may be started and finished when the disk has answered. The count of
// io-wq worker threads so far is the other half of the evidence: `ioWorkerThreads()`, at the
// end of this file, counts the threads of this process named iou-wrk-* (it lists
// /proc/self/task).
print("reads whose CQE was in the CQ when io_uring_submit returned: \(readsDoneAtSubmit) of \(reads)")
print("io-wq worker threads (named iou-wrk-*) in this process: \(ioWorkerThreads())")

// MARK: - 5. close
//
// IORING_OP_CLOSE is close(2) as a request; `res` 0 means the fd is gone. (Closing through the
// ring matters when the close is part of a chain of requests, lesson 07, or of a fixed file
// table, lesson 13; a plain close(2) would do here too.)

let closeSQE = getSQE(ring)
io_uring_prep_close(closeSQE, fd)
io_uring_sqe_set_data64(closeSQE, 2)
checkSubmit(io_uring_submit(ring), 1)
printCQE(waitCQE(ring), "close fd \(fd)")

// MARK: - 6. Failures are results
//
// A request that fails does not make any call fail: io_uring_submit still returns 1 (the SQE
// was accepted) and io_uring_wait_cqe still returns 0 (a CQE arrived). The error is the CQE's
// `res`, a negated errno, exactly what the system call would have put in errno.
//
// First, openat of a path that does not exist: a file in a new, empty directory. The kernel
// first tries it inline, with a lookup that may only use names it has cached (LOOKUP_CACHED).
// "missing.txt" in a brand-new directory is not cached (not even as "known not to exist"), so
// finding out needs the filesystem, which may block: the kernel hands the request to an
// io-wq worker thread, and the worker count printed after it shows the new thread.

guard let missingPath = strdup(makeTempDir("lesson-04") + "/missing.txt") else { fail("strdup: out of memory") }
let missingSQE = getSQE(ring)
io_uring_prep_openat(missingSQE, AT_FDCWD, missingPath, O_RDONLY, 0)
io_uring_sqe_set_data64(missingSQE, 3)
checkSubmit(io_uring_submit(ring), 1)
printCQE(waitCQE(ring), "openat missing.txt")
free(missingPath)
print("io-wq worker threads (named iou-wrk-*) in this process: \(ioWorkerThreads())")

// Then a read on the fd we closed in section 5. The kernel looks the fd up when the request
// is issued, finds nothing and completes it with -EBADF. (In a program with other threads the
// number could already belong to a newly opened file, and this read would quietly read *that*
// file: using an fd after closing it is a bug, through the ring as much as without it.)

let smallBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
let badSQE = getSQE(ring)
io_uring_prep_read(badSQE, fd, smallBuffer.baseAddress, 16, 0)
io_uring_sqe_set_data64(badSQE, 4)
checkSubmit(io_uring_submit(ring), 1)
printCQE(waitCQE(ring), "read on the closed fd \(fd)")

// MARK: - 7. A read that has to wait: parked on a poll
//
// A read from a pipe that holds no data cannot be done inline, and it would be a waste to
// block a worker thread on it. Since 5.7 (IORING_FEAT_FAST_POLL, lesson 01) the kernel instead
// arms an internal poll on the pipe and returns from the submit with the read still pending.
// When data arrives the poll fires and the kernel retries the read as "task work" of the
// thread that submitted it, which runs the next time that thread is in the kernel (on 6.18,
// here: on the way back from our own write(2) into the pipe). So the CQ is still empty when
// io_uring_submit returns, and 20 ms later, and no new iou-wrk thread has appeared. Meanwhile
// the request holds the buffer's address: the kernel writes into it long after the submit
// returned, which is why every buffer stays put until its CQE.

var pipeFDs: [Int32] = [-1, -1]
guard pipe(&pipeFDs) == 0 else { fail("pipe: \(describe(res: -errno))") }
let pipeSQE = getSQE(ring)
io_uring_prep_read(pipeSQE, pipeFDs[0], smallBuffer.baseAddress, 16, 0)  // a pipe: offset 0 (or -1)
io_uring_sqe_set_data64(pipeSQE, 5)
checkSubmit(io_uring_submit(ring), 1)
let readyAtSubmit = io_uring_cq_ready(ring)
usleep(20_000)
print("read 16 bytes from an empty pipe: CQEs in the CQ when io_uring_submit returned: "
    + "\(readyAtSubmit), 20 ms later: \(io_uring_cq_ready(ring))")
print("io-wq worker threads (named iou-wrk-*) in this process: \(ioWorkerThreads())")
let hello = Array("hi\n".utf8)
guard write(pipeFDs[1], hello, hello.count) == hello.count else {
    let error = errno
    close(pipeFDs[0])
    close(pipeFDs[1])
    fail("write to the pipe: \(describe(res: -error))")
}
print("wrote \(quoted(hello)) into the pipe with write(2)")
let pipeCQE = waitCQE(ring)
print("read from the pipe: \(format(pipeCQE))"
    + (pipeCQE.res > 0 ? " \(quoted(smallBuffer.prefix(Int(pipeCQE.res))))" : ""))
smallBuffer.deallocate()  // both reads that used it have their CQE
close(pipeFDs[0])
close(pipeFDs[1])

destroyRing(ring)

/// The threads of this process named iou-wrk-*: io_uring's io-wq workers. Since Linux 5.12
/// (IORING_FEAT_NATIVE_WORKERS, lesson 01) they are threads of the process that submitted,
/// named iou-wrk-<tid of the submitting thread> and listed in /proc/self/task like any other
/// thread. (Before 5.12 they were kernel threads, and this count stays 0.)
func ioWorkerThreads() -> Int {
    guard let tasks = opendir("/proc/self/task") else { return 0 }
    defer { closedir(tasks) }
    var workers = 0
    while let entry = readdir(tasks) {
        let tid = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if tid.first != ".", readLines("/proc/self/task/\(tid)/comm")?.first?.hasPrefix("iou-wrk-") == true {
            workers += 1
        }
    }
    return workers
}
