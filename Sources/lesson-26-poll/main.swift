// Lesson 26: poll
//
// IORING_OP_POLL_ADD asks the kernel "tell me when this fd is ready", as poll(2) does, without
// blocking a thread: the request waits on the file's wait queue, and its CQE carries the ready
// events as a poll(2) mask in res (POLLIN = 1, POLLOUT = 4, ...). It reads nothing and writes
// nothing; what to do about the readiness is yours. A one-shot poll posts one CQE. A multishot
// poll (Linux 5.13) posts one per wakeup, each with IORING_CQE_F_MORE, until something ends it.
// IORING_OP_POLL_REMOVE removes a pending poll, or (5.13) updates its mask and user_data.
//
// This lesson polls a pipe and a TCP connection in the states a program meets (empty, filled,
// the other end closed) and prints each mask by name; then a multishot poll and its end, an
// update and a remove; and what "fast poll" means: a recv on an empty socket waits on the same
// kind of poll, armed by the kernel for it.
//
// Read next: man 3 io_uring_prep_poll_add (also io_uring_prep_poll_multishot),
// man 3 io_uring_prep_poll_update, man 3 io_uring_prep_poll_remove, man 2 poll,
// man 2 io_uring_enter (IORING_OP_POLL_ADD, IORING_OP_POLL_REMOVE).

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-26-poll", max: 0)

// MARK: - 1. The ring, and how the lesson prints

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_POLL_ADD, IORING_OP_POLL_REMOVE, IORING_OP_RECV)

/// The fds this lesson holds, closed by a failure or a skip before it ends the lesson.
nonisolated(unsafe) var heldFds: [Int32] = []  // one thread only; Swift 6 wants a word for a global var
func stop(_ message: String, skipping: Bool = false) -> Never {
    for fd in heldFds { close(fd) }
    if skipping { skip(message) } else { fail(message) }
}
func closeFd(_ fd: Int32) { close(fd); heldFds.removeAll { $0 == fd } }

// The poll(2) bits (man 2 poll). POLLRDHUP needs _GNU_SOURCE in C, so Swift's Glibc module has
// no name for it: the lab's shim gives it (0x2000, the kernel's EPOLLRDHUP).
let pollBits: [(Int32, String)] = [
    (POLLIN, "POLLIN"), (POLLPRI, "POLLPRI"), (POLLOUT, "POLLOUT"), (POLLERR, "POLLERR"), (POLLHUP, "POLLHUP"),
    (POLLNVAL, "POLLNVAL"), (POLLRDNORM, "POLLRDNORM"), (POLLRDBAND, "POLLRDBAND"), (POLLWRNORM, "POLLWRNORM"),
    (POLLWRBAND, "POLLWRBAND"), (POLLRDHUP, "POLLRDHUP"),
]
/// A poll mask by name: `POLLIN|POLLRDHUP`; `0` for none.
func maskName(_ mask: Int32) -> String {
    let names = pollBits.filter { mask & $0.0 != 0 }.map(\.1)
    return names.isEmpty ? "0" : names.joined(separator: "|")
}

/// Take an SQE, fill it, give it `userData`, and submit it alone. (@MainActor here and below:
/// these functions use the lesson's top-level `ring`, which Swift 6 gives to the main actor.)
@MainActor func submit(_ userData: UInt64, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    let sqe = getSQE(ring)
    prep(sqe)
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)
}
@MainActor func pollAdd(_ userData: UInt64, _ fd: Int32, _ mask: Int32) {
    submit(userData) { io_uring_prep_poll_add($0, fd, UInt32(mask)) }
}

/// A CQE line, with the mask named when res is one: `... res=17 flags=0 = POLLIN|POLLHUP`.
func show(_ label: String, _ cqe: io_uring_cqe) {
    print("\(label): \(format(cqe))" + (cqe.res > 0 ? " = \(maskName(cqe.res))" : ""))
}
/// The next CQE, waited for `seconds` at most: nil if none came by then. (Not LabSupport's
/// waitCQE: a lesson that stops must close its fds first.)
@MainActor func nextCQE(within seconds: Int64 = 5) -> io_uring_cqe? {
    var cqe: UnsafeMutablePointer<io_uring_cqe>?, limit = __kernel_timespec(tv_sec: seconds, tv_nsec: 0)
    let ret = io_uring_wait_cqe_timeout(ring, &cqe, &limit)
    if ret == -ETIME { return nil }
    guard ret == 0, let cqe else { stop("io_uring_wait_cqe_timeout returned \(describe(res: ret))") }
    defer { io_uring_cqe_seen(ring, cqe) }
    return cqe.pointee
}
@MainActor func waitNext() -> io_uring_cqe {  // which must come within 5 s
    if let cqe = nextCQE() { return cqe } else { stop("io_uring_wait_cqe_timeout: no completion within 5 s") }
}
/// The CQE that must be `userData`'s, waited for (5 s at most).
@MainActor func expect(_ userData: UInt64) -> io_uring_cqe {
    let cqe = waitNext()
    guard cqe.user_data == userData else { stop("expected a CQE for user_data=\(userData), got \(format(cqe))") }
    return cqe
}
/// What io_uring_peek_cqe says now, without waiting: -EAGAIN when the CQ is empty.
@MainActor func peek() -> String {
    var cqe: UnsafeMutablePointer<io_uring_cqe>?
    let ret = io_uring_peek_cqe(ring, &cqe)
    return "io_uring_peek_cqe = " + (ret == 0 ? "a CQE: " + format(cqe!.pointee) : describe(res: ret))
}
/// A poll that is ready when the kernel takes it completes during the submit: its CQE is in the
/// CQ when io_uring_submit returns. Peek (no wait) for it, and fail if it is not there.
@MainActor func alreadyThere(_ userData: UInt64) -> io_uring_cqe {
    var cqe: UnsafeMutablePointer<io_uring_cqe>?
    guard io_uring_peek_cqe(ring, &cqe) == 0, let cqe, cqe.pointee.user_data == userData else {
        stop("no CQE for user_data=\(userData) when io_uring_submit returned: \(peek())")
    }
    defer { io_uring_cqe_seen(ring, cqe) }
    return cqe.pointee
}

func makePipe() -> (read: Int32, write: Int32) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { stop("pipe: \(describe(res: -errno))") }
    heldFds += fds
    return (fds[0], fds[1])
}
func writeByte(_ fd: Int32) {
    var byte = UInt8(ascii: "x")
    guard write(fd, &byte, 1) == 1 else { stop("write: \(describe(res: -errno))") }
}
/// What poll(2) itself says about `fd` for `events`, at once (timeout 0).
func pollNow(_ fd: Int32, _ events: Int32) -> String {
    var entry = pollfd(fd: fd, events: Int16(events), revents: 0)
    let ret = poll(&entry, 1, 0)
    return ret < 0 ? describe(res: -errno) : maskName(Int32(entry.revents))
}

// MARK: - 2. One-shot polls on a pipe
//
// io_uring_prep_poll_add(sqe, fd, mask) fills an IORING_OP_POLL_ADD SQE with the events wanted
// (sqe->poll32_events). If the fd is ready when the kernel takes the SQE, the CQE comes at once;
// if not, the request waits on the file's wait queue, no thread involved, until a wakeup brings
// one of the events. res is then the mask: the events asked for that are ready, plus the ones
// the kernel always reports, asked or not. Which those are, this section and the next show.

print("one-shot polls on a pipe")
let pipe1 = makePipe()
pollAdd(2611, pipe1.read, POLLIN)
print("poll POLLIN on the empty read end (user_data=2611): \(peek())")
writeByte(pipe1.write)
show("write(2) of 1 byte wakes it", expect(2611))
pollAdd(2612, pipe1.read, POLLIN)
show("poll POLLIN, 1 byte in the pipe, in the CQ at once", alreadyThere(2612))
pollAdd(2613, pipe1.read, POLLIN | POLLRDNORM)
show("poll POLLIN|POLLRDNORM, the same", alreadyThere(2613))
pollAdd(2614, pipe1.write, POLLOUT)
show("poll POLLOUT on the write end", alreadyThere(2614))
closeFd(pipe1.write)
print("close(2) of the write end, 1 byte still in the pipe")
pollAdd(2615, pipe1.read, POLLIN)
show("poll POLLIN on the read end", alreadyThere(2615))
var byte: UInt8 = 0
guard read(pipe1.read, &byte, 1) == 1 else { stop("read: \(describe(res: -errno))") }
print("read(2) of the last byte")
pollAdd(2616, pipe1.read, POLLIN)
show("poll POLLIN on the read end", alreadyThere(2616))
closeFd(pipe1.read)

let pipe2 = makePipe()
closeFd(pipe2.read)
pollAdd(2617, pipe2.write, POLLOUT)
show("a pipe whose read end is closed: poll POLLOUT on its write end", alreadyThere(2617))
closeFd(pipe2.write)

// A closed fd: poll(2) answers POLLNVAL for it; a request finds no file and fails.
pollAdd(2618, pipe2.write, POLLIN)
show("poll POLLIN on fd \(pipe2.write), just closed", alreadyThere(2618))
print("  poll(2) on the same fd: revents = \(pollNow(pipe2.write, POLLIN))")

// MARK: - 3. One-shot polls on a TCP connection
//
// A connection on 127.0.0.1 made with plain calls (the sockets are not the subject here):
// server end S, client end C. TCP's poll says POLLHUP only when the socket is shut down in both
// directions, or closed (never connected, or reset); a peer's close is half of that: POLLRDHUP
// ("peer closed connection, or shut down writing half of connection", man 2 poll), with POLLIN,
// since a read now returns 0 at once.
// io_uring reports POLLRDHUP to this poll for input, unasked, as it reports POLLERR and POLLHUP
// to any poll; poll(2) reports it only when asked.

let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
guard listener >= 0 else { stop("socket: \(describe(res: -errno))") }
heldFds.append(listener)
var address = loopbackAddress(port: 0)
let listening = withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
} == 0 && listen(listener, 4) == 0
guard listening else { stop("cannot listen on 127.0.0.1: \(describe(res: -errno))") }

/// A new connection through the listener: (S, C).
@MainActor func connection() -> (server: Int32, client: Int32) {
    let client = plainConnection(port: localPort(listener))
    guard client >= 0 else { stop("connect to 127.0.0.1: \(describe(res: client))") }
    heldFds.append(client)
    let server = accept(listener, nil, nil)
    guard server >= 0 else { stop("accept: \(describe(res: -errno))") }
    heldFds.append(server)
    return (server, client)
}

print("one-shot polls on a TCP connection (server end S, client end C, on 127.0.0.1)")
let tcp = connection()
pollAdd(2621, tcp.server, POLLOUT)
show("poll POLLOUT on S", alreadyThere(2621))
pollAdd(2622, tcp.server, POLLIN)
print("poll POLLIN on S, nothing sent (user_data=2622): \(peek())")
closeFd(tcp.client)
show("close(2) of C: its FIN wakes the poll", expect(2622))
print("  poll(2) on S with events POLLIN: revents = \(pollNow(tcp.server, POLLIN))")
shutdown(tcp.server, Int32(SHUT_WR))
pollAdd(2623, tcp.server, POLLIN)
show("after shutdown(S, SHUT_WR), both directions shut: poll POLLIN on S", alreadyThere(2623))
closeFd(tcp.server)

// MARK: - 4. A multishot poll, and its end
//
// io_uring_prep_poll_multishot is poll_add with IORING_POLL_ADD_MULTI in sqe->len (5.13). It
// stays armed and posts a CQE, with F_MORE, for every wakeup of the file that brings an event
// it waits for: three writes, three CQEs, though nobody reads. It reports wakeups, not state:
// bytes lying unread bring no further CQE. A hangup does not end it either (the CQE after the
// close still has F_MORE). A CQE without F_MORE is its last; here poll_remove ends it:
// io_uring_prep_poll_remove(sqe, user_data) finds the poll by user_data; its own CQE says 0
// (-ENOENT if no poll has it, -EALREADY if it is completing just then), the poll's last CQE
// -ECANCELED. (A full CQ ends it too, as lesson 19 showed for accept.)

print("a multishot poll")
let pipe3 = makePipe()
submit(2631) { io_uring_prep_poll_multishot($0, pipe3.read, UInt32(POLLIN)) }
print("poll_multishot POLLIN on an empty pipe (user_data=2631): \(peek())")
for n in 1...3 {
    writeByte(pipe3.write)
    let cqe = expect(2631)
    if n == 1 && cqe.res == -EINVAL { stop("this kernel does not support IORING_POLL_ADD_MULTI (added in Linux 5.13)", skipping: true) }
    show("write \(n)", cqe)
}
print("3 bytes unread, no new write: \(peek())")
closeFd(pipe3.write)
show("close(2) of the write end", expect(2631))
submit(2632) { io_uring_prep_poll_remove($0, 2631) }
let ended = (0..<2).map { _ in waitNext() }.sorted { $0.user_data > $1.user_data }  // remove first
show("poll_remove user_data=2631", ended[0])
show("the multishot poll's last CQE", ended[1])
submit(2633) { io_uring_prep_poll_remove($0, 2631) }
show("poll_remove user_data=2631 again", expect(2633))
closeFd(pipe3.read)

// MARK: - 5. poll_update
//
// io_uring_prep_poll_update(sqe, old_user_data, new_user_data, mask, flags) is also
// IORING_OP_POLL_REMOVE, with flags in sqe->len: IORING_POLL_UPDATE_EVENTS replaces the mask,
// IORING_POLL_UPDATE_USER_DATA the user_data. The kernel takes the poll off its wait queue,
// changes it, and arms it again: if the new mask is ready at once, the poll completes at once,
// under its new user_data. (From 6.0 until the fix 84230ad2d2af, Dec 2025, that completion
// was lost: no CQE ever came. So the lesson waits 1 s for it, and says so if it did not come.)
// The update's own CQE says 0, or -ENOENT when no pending poll has old_user_data.

print("poll_update")
let tcp2 = connection()
pollAdd(2641, tcp2.server, POLLIN)
print("poll POLLIN on a new S, nothing sent (user_data=2641): \(peek())")
submit(2643) {
    io_uring_prep_poll_update($0, 2641, 2642, UInt32(POLLOUT), IORING_POLL_UPDATE_EVENTS | IORING_POLL_UPDATE_USER_DATA)
}
let updated = [waitNext()] + [nextCQE(within: 1)].compactMap { $0 }
for cqe in updated.sorted(by: { $0.user_data > $1.user_data }) {  // the update's first
    show(cqe.user_data == 2643 ? "poll_update of 2641 to POLLOUT, user_data 2642" : "  the updated poll", cqe)
}
if updated.count == 1 { print("  the updated poll: no CQE within 1 s: lost (a kernel without 84230ad2d2af)") }

let pipe4 = makePipe()
pollAdd(2644, pipe4.read, POLLIN)
submit(2646) { io_uring_prep_poll_update($0, 2644, 2645, 0, IORING_POLL_UPDATE_USER_DATA) }
show("poll POLLIN on an empty pipe (2644); poll_update of its user_data only, to 2645", expect(2646))
print("  the poll, still armed: \(peek())")
writeByte(pipe4.write)
show("  write(2) of 1 byte wakes it", expect(2645))
submit(2647) { io_uring_prep_poll_update($0, 2644, 2648, 0, IORING_POLL_UPDATE_USER_DATA) }
show("poll_update of 2644 again: no pending poll has that user_data", expect(2647))
closeFd(pipe4.read)
closeFd(pipe4.write)

// MARK: - 6. Fast poll, and when to poll yourself
//
// A recv on an empty socket does not go to a worker thread that would sleep in recv(2): the
// kernel tries it, finds no data, and arms a poll for it on the socket's wait queue, as for a
// POLL_ADD (lesson 17: "fast poll", IORING_FEAT_FAST_POLL, 5.7). The ring's fdinfo lists both
// kinds in its poll list. When data comes, the recv is retried and completes with the bytes;
// the POLL_ADD completes with POLLIN and the bytes stay in the socket. So a recv needs no poll
// of yours first; a poll is for code that does its own I/O on the fd (a TLS library, say).
// LabNet's `pollList(ring)` reads the fdinfo's poll list, `ioWorkers()` counts iou-wrk threads.

func send(_ text: String, _ fd: Int32) {
    let sent = Array(text.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    if sent != text.utf8.count { stop("send: \(describe(res: -errno))") }
}

print("fast poll")
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 1)  // the recv's, until its CQE
submit(2651) { io_uring_prep_recv($0, tcp2.server, buffer.baseAddress, buffer.count, 0) }
pollAdd(2652, tcp2.server, POLLIN)
print("recv (2651) and poll POLLIN (2652) on the empty S: \(peek())")
print("  the ring's poll list (fdinfo PollList): \(pollList(ring))")
print("  io-wq worker threads: \(ioWorkers())")
send("hello", tcp2.client)
for cqe in (0..<2).map({ _ in waitNext() }).sorted(by: { $0.user_data > $1.user_data }) {
    if cqe.user_data == 2651 {
        let bytes = cqe.res > 0 ? " " + quoted(buffer.prefix(Int(cqe.res))) : ""
        print("  C sends \"hello\": recv: \(format(cqe))\(bytes)")
    } else {
        show("  C sends \"hello\": poll", cqe)
    }
}
buffer.deallocate()
pollAdd(2653, tcp2.server, POLLIN)
print("poll POLLIN on S for code that does its own reads (2653): \(peek())")
send("for the library", tcp2.client)
show("  C sends \"for the library\": poll", expect(2653))
var library = [UInt8](repeating: 0, count: 64)
let got = recv(tcp2.server, &library, library.count, Int32(MSG_DONTWAIT))
print("  the library's own recv(2), MSG_DONTWAIT: " + (got < 0 ? describe(res: -errno) : "\(got) bytes \(quoted(library.prefix(got)))"))
closeFd(tcp2.client)
closeFd(tcp2.server)
closeFd(listener)
destroyRing(ring)
