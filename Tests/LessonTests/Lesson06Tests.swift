import XCTest

final class Lesson06Tests: XCTestCase {
    /// get_sqe returning nil on a full SQ, 64 NOPs in 8 submits through a ring of 8, and every
    /// user_data completed exactly once: the expected block of lessons/06-batching.md.
    func testSixtyFourThroughEight() throws {
        try Lesson("06").runAndCompareWithProse()
    }

    /// 1000 operations through a ring of 16: 62 full batches and a short one of 8.
    func testThousandThroughSixteen() throws {
        let run = try Lesson("06").run(["1000", "16"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        for line in [
            "ring: asked for 16 entries, got sq_entries=16 cq_entries=32",
            "io_uring_get_sqe returned 16 SQEs, then nil: the SQ is full",
            "submit 1: user_data 0...15, sq_space_left 0, io_uring_submit_and_wait(ring, 16) = 16, cq_ready 16, reaped 16",
            "(submits 9 to 62 not shown)",
            "submit 63: user_data 992...999, sq_space_left 8, io_uring_submit_and_wait(ring, 8) = 8, cq_ready 8, reaped 8",
            "1000 operations through a ring of 16: 63 submits",
            "CQEs reaped: 1000, failed (res != 0): 0",
            "user_data 0...999: 1000 completed exactly once, 0 missing, 0 more than once, 0 unknown",
            "most CQEs waiting at once: 16 of 32; CQ overflow seen: no",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    /// ENTRIES is rounded up by the kernel; the batches follow what was granted.
    func testRoundedRing() throws {
        let run = try Lesson("06").run(["10", "5"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(run.stdoutLines.contains("ring: asked for 5 entries, got sq_entries=8 cq_entries=16"), run.transcript)
        XCTAssert(run.stdoutLines.contains("10 operations through a ring of 8: 2 submits"), run.transcript)
    }

    func testRejectsNonNumber() throws {
        try Lesson("06").run(["abc"]).assertError(mentioning: "OPS", "abc")
    }

    func testRejectsZero() throws {
        try Lesson("06").run(["0"]).assertError(mentioning: "OPS")
        try Lesson("06").run(["64", "0"]).assertError(mentioning: "ENTRIES")
    }

    func testRejectsTooLarge() throws {
        try Lesson("06").run(["1000001"]).assertError(mentioning: "OPS", "1000000")
        try Lesson("06").run(["64", "4097"]).assertError(mentioning: "ENTRIES", "4096")
    }

    func testRejectsTooManyArguments() throws {
        try Lesson("06").run(["64", "8", "1"]).assertError(mentioning: "too many arguments")
    }
}
