import XCTest

final class Lesson29Tests: XCTestCase {
    /// Two threads, one ring each: the first three messages of the ping-pong with the
    /// receiver's CQE (res = len, user_data = data) and the sender's own (res 0); all 200
    /// messages accounted for; a file passed from A's table to B's slot 2 and to a slot the
    /// kernel picked, read by B through both; then msg_ring to ring A's old fd (-EBADF) and to a
    /// pipe (-EBADFD): the expected block of lessons/29-msg-ring.md.
    func testMsgRing() throws {
        let run = try Lesson("29").runAndCompareWithProse()
        run.assertQuick()
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

    /// No flake: ten runs of 500 messages, the last pinned to one CPU with taskset(1) when it is
    /// installed (both threads then take turns on it), each run's whole output held against the
    /// prose's expected block with the counts of 500 messages.
    func testManyRunsNoFlake() throws {
        let lesson = try Lesson("29")
        let expected = try lesson.expectedOutput().map {
            $0.replacingOccurrences(of: "ping-pong: 200 messages", with: "ping-pong: 500 messages")
                .replacingOccurrences(of: "received 100 messages", with: "received 250 messages")
                .replacingOccurrences(of: "; 100 own CQEs", with: "; 250 own CQEs")
        }
        XCTAssert(expected.contains { $0.contains("received 250 messages") && $0.contains("250 own CQEs") },
                  "the expected block no longer has the counts this test rewrites")
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let taskset = path.split(separator: ":").contains { FileManager.default.isExecutableFile(atPath: "\($0)/taskset") }
        for n in 1...10 {
            let pinned = n == 10 && taskset
            let run = try lesson.run(["--messages", "500"], wrapper: pinned ? ["taskset", "-c", "0"] : [])
            try run.skipIfSkipped()
            XCTAssertEqual(run.status, 0, "run \(n)\(pinned ? " (taskset -c 0)" : "")\n\(run.transcript)")
            if let mismatch = OutputPattern(expected).mismatch(in: run.stdoutLines) {
                XCTFail("run \(n)\(pinned ? " (taskset -c 0)" : ""): \(mismatch)\n\(run.transcript)")
            }
        }
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
