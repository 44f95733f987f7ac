import XCTest

final class Lesson23Tests: XCTestCase {
    /// The connection, then four zero-copy sends: each with its result CQE (F_MORE) followed by
    /// its notification (F_NOTIF, same user_data), the buffer refilled only after it, and the
    /// receiver's bytes intact; the usage report (COPIED over loopback; a kernel without the flag,
    /// 6.0 to 6.1.1, rejects it);
    /// the fixed-buffer send. The expected block of lessons/23-send-zc.md for this kernel.
    func testSendZeroCopy() throws {
        let run = try Lesson("23").runAndCompareWithProse()
        let lines = run.stdoutLines
        // Asserted again in case the prose block is edited: for every send that took the
        // buffer, the result (F_MORE) comes before the notification (F_NOTIF), and the receiver
        // got the letter that was in the buffer, 16384 times.
        for (userData, letter) in [(2311, "a"), (2312, "b"), (2314, "d")] {
            let result = lines.firstIndex(of: "  CQE 1, the result:       user_data=\(userData) res=16384 flags=0x2 (F_MORE)")
            let notification = lines.firstIndex { $0.hasPrefix("  CQE 2, the notification: user_data=\(userData) res=")
                && $0.hasSuffix(" flags=0x8 (F_NOTIF)") }
            XCTAssertNotNil(result, "send \(userData): no result CQE with F_MORE\n\(run.transcript)")
            XCTAssertNotNil(notification, "send \(userData): no notification\n\(run.transcript)")
            if let result, let notification { XCTAssertLessThan(result, notification, run.transcript) }
            XCTAssert(lines.contains("  recv on the other end:  user_data=\(userData + 10) res=16384 flags=0: 16384 x \"\(letter)\""),
                      "send \(userData): the receiver's bytes\n\(run.transcript)")
        }
        // The usage report: copied (6.2 and 6.1.2 on, over loopback) or the flag rejected (older).
        XCTAssert(lines.contains("  the kernel reports: the data was copied, not sent from our pages")
            || lines.contains("  this kernel rejects IORING_SEND_ZC_REPORT_USAGE (added in Linux 6.2 and 6.1.2)"), run.transcript)
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
