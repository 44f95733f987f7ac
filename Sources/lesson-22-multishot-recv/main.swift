// Lesson 22: multishot recv
//
// Lesson 18's echo server asks for every message with a request of its own: accept, then recv into
// the connection's buffer, send it back, recv again, one SQE per message. Here the same server
// needs one SQE per listener and one per connection. A multishot accept
// (io_uring_prep_multishot_accept, Linux 5.19) posts a CQE for every new connection; a multishot
// recv (io_uring_prep_recv_multishot, Linux 6.0) posts a CQE every time data arrives. Each such CQE
// carries IORING_CQE_F_MORE, "this request goes on"; a CQE without it is the request's last.
//
// A recv that goes on cannot own one buffer: the kernel would write the next message over the last
// before we had sent it back. So a multishot recv must use provided buffers (IOSQE_BUFFER_SELECT):
// for each completion the kernel takes a buffer from a buffer ring we registered (lesson 21) and
// names it in the CQE's flags (buf=N). That buffer is ours until we put it back into the ring, and
// we put it back only when the send that echoes it has completed.
//
// When the ring is empty the kernel has no buffer to pick: the recv completes with -ENOBUFS and
// without F_MORE. That ends the multishot. The bytes stay in the socket, and we re-arm. Part 1
// provokes this on purpose (16 buffers, one client that writes 20 messages at once); part 2 is the
// server at work, 4 clients x 400 messages, and its round trips per second. With --port P it serves
// until Ctrl-C (or --seconds S), for nc or socat.
//
// Read next: man 3 io_uring_prep_recv_multishot, man 3 io_uring_prep_multishot_accept,
// man 3 io_uring_register_buf_ring, man 3 io_uring_buf_ring_add, man 3 io_uring_buf_ring_advance.

import Glibc
import CLiburing
import LabSupport
import LabNet
import Synchronization

let usage = "lesson-22-multishot-recv [--port P [--seconds S]]"
let arguments = lessonArguments(usage: usage, max: 0, options: ["--port", "--seconds"])
let servePort = numberOption("--port", in: arguments, 0...65535)
let serveSeconds = numberOption("--seconds", in: arguments, 1...86_400)
if serveSeconds != nil && servePort == nil { fail("--seconds needs --port (usage: \(usage))") }

// MARK: - 1. The ring, a probe for multishot recv, the listener
//
// The probe finds the opcodes; whether IORING_OP_RECV takes the multishot flag it cannot say. A
// multishot recv on fd -1 can: since 6.0 the SQE is accepted and the missing file gives -EBADF
// (6.18 answers that), while an older kernel rejects the flag itself with -EINVAL.

let ring = makeRing(entries: 128)
requireOpcodes(ring, IORING_OP_SOCKET, IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND,
               IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL)
let probe = getSQE(ring)
io_uring_prep_recv_multishot(probe, -1, nil, 0, 0)
io_uring_sqe_set_flags(probe, IOSQE_BUFFER_SELECT)
checkSubmit(io_uring_submit(ring), 1)
if waitCQE(ring, seconds: 5).res == -EINVAL {
    skip("this kernel does not support IORING_RECV_MULTISHOT (added in Linux 6.0)")
}
let listener = listenOnLoopback(ring, port: UInt16(servePort ?? 0))

// MARK: - 2. The buffer ring
//
// As lesson 21 does by hand (liburing 2.3 has no io_uring_setup_buf_ring): map memory, put the
// ring's entries in its first page (page-aligned, as the kernel demands) and the 16 buffers of
// 64 bytes after it, register the ring as buffer group 0, and hand every buffer to the kernel.
// We write entries and move the tail; the kernel keeps its head to itself and takes the entry at
// head for each completion. head == tail: the ring is empty, and the next pick is -ENOBUFS.

let bufferCount: UInt32 = 16, bufferSize = 64, bufferGroup: UInt16 = 0
let pageSize = Int(sysconf(Int32(_SC_PAGESIZE))), mappedBytes = pageSize + Int(bufferCount) * bufferSize
let mapping = mmap(nil, mappedBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
guard let mapping, mapping != UnsafeMutableRawPointer(bitPattern: -1) else {
    close(listener.fd)
    fail("mmap: \(describe(res: -errno))")
}
let bufRing = mapping.bindMemory(to: io_uring_buf_ring.self, capacity: 1), buffers = mapping + pageSize
var registration = io_uring_buf_reg()
registration.ring_addr = UInt64(UInt(bitPattern: mapping))
registration.ring_entries = bufferCount
registration.bgid = bufferGroup
io_uring_buf_ring_init(bufRing)
let registered = io_uring_register_buf_ring(ring, &registration, 0)  // copied during the call
if registered != 0 {
    close(listener.fd)
    if registered == -EINVAL { skip("io_uring_register_buf_ring returned -EINVAL: buffer rings came in Linux 5.19") }
    fail("io_uring_register_buf_ring returned \(describe(res: registered))")
}

/// Put buffer `bid` at the ring's tail and publish the new tail (a store-release the kernel reads).
@MainActor  // as the ring, the buffers and the server: all of it lives on the main thread
func giveBack(_ bid: UInt16) {
    io_uring_buf_ring_add(bufRing, buffers + Int(bid) * bufferSize, UInt32(bufferSize), bid,
                          io_uring_buf_ring_mask(bufferCount), 0)
    io_uring_buf_ring_advance(bufRing, 1)
}
for bid in 0..<UInt16(bufferCount) { giveBack(bid) }
print("listening on 127.0.0.1:\(listener.port)")
print("buffer ring: \(bufferCount) buffers of \(bufferSize) bytes, group \(bufferGroup): "
    + "io_uring_register_buf_ring = \(registered)")
fflush(nil)  // stdout may be a pipe (a test waits for the port): out now, not at exit

// MARK: - 3. The server: one function per kind of CQE
//
// user_data = connection x 10 + kind: 1 the accept (the listener is "connection 0"), 2 a
// connection's recv, 3 its send, 4 its close, 5 a cancel. conn 3's recv is 32, its send 33.
//
// Each connection keeps, in memory allocated when it is accepted, a FIFO of the buffers it received
// and has not yet echoed, with one send in flight at a time: two sends on one socket could finish
// out of order if the first had to wait for room. Nothing in the loop allocates per message: the
// bytes stay in the ring's buffers, the FIFO is preallocated, and lines are printed only in part 1
// and for events. A send uses MSG_WAITALL, so the kernel itself finishes a short send.

enum Kind: UInt64 { case accept = 1, recv, send, close, cancel }

final class Connection {
    let id: Int, fd: Int32
    let fifo = UnsafeMutablePointer<(bid: UInt16, length: Int)>.allocate(capacity: Int(bufferCount))
    var first = 0, count = 0, sent = 0  // the FIFO, and how much of its first buffer is sent
    var receiving = true, sending = false, closing = false, rearmWanted = false, broken = false
    var bytesIn = 0, bytesOut = 0, recvs = 0, enobufs = 0, end = ""
    init(id: Int, fd: Int32) { (self.id, self.fd) = (id, fd) }
    deinit { fifo.deallocate() }
}

@MainActor
final class Server {
    var connections: [Int: Connection] = [:], summaries: [(id: Int, line: String)] = []
    var nextId = 1, closed = 0, bytesIn = 0, bytesOut = 0, free = Int(bufferCount)
    var enobufsEnds = 0, rearms = 0, rearmsWanted = 0
    var logData = false, logEvents = false, stopping = false, accepting = true
    var acceptEnd: io_uring_cqe? = nil, acceptCancel: io_uring_cqe? = nil
    let peek = UnsafeMutableRawPointer.allocate(byteCount: 65_536, alignment: 16)  // the MSG_PEEK witness's

    func sqe(_ id: Int, _ kind: Kind) -> UnsafeMutablePointer<io_uring_sqe> {
        if io_uring_sq_space_left(ring) == 0 { _ = io_uring_submit(ring) }  // SQ full: hand those over first
        let sqe = getSQE(ring)
        io_uring_sqe_set_data64(sqe, UInt64(id) * 10 + kind.rawValue)
        return sqe
    }
    func armAccept() {  // no address wanted: one sockaddr for every connection would be overwritten
        io_uring_prep_multishot_accept(sqe(0, .accept), listener.fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
    }
    func armRecv(_ c: Connection) {  // len 0, no buffer: each completion takes one from group 0
        let s = sqe(c.id, .recv)
        io_uring_prep_recv_multishot(s, c.fd, nil, 0, 0)
        io_uring_sqe_set_flags(s, IOSQE_BUFFER_SELECT)
        s.pointee.buf_group = bufferGroup
        c.receiving = true
    }
    func cancel(_ id: Int, _ kind: Kind) {
        io_uring_prep_cancel64(sqe(id, .cancel), UInt64(id) * 10 + kind.rawValue, 0)
    }

    func handle(_ cqe: io_uring_cqe) {
        let id = Int(cqe.user_data / 10), more = cqe.flags & IORING_CQE_F_MORE != 0
        switch (Kind(rawValue: cqe.user_data % 10), connections[id]) {
        case (.accept, _): accepted(cqe, more)
        case (.recv, let c?): received(c, cqe, more)
        case (.send, let c?): sent(c, cqe)
        case (.close, let c?):
            if logEvents { printCQE(cqe, "close conn \(id)") }
            summaries.append((id, "conn \(id): \(c.bytesIn) bytes in \(c.recvs) recvs, \(c.bytesOut) echoed, "
                + "\(c.enobufs) ENOBUFS; its recv ended with \(c.end)"))
            connections[id] = nil
            (closed, bytesIn, bytesOut) = (closed + 1, bytesIn + c.bytesIn, bytesOut + c.bytesOut)
        case (.cancel, _):  // the cancel's own CQE: 0 found it, -ENOENT it had ended already
            if id == 0 { acceptCancel = cqe } else if logEvents { printCQE(cqe, "cancel conn \(id)") }
        default: break
        }
    }

    func accepted(_ cqe: io_uring_cqe, _ more: Bool) {
        if cqe.res >= 0 {
            let c = Connection(id: nextId, fd: cqe.res)
            nextId += 1
            connections[c.id] = c
            print("accept: \(format(cqe)) -> conn \(c.id)")
            if stopping { (c.receiving, c.end) = (false, "nothing: accepted while stopping"); finishIfDone(c) }
            else { armRecv(c) }
        }
        if !more {  // the multishot accept has ended: cancelled by stop(), or an error
            (accepting, acceptEnd) = (false, cqe)
            if !stopping { print("accept ended: \(format(cqe)); no F_MORE, no more connections") }
        }
    }

    func received(_ c: Connection, _ cqe: io_uring_cqe, _ more: Bool) {
        if cqe.flags & IORING_CQE_F_BUFFER != 0 {  // the kernel took this buffer from the ring
            let bid = UInt16(cqe.flags >> IORING_CQE_BUFFER_SHIFT)
            free -= 1
            if logData { printCQE(cqe, "recv conn \(c.id)") }
            (c.bytesIn, c.recvs) = (c.bytesIn + Int(cqe.res), c.recvs + 1)
            if c.broken { giveBack(bid); free += 1 }  // a send failed: no echo goes out any more
            else {
                c.fifo[(c.first + c.count) % Int(bufferCount)] = (bid, Int(cqe.res))
                c.count += 1
                if !c.sending { sendNext(c) }
            }
        }
        guard !more else {  // a failure that leaves the multishot armed (not seen on 6.1, 6.12, 6.18)
            if cqe.res < 0 && logEvents { print("recv conn \(c.id): \(format(cqe)): F_MORE, the multishot goes on") }
            return
        }
        c.receiving = false  // no F_MORE: this recv will post nothing more
        if (cqe.res == -ENOBUFS || cqe.res > 0) && !c.broken {  // re-arm, once its echoes are out
            (c.rearmWanted, rearmsWanted) = (true, rearmsWanted + 1)
            if cqe.res > 0 { if logEvents { print("recv conn \(c.id): ended after data, without F_MORE") }; return }
            (enobufsEnds, c.enobufs) = (enobufsEnds + 1, c.enobufs + 1)
            guard logEvents else { return }
            let waiting = recv(c.fd, peek, 65_536, Int32(MSG_PEEK | MSG_DONTWAIT))  // a look, not a read
            print("recv conn \(c.id): \(format(cqe)): no F_MORE, the multishot has ended; "
                + "\(waiting == 65_536 ? "at least " : "")\(max(waiting, 0)) bytes wait in the socket (MSG_PEEK)")
            return
        }
        let why = cqe.res == 0 ? "EOF" : cqe.res == -ECONNRESET ? "the peer reset the connection"
            : cqe.res == -ECANCELED ? "cancelled" : "an error"
        c.end = "res=\(describe(res: cqe.res)) flags=\(format(cqeFlags: cqe.flags)) (\(why))"
        if logEvents { print("recv conn \(c.id): \(format(cqe)): \(why); no F_MORE, the multishot has ended") }
        if cqe.res < 0 && cqe.res != -ECANCELED { dropQueue(c) }  // no one will read an echo
        finishIfDone(c)
    }

    func sendNext(_ c: Connection) {
        let (bid, length) = c.fifo[c.first]
        io_uring_prep_send(sqe(c.id, .send), c.fd, buffers + Int(bid) * bufferSize + c.sent, length - c.sent,
                           Int32(MSG_WAITALL | MSG_NOSIGNAL))
        c.sending = true
    }

    func sent(_ c: Connection, _ cqe: io_uring_cqe) {
        c.sending = false
        let (bid, length) = c.fifo[c.first]
        if cqe.res < 0 {  // the peer has gone: echo nothing more, stop the recv
            if logEvents { printCQE(cqe, "send conn \(c.id)") }
            if c.end.isEmpty { c.end = "nothing yet; a send failed with \(describe(res: cqe.res))" }
            if c.rearmWanted { (c.rearmWanted, rearmsWanted) = (false, rearmsWanted - 1) }
            c.broken = true
            dropQueue(c)
            if c.receiving { cancel(c.id, .recv) }
            return finishIfDone(c)
        }
        (c.bytesOut, c.sent) = (c.bytesOut + Int(cqe.res), c.sent + Int(cqe.res))
        if c.sent < length { return sendNext(c) }  // short (rare with MSG_WAITALL): send the rest
        // The send has completed: the kernel will not read this buffer again. Only now may it go
        // back into the ring, where the next recv, on any connection, may fill it.
        (c.first, c.count, c.sent) = ((c.first + 1) % Int(bufferCount), c.count - 1, 0)
        giveBack(bid)
        free += 1
        if logData { print("send conn \(c.id): \(format(cqe)): buffer \(bid) back in the ring (\(free) free)") }
        if c.count > 0 { sendNext(c) } else { finishIfDone(c) }
    }

    func dropQueue(_ c: Connection) {  // every queued buffer but one that a send in flight still reads
        while c.count > (c.sending ? 1 : 0) {
            giveBack(c.fifo[(c.first + c.count - 1) % Int(bufferCount)].bid)
            (free, c.count) = (free + 1, c.count - 1)
        }
    }

    func finishIfDone(_ c: Connection) {  // close once the recv has ended and the last echo is out
        if !c.receiving && !c.sending && c.count == 0 && !c.rearmWanted && !c.closing {
            c.closing = true
            io_uring_prep_close(sqe(c.id, .close), c.fd)
        }
    }

    // After each batch of CQEs: re-arm the recvs that ENOBUFS ended, once the connection's echoes
    // are all out (its buffers are back) and the ring has a buffer. Arming on an empty ring would
    // only bring another -ENOBUFS at once: the kernel picks the buffer before it looks for data.
    func rearm() {
        guard rearmsWanted > 0 else { return }
        for c in connections.values where c.rearmWanted && c.count == 0 && (free > 0 || stopping) {
            (c.rearmWanted, rearmsWanted) = (false, rearmsWanted - 1)
            if stopping { c.end = "-ENOBUFS, not re-armed while stopping"; finishIfDone(c); continue }
            rearms += 1
            if logEvents { print("re-arm conn \(c.id): recv multishot again (user_data=\(c.id * 10 + 2)), \(free) free") }
            armRecv(c)
        }
    }

    /// Submit, wait (200 ms at most at a time), handle every CQE, until `done` or `seconds` pass.
    func run(seconds: Double, until done: () -> Bool) -> Bool {
        let deadline = now() + seconds
        var wait = __kernel_timespec(tv_sec: 0, tv_nsec: 200_000_000), cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        while !done() {
            if now() > deadline || (!stopping && stopRequested.load(ordering: .relaxed)) { return false }
            let ret = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &wait, nil)
            if ret < 0 && ret != -ETIME && ret != -EINTR { fail("io_uring_submit_and_wait_timeout returned \(describe(res: ret))") }
            while io_uring_peek_cqe(ring, &cqe) == 0, let next = cqe {
                let copy = next.pointee
                io_uring_cqe_seen(ring, next)
                handle(copy)
            }
            rearm()
            if logEvents { fflush(nil) }  // events as they happen, even into a pipe
        }
        return true
    }

    /// Cancel the multishot accept and every recv (and, after 1 s, the sends still waiting);
    /// close each connection, then the listener.
    func stop() {
        (stopping, acceptCancel) = (true, nil)
        let cancelledAccept = accepting
        if accepting { cancel(0, .accept) }
        for c in connections.values where c.receiving { cancel(c.id, .recv) }
        let done = { self.connections.isEmpty && !self.accepting && (!cancelledAccept || self.acceptCancel != nil) }
        if !run(seconds: 1, until: done) {  // an echo still waits after 1 s: a peer that does not read
            for c in connections.values where c.sending { dropQueue(c); cancel(c.id, .send) }
            guard run(seconds: 5, until: done) else { fail("the connections did not close within 5 s") }
        }
        if let acceptCancel { printCQE(acceptCancel, "cancel accept") }
        if let acceptEnd { print("accept's last CQE: \(format(acceptEnd)): no F_MORE, the multishot accept has ended") }
        io_uring_prep_close(sqe(0, .close), listener.fd)
        checkSubmit(io_uring_submit(ring), 1)
        printCQE(waitCQE(ring, seconds: 5), "close listener")
        print("io_uring_unregister_buf_ring = \(describe(res: io_uring_unregister_buf_ring(ring, Int32(bufferGroup))))")
    }
}

nonisolated func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
let stopRequested = Atomic<Bool>(false)  // set by SIGINT and SIGTERM in serving mode
let server = Server()
server.armAccept()

// MARK: - 4. Serving mode: --port P [--seconds S]
//
// Until Ctrl-C (a handler sets a flag, which the 200 ms waits notice) or S seconds. Then stop()
// cancels the multishots, whose last CQEs come without F_MORE, and closes every fd.

if servePort != nil {
    server.logEvents = true
    signal(SIGINT) { _ in stopRequested.store(true, ordering: .relaxed) }
    signal(SIGTERM) { _ in stopRequested.store(true, ordering: .relaxed) }
    _ = server.run(seconds: Double(serveSeconds ?? 86_400 * 365), until: { false })
    print("stopping: \(stopRequested.load(ordering: .relaxed) ? "a signal came" : "\(serveSeconds ?? 0) s have passed")")
} else {
    // MARK: - 5. Part 1: the multishot recv's end, and the re-arm
    //
    // The client writes 20 messages of 64 bytes in one send(2), then reads. All 1280 bytes sit in
    // the socket when the recv runs, and the kernel loops: a buffer, a recv, a CQE with F_MORE,
    // while the socket holds more (F_SOCK_NONEMPTY) and the ring has a buffer. After 16, it has
    // none: -ENOBUFS, without F_MORE. We echo the 16, re-arm, and the last 256 bytes come in.

    let burst = 20
    print("part 1: one client writes \(burst) messages of \(bufferSize) bytes (\(burst * bufferSize) bytes) "
        + "in one send(2), then reads")
    (server.logData, server.logEvents) = (true, true)
    let client = BurstClient(port: listener.port, messages: burst, size: bufferSize)
    let partOne = server.run(seconds: 5) { server.closed == 1 }
    let verdict = client.finish()
    guard partOne else { fail("part 1 did not finish within 5 s") }
    print(verdict)

    // MARK: - 6. Part 2: the echo server at work
    //
    // 4 clients, 400 messages of 64 bytes each, one at a time. A connection holds at most two
    // buffers at once (one whose send CQE we have not reaped yet, and the next message's), and
    // some kernels (6.1) look for one more after every completion, data or not: 4 x 2 + 1 of
    // 16 never runs dry, and the ENOBUFS count stays at part 1's.

    let (clients, messages) = (4, 400)
    print("part 2: \(clients) clients x \(messages) messages of \(bufferSize) bytes, each echoed before the next is sent")
    (server.logData, server.logEvents) = (false, false)
    let start = now()
    let echoClients = EchoClients(port: listener.port, clients: clients, messages: messages, size: bufferSize)
    let partTwo = server.run(seconds: 10) { server.closed == 1 + clients }
    let (echoed, problems) = echoClients.finish()
    let seconds = now() - start
    let trouble = problems.isEmpty ? "" : "; " + problems.joined(separator: "; ")
    guard partTwo else { fail("part 2 did not finish within 10 s\(trouble)") }
    print("clients: \(echoed) of \(clients * messages) round trips echoed byte for byte\(trouble)")
    print("round trips per second: \(Int(Double(echoed) / seconds)) (measured: \(echoed) in \(Int(seconds * 1000)) ms)")
}

server.stop()
for (_, line) in server.summaries.sorted(by: { $0.id < $1.id }) { print(line) }
print("total: \(server.summaries.count) connections, \(server.bytesIn) bytes in, \(server.bytesOut) echoed; "
    + "ENOBUFS ends: \(server.enobufsEnds), re-arms: \(server.rearms); "
    + "\(server.free) of \(bufferCount) buffers back in the ring")
munmap(mapping, mappedBytes)
destroyRing(ring)

// MARK: - 7. Part 1's client
//
// Plain blocking calls on a thread of its own (the client is not the subject): one send(2) of
// `messages` messages of `size` bytes, each message different, then it reads the echo and compares.

final class BurstClient: Sendable {
    private let verdict = Mutex<String>(""), thread = Mutex<pthread_t?>(nil)
    init(port: UInt16, messages: Int, size: Int) {
        let started = startThread { [self] in
            let bytes = (0..<messages * size).map { UInt8(truncatingIfNeeded: ($0 / size) &* 37 &+ $0 % size) }
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            defer { close(fd) }
            var address = loopbackAddress(port: port), limit = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            let sent = connected != 0 ? -1 : bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            var echo = [UInt8](repeating: 0, count: bytes.count), received = 0
            while received < echo.count,
                  case let n = echo[received...].withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }), n > 0 {
                received += n
            }
            verdict.withLock { $0 = "client: sent \(sent) bytes in one send(2), \(received) came back, "
                + (echo == bytes ? "every byte in order" : "NOT as sent") }
        }
        thread.withLock { $0 = started }
    }
    func finish() -> String {
        if let thread = thread.withLock({ $0 }) { pthread_join(thread, nil) }
        return verdict.withLock { $0 }
    }
}
