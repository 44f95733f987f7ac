// Lesson 17: TCP basics
//
// Every socket call a TCP program makes has a request of its own: IORING_OP_SOCKET (Linux 5.19)
// makes a socket, IORING_OP_BIND and IORING_OP_LISTEN (6.11) bind and listen, IORING_OP_ACCEPT
// and IORING_OP_CONNECT (5.5) make the connection, IORING_OP_SEND and IORING_OP_RECV (5.6)
// move the bytes, IORING_OP_SHUTDOWN (5.11) ends one direction, IORING_OP_CLOSE (5.6) closes.
// Each answers with a CQE whose res is what the system call would have returned: an fd, a byte
// count, 0, or -errno.
//
// This lesson plays both ends on loopback, in one thread: a listener, and a client that first
// meets the failure everyone meets (a connection refused), then connects, sends a line, reads
// the server's echo of it, and shuts its side down, which the server reads as end of file.
// While the server's recv waits for data, the lesson looks at how it waits: not on a thread,
// but on a poll the kernel armed for it (fast poll).
//
// Read next: man 3 io_uring_prep_socket, man 3 io_uring_prep_accept, man 3 io_uring_prep_connect,
// man 3 io_uring_prep_send, man 3 io_uring_prep_recv, man 3 io_uring_prep_shutdown,
// man 3 io_uring_prep_close. (liburing 2.3 has no io_uring_prep_bind or _listen: 2.7 adds them.)

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-17-tcp-basics", max: 0)

// MARK: - 1. A ring, and the requests we will make
//
// Each request has a fixed user_data: 17 for the lesson, then 01, 02, ... in the order the
// requests are made. The table names them, so every CQE line says what it answers.

var params = io_uring_params()
let ring = makeRing(entries: 8, params: &params)
requireOpcodes(ring, IORING_OP_SOCKET, IORING_OP_CONNECT, IORING_OP_ACCEPT, IORING_OP_SEND,
               IORING_OP_RECV, IORING_OP_SHUTDOWN, IORING_OP_CLOSE)

let names: [UInt64: String] = [
    1701: "socket (listener)", 1702: "bind 127.0.0.1:0 (IORING_OP_BIND)", 1703: "socket (client)",
    1704: "connect to a port bound but not listening", 1705: "close (the refused socket)",
    1706: "listen, backlog 8 (IORING_OP_LISTEN)", 1707: "socket (client)",
    1708: "accept", 1709: "connect", 1710: "recv (server)", 1711: "send (client)",
    1712: "send (server, the echo)", 1713: "recv (client)", 1714: "shutdown (client, SHUT_WR)",
    1715: "recv (server)", 1716: "close (server's connection)", 1717: "close (client)",
    1718: "close (listener)",
]

/// The fds this lesson holds, so that a failure can close them before it ends the lesson.
nonisolated(unsafe) var heldFds: [Int32] = []  // one thread only; Swift 6 wants a word for a global var
func stop(_ message: String) -> Never {
    for fd in heldFds { close(fd) }
    fail(message)
}

/// Submit the `count` SQEs prepared since the last submit and wait for `cqes` CQEs (as many,
/// unless said; 5 s at most each). They are printed sorted by user_data: when requests
/// complete together the kernel promises no order between their CQEs, and the lesson prints
/// the same lines on every run. Each gets its name, and the bytes it read from `bytes`.
@discardableResult
func submitAndPrint(_ ring: Ring, _ count: Int, cqes expected: Int? = nil,
                    bytes: [UInt64: UnsafeMutableRawBufferPointer] = [:]) -> [UInt64: Int32] {
    checkSubmit(io_uring_submit(ring), count)
    let cqes = (0..<(expected ?? count)).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
    for cqe in cqes {
        let data = bytes[cqe.user_data].map { " " + quoted($0.prefix(Int(max(cqe.res, 0)))) } ?? ""
        print("\(names[cqe.user_data] ?? "?"): \(format(cqe))\(data)")
    }
    return Dictionary(uniqueKeysWithValues: cqes.map { ($0.user_data, $0.res) })
}

func prepare(_ ring: Ring, _ userData: UInt64, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    let sqe = getSQE(ring)
    prep(sqe)
    io_uring_sqe_set_data64(sqe, userData)
}

/// An fd from a CQE, or the end of the lesson with the error.
func newFd(_ res: Int32?, _ what: String) -> Int32 {
    guard let res, res >= 0 else { stop("\(what) returned \(describe(res: res ?? -EINVAL))") }
    heldFds.append(res)
    return res
}

// Addresses and lengths the kernel reads or writes live on the heap until the lesson ends,
// after every CQE (the lab's rule). BIND and CONNECT copy their sockaddr when the kernel takes
// the SQE (Linux 5.5+, IORING_FEAT_SUBMIT_STABLE), but ACCEPT *writes* the peer's address and
// its length when it completes, which can be long after the submit.
let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
let peer = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
let peerLength = UnsafeMutablePointer<socklen_t>.allocate(capacity: 1)
let inBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
let echoBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
let message: [UInt8] = Array("hello, io_uring\n".utf8)
let outBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: message.count, alignment: 16)
outBuffer.copyBytes(from: message)
let addressLength = socklen_t(MemoryLayout<sockaddr_in>.size)
func asSockaddr<T>(_ pointer: UnsafeMutablePointer<T>) -> UnsafeMutablePointer<sockaddr> {
    UnsafeMutableRawPointer(pointer).assumingMemoryBound(to: sockaddr.self)
}

print("IORING_FEAT_FAST_POLL: \(params.features & IORING_FEAT_FAST_POLL != 0 ? "yes" : "no")")

// MARK: - 2. A listening socket: socket, bind, listen
//
// io_uring_prep_socket(sqe, domain, type, protocol, 0) is socket(2) as a request: its CQE's res
// is the new fd. Binding and listening became requests only in Linux 6.11 (IORING_OP_BIND 56,
// IORING_OP_LISTEN 57). liburing 2.3 has no helper for them, so we fill the SQE as liburing
// 2.7's io_uring_prep_bind and _listen do: the generic io_uring_prep_rw(op, sqe, fd, addr, len,
// off). BIND takes the sockaddr's address in sqe->addr and its length in sqe->off (the kernel
// reads it as sqe->addr2: the same field); LISTEN takes the backlog in sqe->len (Linux 6.18,
// io_uring/net.c, io_bind_prep and io_listen_prep). An older kernel gets the same two steps
// from bind(2) and listen(2), because the probe says it has no such requests.

let streamType = Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue)
prepare(ring, 1701) { io_uring_prep_socket($0, AF_INET, streamType, 0, 0) }
let listener = newFd(submitAndPrint(ring, 1)[1701], "IORING_OP_SOCKET")

let probe = io_uring_get_probe_ring(ring)
let bindInRing = probe.map { io_uring_opcode_supported($0, LAB_IORING_OP_BIND) != 0
    && io_uring_opcode_supported($0, LAB_IORING_OP_LISTEN) != 0 } ?? false
io_uring_free_probe(probe)

address.initialize(to: loopbackAddress(port: 0))  // port 0: the kernel picks a free one
var bound: Int32
if bindInRing {
    prepare(ring, 1702) { io_uring_prep_rw(LAB_IORING_OP_BIND, $0, listener, address, 0, UInt64(addressLength)) }
    bound = submitAndPrint(ring, 1)[1702] ?? -EINVAL
} else {
    bound = bind(listener, asSockaddr(address), addressLength) < 0 ? -errno : 0
    print("bind(2) 127.0.0.1:0 = \(describe(res: bound)) (no IORING_OP_BIND before Linux 6.11)")
}
guard bound == 0 else { stop("cannot bind 127.0.0.1:0: \(describe(res: bound))") }
let port = localPort(listener)  // getsockname(2): which port the kernel picked
print("bound to 127.0.0.1:\(port), not listening yet")

// MARK: - 3. The failure everyone meets: connection refused
//
// A socket that is bound but not listening takes no connections: the kernel answers the
// client's SYN with a reset, and the connect completes with -ECONNREFUSED, as it would with
// no socket on the port at all. After a failed connect the socket's state is unspecified
// (man 2 connect: "Portable applications should close the socket and create a new one for
// reconnecting"), so the lesson closes it, through the ring, and makes a new one.

prepare(ring, 1703) { io_uring_prep_socket($0, AF_INET, streamType, 0, 0) }
let refused = newFd(submitAndPrint(ring, 1)[1703], "IORING_OP_SOCKET")
address.pointee = loopbackAddress(port: port)
prepare(ring, 1704) { io_uring_prep_connect($0, refused, asSockaddr(address), addressLength) }
submitAndPrint(ring, 1)
prepare(ring, 1705) { io_uring_prep_close($0, refused) }
if submitAndPrint(ring, 1)[1705] == 0 { heldFds.removeAll { $0 == refused } }

var listening: Int32
if bindInRing {
    prepare(ring, 1706) { io_uring_prep_rw(LAB_IORING_OP_LISTEN, $0, listener, nil, 8, 0) }
    listening = submitAndPrint(ring, 1)[1706] ?? -EINVAL
} else {
    listening = listen(listener, 8) < 0 ? -errno : 0
    print("listen(2) backlog 8 = \(describe(res: listening)) (no IORING_OP_LISTEN before Linux 6.11)")
}
guard listening == 0 else { stop("cannot listen on 127.0.0.1:\(port): \(describe(res: listening))") }
print("listening on 127.0.0.1:\(port)")

// MARK: - 4. Accept and connect, in one submit
//
// One thread can be both ends because connect does not wait for accept: the kernel itself
// answers the SYN of a listening socket, completes the handshake, and queues the new
// connection in the listener's backlog (backlog 8: 9 on Linux, which calls the queue full only
// when it holds more than the backlog). The connect then succeeds; an accept takes a
// connection off that queue, or, if it is empty, waits for one. So the two requests go in one
// io_uring_submit, the accept first. Neither waits on a thread. The accept finds no connection
// and the kernel arms a poll on the listener for it. The connect's first, non-blocking try
// starts the handshake (EINPROGRESS); on loopback the handshake is over before a poll would be
// armed, so the kernel queues the retry at once, and the retry finds the socket connected.
//
// The accept writes the client's address into `peer` and its length into `peerLength` when it
// completes: both must live until its CQE. `peerLength` goes in holding the space we have.

prepare(ring, 1707) { io_uring_prep_socket($0, AF_INET, streamType, 0, 0) }
let client = newFd(submitAndPrint(ring, 1)[1707], "IORING_OP_SOCKET")
print("accept and connect, submitted together:")
peerLength.initialize(to: addressLength)
prepare(ring, 1708) { io_uring_prep_accept($0, listener, asSockaddr(peer), peerLength, Int32(SOCK_CLOEXEC.rawValue)) }
prepare(ring, 1709) { io_uring_prep_connect($0, client, asSockaddr(address), addressLength) }
let accepted = submitAndPrint(ring, 2)
let server = newFd(accepted[1708], "IORING_OP_ACCEPT")
guard accepted[1709] == 0 else { stop("IORING_OP_CONNECT returned \(describe(res: accepted[1709] ?? -EINVAL))") }
let peerPort = UInt16(bigEndian: peer.pointee.sin_port)
let peerIP = withUnsafeBytes(of: peer.pointee.sin_addr) { $0.map(String.init).joined(separator: ".") }
print("the accept wrote the peer's address (\(peerLength.pointee) bytes): \(peerIP):\(peerPort), "
    + (peerPort == localPort(client) ? "the client socket's own port" : "NOT the client's port \(localPort(client))"))

// MARK: - 5. A recv that waits, then the data
//
// The server's recv goes in before the client has sent anything. The kernel tries it at once,
// finds the socket empty, and instead of handing it to a thread that would block in recv(2),
// arms a poll on the socket for it ("fast poll", IORING_FEAT_FAST_POLL, Linux 5.7) and returns.
// When data arrives, the socket's wakeup queues task work: a retry of the recv that runs in the
// submitting thread when it next returns to user space from any system call. Here that is the
// submit that sends: the recv's CQE is in the CQ when io_uring_submit returns. Two witnesses
// that it waits: the ring's fdinfo lists the request in its poll list, and the process has no
// io-wq worker thread (`iou-wrk-PID`). LabNet reads both: `pollList(ring)`, `ioWorkers()`.

prepare(ring, 1710) { io_uring_prep_recv($0, server, inBuffer.baseAddress, inBuffer.count, 0) }
checkSubmit(io_uring_submit(ring), 1)
var waiting: UnsafeMutablePointer<io_uring_cqe>?
print("recv (server) submitted on an empty socket: io_uring_peek_cqe = \(describe(res: io_uring_peek_cqe(ring, &waiting)))")
print("  the ring's poll list (fdinfo PollList): \(pollList(ring))")
print("  io-wq worker threads: \(ioWorkers())")

// The client's send completes during the submit (loopback delivers the bytes into the server's
// socket at once), and that delivery wakes the server's recv, whose retry runs on the way out
// of the same io_uring_enter. One SQE goes in; two CQEs come.
prepare(ring, 1711) { io_uring_prep_send($0, client, outBuffer.baseAddress, outBuffer.count, 0) }
let firstRecv = submitAndPrint(ring, 1, cqes: 2, bytes: [1710: inBuffer])[1710] ?? -EINVAL
guard firstRecv > 0 else { stop("the server's recv returned \(describe(res: firstRecv))") }

// MARK: - 6. The echo
//
// The server sends back what it received, from the recv's own buffer (it stays put until this
// send's CQE), and the client reads it: the same bytes, through the ring both ways.

print("the echo: send (server) and recv (client), submitted together:")
prepare(ring, 1712) { io_uring_prep_send($0, server, inBuffer.baseAddress, Int(firstRecv), 0) }
prepare(ring, 1713) { io_uring_prep_recv($0, client, echoBuffer.baseAddress, echoBuffer.count, 0) }
let echoed = submitAndPrint(ring, 2, bytes: [1713: echoBuffer])[1713] ?? -EINVAL
let same = echoed == firstRecv && echoBuffer.prefix(Int(echoed)).elementsEqual(message)
print("echoed bytes \(same ? "are" : "are NOT") the bytes the client sent")

// MARK: - 7. Shutdown: the end of one direction
//
// shutdown(fd, SHUT_WR) as a request: the client will send no more, and the kernel sends a FIN.
// The connection stays open the other way. The server's next recv returns 0: end of file, the
// peer's "no more data" (not an error, and not "nothing yet": an empty socket waits, as above).
// Its flags say F_SOCK_NONEMPTY: the kernel's hint of data left to read (tcp_inq_hint) is never
// 0 after a FIN. res 0 wins: every recv after the FIN returns 0 with the flag still set, so a
// reader that loops while the flag is set never stops.
//
// SHUTDOWN, unlike the requests before it, never runs inline and never waits on a poll: the
// kernel hands it to an io-wq worker thread (io_uring/net.c), and the worker count shows it.

prepare(ring, 1714) { io_uring_prep_shutdown($0, client, Int32(SHUT_WR)) }
submitAndPrint(ring, 1)
prepare(ring, 1715) { io_uring_prep_recv($0, server, inBuffer.baseAddress, inBuffer.count, 0) }
let eof = submitAndPrint(ring, 1)[1715]
print(eof == 0 ? "res 0: end of file, the client's SHUT_WR" : "no end of file: \(describe(res: eof ?? -EINVAL))")
print("io-wq worker threads after the shutdown: \(ioWorkers())")

// MARK: - 8. Close every fd, through the ring
//
// IORING_OP_CLOSE is close(2) as a request. The listener goes last: once it is closed, nothing
// listens on the port. The buffers and addresses are freed after their last CQE.

prepare(ring, 1716) { io_uring_prep_close($0, server) }
prepare(ring, 1717) { io_uring_prep_close($0, client) }
prepare(ring, 1718) { io_uring_prep_close($0, listener) }
let closed = submitAndPrint(ring, 3)
for (userData, fd) in [(UInt64(1716), server), (1717, client), (1718, listener)] where closed[userData] == 0 {
    heldFds.removeAll { $0 == fd }
}
if !heldFds.isEmpty { stop("IORING_OP_CLOSE failed for fd \(heldFds.map(String.init).joined(separator: ", "))") }

for buffer in [inBuffer, echoBuffer, outBuffer] { buffer.deallocate() }
address.deallocate(); peer.deallocate(); peerLength.deallocate()
destroyRing(ring)
