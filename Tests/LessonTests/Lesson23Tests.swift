import XCTest

final class Lesson23Tests: XCTestCase {
    /// The connection, then four zero-copy sends: each with its result CQE (F_MORE) and its
    /// notification (F_NOTIF, same user_data), and the receiver's bytes; the usage report
    /// (COPIED over loopback); the fixed-buffer send. The expected block of lessons/23-send-zc.md
    /// for this kernel. (A kernel without IORING_SEND_ZC_REPORT_USAGE, 6.0 to 6.1.1, would print
    /// a rejection instead and fail here: no lab kernel is one, and uname cannot tell 6.1.1 from
    /// a later 6.1, see the prose's Kernel section.)
    func testSendZeroCopy() throws {
        let run = try Lesson("23").runAndCompareWithProse()
        let lines = run.stdoutLines
        // Asserted again in case the prose block is edited: every send got its result with
        // F_MORE and a notification with F_NOTIF, and the receiver got the letter that was in
        // the buffer, 16384 times.
        for (userData, letter) in [(2311, "a"), (2312, "b"), (2313, "c"), (2314, "d")] {
            XCTAssert(lines.contains("  CQE 1, the result:       user_data=\(userData) res=16384 flags=0x2 (F_MORE)"),
                      "send \(userData): no result CQE with F_MORE\n\(run.transcript)")
            XCTAssert(lines.contains { $0.hasPrefix("  CQE 2, the notification: user_data=\(userData) res=")
                && $0.hasSuffix(" flags=0x8 (F_NOTIF)") }, "send \(userData): no notification\n\(run.transcript)")
            XCTAssert(lines.contains("  recv on the other end:  user_data=\(userData + 10) res=16384 flags=0: 16384 x \"\(letter)\""),
                      "send \(userData): the receiver's bytes\n\(run.transcript)")
        }
        XCTAssert(lines.contains("after the notification, the same buffer refilled: send_zc 2: 16384 bytes of \"b\""), run.transcript)
        // The usage report over loopback (6.2, and 6.1 from 6.1.2): copied.
        XCTAssertEqual(lines.filter { $0.hasSuffix("res=0x80000000 (IORING_NOTIF_USAGE_ZC_COPIED) flags=0x8 (F_NOTIF)") }.count, 2,
                       run.transcript)
        XCTAssert(lines.contains("  the kernel reports: the data was copied, not sent from our pages"), run.transcript)
        XCTAssertEqual(lines.last, "close client, server, listener: 0, 0, 0", run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("23").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("23").run(["--port", "1"]).assertError(mentioning: "unknown option --port")
    }

    func testHelp() throws {
        let run = try Lesson("23").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-23-send-zc"], run.transcript)
    }
}
