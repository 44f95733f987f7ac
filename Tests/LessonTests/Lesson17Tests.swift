import XCTest

final class Lesson17Tests: XCTestCase {
    /// Every socket call through the ring, each CQE in order with its user_data: the refused
    /// connect, the accept and connect submitted together, the recv that waits on a poll (no
    /// worker thread), the echoed bytes, the end of file after SHUT_WR, the closes: the
    /// expected block of lessons/17-tcp-basics.md for this kernel (bind and listen through the
    /// ring from Linux 6.11, by system call before).
    func testTCPBasics() throws {
        let run = try Lesson("17").runAndCompareWithProse()
        let lines = run.stdoutLines
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "connect to a port bound but not listening: user_data=1704 res=-ECONNREFUSED (-111) flags=0",
            "close (the refused socket): user_data=1705 res=0 flags=0",
            "connect: user_data=1709 res=0 flags=0",
            "  the ring's poll list (fdinfo PollList): IORING_OP_RECV",
            "  io-wq worker threads: 0",
            "recv (server): user_data=1710 res=16 flags=0 \"hello, io_uring\\n\"",
            "recv (client): user_data=1713 res=16 flags=0 \"hello, io_uring\\n\"",
            "echoed bytes are the bytes the client sent",
            "recv (server): user_data=1715 res=0 flags=0x4 (F_SOCK_NONEMPTY)",
            "close (listener): user_data=1718 res=0 flags=0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // Bound, refused, then listening: one port throughout, the one the kernel picked.
        let bound = lines.first { $0.hasPrefix("bound to 127.0.0.1:") }
        let listening = lines.first { $0.hasPrefix("listening on 127.0.0.1:") }
        XCTAssertEqual(bound.map { String($0.dropFirst("bound to ".count).prefix { $0 != "," }) },
                       listening.map { String($0.dropFirst("listening on ".count)) }, run.transcript)
        // The accept's fd and the three sockets' fds are real fds (not errors).
        for prefix in ["socket (listener): ", "socket (client): ", "accept: "] {
            for line in lines where line.hasPrefix(prefix) {
                XCTAssertNotNil(line.range(of: #"res=\d+ flags=0$"#, options: .regularExpression), line)
            }
        }
        run.assertQuick()
    }

    func testHelp() throws {
        let run = try Lesson("17").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-17-tcp-basics"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("17").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("17").run(["--port", "0"]).assertError(mentioning: "unknown option --port")
    }
}
