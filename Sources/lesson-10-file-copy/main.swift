// Lesson 10: copying a file with many requests in flight
//
// Until now every lesson waited for each request, or each batch, before deciding on the next.
// A copy is where that stops: `cp` reads a block and writes it, over and over, and with a ring
// nothing makes the blocks take turns. This lesson keeps up to eight requests in flight (the
// *queue depth*), in the design of liburing's examples/io_uring-cp.c: a record for each request
// in flight, named by its user_data. The records are eight *slots*, each owning a 128 KiB
// buffer and copying one block at a time: a read at the block's offset, a write of what was
// read to the same offset of the copy, then the next block. Explicit offsets make the blocks
// independent, so their requests may complete in any order.
//
// The bookkeeping is the lesson: which request a CQE answers (user_data names the slot), what
// to do when a read or write moves fewer bytes than asked (ask again for the rest), where the
// file ends (a read that returns 0), and never to reuse a buffer the kernel may still touch.
//
// Read next: man 3 io_uring_prep_read, man 3 io_uring_prep_write, man 3 io_uring_submit_and_wait,
// man 3 io_uring_peek_cqe, man 3 io_uring_cq_ready; liburing's examples/io_uring-cp.c.

import Glibc
import CLiburing
import LabSupport

let usage = "lesson-10-file-copy [SRC DST]   (without arguments it copies a generated file between temp paths)"
let arguments = lessonArguments(usage: usage, max: 2)
if arguments.count == 1 { fail("give both SRC and DST, or neither (usage: \(usage))") }

let queueDepth = 8       // requests in flight at most: one per slot
let blockSize = 131072   // bytes per block, and per buffer: 1 MiB in flight

// MARK: - 1. A ring as deep as the queue
//
// Each slot has at most one request in flight and at most one SQE waiting to be submitted, so
// a ring of 8 entries never runs out of SQEs, and its CQ (16) has room for every completion.
// IORING_OP_READ and IORING_OP_WRITE are Linux 5.6; we probe for them.

let ring = makeRing(entries: UInt32(queueDepth))
requireOpcodes(ring, IORING_OP_READ, IORING_OP_WRITE)

// MARK: - 2. The files
//
// Without arguments SRC is 1 MiB and 100 bytes (8 full blocks and one of 100), no two blocks
// alike. Opening is not this lesson's subject (lesson 04 opened through the ring): open(2),
// after stat(2) has refused what open would get wrong: a SRC that is not a regular file (a FIFO
// would make open wait for a writer), a DST that is not one or is a dangling symbolic link
// (O_CREAT would create the file it names). fstat(2) of the open files refuses "the same file",
// by (device, inode), never by name. Only then is DST emptied, if it has bytes: on ext4, a file
// truncated to 0 has its close write out all written since (1 GiB: 0.3 s; C test, Linux 6.18).

let generated = arguments.isEmpty ? (0..<1_048_676).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 16) } : []
let sourcePath = arguments.first ?? makeTempFile(named: "source.bin", contents: generated)  // removed at exit
let copyPath = arguments.count == 2 ? arguments[1] : makeTempDir("lesson-10") + "/copy.bin"
print("source: \(sourcePath)")
print("copy:   \(copyPath)")

/// Close `fds`, then exit 1 with one `error:` line.
func refuse(_ message: String, closing fds: Int32...) -> Never {
    for fd in fds { close(fd) }
    fail(message)
}

/// What stat(2) says a path is, in words; nil for a regular file.
func kind(_ info: stat) -> String? {
    let kinds: [mode_t: String] = [S_IFDIR: "a directory", S_IFCHR: "a character device", S_IFBLK: "a block device",
                                   S_IFIFO: "a FIFO"]
    return info.st_mode & S_IFMT == S_IFREG ? nil : kinds[info.st_mode & S_IFMT, default: "not a regular file"]
}

/// "1 block", "2 blocks": the count and the noun, in the plural unless the count is 1.
func plural(_ count: Int, _ noun: String) -> String { "\(count) \(noun)" + (count == 1 ? "" : "s") }

var sourceInfo = stat(), copyInfo = stat()
guard stat(sourcePath, &sourceInfo) == 0 else { fail("cannot read SRC \(sourcePath): \(describe(res: -errno))") }
if let kind = kind(sourceInfo) { fail("cannot copy SRC \(sourcePath): it is \(kind)") }
if stat(copyPath, &copyInfo) == 0, let kind = kind(copyInfo) { fail("cannot copy to DST \(copyPath): it is \(kind)") }
if stat(copyPath, &copyInfo) != 0 && lstat(copyPath, &copyInfo) == 0 {
    fail("cannot copy to DST \(copyPath): not writing through dangling symlink")
}
let sourceFD = open(sourcePath, O_RDONLY | O_CLOEXEC)
guard sourceFD >= 0 else { fail("cannot open SRC \(sourcePath): \(describe(res: -errno))") }
let copyFD = open(copyPath, O_WRONLY | O_CREAT | O_CLOEXEC, sourceInfo.st_mode & 0o777)  // a new DST: SRC's mode
guard copyFD >= 0 else { refuse("cannot open DST \(copyPath) for writing: \(describe(res: -errno))", closing: sourceFD) }
guard fstat(sourceFD, &sourceInfo) == 0, fstat(copyFD, &copyInfo) == 0 else {
    refuse("fstat failed: \(describe(res: -errno))", closing: sourceFD, copyFD)
}
if sourceInfo.st_dev == copyInfo.st_dev && sourceInfo.st_ino == copyInfo.st_ino {
    refuse("SRC \(sourcePath) and DST \(copyPath) are the same file (inode \(copyInfo.st_ino)): nothing copied",
           closing: sourceFD, copyFD)
}
guard copyInfo.st_size == 0 || ftruncate(copyFD, 0) == 0 else {
    refuse("cannot truncate DST \(copyPath): \(describe(res: -errno))", closing: sourceFD, copyFD)
}

// fstat's size is only the plan. The end of a file is where a read returns 0 (lesson 04), and a
// file can be longer than its size says (/proc's say 0) or change while we copy: so when every
// planned block is done, the loop reads once more past the end, and goes on if it finds more.
let sourceSize = UInt64(sourceInfo.st_size)
let plannedBlocks = Int((sourceSize + UInt64(blockSize) - 1) / UInt64(blockSize))
print("plan: \(sourceSize) bytes (fstat) in \(plural(plannedBlocks, "block")) of at most \(blockSize) bytes, "
    + "queue depth \(queueDepth)")

// MARK: - 3. Slots: the record of each request in flight
//
// A slot has at most ONE request in flight: it reads until its buffer holds the whole block,
// then writes until all of it is in the copy, and only then takes the next block into the same
// buffer. That is the lab's buffer rule made concrete: the kernel fills the buffer during the
// read and copies out of it during the write, maybe on a worker thread after the submit has
// returned (on ext4, Linux 6.18, every buffered write goes to an io-wq worker), so a buffer is
// reused only after the CQE of the last request that used it. The slot's index is the SQE's
// user_data, and the slot knows what it asked (read or write, how much, where).

struct Slot {  // its buffer: the index-th blockSize bytes of `buffers`, the slot's for the whole run
    enum Step { case idle, reading, writing }
    var step = Step.idle
    var block = 0, offset: UInt64 = 0    // the block's number, and where it starts in SRC and DST
    var length = 0                       // the bytes the block holds
    var done = 0                         // bytes read so far; once it is read, bytes written so far
    var results: [String] = []           // every CQE's res for this block, for the printout
    var notable = false                  // short, failed or left unfinished: always printed
}
let buffers = UnsafeMutableRawPointer.allocate(byteCount: queueDepth * blockSize, alignment: 4096)
var slots = [Slot](repeating: Slot(), count: queueDepth)

/// io_uring-cp.c's queue_prepped: an SQE for the rest of the slot's step, `length - done`
/// bytes at `offset + done`, read from SRC into the buffer after the `done` bytes already
/// there, or written to DST out of it. The first request of a step asks for the whole block.
@MainActor func queue(_ index: Int) {
    let slot = slots[index], sqe = getSQE(ring)  // an SQE for every slot (section 1): never nil
    let buffer = buffers + index * blockSize + slot.done
    let (count, at) = (UInt32(slot.length - slot.done), slot.offset + UInt64(slot.done))
    if slot.step == .reading {
        io_uring_prep_read(sqe, sourceFD, buffer, count, at)
    } else {
        io_uring_prep_write(sqe, copyFD, buffer, count, at)
    }
    io_uring_sqe_set_data64(sqe, UInt64(index))
}

// MARK: - 4. The copy loop
//
// One turn: (1) every idle slot takes the next block and queues its read; (2)
// io_uring_submit_and_wait(ring, 1), ONE io_uring_enter(2) that submits every SQE queued and
// waits for at least one CQE; (3) every CQE that is ready is reaped (io_uring_peek_cqe until
// there is none: no system call) and moves its slot on: to the write of what was read, the
// rest of a short read or write, or, once the block is written, idle. New SQEs go out at (2).
//
// "In flight" means submitted and not yet reaped, while the buffer is the kernel's: the loop's
// own count, true by construction. What the kernel did is measured: io_uring_cq_ready(ring)
// before each reap reads how many CQEs wait in the CQ (its head and tail, no system call). The
// requests in flight minus those are the ones the kernel has not finished: a reap that finds
// some is real overlap, the program at work while the kernel still works on requests of ours.
//
// A failure (a negative res, or a write that wrote nothing and would loop forever) stops the
// copy: no new blocks, no new requests, but the loop goes on until every request in flight
// has completed (those may fail too). Only then may the buffers be freed.

var nextBlock = 0, nextOffset: UInt64 = 0  // the first block, and byte, no slot has taken yet
var plannedEnd = sourceSize                // blocks are handed out up to here
var endOfFile = false, firstError: String? = nil  // a read returned 0; the failure reaped first
var inFlight = 0, peakInFlight = 0, turns = 0, reaps = 0
var firstReap: (waiting: Int, inFlight: Int)? = nil  // measured: CQEs waiting at the first reap
var reapsWithUnfinished = 0, mostUnfinished = 0      // measured: requests still without a CQE
var reads = 0, shortReads = 0, readsAtEOF = 0, writes = 0, shortWrites = 0
var bytesCopied: UInt64 = 0, bytesWritten: UInt64 = 0  // in blocks written whole; by every write
var shown: [Int: (line: String, notable: Bool)] = [:]  // finished blocks that may be printed

/// Note a result for the slot's block (`notable`: always printed).
@MainActor func note(_ index: Int, _ result: String, notable: Bool = false) {
    slots[index].results.append(result)
    if notable { slots[index].notable = true }
}

/// The slot's block is done: keep its line if it may be printed (blocks 0 and 1, notable ones,
/// and what may still be one of the last two: nextBlock only grows), and make the slot idle.
@MainActor func finish(_ index: Int) {
    let slot = slots[index]
    if slot.block < 2 || slot.notable || slot.block >= nextBlock - 2 {
        shown[slot.block] = ("block \(slot.block) at offset \(slot.offset): " + slot.results.joined(separator: ", "),
                             slot.notable)
    }
    slots[index].step = .idle
}

let clock = ContinuousClock(), started = clock.now
while true {
    for index in slots.indices where slots[index].step == .idle && firstError == nil && !endOfFile
        && nextOffset < plannedEnd {
        let length = Int(min(UInt64(blockSize), plannedEnd - nextOffset))
        slots[index] = Slot(step: .reading, block: nextBlock, offset: nextOffset, length: length)
        queue(index)
        nextBlock += 1
        nextOffset += UInt64(length)
    }
    let queued = Int(io_uring_sq_ready(ring))
    if inFlight + queued == 0 {
        // Nothing in flight, nothing queued: done, unless no read has returned 0 yet. Then
        // every planned block is copied and we look past the planned end, one block more.
        if firstError != nil || endOfFile { break }
        plannedEnd = nextOffset + UInt64(blockSize)
        continue
    }
    let submitted = io_uring_submit_and_wait(ring, 1)
    guard submitted == queued else {
        refuse("io_uring_submit_and_wait returned \(describe(res: submitted)), expected \(queued)", closing: sourceFD, copyFD)
    }
    turns += 1
    inFlight += queued
    peakInFlight = max(peakInFlight, inFlight)

    var cqePointer: UnsafeMutablePointer<io_uring_cqe>? = nil
    while io_uring_peek_cqe(ring, &cqePointer) == 0, let pointer = cqePointer {
        let waiting = Int(io_uring_cq_ready(ring)), unfinished = inFlight - waiting  // measured
        if firstReap == nil { firstReap = (waiting, inFlight) }
        if unfinished > 0 { reapsWithUnfinished += 1 }
        mostUnfinished = max(mostUnfinished, unfinished)
        let cqe = pointer.pointee  // copied out before the CQ slot goes back to the kernel
        io_uring_cqe_seen(ring, pointer)
        inFlight -= 1
        reaps += 1

        guard cqe.user_data < UInt64(queueDepth), slots[Int(cqe.user_data)].step != .idle else {
            refuse("a CQE that answers no request in flight: \(format(cqe))", closing: sourceFD, copyFD)
        }
        let index = Int(cqe.user_data), res = cqe.res, reading = slots[index].step == .reading
        let what = reading ? "read" : "write", asked = slots[index].length - slots[index].done
        if reading { reads += 1 } else { writes += 1 }
        if res < 0 || (res == 0 && !reading) {
            note(index, "\(what) res=\(describe(res: res))", notable: true)
            firstError = firstError ?? "\(what) of \(asked) bytes at offset \(slots[index].offset + UInt64(slots[index].done)) "
                + "of \(reading ? "SRC" : "DST") completed with res=\(describe(res: res))"
            finish(index)
            continue
        }
        slots[index].done += Int(res)
        if !reading { bytesWritten += UInt64(res) }
        if res == 0 {
            // End of file: the block holds what it has, and no block starts later.
            note(index, "read res=0 (end of file)")
            readsAtEOF += 1
            endOfFile = true
            slots[index].length = slots[index].done
        } else if res < asked {
            // Short: fewer bytes than asked (at the end of a file that shrank, anywhere in
            // /proc; a write at a full disk or a file size limit). The rest is asked for below.
            note(index, "\(what) res=\(res) (short, of \(asked))", notable: true)
            if reading { shortReads += 1 } else { shortWrites += 1 }
        } else {
            note(index, "\(what) res=\(res)")
        }
        // Next: the rest of this step, or the write of the block just read; or the block is done.
        let restOfStep = slots[index].done < slots[index].length
        if !restOfStep && (!reading || slots[index].length == 0) {
            if !reading { bytesCopied += UInt64(slots[index].length) }
        } else if firstError != nil {
            let unasked = restOfStep ? "rest not \(reading ? "read" : "written")" : "not written"
            note(index, unasked + " (the copy had stopped)", notable: true)
        } else {
            if !restOfStep { (slots[index].step, slots[index].done) = (.writing, 0) }
            queue(index)
            continue
        }
        finish(index)
    }
}

// Every request has completed: the kernel is done with the buffers, and with the fds.
buffers.deallocate()
close(sourceFD)
close(copyFD)
let elapsed = clock.now - started
destroyRing(ring)

// MARK: - 5. What the kernel answered
//
// The first and last two blocks with every CQE's res, every short, failed or unfinished block,
// the totals. After a failure the error line names the one reaped first (kernels differ: prose).

var previous = -1
for (block, entry) in shown.sorted(by: { $0.key < $1.key }) where block < 2 || entry.notable || block >= nextBlock - 2 {
    if block > previous + 1 { print("... \(plural(block - previous - 1, "more block"))") }
    print(entry.line)
    previous = block
}
print("requests: \(plural(reads, "read")) (\(shortReads) short, \(readsAtEOF) at end of file), "
    + "\(plural(writes, "write")) (\(shortWrites) short)")
print("in flight at peak: \(plural(peakInFlight, "request")) (queue depth \(queueDepth); the loop's own count)")
print("measured with io_uring_cq_ready before each of the \(reaps) reaps:")
if let firstReap {
    print("  first reap: \(plural(firstReap.waiting, "CQE")) waiting, of \(plural(firstReap.inFlight, "request")) in flight")
}
print("  reaps that found requests still without a CQE: \(reapsWithUnfinished), at most \(mostUnfinished) at once")
print("turns: \(turns), each one io_uring_submit_and_wait (one io_uring_enter), then every CQE ready")

/// `duration` in milliseconds, to a hundredth.
func milliseconds(_ duration: Duration) -> Double {
    (Double(duration.components.seconds) * 100_000 + Double(duration.components.attoseconds) / 1e13).rounded() / 100
}
let megabytesPerSecond = (Double(bytesWritten) / max(milliseconds(elapsed), 0.01) / 100).rounded() / 10
print("time: \(milliseconds(elapsed)) ms from the first submit to the close of DST, \(megabytesPerSecond) MB/s")
// After a failure DST may also hold the part of a block whose write was short.
print("copied: \(bytesCopied) bytes"
    + (bytesWritten == bytesCopied ? "" : " in whole blocks; written: \(bytesWritten) bytes in all"))
if let firstError { fail(firstError) }

// MARK: - 6. Reading the copy of the generated file back
//
// Trust, but verify: DST is read again with fread(3) (plain read(2) calls, outside the ring)
// to its end, and compared with the bytes we generated. That is a second pass over the whole
// file, timed on its own, so `cp SRC DST` leaves it to `cmp SRC DST`.

if arguments.isEmpty {
    let checkStarted = clock.now
    guard let file = fopen(copyPath, "re") else { fail("cannot open DST \(copyPath): \(describe(res: -errno))") }
    var back = [UInt8](repeating: 0, count: generated.count + 1)  // one byte more: is DST longer?
    let size = fread(&back, 1, back.count, file)  // fewer bytes on a read error: not identical
    fclose(file)
    let identical = size == generated.count && memcmp(back, generated, size) == 0
    print("read back with fread: \(size) bytes in \(milliseconds(clock.now - checkStarted)) ms")
    print("identical: \(identical ? "yes" : "no")")
    if !identical { fail("DST read back (\(size) bytes) differs from the \(generated.count) bytes generated for SRC") }
}
