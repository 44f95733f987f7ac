import XCTest

final class Lesson28Tests: XCTestCase {
    /// A CQ of 8 and 20 polls completing at once: 8 CQEs in the CQ and IORING_SQ_CQ_OVERFLOW
    /// set; a submit while overflowed accepted (Linux 5.13 and later); the CQ drained three
    /// times, flushed by io_uring_get_events and by io_uring_peek_cqe, until the flag is clear;
    /// all 21 CQEs recovered, each user_data once, the NOP's last; nothing dropped; a CQ of 32
    /// that holds them all: the expected block of lessons/28-cq-overflow.md.
    func testCQOverflow() throws {
        let run = try Lesson("28").runAndCompareWithProse()
        run.assertQuick()
        let lines = run.stdoutLines
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "after the write: cq ready 8, SQ flags 0x2 (CQ_OVERFLOW)",
            "io_uring_submit (a NOP, user_data 2800) while overflowed = 1: accepted",
            "  CQ drained: cq ready 0, SQ flags 0x2 (CQ_OVERFLOW)",
            "  io_uring_get_events = 0: cq ready 8, SQ flags 0x2 (CQ_OVERFLOW)",
            "  io_uring_peek_cqe = 0: cq ready 5, SQ flags 0",
            "recovered 21 CQEs: polls 2801-2820 once each with res=1 (POLLIN), NOP 2800 once with res=0, last",
            "cq overflow (*cq.koverflow) = 0",
            "sizing: the same 20 polls and write: cq ready 20, SQ flags 0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // Every CQE reaped: 8 + 8 + 5, and the flag set until the last flush.
        let rounds = lines.filter { $0.hasPrefix("round ") }
        XCTAssertEqual(rounds, ["round 1: 8 CQEs reaped from the CQ", "round 2: 8 CQEs reaped from the CQ",
                                "round 3: 5 CQEs reaped from the CQ"], run.transcript)
    }

    func testHelp() throws {
        let run = try Lesson("28").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-28-cq-overflow"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("28").run(["8"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("28").run(["--cq", "8"]).assertError(mentioning: "unknown option --cq")
    }
}
