// Sockets where they are not the subject (Part IV on): the loopback address, a listener made
// through the ring as lesson 17 shows, and the demos' in-process clients, which use plain blocking
// calls on threads of their own (the client side is not what those lessons teach). Also a thread,
// and what /proc says about a ring's waiting requests.

import Glibc
import CLiburing
import Synchronization
import LabSupport

/// 127.0.0.1:`port`; port 0 lets the kernel pick a free one when the socket is bound.
public func loopbackAddress(port: UInt16 = 0) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian  // INADDR_LOOPBACK
    return address
}

/// The port a socket is bound to (getsockname(2): io_uring has no request for it).
public func localPort(_ fd: Int32) -> UInt16 {
    var address = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return UInt16(bigEndian: address.sin_port)
}

/// A TCP socket listening on 127.0.0.1:`port`, made as lesson 17 makes one: IORING_OP_SOCKET
/// (5.19), then IORING_OP_BIND and IORING_OP_LISTEN (6.11) where the probe finds them, else
/// bind(2) and listen(2); `how` says which. Call it while nothing else is in flight on `ring`.
/// A port in use is an `error:` line naming -EADDRINUSE.
public func listenOnLoopback(_ ring: Ring, port: UInt16, backlog: Int32 = 128) -> (fd: Int32, port: UInt16, how: String) {
    requireOpcodes(ring, IORING_OP_SOCKET)
    let probe = io_uring_get_probe_ring(ring)
    let inRing = probe != nil && io_uring_opcode_supported(probe, LAB_IORING_OP_BIND) != 0 && io_uring_opcode_supported(probe, LAB_IORING_OP_LISTEN) != 0
    io_uring_free_probe(probe)
    func request(_ userData: UInt64, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) -> Int32 {  // its res
        let sqe = getSQE(ring)
        prep(sqe)
        io_uring_sqe_set_data64(sqe, userData)
        checkSubmit(io_uring_submit(ring), 1)
        let cqe = waitCQE(ring, seconds: 5)
        guard cqe.user_data == userData else { fail("listenOnLoopback waited for user_data=\(userData), got \(format(cqe))") }
        return cqe.res
    }
    let fd = request(0x4E_E7_01) { io_uring_prep_socket($0, AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, 0) }
    guard fd >= 0 else { fail("IORING_OP_SOCKET returned \(describe(res: fd))") }
    var on: Int32 = 1  // reuse a port whose old connections are in TIME_WAIT (never a live listener's)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
    let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1), length = socklen_t(MemoryLayout<sockaddr_in>.size)
    defer { address.deallocate() }  // BIND reads it while it runs, and we wait for its CQE
    address.initialize(to: loopbackAddress(port: port))
    var step = "bind", ret = inRing ? request(0x4E_E7_02) { io_uring_prep_rw(LAB_IORING_OP_BIND, $0, fd, address, 0, UInt64(length)) }
        : address.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } == 0 ? 0 : -errno
    if ret == 0 {  // liburing 2.7's io_uring_prep_bind and io_uring_prep_listen fill the SQEs the same way
        step = "listen on"
        ret = inRing ? request(0x4E_E7_03) { io_uring_prep_rw(LAB_IORING_OP_LISTEN, $0, fd, nil, UInt32(backlog), 0) } : listen(fd, backlog) == 0 ? 0 : -errno
    }
    if ret < 0 { close(fd); fail("cannot \(step) 127.0.0.1:\(port): \(describe(res: ret))") }
    return (fd, localPort(fd), inRing ? "IORING_OP_BIND and IORING_OP_LISTEN" : "bind(2) and listen(2): this kernel lacks IORING_OP_BIND (6.11)")
}

/// A plain blocking TCP connection to 127.0.0.1:`port`, with 5-second send and receive timeouts
/// so that no wait of a demo client is unbounded: the fd, or -errno.
public func plainConnection(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -errno }
    var address = loopbackAddress(port: port), limit = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    let ret = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    if ret != 0 { let error = errno; close(fd); return -error }
    return fd
}

/// The client side of lessons 18 and 22's demos, which is not their subject: `clients` threads,
/// each with a plain blocking connection to 127.0.0.1:`port` (5-second timeouts: no wait is
/// unbounded) sending `messages` messages of `size` bytes one at a time and reading each echo
/// back. `finish()` joins them: the count of echoes that came back byte for byte, and what failed.
/// Numbering: the clients connect one at a time, in order (client k waits until client k - 1
/// has connected, or failed to), so the listener's accept queue (first in, first out) holds
/// them in that order (in practice, on loopback: connect returns once the handshake is done),
/// and client k (`firstID`, `firstID` + 1, ...) is the k-th connection a
/// server accepts if it numbers its connections from 1 in accept order, `firstID` - 1
/// connected before and nothing else connects meanwhile. Each connects on its own thread: on
/// the thread that submits to a ring, a blocking connect with a timeout can end with EINTR when
/// a request completes (seen in lesson 22, whose multishot accept is armed: io_uring has that
/// thread run the completion, and no signal is delivered). A problem line names client k, the
/// message, and what failed: the send's or the recv's errno, or "end of file".
public final class EchoClients: Sendable {
    private let threads = Mutex<[pthread_t]>([]), echoed = Atomic<Int>(0), problems = Mutex<[String]>([])
    private let connectsDone = Atomic<Int>(0)

    public init(port: UInt16, clients: Int, messages: Int, size: Int, firstID: Int = 1) {
        for client in firstID..<firstID + clients {
            let thread = startThread { [self] in
                while connectsDone.load(ordering: .acquiring) < client - firstID { usleep(100) }  // the one before first
                let fd = plainConnection(port: port)
                connectsDone.add(1, ordering: .releasing)
                guard fd >= 0 else { return problems.withLock { $0.append("client \(client): connect: \(describe(res: fd))") } }
                defer { close(fd) }
                for message in 0..<messages {
                    let bytes = (0..<size).map { UInt8(truncatingIfNeeded: client &* 131 &+ message &* 7 &+ $0) }
                    var echo = [UInt8](repeating: 0, count: size), sent = 0, received = 0, failure = ""
                    while sent < size {
                        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        if n <= 0 { failure = "send: \(describe(res: -errno))"; break }
                        sent += n
                    }
                    while failure.isEmpty && received < size {
                        let n = echo[received...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                        if n <= 0 { failure = n == 0 ? "recv: end of file" : "recv: \(describe(res: -errno))"; break }
                        received += n
                    }
                    guard echo == bytes else {
                        let what = failure.isEmpty ? "different" : failure
                        return problems.withLock { $0.append("client \(client): message \(message): sent \(sent), echoed \(received) bytes; \(what)") }
                    }
                    echoed.add(1, ordering: .relaxed)
                }
            }
            threads.withLock { $0.append(thread) }
        }
    }

    public func finish() -> (echoed: Int, problems: [String]) {
        for thread in threads.withLock({ $0 }) { pthread_join(thread, nil) }
        return (echoed.load(ordering: .relaxed), problems.withLock { $0 })
    }
}

/// Run `body` on a new thread (join it with pthread_join before exit).
public func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    var thread = pthread_t()
    let ret = pthread_create(&thread, nil, { Unmanaged<Box>.fromOpaque($0!).takeRetainedValue().body(); return nil },
                             Unmanaged.passRetained(Box(body)).toOpaque())
    if ret != 0 { fail("pthread_create returned \(describe(res: -ret))") }
    return thread
}

/// The client side of lesson 22's demo (part 1), which is not its subject: one plain blocking
/// connection on a thread of its own that writes `messages` messages of `size` bytes, each
/// different, in one send(2), then reads the echo back (5-second timeout) and compares.
/// `finish()` joins the thread and returns its verdict line.
public final class BurstClient: Sendable {
    private let verdict = Mutex<String>(""), thread = Mutex<pthread_t?>(nil)
    public init(port: UInt16, messages: Int, size: Int) {
        let started = startThread { [self] in
            let bytes = (0..<messages * size).map { UInt8(truncatingIfNeeded: ($0 / size) &* 37 &+ $0 % size) }
            let fd = plainConnection(port: port)
            defer { if fd >= 0 { close(fd) } }
            let sent = fd < 0 ? -1 : bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
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
    public func finish() -> String {
        if let thread = thread.withLock({ $0 }) { pthread_join(thread, nil) }
        return verdict.withLock { $0 }
    }
}

/// Lesson 18's other two demo clients (not its subject). Each connects before `init` returns, on
/// the caller's thread, so that the server numbers connections in the order they were made; then
/// a thread of its own: `.echoThenReset(bytes)` sends the bytes, reads the echo, and closes with
/// SO_LINGER 0 (a reset, not a FIN); `.sendWithoutReading` writes 64 KiB at a time and never
/// reads, until neither its sends nor the echoes arriving have moved for 100 ms (2 s at most; a
/// slow server, as in an emulated guest, keeps it going), then closes. `finish()` joins
/// the thread: whether the echo came back intact (always false for `.sendWithoutReading`).
public final class DemoClient: Sendable {
    public enum Behaviour: Sendable { case echoThenReset([UInt8]), sendWithoutReading }
    private let thread = Mutex<pthread_t?>(nil), echoed = Atomic<Bool>(false)

    public init(port: UInt16, _ behaviour: Behaviour) {
        let fd = plainConnection(port: port)
        if fd < 0 { fail("connect to 127.0.0.1:\(port): \(describe(res: fd))") }
        let started = startThread { [self] in
            defer { close(fd) }
            switch behaviour {
            case .echoThenReset(let bytes):
                var echo = [UInt8](repeating: 0, count: bytes.count)
                let sent = send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)), received = recv(fd, &echo, echo.count, Int32(MSG_WAITALL))
                echoed.store(sent == bytes.count && received == bytes.count && echo == bytes, ordering: .relaxed)
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            case .sendWithoutReading:  // stuck: no send went through and no echo arrived for 100 ms
                _ = fcntl(fd, F_SETFL, O_NONBLOCK)
                let chunk = [UInt8](repeating: UInt8(ascii: "2"), count: 64 * 1024), giveUp = ContinuousClock.now + .seconds(2)
                var writable = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0), echoes: Int32 = 0, last: Int32 = 0
                var progress = ContinuousClock.now
                while ContinuousClock.now < giveUp {
                    if send(fd, chunk, chunk.count, Int32(MSG_NOSIGNAL)) > 0 { progress = .now; continue }
                    guard errno == EAGAIN, ioctl(fd, UInt(FIONREAD), &echoes) == 0 else { break }
                    if echoes != last { (last, progress) = (echoes, .now) }  // the server is still echoing
                    if echoes > 0 && ContinuousClock.now - progress >= .milliseconds(100) { break }
                    _ = poll(&writable, 1, 10)
                }
            }
        }
        thread.withLock { $0 = started }
    }

    public func finish() -> Bool {
        if let thread = thread.withLock({ $0 }) { pthread_join(thread, nil) }
        return echoed.load(ordering: .relaxed)
    }
}

/// A buffer ring (lessons 21 and after): `entries` buffers of `bufferSize` bytes, registered as
/// buffer group `group`, every buffer already in it. Lesson 21 teaches each step; here they are
/// in one call, for the lessons whose subject is what uses the ring: one anonymous mmap holds the
/// ring's entries (page-aligned, as the kernel demands) and then the buffers;
/// io_uring_buf_ring_init; io_uring_register_buf_ring (liburing 2.3 has no
/// io_uring_setup_buf_ring); io_uring_buf_ring_add of buffer i with id i; one
/// io_uring_buf_ring_advance. Giving a buffer back after its CQE (add + advance) is the
/// lesson's. `free()` unregisters the group and unmaps the memory: call it when no request
/// that selects from the group is in flight.
public struct BufferRing {
    public let br: UnsafeMutablePointer<io_uring_buf_ring>, buffers: UnsafeMutableRawPointer
    public let entries: UInt32, bufferSize: Int, group: UInt16
    let ring: Ring, mapped: Int
    /// Buffer `bid`'s memory.
    public func buffer(_ bid: UInt16) -> UnsafeMutableRawPointer { buffers + Int(bid) * bufferSize }
    /// The kernel's head, the next entry it will take (IORING_REGISTER_PBUF_STATUS, Linux 6.8;
    /// lesson 21), or -errno (-EINVAL before 6.8). Like the tail, a free-running 16-bit counter.
    public func kernelHead() -> Int32 {
        var status = lab_io_uring_buf_status()
        status.buf_group = UInt32(group)
        let ret = io_uring_register(UInt32(ring.pointee.ring_fd), UInt32(LAB_IORING_REGISTER_PBUF_STATUS), &status, 1)
        return ret < 0 ? ret : Int32(status.head)
    }
    /// io_uring_unregister_buf_ring's result, then munmap.
    public func free() -> Int32 {
        defer { munmap(UnsafeMutableRawPointer(br), mapped) }
        return io_uring_unregister_buf_ring(ring, Int32(group))
    }
}

public func makeBufferRing(_ ring: Ring, entries: UInt32, bufferSize: Int, group: UInt16) -> BufferRing {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let ringBytes = (Int(entries) * MemoryLayout<io_uring_buf>.size + page - 1) / page * page
    let mapped = ringBytes + Int(entries) * bufferSize
    guard let memory = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
          memory != UnsafeMutableRawPointer(bitPattern: -1) else { fail("mmap of \(mapped) bytes: \(describe(res: -errno))") }
    let bufferRing = BufferRing(br: memory.bindMemory(to: io_uring_buf_ring.self, capacity: 1), buffers: memory + ringBytes,
                                entries: entries, bufferSize: bufferSize, group: group, ring: ring, mapped: mapped)
    io_uring_buf_ring_init(bufferRing.br)
    var reg = io_uring_buf_reg()  // copied by the kernel during the call
    (reg.ring_addr, reg.ring_entries, reg.bgid) = (UInt64(UInt(bitPattern: memory)), entries, group)
    let registered = io_uring_register_buf_ring(ring, &reg, 0)
    guard registered == 0 else { munmap(memory, mapped); fail("io_uring_register_buf_ring returned \(describe(res: registered))") }
    for bid in 0..<UInt16(entries) {
        io_uring_buf_ring_add(bufferRing.br, bufferRing.buffer(bid), UInt32(bufferSize), bid, io_uring_buf_ring_mask(entries), Int32(bid))
    }
    io_uring_buf_ring_advance(bufferRing.br, Int32(entries))
    return bufferRing
}

/// Queue a send of `text` from `fd` through the ring (lessons 20, 21, where the send is not the
/// subject): its bytes are copied to `outgoing`, which must stay put until this send's CQE.
public func queueSend(_ ring: Ring, _ fd: Int32, _ text: String, _ outgoing: UnsafeMutableRawBufferPointer, userData: UInt64) {
    let bytes = Array(text.utf8)
    outgoing.copyBytes(from: bytes)
    let sqe = getSQE(ring)
    io_uring_prep_send(sqe, fd, outgoing.baseAddress, bytes.count, 0)
    io_uring_sqe_set_data64(sqe, userData)
}

// MARK: - The ring seen from /proc: witnesses that a request waits without a thread (17, 26)

/// The opcodes in the ring fd's fdinfo "PollList:" (a debugging aid of the kernel's), sorted.
public func pollList(_ ring: Ring) -> String {
    let lines = readLines("/proc/self/fdinfo/\(ring.pointee.ring_fd)") ?? []
    let entries = lines.drop { !$0.hasPrefix("PollList:") }.dropFirst().prefix { $0.hasPrefix("  op=") }
    let ops = entries.compactMap { UInt32($0.dropFirst("  op=".count).prefix { $0.isNumber }) }.sorted()
    return ops.isEmpty ? "(empty)" : ops.map(opcodeName).joined(separator: ", ")
}

/// How many of this process's threads are io-wq workers (named iou-wrk-PID by the kernel).
public func ioWorkers() -> Int {
    guard let dir = opendir("/proc/self/task") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while let entry = readdir(dir) {
        let tid = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if readLines("/proc/self/task/\(tid)/comm")?.first?.hasPrefix("iou-wrk-") == true { count += 1 }
    }
    return count
}
