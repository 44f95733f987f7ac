import Foundation
import XCTest

final class Lesson18Tests: XCTestCase {
    /// The demo: ten clients at once. Connection 1's recv gets -ECONNRESET after its client
    /// resets, connection 2's send -ECONNRESET after its client closed with unread data, and
    /// connections 3-10 echo 50 messages each, every echo checked by its client byte for byte.
    /// Then the accept is cancelled and the listener closed through the ring: the block of
    /// lessons/18-echo-server.md.
    func testDemo() throws {
        let run = try Lesson("18").runAndCompareWithProse()
        let lines = run.stdoutLines
        for line in [
            "  recv: user_data=0x180102 res=-ECONNRESET (-104) flags=0 -> close",
            "their clients: 400 of 400 echoes came back byte for byte",
            "connections 3-10 echoed 25600 bytes in 400 sends",
            "accept: user_data=0x180001 res=-ECANCELED (-125) flags=0",
            "listener closed: user_data=0x180007 res=0 flags=0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        XCTAssert(lines.contains { $0.hasPrefix("connection 2 (slot 2) closed after send: user_data=0x180203 res=-ECONNRESET (-104) ") },
                  run.transcript)
        // The eight echo connections, in id order, each ended by its client's EOF.
        let echoLines = lines.filter { $0.contains("; 50 recvs (3200 bytes), 50 sends (3200 bytes, 0 short)") && $0.contains("res=0 ") && $0.contains("(EOF)") }
        XCTAssertEqual(echoLines.map { $0.components(separatedBy: " ")[1] }, (3...10).map(String.init), run.transcript)
    }

    /// Serving mode, driven by real sockets: three clients echo (one of them 256 KiB, which the
    /// server echoes in many recvs and sends), one resets and the server prints its
    /// -ECONNRESET and goes on serving the others, one shuts down its side and the server
    /// closes it (EOF), a new one is served after that, and one sends without reading until the
    /// server's send waits for room; at the end of --seconds the server cancels what is in
    /// flight (that send too: -ECANCELED), closes every connection and its listener, and exits
    /// 0 (with no fd left open: every run checks that).
    func testServing() throws {
        let server = try Lesson("18").start(["--port", "0", "--seconds", "3"])
        let port = try server.waitForPort()
        let a = try TestSocket(port: port), b = try TestSocket(port: port), c = try TestSocket(port: port)
        for (socket, text) in [(a, "from a\n"), (b, "from b\n"), (c, "from c\n")] {
            XCTAssertEqual(try socket.echo(Array(text.utf8)), Array(text.utf8))
        }
        let big = (0..<256 * 1024).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        XCTAssertEqual(try a.echo(big), big, "256 KiB echoed byte for byte")

        b.reset()
        _ = try server.waitForLine { $0.hasPrefix("connection 2 (slot 2) closed after recv: user_data=0x180202 res=-ECONNRESET (-104)") }
        XCTAssertEqual(try a.echo(Array("a again\n".utf8)), Array("a again\n".utf8), "served after the reset")
        XCTAssertEqual(try c.echo(Array("c again\n".utf8)), Array("c again\n".utf8), "served after the reset")

        c.shutdownWrite()
        XCTAssert(c.peerClosed(), "the server closes a connection whose client sent EOF")
        _ = try server.waitForLine { $0.hasPrefix("connection 3 (slot 3) closed after recv: user_data=0x180302 res=0 ") && $0.contains("(EOF)") }

        let d = try TestSocket(port: port)
        XCTAssertEqual(try d.echo(Array("from d\n".utf8)), Array("from d\n".utf8))
        let e = try TestSocket(port: port)
        XCTAssertGreaterThan(sendUntilStuck(e), 0, "the stalled client sent something")
        let run = try server.finish(timeout: 10)
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(a.peerClosed(), "the server closed the connections still open when it stopped")
        let lines = run.stdoutLines
        XCTAssert(lines.contains("serving for 3 s; try: nc -N 127.0.0.1 \(port)"), run.transcript)
        for id in 1...5 {
            XCTAssert(lines.contains { $0.hasPrefix("connection \(id) opened: slot ") && $0.contains(" from 127.0.0.1:") }, "opened \(id)\n\(run.transcript)")
        }
        XCTAssert(lines.contains { $0.hasPrefix("connection 4 opened: slot 2,") }, "the reset connection's slot is reused\n\(run.transcript)")
        for id in [1, 4] {
            XCTAssert(lines.contains { $0.hasPrefix("connection \(id) (slot ") && $0.contains("closed after recv: ")
                && $0.contains("res=-ECANCELED (-125) flags=0 (the server is stopping)") }, "connection \(id) closed when the server stopped\n\(run.transcript)")
        }
        XCTAssert(lines.contains { $0.hasPrefix("connection 5 (slot 3) closed after send: user_data=0x180303 res=-ECANCELED (-125) flags=0 (the server is stopping); ") },
                  "the stalled connection's send, cancelled\n\(run.transcript)")
        // a sent 7 + 262144 + 8 bytes, and all of them came back.
        XCTAssert(lines.contains { $0.hasPrefix("connection 1 (slot 1) closed after recv: ") && $0.contains(" recvs (262159 bytes), ")
            && $0.contains(" sends (262159 bytes, ") }, run.transcript)
        XCTAssert(lines.contains("stopping after 3 s: 3 connections open"), run.transcript)
        XCTAssert(lines.contains("stopping: IORING_OP_ASYNC_CANCEL with IORING_ASYNC_CANCEL_ANY: user_data=0x180006 res=4 flags=0"), run.transcript)
        XCTAssert(lines.contains("listener closed: user_data=0x180007 res=0 flags=0"), run.transcript)
        XCTAssertEqual(lines.last, "served 5 connections, refused 0", run.transcript)
    }

    /// Send 64 KiB at a time without reading until no send makes progress for 200 ms: the
    /// server's echo send then waits for room. Returns the bytes sent.
    func sendUntilStuck(_ socket: TestSocket) -> Int {
        let chunk = [UInt8](repeating: 0x35, count: 64 * 1024)
        var sent = 0, writable = pollfd(fd: socket.fd, events: Int16(POLLOUT), revents: 0)
        while true {
            let n = send(socket.fd, chunk, chunk.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            if n > 0 { sent += n; continue }
            if errno != EAGAIN || poll(&writable, 1, 200) == 0 { return sent }
        }
    }

    /// Clients that send 20 KiB and close without reading the echo. TCP_CORK holds the bytes back
    /// until the close sends them with the FIN, so each client is gone before the server reads a
    /// byte: the server's first echo send reaches a closed socket, whose kernel answers with a
    /// reset, and the server's socket, which has seen the FIN (CLOSE_WAIT), makes that -EPIPE:
    /// the second recv still gets the rest of the data, the second send gets -EPIPE. The reset is
    /// a packet of its own: in an emulated 6.1 guest it once came after the second send, and that
    /// connection ended with both sends whole and an EOF. Each connection must end one of these two
    /// ways, and at least one with -EPIPE.
    func testClientThatLeaves() throws {
        let server = try Lesson("18").start(["--port", "0", "--seconds", "2"])
        let port = try server.waitForPort()
        for id in 1...3 {
            let socket = try TestSocket(port: port)
            var on: Int32 = 1
            setsockopt(socket.fd, Int32(IPPROTO_TCP), TCP_CORK, &on, socklen_t(MemoryLayout<Int32>.size))
            try socket.send([UInt8](repeating: 0x32, count: 20 * 1024))
            socket.close()
            _ = try server.waitForLine { $0.hasPrefix("connection \(id) (slot ") }
        }
        let run = try server.finish(timeout: 10)
        XCTAssertEqual(run.status, 0, run.transcript)
        let epipe = { (id: Int) in "connection \(id) (slot 1) closed after send: user_data=0x180103 res=-EPIPE (-32) flags=0; "
            + "2 recvs (20480 bytes), 1 send (16384 bytes, 0 short)" }
        let eof = { (id: Int) in "connection \(id) (slot 1) closed after recv: user_data=0x180102 res=0 flags=0x4 (F_SOCK_NONEMPTY) (EOF); "
            + "2 recvs (20480 bytes), 2 sends (20480 bytes, 0 short)" }
        for id in 1...3 {
            XCTAssert(run.stdoutLines.contains { $0 == epipe(id) || $0 == eof(id) }, "connection \(id)\n\(run.transcript)")
        }
        XCTAssert((1...3).contains { id in run.stdoutLines.contains(epipe(id)) }, "no -EPIPE\n\(run.transcript)")
    }

    /// Out of fds (prlimit --nofile=12: fd 11 is the last): an accept fails with -EMFILE as soon
    /// as it is queued, client or not (the kernel takes the fd first), and the server does not
    /// queue it again at once (it would fail again, forever) but after the next close. A client
    /// that connected meanwhile waits in the listener's queue and is served after that close.
    /// Out of fds with no connection to close (--nofile=5), the server ends with an error line.
    func testOutOfFds() throws {
        let server = try Lesson("18").start(["--port", "0", "--seconds", "3"], wrapper: ["prlimit", "--nofile=12"])
        let port = try server.waitForPort()
        var sockets: [TestSocket] = [], opened = ""
        while !opened.contains(", fd 11, "), sockets.count < 12 {
            sockets.append(try TestSocket(port: port))
            opened = try server.waitForLine { $0.hasPrefix("connection \(sockets.count) opened: ") }
        }
        _ = try server.waitForLine { $0.contains("-EMFILE") }
        let waiting = try TestSocket(port: port)  // the kernel completes the connect; nobody accepts it yet
        XCTAssertEqual(try sockets[0].echo(Array("first\n".utf8)), Array("first\n".utf8))
        sockets[0].shutdownWrite()
        XCTAssert(sockets[0].peerClosed())
        XCTAssertEqual(try waiting.echo(Array("waited\n".utf8)), Array("waited\n".utf8), "accepted after the close")
        let run = try server.finish(timeout: 10)
        XCTAssertEqual(run.status, 0, run.transcript)
        // Two failed accepts, not a flood: one when the fds ran out, one after the waiting
        // connection took the fd the close freed.
        XCTAssertEqual(run.stdoutLines.filter { $0 == "accept: user_data=0x180001 res=-EMFILE (-24) flags=0; accepting again after the next close" }.count,
                       2, run.transcript)
        XCTAssert(run.stdoutLines.contains { $0.hasPrefix("connection \(sockets.count + 1) opened: slot 1, ") }, run.transcript)
        XCTAssert(run.stdoutLines.contains("listener closed: user_data=0x180007 res=0 flags=0"), run.transcript)
        XCTAssertEqual(run.stdoutLines.last, "served \(sockets.count + 1) connections, refused 0", run.transcript)

        let noFds = try Lesson("18").run(["--seconds", "1"], wrapper: ["prlimit", "--nofile=5"])
        try noFds.skipIfSkipped()
        noFds.assertError(mentioning: "-EMFILE (-24)")
    }

    /// 8 MiB through one connection, sent by one thread while this one reads: the server's
    /// sends go short whenever the socket's send buffer is full (usually a few times), and it
    /// sends the rest; every byte comes back, in order.
    func testLargeEcho() throws {
        let block = (0..<65521).map { UInt8(truncatingIfNeeded: $0 ^ $0 >> 11) }  // a prime length
        var data: [UInt8] = []
        for _ in 0..<128 { data += block }  // 8,386,688 bytes
        let server = try Lesson("18").start(["--port", "0", "--seconds", "5"])
        let port = try server.waitForPort()
        let socket = try TestSocket(port: port)
        let fd = socket.fd, sending = data
        let writer = Thread {
            var sent = 0
            while sent < sending.count {
                let n = sending[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                sent += n
            }
            Glibc.shutdown(fd, Int32(SHUT_WR))
        }
        writer.start()
        let echo = socket.receive(data.count)
        XCTAssertEqual(echo.count, data.count, "bytes echoed")
        XCTAssert(echo == data, "the echo differs from what was sent")
        XCTAssert(socket.peerClosed(), "EOF after the client's EOF")
        let run = try server.finish(timeout: 10)
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(run.stdoutLines.contains { $0.hasPrefix("connection 1 (slot 1) closed after recv: user_data=0x180102 res=0 ")
            && $0.contains(" recvs (\(data.count) bytes), ") && $0.contains(" sends (\(data.count) bytes, ") }, run.transcript)
    }

    /// 64 connections are the limit: the 65th is accepted and closed at once, with a line that
    /// says why; the others are still served, and a slot freed by a close is used again.
    func testConnectionLimit() throws {
        let server = try Lesson("18").start(["--port", "0", "--seconds", "3"])
        let port = try server.waitForPort()
        let sockets = try (1...64).map { _ in try TestSocket(port: port) }
        let extra = try TestSocket(port: port)
        XCTAssert(extra.peerClosed(), "the 65th connection is closed by the server")
        _ = try server.waitForLine { $0.hasPrefix("connection 65 refused: 64 connections are open (the limit); closing fd ") }
        XCTAssertEqual(try sockets[63].echo(Array("64th\n".utf8)), Array("64th\n".utf8))
        sockets[9].shutdownWrite()
        XCTAssert(sockets[9].peerClosed())
        _ = try server.waitForLine { $0.hasPrefix("connection 10 (slot 10) closed after recv: ") }
        let again = try TestSocket(port: port)
        XCTAssertEqual(try again.echo(Array("slot 10 again\n".utf8)), Array("slot 10 again\n".utf8))
        let run = try server.finish(timeout: 10)
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(run.stdoutLines.contains { $0.hasPrefix("connection 66 opened: slot 10,") }, run.transcript)
        XCTAssert(run.stdoutLines.contains("stopping after 3 s: 64 connections open"), run.transcript)
        XCTAssertEqual(run.stdoutLines.last, "served 65 connections, refused 1", run.transcript)
    }

    /// --seconds without --port serves on a free port for that long.
    func testSecondsAlone() throws {
        let run = try Lesson("18").run(["--seconds", "1"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssert(lines.first?.hasPrefix("listening on 127.0.0.1:") == true, run.transcript)
        XCTAssert(lines.contains { $0.hasPrefix("serving for 1 s; try: nc -N 127.0.0.1 ") }, run.transcript)
        XCTAssertEqual(lines.last, "served 0 connections, refused 0", run.transcript)
    }

    /// Bad input: one `error:` line and exit 1.
    func testBadInput() throws {
        let listener = try BusyPort()  // a port in use: a listener of the test's own
        let busy = String(listener.port)
        let inUse = try Lesson("18").run(["--port", busy])
        try inUse.skipIfSkipped()
        inUse.assertError(mentioning: "127.0.0.1:\(busy)", "-EADDRINUSE (-98)")

        try Lesson("18").run(["--port", "70000"]).assertError(mentioning: "--port must be a whole number from 0 to 65535", "\"70000\"")
        try Lesson("18").run(["--port", "abc"]).assertError(mentioning: "--port must be a whole number", "\"abc\"")
        try Lesson("18").run(["--seconds", "0"]).assertError(mentioning: "--seconds must be a whole number from 1")
        try Lesson("18").run(["--port"]).assertError(mentioning: "--port needs a value", "usage")
        try Lesson("18").run(["--port", "0", "extra"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("18").run(["--verbose"]).assertError(mentioning: "unknown option --verbose", "usage")
    }
}
