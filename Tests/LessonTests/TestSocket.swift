// A real TCP client for the tests of the servers (lessons 18 and 22 in their serving mode): plain
// blocking sockets with 5-second timeouts, so a server that does not answer fails the test
// instead of hanging it.

import Foundation

final class TestSocket {
    let fd: Int32
    private var closed = false

    /// Connect to 127.0.0.1:`port`.
    init(port: UInt16) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
        var limit = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let ret = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ret == 0 else {
            let error = String(cString: strerror(errno))
            Glibc.close(fd)
            throw HarnessError("connect to 127.0.0.1:\(port): \(error)")
        }
    }
    deinit { close() }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw HarnessError("send: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }
    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Up to `count` bytes: fewer if the peer closed (or the 5-second timeout passed) first.
    func receive(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count), received = 0
        while received < count {
            let n = bytes[received...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            received += n
        }
        return Array(bytes.prefix(received))
    }

    /// Send `bytes` and read the same number back.
    func echo(_ bytes: [UInt8]) throws -> [UInt8] {
        try send(bytes)
        return receive(bytes.count)
    }

    /// Whether the peer has closed: recv returns 0 (or fails) within the 5-second timeout.
    func peerClosed() -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, 0) <= 0
    }

    /// Close with SO_LINGER 0: the kernel sends RST instead of FIN, and the server's next
    /// recv or send on this connection fails (-ECONNRESET on Linux).
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    func close() {
        if !closed { Glibc.close(fd); closed = true }
    }
}

/// A socket of the test's own listening on 127.0.0.1 at a port the kernel chose: a port in use,
/// for the servers' bad-input tests. Closed when the value goes away.
final class BusyPort {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let listening = fd >= 0 && withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        (self.fd, port) = (fd, UInt16(bigEndian: address.sin_port))
        guard listening else {
            let error = String(cString: strerror(errno))  // deinit closes the fd
            throw HarnessError("the test's own listener on 127.0.0.1: \(error)")
        }
    }
    deinit { if fd >= 0 { Glibc.close(fd) } }
}
