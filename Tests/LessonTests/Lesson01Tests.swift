import XCTest

final class Lesson01Tests: XCTestCase {
    /// Granted sizes for several requests, the decoded features, and -EINVAL for each bad size:
    /// all in the expected block of lessons/01-ring-setup.md.
    func testRingSetup() throws {
        try Lesson("01").runAndCompareWithProse()
    }

    func testRejectsArguments() throws {
        let run = try Lesson("01").run(["extra"])
        run.assertError(mentioning: "usage")
    }
}
