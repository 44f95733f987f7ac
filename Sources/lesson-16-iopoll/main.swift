// Lesson 16: IOPOLL, completions found by polling the device
//
// Normally a disk tells the kernel that a request is done by raising an interrupt, and the
// kernel posts the CQE. With IORING_SETUP_IOPOLL nothing raises an interrupt: the request goes
// to one of the device's *poll queues*, and its completion is found only when someone looks.
// That someone is us: io_uring_enter with IORING_ENTER_GETEVENTS (io_uring_wait_cqe) spins on
// the device's completion queue until the request is done. That saves the interrupt and the
// wake-up of the waiting thread per I/O, at the price of a CPU spinning: "lower latency, but
// may consume more CPU resources than interrupt driven I/O" (man 2 io_uring_setup).
//
// It has three conditions, and this lesson checks each on the machine it runs on:
//   - only O_DIRECT reads and writes can be polled: a buffered fd gives -EOPNOTSUPP;
//   - O_DIRECT has alignment rules: buffer, offset and length aligned as the file says;
//   - the block device must have poll queues: /sys/block/<disk>/queue/io_poll reads 1.
// Then it makes the O_DIRECT read on an IOPOLL ring and says honestly what happened: either a
// polled read and its bytes, or the -EOPNOTSUPP that a device without poll queues gives (since
// Linux 6.11; older kernels serve that read through an ordinary queue, unpolled).
//
// Usage: lesson-16-iopoll [FILE]   (a file, or a block device, to read with O_DIRECT; without
// an argument, a temp file in $TMPDIR)
//
// Read next: man 2 io_uring_setup (IORING_SETUP_IOPOLL), man 2 open (O_DIRECT), man 2 statx
// (STATX_DIOALIGN), man 3 io_uring_prep_read, man 3 io_uring_wait_cqe.

import Glibc
import CLiburing
import LabSupport

let usage = "lesson-16-iopoll [FILE]   (FILE: a file or block device to read with O_DIRECT; "
    + "default: a temp file in $TMPDIR)"
let arguments = lessonArguments(usage: usage, max: 1)

// glibc defines O_DIRECT only under _GNU_SOURCE, which the CLiburing shim keeps off; its
// internal name __O_DIRECT is always there, with this architecture's value (0o40000 on x86-64).
let O_DIRECT = __O_DIRECT
let readSize = 4096  // bytes per read: a multiple of every logical block size (512 or 4096)

// MARK: - 1. The file
//
// Without an argument: 8 KiB of text in a new temp file, written with plain write(2) and so
// still in the page cache. An O_DIRECT read bypasses the page cache: the kernel first writes
// the dirty pages of that range to the disk, then the device copies the data straight into our
// buffer (DMA). With an argument: that file, read only.

let path: String
if let given = arguments.first {
    path = given
    print("file: \(path)")
} else {
    let line = Array("lesson 16: read with O_DIRECT, straight from the disk\n".utf8)
    let contents = Array((0..<8192).map { line[$0 % line.count] })
    path = makeTempFile(named: "direct.bin", contents: contents)  // removed at exit
    print("file: \(path) (\(contents.count) bytes written with write(2))")
}

// A plain ring (no IOPOLL) for statx and the O_DIRECT reads of section 4. IORING_OP_STATX and
// IORING_OP_READ are Linux 5.6.
let ring = makeRing(entries: 4)
requireOpcodes(ring, IORING_OP_STATX, IORING_OP_READ)

// MARK: - 2. What is this file, and where does it live?
//
// statx (lesson 12 sent it through the ring too) answers both, and with STATX_DIOALIGN
// (Linux 6.1) it also gives O_DIRECT's alignment rules for this very file: stx_dio_mem_align
// for the buffer's address, stx_dio_offset_align for the file offset and the length. The path
// and the statx buffer are read and written by the kernel, so they stay allocated until the
// CQE has arrived.

let statxBuffer = UnsafeMutablePointer<statx>.allocate(capacity: 1)
statxBuffer.initialize(to: statx())
guard let cPath = strdup(path) else { fail("out of memory") }
let statxSQE = getSQE(ring)
io_uring_prep_statx(statxSQE, AT_FDCWD, cPath, 0,
                    UInt32(STATX_TYPE | STATX_SIZE | STATX_DIOALIGN), statxBuffer)
io_uring_sqe_set_data64(statxSQE, 1)
checkSubmit(io_uring_submit(ring), 1)
let statxCQE = waitCQE(ring)
free(cPath)
let info = statxBuffer.pointee
statxBuffer.deallocate()
guard statxCQE.res == 0 else { fail("cannot statx \(path): \(describe(res: statxCQE.res))") }
printCQE(statxCQE, "statx through the ring")

// The device a regular file lives on is stx_dev_major:stx_dev_minor; a block device *is* the
// device stx_rdev_major:stx_rdev_minor. Anything else cannot be read with O_DIRECT here.
let device: (major: UInt32, minor: UInt32)
switch mode_t(info.stx_mode) & S_IFMT {
case S_IFREG:
    device = (info.stx_dev_major, info.stx_dev_minor)
    print("a regular file of \(info.stx_size) bytes on device \(device.major):\(device.minor)")
case S_IFBLK:
    device = (info.stx_rdev_major, info.stx_rdev_minor)
    print("a block device, \(device.major):\(device.minor)")
case S_IFDIR:
    fail("\(path) is a directory: give a regular file or a block device")
default:
    fail("\(path) is neither a regular file nor a block device")
}

// MARK: - 3. The block device and its poll queues
//
// /sys/dev/block/MAJOR:MINOR links to the device in sysfs. A partition (it has a `partition`
// file) sits inside its disk's directory, and the request queue belongs to the disk. Its
// queue/ directory says what we need:
//   io_poll             1 if the driver gave the disk poll queues, 0 if not: a polled read
//                       needs 1. Poll queues are made by the driver when it loads
//                       (nvme.poll_queues=N); writing to this file cannot create them.
//   io_poll_delay       -1: classic polling, spin until the request is done (fixed at -1
//                       since the block layer dropped hybrid polling; writes are ignored).
//   logical_block_size  the unit O_DIRECT offsets and lengths must be multiples of.
// A file on tmpfs, overlayfs, btrfs or a network filesystem has a device number with no such
// entry (an anonymous device, major 0 for most): then there is no disk whose queue we can read.
// Each of these files is one line, read with LabSupport's readLines.

var diskName: String? = nil
var ioPoll: String? = nil
if let linked = realpath("/sys/dev/block/\(device.major):\(device.minor)", nil) {
    var diskPath = String(cString: linked)
    free(linked)
    let name = diskPath.split(separator: "/").last.map(String.init) ?? "?"
    if access(diskPath + "/partition", F_OK) == 0 {
        diskPath = String(diskPath[..<(diskPath.lastIndex(of: "/") ?? diskPath.endIndex)])
    }
    let disk = diskPath.split(separator: "/").last.map(String.init) ?? "?"
    diskName = disk
    print("block device: \(device.major):\(device.minor) is \(name)"
        + (name == disk ? ", a whole disk" : ", a partition of \(disk)"))
    ioPoll = readLines(diskPath + "/queue/io_poll")?.first
    let meaning: String
    switch ioPoll {
    case "1": meaning = "\(disk) has poll queues: its completions can be polled"
    case "0": meaning = "\(disk) has no poll queues: nothing on it can complete by polling"
    default: meaning = "not readable"
    }
    print("io_poll: \(ioPoll ?? "?") (/sys/block/\(disk)/queue/io_poll): \(meaning)")
    print("io_poll_delay: \(readLines(diskPath + "/queue/io_poll_delay")?.first ?? "?")")
    print("logical_block_size: \(readLines(diskPath + "/queue/logical_block_size")?.first ?? "?")")
} else {
    print("block device: none: /sys/dev/block/\(device.major):\(device.minor) does not exist "
        + "(tmpfs, overlayfs, btrfs and network filesystems have no disk this lesson can find)")
    print("io_poll: unknown: no disk queue to read")
    print("io_poll_delay: unknown")
    print("logical_block_size: unknown")
}

// MARK: - 4. O_DIRECT and its alignment rules, on a ring without IOPOLL
//
// Opening with O_DIRECT is where a filesystem without direct I/O says no: open fails with
// EINVAL (tmpfs did before Linux 6.6). IOPOLL cannot work without O_DIRECT, so that is a skip.
//
// With O_DIRECT the device moves the data between the disk and our buffer itself, in whole
// logical blocks, so three things must be aligned (statx said to what; if it could not say,
// the disk's logical_block_size is the usual rule for all three):
//   the buffer's address   to stx_dio_mem_align
//   the file offset        to stx_dio_offset_align
//   the length             to stx_dio_offset_align
// A misaligned request is not an I/O error but a malformed one: -EINVAL in its CQE. We
// allocate the buffer page-aligned (4096), which satisfies every disk's memory rule, and as
// always it stays allocated until the last CQE that uses it has arrived.
//
// Every read from here on, on either ring, is one `readOnce`: io_uring_submit, then `waitCQE`
// (io_uring_wait_cqe, a copy of the CQE, io_uring_cqe_seen). On the IOPOLL ring of sections 5
// and 6, that io_uring_wait_cqe is where the polling happens.

if info.stx_mask & UInt32(STATX_DIOALIGN) != 0 {
    print("O_DIRECT alignment (statx STATX_DIOALIGN): buffer address \(info.stx_dio_mem_align), "
        + "file offset and length \(info.stx_dio_offset_align)"
        + (info.stx_dio_offset_align == 0 ? " (0: this file does not support O_DIRECT)" : ""))
} else {
    print("O_DIRECT alignment (statx STATX_DIOALIGN): not reported for this file "
        + "(Linux 6.1+, and only by filesystems that know their rule)")
}

let directFD = open(path, O_RDONLY | O_DIRECT)
if directFD < 0 {
    let error = errno
    if error == EINVAL {
        skip("open(\(path), O_RDONLY | O_DIRECT) failed with -EINVAL (-22): this filesystem refuses "
            + "O_DIRECT (tmpfs did before Linux 6.6), and IOPOLL works only with O_DIRECT. "
            + (arguments.isEmpty ? "Set TMPDIR to a directory on a disk, or give a FILE on one"
                                 : "Give a FILE on a disk filesystem (ext4, xfs) or a block device"))
    }
    fail("cannot open \(path) with O_DIRECT: \(describe(res: -error))")
}
let bufferFD = open(path, O_RDONLY)
guard bufferFD >= 0 else {
    let reason = describe(res: -errno)
    close(directFD)
    fail("cannot open \(path): \(reason)")
}

let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * readSize, alignment: 4096)
buffer.initializeMemory(as: UInt8.self, repeating: 0)
guard let base = buffer.baseAddress else { fail("cannot allocate the buffer") }

/// One read of `length` bytes at `offset` into `address`: submit it, wait for its CQE, return it.
func readOnce(_ ring: Ring, fd: Int32, into address: UnsafeMutableRawPointer, length: Int = readSize,
              offset: UInt64 = 0, userData: UInt64) -> io_uring_cqe {
    let sqe = getSQE(ring)  // one request at a time on a 4-entry ring: never full
    io_uring_prep_read(sqe, fd, address, UInt32(length), offset)
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)
    return waitCQE(ring)
}

print("O_DIRECT reads on a ring without IOPOLL:")
let tries: [(userData: UInt64, label: String, address: UnsafeMutableRawPointer, length: Int, offset: UInt64)] = [
    (11, "\(readSize) bytes at offset 0 into a page-aligned buffer", base, readSize, 0),
    (12, "\(readSize) bytes at offset 1", base, readSize, 1),
    (13, "\(readSize - 1) bytes at offset 0", base, readSize - 1, 0),
    (14, "\(readSize) bytes at offset 0 into a buffer 1 byte past a page", base + 1, readSize, 0),
]
for attempt in tries {
    let cqe = readOnce(ring, fd: directFD, into: attempt.address, length: attempt.length, offset: attempt.offset,
                       userData: attempt.userData)
    let bytes = cqe.res > 0 ? "  " + quoted(UnsafeRawBufferPointer(start: attempt.address, count: min(Int(cqe.res), 24))) + "..." : ""
    print("  \(attempt.label): " + format(cqe) + bytes)
}
destroyRing(ring)

// MARK: - 5. An IOPOLL ring refuses buffered I/O
//
// `IORING_SETUP_IOPOLL` at setup. From then on this ring takes only requests that can be
// polled: reads and writes on O_DIRECT fds (and a NOP). A buffered read would be served from
// the page cache, with no device request to poll for, so the kernel refuses it: the CQE says
// -EOPNOTSUPP. (Other opcodes, such as openat, fail with -EINVAL on an IOPOLL ring.)
//
// Reaping is different too. liburing knows it is an IOPOLL ring: io_uring_submit always
// enters with IORING_ENTER_GETEVENTS, and io_uring_wait_cqe, if no CQE is in the ring yet,
// calls io_uring_enter with GETEVENTS again, in which the kernel polls the device for
// completions. No interrupt will post the CQE for us. (Whether a CQE is already there when
// the submit returns depends on timing: see the lesson's prose on what strace shows.)

let pollRing = makeRing(entries: 4, flags: IORING_SETUP_IOPOLL)
print("IOPOLL ring: sq_entries=\(pollRing.pointee.sq.ring_entries) cq_entries=\(pollRing.pointee.cq.ring_entries)")

printCQE(readOnce(pollRing, fd: bufferFD, into: base, userData: 21), "buffered fd (no O_DIRECT) on the IOPOLL ring")

// MARK: - 6. The O_DIRECT read on the IOPOLL ring
//
// Everything is aligned now, so what remains is the device. The read becomes a request marked
// for polling (REQ_POLLED). A disk with poll queues takes it on one of them; it completes
// without an interrupt, and io_uring_wait_cqe's io_uring_enter finds it by spinning: res is the
// byte count. A disk without poll queues cannot do that, and since Linux 6.11 the block layer
// refuses the request: -EOPNOTSUPP (twice, in fact: io_uring retries the read on an io-wq
// worker first, and the worker hands the failure back to this thread; the prose traces it).
// Older kernels (Debian 12's 6.1) drop the polling mark instead and send the read to an
// ordinary queue: an interrupt completes it, res is the byte count, and nothing was polled.
// A file with no disk at all (tmpfs) has nothing to poll, and io_uring refuses the read
// itself, with the same -EOPNOTSUPP.
//
// We print the CQE and then say which of these happened, from the CQE and the io_poll setting
// read in section 3; a polled read is claimed only if bytes arrived from a disk with poll
// queues. The buffer is zeroed first, so that it shows what arrived whatever res says: on 6.1
// a read shorter than asked (a file under 4096 bytes) sometimes completes with res 0 although
// its bytes are in the buffer (the prose says why).

buffer.initializeMemory(as: UInt8.self, repeating: 0)
let polled = readOnce(pollRing, fd: directFD, into: base, userData: 22)
printCQE(polled, "O_DIRECT fd on the IOPOLL ring")
let disk = diskName ?? "this file's filesystem"
let fileSize = mode_t(info.stx_mode) & S_IFMT == S_IFREG ? Int(info.stx_size) : readSize  // a block device: full
let arrived = UnsafeRawBufferPointer(start: base, count: min(fileSize, readSize))
let unpolled = "no polled read happened: \(disk) has no poll queues (io_poll=0), so this kernel sent the read to "
    + "an ordinary queue and an interrupt completed it (Linux before 6.11)"
switch (polled.res, ioPoll) {
case (0, _) where fileSize == 0:
    print("result: 0 bytes: the file is empty, so no request reached the device and there was nothing to poll")
case (let res, "1") where res > 0:
    print("result: a polled read: \(res) bytes, found by io_uring_enter spinning on \(disk)'s poll queue, "
        + "with no interrupt: " + quoted(UnsafeRawBufferPointer(start: base, count: min(Int(res), 24))) + "...")
case (-EOPNOTSUPP, "0"):
    print("result: no polled read happened: \(disk) has no poll queues (io_poll=0), "
        + "so the kernel refused the polled request")
case (0, "0") where arrived.contains(where: { $0 != 0 }):
    print("result: \(unpolled): res 0, yet the buffer holds " + quoted(UnsafeRawBufferPointer(rebasing: arrived.prefix(24)))
        + "...: a short read done in two steps, of which the CQE counts only the second")
case (let res, "0") where res >= 0:
    print("result: \(unpolled): \(res) bytes")
case (-EOPNOTSUPP, nil) where diskName == nil:
    print("result: no polled read happened: the file is on no block device, so there is nothing to poll")
case (-EOPNOTSUPP, nil):
    print("result: no polled read happened, and \(disk)'s io_poll could not be read to say why")
case (-EOPNOTSUPP, _):
    print("result: no polled read happened, although \(disk) reports io_poll=\(ioPoll ?? "?"): "
        + "this filesystem does not support polled I/O")
case (let res, _) where res >= 0:
    print("result: the read returned \(res) bytes, but \(disk) reports io_poll=\(ioPoll ?? "unknown"): "
        + "this kernel completed it without polling the device")
default:
    print("result: the read failed: \(describe(res: polled.res))")
}

destroyRing(pollRing)
close(directFD)
close(bufferFD)
buffer.deallocate()
