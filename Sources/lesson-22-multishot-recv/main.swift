// Lesson 22: multishot recv, an echo server with one recv SQE per connection
//
// Lesson 18 queues, for each connection, a recv into its own 16 KiB buffer, then a send, then the
// next recv. Here one multishot accept (Linux 5.19) posts a CQE per connection, and one multishot
// recv per connection (Linux 6.0) posts a CQE each time data arrives, with IORING_CQE_F_MORE while
// it goes on. Each recv CQE names a buffer the kernel took from our buffer ring (buf=N); it goes
// back only after the send that echoes it has completed. An empty ring ends the multishot
// (-ENOBUFS, no F_MORE), and we re-arm. With --port P it serves, for nc or socat.

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

// MARK: - 1. The ring, a probe for multishot recv, the buffer ring, the listener
//
// A probe finds opcodes, not flags. A multishot recv on fd -1 tells: since 6.0 the flag is
// accepted and the missing file gives -EBADF (as here); an older kernel says -EINVAL.

let ring = makeRing(entries: 128)
requireOpcodes(ring, IORING_OP_SOCKET, IORING_OP_ACCEPT, IORING_OP_RECV, IORING_OP_SEND,
               IORING_OP_CLOSE, IORING_OP_ASYNC_CANCEL)
let probe = getSQE(ring)
io_uring_prep_recv_multishot(probe, -1, nil, 0, 0)
io_uring_sqe_set_flags(probe, IOSQE_BUFFER_SELECT)
checkSubmit(io_uring_submit(ring), 1)
if waitCQE(ring, seconds: 5).res == -EINVAL { skip("this kernel does not support IORING_RECV_MULTISHOT (added in Linux 6.0)") }

// 16 buffers of 64 bytes in group 0, mapped, registered and all put in the ring as lesson 21 does
// step by step (LabNet's makeBufferRing). We write entries and move the tail; the kernel takes the
// entry at its head for each completion. head == tail: the ring is empty, the next pick -ENOBUFS.
let bufferCount: UInt32 = 16, bufferSize = 64
let pool = makeBufferRing(ring, entries: bufferCount, bufferSize: bufferSize, group: 0)
let listener = listenOnLoopback(ring, port: UInt16(servePort ?? 0))
print("listening on 127.0.0.1:\(listener.port)")
print("buffer ring: \(bufferCount) buffers of \(bufferSize) bytes, group \(pool.group), tail \(pool.br.pointee.tail)")
fflush(nil)  // stdout may be a pipe (a test waits for the port): out now, not at exit

// MARK: - 2. The server: one function per kind of CQE
//
// user_data = connection x 10 + kind: 1 the accept (the listener is "connection 0"), 2 a
// connection's recv, 3 its send, 4 its close, 5 a cancel. conn 3's recv is 32, its send 33.
//
// Each connection keeps, in memory allocated when it is accepted, a FIFO of the buffers it received
// and has not yet echoed, with one send in flight at a time: two sends on one socket could finish
// out of order if the first had to wait for room. Nothing in the loop allocates per message: the
// bytes stay in the ring's buffers, and lines are printed only in part 1 and for events.

enum Kind: UInt64 { case accept = 1, recv, send, close, cancel }

final class Connection {
    let id: Int, fd: Int32
    let fifo = UnsafeMutablePointer<(bid: UInt16, length: Int)>.allocate(capacity: Int(bufferCount))
    var first = 0, count = 0, sent = 0  // the FIFO, and how much of its first buffer is sent
    var receiving = true, sending = false, closing = false, rearmWanted = false, broken = false
    var bytesIn = 0, bytesOut = 0, recvs = 0, enobufs = 0, end = "", sendError = ""
    init(id: Int, fd: Int32) { (self.id, self.fd) = (id, fd) }
    deinit { fifo.deallocate() }
}

@MainActor  // as the ring, the buffers and the connections: all of it lives on the main thread
final class Server {
    var connections: [Int: Connection] = [:], summaries: [(id: Int, line: String)] = []
    var nextId = 1, closed = 0, bytesIn = 0, bytesOut = 0, free = Int(bufferCount)  // free: by our count
    var enobufsEnds = 0, rearms = 0, cancels = 0
    var logData = false, logEvents = false, stopping = false, accepting = true
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
    func armRecv(_ c: Connection) {  // len 0, no buffer: each completion takes one from the group
        let s = sqe(c.id, .recv)
        io_uring_prep_recv_multishot(s, c.fd, nil, 0, 0)
        io_uring_sqe_set_flags(s, IOSQE_BUFFER_SELECT)
        s.pointee.buf_group = pool.group
        (c.receiving, c.end) = (true, "")
    }
    func cancel(_ id: Int, _ kind: Kind) {
        io_uring_prep_cancel64(sqe(id, .cancel), UInt64(id) * 10 + kind.rawValue, 0)
        cancels += 1
    }
    /// Put buffer `bid` at the ring's tail and publish the new tail (a store-release the kernel reads).
    func giveBack(_ bid: UInt16) {
        io_uring_buf_ring_add(pool.br, pool.buffer(bid), UInt32(bufferSize), bid, io_uring_buf_ring_mask(bufferCount), 0)
        io_uring_buf_ring_advance(pool.br, 1)
        free += 1
        if logData { print("  buffer \(bid) back in the ring: tail \(pool.br.pointee.tail)") }
    }

    func handle(_ cqe: io_uring_cqe) {
        let id = Int(cqe.user_data / 10), more = cqe.flags & IORING_CQE_F_MORE != 0
        switch (Kind(rawValue: cqe.user_data % 10), connections[id]) {
        case (.accept, _): accepted(cqe, more)
        case (.recv, let c?): received(c, cqe, more)
        case (.send, let c?): sent(c, cqe)
        case (.close, let c?):
            if logEvents { printCQE(cqe, "close conn \(id)") }
            summaries.append((id, "conn \(id): \(c.bytesIn) bytes in \(c.recvs) recvs, \(c.bytesOut) echoed, \(c.enobufs) "
                + "ENOBUFS; its recv ended with \(c.end)" + (c.sendError.isEmpty ? "" : "; echoing stopped: \(c.sendError)")))
            connections[id] = nil
            (closed, bytesIn, bytesOut) = (closed + 1, bytesIn + c.bytesIn, bytesOut + c.bytesOut)
        case (.cancel, _):  // the cancel's own CQE: 0 found it, -ENOENT it had ended already
            cancels -= 1
            if id == 0 || logEvents { printCQE(cqe, id == 0 ? "cancel accept" : "cancel conn \(id)") }
        default: fail("a CQE for no connection: \(format(cqe))")  // a bug: every request has its connection
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
            accepting = false
            print("accept: \(format(cqe)): no F_MORE, the multishot accept has ended")
        }
    }

    func received(_ c: Connection, _ cqe: io_uring_cqe, _ more: Bool) {
        if cqe.flags & IORING_CQE_F_BUFFER != 0 {  // the kernel took this buffer from the ring: ours now
            let bid = UInt16(cqe.flags >> IORING_CQE_BUFFER_SHIFT)
            free -= 1
            if logData { printCQE(cqe, "recv conn \(c.id)") }
            (c.bytesIn, c.recvs) = (c.bytesIn + Int(cqe.res), c.recvs + 1)
            if c.broken { giveBack(bid) }  // a send failed: no echo goes out any more
            else {
                c.fifo[(c.first + c.count) % Int(bufferCount)] = (bid, Int(cqe.res))
                c.count += 1
                if !c.sending { sendNext(c) }
            }
        }
        guard !more else { if cqe.res < 0 && logEvents { printCQE(cqe, "recv conn \(c.id), F_MORE") }; return }
        c.receiving = false  // no F_MORE: this recv will post nothing more
        c.end = "res=\(describe(res: cqe.res)) flags=\(format(cqeFlags: cqe.flags))"
        if cqe.res == -ENOBUFS || cqe.res > 0 {  // the data goes on: re-arm, once the echoes are out
            if cqe.res == -ENOBUFS { (enobufsEnds, c.enobufs) = (enobufsEnds + 1, c.enobufs + 1) }
            c.end += cqe.res > 0 ? " (ended after data)" : " (no buffer)"
            if c.broken { c.end += ", not re-armed"; return finishIfDone(c) }
            c.rearmWanted = true
            guard logEvents && c.enobufs <= 3 else { return }  // a flood, when a peer sends without reading
            let waiting = recv(c.fd, peek, 65_536, Int32(MSG_PEEK | MSG_DONTWAIT))  // a look, not a read
            print("recv conn \(c.id): \(format(cqe)): no F_MORE, the multishot has ended; "
                + "\(waiting == 65_536 ? "at least " : "")\(max(waiting, 0)) bytes wait in the socket (MSG_PEEK)"
                + (c.enobufs == 3 ? "; further ends and re-arms of conn \(c.id) are counted, not printed" : ""))
            return
        }
        let why = cqe.res == 0 ? "EOF" : cqe.res == -ECONNRESET ? "the peer reset the connection"
            : cqe.res == -ECANCELED ? "cancelled" : "an error"
        c.end += " (\(why))"
        if logEvents { print("recv conn \(c.id): \(format(cqe)): \(why); no F_MORE, the multishot has ended") }
        if cqe.res < 0 && cqe.res != -ECANCELED { dropQueue(c) }  // no one will read an echo
        finishIfDone(c)
    }

    func sendNext(_ c: Connection) {  // MSG_WAITALL: the kernel itself finishes a short send
        let (bid, length) = c.fifo[c.first]
        io_uring_prep_send(sqe(c.id, .send), c.fd, pool.buffer(bid) + c.sent, length - c.sent, Int32(MSG_WAITALL | MSG_NOSIGNAL))
        c.sending = true
    }

    func sent(_ c: Connection, _ cqe: io_uring_cqe) {
        c.sending = false
        let (bid, length) = c.fifo[c.first]
        if cqe.res > 0 { (c.bytesOut, c.sent) = (c.bytesOut + Int(cqe.res), c.sent + Int(cqe.res)) }
        if cqe.res > 0 && c.sent < length && !stopping { return sendNext(c) }  // short (rare): send the rest
        if cqe.res <= 0 || c.sent < length {  // failed, or cut short by stop()'s cancel: no more echoes
            c.sendError = cqe.res <= 0 ? "a send got \(describe(res: cqe.res))" : "a cancelled send had sent \(c.sent) of \(length) bytes"
            if logEvents { print("send conn \(c.id): \(format(cqe))\(cqe.res > 0 ? ": short, cancelled" : ""); no more echoes") }
            if c.rearmWanted { (c.rearmWanted, c.end) = (false, c.end + ", not re-armed") }
            c.broken = true
            dropQueue(c)
            if c.receiving { cancel(c.id, .recv) }
            return finishIfDone(c)
        }
        if logData { printCQE(cqe, "send conn \(c.id)") }
        // The send has completed: the kernel will not read this buffer again. Only now may it go
        // back into the ring, where the next recv, on any connection, may fill it.
        (c.first, c.count, c.sent) = ((c.first + 1) % Int(bufferCount), c.count - 1, 0)
        giveBack(bid)
        if c.count > 0 { sendNext(c) } else { finishIfDone(c) }
    }

    func dropQueue(_ c: Connection) {  // every queued buffer but one that a send in flight still reads
        while c.count > (c.sending ? 1 : 0) {
            giveBack(c.fifo[(c.first + c.count - 1) % Int(bufferCount)].bid)
            c.count -= 1
        }
    }

    func finishIfDone(_ c: Connection) {  // close once the recv has ended and the last echo is out
        if !c.receiving && !c.sending && c.count == 0 && !c.rearmWanted && !c.closing {
            c.closing = true
            io_uring_prep_close(sqe(c.id, .close), c.fd)
        }
    }

    // After each batch of CQEs: re-arm the recvs that -ENOBUFS ended, once the connection's echoes
    // are all out (its buffers are back) and the ring holds a buffer. A recv armed on an empty ring
    // gets -ENOBUFS at once, data or not: the kernel picks the buffer before it looks for data
    // (with IORING_RECVSEND_POLL_FIRST in ioprio, it waits for data first, then says -ENOBUFS).
    func rearm() {
        for c in connections.values where c.rearmWanted && c.count == 0 && (free > 0 || stopping) {
            c.rearmWanted = false
            if stopping { c.end += ", not re-armed: stopping"; finishIfDone(c); continue }
            rearms += 1
            if logEvents && c.enobufs <= 3 { print("re-arm conn \(c.id): recv multishot again (user_data=\(c.id * 10 + 2)), \(free) free by our count") }
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
    /// close each connection, then the listener; compare our tail with the kernel's head.
    func stop() {
        stopping = true
        if accepting { cancel(0, .accept) }
        for c in connections.values where c.receiving { cancel(c.id, .recv) }
        let done = { self.connections.isEmpty && !self.accepting && self.cancels == 0 }
        if !run(seconds: 1, until: done) {  // an echo still waits after 1 s: a peer that does not read
            for c in connections.values where c.sending { dropQueue(c); cancel(c.id, .send) }
            guard run(seconds: 5, until: done) else { fail("the connections did not close within 5 s") }
        }
        io_uring_prep_close(sqe(0, .close), listener.fd)
        checkSubmit(io_uring_submit(ring), 1)
        printCQE(waitCQE(ring, seconds: 5), "close listener")
        let head = pool.kernelHead(), tail = pool.br.pointee.tail
        print("buffer ring at the end: our tail \(tail), the kernel's head " + (head >= 0
            ? "\(head) (IORING_REGISTER_PBUF_STATUS): \(tail &- UInt16(head)) buffers in the ring"
            : "unknown (IORING_REGISTER_PBUF_STATUS = \(describe(res: head)): Linux 6.8 adds it)"))
        print("io_uring_unregister_buf_ring = \(describe(res: pool.free()))")
    }
}

nonisolated func now() -> Double { var t = timespec(); clock_gettime(CLOCK_MONOTONIC, &t); return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9 }
let stopRequested = Atomic<Bool>(false)  // set by SIGINT and SIGTERM in serving mode
let server = Server()
server.armAccept()

// MARK: - 3. Serving mode: --port P [--seconds S], until Ctrl-C (a flag the 200 ms waits notice)
// or S seconds. Then stop() cancels the multishots and closes every fd.

if servePort != nil {
    server.logEvents = true
    signal(SIGINT) { _ in stopRequested.store(true, ordering: .relaxed) }
    signal(SIGTERM) { _ in stopRequested.store(true, ordering: .relaxed) }
    _ = server.run(seconds: Double(serveSeconds ?? 86_400 * 365), until: { false })
    print("stopping: \(stopRequested.load(ordering: .relaxed) ? "a signal came" : "\(serveSeconds ?? 0) s have passed")")
} else {
    // MARK: - 4. Part 1: the multishot recv's end, and the re-arm
    //
    // LabNet's BurstClient writes 20 messages of 64 bytes in one send(2), then reads. The kernel
    // loops while the socket holds more (F_SOCK_NONEMPTY) and the ring has a buffer: a buffer, a
    // recv, a CQE with F_MORE. After 16, -ENOBUFS without F_MORE. We echo, re-arm, the last 256 come.

    let burst = 20
    print("part 1: one client writes \(burst) messages of \(bufferSize) bytes (\(burst * bufferSize) bytes) in one send(2), then reads")
    (server.logData, server.logEvents) = (true, true)
    let client = BurstClient(port: listener.port, messages: burst, size: bufferSize)
    let partOne = server.run(seconds: 5) { server.closed == 1 }
    let verdict = client.finish()
    guard partOne else { fail("part 1 did not finish within 5 s") }
    print(verdict)

    // MARK: - 5. Part 2: the echo server at work
    //
    // 4 clients x 400 messages of 64 bytes, one at a time. A connection holds at most two buffers
    // (one whose send CQE we have not reaped yet, and the next message's), and 6.1 looks for one
    // more after every completion: 4 x 2 + 1 of 16 never runs dry. ENOBUFS stays at part 1's.

    let (clients, messages) = (4, 400)
    print("part 2: \(clients) clients x \(messages) messages of \(bufferSize) bytes, each echoed before the next is sent")
    (server.logData, server.logEvents) = (false, false)
    let start = now()
    let echoClients = EchoClients(port: listener.port, clients: clients, messages: messages, size: bufferSize, firstID: 2)
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
    + "ENOBUFS ends: \(server.enobufsEnds), re-arms: \(server.rearms); by our count \(server.free) of \(bufferCount) buffers back")
destroyRing(ring)
