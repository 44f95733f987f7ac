// Lesson 30: direct descriptors
//
// Lesson 13 registered files that already had fds: open(2) first, then register, then close
// the fd. A *direct descriptor* never has an fd at all. The request that makes the file (an
// openat, a socket, an accept) puts it straight into a slot of the ring's fixed file table,
// and the process's fd table never sees it. With IORING_FILE_INDEX_ALLOC the kernel picks a
// free slot and the CQE's res is that slot (with a slot you name, res is 0). From then on
// the slot is used like lesson 13's, with IOSQE_FIXED_FILE, and IORING_OP_CLOSE with a slot
// (io_uring_prep_close_direct) empties it.
//
// This lesson makes a listening socket in slot 0 of a sparse table of 8, has the kernel
// allocate only from slots 2 to 4, opens a file, makes a client socket and accepts a
// connection, all into slots; reads the file and sends "ping" and "pong" through the slots;
// fills the range until -ENFILE; closes every slot. /proc/self/fd, listed before, in the
// middle and after, shows no new fd. Last, a trap in liburing 2.3 that makes a regular fd
// after all (2.4 fixed it), and the list that catches it.
//
// Read next: man 3 io_uring_prep_openat_direct, man 3 io_uring_prep_socket_direct_alloc,
// man 3 io_uring_prep_accept_direct, man 3 io_uring_register_file_alloc_range,
// man 3 io_uring_prep_close_direct, man 3 io_uring_register_files_sparse.

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-30-direct-descriptors", max: 0)

// MARK: - 1. A ring, the opcodes, and the fds before
//
// Direct openat, socket and accept with IORING_FILE_INDEX_ALLOC are Linux 5.19 (as is the
// socket op itself); the allocation range is 6.0. BIND and LISTEN (6.11) are probed: without
// them a listening socket needs bind(2) and listen(2), which need an fd (section 3).
//
// user_data: 30 for the lesson, then 01-09 the file, 1x the listener, 2x the client and the
// connection, 3x the full range, 4x closing slot x, 5x after the closes, 6x the trap.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_OPENAT, IORING_OP_READ, IORING_OP_SOCKET, IORING_OP_ACCEPT,
               IORING_OP_CONNECT, IORING_OP_SEND, IORING_OP_RECV, IORING_OP_CLOSE)
let probe = io_uring_get_probe_ring(ring)
let bindInRing = probe != nil && io_uring_opcode_supported(probe, LAB_IORING_OP_BIND) != 0
    && io_uring_opcode_supported(probe, LAB_IORING_OP_LISTEN) != 0
io_uring_free_probe(probe)

let path = makeTempFile(named: "data.txt", contents: Array("read through slot 2\n".utf8))  // open(2)+close(2), now

/// The fds this process has open now, from /proc/self/fd: number -> what it is (readlink).
/// opendir(3) needs an fd of its own to read the directory; it is left out.
func openFds() -> [Int32: String] {
    guard let dir = opendir("/proc/self/fd") else { fail("cannot open /proc/self/fd: \(describe(res: -errno))") }
    defer { closedir(dir) }
    var fds: [Int32: String] = [:]
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard let fd = Int32(name), fd != dirfd(dir) else { continue }
        var target = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        fds[fd] = length < 0 ? "?" : String(decoding: target[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
    return fds
}
let fdsBefore = openFds()
print("/proc/self/fd before the first slot: \(fdsBefore.count) fds")

/// List /proc/self/fd again, and name every fd that was not there before.
func printNewFds(_ when: String, before: [Int32: String]) {
    let now = openFds()
    let new = now.keys.filter { before[$0] != now[$0] }.sorted().map { fd in
        "fd \(fd) (\(now[fd]!.hasPrefix("socket:") ? "a socket" : String(now[fd]!.split(separator: "/").last ?? "")))"
    }
    print("/proc/self/fd \(when): \(now.count) fds, " + (new.isEmpty ? "no new fd" : "new: " + new.joined(separator: ", ")))
}

// MARK: - 2. A sparse table
//
// io_uring_register_files_sparse(ring, 8): eight empty slots (lesson 13), an io_uring_register(2)
// call, done when it returns (no CQE).

let tableSize: UInt32 = 8
let sparse = io_uring_register_files_sparse(ring, tableSize)
print("io_uring_register_files_sparse(\(tableSize)) = \(describe(res: sparse))")
guard sparse == 0 else { fail("io_uring_register_files_sparse returned \(describe(res: sparse))") }

/// The regular fd this lesson may hold (the listener, on a kernel before 6.11): closed before
/// a failure ends the lesson. Slots need no such care: the table goes with the ring.
nonisolated(unsafe) var regularListener: Int32 = -1  // one thread only; Swift 6 wants a word for a global var
func stop(_ message: String) -> Never {
    if regularListener >= 0 { close(regularListener) }
    fail(message)
}

func prepare(_ ring: Ring, _ userData: UInt64, fixed: Bool = false, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    let sqe = getSQE(ring)
    prep(sqe)
    if fixed { io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE) }  // the fd field is a slot
    io_uring_sqe_set_data64(sqe, userData)
}
/// Submit what is prepared and wait for `count` CQEs (5 s at most each), sorted by user_data.
func submitAndWait(_ ring: Ring, _ count: Int) -> [io_uring_cqe] {
    checkSubmit(io_uring_submit(ring), count)
    return (0..<count).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
}
func request(_ ring: Ring, _ label: String, _ userData: UInt64, fixed: Bool = false, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) -> Int32 {
    prepare(ring, userData, fixed: fixed, prep)
    let cqe = submitAndWait(ring, 1)[0]
    printCQE(cqe, label)
    return cqe.res
}

// MARK: - 3. A listening socket in a slot we name
//
// io_uring_prep_socket_direct with file_index 0 puts the socket in slot 0, a slot we name
// (section 4 keeps it out of the kernel's allocations). Its CQE says 0, not the slot.
// A socket in a slot has no fd, so no system call can reach it: bind(2), listen(2) and
// getsockname(2) all take an fd. IORING_OP_BIND and IORING_OP_LISTEN (Linux 6.11) take a
// slot with IOSQE_FIXED_FILE. With no getsockname in io_uring (it comes in Linux 6.19) we
// could not learn which port the kernel picked for port 0, so the lesson chooses one, from
// 20000 to 31999 (below the kernel's ephemeral ports), and tries the next while BIND says
// -EADDRINUSE; only the bind that succeeded is printed. A kernel before 6.11 cannot bind a
// slot at all: there the listener is a regular fd, made by LabNet's listenOnLoopback with
// bind(2) and listen(2), and section 7 catches it.

let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)  // read by BIND and CONNECT
address.initialize(to: loopbackAddress(port: 0))
let listenerSlot: Int32 = 0
if bindInRing {
    let made = request(ring, "socket_direct (slot 0)", 3010) {
        io_uring_prep_socket_direct($0, AF_INET, Int32(SOCK_STREAM.rawValue), 0, UInt32(listenerSlot), 0)
    }
    guard made == 0 else { stop("socket_direct returned \(describe(res: made))") }
    var port = UInt16(20000 + Int(getpid()) * 7919 % 12000), bound = io_uring_cqe(), tries = 0
    repeat {
        if tries > 0 { port = 20000 + (port - 20000 + 1) % 12000 }  // the last one was in use
        address.pointee = loopbackAddress(port: port)
        prepare(ring, 3011, fixed: true) {
            io_uring_prep_rw(LAB_IORING_OP_BIND, $0, listenerSlot, address, 0, UInt64(MemoryLayout<sockaddr_in>.size))
        }
        bound = submitAndWait(ring, 1)[0]
        tries += 1
    } while bound.res == -EADDRINUSE && tries < 100
    printCQE(bound, "bind slot 0 to 127.0.0.1:\(port)")
    guard bound.res == 0 else { stop("IORING_OP_BIND returned \(describe(res: bound.res))") }
    let listening = request(ring, "listen slot 0", 3012, fixed: true) { io_uring_prep_rw(LAB_IORING_OP_LISTEN, $0, listenerSlot, nil, 16, 0) }
    guard listening == 0 else { stop("IORING_OP_LISTEN returned \(describe(res: listening))") }
} else {
    let (fd, port, how) = listenOnLoopback(ring, port: 0)
    regularListener = fd
    address.pointee = loopbackAddress(port: port)
    print("listening on 127.0.0.1:\(port) with a regular fd, \(fd): \(how)")
}

// MARK: - 4. The range the kernel may allocate from
//
// A request with IORING_FILE_INDEX_ALLOC takes a free slot the kernel picks; by default any
// slot of the table. io_uring_register_file_alloc_range(ring, 2, 3) narrows that to slots 2, 3
// and 4: 0 and 1 stay for requests that name their slot, 5 to 7 are unused. It is registered
// after the listener on purpose: the kernel searches from a hint, the slot after the last one
// filled, and before Linux commit a6bded921ed3 (February 2026) naming slot 0 moved the hint
// to 1, outside the range, and the next allocation got slot 1. Registering a range resets the
// hint to its start, so this order gives the same slots with or without that fix.

let (rangeOffset, rangeLength): (UInt32, UInt32) = (2, 3)
let range = io_uring_register_file_alloc_range(ring, rangeOffset, rangeLength)
print("io_uring_register_file_alloc_range(offset \(rangeOffset), length \(rangeLength)) = \(describe(res: range))")
if range == -EINVAL && rangeOffset + rangeLength > tableSize {  // our mistake, not the kernel's age
    stop("the range \(rangeOffset)..<\(rangeOffset + rangeLength) does not fit in the table's \(tableSize) slots (-EINVAL)")
} else if range == -EINVAL {  // what a kernel without the register opcode says
    if regularListener >= 0 { close(regularListener) }
    skip("io_uring_register_file_alloc_range returned -EINVAL: this kernel has no IORING_REGISTER_FILE_ALLOC_RANGE (added in Linux 6.0)")
}
guard range == 0 else { stop("io_uring_register_file_alloc_range returned \(describe(res: range))") }

// MARK: - 5. A file opened into a slot
//
// liburing 2.3's helpers store file_index + 1 in the SQE (0 there means "no slot"), and the
// kernel's IORING_FILE_INDEX_ALLOC is ~0: so the value to pass for "allocate" is
// IORING_FILE_INDEX_ALLOC - 1, as liburing's own socket_direct_alloc does (section 9 shows
// what passing IORING_FILE_INDEX_ALLOC itself does here). O_CLOEXEC is refused with a slot
// (-EINVAL): a slot is not inherited by exec in the first place. The path is copied by the
// kernel when it takes the SQE; Swift's String-to-pointer conversion lasts for the prep call
// only, so it lives on the heap until the CQE, as every pointer in an SQE does in this lab.

let cPath = strdup(path)!
let fileSlot = request(ring, "openat_direct (IORING_FILE_INDEX_ALLOC)", 3001) {
    io_uring_prep_openat_direct($0, AT_FDCWD, cPath, O_RDONLY, 0, IORING_FILE_INDEX_ALLOC - 1)
}
free(cPath)
guard fileSlot >= 0 else { stop("openat_direct returned \(describe(res: fileSlot))") }

let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
let read = request(ring, "read slot \(fileSlot)", 3002, fixed: true) {
    io_uring_prep_read($0, fileSlot, buffer.baseAddress, UInt32(buffer.count), 0)
}
if read > 0 { print("  " + quoted(buffer.prefix(Int(read)))) }

// MARK: - 6. A client socket and an accepted connection, in slots the kernel picks
//
// io_uring_prep_socket_direct_alloc: a socket in a slot the kernel picks (res = the slot).
// io_uring_prep_accept_direct(sqe, listener, nil, nil, 0, IORING_FILE_INDEX_ALLOC - 1): the
// connection it accepts goes into a slot the kernel picks; the listener itself is slot 0 with
// IOSQE_FIXED_FILE (or the regular fd, without the flag). The accept is submitted with the
// connect, waits in the kernel until the connection is there, and both CQEs are printed by
// user_data. Then two messages, each sent through one slot and received through another.

let clientSlot = request(ring, "socket_direct_alloc (the client)", 3020) {
    io_uring_prep_socket_direct_alloc($0, AF_INET, Int32(SOCK_STREAM.rawValue), 0, 0)
}
guard clientSlot >= 0 else { stop("socket_direct_alloc returned \(describe(res: clientSlot))") }
let listener = regularListener >= 0 ? regularListener : listenerSlot
prepare(ring, 3021, fixed: regularListener < 0) { io_uring_prep_accept_direct($0, listener, nil, nil, 0, IORING_FILE_INDEX_ALLOC - 1) }
let sockaddrPointer = UnsafeMutableRawPointer(address).assumingMemoryBound(to: sockaddr.self)
prepare(ring, 3022, fixed: true) { io_uring_prep_connect($0, clientSlot, sockaddrPointer, socklen_t(MemoryLayout<sockaddr_in>.size)) }
let pair = submitAndWait(ring, 2)
printCQE(pair[0], "accept_direct (IORING_FILE_INDEX_ALLOC)")
printCQE(pair[1], "connect slot \(clientSlot)")
let connectionSlot = pair[0].res
guard connectionSlot >= 0, pair[1].res == 0 else { stop("the loopback connection failed") }

/// Send `text` through slot `from`, receive it through slot `to`, print both CQEs and the bytes.
func exchange(_ ring: Ring, _ text: String, from: Int32, to: Int32, _ userData: UInt64) {
    let message = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 16)
    defer { message.deallocate() }  // after both CQEs
    let bytes = Array(text.utf8)
    message.copyBytes(from: bytes)
    let sent = request(ring, "send \(quoted(bytes)) through slot \(from)", userData, fixed: true) {
        io_uring_prep_send($0, from, message.baseAddress, bytes.count, 0)
    }
    guard sent == bytes.count else { stop("send returned \(describe(res: sent))") }
    message.initializeMemory(as: UInt8.self, repeating: 0)
    let received = request(ring, "recv through slot \(to)", userData + 1, fixed: true) {
        io_uring_prep_recv($0, to, message.baseAddress, message.count, 0)
    }
    if received > 0 { print("  " + quoted(message.prefix(Int(received)))) }
}
exchange(ring, "ping", from: clientSlot, to: connectionSlot, 3023)
exchange(ring, "pong", from: connectionSlot, to: clientSlot, 3025)

// MARK: - 7. The proof, while the slots are live
//
// A file, a listener and both ends of a connection are open in the ring's table, and
// /proc/self/fd lists the same fds as before (on a kernel before 6.11, one more: the listener).

let liveSlots = (regularListener < 0 ? [listenerSlot] : []) + [fileSlot, clientSlot, connectionSlot]
printNewFds("with \(liveSlots.count) files in slots \(liveSlots.map(String.init).joined(separator: ", "))", before: fdsBefore)

// MARK: - 8. A full range, close_direct, and a slot used again
//
// Slots 2, 3 and 4 are taken, so the next allocation fails with -ENFILE ("too many open
// files in system"), though slots 1, 5, 6 and 7 are empty: the kernel allocates only from the
// range. io_uring_prep_close_direct(sqe, slot) is IORING_OP_CLOSE with the slot in file_index:
// it empties the slot and drops the table's reference to the file (for these sockets, the last
// one: they close). The allocation after a close takes the slot just freed. An empty slot
// answers -EBADF, to a read or to a second close_direct alike.

_ = request(ring, "socket_direct_alloc (range full)", 3030) { io_uring_prep_socket_direct_alloc($0, AF_INET, Int32(SOCK_STREAM.rawValue), 0, 0) }
_ = request(ring, "close_direct slot \(fileSlot) (the file)", 3041) { io_uring_prep_close_direct($0, UInt32(fileSlot)) }
let again = request(ring, "socket_direct_alloc (after that close)", 3031) {
    io_uring_prep_socket_direct_alloc($0, AF_INET, Int32(SOCK_STREAM.rawValue), 0, 0)
}
var closes: [(userData: UInt64, slot: Int32, what: String)] = [(3042, again, "the new socket"), (3043, clientSlot, "the client"),
                                                               (3044, connectionSlot, "the connection")]
if regularListener < 0 { closes.append((3045, listenerSlot, "the listener")) }
for (userData, slot, what) in closes where slot >= 0 {
    _ = request(ring, "close_direct slot \(slot) (\(what))", userData) { io_uring_prep_close_direct($0, UInt32(slot)) }
}
_ = request(ring, "read slot \(fileSlot) (closed)", 3050, fixed: true) {
    io_uring_prep_read($0, fileSlot, buffer.baseAddress, UInt32(buffer.count), 0)
}
_ = request(ring, "close_direct slot \(fileSlot) again", 3051) { io_uring_prep_close_direct($0, UInt32(fileSlot)) }
if regularListener >= 0 { print("close(\(regularListener)) (the regular listener) = \(close(regularListener))"); regularListener = -1 }
printNewFds("after the closes", before: fdsBefore)

// MARK: - 9. The trap: IORING_FILE_INDEX_ALLOC itself, in liburing 2.3
//
// The man page of io_uring_prep_openat_direct says to pass IORING_FILE_INDEX_ALLOC. liburing
// 2.3 adds 1 to it, as to any slot, and ~0 + 1 is 0: "no slot". The kernel sees a plain
// openat and returns a regular fd, a small number that looks like a slot. liburing 2.4 checks
// for the value first (commit 4fed7951) and stores ~0; with 2.3, pass IORING_FILE_INDEX_ALLOC
// - 1. What the helper wrote in file_index, not the number in res, says what res is: an fd
// (0), which /proc/self/fd catches, or a slot (~0), which close(2) must not touch (the same
// number may be an fd of ours): close_direct empties it.

let trapPath = strdup(path)!
var written: UInt32 = 0
prepare(ring, 3060) {
    io_uring_prep_openat_direct($0, AT_FDCWD, trapPath, O_RDONLY, 0, IORING_FILE_INDEX_ALLOC)
    written = $0.pointee.file_index
}
print("io_uring_prep_openat_direct(..., IORING_FILE_INDEX_ALLOC) wrote file_index=\(written) into the SQE")
let trap = submitAndWait(ring, 1)[0]
free(trapPath)
printCQE(trap, "openat_direct (IORING_FILE_INDEX_ALLOC itself)")
printNewFds("after it", before: fdsBefore)
if written == 0 {
    if trap.res >= 0 { print("close(\(trap.res)) = \(close(trap.res)): it was a regular fd") }
} else if trap.res >= 0 {  // liburing 2.4 or later: no trap, res is a slot
    _ = request(ring, "close_direct slot \(trap.res) (this liburing passed ALLOC on: a slot)", 3061) {
        io_uring_prep_close_direct($0, UInt32(trap.res))
    }
}

buffer.deallocate()
address.deallocate()
print("io_uring_unregister_files = \(describe(res: io_uring_unregister_files(ring)))")
destroyRing(ring)
