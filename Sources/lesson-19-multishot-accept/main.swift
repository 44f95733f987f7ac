// Lesson 19: multishot accept
//
// A server's accept loop, as lesson 17 wrote it, is one accept request per connection: accept,
// wait for its CQE, submit the next. io_uring_prep_multishot_accept (Linux 5.19) is one request
// that stays armed: one SQE, and a CQE for every connection the listener takes, each with the
// new fd in res and IORING_CQE_F_MORE in flags, "more CQEs will come from this request". The
// CQE *without* F_MORE is its last: the request is over, and a server that wants more
// connections must submit a new one.
//
// This lesson arms one multishot accept and connects four clients through the ring (sockets
// and connects are requests too, so no threads are needed), then ends the multishot in the
// ways a server meets: closing the listening fd (which does not end it), cancelling it, and an
// error from the accept itself (a listener shut down under it).
//
// Read next: man 3 io_uring_prep_multishot_accept (on the io_uring_prep_accept page),
// man 3 io_uring_prep_cancel64, man 3 io_uring_prep_shutdown, man 2 io_uring_enter
// (IORING_CQE_F_MORE).

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-19-multishot-accept", max: 0)

// MARK: - 1. A ring and a listener
//
// listenOnLoopback (LabSupport) makes the listening socket as lesson 17 did, step by step:
// IORING_OP_SOCKET, then IORING_OP_BIND and IORING_OP_LISTEN (Linux 6.11) or, on an older
// kernel, bind(2) and listen(2). Port 0: the kernel picks a free port.
//
// Fixed user_data: 19 for the lesson, then 01 for the multishot accept and its helpers, 1n for
// client n's socket, 2n for its connect, 3n and 4n for closing it and its accepted fd, 5x for
// the second listener of section 5.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_ACCEPT, IORING_OP_SOCKET, IORING_OP_CONNECT, IORING_OP_ASYNC_CANCEL,
               IORING_OP_CLOSE, IORING_OP_SHUTDOWN)

/// The fds this lesson holds, closed by a failure before it ends the lesson.
nonisolated(unsafe) var heldFds: [Int32] = []  // one thread only; Swift 6 wants a word for a global var
func stop(_ message: String) -> Never {
    for fd in heldFds { close(fd) }
    fail(message)
}

let (listener, port, _) = listenOnLoopback(ring, port: 0)
heldFds.append(listener)
print("listening on 127.0.0.1:\(port)")

func prepare(_ ring: Ring, _ userData: UInt64, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    let sqe = getSQE(ring)
    prep(sqe)
    io_uring_sqe_set_data64(sqe, userData)
}

/// Submit `count` SQEs and wait for `cqes` CQEs (5 s at most each), sorted by user_data: CQEs
/// that arrive together come in no promised order, and the lesson prints the same every run.
func submitAndWait(_ ring: Ring, _ count: Int, cqes: Int) -> [io_uring_cqe] {
    checkSubmit(io_uring_submit(ring), count)
    return (0..<cqes).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
}

// The client sockets' address, on the heap until the last connect's CQE (the lab's rule).
let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
address.initialize(to: loopbackAddress(port: port))
let addressLength = socklen_t(MemoryLayout<sockaddr_in>.size)
let sockaddrPointer = UnsafeMutableRawPointer(address).assumingMemoryBound(to: sockaddr.self)

/// Make `clients` client sockets with IORING_OP_SOCKET, client n's user_data 1910 + n.
func makeClients(_ ring: Ring, _ clients: ClosedRange<Int>) -> [Int: Int32] {
    for n in clients {
        prepare(ring, 1910 + UInt64(n)) { io_uring_prep_socket($0, AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, 0) }
    }
    var fds: [Int: Int32] = [:]
    for cqe in submitAndWait(ring, clients.count, cqes: clients.count) {
        printCQE(cqe, "socket (client \(cqe.user_data - 1910))")
        guard cqe.res >= 0 else { stop("IORING_OP_SOCKET returned \(describe(res: cqe.res))") }
        fds[Int(cqe.user_data - 1910)] = cqe.res
        heldFds.append(cqe.res)
    }
    return fds
}

/// The port at the other end of a connected socket (getpeername(2)).
func peerPort(_ fd: Int32) -> UInt16 {
    var peer = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &peer) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) } }
    return UInt16(bigEndian: peer.sin_port)
}

// MARK: - 2. One SQE
//
// io_uring_prep_multishot_accept(sqe, fd, addr, addrlen, flags) is io_uring_prep_accept with
// IORING_ACCEPT_MULTISHOT in the SQE's ioprio field. We pass no address: every CQE of the
// request would write its peer's address into the same place, possibly before we had read the
// last one (the man page says so), so a multishot server asks each new socket with
// getpeername(2) if it needs to know. The one submit below is the only accept SQE of sections
// 2 to 4.

prepare(ring, 1901) { io_uring_prep_multishot_accept($0, listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue)) }
checkSubmit(io_uring_submit(ring), 1)
print("one SQE submitted: multishot accept on the listener, user_data=1901")

// MARK: - 3. Many CQEs
//
// Four clients connect, one after the other. Each connect is a request of its own, with a CQE
// of its own; the kernel completes the handshake for the listener, and the armed accept takes
// the connection: a CQE with user_data 1901, a new fd, and F_MORE. Which of the two CQEs comes
// first is not promised (on Linux 6.18, 6.12 and 6.1 it was the accept's, in every run, but a
// burst of connects comes out differently on 6.1: see the prose); the lesson waits for
// both and prints them in a fixed order, and checks with getpeername(2) that the accepted fd
// is the other end of this client's socket.

var clients = makeClients(ring, 1...4)
var accepted: [Int: Int32] = [:]  // client n -> the fd the accept gave its connection

/// Connect client `n` to `address` and wait for the CQEs: the connect's and, unless the connect
/// failed, one of the accept (user_data 1901). Print both; return the accept's.
func connectClient(_ ring: Ring, _ n: Int, _ clientFd: Int32, _ address: UnsafeMutablePointer<sockaddr>) -> io_uring_cqe? {
    prepare(ring, 1920 + UInt64(n)) { io_uring_prep_connect($0, clientFd, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    checkSubmit(io_uring_submit(ring), 1)
    let connect = waitCQE(ring, seconds: 5)
    let other = connect.user_data == 1920 + UInt64(n) && connect.res < 0 ? nil : waitCQE(ring, seconds: 5)
    let (connectCQE, acceptCQE) = connect.user_data == 1901 ? (other!, connect) : (connect, other)
    printCQE(connectCQE, "client \(n): connect")
    guard let acceptCQE else { return nil }
    guard acceptCQE.user_data == 1901, connectCQE.user_data == 1920 + UInt64(n) else {
        stop("unexpected CQEs: \(format(connectCQE)); \(format(acceptCQE))")
    }
    printCQE(acceptCQE, "client \(n): accept")
    if acceptCQE.res >= 0 {
        heldFds.append(acceptCQE.res)
        let whose = peerPort(acceptCQE.res) == localPort(clientFd) ? "client \(n)'s connection" : "NOT client \(n)'s connection"
        print("  fd \(acceptCQE.res) is \(whose)")
    }
    return acceptCQE
}

for n in 1...4 {
    let cqe = connectClient(ring, n, clients[n]!, sockaddrPointer)
    guard let cqe, cqe.res >= 0, cqe.flags & IORING_CQE_F_MORE != 0 else { stop("the multishot accept ended early") }
    accepted[n] = cqe.res
}

// MARK: - 4. What does not end it, and what does: close, then cancel
//
// A request holds its own reference to the file it works on, taken when the kernel took the
// SQE. Closing the listening fd (here with IORING_OP_CLOSE) removes the fd from the process's
// table, but the socket lives on in the request: it still listens, and the armed accept still
// takes connections. A fifth client shows it.
//
// Cancelling ends it: io_uring_prep_cancel64(sqe, 1901, 0) finds the request by its user_data.
// The cancel's own CQE says 0 (found and cancelled), and the accept posts its last CQE:
// -ECANCELED, without F_MORE. With that, the last reference to the listening socket is gone,
// the socket is closed, and a sixth client's connect is refused: nothing listens any more.

prepare(ring, 1903) { io_uring_prep_close($0, listener) }
let closedListener = submitAndWait(ring, 1, cqes: 1)[0]
printCQE(closedListener, "close (the listening fd, while the multishot is armed)")
if closedListener.res == 0 { heldFds.removeAll { $0 == listener } }
clients.merge(makeClients(ring, 5...5)) { $1 }
guard let fifth = connectClient(ring, 5, clients[5]!, sockaddrPointer), fifth.res >= 0 else { stop("the fifth client was not accepted") }
accepted[5] = fifth.res

prepare(ring, 1902) { io_uring_prep_cancel64($0, 1901, 0) }
for cqe in submitAndWait(ring, 1, cqes: 2) {
    printCQE(cqe, cqe.user_data == 1901 ? "accept, its last CQE" : "cancel user_data=1901")
}
clients.merge(makeClients(ring, 6...6)) { $1 }
_ = connectClient(ring, 6, clients[6]!, sockaddrPointer)

// MARK: - 5. An error ends it too
//
// Any error from the accept itself is the multishot's last CQE. A server meets one when it
// runs out of fds (-EMFILE; see Kernel in the prose), or, as here, when the listener stops
// listening: shutdown(2) with SHUT_RD on a listening socket closes its queue and wakes the
// armed accept, whose next try fails with -EINVAL, as accept(2) does on a socket that is not
// listening. A second listener shows it, shut down through the ring (IORING_OP_SHUTDOWN).

let (listener2, port2, _) = listenOnLoopback(ring, port: 0)
heldFds.append(listener2)
print("a second listener on 127.0.0.1:\(port2)")
prepare(ring, 1951) { io_uring_prep_multishot_accept($0, listener2, nil, nil, Int32(SOCK_CLOEXEC.rawValue)) }
checkSubmit(io_uring_submit(ring), 1)
prepare(ring, 1952) { io_uring_prep_shutdown($0, listener2, Int32(SHUT_RD)) }
for cqe in submitAndWait(ring, 1, cqes: 2) {
    printCQE(cqe, cqe.user_data == 1951 ? "multishot accept on it, its last CQE" : "shutdown (the second listener, SHUT_RD)")
}

// MARK: - 6. Close everything, through the ring
//
// Every client socket, every accepted fd and the second listener, in one submit.

var closes: [UInt64: Int32] = [1953: listener2]
for (n, fd) in clients { closes[1930 + UInt64(n)] = fd }
for (n, fd) in accepted { closes[1940 + UInt64(n)] = fd }
for (userData, fd) in closes { prepare(ring, userData) { io_uring_prep_close($0, fd) } }
let closeCQEs = submitAndWait(ring, closes.count, cqes: closes.count)
for cqe in closeCQEs where cqe.res == 0 { heldFds.removeAll { $0 == closes[cqe.user_data] } }
let failed = closeCQEs.filter { $0.res != 0 }.map(format)
print("IORING_OP_CLOSE of \(clients.count) client fds, \(accepted.count) accepted fds and the second listener: "
    + (failed.isEmpty ? "res 0 for all \(closeCQEs.count)" : failed.joined(separator: "; ")))
if !heldFds.isEmpty { stop("fds still open: \(heldFds.map(String.init).joined(separator: ", "))") }

address.deallocate()
destroyRing(ring)
