// Lesson 18: an echo server, as a state machine keyed by user_data
//
// A server with many clients has many requests in flight at once, and the CQ hands their
// completions back in the order they finish, not the order they were asked for. All a CQE
// says about its request is the user_data we gave the SQE. So that is where the server keeps
// its place: each user_data names a connection (its slot in a table) and the kind of request
// (accept, recv, send, close), and `handle` decides from those two what comes next:
//
//     accept ─▶ recv ─▶ send ─▶ recv ─▶ send ─▶ ... ─▶ close
//
// Each connection has exactly one request in flight at a time and one buffer of its own, at a
// stable address: the recv fills it, the send echoes it back from there (a short send sends
// the rest), and only when every byte is out does the next recv reuse it. A recv of 0 bytes
// is the client's EOF; a negative res (-ECONNRESET, -EPIPE, ...) is the end of the connection
// too: either way the connection is closed through the ring and its slot freed.
//
// With no arguments the lesson runs its own clients against itself (a demo whose output the
// test compares with the prose); with --port P or --seconds S it serves whoever connects.
//
// Read next: man 3 io_uring_prep_accept, man 3 io_uring_prep_recv, man 3 io_uring_prep_send,
// man 3 io_uring_prep_close, man 3 io_uring_prep_cancel, man 3 io_uring_submit_and_wait_timeout.

import Glibc
import CLiburing
import LabSupport
import LabNet
import Synchronization

let usage = "lesson-18-echo-server [--port P] [--seconds S]  (no options: a demo with its own clients; "
    + "--port or --seconds: serve 127.0.0.1:P (0: any free port) until Ctrl-C or for S seconds)"
let arguments = lessonArguments(usage: usage, max: 0, options: ["--port", "--seconds"])
let portOption = numberOption("--port", in: arguments, 0...65535)
let secondsOption = numberOption("--seconds", in: arguments, 1...86_400)
let clock = ContinuousClock()

// MARK: - 1. The ring and the listener
//
// ACCEPT is Linux 5.5, RECV, SEND and CLOSE 5.6, ASYNC_CANCEL 5.5; the listener is made with
// IORING_OP_SOCKET (5.19) by LabSupport's listenOnLoopback, as lesson 17 showed step by step
// (with IORING_OP_BIND and IORING_OP_LISTEN where the kernel has them, 6.11). So: Linux 5.19.
//
// 128 SQEs and (by default) 256 CQEs. At most 64 connections with one request each, the
// accept, and a few closes are in flight at once, so neither queue can fill up.

let ring = makeRing(entries: 128)
requireOpcodes(ring, IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_CLOSE,
               IORING_OP_ASYNC_CANCEL)
let listener = listenOnLoopback(ring, port: UInt16(portOption ?? 0))
print("listening on 127.0.0.1:\(listener.port)")
print("the listener: IORING_OP_SOCKET, then \(listener.how)")

// MARK: - 2. user_data: which connection, which request
//
// user_data = 0x18_SS_KK: 0x18 for lesson 18, SS the connection's slot (01 to 40 hex, i.e. 1 to
// 64; 00 for the listener's own requests), KK the kind of request. Printed in hex, it reads
// directly: 0x180302 is a recv on slot 3, 0x180001 the accept. A slot is reused only after its
// close's CQE, when nothing of the old connection is in flight, so a CQE is never mistaken for
// another connection's.

enum Request: UInt64 {
    case accept = 1, recv = 2, send = 3, close = 4, closeRefused = 5, cancelAll = 6, closeListener = 7
}
func userData(_ request: Request, slot: Int = 0) -> UInt64 { 0x18_0000 | UInt64(slot) << 8 | request.rawValue }
func format18(_ cqe: io_uring_cqe) -> String {  // LabSupport's format(cqe), with user_data in hex
    "user_data=0x\(String(cqe.user_data, radix: 16)) res=\(describe(res: cqe.res)) flags=\(format(cqeFlags: cqe.flags))"
}
func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

// MARK: - 3. A connection: its fd, its buffer, where it is in the echo

final class Connection {
    let id: Int, slot: Int, fd: Int32
    let buffer: UnsafeMutableRawBufferPointer  // this slot's part of the server's buffers
    var filled = 0, sent = 0  // bytes the last recv put in the buffer, and how many are echoed
    var recvs = 0, received = 0, sends = 0, echoed = 0, shortSends = 0
    var end: (request: String, cqe: io_uring_cqe)?  // the CQE that ended it
    init(id: Int, slot: Int, fd: Int32, buffer: UnsafeMutableRawBufferPointer) {
        (self.id, self.slot, self.fd, self.buffer) = (id, slot, fd, buffer)
    }

    var summary: String {
        let (request, cqe) = end!
        let why = cqe.res == 0 && request == "recv" ? " (EOF)" : cqe.res == -ECANCELED ? " (the server is stopping)" : ""
        return "connection \(id) (slot \(slot)) closed after \(request): \(format18(cqe))\(why); "
            + "\(count(recvs, "recv")) (\(received) bytes), \(count(sends, "send")) (\(echoed) bytes, \(shortSends) short)"
    }
}

// MARK: - 4. The server: the table of connections, and the requests it queues

final class EchoServer {
    static let maxConnections = 64, bufferSize = 16 * 1024
    let ring: Ring, listenFD: Int32
    // Every buffer the kernel writes lives on the heap, at one address, until the server ends:
    // one 16 KiB buffer per slot, the accept's peer address and its length, the wait's timeout.
    let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: maxConnections * bufferSize, alignment: 4096)
    let peer = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
    let peerLength = UnsafeMutablePointer<socklen_t>.allocate(capacity: 1)
    let waitLimit = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)

    var slots = [Connection?](repeating: nil, count: maxConnections + 1)  // 1...64; 0 is the listener
    var accepted = 0, refused = 0, open = 0, refusing = 0, closed: [Connection] = []
    var accepting = false, listening = true, cancelling = false, stopping = false
    var printEvents = false  // serving mode: a line per connection opened and closed
    var traced: Set<Int> = []  // the demo: connections whose every CQE is written down
    var traces: [Int: [String]] = [:], stopLines: [Request: String] = [:]

    init(ring: Ring, listenFD: Int32) { (self.ring, self.listenFD) = (ring, listenFD) }

    func queue(_ request: Request, slot: Int = 0, _ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
        let sqe = getSQE(ring)  // never nil: at most ~70 requests are in flight on a 128-entry SQ
        prepare(sqe)
        io_uring_sqe_set_data64(sqe, userData(request, slot: slot))
    }

    // One accept at a time: a plain (single-shot) accept completes once, with one new fd, and is
    // queued again right after its CQE (lesson 19 shows the multishot accept that stays armed).
    // The kernel writes the peer's address and its length when the accept completes, so both
    // stay put, and the length is reset to the size of the address before every accept.
    func queueAccept() {
        peerLength.pointee = socklen_t(MemoryLayout<sockaddr_in>.size)
        let address = UnsafeMutablePointer<sockaddr>(OpaquePointer(peer))  // the same address, as accept's C type
        queue(.accept) { io_uring_prep_accept($0, listenFD, address, peerLength, Int32(SOCK_CLOEXEC.rawValue)) }
        accepting = true
    }
    func queueRecv(_ c: Connection) {  // into the whole buffer: any number of bytes up to 16 KiB
        queue(.recv, slot: c.slot) { io_uring_prep_recv($0, c.fd, c.buffer.baseAddress, c.buffer.count, 0) }
    }
    func queueSend(_ c: Connection) {  // what the recv brought that is not sent yet
        queue(.send, slot: c.slot) { io_uring_prep_send($0, c.fd, c.buffer.baseAddress! + c.sent, c.filled - c.sent, 0) }
    }
    func queueClose(_ c: Connection) { queue(.close, slot: c.slot) { io_uring_prep_close($0, c.fd) } }

    func event(_ line: String) {  // a line at once, even into a pipe: someone may be waiting for it
        print(line)
        fflush(nil)
    }
    func trace(_ c: Connection, _ request: String, _ cqe: io_uring_cqe, _ next: String) {
        if traced.contains(c.id) { traces[c.id, default: []].append("  \(request): \(format18(cqe)) -> \(next)") }
    }

    // MARK: - 5. The state machine: one CQE at a time
    //
    // user_data says which connection and which request; res says how it went. Every branch
    // queues the connection's next request (or its close): one in flight, always.

    func handle(_ cqe: io_uring_cqe) {
        let slot = Int(cqe.user_data >> 8 & 0xff)
        switch Request(rawValue: cqe.user_data & 0xff) {
        case .accept: acceptDone(cqe)
        case .recv: recvDone(slots[slot]!, cqe)
        case .send: sendDone(slots[slot]!, cqe)
        case .close: closeDone(slots[slot]!, cqe)
        case .closeRefused:
            refusing -= 1
            if cqe.res < 0 { print("closing a refused connection: \(format18(cqe))") }
        case .cancelAll:
            cancelling = false
            stopLines[.cancelAll] = "stopping: IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY: \(format18(cqe))"
        case .closeListener:
            listening = false
            stopLines[.closeListener] = "listener closed: \(format18(cqe))"
        case nil: fail("a CQE this server never asked for: \(format18(cqe))")
        }
    }

    // accept: res is the new connection's fd. It gets a free slot and its first recv, unless
    // all 64 slots are taken (or the server is stopping): then it is closed at once, and
    // the client sees EOF. Then the next accept, so that one is always waiting.
    func acceptDone(_ cqe: io_uring_cqe) {
        accepting = false
        if cqe.res < 0 {  // -ECANCELED when stopping; -EMFILE (no fd left) and the like otherwise
            stopLines[.accept] = "accept: \(format18(cqe))"
            if !stopping { event("accept failed: \(format18(cqe))") }
        } else if let slot = (1...Self.maxConnections).first(where: { slots[$0] == nil }), !stopping {
            accepted += 1
            let c = Connection(id: accepted, slot: slot, fd: cqe.res, buffer: UnsafeMutableRawBufferPointer(
                rebasing: buffers[(slot - 1) * Self.bufferSize ..< slot * Self.bufferSize]))
            slots[slot] = c
            open += 1
            trace(c, "accept", cqe, "slot \(slot): recv")
            if printEvents { event("connection \(c.id) opened: slot \(slot), fd \(c.fd), from \(peerText)") }
            queueRecv(c)
        } else {
            accepted += 1
            refused += 1
            event("connection \(accepted) refused: " + (stopping ? "the server is stopping"
                : "\(Self.maxConnections) connections are open (the limit)") + "; closing fd \(cqe.res)")
            queue(.closeRefused) { io_uring_prep_close($0, cqe.res) }
            refusing += 1
        }
        if stopping { queue(.closeListener) { io_uring_prep_close($0, listenFD) } } else { queueAccept() }
    }
    var peerText: String {
        let address = UInt32(bigEndian: peer.pointee.sin_addr.s_addr)
        return "\(address >> 24).\(address >> 16 & 255).\(address >> 8 & 255).\(address & 255):\(UInt16(bigEndian: peer.pointee.sin_port))"
    }

    // recv: res > 0 is that many bytes in the buffer: send them back. res 0 is EOF (the client
    // closed its side), res < 0 an error (-ECONNRESET: the client reset the connection): close.
    func recvDone(_ c: Connection, _ cqe: io_uring_cqe) {
        guard cqe.res > 0, !stopping else { return end(c, "recv", cqe) }
        c.recvs += 1
        c.received += Int(cqe.res)
        (c.filled, c.sent) = (Int(cqe.res), 0)
        trace(c, "recv", cqe, "send \(cqe.res) bytes")
        queueSend(c)
    }

    // send: res is how many bytes the kernel took, which may be fewer than asked (a short
    // send): send the rest, from where it stopped. All sent: the buffer is free, recv again.
    // res < 0 (-ECONNRESET, -EPIPE: the client is gone): close.
    func sendDone(_ c: Connection, _ cqe: io_uring_cqe) {
        guard cqe.res > 0 else { return end(c, "send", cqe) }
        c.sends += 1
        c.echoed += Int(cqe.res)
        c.sent += Int(cqe.res)
        if c.sent < c.filled { c.shortSends += 1 }
        if stopping { return end(c, "send", cqe) }
        if c.sent < c.filled {
            trace(c, "send", cqe, "short: send the other \(c.filled - c.sent) bytes")
            queueSend(c)
        } else {
            trace(c, "send", cqe, "recv")
            queueRecv(c)
        }
    }

    func end(_ c: Connection, _ request: String, _ cqe: io_uring_cqe) {
        c.end = (request, cqe)
        trace(c, request, cqe, "close")
        queueClose(c)
    }

    // close: the fd is gone (res 0), and with it the last request of the connection: its slot,
    // and the slot's buffer, are free for the next one.
    func closeDone(_ c: Connection, _ cqe: io_uring_cqe) {
        trace(c, "close", cqe, "slot \(c.slot) free")
        if cqe.res < 0 { print("connection \(c.id): close: \(format18(cqe))") }
        slots[c.slot] = nil
        open -= 1
        closed.append(c)
        if printEvents { event(c.summary) }
    }

    // MARK: - 6. The loop: submit, wait (at most a second), handle every CQE there is
    //
    // io_uring_submit_and_wait_timeout submits the SQEs the handlers queued and waits for at
    // least one CQE, in one io_uring_enter (IORING_ENTER_EXT_ARG carries the time limit, 5.11).
    // What it returns is not the CQE count: liburing 2.3 returns the number of SQEs submitted
    // if it submitted any, even when no CQE came in time, and -ETIME only when it submitted
    // none and none came. So whatever it returns, the loop then takes every CQE in the CQ with
    // io_uring_peek_cqe. Each wait is bounded; `deadline` bounds the whole run.

    func run(until done: () -> Bool, deadline: ContinuousClock.Instant?) -> Bool {
        var cqePointer: UnsafeMutablePointer<io_uring_cqe>?
        while !done() {
            var wait = Duration.seconds(1)
            if let deadline {
                guard clock.now < deadline else { return false }
                wait = min(wait, deadline - clock.now)
            }
            waitLimit.pointee = __kernel_timespec(tv_sec: wait.components.seconds, tv_nsec: wait.components.attoseconds / 1_000_000_000)
            let ret = io_uring_submit_and_wait_timeout(ring, &cqePointer, 1, waitLimit, nil)
            guard ret >= 0 || ret == -ETIME || ret == -EINTR else { fail("io_uring_submit_and_wait_timeout returned \(describe(res: ret))") }
            while io_uring_peek_cqe(ring, &cqePointer) == 0, let cqe = cqePointer {
                let copy = cqe.pointee
                io_uring_cqe_seen(ring, cqe)
                handle(copy)
            }
        }
        return true
    }

    // MARK: - 7. Stopping: cancel everything in flight, close everything
    //
    // One IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY (5.19) cancels every request of
    // the ring that is waiting: the accept, and each connection's recv or send. Its res is how
    // many it found; each of them completes with -ECANCELED (or with its real result, if it
    // finished first). The handlers see `stopping` and, instead of the next request, close the
    // connection; the accept's CQE closes the listener. Stopped: every fd is closed.

    func stop() {
        stopping = true
        queue(.cancelAll) { io_uring_prep_cancel64($0, 0, Int32(IORING_ASYNC_CANCEL_ANY)) }
        cancelling = true
        if !accepting { queue(.closeListener) { io_uring_prep_close($0, listenFD) } }
    }
    var stopped: Bool { stopping && !cancelling && !accepting && !listening && open == 0 && refusing == 0 }

    func printStopLines() {  // in this order, whatever order the kernel posted them in
        for request in [Request.cancelAll, .accept, .closeListener] { if let line = stopLines[request] { print(line) } }
    }

    func release() {  // once stopped: nothing is in flight, nothing points into this memory
        buffers.deallocate()
        peer.deallocate()
        peerLength.deallocate()
        waitLimit.deallocate()
    }
}

let server = EchoServer(ring: ring, listenFD: listener.fd)
server.queueAccept()

// MARK: - 8. Serving: --port P, --seconds S
//
// Serve until Ctrl-C (SIGINT ends the process, and the kernel closes its fds and tears down its
// ring) or, with --seconds, for S seconds, then stop cleanly: cancel, close, exit 0.

if portOption != nil || secondsOption != nil {
    print(secondsOption.map { "serving for \($0) s" } ?? "serving until Ctrl-C", terminator: "")
    server.event("; try: nc 127.0.0.1 \(listener.port)")
    server.printEvents = true
    _ = server.run(until: { false }, deadline: secondsOption.map { clock.now + .seconds($0) })
    print("stopping after \(secondsOption ?? 0) s: \(count(server.open, "connection")) open")
    server.stop()
    guard server.run(until: { server.stopped }, deadline: clock.now + .seconds(5)) else {
        fail("the server did not stop within 5 s")
    }
    server.printStopLines()
    print("served \(count(server.accepted - server.refused, "connection")), refused \(server.refused)")
    server.release()
    destroyRing(ring)
    exit(0)
}

// MARK: - 9. The demo: eleven clients at once
//
// The clients are threads of this process using plain blocking socket calls (the client side
// is not the lesson). Connections 1 to 3 connect from this thread before the others start, so
// the kernel's accept queue, first in first out, gives them ids 1, 2 and 3:
//   1 sends a line, reads its echo, then resets the connection (SO_LINGER 0: RST, not FIN);
//   2 sends 32 KiB, shuts down its side, and once the kernel has acknowledged all of it and
//     the FIN, closes without reading a byte of the echo;
//   3 sends and never reads, until its sends make no progress for 50 ms (the server is stuck
//     in a send, the client's receive buffer full), then closes: with unread data, that is a
//     reset too;
//   4 to 11 are LabSupport's EchoClients: 8 clients, 50 messages of 64 bytes each, every echo
//     checked byte for byte.
// The server records every CQE of connections 1 and 2.

let started = clock.now
let port = listener.port
server.traced = [1, 2]
let resetterProblem = Atomic<Bool>(false)  // set by client 1's thread if its echo was wrong
let line = Array("a line, then a reset\n".utf8)
let resetter = connectPlainly(port)
let resetterThread = startThread { sendEchoAndReset(resetter, line) }
let leaver = connectPlainly(port)
sendAndLeave(leaver, bytes: 32 * 1024)
let staller = connectPlainly(port)
let stallerThread = startThread { sendUntilStuckThenClose(staller) }
let clients = EchoClients(port: port, clients: 8, messages: 50, size: 64)

let allClosed = server.run(until: { server.closed.count + server.refused == 11 }, deadline: clock.now + .seconds(10))
pthread_join(resetterThread, nil)
pthread_join(stallerThread, nil)
let (echoed, problems) = clients.finish()
let elapsed = clock.now - started
server.stop()
guard server.run(until: { server.stopped }, deadline: clock.now + .seconds(5)) else { fail("the server did not stop within 5 s") }

print("connection 1, whose client sends \(line.count) bytes, reads them back, then resets, CQE by CQE:")
server.traces[1, default: []].forEach { print($0) }
print("connection 2, whose client sends 32768 bytes and closes without reading, CQE by CQE:")
server.traces[2, default: []].forEach { print($0) }
print("every connection, by id (3: a client that stops reading; 4-11: the echo clients):")
for c in server.closed.sorted(by: { $0.id < $1.id }) { print(c.summary) }
let echoConnections = server.closed.filter { $0.id >= 4 }
print("connections 4-11 echoed \(echoConnections.reduce(0) { $0 + $1.echoed }) bytes in "
    + "\(count(echoConnections.reduce(0) { $0 + $1.sends }, "send"))")
print("their clients: \(echoed) of 400 echoes came back byte for byte"
    + (resetterProblem.load(ordering: .relaxed) ? "; client 1's echo did not" : ""))
print("the demo took \(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000) ms")
server.printStopLines()
server.release()
destroyRing(ring)
guard allClosed, problems.isEmpty, !resetterProblem.load(ordering: .relaxed) else {
    fail(allClosed ? problems.first ?? "client 1's echo did not come back" : "the clients did not finish within 10 s")
}

// MARK: - 10. The demo's first three clients (plain calls, not the lesson's subject)

/// A plain blocking TCP connection to 127.0.0.1:`port`, every wait limited to 5 s.
func connectPlainly(_ port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    var limit = timeval(tv_sec: 5, tv_usec: 0), address = loopbackAddress(port: port)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    let ret = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if ret != 0 { fail("connect to 127.0.0.1:\(port): \(describe(res: -errno))") }
    return fd
}

/// Client 1: send `bytes`, wait for all of them to come back, then close with SO_LINGER 0.
@Sendable func sendEchoAndReset(_ fd: Int32, _ bytes: [UInt8]) {
    var echo = [UInt8](repeating: 0, count: bytes.count)
    let sent = send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL))
    let received = recv(fd, &echo, echo.count, Int32(MSG_WAITALL))
    if sent != bytes.count || received != bytes.count || echo != bytes { resetterProblem.store(true, ordering: .relaxed) }
    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)  // close sends RST, not FIN
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    close(fd)
}

/// Client 2: send `bytes` bytes, shut down the sending side, wait until the server's kernel has
/// acknowledged all of it and the FIN (SIOCOUTQ, unacknowledged bytes, is 0), then close.
func sendAndLeave(_ fd: Int32, bytes: Int) {
    let data = [UInt8](repeating: UInt8(ascii: "2"), count: bytes)
    _ = send(fd, data, data.count, Int32(MSG_NOSIGNAL))
    shutdown(fd, Int32(SHUT_WR))
    var unacknowledged: Int32 = 1, waited = 0
    while ioctl(fd, UInt(TIOCOUTQ), &unacknowledged) == 0 && unacknowledged > 0 && waited < 2000 { usleep(1000); waited += 1 }
    close(fd)
}

/// Client 3: send 64 KiB at a time without ever reading, until no send makes progress for
/// 50 ms (or 2 s have passed), then close with the echoes unread.
@Sendable func sendUntilStuckThenClose(_ fd: Int32) {
    _ = fcntl(fd, F_SETFL, O_NONBLOCK)
    let chunk = [UInt8](repeating: UInt8(ascii: "3"), count: 64 * 1024), giveUp = clock.now + .seconds(2)
    while clock.now < giveUp {
        if send(fd, chunk, chunk.count, Int32(MSG_NOSIGNAL)) > 0 { continue }
        guard errno == EAGAIN else { break }
        var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        if poll(&ready, 1, 50) == 0 { break }
    }
    close(fd)
}
