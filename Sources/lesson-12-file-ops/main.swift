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
// The lesson works in a directory (a fresh temp dir, or DIR): it builds its files there with
// one openat and one chain of eleven linked requests, and then removes exactly what it
// created, again through the ring. It touches only names it creates: if DIR already holds a
// `uring-os` or a `uring-os.tmp` (of any kind, a symlink included), it refuses before creating
// anything. If a step inside the chain fails (try `ulimit -f 0`: the write fails with
// -EFBIG), the cleanup removes exactly what the other steps created, and nothing else.
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

// MARK: - 2. The lesson's names, and a look at them
//
// `uring-os.tmp` is made first and only moved to its final name once it is complete: the usual
// way to make a file appear all at once. `listing` prints which of the lesson's names exist in
// DIR, with lines such as `uring-os/data.bin  (file, 65536 bytes, 2 links)`, and returns them:
// before the chain (none may exist: section 4), after it, and after the cleanup. No io_uring
// opcode reads a directory (lesson 02's table has no getdents), so this is plain lstat(2) and
// readlink(2), which only look. (@MainActor here and below: these functions use the lesson's
// top-level variables, which Swift 6 gives to the main actor.)

let tmpName = "uring-os.tmp", dirName = "uring-os", fileName = "uring-os/data.bin"
let hardlinkName = "uring-os/hardlink.bin", symlinkName = "uring-os/symlink.bin"
let symlinkTarget = "data.bin"  // relative to the symlink's own directory
let directory = arguments.first ?? makeTempDir("lesson-12")

typealias Entry = (name: String, kind: String, line: String)
@MainActor func listing(_ title: String) -> [Entry] {
    let entries = [dirName, fileName, hardlinkName, symlinkName, tmpName].compactMap { name -> Entry? in
        var info = stat()
        guard lstat(directory + "/" + name, &info) == 0 else { return nil }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: return (name, "a directory", "\(name)/  (directory)")
        case S_IFLNK:
            var target = [CChar](repeating: 0, count: 4096)
            let length = max(0, readlink(directory + "/" + name, &target, target.count))
            let text = String(decoding: target.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return (name, "a symlink", "\(name) -> \(text)  (symlink)")
        case S_IFREG:
            let links = info.st_nlink == 1 ? "1 link" : "\(info.st_nlink) links"
            return (name, "a file", "\(name)  (file, \(info.st_size) bytes, \(links))")
        default: return (name, "something", "\(name)  (other)")
        }
    }
    print(title + (entries.isEmpty ? " (empty)" : ""))
    for entry in entries { print("  " + entry.line) }
    return entries
}

// MARK: - 3. Requests as lists, paths that stay put
//
// Every request has a fixed user_data: 1 and 2 for the two openats, 101 to 111 for the links
// of the chain in order, 201 to 207 for the cleanup's. A `Step` is one request: its
// user_data, its SQE flags, a name to print beside its CQE, and the io_uring_prep_* call that
// fills in its SQE. `queue` takes an SQE for each (getSQE: io_uring_get_sqe, or an error line
// if the SQ is full; the ring has 16 entries, the longest chain 11, and each batch is reaped
// before the next is queued), runs the prep call, and only then sets the flags: each prep
// call here goes through liburing's io_uring_prep_rw, which writes every field of the SQE but
// user_data, flags = 0 included, so a link flag set before it would silently vanish (exercise
// 1). `reap` waits for `count` CQEs (waitCQE: io_uring_wait_cqe, a copy, io_uring_cqe_seen),
// prints each and keeps its res by user_data: the cleanup goes by what really happened.
//
// Nearly every request takes a path, and the SQE holds only its address, so each path is a
// C string of our own (strdup), freed at the end, after every CQE. (Since Linux 5.5,
// IORING_FEAT_SUBMIT_STABLE, the kernel copies a path while the SQE is submitted, even for a
// link that runs much later. Keeping it until the CQE is the rule that is right on every
// kernel, and for buffers the kernel writes, such as the statx result below, the only one.)

typealias Step = (userData: UInt64, flags: UInt32, name: String, prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void)
var names: [UInt64: String] = [:], results: [UInt64: Int32] = [:]

@MainActor func queue(_ steps: [Step]) {
    for step in steps {
        let sqe = getSQE(ring)
        step.prep(sqe)
        io_uring_sqe_set_flags(sqe, step.flags)
        io_uring_sqe_set_data64(sqe, step.userData)
        names[step.userData] = step.name
    }
}

@MainActor func reap(_ count: Int, numbered: Bool = true) {
    for position in 1...count {
        let cqe = waitCQE(ring)
        results[cqe.user_data] = cqe.res
        printCQE(cqe, (numbered ? "CQE \(position): " : "") + (names[cqe.user_data] ?? "?"))
    }
}

var cStrings: [UnsafeMutablePointer<CChar>] = []
@MainActor func cString(_ text: String) -> UnsafeMutablePointer<CChar> {
    guard let copy = strdup(text) else { fail("strdup: out of memory") }
    cStrings.append(copy)
    return copy
}

// MARK: - 4. The directory, opened through the ring; only names that do not exist yet
//
// IORING_OP_OPENAT with O_DIRECTORY. A DIR that does not exist fails here with -ENOENT in the
// CQE, before anything is created.
//
// The chain must never act on anything that is not the lesson's own, and a failing request
// does not reliably stop a chain (section 6). Had DIR a `uring-os` of the user's (a directory,
// or a symlink), mkdirat would fail with -EEXIST mid-chain and the links after it would meet
// a name that is not ours (exercise 3 shows what they do). So the listing before must be
// empty, or the lesson stops here, DIR untouched. (Check-then-act: a process creating
// `uring-os` right after the check still wins the race, but O_EXCL, mkdirat,
// RENAME_NOREPLACE, linkat and symlinkat never replace a name, so even then nothing of
// anyone's is overwritten or removed.)

print("directory: \(directory)")
queue([(1, 0, "openat DIR O_DIRECTORY",
        { io_uring_prep_openat($0, AT_FDCWD, cString(directory), O_RDONLY | O_DIRECTORY, 0) })])
checkSubmit(io_uring_submit_and_wait(ring, 1), 1)
reap(1, numbered: false)
let dirfd = results[1] ?? -1
guard dirfd >= 0 else { fail("cannot open \(directory): openat completed with res=\(describe(res: dirfd))") }

let before = listing("listing before:")
if let taken = before.first {
    close(dirfd)
    fail("\(directory) already holds \(taken.kind) named \(taken.name); the lesson only creates names "
        + "that do not exist yet, so it leaves \(directory) untouched")
}

// MARK: - 5. openat: the one request that cannot be in the chain
//
// A linked request's SQE is filled in before anything runs, so it can only name an fd we
// already know. The fd of a file we are about to create arrives in openat's CQE, too late
// for the SQEs after it. So the openat goes alone, and the chain that uses its fd follows.
// (io_uring_prep_openat_direct, the subject of a later lesson, removes this break: it puts
// the new file into a slot of a registered file table that we choose in advance, and the
// later links name that slot with IOSQE_FIXED_FILE.) O_EXCL makes the openat fail with
// -EEXIST if the name was taken after all: a file it does create is certainly ours, which the
// cleanup relies on.

queue([(2, 0, "openat \(tmpName) O_CREAT|O_EXCL|O_RDWR",
        { io_uring_prep_openat($0, dirfd, cString(tmpName), O_CREAT | O_EXCL | O_RDWR, 0o644) })])
checkSubmit(io_uring_submit_and_wait(ring, 1), 1)
reap(1, numbered: false)
let fd = results[2] ?? -1

// MARK: - 6. The chain: eleven requests, one submit
//
// Every step but the last carries IOSQE_IO_LINK: each starts only when the one before it has
// completed, and if one fails, the later links should complete with -ECANCELED without
// running (lesson 07; the fine print below). fallocate (mode 0) allocates 64 KiB and extends
// the file to it; sync_file_range starts writeback of that range and waits for it (data
// only); fsync flushes the data *and* the metadata (size, allocation); fadvise DONTNEED says
// we will not read it, so clean pages may go; statx writes the file's size, link count and
// blocks into a `struct statx` of ours (linux/stat.h, which the CLiburing shim includes)
// whenever it runs, so that lives on the heap until its CQE; RENAME_NOREPLACE (renameat2's
// flag) makes renameat fail with -EEXIST rather than replace a file.
//
// Which failures break a chain? `man 2 io_uring_enter` says any request that "ends in error".
// But on Linux 6.18 fallocate, sync_file_range, fsync, statx, mkdirat, renameat, linkat,
// symlinkat and unlinkat that fail while they run post their -errno and the next link runs
// anyway; only a failure before the request starts (an fd that is not open) breaks the chain
// whatever the opcode. The prose lists what was measured, and exercise 4 tries it. So a chain
// stopping must never be what keeps you safe: every name is new (section 4), no request that
// creates a name replaces one, and the cleanup goes by each CQE, not by the plan. Under
// `ulimit -f 0` the write fails with -EFBIG, and a failed write does break the chain.

let statxBuffer = UnsafeMutablePointer<statx>.allocate(capacity: 1)
statxBuffer.initialize(to: statx())
let text = Array("written by ring\n".utf8)
let writeBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: text.count, alignment: 8)
writeBuffer.copyBytes(from: text)
let size = 65536

let chain: [Step] = [
    (101, IOSQE_IO_LINK, "write \(text.count) bytes at 0",
        { io_uring_prep_write($0, fd, writeBuffer.baseAddress, UInt32(text.count), 0) }),
    (102, IOSQE_IO_LINK, "fallocate \(size) bytes at 0",
        { io_uring_prep_fallocate($0, fd, 0, 0, off_t(size)) }),
    (103, IOSQE_IO_LINK, "sync_file_range WRITE|WAIT_AFTER",
        { io_uring_prep_sync_file_range($0, fd, UInt32(size), 0, SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) }),
    (104, IOSQE_IO_LINK, "fsync",
        { io_uring_prep_fsync($0, fd, 0) }),
    (105, IOSQE_IO_LINK, "fadvise DONTNEED",
        { io_uring_prep_fadvise($0, fd, 0, off_t(size), POSIX_FADV_DONTNEED) }),
    (106, IOSQE_IO_LINK, "statx \(tmpName)",
        { io_uring_prep_statx($0, dirfd, cString(tmpName), AT_SYMLINK_NOFOLLOW,
                              UInt32(STATX_NLINK | STATX_SIZE | STATX_BLOCKS), statxBuffer) }),
    (107, IOSQE_IO_LINK, "close the file's fd",
        { io_uring_prep_close($0, fd) }),
    (108, IOSQE_IO_LINK, "mkdirat \(dirName)",
        { io_uring_prep_mkdirat($0, dirfd, cString(dirName), 0o755) }),
    (109, IOSQE_IO_LINK, "renameat \(tmpName) -> \(fileName) NOREPLACE",
        { io_uring_prep_renameat($0, dirfd, cString(tmpName), dirfd, cString(fileName), UInt32(RENAME_NOREPLACE)) }),
    (110, IOSQE_IO_LINK, "linkat \(fileName) -> \(hardlinkName)",
        { io_uring_prep_linkat($0, dirfd, cString(fileName), dirfd, cString(hardlinkName), 0) }),
    (111, 0, "symlinkat \(symlinkName) -> \(symlinkTarget)",  // the last link: no flag, the chain ends
        { io_uring_prep_symlinkat($0, cString(symlinkTarget), dirfd, cString(symlinkName)) }),
]

if fd >= 0 {
    print("one chain of \(chain.count) linked requests:")
    queue(chain)
    let submitted = io_uring_submit_and_wait(ring, UInt32(chain.count))  // one io_uring_enter
    print("io_uring_submit_and_wait = \(describe(res: submitted))")
    checkSubmit(submitted, chain.count)
    reap(chain.count)

    // Did the first failure break the chain? Counted from the CQEs, not assumed.
    if let failed = chain.firstIndex(where: { results[$0.userData, default: -1] < 0 }), failed + 1 < chain.count {
        let later = chain[(failed + 1)...]
        let ran = later.filter { results[$0.userData] != -ECANCELED }.count
        print("\(chain[failed].name) failed" + (ran == 0 ? ": the \(later.count) links after it were cancelled"
            : ", yet \(ran) of the \(later.count) links after it ran: this kernel did not break the chain there"))
    }

    // statx's answer is in our buffer once its CQE has arrived with res 0; stx_mask says which
    // fields the kernel filled in.
    let answer = statxBuffer.pointee
    if results[106] == 0 && answer.stx_mask & UInt32(STATX_SIZE) != 0 {
        print("statx: stx_size=\(answer.stx_size) stx_nlink=\(answer.stx_nlink) stx_blocks=\(answer.stx_blocks) "
            + "(512-byte blocks allocated)")
    } else if results[106] == 0 {
        print("statx: the kernel did not fill in stx_size (stx_mask=0x\(String(answer.stx_mask, radix: 16)))")
    }
    _ = listing("listing after the chain:")
}

// The chain has completed (every CQE is in), so the kernel is done with the buffers.
statxBuffer.deallocate()
writeBuffer.deallocate()

// MARK: - 7. Cleaning up: exactly what we created, through the ring
//
// What exists is not the same as what is ours: had someone created `uring-os` after section
// 4's check, mkdirat failed with -EEXIST and that directory must stay, with whatever it held.
// So the cleanup goes by the CQEs: each request that succeeded created one name (none of them
// can have replaced one), and that is what gets removed, newest first; plus a close of the
// file's fd if the chain's close never ran (-ECANCELED), and last the close of the directory
// fd. (A close that ran and failed is not retried: Linux releases the fd even when close
// reports an error, and a second close could hit an fd opened since.) They go as one chain
// with IOSQE_IO_HARDLINK: the order is kept (the directory is removed after the files in it)
// but a failed step does not cancel the rest.

print("cleanup, one chain with IOSQE_IO_HARDLINK:")
var cleanup: [Step] = []
if fd >= 0 && results[107] == -ECANCELED {
    cleanup.append((201, IOSQE_IO_HARDLINK, "close the file's fd", { io_uring_prep_close($0, fd) }))
}
let removals: [(created: Bool, userData: UInt64, name: String, flags: Int32)] = [
    (results[111] == 0, 202, symlinkName, 0),                  // symlinkat made it
    (results[110] == 0, 203, hardlinkName, 0),                 // linkat
    (results[109] == 0, 204, fileName, 0),                     // renameat
    (fd >= 0 && results[109] != 0, 205, tmpName, 0),           // openat, and it was not renamed
    (results[108] == 0, 206, dirName, AT_REMOVEDIR),           // mkdirat: rmdir, once it is empty
]
for removal in removals where removal.created {
    let name = "unlinkat \(removal.name)" + (removal.flags == 0 ? "" : " AT_REMOVEDIR")
    cleanup.append((removal.userData, IOSQE_IO_HARDLINK, name,
                    { io_uring_prep_unlinkat($0, dirfd, cString(removal.name), removal.flags) }))
}
cleanup.append((207, 0, "close the directory fd", { io_uring_prep_close($0, dirfd) }))

queue(cleanup)
let submitted = io_uring_submit_and_wait(ring, UInt32(cleanup.count))
print("io_uring_submit_and_wait = \(describe(res: submitted))")
checkSubmit(submitted, cleanup.count)
reap(cleanup.count)

// Every CQE of every chain has arrived: the kernel is done with the paths.
for copy in cStrings { free(copy) }
destroyRing(ring)

// MARK: - 8. Is the directory as we found it?
//
// As far as the lesson's names go: none of them existed before (section 4), and none may be
// left. DIR's own mtime and ctime do change, since names were added to it and removed. A step that
// failed is the lesson's failure too, reported once the directory is restored.

let after = listing("listing after cleanup:").map(\.line), found = before.map(\.line)
print("listing after cleanup equals listing before: \(after == found ? "yes" : "no")")
if after != found {
    fail("\(directory) differs from before: \(Set(after).symmetricDifference(found).sorted().joined(separator: "; "))")
}
if fd < 0 {
    fail("openat \(tmpName) completed with res=\(describe(res: fd)); \(directory) is as it was")
}
if let failed = chain.first(where: { results[$0.userData, default: -1] < 0 }) {
    fail("\(failed.name) completed with res=\(describe(res: results[failed.userData] ?? 0)); \(directory) is as it was")
}
