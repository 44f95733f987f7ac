import XCTest

/// The oracle must be able to fail: these check the matcher itself.
final class HarnessTests: XCTestCase {
    func testLiteralLinesMustMatchExactlyAndInOrder() {
        let pattern = OutputPattern(["a", "b"])
        XCTAssertNil(pattern.mismatch(in: ["a", "b"]))
        XCTAssertNotNil(pattern.mismatch(in: ["b", "a"]))
        XCTAssertNotNil(pattern.mismatch(in: ["a", "b", "c"]), "extra lines are a mismatch")
        XCTAssertNotNil(pattern.mismatch(in: ["a"]))
        XCTAssertNotNil(pattern.mismatch(in: ["a", "b!"]), "lines match whole, not as prefixes")
    }

    func testPlaceholdersMatchNonEmptyTextWithinOneLine() {
        let pattern = OutputPattern(["fd {fd} ok (x.y)"])
        XCTAssertNil(pattern.mismatch(in: ["fd 3 ok (x.y)"]))
        XCTAssertNil(pattern.mismatch(in: ["fd 12 ok (x.y)"]))
        XCTAssertNotNil(pattern.mismatch(in: ["fd  ok (x.y)".replacingOccurrences(of: "  ", with: " ")]))
        XCTAssertNotNil(pattern.mismatch(in: ["fd 3 ok (xzy)"]), "regex metacharacters are literal")
    }

    func testEllipsisMatchesAnyNumberOfLines() {
        let pattern = OutputPattern(["start", "...", "end"])
        XCTAssertNil(pattern.mismatch(in: ["start", "end"]))
        XCTAssertNil(pattern.mismatch(in: ["start", "x", "y", "end"]))
        XCTAssertNotNil(pattern.mismatch(in: ["start", "x"]))
    }
}
