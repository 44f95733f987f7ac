// Lesson 09: vectored I/O, and cat with readv
//
// A read fills one buffer. readv(2) fills several, in order, from one contiguous run of the
// file: it *scatters*. writev(2) takes several buffers and writes them as one contiguous run:
// it *gathers*. Each buffer is described by an iovec, { base address, length }, and the
// request carries the address of an array of them and their count. IORING_OP_READV and
// IORING_OP_WRITEV are io_uring's oldest I/O opcodes (Linux 5.1, May 2019), older than the
// plain READ and WRITE of lesson 04 (5.6, March 2020): for those ten months a read through
// the ring was a readv, or a READ_FIXED into a registered buffer (lesson 14, later in the lab).
//
// The lesson gathers three buffers into one write to a temp file, scatters the file back
// into four buffers of different sizes with one read, and then reads it once more the way
// `cat` does. With FILE arguments it *is* cat: each file is read through readv, 4 buffers of
// 4 KiB per request, and its bytes go to standard output.
//
// Usage: lesson-09-vectored-io [FILE...]
//
// Read next: man 3 io_uring_prep_readv, man 3 io_uring_prep_writev, man 2 readv,
// man 2 io_uring_enter (IORING_OP_READV).

import Glibc
import CLiburing
import LabSupport

let arguments = lessonArguments(usage: "lesson-09-vectored-io [FILE...]", max: Int.max)

// MARK: - 1. A ring
//
// READV and WRITEV are as old as io_uring itself, so there is nothing to probe: a kernel
// that lets us create a ring has them.

let ring = makeRing(entries: 4)

// The cat of section 5 reads with requests of this many iovecs, each of this many bytes.
let catIovecs = 4
let catBufferSize = 4096

// Every request in this lesson is one SQE from `getSQE` (io_uring_get_sqe; the ring has 4
// slots and each SQE is completed before the next is taken, so it cannot be full), submitted
// on its own with io_uring_submit (`checkSubmit` stops the lesson unless it took the SQE) and
// reaped with `waitCQE`: io_uring_wait_cqe, a copy of the CQE, io_uring_cqe_seen. Lesson 03's
// round trip.

// MARK: - 2. With FILE arguments: cat
//
// The work is done by `cat(_:_:)`, in section 5. Files are read in the order given and
// their bytes written to standard output, nothing else; the first file that cannot be opened
// or read ends the lesson with one error line and exit 1 (section 5 says which errors). That
// is simpler than cat, which reports a bad file and goes on with the next, exiting 1 at the
// end. Every readv here carries an explicit offset, and man 2 io_uring_enter (IORING_OP_READV)
// says: "If the file is not seekable, off must be set to zero or -1." So the cat reads only
// files it can seek in (section 5 checks each with lseek), and standard input, `-` for cat,
// usually a pipe or a terminal, is refused by its name. A file named `-` is still `./-`.

if arguments.contains("-") {
    fail("- (standard input) is not supported: give FILE paths (a file named - is ./-)")
}
if !arguments.isEmpty {
    for path in arguments {
        _ = cat(path, ring, iovecCount: catIovecs, bufferSize: catBufferSize)
    }
    destroyRing(ring)
    exit(0)
}

// MARK: - 3. Gather: three buffers, one writev
//
// Without arguments, a temp file to work on, opened with plain open(2) (opening through the
// ring is lesson 04's subject, and needs 5.6).
//
// Three separate buffers, each its own allocation, and an array of three iovecs pointing at
// them. The SQE holds only the address of the iovec array and its length, 3; the kernel
// reads the array, then the bytes each iovec points at. So the array *and* every buffer must
// stay at one address until the CQE arrives: all of them are allocated, never `&array`
// (pinned for one call only), and freed after the CQE. (Since 5.5, IORING_FEAT_SUBMIT_STABLE,
// the kernel copies the iovec array itself when it takes the SQE, but the buffers are read
// while the request runs, and a readv's buffers are written then: keep everything.)
//
// The CQE's res is the total number of bytes written: all three buffers, end to end, at
// offset 0 of the file.

let path = makeTempFile(named: "vectored.txt", contents: [])
let fd = open(path, O_RDWR)
guard fd >= 0 else { fail("cannot open \(path): \(describe(res: -errno))") }

let parts = ["gathered from three buffers, ", "written by one writev, ", "scattered by one readv\n"]
let gather = UnsafeMutablePointer<iovec>.allocate(capacity: parts.count)
for (index, part) in parts.enumerated() {
    let bytes = Array(part.utf8)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 8)
    buffer.copyBytes(from: bytes)
    gather[index] = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
}

print("writev: \(parts.count) iovecs, one request at offset 0")
for index in 0..<parts.count {
    let piece = UnsafeRawBufferPointer(start: gather[index].iov_base, count: gather[index].iov_len)
    print("  iovec \(index): \(piece.count) bytes \(quoted(piece))")
}
var sqe = getSQE(ring)
io_uring_prep_writev(sqe, fd, gather, UInt32(parts.count), 0)
io_uring_sqe_set_data64(sqe, 1)
checkSubmit(io_uring_submit(ring), 1)
printCQE(waitCQE(ring), "writev")

// The CQE is here: the kernel is done with the array and the buffers.
for index in 0..<parts.count {
    gather[index].iov_base?.deallocate()
}
gather.deallocate()

// MARK: - 4. Scatter: one readv, four buffers of different sizes
//
// Four buffers of 10, 20, 30 and 40 bytes: room for 100, and the file holds 75. The kernel
// fills them strictly in order: the first iovec completely, then the second, and so on, so
// the CQE's res alone tells where every byte went. Here the first three are full and the
// last gets the 15 bytes that are left. A readv that returns less than the iovecs hold
// (a short read, lesson 04) always fills them this way: full ones, one partly, the rest
// untouched.

let sizes = [10, 20, 30, 40]
let scatter = UnsafeMutablePointer<iovec>.allocate(capacity: sizes.count)
for (index, size) in sizes.enumerated() {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
    scatter[index] = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
}

print("readv: \(sizes.count) iovecs of " + sizes.map(String.init).joined(separator: ", ")
    + " bytes, one request at offset 0")
sqe = getSQE(ring)
io_uring_prep_readv(sqe, fd, scatter, UInt32(sizes.count), 0)
io_uring_sqe_set_data64(sqe, 2)
checkSubmit(io_uring_submit(ring), 1)
let readvCQE = waitCQE(ring)
printCQE(readvCQE, "readv")
guard readvCQE.res >= 0 else {
    close(fd)
    fail("readv completed with res=\(describe(res: readvCQE.res))")
}

var left = Int(readvCQE.res)
var reassembled: [UInt8] = []
for index in 0..<sizes.count {
    let got = min(left, scatter[index].iov_len)
    let piece = UnsafeRawBufferPointer(start: scatter[index].iov_base, count: got)
    print("  iovec \(index): \(got) of \(scatter[index].iov_len) bytes \(quoted(piece))")
    reassembled += piece
    left -= got
}
print("reassembled: \(quoted(reassembled))")

for index in 0..<sizes.count {
    scatter[index].iov_base?.deallocate()
}
scatter.deallocate()
close(fd)

// MARK: - 5. cat, with readv
//
// `cat(path, ring)` reads a whole file through the ring and copies it to standard output.
// Each request is one readv into 4 iovecs of 4 KiB (16 KiB per request). The offset is
// explicit, like pread: it starts at 0 and moves on by each CQE's res, and a res of 0 is the
// end of the file. The buffers and the iovec array are allocated once, reused by every
// request (each request is complete before the next is submitted), and freed at the end.
//
// The bytes go out with plain write(2), in a loop: standard output may be a pipe or a
// terminal, where a write can be short, and the loop finishes it. (Writing through the ring
// with writev would work too; a copy that keeps reads and writes in flight together, short
// writes included, is lesson 10.) write(2) bypasses print's buffer, so LabSupport's check of
// standard output at exit never sees its errors: the loop checks each write itself and stops
// the lesson with the same line (`>/dev/full` gives -ENOSPC).
//
// Errors: a file that cannot be opened is open(2)'s errno (ENOENT for a missing file); a
// directory opens fine, and it is the readv's CQE that says -EISDIR. Either way the lesson
// prints one error line and exits 1, having closed the file and freed the buffers.
//
// The offsets need a file with a position: man 2 io_uring_enter allows a file that is not
// seekable only the offset 0 or -1, and every readv of this cat after the first asks for the
// offset where the last one ended. So each file must answer lseek(fd, 0, SEEK_CUR); a pipe, a FIFO, a socket or a terminal answers
// ESPIPE (`/dev/stdin` when standard input is a pipe, for one), and the lesson refuses it.
// (Linux 6.18 is more lenient than the man page: on a pipe it ignores the offset, and a readv
// at offset 12345 returns the pipe's next bytes. The lesson keeps to what the page promises.)
//
// One more check, cat's: `cat f >> f` would read what it has just appended, forever. So if
// standard output is a regular file and the input is that same file (same device and inode,
// from fstat(2)), the lesson refuses it, as GNU cat does: "input file is output file".
//
// The buffers need no special alignment: a buffered read copies from the page cache to any
// address. (Reads with O_DIRECT, lesson 16 later in the lab, are the ones that need aligned
// buffers.)

/// Copy the file at `path` to standard output through readv, `iovecCount` iovecs of `bufferSize`
/// bytes per request. Returns the number of bytes and of readv requests (the last one being
/// the read that returned 0).
func cat(_ path: String, _ ring: Ring,
         iovecCount: Int, bufferSize: Int) -> (bytes: UInt64, requests: Int) {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { fail("cannot open \(path): \(describe(res: -errno))") }
    guard lseek(fd, 0, SEEK_CUR) >= 0 else {
        let reason = describe(res: -errno)
        close(fd)
        fail("cannot cat \(path): not seekable (lseek: \(reason)), and every readv here has an explicit offset")
    }

    var input = stat(), output = stat()
    if fstat(fd, &input) == 0, fstat(STDOUT_FILENO, &output) == 0,
       output.st_mode & S_IFMT == S_IFREG, input.st_dev == output.st_dev, input.st_ino == output.st_ino {
        close(fd)
        fail("cannot cat \(path): input file is output file")
    }

    let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: iovecCount)
    for index in 0..<iovecCount {
        iovecs[index] = iovec(iov_base: UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 8),
                              iov_len: bufferSize)
    }
    func release() {
        for index in 0..<iovecCount { iovecs[index].iov_base?.deallocate() }
        iovecs.deallocate()
        close(fd)
    }

    var offset: UInt64 = 0
    var requests = 0
    while true {
        let sqe = getSQE(ring)
        io_uring_prep_readv(sqe, fd, iovecs, UInt32(iovecCount), offset)
        io_uring_sqe_set_data64(sqe, 3)  // every readv of the cat: one is in flight at a time
        checkSubmit(io_uring_submit(ring), 1)
        let cqe = waitCQE(ring)
        requests += 1
        guard cqe.res >= 0 else {
            release()
            fail("cannot read \(path): readv at offset \(offset) completed with res=\(describe(res: cqe.res))")
        }
        if cqe.res == 0 { break }  // end of file

        // res bytes, spread over the iovecs in order: copy out each iovec's share.
        var left = Int(cqe.res)
        for index in 0..<iovecCount where left > 0 {
            let share = min(left, iovecs[index].iov_len)
            guard let base = iovecs[index].iov_base else { break }
            var written = 0
            while written < share {
                let n = write(STDOUT_FILENO, base + written, share - written)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    let reason = describe(res: -errno)
                    release()
                    fail("cannot write standard output: \(reason)")
                }
                written += n
            }
            left -= share
        }
        offset += UInt64(cqe.res)
    }
    release()
    return (offset, requests)
}

// The default run ends by cat-ing its temp file. print() buffers its output, and cat writes
// straight to the fd with write(2), so the buffer is flushed first to keep the lines in order.

print("cat \(path) with readv (\(catIovecs) iovecs of \(catBufferSize) bytes per request), out with write(2):")
fflush(nil)  // nil: every stdio stream, standard output among them
let (total, requests) = cat(path, ring, iovecCount: catIovecs, bufferSize: catBufferSize)
print("cat: \(total) bytes in \(requests) readv requests, the last returned 0: end of file")

destroyRing(ring)
