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

    func testKernelRangesOfExpectedBlocks() throws {
        let old = try KernelRange("kernel<6.6", in: "t")
        XCTAssertTrue(old.contains([6, 1, 192]))
        XCTAssertFalse(old.contains([6, 6]))
        XCTAssertFalse(old.contains([6, 18, 44]))
        let middle = try KernelRange("kernel>=6.6 kernel<6.14", in: "t")
        XCTAssertTrue(middle.contains([6, 12, 95]))
        XCTAssertFalse(middle.contains([6, 1, 192]))
        XCTAssertFalse(middle.contains([6, 14, 0]))
        XCTAssertThrowsError(try KernelRange("text", in: "t"))
    }
}
