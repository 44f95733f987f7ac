import XCTest

final class Lesson05Tests: XCTestCase {
    /// Bytes written per SQE, the position after each -1 write, and every file's final
    /// contents read back: all in the expected block of lessons/05-write-file.md.
    func testWritesAndReadsBack() throws {
        let run = try Lesson("05").runAndCompareWithProse()
        // The lines that prove the lesson, asserted on their own as well.
        let lines = run.stdoutLines
        XCTAssert(lines.contains("  read back with pread: \"hello world\\n\" (12 bytes)"), run.transcript)
        XCTAssert(lines.contains("  lseek(fd, 0, SEEK_CUR) = 26"), run.transcript)
        XCTAssert(lines.contains("  read back with pread: \"first\\nsecond\\nthird\\nfourth\\n\" (26 bytes)"),
                  run.transcript)
        XCTAssert(lines.contains("  read back with pread: \"line 1\\nline 2\\nline 3\\n\" (21 bytes)"),
                  run.transcript)
    }

    func testTooManyArguments() throws {
        let run = try Lesson("05").run(["extra"])
        run.assertError(mentioning: "too many arguments", "usage")
    }

    func testUnknownOption() throws {
        let run = try Lesson("05").run(["--offset"])
        run.assertError(mentioning: "unknown option --offset")
    }
}
