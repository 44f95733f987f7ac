import XCTest

final class Lesson03Tests: XCTestCase {
    /// One submit for the timer and 8 NOPs, each CQE's user_data and res, the NOPs reaped by
    /// peek_batch_cqe before the timer, and nothing left pending: lessons/03-nop-and-user-data.md.
    func testNopsAndUserData() throws {
        try Lesson("03").runAndCompareWithProse()
    }

    /// NOPS = 63 fills the 64-entry SQ: still one submit, every user_data back exactly once.
    func testFullRing() throws {
        let run = try Lesson("03").run(["63"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssert(lines.contains("io_uring_submit = 64"), run.transcript)
        XCTAssert(lines.contains("io_uring_peek_batch_cqe(up to 63) = 63, ready without waiting:"), run.transcript)
        let nops = lines.filter { $0.hasPrefix("  user_data=") && $0.contains(" res=0 flags=0  NOP #") }
        XCTAssertEqual(nops.count, 63, run.transcript)
        XCTAssert(lines.contains("completion order: " + (1...63).map(String.init).joined(separator: " ") + " 100"),
                  run.transcript)
        XCTAssert(lines.contains("requests still pending: 0"), run.transcript)
    }

    func testRejectsBadNumber() throws {
        try Lesson("03").run(["abc"]).assertError(mentioning: "NOPS", "1 to 63", "abc")
        try Lesson("03").run(["0"]).assertError(mentioning: "NOPS", "1 to 63")
        try Lesson("03").run(["64"]).assertError(mentioning: "NOPS", "1 to 63")
    }

    func testRejectsTooManyArguments() throws {
        try Lesson("03").run(["8", "9"]).assertError(mentioning: "too many arguments")
    }
}
