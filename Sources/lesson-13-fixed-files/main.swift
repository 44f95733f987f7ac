// Lesson 13: fixed files
//
// Every request on an ordinary fd makes the kernel do the same two things: look the fd up in
// the process's file table and take a reference on the open file it finds (fget), then drop
// that reference when the request completes (fput). The reference is an atomic counter in
// the shared `struct file`; with many requests in flight, or a file table shared by several
// threads, those atomics cost. io_uring lets a ring keep a file table of its own: register
// the files once with `io_uring_register_files` (the lookup and the reference happen then,
// once per file), and a request that sets IOSQE_FIXED_FILE puts a *slot index* into the SQE's
// fd field instead of an fd. The kernel finds the file at that index in the ring's table,
// with no lookup in the process's table and no atomic reference on the shared `struct file`.
// (The request still counts its use of the slot's entry, with a cheaper counter private to the
// ring: on Linux 6.18 a plain integer under the ring's own lock. Exercise 2 shows what it is for.)
//
// This lesson registers three temp files, reads each through its slot, closes the real fds
// and reads again (the table holds its own reference), swaps a slot to another file and
// empties one, updates several slots in one call (and watches one stop part-way), then
// registers a sparse table of empty slots. An empty slot is the first failure a learner meets:
// the read completes with -EBADF.
//
// Read next: man 3 io_uring_register_files, man 3 io_uring_unregister_files,
// man 2 io_uring_register (IORING_REGISTER_FILES, IORING_REGISTER_FILES_UPDATE),
// man 2 io_uring_enter (IOSQE_FIXED_FILE). (liburing 2.3 has no man page for
// io_uring_register_files_update; its declaration is in liburing.h.)

import Glibc
import CLiburing
import LabSupport

_ = lessonArguments(usage: "lesson-13-fixed-files", max: 0)

// MARK: - 1. A ring and four files
//
// Registered files are older than the reads we do through them: IORING_REGISTER_FILES is
// Linux 5.1, updating a slot 5.5, sparse tables 5.19. IORING_OP_READ is 5.6, so we probe for
// it. The files are temp files with known, distinct contents, opened with plain open(2):
// registering takes ordinary fds.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_READ)

var paths: [String: String] = [:]
for (name, text) in [("apple.txt", "apple\n"), ("banana.txt", "banana\n"), ("cherry.txt", "cherry\n"),
                     ("damson.txt", "damson\n")] {
    paths[name] = makeTempFile(named: name, contents: Array(text.utf8))  // removed at exit
}

/// Open one of the temp files with open(2) and say which fd it got (fd numbers vary). If it
/// cannot, close `opened` (the fds opened before it) and stop.
func openFile(_ name: String, _ paths: [String: String], opened: [Int32] = []) -> Int32 {
    let path = paths[name] ?? ""
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else {
        let reason = describe(res: -errno)
        for other in opened { close(other) }
        fail("cannot open \(path): \(reason)")
    }
    print("open \(name) = fd \(fd)")
    return fd
}

var fds: [Int32] = []
for name in ["apple.txt", "banana.txt", "cherry.txt"] { fds.append(openFile(name, paths, opened: fds)) }

// MARK: - 2. Registering the files
//
// `io_uring_register_files` is io_uring_register(2) with IORING_REGISTER_FILES: a system call
// that is finished when it returns, not a request with a CQE. The kernel walks the array, looks
// up each fd and keeps a reference to its open file in slot 0, 1, 2, ... of the ring's table.
// It copies the array during the call, so a Swift array (valid for one call) is fine here.
//
// A ring has exactly one file table. Registering again while it exists is -EBUSY: to change
// slots, update them (section 4); to get a table of another size, unregister first.

let registered = io_uring_register_files(ring, fds, UInt32(fds.count))
print("io_uring_register_files([\(fds.map(String.init).joined(separator: ", "))]) = \(describe(res: registered))")
guard registered == 0 else {
    for fd in fds { close(fd) }
    fail("io_uring_register_files returned \(describe(res: registered))")
}
print("io_uring_register_files again, while the table exists = "
    + describe(res: io_uring_register_files(ring, fds, UInt32(fds.count))))

// MARK: - 3. Reading through a slot
//
// With IOSQE_FIXED_FILE set in the SQE's flags, the kernel takes the SQE's fd field as an
// index into the ring's file table. Here it is 0, 1 or 2, which as plain fds would be stdin,
// stdout and stderr: without the flag these very SQEs would read from those. Each read has a
// buffer of its own, allocated and kept until its CQE has arrived (the lab's buffer rule); it
// is submitted with io_uring_submit and reaped with `waitCQE` (io_uring_wait_cqe, a copy of
// the CQE, io_uring_cqe_seen). The SQ has 8 entries and one request is in flight at a time, so
// `getSQE` cannot fail. Every read gets a user_data of its own, written where it is called:
// 11, 12, 13 for the first three reads, 21, 22, 23 for the three after them, 31, 32, 33 in
// section 4, and on by tens, so a CQE line says which read it answers.

/// Read up to 64 bytes at offset 0 of the file in `slot` of the registered table, and print
/// the CQE and the bytes read.
func readSlot(_ ring: Ring, _ slot: Int32, _ label: String, userData: UInt64) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
    defer { buffer.deallocate() }  // runs after the CQE has arrived
    let sqe = getSQE(ring)
    io_uring_prep_read(sqe, slot, buffer.baseAddress, UInt32(buffer.count), 0)  // fd field = slot
    io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE)                          // "it is an index"
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)
    let cqe = waitCQE(ring)
    print("read slot \(slot)\(label): \(format(cqe))"
        + (cqe.res > 0 ? " " + quoted(buffer.prefix(Int(cqe.res))) : ""))
}

print("reads with IOSQE_FIXED_FILE, the SQE's fd field holding the slot index:")
for slot: Int32 in 0..<3 { readSlot(ring, slot, "", userData: 11 + UInt64(slot)) }

// Now close the fds we registered. close(2) removes each from the *process's* file table, and
// fcntl(F_GETFD) shows it: the fd no longer exists. But the ring's table took its own
// reference at registration, so the open files live on, and reads through the slots still
// work. (A file is really closed when its last reference goes: here, when its slot is
// replaced or the table unregistered.)

print("closing the registered fds:")
for fd in fds {
    let closed = close(fd)
    let check = fcntl(fd, F_GETFD)
    let answer = check < 0 ? "fails with " + describe(res: -errno) : "= \(check)"
    print("close(\(fd)) = \(closed), then fcntl(\(fd), F_GETFD) \(answer)")
}
// The kernel shows a ring's file table in the ring fd's /proc/self/fdinfo entry: "UserFiles:"
// and the number of slots, then the slots. fdinfo is for debugging and its format changes:
// since Linux 6.14, one line per filled slot with the file's path; before, one line per slot,
// with the file's base name or "<none>". Here it is a witness, printed as the kernel wrote it.
// The three files are still there, held by the table alone.

/// Print the "UserFiles" part of the ring fd's fdinfo: the table size and each filled slot.
func printFileTable(_ ring: Ring) {
    let path = "/proc/self/fdinfo/\(ring.pointee.ring_fd)"
    guard let lines = readLines(path) else { print("(cannot read \(path))"); return }
    guard let start = lines.firstIndex(where: { $0.hasPrefix("UserFiles:") }) else {
        print("(this kernel's fdinfo has no UserFiles line)")
        return
    }
    print("fdinfo of the ring fd: UserFiles: " + lines[start].dropFirst("UserFiles:".count).filter { $0 != "\t" && $0 != " " })
    for slotLine in lines[(start + 1)...].prefix(while: { $0.hasPrefix(" ") }) {
        print("  " + slotLine.drop { $0 == " " })  // "0: /path/to/file" (before 6.14: "0: file")
    }
}

printFileTable(ring)
print("the same reads after the fds were closed:")
for slot: Int32 in 0..<3 { readSlot(ring, slot, "", userData: 21 + UInt64(slot)) }

// MARK: - 4. Updating slots
//
// `io_uring_register_files_update(ring, offset, fds, count)` goes through `count` slots starting
// at `offset`: for each, the old file's reference is dropped, the new fd is looked up and
// referenced. An fd of -1 empties a slot. It returns how many entries it went through (section
// 5 shows what that means when one fails). The fd we pass may be closed right after, as in
// section 3. (IORING_OP_FILES_UPDATE does the same as a request, in order with others.)
//
// Reading from an empty slot, or from an index past the end of the table, finds no file:
// the read completes with -EBADF, just as a read on a closed fd does (lesson 04).

let damson = openFile("damson.txt", paths)
print("io_uring_register_files_update(offset 1, [\(damson)]) = "
    + describe(res: io_uring_register_files_update(ring, 1, [damson], 1)))
print("close(\(damson)) = \(close(damson))")
readSlot(ring, 1, " (updated)", userData: 31)

print("io_uring_register_files_update(offset 2, [-1]) = "
    + describe(res: io_uring_register_files_update(ring, 2, [-1], 1)))
printFileTable(ring)
readSlot(ring, 2, " (emptied)", userData: 32)
readSlot(ring, 3, " (past the end of the 3-slot table)", userData: 33)

// MARK: - 5. Several slots in one update, and an update that stops part-way
//
// The kernel walks the fd array in order, one slot per entry (Linux 6.18, io_uring/rsrc.c,
// __io_sqe_files_update):
//   -2, IORING_REGISTER_FILES_SKIP (Linux 5.12), leaves the slot as it is: the entry still counts;
//   -1 empties the slot;
//   any other value: the slot's old file is dropped *first*, then the fd is looked up. An fd that
//   is not open ends the call there, and that slot has already lost its old file. Slots after
//   it are not touched.
// The call returns the number of entries it went through before the failure, and the error
// only if that number is 0. So an update that stops part-way *succeeds* with a smaller number,
// and its errno is lost: compare the return value with the count you passed.
//
// The failing fd here is 999, after checking that this process has no fd 999 open.

print("updates of several slots in one call:")
let banana = openFile("banana.txt", paths)
let notOpen: Int32 = 999
guard fcntl(notOpen, F_GETFD) < 0 else {
    close(banana)
    fail("fd \(notOpen) is open in this process; the lesson needs a closed fd")
}
print("fcntl(\(notOpen), F_GETFD) fails with \(describe(res: -errno)): fd \(notOpen) is not open")
let skipEntry = IORING_REGISTER_FILES_SKIP  // -2
for update in [[skipEntry, banana, skipEntry], [banana, notOpen], [notOpen, banana]] {
    print("io_uring_register_files_update(offset 0, [\(update.map(String.init).joined(separator: ", "))]) = "
        + describe(res: io_uring_register_files_update(ring, 0, update, UInt32(update.count))))
    printFileTable(ring)
}
print("close(\(banana)) = \(close(banana))")
readSlot(ring, 0, " (emptied by the failed update)", userData: 41)

// MARK: - 6. Unregistering
//
// `io_uring_unregister_files` drops the whole table (and with it the last reference to each of
// our files, which closes them). After that no slot exists: a fixed read is -EBADF, and a
// second unregister finds nothing to remove, -ENXIO. Tearing down the ring would also drop
// the table.

print("io_uring_unregister_files = \(describe(res: io_uring_unregister_files(ring)))")
printFileTable(ring)
readSlot(ring, 0, " (no table)", userData: 51)
print("io_uring_unregister_files again = \(describe(res: io_uring_unregister_files(ring)))")

// MARK: - 7. A sparse table
//
// Since 5.19 `io_uring_register_files_sparse(ring, n)` registers a table of n empty slots, to
// be filled later by updates, or by requests that open files straight into a slot ("direct
// descriptors", a later lesson: 30, coming). A program that keeps many files would register a
// large sparse table once, since a ring has one table and it cannot grow.
//
// Every slot starts empty, so the first read through one is the -EBADF of section 4: the
// failure a learner meets first, when a slot was never filled (or the update failed unseen).

let sparseSlots: UInt32 = 4
let sparse = io_uring_register_files_sparse(ring, sparseSlots)
print("io_uring_register_files_sparse(\(sparseSlots)) = \(describe(res: sparse))")
if sparse == 0 {
    printFileTable(ring)
    readSlot(ring, 0, " (never filled)", userData: 61)
    let apple = openFile("apple.txt", paths)
    print("io_uring_register_files_update(offset 3, [\(apple)]) = "
        + describe(res: io_uring_register_files_update(ring, 3, [apple], 1)))
    print("close(\(apple)) = \(close(apple))")
    readSlot(ring, 3, " (filled)", userData: 62)
    print("io_uring_unregister_files = \(describe(res: io_uring_unregister_files(ring)))")
} else if sparse == -EINVAL {
    // A kernel before 5.19 rejects the sparse flag (IORING_REGISTER_FILES2 with
    // IORING_RSRC_REGISTER_SPARSE) with -EINVAL. Since 5.5 the same table can be had by
    // registering an array of -1s with io_uring_register_files.
    print("no sparse tables here (Linux 5.19); io_uring_register_files with an array of -1s "
        + "gives empty slots on Linux 5.5 and later")
} else {
    // Any other error is not about the kernel's age, and we report it as the kernel gave it:
    // -EMFILE, for one, says the table has more slots than this process's soft RLIMIT_NOFILE.
    fail("io_uring_register_files_sparse(\(sparseSlots)) returned \(describe(res: sparse))")
}

destroyRing(ring)
