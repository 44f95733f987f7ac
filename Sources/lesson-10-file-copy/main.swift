// Lesson 10: copying a file with many requests in flight
//
// Until now every lesson waited for each request, or each batch, before deciding on the next.
// A copy is where that stops: `cp` reads a block and writes it, over and over, and with a
// ring nothing makes the blocks take turns. This lesson keeps up to eight requests in flight
// at once (the *queue depth*), in the design of liburing's examples/io_uring-cp.c. Eight
// *slots* each own one 32 KiB buffer and copy one block at a time: a read at the block's
// offset, then a write of what was read to the same offset of the copy, then the next block
// nobody has taken yet. Explicit offsets make the blocks independent, so their requests may
// complete in any order.
//
// The bookkeeping is the lesson: which request a CQE answers (user_data names the slot), what
// to do when a read or write moves fewer bytes than asked (ask again for the rest), where the
// file ends (a read that returns 0), and never to reuse a buffer the kernel may still touch.
//
// It is a real `cp SRC DST`: bad input is refused before DST is touched, and afterwards both
// files are read back with plain read(2) and their sizes and CRC-32s compared.
//
// Usage: lesson-10-file-copy [SRC DST]   (without arguments it copies a generated file)
//
// Read next: man 3 io_uring_prep_read, man 3 io_uring_prep_write, man 3
// io_uring_submit_and_wait, man 2 io_uring_enter; liburing's examples/io_uring-cp.c.

import Glibc
import CLiburing
import LabSupport

let usage = "lesson-10-file-copy [SRC DST]   (without arguments it copies a generated file between temp paths)"
let arguments = lessonArguments(usage: usage, max: 2)
if arguments.count == 1 {
    fail("give both SRC and DST, or neither (usage: \(usage))")
}

let queueDepth = 8      // requests in flight at most: one per slot
let blockSize = 32768   // bytes per block, and per buffer

// MARK: - 1. A ring as deep as the queue
//
// At most `queueDepth` requests are in flight, and each has at most one SQE waiting to be
// submitted, so a ring of 8 entries never runs out of SQEs, and its CQ (16) has room for every
// completion. IORING_OP_READ and IORING_OP_WRITE are Linux 5.6; we probe for them.

let ring = makeRing(entries: UInt32(queueDepth))
requireOpcodes(ring, IORING_OP_READ, IORING_OP_WRITE)

// MARK: - 2. The two paths
//
// Without arguments: 1 MiB and 100 bytes of pseudo-random data (xorshift64 from a fixed seed,
// so the same bytes every run), which is 32 full blocks and a short one of 100 bytes.

let sourcePath: String
let copyPath: String
if arguments.isEmpty {
    let size = 1_048_576 + 100
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    var bytes: [UInt8] = []
    bytes.reserveCapacity(size + 8)
    while bytes.count < size {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        withUnsafeBytes(of: state.littleEndian) { bytes.append(contentsOf: $0) }
    }
    bytes.removeLast(bytes.count - size)
    sourcePath = makeTempFile(named: "source.bin", contents: bytes)  // removed at exit
    copyPath = makeTempDir("lesson-10") + "/copy.bin"
} else {
    sourcePath = arguments[0]
    copyPath = arguments[1]
}
print("source: \(sourcePath)")
print("copy:   \(copyPath)")

// MARK: - 3. Refusing bad input before DST is touched
//
// Opening is not this lesson's subject (lesson 04 opened through the ring), so both files are
// opened with plain open(2), and every check that can refuse the copy runs before DST is
// changed at all:
//
//   SRC must exist and be a regular file. stat(2) says what it is before we open it (opening
//   a FIFO would wait for a writer; a directory would open, and only its reads would fail).
//   DST, if it exists, must be a regular file too, and must not be SRC itself: not the same
//   path, nor `./name` for `name`, nor a hard or symbolic link to it. Names cannot tell; the
//   (device, inode) pair can.
//   DST must not be a dangling symbolic link: open with O_CREAT would follow it and create
//   the file it names, somewhere else. cp refuses that ("not writing through dangling
//   symlink"), and so do we. lstat(2) looks at the link itself, where stat(2) follows it.
//   DST is opened WITHOUT O_TRUNC. If a name changed between our stat and our open, the open
//   could have reached SRC after all, and O_TRUNC would have emptied it before we could look.
//   So fstat(2) checks the open fds again, and only then does ftruncate(2) empty DST.
//
// (A directory as DST is an error here, where cp would copy into it. A DST whose directory
// does not exist fails at open with ENOENT; one we may not write, with EACCES or EROFS.)

/// Close `fds`, then exit 1 with one `error:` line. Used before any request is in flight.
func refuse(_ message: String, closing fds: Int32...) -> Never {
    for fd in fds { close(fd) }
    fail(message)
}

func isRegularFile(_ info: stat) -> Bool { info.st_mode & S_IFMT == S_IFREG }
func sameFile(_ a: stat, _ b: stat) -> Bool { a.st_dev == b.st_dev && a.st_ino == b.st_ino }

/// "1 block", "2 blocks": the count and the noun, in the plural unless the count is 1.
func plural(_ count: Int, _ noun: String) -> String { "\(count) \(noun)" + (count == 1 ? "" : "s") }

func kindOfFile(_ info: stat) -> String {
    switch info.st_mode & S_IFMT {
    case S_IFDIR: "a directory"
    case S_IFCHR: "a character device"
    case S_IFBLK: "a block device"
    case S_IFIFO: "a FIFO"
    case S_IFSOCK: "a socket"
    default: "not a regular file"
    }
}

var sourceInfo = stat()
guard stat(sourcePath, &sourceInfo) == 0 else { fail("cannot read SRC \(sourcePath): \(describe(res: -errno))") }
guard isRegularFile(sourceInfo) else { fail("cannot copy SRC \(sourcePath): it is \(kindOfFile(sourceInfo))") }

var copyInfo = stat()
if stat(copyPath, &copyInfo) == 0 {
    if sameFile(sourceInfo, copyInfo) {
        fail("SRC \(sourcePath) and DST \(copyPath) are the same file (inode \(copyInfo.st_ino)): nothing copied")
    }
    guard isRegularFile(copyInfo) else { fail("cannot copy to DST \(copyPath): it is \(kindOfFile(copyInfo))") }
} else if lstat(copyPath, &copyInfo) == 0 && copyInfo.st_mode & S_IFMT == S_IFLNK {
    fail("cannot copy to DST \(copyPath): not writing through dangling symlink")
}

let sourceFD = open(sourcePath, O_RDONLY | O_CLOEXEC)
guard sourceFD >= 0 else { fail("cannot open SRC \(sourcePath): \(describe(res: -errno))") }
// A new DST gets SRC's permission bits (less the umask), as with cp.
let copyFD = open(copyPath, O_WRONLY | O_CREAT | O_CLOEXEC, sourceInfo.st_mode & 0o777)
guard copyFD >= 0 else {
    refuse("cannot open DST \(copyPath) for writing: \(describe(res: -errno))", closing: sourceFD)
}
guard fstat(sourceFD, &sourceInfo) == 0, fstat(copyFD, &copyInfo) == 0 else {
    refuse("fstat failed: \(describe(res: -errno))", closing: sourceFD, copyFD)
}
guard isRegularFile(sourceInfo), isRegularFile(copyInfo), !sameFile(sourceInfo, copyInfo) else {
    refuse("SRC \(sourcePath) or DST \(copyPath) changed while we opened them: nothing copied",
           closing: sourceFD, copyFD)
}
guard ftruncate(copyFD, 0) == 0 else {
    refuse("cannot truncate DST \(copyPath): \(describe(res: -errno))", closing: sourceFD, copyFD)
}

// fstat's size is the plan: that many bytes, in blocks of `blockSize`, the last one shorter.
// It is only a plan. The end of a file is where a read returns 0 (lesson 04), and a file can
// be longer than its size says (files in /proc say 0) or change while we copy. So when every
// planned block is done, the loop reads once more past the end, and goes on if that read
// finds more.
let sourceSize = UInt64(sourceInfo.st_size)
let plannedBlocks = Int((sourceSize + UInt64(blockSize) - 1) / UInt64(blockSize))
print("plan: \(sourceSize) bytes (fstat) in \(plural(plannedBlocks, "block")) of at most \(blockSize) bytes, "
    + "queue depth \(queueDepth)")

// MARK: - 4. Slots: one buffer for each request in flight
//
// A slot copies one block at a time and has at most ONE request in flight: first reads until
// its buffer holds the whole block, then writes until all of it is in the copy. Only then
// does it take the next block into the same buffer. That is the buffer rule of the whole lab
// made concrete: the kernel fills the buffer during the read and copies out of it during the
// write, possibly on one of its worker threads after io_uring_submit has returned (on ext4,
// Linux 6.18, every buffered write goes to an io-wq worker; reads from the page cache are
// done during the submit), so the buffer is reused only after the CQE of the last request
// that used it.
//
// The slot's index is the SQE's user_data: a CQE says which slot it answers, and the slot
// knows what it had asked (read or write, how much, where).

struct Slot {
    enum Step { case idle, reading, writing }
    let buffer: UnsafeMutableRawPointer  // blockSize bytes
    var step = Step.idle
    var block = 0            // the block's number, for the printout
    var offset: UInt64 = 0   // where the block starts, in SRC and in DST alike
    var length = 0           // the bytes the block should hold
    var have = 0             // bytes read into the buffer so far
    var written = 0          // bytes written from it so far
    var results: [String] = []  // every CQE's res for this block, for the printout
    var notable = false      // short, failed or left unfinished: always printed
}

var slots = (0..<queueDepth).map { _ in
    Slot(buffer: UnsafeMutableRawPointer.allocate(byteCount: blockSize, alignment: 8))
}

// SQEs come from `getSQE` (io_uring_get_sqe, or an error line if the SQ is full): the ring
// has an SQE for every slot (see section 1), so it never is.

/// Ask for the rest of the slot's block: `length - have` bytes from SRC at `offset + have`,
/// into the buffer after the `have` bytes already there. The first read of a block asks for
/// all of it; after a short read, this asks again for what is missing.
func queueRead(_ ring: Ring, _ slot: inout Slot, index: Int, fd: Int32) {
    let sqe = getSQE(ring)
    io_uring_prep_read(sqe, fd, slot.buffer + slot.have, UInt32(slot.length - slot.have),
                       slot.offset + UInt64(slot.have))
    io_uring_sqe_set_data64(sqe, UInt64(index))
    slot.step = .reading
}

/// Write what the slot holds and has not written yet: `have - written` bytes to DST at the
/// same offset they were read from.
func queueWrite(_ ring: Ring, _ slot: inout Slot, index: Int, fd: Int32) {
    let sqe = getSQE(ring)
    io_uring_prep_write(sqe, fd, slot.buffer + slot.written, UInt32(slot.have - slot.written),
                        slot.offset + UInt64(slot.written))
    io_uring_sqe_set_data64(sqe, UInt64(index))
    slot.step = .writing
}

// MARK: - 5. The copy loop
//
// One turn of the loop:
//   1. every idle slot takes the next block nobody has taken, and queues its read;
//   2. io_uring_submit_and_wait(ring, 1): ONE io_uring_enter(2) that submits the new SQEs and
//      waits until at least one CQE is there;
//   3. reap ONE CQE and move its slot on: a read's CQE queues the write of what was read (or
//      a read of the rest, if it was short); a write's CQE queues the rest (if it was short)
//      or frees the slot for the next block.
// The follow-up SQE goes out at the next turn's submit, before the next CQE is reaped, so a
// slot never waits for the others.
//
// "In flight" here means submitted and not yet reaped: from the submit until we have seen the
// CQE, the buffer is the kernel's. That count is the loop's own bookkeeping, true by
// construction: the first submit puts eight reads in flight, and each turn replaces the
// request it reaped with at most one new one. It says nothing about what the kernel did.
//
// What the kernel did is measured, with io_uring_cq_ready(ring): just before each reap, the
// number of CQEs already waiting in the CQ (it reads the CQ's tail and head, no system call).
// The requests in flight minus those are the ones still without a CQE: the kernel has not
// finished them yet. A reap that finds some proves real overlap: the program handles one
// completion while the kernel is still working on other requests of ours. On Linux 6.18 and
// ext4 the reads of a file in the page cache complete during the submit itself, and the writes
// go to an io-wq worker thread (section 4), which the loop does not wait for.
//
// A negative res stops the copy: no new blocks, no follow-ups, but the loop goes on until
// every request in flight has completed (those may fail too). Only then may the buffers be
// freed and the program end with the error. A block read after that is not written, and a
// block whose write was short does not get its rest written: the printout says so.

var nextBlock = 0
var nextOffset: UInt64 = 0            // the first byte no block has taken yet
var plannedEnd = sourceSize           // blocks are handed out up to here
var endOfFile: UInt64? = nil          // where a read returned 0
var firstError: String? = nil

var readsInFlight = 0, writesInFlight = 0
var peakInFlight = 0                  // the loop's own count: submitted, not yet reaped
var firstReap: (waiting: Int, inFlight: Int)? = nil  // measured: CQEs waiting at the first reap
var reapsWithUnfinished = 0           // measured: reaps that found requests still without a CQE
var mostUnfinished = 0                // measured: the most requests without a CQE at one reap
var cqesReaped = 0
var reads = 0, shortReads = 0, readsAtEOF = 0
var writes = 0, shortWrites = 0
var bytesCopied: UInt64 = 0           // bytes of blocks written whole
var bytesWritten: UInt64 = 0          // every write's res added up, unfinished blocks included

// The printout keeps the first two blocks and the last two, whatever order they finish in,
// and every notable block: one that got a short or failed result, or that the copy left
// unfinished because it had stopped (after an error, every block in flight is one of those).
var shownBlocks: [Int: String] = [:]
var notableBlocks: Set<Int> = []

/// The slot's block is done: file its results for the printout, and make the slot idle.
func finishBlock(_ slot: inout Slot, _ shown: inout [Int: String], _ notable: inout Set<Int>) {
    shown[slot.block] = "block \(slot.block) at offset \(slot.offset): " + slot.results.joined(separator: ", ")
    if slot.notable { notable.insert(slot.block) }
    // Blocks 0 and 1 stay, and the notable ones; any other block goes once two higher ones
    // have finished, so the two highest stay.
    let keys = shown.keys.sorted()
    for (rank, block) in keys.enumerated() where block >= 2 && !notable.contains(block) && rank < keys.count - 2 {
        shown[block] = nil
    }
    slot.step = .idle
}

while true {
    // 1. Hand out blocks to idle slots.
    for index in slots.indices where slots[index].step == .idle {
        guard firstError == nil, endOfFile == nil, nextOffset < plannedEnd else { break }
        let length = Int(min(UInt64(blockSize), plannedEnd - nextOffset))
        slots[index].block = nextBlock
        slots[index].offset = nextOffset
        slots[index].length = length
        slots[index].have = 0
        slots[index].written = 0
        slots[index].results = []
        slots[index].notable = false
        queueRead(ring, &slots[index], index: index, fd: sourceFD)
        readsInFlight += 1
        nextBlock += 1
        nextOffset += UInt64(length)
    }

    if readsInFlight + writesInFlight == 0 {
        // Nothing in flight and nothing queued: done, unless no read has returned 0 yet. Then
        // every planned block is copied and we look past the planned end, one block more.
        if firstError != nil || endOfFile != nil { break }
        plannedEnd = nextOffset + UInt64(blockSize)
        continue
    }

    // 2. Submit what the slots queued, and wait for a completion.
    let queued = Int(io_uring_sq_ready(ring))
    let submitted = io_uring_submit_and_wait(ring, 1)
    guard submitted == queued else {
        fail("io_uring_submit_and_wait returned \(describe(res: submitted)), expected \(queued)")
    }
    let inFlight = readsInFlight + writesInFlight
    peakInFlight = max(peakInFlight, inFlight)

    // Measured: how many CQEs are already waiting (at least the one the wait asked for), and so
    // how many of our requests the kernel has not finished yet.
    let waiting = Int(io_uring_cq_ready(ring))
    let unfinished = inFlight - waiting
    if firstReap == nil { firstReap = (waiting, inFlight) }
    if unfinished > 0 { reapsWithUnfinished += 1 }
    mostUnfinished = max(mostUnfinished, unfinished)

    // 3. Reap one CQE (the wait above made sure there is one, so this does not enter the
    // kernel) and copy it out before handing its slot back.
    var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
    let waited = io_uring_wait_cqe(ring, &cqePointer)
    guard waited == 0, let cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: waited))") }
    let cqe = cqePointer.pointee
    io_uring_cqe_seen(ring, cqePointer)
    cqesReaped += 1

    guard cqe.user_data < UInt64(slots.count) else { fail("a CQE with unknown user_data: \(format(cqe))") }
    let index = Int(cqe.user_data)
    let res = cqe.res

    switch slots[index].step {
    case .reading:
        readsInFlight -= 1
        reads += 1
        let asked = slots[index].length - slots[index].have
        let at = slots[index].offset + UInt64(slots[index].have)
        if res < 0 {
            slots[index].results.append("read res=\(describe(res: res))")
            slots[index].notable = true
            if firstError == nil {
                firstError = "read of \(asked) bytes at offset \(at) of SRC completed with res=\(describe(res: res))"
            }
            finishBlock(&slots[index], &shownBlocks, &notableBlocks)
            continue
        }
        if res == 0 {
            // End of file, at `at`. This block holds what it has, and no block starts later.
            slots[index].results.append("read res=0 (end of file)")
            readsAtEOF += 1
            endOfFile = min(endOfFile ?? at, at)
            slots[index].length = slots[index].have
        } else {
            slots[index].have += Int(res)
            if slots[index].have < slots[index].length {
                // A short read: fewer bytes than asked, and not the end (that is res 0).
                // Ask again for the rest, into the rest of the same buffer.
                slots[index].results.append("read res=\(res) (short, of \(asked))")
                slots[index].notable = true
                shortReads += 1
                queueRead(ring, &slots[index], index: index, fd: sourceFD)
                readsInFlight += 1
                continue
            }
            slots[index].results.append("read res=\(res)")
        }
        if slots[index].have > 0 && firstError == nil {
            queueWrite(ring, &slots[index], index: index, fd: copyFD)
            writesInFlight += 1
        } else {
            if slots[index].have > 0 {
                // Read, but the copy stopped (an error came in) before its write was queued.
                slots[index].results.append("not written (the copy had stopped)")
                slots[index].notable = true
            }
            finishBlock(&slots[index], &shownBlocks, &notableBlocks)
        }

    case .writing:
        writesInFlight -= 1
        writes += 1
        let asked = slots[index].have - slots[index].written
        let at = slots[index].offset + UInt64(slots[index].written)
        if res <= 0 {
            // A write of at least one byte that writes nothing would loop forever; -errno is
            // the usual answer (-ENOSPC: the disk is full, -EFBIG: a file size limit).
            slots[index].results.append("write res=\(describe(res: res))")
            slots[index].notable = true
            if firstError == nil {
                firstError = "write of \(asked) bytes at offset \(at) of DST completed with res=\(describe(res: res))"
            }
            finishBlock(&slots[index], &shownBlocks, &notableBlocks)
            continue
        }
        slots[index].written += Int(res)
        bytesWritten += UInt64(res)
        if slots[index].written < slots[index].have {
            // A short write: on a regular file it means the disk just filled up, or a file
            // size limit was reached; the write of the rest says which (if the copy has not
            // stopped by then).
            slots[index].results.append("write res=\(res) (short, of \(asked))")
            slots[index].notable = true
            shortWrites += 1
            if firstError == nil {
                queueWrite(ring, &slots[index], index: index, fd: copyFD)
                writesInFlight += 1
            } else {
                slots[index].results.append("rest not written (the copy had stopped)")
                finishBlock(&slots[index], &shownBlocks, &notableBlocks)
            }
            continue
        }
        slots[index].results.append("write res=\(res)")
        bytesCopied += UInt64(slots[index].have)
        finishBlock(&slots[index], &shownBlocks, &notableBlocks)

    case .idle:
        fail("a CQE for slot \(index), which had no request in flight: \(format(cqe))")
    }
}

// Every request has completed: the kernel is done with the buffers, and with the fds.
for slot in slots { slot.buffer.deallocate() }
close(sourceFD)
close(copyFD)
destroyRing(ring)

// MARK: - 6. What the kernel answered
//
// The first and last blocks with the res of every CQE they got (a block that needed a second
// read or write shows both), and every block with a short or failed result, then the totals.
// After an error too: then every block the copy had taken is shown, each with its -errno or
// `not written`, and the error line, for the failure reaped first, follows the totals.
// (Which failure is reaped first can vary: with `ulimit -f`, the write of the next block,
// queued before the rest of the short one, usually fails first; the prose shows both.)

var previous = -1
for block in shownBlocks.keys.sorted() {
    if block > previous + 1 { print("... \(plural(block - previous - 1, "more block"))") }
    print(shownBlocks[block] ?? "")
    previous = block
}
print("requests: \(plural(reads, "read")) (\(shortReads) short, \(readsAtEOF) at end of file), "
    + "\(plural(writes, "write")) (\(shortWrites) short)")
print("in flight at peak: \(plural(peakInFlight, "request")) (queue depth \(queueDepth); the loop's own count)")
print("measured with io_uring_cq_ready before each of the \(cqesReaped) reaps:")
if let firstReap {
    print("  first reap: \(plural(firstReap.waiting, "CQE")) waiting, of \(plural(firstReap.inFlight, "request")) in flight")
}
print("  reaps that found requests still without a CQE: \(reapsWithUnfinished), at most \(mostUnfinished) at once")
if bytesWritten == bytesCopied {
    print("copied: \(bytesCopied) bytes")
} else {
    // After an error: the blocks written whole, and all that the writes put in DST, which
    // includes the part of a block whose write was short.
    print("copied: \(bytesCopied) bytes in whole blocks; written: \(bytesWritten) bytes in all")
}
if let firstError { fail(firstError) }

// MARK: - 7. Checking the copy
//
// Trust, but verify: both files are read again from the start, with plain read(2) outside the
// ring, until read returns 0, each through a CRC-32 (the checksum of zlib, gzip and PNG). The
// copy is good if both have the same size and the same CRC-32. (A CRC-32 tells two different
// files apart except with a chance of one in four billion; `cmp SRC DST` settles it for sure.)

/// CRC-32 (IEEE 802.3, bits reflected, polynomial 0xEDB88320). The table holds the CRC of each
/// byte value, so each byte of input costs one lookup, a shift and an xor.
struct CRC32 {
    private let table: [UInt32] = (0..<256).map { byte in
        var crc = UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 == 1 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
        return crc
    }
    private var crc: UInt32 = 0xFFFF_FFFF
    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int(UInt8(truncatingIfNeeded: crc) ^ byte)] ^ (crc >> 8) }
        }
    }
    var value: UInt32 { crc ^ 0xFFFF_FFFF }
}

/// The size and CRC-32 of the file at `path`, read to the end with read(2).
func readBack(_ path: String, _ name: String) -> (size: UInt64, crc: UInt32) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { fail("cannot open \(name) \(path) to check it: \(describe(res: -errno))") }
    defer { close(fd) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)
    defer { buffer.deallocate() }
    var crc = CRC32()
    var size: UInt64 = 0
    while true {
        let count = read(fd, buffer.baseAddress, buffer.count)
        if count < 0 && errno == EINTR { continue }
        guard count >= 0 else { fail("cannot read \(name) \(path) to check it: \(describe(res: -errno))") }
        if count == 0 { break }
        crc.update(UnsafeRawBufferPointer(rebasing: buffer.prefix(count)))
        size += UInt64(count)
    }
    return (size, crc.value)
}

func hex(_ crc: UInt32) -> String {
    let digits = String(crc, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - digits.count) + digits
}

print("read back with read(2):")
let source = readBack(sourcePath, "SRC")
let copy = readBack(copyPath, "DST")
print("  source: \(source.size) bytes, CRC-32 \(hex(source.crc))")
print("  copy:   \(copy.size) bytes, CRC-32 \(hex(copy.crc))")
let identical = source.size == copy.size && source.crc == copy.crc
print("identical: \(identical ? "yes" : "no")")
if !identical {
    fail("the copy differs from SRC (SRC changed during the copy, or a write went wrong): "
        + "SRC \(source.size) bytes CRC-32 \(hex(source.crc)), DST \(copy.size) bytes CRC-32 \(hex(copy.crc))")
}
