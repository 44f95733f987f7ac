// Lesson 11: splice and tee
//
// Copying a file the usual way moves every byte twice through user space: read(2) copies it
// from the kernel into our buffer, write(2) copies it back. splice(2) moves data between a
// file and a pipe inside the kernel: from a file into a pipe, the pipe's buffers simply take
// references to the file's page-cache pages; from a pipe into a file, the kernel writes those
// pages into the destination. Our process never holds the bytes. tee(2) duplicates what a
// pipe holds into a second pipe, again by reference, and leaves the first pipe as it was.
//
// io_uring has both as requests: io_uring_prep_splice (IORING_OP_SPLICE, Linux 5.7) and
// io_uring_prep_tee (IORING_OP_TEE, 5.8). Their `res` is the number of bytes moved. This
// lesson copies one source file four times: through a pipe with splice; through a second pipe
// filled by tee; with two splices linked into one submit; and through a pipe too small for
// the request, which shows how a short splice breaks a chain. Then it compares every copy
// with the source, byte for byte.
//
// Usage: lesson-11-splice-tee [SRC]   (without SRC it copies a 10000-byte temp file it writes)
//
// Read next: man 3 io_uring_prep_splice, man 3 io_uring_prep_tee, man 2 splice, man 2 tee,
// man 7 pipe ("Pipe capacity").

import Glibc
import CLiburing
import LabSupport

let arguments = lessonArguments(usage: "lesson-11-splice-tee [SRC]", max: 1)

// MARK: - 1. A ring, the source file, three pipes, four destination files
//
// We ask the kernel whether it has SPLICE (5.7) and TEE (5.8) rather than guess from its
// version. Opening files and creating pipes is not what this lesson is about, so those are
// plain open(2) and pipe(2) (lesson 04 opens through the ring; a pipe opcode exists only
// since Linux 6.16).

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_SPLICE, IORING_OP_TEE)

// The default source: 200 lines of 50 bytes, 10000 bytes in all. That is less than a pipe
// holds (16 pages by default: 64 KiB with 4 KiB pages), so one splice moves the whole file
// into pipe A. A file named on the command line may be larger: then every copy below goes
// round by round, a pipe-full at a time.
var defaultText: [UInt8] = []
for line in 1...200 {
    let number = String(line)
    let padded = String(repeating: "0", count: 3 - number.count) + number
    defaultText += Array("line \(padded) of 200: moved by splice and tee, no copy\n".utf8)
}
let sourcePath = arguments.first ?? makeTempFile(named: "source.txt", contents: defaultText)
// The four copies go into a temp directory of their own, removed at exit. It is made before
// any fd is opened, so that its error line has nothing of ours to close.
let outputDirectory = makeTempDir("lesson-11")

// Every fd the lesson opens from here on is listed in `openFDs`, and `stop` closes them all
// before the error line: no error leaves an fd open. It is called only after the CQE it is
// about, when no request that names these fds can still run (a chain's second splice is
// cancelled when the first fails). One thread uses the list, so it needs no lock.
nonisolated(unsafe) var openFDs: [Int32] = []
func closeAll() {
    for fd in openFDs.reversed() { close(fd) }
    openFDs = []
}
func stop(_ message: String) -> Never {
    closeAll()
    fail(message)
}

// A splice from a pipe, a socket or /dev/zero works too, but has no size to copy and compare,
// so SRC must be a regular file. (Checked before opening: opening a FIFO would wait for a writer.)
var info = stat()
guard stat(sourcePath, &info) == 0 else { fail("cannot open \(sourcePath): \(describe(res: -errno))") }
guard info.st_mode & S_IFMT == S_IFREG else { fail("\(sourcePath) is not a regular file") }
let source = open(sourcePath, O_RDONLY)
guard source >= 0 else { fail("cannot open \(sourcePath): \(describe(res: -errno))") }
openFDs.append(source)
guard fstat(source, &info) == 0 else { stop("cannot stat \(sourcePath): \(describe(res: -errno))") }
let size = Int(info.st_size)

// Every copy below is sized by st_size, so the file must end where its size says. Files in
// /proc and /sys do not: /proc/self/status says 0 bytes and holds more than a kilobyte, a sysfs
// file says 4096 and holds a few. Two plain reads of one byte check it before anything is
// copied: the last byte st_size counts must be there, and a read just past it must find the
// end of the file (0). Otherwise the lesson stops, rather than copy nothing and call it a copy.
var probe: UInt8 = 0
if size > 0 {
    let last = pread(source, &probe, 1, off_t(size - 1))
    guard last >= 0 else { stop("cannot read \(sourcePath): \(describe(res: -errno))") }
    guard last == 1 else {
        stop("\(sourcePath) says \(size) bytes (stat), but a read of its last byte found the end of "
            + "the file: its size is not what it holds (files in /proc and /sys), and every copy "
            + "here is sized by st_size")
    }
}
let beyond = pread(source, &probe, 1, off_t(size))
guard beyond >= 0 else { stop("cannot read \(sourcePath): \(describe(res: -errno))") }
guard beyond == 0 else {
    stop("\(sourcePath) says \(size) bytes (stat), but a read at offset \(size) still found data: "
        + "its size is not what it holds (files in /proc and /sys), and every copy here is sized by st_size")
}
print("source: \(sourcePath), \(size) bytes")

// F_GETPIPE_SZ / F_SETPIPE_SZ (fcntl(2), Linux 2.6.35) read and set a pipe's capacity. glibc
// declares them only with _GNU_SOURCE, which Swift's Glibc module is built without.
let F_SETPIPE_SZ: Int32 = 1031
let F_GETPIPE_SZ: Int32 = 1032

/// A pipe: splice and tee need one on at least one side. Data goes in at `write`, out at `read`.
struct Pipe {
    let read: Int32
    let write: Int32
}

func makePipe() -> Pipe {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { stop("pipe: \(describe(res: -errno))") }
    openFDs += fds
    return Pipe(read: fds[0], write: fds[1])
}

/// How many bytes wait in the pipe (FIONREAD, as for a socket).
func bytesIn(_ pipe: Pipe) -> Int32 {
    var count: Int32 = 0
    guard ioctl(pipe.read, UInt(FIONREAD), &count) == 0 else { stop("FIONREAD: \(describe(res: -errno))") }
    return count
}

let pipeA = makePipe()
let pipeB = makePipe()
let pipeC = makePipe()
let capacityA = Int(fcntl(pipeA.write, F_GETPIPE_SZ))
guard capacityA > 0 else { stop("F_GETPIPE_SZ: \(describe(res: -errno))") }
let capacityB = Int(fcntl(pipeB.write, F_GETPIPE_SZ))
guard capacityB > 0 else { stop("F_GETPIPE_SZ: \(describe(res: -errno))") }
print("pipe A: capacity \(capacityA) bytes, pipe B: capacity \(capacityB) bytes (F_GETPIPE_SZ)")
// A round must fit in pipe A, and the tee must fit all of it into pipe B.
let capacity = min(capacityA, capacityB)

/// A new file in the output directory, open for writing the copy and reading it back.
struct Destination {
    let name: String
    let fd: Int32
}
func createDestination(_ name: String) -> Destination {
    let path = outputDirectory + "/" + name
    let fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0o644)
    guard fd >= 0 else { stop("cannot create \(path): \(describe(res: -errno))") }
    openFDs.append(fd)
    return Destination(name: name, fd: fd)
}
let spliceCopy = createDestination("splice-copy.txt")
let teeCopy = createDestination("tee-copy.txt")
let linkedCopy = createDestination("linked-copy.txt")
let smallPipeCopy = createDestination("small-pipe-copy.txt")

// MARK: - 2. Naming the requests, and checking what they moved
//
// A CQE names its request only by user_data (lesson 03). Every request has a fixed one, by
// section: 11 to 14 for the four requests of section 3, 21 and 22 for section 4's chain, 31
// and 32 for section 5's, 33 for its lone splice. A round reuses its section's values: all
// of one round's CQEs are in before the next round's SQEs go in. This table names them.
let requestNames: [UInt64: String] = [
    11: "splice source -> pipe A", 12: "tee pipe A -> pipe B",
    13: "splice pipe A -> splice-copy.txt", 14: "splice pipe B -> tee-copy.txt",
    21: "splice source -> pipe A", 22: "splice pipe A -> linked-copy.txt",
    31: "splice source -> pipe C", 32: "splice pipe C -> small-pipe-copy.txt",
    33: "lone splice pipe C -> small-pipe-copy.txt",
]
func name(_ cqe: io_uring_cqe) -> String { requestNames[cqe.user_data] ?? "?" }

// Requests are submitted with io_uring_submit (checkSubmit: exit 1 unless the kernel took
// every SQE) and reaped with `waitCQE` (io_uring_wait_cqe, a copy, io_uring_cqe_seen). A chain
// must go in with one submit, and the ring has 8 entries: at most 2 SQEs are ever prepared
// before a submit that reaps them all, so `getSQE` (io_uring_get_sqe) cannot find the SQ full.

/// The rule every CQE below is checked against: it moved exactly the bytes we asked for.
func expect(_ cqe: io_uring_cqe, _ bytes: Int) {
    guard cqe.res >= 0 else { stop("\(name(cqe)) completed with res=\(describe(res: cqe.res))") }
    guard cqe.res == Int32(bytes) else { stop("\(name(cqe)) moved \(cqe.res) bytes, expected \(bytes)") }
}

/// A file can be larger than a pipe, so each copy goes in rounds; only the first few are
/// printed, and the rest counted.
let shownRounds = 3
func roundsNotShown(_ rounds: Int) {
    if rounds > shownRounds { print("... \(rounds - shownRounds) more rounds not shown") }
}

// MARK: - 3. splice and tee, one request at a time
//
// io_uring_prep_splice(sqe, fd_in, off_in, fd_out, off_out, nbytes, flags) is splice(2) as a
// request. At least one of the two fds must be a pipe (exercise 1: what if neither is?). The
// offsets follow splice(2):
//   - for a pipe the offset must be -1: a pipe has no position;
//   - for a file, an offset >= 0 reads or writes there, like pread/pwrite, and leaves the
//     file position alone; -1 means "at the file position", which then moves on.
// We give every file an explicit offset, so nothing depends on a file position.
//
// io_uring_prep_tee(sqe, fd_in, fd_out, nbytes, flags) is tee(2): both fds are pipes, and it
// duplicates up to nbytes of what fd_in holds into fd_out without consuming it. FIONREAD
// shows that: after the tee both pipes hold the bytes.
//
// Here each request waits for the one before: the tee must not run before pipe A has data,
// and pipe A must not be drained before the tee. So a round is four requests, in this order,
// each submitted alone and reaped before the next is prepared.
// Section 4 gets the same ordering from the kernel with IOSQE_IO_LINK.
//
// splice and tee may wait on a pipe, so io_uring always runs them in one of its worker threads
// (io-wq), never inline in io_uring_submit. The flags argument takes splice(2)'s SPLICE_F_*
// (SPLICE_F_FD_IN_FIXED makes fd_in a registered-file index, lesson 13); we need none.
//
// Notice what these SQEs do not contain: a buffer. The data never passes through our memory,
// so no buffer of ours has to stay put. The fds do: an SQE names fd_in and fd_out by number,
// and the worker that runs the splice looks them up only when it starts it. An fd closed
// before that makes the request fail with -EBADF, or, if an open has reused the number, act
// on another file (both seen on Linux 6.18 in a C experiment that closed an fd right after
// the submit). So every fd stays open until the last CQE is in (section 7).

print("splice source -> pipe A, tee pipe A -> pipe B, then each pipe -> its own file:")
var rounds = 0
for offset in stride(from: 0, to: size, by: capacity) {
    let want = min(size - offset, capacity)
    rounds += 1
    let show = rounds <= shownRounds
    if show { print("round \(rounds): offset \(offset), \(want) bytes") }
    for userData: UInt64 in 11...14 {
        let sqe = getSQE(ring)
        switch userData {
        case 11: io_uring_prep_splice(sqe, source, Int64(offset), pipeA.write, -1, UInt32(want), 0)
        case 12: io_uring_prep_tee(sqe, pipeA.read, pipeB.write, UInt32(want), 0)
        case 13: io_uring_prep_splice(sqe, pipeA.read, -1, spliceCopy.fd, Int64(offset), UInt32(want), 0)
        default: io_uring_prep_splice(sqe, pipeB.read, -1, teeCopy.fd, Int64(offset), UInt32(want), 0)
        }
        io_uring_sqe_set_data64(sqe, userData)
        checkSubmit(io_uring_submit(ring), 1)
        let cqe = waitCQE(ring)
        if show { printCQE(cqe, "  " + name(cqe)) }
        if show && (userData == 12 || userData == 14) {
            print("  in the pipes now (FIONREAD): A \(bytesIn(pipeA)) bytes, B \(bytesIn(pipeB)) bytes")
        }
        expect(cqe, want)
    }
}
roundsNotShown(rounds)

// MARK: - 4. splice linked to splice: file -> pipe -> file in one submit
//
// With IOSQE_IO_LINK on the first splice, the kernel starts the second only after the first
// has completed, and only if it succeeded (lesson 07). Both go in with one io_uring_submit.
//
// "Succeeded" means: it moved every byte it was asked to. A splice that moves fewer (a
// *short* splice) counts as a failure in a chain, and the linked splice is cancelled. So the
// request must be sized so that the first splice can do all of it:
//   - no more than the file still holds from that offset (else it stops at the end: short);
//   - no more than the pipe can take (a splice into a pipe stops when the pipe is full:
//     short). With a 64 KiB pipe, a round moves at most 64 KiB.
// The second splice asks for the same number of bytes, which is exactly what the pipe then holds.
//
// Section 5 sends the same chain through another pipe, so the two SQEs are prepared by a
// function, `queueChain`; each section submits them and reaps the CQEs itself.

/// The chain for `want` bytes at `offset`: a splice from `source` into `pipe` (user_data
/// `first`, IOSQE_IO_LINK), then one from `pipe` into `destination` (user_data `first + 1`).
func queueChain(_ ring: Ring, from source: Int32, through pipe: Pipe, to destination: Destination,
                offset: Int, want: Int, first: UInt64) {
    var sqe = getSQE(ring)
    io_uring_prep_splice(sqe, source, Int64(offset), pipe.write, -1, UInt32(want), 0)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    io_uring_sqe_set_data64(sqe, first)
    sqe = getSQE(ring)
    io_uring_prep_splice(sqe, pipe.read, -1, destination.fd, Int64(offset), UInt32(want), 0)
    io_uring_sqe_set_data64(sqe, first + 1)
}

print("splice source -> pipe A linked to splice pipe A -> \(linkedCopy.name), one submit per round:")
rounds = 0
for offset in stride(from: 0, to: size, by: capacity) {
    let want = min(size - offset, capacity)
    rounds += 1
    if rounds <= shownRounds { print("round \(rounds): offset \(offset), \(want) bytes") }
    queueChain(ring, from: source, through: pipeA, to: linkedCopy, offset: offset, want: want, first: 21)
    let submitted = io_uring_submit(ring)
    checkSubmit(submitted, 2)
    if rounds <= shownRounds { print("  io_uring_submit = \(submitted)") }
    for n in 1...2 {
        let cqe = waitCQE(ring)
        if rounds <= shownRounds { printCQE(cqe, "  CQE \(n): \(name(cqe))") }
        expect(cqe, want)
    }
}
roundsNotShown(rounds)

// MARK: - 5. A pipe smaller than the request breaks the chain
//
// Pipe C is shrunk to one page with F_SETPIPE_SZ. The first round asks for as much as a round
// of section 4 did: more than pipe C can take. The first splice fills the pipe and returns
// what fit, a short result; the kernel cancels the linked splice with -ECANCELED; and the
// bytes that did move are stranded in the pipe. Nothing is lost: a lone splice (no link) moves
// them on. Every later round asks for no more than the pipe's capacity, and runs whole.

let smallCapacity = Int(fcntl(pipeC.write, F_SETPIPE_SZ, Int32(getpagesize())))
guard smallCapacity > 0 else { stop("F_SETPIPE_SZ: \(describe(res: -errno))") }
print("the same chain through pipe C, shrunk to \(smallCapacity) bytes (F_SETPIPE_SZ):")
var offset = 0
rounds = 0
while offset < size {
    // Round 1 is sized for pipe A, deliberately; the rest for pipe C.
    let want = min(size - offset, rounds == 0 ? capacity : smallCapacity)
    rounds += 1
    let show = rounds <= shownRounds
    if show { print("round \(rounds): offset \(offset), asking for \(want) bytes") }
    queueChain(ring, from: source, through: pipeC, to: smallPipeCopy, offset: offset, want: want, first: 31)
    let submitted = io_uring_submit(ring)
    checkSubmit(submitted, 2)
    if show { print("  io_uring_submit = \(submitted)") }
    var intoPipe = io_uring_cqe(), outOfPipe = io_uring_cqe()
    for n in 1...2 {
        let cqe = waitCQE(ring)
        let short = cqe.res >= 0 && cqe.res < want ? "  <- short: \(cqe.res) of \(want) bytes" : ""
        if show { print("  CQE \(n): \(name(cqe)): \(format(cqe))" + short) }
        // Which CQE is which: they arrive in chain order, but user_data is what says so.
        if cqe.user_data == 31 { intoPipe = cqe } else { outOfPipe = cqe }
    }
    var moved = Int(intoPipe.res)
    if moved > 0 && moved < want && outOfPipe.res == -ECANCELED {
        // The short splice broke the chain; its bytes wait in the pipe. Move them with a lone
        // splice that asks for exactly the `moved` bytes the pipe holds.
        if show { print("  in pipe C now (FIONREAD): \(bytesIn(pipeC)) bytes, left by the cancelled link") }
        let sqe = getSQE(ring)
        io_uring_prep_splice(sqe, pipeC.read, -1, smallPipeCopy.fd, Int64(offset), UInt32(moved), 0)
        io_uring_sqe_set_data64(sqe, 33)
        checkSubmit(io_uring_submit(ring), 1)
        let rescue = waitCQE(ring)
        if show { printCQE(rescue, "  " + name(rescue)) }
        expect(rescue, moved)
    } else {
        expect(intoPipe, want)
        expect(outOfPipe, want)
        moved = want
    }
    offset += moved
}
roundsNotShown(rounds)

// MARK: - 6. Do the copies match the source?
//
// The lesson's claim is checked on the real files: each copy is read back (plain pread(2),
// the checking is not the lesson) and compared with the source byte for byte.

/// The size of the file at `fd` and the offset of its first byte that differs from the source
/// (nil if none: same size, same bytes).
func compareWithSource(_ fd: Int32, _ source: Int32, _ sourceSize: Int) -> (size: Int, firstDifference: Int?) {
    var copyInfo = stat()
    guard fstat(fd, &copyInfo) == 0 else { stop("fstat: \(describe(res: -errno))") }
    let copySize = Int(copyInfo.st_size)
    let chunk = 65536
    let a = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 16)
    defer { a.deallocate(); b.deallocate() }
    guard let aBytes = a.baseAddress, let bBytes = b.baseAddress else { stop("out of memory") }
    var position = 0
    while position < min(copySize, sourceSize) {
        let length = min(chunk, min(copySize, sourceSize) - position)
        guard pread(source, aBytes, length, off_t(position)) == length,
              pread(fd, bBytes, length, off_t(position)) == length else {
            stop("cannot read back the copies: \(describe(res: -errno))")
        }
        if memcmp(aBytes, bBytes, length) != 0,
           let index = (0..<length).first(where: { a[$0] != b[$0] }) {
            return (copySize, position + index)
        }
        position += length
    }
    return (copySize, copySize == sourceSize ? nil : min(copySize, sourceSize))
}

print("the copies, compared with the source byte for byte:")
print("source: \(size) bytes")
var allMatch = true
for destination in [spliceCopy, teeCopy, linkedCopy, smallPipeCopy] {
    let (copySize, difference) = compareWithSource(destination.fd, source, size)
    if let difference {
        allMatch = false
        print("\(destination.name): \(copySize) bytes, differs from the source at byte \(difference)")
    } else {
        print("\(destination.name): \(copySize) bytes, identical to the source")
    }
}

// MARK: - 7. Cleaning up
//
// Every request has completed (its CQE is in), so no request will look these fds up any more:
// now they may be closed. Closing both ends of each pipe frees its buffers (and the page
// references they held).

closeAll()
destroyRing(ring)
if !allMatch { fail("a copy differs from the source") }
