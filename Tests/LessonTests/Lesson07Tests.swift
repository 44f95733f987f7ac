import XCTest

final class Lesson07Tests: XCTestCase {
    /// The ordered write -> fsync -> read chain with its read-back text, the broken chain's
    /// -ECANCELEDs (after -EBADF and after a short read), the hard-linked chain that keeps
    /// going, and a failing fsync that does not break a chain on 6.18: the expected block of
    /// lessons/07-linked-ops.md.
    func testLinkedChains() throws {
        let run = try Lesson("07").runAndCompareWithProse()
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        let lines = run.stdoutLines
        for line in [
            "CQE 1: write: user_data=11 res=35 flags=0",
            "CQE 2: fsync: user_data=12 res=0 flags=0",
            "CQE 3: read: user_data=13 res=35 flags=0",
            "CQE 3: read: user_data=23 res=-ECANCELED (-125) flags=0",
            "CQE 2: write: user_data=32 res=-ECANCELED (-125) flags=0",
            "CQE 2: fsync: user_data=42 res=0 flags=0",
            "CQE 3: read: user_data=43 res=35 flags=0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The fsync that fails while it runs: on 6.18 the read linked after it runs; 5.x
        // kernels marked the fsync failed and cancelled it. Either documented answer, consistent.
        XCTAssert(lines.contains("CQE 1: fsync: user_data=51 res=-EINVAL (-22) flags=0"), run.transcript)
        let ran = lines.contains("CQE 2: read: user_data=52 res=35 flags=0")
            && lines.contains("the read after the failed fsync: ran, the chain did not break")
        let cancelled = lines.contains("CQE 2: read: user_data=52 res=-ECANCELED (-125) flags=0")
            && lines.contains("the read after the failed fsync: cancelled, the chain broke")
        XCTAssert(ran || cancelled, "the read after the failed fsync\n\(run.transcript)")
    }

    /// The two fds on the temp file and the pipe are closed before the lesson exits.
    func testClosesWhatItOpens() throws {
        let run = try Lesson("07").run()
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.fdsOpenAtExit, [], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("07").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
    }
}
