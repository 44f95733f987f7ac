// Lesson 14: fixed buffers
//
// A read or write names its buffer by an address in our process, and the kernel has to reach
// that memory through our page tables on every request: a buffered read copies through them
// (faulting pages in as needed), and a direct read (on an fd opened with O_DIRECT, which
// bypasses the page cache: the device moves the data itself; lesson 16) looks up and pins each
// page for the length of the request, then unpins it. Registering buffers with
// `io_uring_register_buffers` does that work once: the kernel pins every page of each buffer
// and keeps them pinned until the buffers are unregistered. A request then uses
// IORING_OP_READ_FIXED or IORING_OP_WRITE_FIXED, names the buffer by its index (`buf_index`)
// and gives an address and length that must lie inside that buffer. If they do not, the
// request completes with -EFAULT: the first failure a learner meets with fixed buffers.
//
// Because the pages stay pinned, the memory must stay allocated as long as it is registered:
// the lab's buffer rule ("stable until the CQE") becomes "stable until unregistered".
//
// Read next: man 3 io_uring_register_buffers, man 3 io_uring_prep_read_fixed,
// man 3 io_uring_prep_write_fixed, man 2 io_uring_register (IORING_REGISTER_BUFFERS).

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-14-fixed-buffers", max: 0)

// MARK: - 1. A ring, a file, and two page-aligned buffers
//
// IORING_OP_READ_FIXED and IORING_OP_WRITE_FIXED are among the first opcodes (Linux 5.1), so
// there is nothing to probe. The file is a temp file, opened with plain open(2).
//
// The buffers: buffer 0 of one page, buffer 1 of two, page-aligned. The kernel pins whole
// pages; alignment is not required, but it makes VmPin easy to read (and O_DIRECT needs
// aligned buffers anyway). They are allocated by us, at addresses that will not move, and
// freed only after they are unregistered.

let ring = makeRing(entries: 8)

let path = makeTempFile(named: "fixed.txt", contents: [])
let fd = open(path, O_RDWR)
guard fd >= 0 else { fail("cannot open \(path): \(describe(res: -errno))") }

let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
let buffers = [
    UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: pageSize),
    UnsafeMutableRawBufferPointer.allocate(byteCount: 2 * pageSize, alignment: pageSize),
]
print("page size: \(pageSize)")
for (index, buffer) in buffers.enumerated() {
    let address = UInt(bitPattern: buffer.baseAddress)
    print("buffer \(index): \(buffer.count) bytes, address % \(pageSize) = \(address % UInt(pageSize))")
}

/// The VmPin line of /proc/self/status: memory of ours that the kernel has pinned ("12 kB").
func pinned() -> String {
    guard let status = readLines("/proc/self/status") else { return "?" }
    guard let line = status.first(where: { $0.hasPrefix("VmPin:") }) else { return "(no VmPin line)" }
    return line.dropFirst("VmPin:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ")
}

// MARK: - 2. Registering the buffers
//
// `io_uring_register_buffers(ring, iovecs, count)` is io_uring_register(2) with
// IORING_REGISTER_BUFFERS: a system call, finished when it returns. Each iovec (base, length)
// describes one buffer; its position in the array is its index. The kernel copies the iovecs
// during the call (so this array need only live for the call) and pins every page they
// describe: the pages cannot be swapped out, moved or given back until we unregister. VmPin
// shows it.
//
// A process without CAP_IPC_LOCK has those pages charged against RLIMIT_MEMLOCK (`ulimit -l`);
// over the limit, registering fails with -ENOMEM, and the lesson closes its file and says so,
// naming the limit (as lesson 01 does for a ring refused for the same reason). The count is
// kept per user, not per process, the ring's own memory is charged to it too (Linux 6.14 and
// later, as it was in 5.1 to 5.11; not in 5.12 to 6.13), and a finished process's share is
// given back a moment after it exits (exercise 2). The kernel's default limit was only 64 KiB
// before 5.16 (8 MiB since, commit 9dcc38e2813e), so there it bit almost everyone; systemd,
// PAM and container runtimes set their own, so `ulimit -l` is what counts. Root has
// CAP_IPC_LOCK and is not charged.
//
// A ring has one buffer table. Registering again while it exists is -EBUSY.

var iovecs = buffers.map { iovec(iov_base: $0.baseAddress, iov_len: $0.count) }
print("VmPin before registering: \(pinned())")
let registered = io_uring_register_buffers(ring, &iovecs, UInt32(iovecs.count))
print("io_uring_register_buffers(\(iovecs.count) iovecs) = \(describe(res: registered))")
guard registered == 0 else {
    close(fd)
    fail("io_uring_register_buffers returned \(describe(res: registered))" + (registered == -ENOMEM
        ? ": without CAP_IPC_LOCK the pinned pages count against RLIMIT_MEMLOCK (ulimit -l)" : ""))
}
print("VmPin after registering: \(pinned())")
print("io_uring_register_buffers again, while the table exists = "
    + describe(res: io_uring_register_buffers(ring, &iovecs, UInt32(iovecs.count))))

// MARK: - 3. Writing and reading through a registered buffer
//
// `io_uring_prep_write_fixed(sqe, fd, address, length, offset, buf_index)` is
// `io_uring_prep_write` plus the index of a registered buffer. The address and length are
// still ours to choose, anywhere inside that buffer: the kernel checks that
// [address, address + length) lies within buffer `buf_index` and uses its pinned pages.
//
// The memory is still ours to write into between requests (the pinned pages are the very
// pages we see), but not while a request that uses it is in flight: each request here is
// submitted (io_uring_submit) and its CQE awaited (`waitCQE`) before the next, and the ring's
// 8 SQEs are never all taken, so `getSQE` cannot fail. Each request's user_data is written
// where it is made: 11, 12, 13 in this section, 21 to 25 in section 4, 31 in section 5.

/// A fixed read or write of `length` bytes at file offset `fileOffset`, from or into the address
/// `start` bytes into buffer `within`, naming buf_index `index` (normally `within`; sections 4
/// and 5 make them disagree on purpose). Submits it, waits, prints the CQE and returns it.
func fixedIO(_ ring: Ring, write: Bool, fd: Int32,
             _ buffers: [UnsafeMutableRawBufferPointer], within: Int, start: Int, length: Int,
             fileOffset: UInt64, index: Int32, note: String, userData: UInt64) -> io_uring_cqe {
    guard let base = buffers[within].baseAddress else { fail("buffer \(within) has no memory") }
    let address = base + start
    let sqe = getSQE(ring)
    if write {
        io_uring_prep_write_fixed(sqe, fd, address, UInt32(length), fileOffset, index)
    } else {
        io_uring_prep_read_fixed(sqe, fd, address, UInt32(length), fileOffset, index)
    }
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)
    let cqe = waitCQE(ring)
    print("\(write ? "write_fixed" : "read_fixed") buf_index \(index), address buffer \(within) + \(start), "
        + "\(length) bytes\(note): \(format(cqe))")
    return cqe
}

let first = Array("registered once,\n".utf8)
let second = Array("used by index\n".utf8)
buffers[0].copyBytes(from: first)                                                  // at buffer 0 + 0
UnsafeMutableRawBufferPointer(rebasing: buffers[0][1000...]).copyBytes(from: second)  // at buffer 0 + 1000

_ = fixedIO(ring, write: true, fd: fd, buffers, within: 0, start: 0, length: first.count,
            fileOffset: 0, index: 0, note: ", file offset 0", userData: 11)
_ = fixedIO(ring, write: true, fd: fd, buffers, within: 0, start: 1000, length: second.count,
            fileOffset: UInt64(first.count), index: 0, note: ", file offset \(first.count)", userData: 12)

// Read the file back into buffer 1, not at its start but 10 bytes before its first page ends:
// the bytes land across the page boundary, and a registered buffer may span many pages.
let readStart = pageSize - 10
let readBack = fixedIO(ring, write: false, fd: fd, buffers, within: 1, start: readStart, length: 100,
                       fileOffset: 0, index: 1, note: ", file offset 0", userData: 13)
if readBack.res > 0 {
    print("read back: " + quoted(buffers[1][readStart..<(readStart + Int(readBack.res))]))
}

// MARK: - 4. Outside the registered buffer: -EFAULT
//
// The check is arithmetic on the registered iovec: start >= iov_base and
// start + length <= iov_base + iov_len, for the buffer that buf_index names. Anything else
// completes with -EFAULT ("bad address"), even when the memory is perfectly valid in our
// process, and even when it belongs to another registered buffer. Up to the last byte is fine.

print("inside and outside buffer 0 (\(buffers[0].count) bytes):")
_ = fixedIO(ring, write: false, fd: fd, buffers, within: 0, start: pageSize - 16, length: 16,
            fileOffset: 0, index: 0, note: " (its last 16 bytes)", userData: 21)
_ = fixedIO(ring, write: false, fd: fd, buffers, within: 0, start: pageSize, length: 16,
            fileOffset: 0, index: 0, note: " (just past its end)", userData: 22)
_ = fixedIO(ring, write: false, fd: fd, buffers, within: 0, start: pageSize - 10, length: 16,
            fileOffset: 0, index: 0, note: " (10 inside, 6 past its end)", userData: 23)
_ = fixedIO(ring, write: false, fd: fd, buffers, within: 1, start: 0, length: 16,
            fileOffset: 0, index: 0, note: " (buffer 1's memory, named as buffer 0)", userData: 24)

// A buf_index past the end of the table finds no buffer. Linux answers that with -EFAULT as
// well: to the kernel it is the same mistake, memory the request says is registered and is not.
// (man 2 io_uring_enter lists EINVAL for an invalid buf_index; the kernel has said -EFAULT since
// 5.1.)
_ = fixedIO(ring, write: false, fd: fd, buffers, within: 1, start: 0, length: 16,
            fileOffset: 0, index: Int32(buffers.count), note: " (the table has \(buffers.count))", userData: 25)

// MARK: - 5. Unregistering
//
// `io_uring_unregister_buffers` drops the table and unpins the pages: VmPin goes back down.
// From then on a fixed request has no buffer to name (-EFAULT again), a second unregister
// finds nothing (-ENXIO), and the memory is ours to free.
//
// Why not free it earlier? The kernel holds the *pages*, not our address. Freed memory is
// handed out again by the allocator (or, if it was unmapped, its pinned pages stay with the
// kernel while our address space no longer has them), and every fixed request would still
// read from and write to the old pages: into some other object's memory, or into pages nobody
// can see. Nothing reports it. Free registered buffers only after unregistering them (or
// after the ring is torn down, which unregisters them too).

print("io_uring_unregister_buffers = \(describe(res: io_uring_unregister_buffers(ring)))")
print("VmPin after unregistering: \(pinned())")
_ = fixedIO(ring, write: false, fd: fd, buffers, within: 0, start: 0, length: 16,
            fileOffset: 0, index: 0, note: " (no table)", userData: 31)
print("io_uring_unregister_buffers again = \(describe(res: io_uring_unregister_buffers(ring)))")

for buffer in buffers { buffer.deallocate() }
close(fd)
destroyRing(ring)
