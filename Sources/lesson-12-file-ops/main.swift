// Lesson 12: every file operation as a ring op
//
// io_uring is not only for reads and writes. Most of the system calls a program makes on
// files and directories exist as opcodes: openat, write, fallocate, sync_file_range, fsync,
// fadvise, statx, close, mkdirat, renameat, linkat, symlinkat, unlinkat. A whole sequence of
// them can go to the kernel as one linked chain: "fill a new file, flush it, close it, then
// move it into place under a new directory and link to it" becomes one
// io_uring_submit_and_wait, a single io_uring_enter that submits the eleven requests and waits
// for their eleven CQEs, instead of eleven system calls.
//
// The lesson works in a directory (a fresh temp dir, or DIR), lists it, builds its files
// there with one openat and one chain of eleven linked requests, lists it again, and then
// removes exactly what it created, again through the ring, and shows that the listing is
// back to what it was. It touches only names it creates: if DIR already holds a `uring-os` or
// a `uring-os.tmp` (of any kind, a symlink included), it refuses before creating anything.
// If a step inside the chain fails (try `ulimit -f 0`: the write fails with -EFBIG), the
// cleanup removes exactly what the other steps created, and nothing else.
//
// Usage: lesson-12-file-ops [DIR]   (without DIR it works in a new temp directory)
//
// Read next: man 3 io_uring_prep_mkdirat, man 3 io_uring_prep_renameat,
// man 3 io_uring_prep_linkat, man 3 io_uring_prep_symlinkat, man 3 io_uring_prep_unlinkat,
// man 3 io_uring_prep_statx, man 3 io_uring_prep_fallocate, man 2 io_uring_enter.

import Glibc
import CLiburing
import LabSupport

let arguments = lessonArguments(usage: "lesson-12-file-ops [DIR]", max: 1)

// MARK: - 1. A ring, and every opcode this lesson uses
//
// The newest are MKDIRAT, SYMLINKAT and LINKAT (Linux 5.15); RENAMEAT and UNLINKAT came in
// 5.11, the rest by 5.6. The probe names whichever one is missing.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_OPENAT, IORING_OP_WRITE, IORING_OP_FALLOCATE,
               IORING_OP_SYNC_FILE_RANGE, IORING_OP_FSYNC, IORING_OP_FADVISE, IORING_OP_STATX,
               IORING_OP_CLOSE, IORING_OP_MKDIRAT, IORING_OP_RENAMEAT, IORING_OP_LINKAT,
               IORING_OP_SYMLINKAT, IORING_OP_UNLINKAT)

// MARK: - 2. Paths and buffers that stay put
//
// Nearly every request here takes a path. The SQE holds only its address, so each path is a
// C string of our own (strdup) that lives until the request's CQE has arrived; all of them are
// freed at the end. (Since Linux 5.5, IORING_FEAT_SUBMIT_STABLE, the kernel copies a path
// while the SQE is submitted, even for a link that runs much later. Keeping it until the CQE
// is the rule that is right on every kernel, and for buffers the kernel writes, such as the
// statx result below, the only right one.)

var cStrings: [UnsafeMutablePointer<CChar>] = []
func cString(_ text: String, _ cStrings: inout [UnsafeMutablePointer<CChar>]) -> UnsafeMutablePointer<CChar> {
    guard let copy = strdup(text) else { fail("strdup: out of memory") }
    cStrings.append(copy)
    return copy
}

// The names the lesson creates in the directory. `uring-os.tmp` is made first and only moved
// to its final name once it is complete: the usual way to make a file appear all at once.
let tmpName = "uring-os.tmp"
let dirName = "uring-os"
let fileName = "uring-os/data.bin"
let hardlinkName = "uring-os/hardlink.bin"
let symlinkName = "uring-os/symlink.bin"
let symlinkTarget = "data.bin"  // relative to the symlink's own directory

// MARK: - 3. Submitting and printing
//
// As in lesson 07: each SQE gets the next user_data and a label; a chain goes in with one
// io_uring_submit_and_wait(ring, count) (lesson 06): one io_uring_enter submits it and returns
// once all `count` CQEs are posted, so the io_uring_wait_cqe calls after it find each CQE
// already there and make no system call. The CQEs are printed in the order they arrive.
// `results` keeps every request's res by user_data, so the cleanup can tell what really happened.
//
// `labels` (LabSupport's RequestLabels) hands out the user_data values and remembers a label
// for each: `labels.getSQE(ring, "...")` is getSQE plus io_uring_sqe_set_data64. `results` is
// a top-level variable, which Swift 6 makes a main-actor global, so the function below takes it
// as an inout argument rather than reach for it: that is all `&results` at each call is about.
//
// io_uring_get_sqe returns nil only when the SQ is full. The ring has 16 entries and the
// longest chain 11 SQEs, each chain submitted and reaped before the next is prepared, so it
// cannot here; getSQE would end the lesson with an error line, not a trap.

let labels = RequestLabels()
var results: [UInt64: Int32] = [:]

/// Submit what is prepared, wait for every CQE, print each in arrival order and record its res.
func submitAndPrint(_ ring: Ring, count: Int, labels: RequestLabels,
                    results: inout [UInt64: Int32], numbered: Bool = true) {
    let submitted = io_uring_submit_and_wait(ring, UInt32(count))
    if numbered { print("io_uring_submit_and_wait = \(describe(res: submitted))") }
    guard submitted == count else {
        fail("io_uring_submit_and_wait returned \(describe(res: submitted)), expected \(count)")
    }
    for position in 1...count {
        var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
        let ret = io_uring_wait_cqe(ring, &cqePointer)
        guard ret == 0, let cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: ret))") }
        let cqe = cqePointer.pointee  // copy it before handing the slot back
        io_uring_cqe_seen(ring, cqePointer)
        results[cqe.user_data] = cqe.res
        let label = labels[cqe.user_data]
        printCQE(cqe, numbered ? "CQE \(position): \(label)" : label)
    }
}

// MARK: - 4. The directory, opened through the ring
//
// Every path below is relative to a directory fd (the "at" in mkdirat, renameat, ...), so we
// open the directory first: IORING_OP_OPENAT with O_DIRECTORY. A DIR that does not exist
// fails here with -ENOENT in the CQE, before anything is created.

let directory = arguments.first ?? makeTempDir("lesson-12")
print("directory: \(directory)")
let openDirSQE = labels.getSQE(ring, "openat DIR O_DIRECTORY")
io_uring_prep_openat(openDirSQE, AT_FDCWD, cString(directory, &cStrings), O_RDONLY | O_DIRECTORY, 0)
let openDirID = openDirSQE.pointee.user_data
submitAndPrint(ring, count: 1, labels: labels, results: &results, numbered: false)
let dirfd = results[openDirID] ?? -1
guard dirfd >= 0 else {
    fail("cannot open \(directory): openat completed with res=\(describe(res: dirfd))")
}

// MARK: - 5. What the directory holds, before
//
// There is no io_uring opcode that reads a directory (lesson 02's table has no getdents), so
// the listing is plain readdir(3) and lstat(2): it only inspects. It goes two levels deep,
// sorted, one line per entry, and is printed before, between and after.

/// The entries of `path` and of its subdirectories, as sorted lines such as
/// `uring-os/data.bin  (file, 65536 bytes, 2 links)`.
func listing(_ path: String) -> [String] {
    func names(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
    func line(for relative: String) -> String {
        var info = stat()
        guard lstat(path + "/" + relative, &info) == 0 else { return "\(relative)  (gone: \(describe(res: -errno)))" }
        switch info.st_mode & S_IFMT {
        case S_IFDIR:
            return "\(relative)/  (directory)"
        case S_IFLNK:
            var target = [CChar](repeating: 0, count: 4096)
            let length = readlink(path + "/" + relative, &target, target.count - 1)
            let text = length < 0 ? "?" : String(decoding: target.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return "\(relative) -> \(text)  (symlink)"
        case S_IFREG:
            let links = info.st_nlink == 1 ? "1 link" : "\(info.st_nlink) links"
            return "\(relative)  (file, \(info.st_size) bytes, \(links))"
        default:
            return "\(relative)  (other)"
        }
    }
    var lines: [String] = []
    for name in names(in: path) {
        lines.append(line(for: name))
        var info = stat()
        if lstat(path + "/" + name, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
            lines += names(in: path + "/" + name).map { line(for: name + "/" + $0) }
        }
    }
    return lines
}

func printListing(_ title: String, _ lines: [String]) {
    let shown = 20
    print(title + (lines.isEmpty ? " (empty)" : ""))
    for line in lines.prefix(shown) { print("  " + line) }
    if lines.count > shown { print("  ... and \(lines.count - shown) more") }
}

let before = listing(directory)
printListing("listing before:", before)

// MARK: - 6. Only names that do not exist yet
//
// The chain must never act on anything that is not the lesson's own. A request that fails
// does not reliably stop the chain (section 8), so this is checked before the chain, not left
// to it: had DIR a `uring-os` of the user's (a directory, or a symlink), mkdirat would fail with
// -EEXIST in the middle of the chain, and the requests after it would meet a name that is not
// ours (exercise 3 shows what they do). So fstatat with AT_SYMLINK_NOFOLLOW (it looks at the name itself, never where a symlink
// points) must answer ENOENT for both names the lesson creates, relative to the same dirfd the
// chain uses. Anything else, and the lesson stops here, DIR untouched.
//
// (This is check-then-act: a process creating `uring-os` in DIR between this check and the
// chain would still win the race. O_EXCL, mkdirat, RENAME_NOREPLACE, linkat and symlinkat
// never replace a name, so even then nothing of anyone's is overwritten or removed.)

for name in [dirName, tmpName] {
    var info = stat()
    if fstatat(dirfd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 {
        let kind: String
        switch info.st_mode & S_IFMT {
        case S_IFDIR: kind = "a directory"
        case S_IFLNK: kind = "a symlink"
        case S_IFREG: kind = "a file"
        default: kind = "something"
        }
        close(dirfd)
        fail("\(directory) already holds \(kind) named \(name); the lesson only creates names that "
            + "do not exist yet, so it leaves \(directory) untouched")
    }
    let error = errno
    if error != ENOENT {
        close(dirfd)
        fail("cannot check \(directory)/\(name): fstatat failed with \(describe(res: -error))")
    }
}

// MARK: - 7. openat: the one request that cannot be in the chain
//
// A linked request's SQE is filled in before anything runs, so it can only name an fd we
// already know. The fd of a file we are about to create arrives in openat's CQE, too late
// for the SQEs after it. So the openat goes alone, and the chain that uses its fd follows.
// (io_uring_prep_openat_direct, the subject of a later lesson, removes this break: it puts
// the new file into a slot of a registered file table that we choose in advance, and the
// later links name that slot with IOSQE_FIXED_FILE. With plain fds, one openat and then one
// chain is the honest shape.)
//
// O_EXCL makes the openat fail with -EEXIST if the name was taken after all (section 6): a
// file it does create is certainly ours, which the cleanup relies on.

let openSQE = labels.getSQE(ring, "openat \(tmpName) O_CREAT|O_EXCL|O_RDWR")
io_uring_prep_openat(openSQE, dirfd, cString(tmpName, &cStrings), O_CREAT | O_EXCL | O_RDWR, 0o644)
let openID = openSQE.pointee.user_data
submitAndPrint(ring, count: 1, labels: labels, results: &results, numbered: false)
let fd = results[openID] ?? -1

// MARK: - 8. The chain: eleven requests, one submit
//
// Every SQE but the last carries IOSQE_IO_LINK: each starts only when the one before it has
// completed. If one fails, the later links should complete with -ECANCELED without running
// (lesson 07); see below for the fine print.
//
//   write            16 bytes at offset 0, from a buffer that stays put until its CQE
//   fallocate        mode 0: allocate 64 KiB of disk space and extend the file to 65536 bytes
//   sync_file_range  start writeback of that range and wait for it (data only, no metadata)
//   fsync            flush the data *and* the metadata (size, allocation) to the disk
//   fadvise          POSIX_FADV_DONTNEED: a hint that we will not read it; clean pages may go
//   statx            the file's size, link count and blocks, written into our statx buffer
//   close            the fd from openat
//   mkdirat          the directory `uring-os`
//   renameat         uring-os.tmp -> uring-os/data.bin, with RENAME_NOREPLACE (renameat2's
//                    flag: never replace an existing file; -EEXIST instead)
//   linkat           a hard link uring-os/hardlink.bin to the same inode (link count 2)
//   symlinkat        uring-os/symlink.bin -> data.bin (a relative target)
//
// Which failures break a chain? `man 2 io_uring_enter` says any request that "ends in error".
// On the Linux 6.18 this lab was written on, that holds for openat, read, write, readv,
// writev, close, fadvise, splice and tee, but not for fallocate, sync_file_range, fsync,
// statx, mkdirat, renameat, linkat, symlinkat, unlinkat (nor 6.9's ftruncate): they post their -errno and the
// next link runs anyway. What decides is when the request fails. A request that works on an
// open file (write, fallocate, fsync, ...) has that file's fd looked up by io_uring before it
// starts, and a failure there breaks the chain whatever the opcode (fallocate on fd 999:
// -EBADF, the next link cancelled); the same -EBADF from inside the request (fallocate on a
// read-only fd, refused by the file system) leaves the chain whole. The prose's Kernel
// section says how this was measured; exercise 4 tries it. So a chain stopping must never be
// what keeps you safe: section 6 made sure every name is new, every request that creates a
// name refuses to replace one, and the cleanup goes by each CQE, not by the plan. A failure
// that does break the chain: run the lesson under `ulimit -f 0` (no file may grow), the
// write fails with -EFBIG and the ten links after it complete with -ECANCELED.
//
// statx writes its answer into a `struct statx` of ours (from linux/stat.h, which the CLiburing
// shim includes), at whatever moment the request runs: like any buffer the kernel writes, it
// lives on the heap until the CQE has arrived.

let statxBuffer = UnsafeMutablePointer<statx>.allocate(capacity: 1)
statxBuffer.initialize(to: statx())
let text = Array("written by ring\n".utf8)
let writeBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: text.count, alignment: 8)
writeBuffer.copyBytes(from: text)
let size: Int = 65536

var chainIDs: [UInt64] = []
var mkdiratID: UInt64 = 0, closeID: UInt64 = 0, statxID: UInt64 = 0
var renameatID: UInt64 = 0, linkatID: UInt64 = 0, symlinkatID: UInt64 = 0

if fd >= 0 {
    print("one chain of 11 linked requests:")

    // The flags are set after the prep call: every io_uring_prep_* here goes through liburing's
    // io_uring_prep_rw, which writes every field of the SQE except user_data (set by prepare),
    // flags = 0 included. A link flag set before it would silently vanish, and nothing would
    // order the requests any more (exercise 1).
    var sqe = labels.getSQE(ring, "write \(text.count) bytes at 0")
    io_uring_prep_write(sqe, fd, writeBuffer.baseAddress, UInt32(text.count), 0)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    chainIDs.append(sqe.pointee.user_data)

    sqe = labels.getSQE(ring, "fallocate \(size) bytes at 0")
    io_uring_prep_fallocate(sqe, fd, 0, 0, off_t(size))
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    chainIDs.append(sqe.pointee.user_data)

    sqe = labels.getSQE(ring, "sync_file_range WRITE|WAIT_AFTER")
    io_uring_prep_sync_file_range(sqe, fd, UInt32(size), 0, SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    chainIDs.append(sqe.pointee.user_data)

    sqe = labels.getSQE(ring, "fsync")
    io_uring_prep_fsync(sqe, fd, 0)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    chainIDs.append(sqe.pointee.user_data)

    sqe = labels.getSQE(ring, "fadvise DONTNEED")
    io_uring_prep_fadvise(sqe, fd, 0, off_t(size), POSIX_FADV_DONTNEED)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    chainIDs.append(sqe.pointee.user_data)

    sqe = labels.getSQE(ring, "statx \(tmpName)")
    io_uring_prep_statx(sqe, dirfd, cString(tmpName, &cStrings), AT_SYMLINK_NOFOLLOW,
                        UInt32(STATX_NLINK | STATX_SIZE | STATX_BLOCKS), statxBuffer)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    statxID = sqe.pointee.user_data
    chainIDs.append(statxID)

    sqe = labels.getSQE(ring, "close the file's fd")
    io_uring_prep_close(sqe, fd)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    closeID = sqe.pointee.user_data
    chainIDs.append(closeID)

    sqe = labels.getSQE(ring, "mkdirat \(dirName)")
    io_uring_prep_mkdirat(sqe, dirfd, cString(dirName, &cStrings), 0o755)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    mkdiratID = sqe.pointee.user_data
    chainIDs.append(mkdiratID)

    sqe = labels.getSQE(ring, "renameat \(tmpName) -> \(fileName) NOREPLACE")
    io_uring_prep_renameat(sqe, dirfd, cString(tmpName, &cStrings), dirfd, cString(fileName, &cStrings),
                           UInt32(RENAME_NOREPLACE))
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    renameatID = sqe.pointee.user_data
    chainIDs.append(renameatID)

    sqe = labels.getSQE(ring, "linkat \(fileName) -> \(hardlinkName)")
    io_uring_prep_linkat(sqe, dirfd, cString(fileName, &cStrings), dirfd, cString(hardlinkName, &cStrings), 0)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_LINK)
    linkatID = sqe.pointee.user_data
    chainIDs.append(linkatID)

    // The last link: no IOSQE_IO_LINK, so the chain ends here.
    sqe = labels.getSQE(ring, "symlinkat \(symlinkName) -> \(symlinkTarget)")
    io_uring_prep_symlinkat(sqe, cString(symlinkTarget, &cStrings), dirfd, cString(symlinkName, &cStrings))
    symlinkatID = sqe.pointee.user_data
    chainIDs.append(symlinkatID)

    submitAndPrint(ring, count: chainIDs.count, labels: labels, results: &results)

    // Did the first failure break the chain? Counted from the CQEs, not assumed.
    if let failed = chainIDs.firstIndex(where: { (results[$0] ?? -1) < 0 }), failed + 1 < chainIDs.count {
        let later = chainIDs[(failed + 1)...]
        let ran = later.filter { results[$0] != -ECANCELED }.count
        let name = labels[chainIDs[failed]]
        if ran == 0 {
            print("\(name) failed: the \(later.count) links after it were cancelled")
        } else {
            print("\(name) failed, yet \(ran) of the \(later.count) links after it ran: this kernel did not break the chain there")
        }
    }

    // statx's answer is in our buffer once its CQE has arrived with res 0. stx_mask says which
    // fields the kernel filled in.
    if results[statxID] == 0 {
        let answer = statxBuffer.pointee
        let (mask, nlink, fileSize, blocks) = (answer.stx_mask, answer.stx_nlink, answer.stx_size, answer.stx_blocks)
        if mask & UInt32(STATX_SIZE) != 0 {
            print("statx: stx_size=\(fileSize) stx_nlink=\(nlink) stx_blocks=\(blocks) (512-byte blocks allocated)")
        } else {
            print("statx: the kernel did not fill in stx_size (stx_mask=0x\(String(mask, radix: 16)))")
        }
    }
    printListing("listing after the chain:", listing(directory))
}

// The chain has completed (every CQE is in), so the kernel is done with the buffers.
statxBuffer.deallocate()
writeBuffer.deallocate()

// MARK: - 9. Cleaning up: exactly what we created, through the ring
//
// What exists is not the same as what is ours: had someone created `uring-os` after section
// 6's check, mkdirat failed with -EEXIST and that directory must stay, with whatever it held.
// So the cleanup goes by the CQEs: each request that succeeded created one name (none of them
// can have replaced one), and that is what gets removed, newest first:
//   symlinkat succeeded -> unlinkat uring-os/symlink.bin
//   linkat succeeded    -> unlinkat uring-os/hardlink.bin
//   renameat succeeded  -> unlinkat uring-os/data.bin, else openat succeeded -> uring-os.tmp
//   mkdirat succeeded   -> unlinkat uring-os with AT_REMOVEDIR (rmdir: it must be empty)
// plus a close of the file's fd if the chain's close never ran (-ECANCELED), and last the close
// of the directory fd. A close that ran and failed is not retried: Linux releases the fd even
// when close reports an error, and a second close could hit an fd opened since. These go as one chain with IOSQE_IO_HARDLINK: the order is kept (the directory
// is removed after the files in it) but a failed step does not cancel the rest.
//
// Should a removal fail through the ring anyway, plain unlinkat(2) gets a second try.

func succeeded(_ id: UInt64, _ results: [UInt64: Int32]) -> Bool { id != 0 && results[id] == 0 }
var removals: [(name: String, flags: Int32)] = []
if succeeded(symlinkatID, results) { removals.append((symlinkName, 0)) }
if succeeded(linkatID, results) { removals.append((hardlinkName, 0)) }
if succeeded(renameatID, results) {
    removals.append((fileName, 0))
} else if fd >= 0 {
    removals.append((tmpName, 0))
}
if succeeded(mkdiratID, results) { removals.append((dirName, AT_REMOVEDIR)) }

print("cleanup, one chain with IOSQE_IO_HARDLINK:")
var removalIDs: [(id: UInt64, name: String, flags: Int32)] = []
var cleanupCount = 0
if fd >= 0 && results[closeID] == -ECANCELED {
    let sqe = labels.getSQE(ring, "close the file's fd")
    io_uring_prep_close(sqe, fd)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_HARDLINK)
    cleanupCount += 1
}
for removal in removals {
    let label = "unlinkat \(removal.name)" + (removal.flags == AT_REMOVEDIR ? " AT_REMOVEDIR" : "")
    let sqe = labels.getSQE(ring, label)
    io_uring_prep_unlinkat(sqe, dirfd, cString(removal.name, &cStrings), removal.flags)
    io_uring_sqe_set_flags(sqe, IOSQE_IO_HARDLINK)
    removalIDs.append((sqe.pointee.user_data, removal.name, removal.flags))
    cleanupCount += 1
}
let closeDirSQE = labels.getSQE(ring, "close the directory fd")
io_uring_prep_close(closeDirSQE, dirfd)
cleanupCount += 1
submitAndPrint(ring, count: cleanupCount, labels: labels, results: &results)

var leftBehind: [String] = []
for removal in removalIDs where results[removal.id] != 0 {
    let path = directory + "/" + removal.name
    let ret = unlinkat(AT_FDCWD, path, removal.flags)
    let error = ret == 0 ? 0 : errno
    print("unlinkat(2) \(removal.name), the second try: \(error == 0 ? "0" : describe(res: -error))")
    if error != 0 && error != ENOENT { leftBehind.append(removal.name) }
}

// Every CQE of every chain has arrived: the kernel is done with the paths.
for copy in cStrings { free(copy) }
destroyRing(ring)

// MARK: - 10. Is the directory as we found it?
//
// As far as the listing can tell: the same names, types, sizes, link counts and symlink
// targets. DIR's own mtime and ctime do change, since names were added to it and removed.

let after = listing(directory)
printListing("listing after cleanup:", after)
print("listing after cleanup equals listing before: \(after == before ? "yes" : "no")")

if !leftBehind.isEmpty {
    fail("could not remove \(leftBehind.joined(separator: ", ")) from \(directory)")
}
if after != before {
    fail("\(directory) differs from before: \(Set(after).symmetricDifference(before).sorted().joined(separator: "; "))")
}
// A step that failed is the lesson's failure too, reported after the directory is restored.
if fd < 0 {
    fail("openat \(tmpName) completed with res=\(describe(res: fd)); \(directory) is as it was")
}
if let failed = chainIDs.first(where: { (results[$0] ?? -1) < 0 }) {
    fail("\(labels[failed]) completed with res=\(describe(res: results[failed] ?? 0)); "
        + "\(directory) is as it was")
}
