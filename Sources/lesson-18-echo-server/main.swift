// Lesson 18: an echo server, as a state machine keyed by user_data
//
// Many requests in flight, and CQEs in the order they finish. A CQE names its request only by
// the user_data we gave the SQE, so that names a connection (its slot) and the kind of request,
// and `handle` decides from those two what comes next, one request per connection at a time:
//
//     accept ─▶ recv ─▶ send ─▶ recv ─▶ send ─▶ ... ─▶ close
//
// No arguments: a demo with its own clients. --port P or --seconds S: a server.

import Glibc
import CLiburing
import LabSupport
import LabNet

let usage = "lesson-18-echo-server [--port P] [--seconds S]  (no options: a demo with its own clients; "
    + "--port or --seconds: serve 127.0.0.1:P (0: any free port) until Ctrl-C or for S seconds)"
let arguments = lessonArguments(usage: usage, max: 0, options: ["--port", "--seconds"])
let portOption = numberOption("--port", in: arguments, 0...65535)
let secondsOption = numberOption("--seconds", in: arguments, 1...86_400)
let clock = ContinuousClock()

// MARK: - 1. The ring (128 SQEs: 64 connections with one request each, the accept and a few
// closes never fill it) and the listener (IORING_OP_SOCKET, in LabNet's listenOnLoopback: 5.19)

let ring = makeRing(entries: 128)
requireOpcodes(ring, IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL)
let listener = listenOnLoopback(ring, port: UInt16(portOption ?? 0))
print("listening on 127.0.0.1:\(listener.port)")
print("the listener: IORING_OP_SOCKET, then \(listener.how)")

// MARK: - 2. user_data = 0x18_SS_KK: SS the slot in hex (01-40; 00 the listener's), KK the request

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
    // What the kernel writes or reads lives on the heap, at one address, until the server ends:
    // one 16 KiB buffer per slot, the accept's peer address and its length, the wait's timeout.
    let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: maxConnections * bufferSize, alignment: 4096)
    let peer = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
    let peerLength = UnsafeMutablePointer<socklen_t>.allocate(capacity: 1)
    let waitLimit = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)

    var slots = [Connection?](repeating: nil, count: maxConnections + 1)  // 1...64; 0 is the listener
    var accepted = 0, refused = 0, open = 0, closed: [Connection] = []
    var inFlight = 0  // requests queued whose CQE has not come: +1 in queue, -1 in handle
    var stopping = false, acceptPaused = false  // paused: out of fds, no accept in flight
    var printEvents = false  // serving mode: a line per connection opened and closed
    var traced: Set<Int> = [], traces: [Int: [String]] = [:], stopLines: [Request: String] = [:]

    init(ring: Ring, listenFD: Int32) { (self.ring, self.listenFD) = (ring, listenFD) }

    func queue(_ request: Request, slot: Int = 0, _ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
        let sqe = getSQE(ring)
        prepare(sqe)
        io_uring_sqe_set_data64(sqe, userData(request, slot: slot))
        inFlight += 1
    }

    // A plain accept completes once, with one fd, and is queued again after its CQE (lesson 19's
    // multishot accept stays armed). The length is reset to the address's size before each one.
    func queueAccept() {
        peerLength.pointee = socklen_t(MemoryLayout<sockaddr_in>.size)
        let address = UnsafeMutablePointer<sockaddr>(OpaquePointer(peer))  // the same address, as accept's C type
        queue(.accept) { io_uring_prep_accept($0, listenFD, address, peerLength, Int32(SOCK_CLOEXEC.rawValue)) }
    }
    func queueRecv(_ c: Connection) {  // into the whole buffer: any number of bytes up to 16 KiB
        queue(.recv, slot: c.slot) { io_uring_prep_recv($0, c.fd, c.buffer.baseAddress, c.buffer.count, 0) }
    }
    func queueSend(_ c: Connection) {  // what the recv brought that is not sent yet
        queue(.send, slot: c.slot) { io_uring_prep_send($0, c.fd, c.buffer.baseAddress! + c.sent, c.filled - c.sent, 0) }
    }
    func queueClose(_ c: Connection) { queue(.close, slot: c.slot) { io_uring_prep_close($0, c.fd) } }
    func closeListener() { queue(.closeListener) { io_uring_prep_close($0, listenFD) } }

    func event(_ line: String) { print(line); fflush(nil) }  // at once, even into a pipe: a test may wait for it
    func trace(_ c: Connection, _ request: String, _ cqe: io_uring_cqe, _ next: String) {
        if traced.contains(c.id) { traces[c.id, default: []].append("  \(request): \(format18(cqe)) -> \(next)") }
    }

    // MARK: - 5. The state machine: one CQE at a time, and each queues what comes next

    func handle(_ cqe: io_uring_cqe) {
        inFlight -= 1
        let slot = Int(cqe.user_data >> 8 & 0xff)
        switch (Request(rawValue: cqe.user_data & 0xff), slots[slot]) {
        case (.accept, _): acceptDone(cqe)
        case (.recv, let c?): recvDone(c, cqe)
        case (.send, let c?): sendDone(c, cqe)
        case (.close, let c?): closeDone(c, cqe)
        case (.closeRefused, _):
            if cqe.res < 0 { print("closing a refused connection: \(format18(cqe))") }
            resumeAccepting()
        case (.cancelAll, _): stopLines[.cancelAll] = "stopping: IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY: \(format18(cqe))"
        case (.closeListener, _): stopLines[.closeListener] = "listener closed: \(format18(cqe))"
        case (nil, _): fail("a CQE this server never asked for: \(format18(cqe))")
        default: fail("no connection in slot \(slot) for \(format18(cqe))")  // a request that outlived its connection
        }
    }

    // accept: res is the new connection's fd. It gets a free slot and its first recv; with all 64
    // slots taken it is closed at once, unread. Then the next accept, so that one always waits.
    // Out of fds (-EMFILE, -ENFILE), an accept queued again would fail again at once, forever:
    // accepting pauses until a close frees an fd. With nothing to close, or any other error, the
    // server ends.
    func acceptDone(_ cqe: io_uring_cqe) {
        if stopping {  // -ECANCELED, or a connection that came first: refused; then the listener's close
            stopLines[.accept] = "accept: \(format18(cqe))"
            if cqe.res >= 0 { refuse(cqe.res, "the server is stopping") }
            return closeListener()
        }
        if cqe.res == -EMFILE || cqe.res == -ENFILE, open > 0 {
            acceptPaused = true
            return event("accept: \(format18(cqe)); accepting again after the next close")
        }
        guard cqe.res >= 0 else {  // close what is open, then stop
            for c in slots.compactMap({ $0 }) { close(c.fd) }
            close(listenFD)
            fail("accept: \(format18(cqe))")
        }
        if let slot = (1...Self.maxConnections).first(where: { slots[$0] == nil }) {
            accepted += 1
            let c = Connection(id: accepted, slot: slot, fd: cqe.res, buffer: UnsafeMutableRawBufferPointer(
                rebasing: buffers[(slot - 1) * Self.bufferSize ..< slot * Self.bufferSize]))
            (slots[slot], open) = (c, open + 1)
            trace(c, "accept", cqe, "slot \(slot): recv")
            if printEvents { event("connection \(c.id) opened: slot \(slot), fd \(c.fd), from \(peerText)") }
            queueRecv(c)
        } else {
            refuse(cqe.res, "\(Self.maxConnections) connections are open (the limit)")
        }
        queueAccept()
    }
    func refuse(_ fd: Int32, _ why: String) {
        (accepted, refused) = (accepted + 1, refused + 1)
        event("connection \(accepted) refused: \(why); closing fd \(fd)")
        queue(.closeRefused) { io_uring_prep_close($0, fd) }
    }
    func resumeAccepting() {  // a close has freed an fd
        guard acceptPaused && !stopping else { return }
        acceptPaused = false
        queueAccept()
    }
    var peerText: String {
        let address = UInt32(bigEndian: peer.pointee.sin_addr.s_addr)
        return "\(address >> 24).\(address >> 16 & 255).\(address >> 8 & 255).\(address & 255):\(UInt16(bigEndian: peer.pointee.sin_port))"
    }

    // recv: res > 0 is that many bytes in the buffer: send them back. res 0 is EOF (the client
    // closed its side), res < 0 an error (-ECONNRESET: the client reset the connection): close.
    func recvDone(_ c: Connection, _ cqe: io_uring_cqe) {
        guard cqe.res > 0, !stopping else { return end(c, "recv", cqe) }
        (c.recvs, c.received, c.filled, c.sent) = (c.recvs + 1, c.received + Int(cqe.res), Int(cqe.res), 0)
        trace(c, "recv", cqe, "send \(cqe.res) bytes")
        queueSend(c)
    }

    // send: res is how many bytes the kernel took, which may be fewer than asked (a short send):
    // send the rest, from where it stopped. All sent: the buffer is free, recv again.
    // res < 0 (-ECONNRESET, -EPIPE: the client is gone): close.
    func sendDone(_ c: Connection, _ cqe: io_uring_cqe) {
        guard cqe.res > 0 else { return end(c, "send", cqe) }
        (c.sends, c.echoed, c.sent) = (c.sends + 1, c.echoed + Int(cqe.res), c.sent + Int(cqe.res))
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

    // close: the fd is gone, and with it the connection's last request: its slot and buffer are free.
    func closeDone(_ c: Connection, _ cqe: io_uring_cqe) {
        trace(c, "close", cqe, "slot \(c.slot) free")
        if cqe.res < 0 { print("connection \(c.id): close: \(format18(cqe))") }
        (slots[c.slot], open) = (nil, open - 1)
        closed.append(c)
        if printEvents { event(c.summary) }
        resumeAccepting()
    }

    // MARK: - 6. The loop: submit, wait at most a second, handle every CQE there is (liburing 2.3's
    // io_uring_submit_and_wait_timeout returns the SQEs it submitted, not whether a CQE came)

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

    // MARK: - 7. Stopping: one cancel for all that waits; each CQE then closes its fd. Nothing in
    // flight: every connection and the listener are closed.

    func stop() {
        stopping = true
        queue(.cancelAll) { io_uring_prep_cancel64($0, 0, Int32(IORING_ASYNC_CANCEL_ANY)) }
        if acceptPaused { closeListener() }  // no accept in flight whose CQE would close it
    }
    var stopped: Bool { stopping && inFlight == 0 }

    func finish() {  // stopped: nothing is in flight, nothing points into this memory
        for request in [Request.cancelAll, .accept, .closeListener] { if let line = stopLines[request] { print(line) } }
        buffers.deallocate()
        peer.deallocate()
        peerLength.deallocate()
        waitLimit.deallocate()
        destroyRing(ring)
    }
}

let server = EchoServer(ring: ring, listenFD: listener.fd)
server.queueAccept()

// MARK: - 8. Serving: until Ctrl-C (the kernel then closes our fds), or S seconds and a clean stop

if portOption != nil || secondsOption != nil {
    print(secondsOption.map { "serving for \($0) s" } ?? "serving until Ctrl-C", terminator: "")
    server.event("; try: nc -N 127.0.0.1 \(listener.port)")
    server.printEvents = true
    _ = server.run(until: { false }, deadline: secondsOption.map { clock.now + .seconds($0) })
    print("stopping after \(secondsOption ?? 0) s: \(count(server.open, "connection")) open")
    server.stop()
    guard server.run(until: { server.stopped }, deadline: clock.now + .seconds(5)) else { fail("the server did not stop within 5 s") }
    server.finish()
    print("served \(count(server.accepted - server.refused, "connection")), refused \(server.refused)")
    exit(0)
}

// MARK: - 9. The demo: ten clients, threads of this process with plain calls (not the lesson)
//
// They connect one at a time (LabNet's DemoClients 1 and 2 from this thread), so the accept queue
// (first in, first out) gives them ids 1 to 10: 1 sends a line, reads the echo, resets; 2 sends and
// never reads, until it is stuck for 100 ms, then closes; 3-10 are LabNet's EchoClients, every echo checked.

let started = clock.now
server.traced = [1]
let line = Array("a line, then a reset\n".utf8)
let resetter = DemoClient(port: listener.port, .echoThenReset(line))  // client 1
let staller = DemoClient(port: listener.port, .sendWithoutReading)    // client 2
let clients = EchoClients(port: listener.port, clients: 8, messages: 50, size: 64, firstID: 3)

let allClosed = server.run(until: { server.closed.count + server.refused == 10 }, deadline: clock.now + .seconds(10))
let resetterEchoed = resetter.finish()
_ = staller.finish()
let (echoed, problems) = clients.finish()
let elapsed = clock.now - started
server.stop()
guard server.run(until: { server.stopped }, deadline: clock.now + .seconds(5)) else { fail("the server did not stop within 5 s") }

print("connection 1, whose client sends \(line.count) bytes, reads them back, then resets, CQE by CQE:")
server.traces[1, default: []].forEach { print($0) }
print("every connection, by id (2: a client that stops reading; 3-10: the echo clients):")
for c in server.closed.sorted(by: { $0.id < $1.id }) { print(c.summary) }
let echoConnections = server.closed.filter { $0.id >= 3 }
print("connections 3-10 echoed \(echoConnections.reduce(0) { $0 + $1.echoed }) bytes in "
    + "\(count(echoConnections.reduce(0) { $0 + $1.sends }, "send"))")
print("their clients: \(echoed) of 400 echoes came back byte for byte" + problems.map { "; \($0)" }.joined())
print("the demo took \(elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000) ms")
server.finish()
guard allClosed, problems.isEmpty, resetterEchoed else {
    fail(!allClosed ? "the clients did not finish within 10 s" : problems.first ?? "client 1's echo did not come back")
}
