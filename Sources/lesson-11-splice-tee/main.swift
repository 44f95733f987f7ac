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
// We ask the kernel whether it has SPLICE (5.7) and TEE (5.8). Opening files and creating
// pipes is not the lesson, so those are plain open(2) and pipe(2) (lesson 04 opens through the ring).

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_SPLICE, IORING_OP_TEE)

// The default source: 200 lines of 50 bytes, 10000 bytes in all, less than a pipe holds
// (64 KiB by default), so one splice moves it all. A larger file goes a pipe-full per round.
let defaultText = (1...200).flatMap { line in  // line numbers zero-padded: 001 to 200
    Array("line \(String(1000 + line).dropFirst()) of 200: moved by splice and tee, no copy\n".utf8)
}
let sourcePath = arguments.first ?? makeTempFile(named: "source.txt", contents: defaultText)
let outputDirectory = makeTempDir("lesson-11")

// Every fd opened from here on is listed in `openFDs`; `stop` closes them all before the
// error line. It is called only after the CQE it is about, when no request naming these fds
// can still run. One thread uses the list, so it needs no lock.
nonisolated(unsafe) var openFDs: [Int32] = []
func closeAll() { openFDs.reversed().forEach { close($0) }; openFDs = [] }
func stop(_ message: String) -> Never { closeAll(); fail(message) }

// SRC must be a regular file: a pipe or a socket has no size to copy and compare (checked
// before opening: opening a FIFO would wait for a writer).
var info = stat()
guard stat(sourcePath, &info) == 0 else { fail("cannot open \(sourcePath): \(describe(res: -errno))") }
guard info.st_mode & S_IFMT == S_IFREG else { fail("\(sourcePath) is not a regular file") }
let source = open(sourcePath, O_RDONLY)
guard source >= 0 else { fail("cannot open \(sourcePath): \(describe(res: -errno))") }
openFDs.append(source)
guard fstat(source, &info) == 0 else { stop("cannot stat \(sourcePath): \(describe(res: -errno))") }
let size = Int(info.st_size)

// Every copy is sized by st_size, so the file must end where its size says. Files in /proc
// and /sys do not (/proc/self/status says 0 bytes, a sysfs file 4096), so two one-byte reads
// check it: the last byte st_size counts is there, and a read at st_size finds the end.
func byteExists(at offset: Int) -> Bool {
    var probe: UInt8 = 0
    let got = pread(source, &probe, 1, off_t(offset))
    guard got >= 0 else { stop("cannot read \(sourcePath): \(describe(res: -errno))") }
    return got == 1
}
let says = "\(sourcePath) says \(size) bytes (stat), but a read "
let holds = ": its size is not what it holds (files in /proc and /sys), and every copy here is sized by st_size"
if size > 0 && !byteExists(at: size - 1) { stop(says + "of its last byte found the end of the file" + holds) }
if byteExists(at: size) { stop(says + "at offset \(size) still found data" + holds) }
print("source: \(sourcePath), \(size) bytes")

// F_GETPIPE_SZ / F_SETPIPE_SZ (fcntl(2), Linux 2.6.35) read and set a pipe's capacity. glibc
// declares them only with _GNU_SOURCE, which Swift's Glibc module is built without.
let F_SETPIPE_SZ: Int32 = 1031, F_GETPIPE_SZ: Int32 = 1032

/// A pipe: splice and tee need one on at least one side. Data goes in at `write`, out at `read`.
struct Pipe { let name: String, read: Int32, write: Int32 }
func makePipe(_ name: String) -> Pipe {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { stop("pipe: \(describe(res: -errno))") }
    openFDs += fds
    return Pipe(name: name, read: fds[0], write: fds[1])
}
/// How many bytes wait in the pipe (FIONREAD, as for a socket).
func bytesIn(_ pipe: Pipe) -> Int32 {
    var count: Int32 = 0
    guard ioctl(pipe.read, UInt(FIONREAD), &count) == 0 else { stop("FIONREAD: \(describe(res: -errno))") }
    return count
}

let pipeA = makePipe("A"), pipeB = makePipe("B"), pipeC = makePipe("C")
let capacityA = Int(fcntl(pipeA.write, F_GETPIPE_SZ)), capacityB = Int(fcntl(pipeB.write, F_GETPIPE_SZ))
guard capacityA > 0, capacityB > 0 else { stop("F_GETPIPE_SZ: \(describe(res: -errno))") }
print("pipe A: capacity \(capacityA) bytes, pipe B: capacity \(capacityB) bytes (F_GETPIPE_SZ)")
// A round must fit in pipe A, and the tee must fit all of it into pipe B.
let capacity = min(capacityA, capacityB)

/// A new file in the output directory, open for writing the copy and reading it back.
struct Destination { let name: String, fd: Int32 }
func createDestination(_ name: String) -> Destination {
    let path = outputDirectory + "/" + name
    let fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0o644)
    guard fd >= 0 else { stop("cannot create \(path): \(describe(res: -errno))") }
    openFDs.append(fd)
    return Destination(name: name, fd: fd)
}
let spliceCopy = createDestination("splice-copy.txt"), teeCopy = createDestination("tee-copy.txt")
let linkedCopy = createDestination("linked-copy.txt"), smallPipeCopy = createDestination("small-pipe-copy.txt")

// MARK: - 2. Naming the requests, and checking what they moved
//
// A CQE names its request only by user_data (lesson 03): 11 to 14 for section 3's four
// requests, 21 and 22 for section 4's chain, 31 to 33 for section 5. A round reuses its
// section's values: all of one round's CQEs are in before the next round's SQEs go in.
let requestNames: [UInt64: String] = [
    11: "splice source -> pipe A", 12: "tee pipe A -> pipe B",
    13: "splice pipe A -> splice-copy.txt", 14: "splice pipe B -> tee-copy.txt",
    21: "splice source -> pipe A", 22: "splice pipe A -> linked-copy.txt",
    31: "splice source -> pipe C", 32: "splice pipe C -> small-pipe-copy.txt",
    33: "lone splice pipe C -> small-pipe-copy.txt",
]
func name(_ cqe: io_uring_cqe) -> String { requestNames[cqe.user_data] ?? "?" }

// At most 2 SQEs are prepared before a submit that reaps them all: the 8-entry SQ is never full.

/// The rule every CQE below is checked against: it moved exactly the bytes we asked for.
func expect(_ cqe: io_uring_cqe, _ bytes: Int) {
    guard cqe.res >= 0 else { stop("\(name(cqe)) completed with res=\(describe(res: cqe.res))") }
    guard cqe.res == Int32(bytes) else { stop("\(name(cqe)) moved \(cqe.res) bytes, expected \(bytes)") }
}

/// A file can be larger than a pipe, so each copy goes in rounds; the first 3 are printed.
let shownRounds = 3
func roundsNotShown(_ rounds: Int) { if rounds > shownRounds { print("... \(rounds - shownRounds) more rounds not shown") } }

// MARK: - 3. splice and tee, one request at a time
//
// io_uring_prep_splice(sqe, fd_in, off_in, fd_out, off_out, nbytes, flags) is splice(2) as a
// request. At least one of the two fds must be a pipe (exercise 1: what if neither is?). The
// offsets follow splice(2): for a pipe -1 (a pipe has no position); for a file, an offset
// >= 0 reads or writes there like pread/pwrite, while -1 uses and moves the file position.
// We give every file an explicit offset, so nothing depends on a file position.
//
// io_uring_prep_tee(sqe, fd_in, fd_out, nbytes, flags) is tee(2): both fds are pipes; it
// duplicates up to nbytes of fd_in into fd_out without consuming them (FIONREAD then shows
// the same bytes in both pipes). The flags take splice(2)'s SPLICE_F_* (SPLICE_F_FD_IN_FIXED: lesson 13).
//
// Each request waits for the one before (the tee needs pipe A's data, which must not be
// drained before the tee), so each is submitted alone and reaped before the next is prepared.
//
// These SQEs carry no buffer: the data never passes through our memory. But the fds must stay
// open: io_uring runs splice and tee in an io-wq worker, which looks the fd numbers up only
// when it starts (an fd closed after the submit gave -EBADF, or another file, on Linux 6.18).
// So every fd stays open until the last CQE is in (section 7).

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
// "Succeeded" means: it moved every byte it was asked to; a *short* splice fails the chain
// and the linked splice is cancelled. So the first asks for no more than the file still holds
// from that offset and the pipe can take (a splice into a pipe stops, short, when the pipe fills).

/// Copies the source into `copy` through `pipe`, one chain per round: a splice into the pipe
/// (user_data `first`, IOSQE_IO_LINK), then one out of it (`first + 1`). Round n (from 0) asks
/// for `want(n)` bytes, at most what the file still holds. If a short splice breaks the chain (in
/// section 5 only: section 4's rounds fit pipe A), a lone splice moves on what it left in the pipe
/// (`first + 2`), and the next round starts after those bytes.
func copyInChains(_ ring: Ring, through pipe: Pipe, to copy: Destination, first: UInt64, asking: String = "",
                  want wantInRound: (Int) -> Int) {
    var offset = 0, rounds = 0
    while offset < size {
        let want = min(size - offset, wantInRound(rounds))
        rounds += 1
        let show = rounds <= shownRounds
        if show { print("round \(rounds): offset \(offset), \(asking)\(want) bytes") }
        var sqe = getSQE(ring)
        io_uring_prep_splice(sqe, source, Int64(offset), pipe.write, -1, UInt32(want), 0)
        io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
        io_uring_sqe_set_data64(sqe, first)
        sqe = getSQE(ring)
        io_uring_prep_splice(sqe, pipe.read, -1, copy.fd, Int64(offset), UInt32(want), 0)
        io_uring_sqe_set_data64(sqe, first + 1)
        let submitted = io_uring_submit(ring)
        checkSubmit(submitted, 2)
        if show { print("  io_uring_submit = \(submitted)") }
        var intoPipe = io_uring_cqe(), outOfPipe = io_uring_cqe()
        for n in 1...2 {
            let cqe = waitCQE(ring)
            let short = cqe.res >= 0 && cqe.res < want ? "  <- short: \(cqe.res) of \(want) bytes" : ""
            if show { print("  CQE \(n): \(name(cqe)): \(format(cqe))" + short) }
            // They arrive in chain order, but user_data is what says which is which.
            if cqe.user_data == first { intoPipe = cqe } else { outOfPipe = cqe }
        }
        var moved = Int(intoPipe.res)
        if moved > 0 && moved < want && outOfPipe.res == -ECANCELED {
            if show { print("  in pipe \(pipe.name) now (FIONREAD): \(bytesIn(pipe)) bytes, left by the cancelled link") }
            sqe = getSQE(ring)
            io_uring_prep_splice(sqe, pipe.read, -1, copy.fd, Int64(offset), UInt32(moved), 0)
            io_uring_sqe_set_data64(sqe, first + 2)
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
}

print("splice source -> pipe A linked to splice pipe A -> \(linkedCopy.name), one submit per round:")
copyInChains(ring, through: pipeA, to: linkedCopy, first: 21) { _ in capacity }

// MARK: - 5. A pipe smaller than the request breaks the chain
//
// Pipe C is shrunk to one page with F_SETPIPE_SZ, and round 1 asks for as much as section 4
// did. The first splice fills the pipe and returns what fit, short; the kernel cancels the
// linked splice with -ECANCELED; a lone splice (no link) moves on the bytes stranded in the
// pipe. Every later round asks for no more than the pipe's capacity, and runs whole.

let smallCapacity = Int(fcntl(pipeC.write, F_SETPIPE_SZ, Int32(getpagesize())))
guard smallCapacity > 0 else { stop("F_SETPIPE_SZ: \(describe(res: -errno))") }
print("the same chain through pipe C, shrunk to \(smallCapacity) bytes (F_SETPIPE_SZ):")
copyInChains(ring, through: pipeC, to: smallPipeCopy, first: 31, asking: "asking for ") { round in
    round == 0 ? capacity : smallCapacity   // round 1 sized for pipe A, deliberately
}

// MARK: - 6. Do the copies match the source?
//
// The claim is checked on the real files: each copy is read back (plain pread(2), the
// checking is not the lesson) and compared with the source byte for byte.

/// The offset of the first byte where the file at `fd` differs from the source, nil if none;
/// a copy shorter or longer than the source differs where the shorter one ends.
func firstDifference(_ fd: Int32) -> Int? {
    var a = [UInt8](repeating: 0, count: 65536), b = a
    var position = 0
    while true {
        let n = pread(source, &a, a.count, off_t(position)), m = pread(fd, &b, b.count, off_t(position))
        guard n >= 0, m >= 0 else { stop("cannot read back the copies: \(describe(res: -errno))") }
        guard n == m, memcmp(a, b, n) == 0 else {
            return position + ((0..<min(n, m)).first { a[$0] != b[$0] } ?? min(n, m))
        }
        if n == 0 { return nil }
        position += n
    }
}

print("the copies, compared with the source byte for byte:")
print("source: \(size) bytes")
var allMatch = true
for destination in [spliceCopy, teeCopy, linkedCopy, smallPipeCopy] {
    let difference = firstDifference(destination.fd)
    allMatch = allMatch && difference == nil
    print("\(destination.name): \(lseek(destination.fd, 0, SEEK_END)) bytes, "
        + (difference.map { "differs from the source at byte \($0)" } ?? "identical to the source"))
}

// MARK: - 7. Cleaning up
//
// Every request has completed, so none will look these fds up any more. Closing both ends of
// each pipe frees its buffers (and the page references they held).

closeAll()
destroyRing(ring)
if !allMatch { fail("a copy differs from the source") }
