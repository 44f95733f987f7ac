import XCTest

final class Lesson29Tests: XCTestCase {
    /// Two threads, one ring each: the first three messages of the ping-pong with the
    /// receiver's CQE (res = len, user_data = data) and the sender's own (res 0); all 200
    /// messages accounted for; a file passed from A's table to B's slot 2 and to a slot the
    /// kernel picked, read by B through both; then msg_ring to ring A's old fd (-EBADF) and to a
    /// pipe (-EBADFD): the expected block of lessons/29-msg-ring.md.
    func testMsgRing() throws {
        let run = try Lesson("29").runAndCompareWithProse()
        let lines = run.stdoutLines
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "  ring B: user_data=2900001 res=1 flags=0",
            "  ring A, the sender's own CQE: user_data=2910001 res=0 flags=0",
            "  ring A: user_data=2900002 res=2 flags=0",
            "A: received 100 messages, each with res = len and user_data = data; 100 own CQEs for its sends, res 0",
            "B: received 100 messages, each with res = len and user_data = data; 100 own CQEs for its sends, res 0",
            "B: CQE on its ring: user_data=2931 res=0 flags=0",
            "B: read slot 2 (IOSQE_FIXED_FILE): user_data=2941 res=27 flags=0 \"a file from ring A's table\\n\"",
            "msg_ring to ring A's old fd: user_data=2951 res=-EBADF (-9) flags=0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The slot the kernel picked: the same number in A's CQE, in B's, and in B's read.
        let picked = lines.first { $0.hasPrefix("B: CQE on its ring: user_data=2932 res=") }
        let slot = picked?.split(separator: " ").first { $0.hasPrefix("res=") }?.dropFirst(4)
        XCTAssertNotNil(slot.flatMap { Int($0) }, run.transcript)
        if let slot {
            XCTAssert(lines.contains { $0.hasPrefix("A: msg_ring SEND_FD, A's slot 0 -> B's IORING_FILE_INDEX_ALLOC, data 2932: user_data=2922 res=\(slot) ") }, run.transcript)
            XCTAssert(lines.contains("B: read slot \(slot) (IOSQE_FIXED_FILE): user_data=2942 res=27 flags=0 \"a file from ring A's table\\n\""), run.transcript)
        }
        XCTAssert(lines.contains { $0.hasPrefix("msg_ring to a pipe's fd ") && $0.hasSuffix(", not a ring: user_data=2952 res=-EBADFD (-77) flags=0") },
                  run.transcript)
    }

    /// An odd count: A sends one more message than B, and each count follows.
    func testOddMessageCount() throws {
        let run = try Lesson("29").run(["--messages", "7"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        for line in [
            "ping-pong: 7 messages; A sends the odd ones to ring B, B the even ones to ring A; each thread waits only on its own ring",
            "A: received 3 messages, each with res = len and user_data = data; 4 own CQEs for its sends, res 0",
            "B: received 4 messages, each with res = len and user_data = data; 3 own CQEs for its sends, res 0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    func testHelp() throws {
        let run = try Lesson("29").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-29-msg-ring [--messages N]"], run.transcript)
    }

    func testBadInput() throws {
        try Lesson("29").run(["--messages", "abc"]).assertError(mentioning: "--messages must be a whole number from 1 to 9999", "\"abc\"")
        try Lesson("29").run(["--messages", "0"]).assertError(mentioning: "--messages must be a whole number from 1 to 9999")
        try Lesson("29").run(["--messages"]).assertError(mentioning: "--messages needs a value")
        try Lesson("29").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
    }
}
