import XCTest

final class Lesson02Tests: XCTestCase {
    /// One line per opcode from 0 to last_op with supported yes/no, the count, the answer for an
    /// opcode past last_op, and the skip decisions: the expected block of lessons/02-probe.md.
    func testProbeTable() throws {
        let run = try Lesson("02").runAndCompareWithProse()
        // Independently of the prose: the table has last_op + 1 rows and the count adds up.
        let lines = run.stdoutLines
        guard let header = lines.first, let lastOp = Int(header.split(separator: "=")[1].split(separator: " ")[0]) else {
            return XCTFail("no last_op in \(lines.first ?? "nothing")")
        }
        let rows = lines.filter { $0.contains("  IORING_OP_") && ($0.hasSuffix(" yes") || $0.hasSuffix(" no")) }
        XCTAssertEqual(rows.count, lastOp + 1)
        let yes = rows.filter { $0.hasSuffix(" yes") }.count
        XCTAssert(lines.contains("\(yes) of \(lastOp + 1) opcodes supported"))
        // The line where the header's names stop is inside the table exactly when the kernel
        // knows more opcodes than the header names (6.12, 6.18), and absent on 6.1, whose table
        // ends where liburing 2.3's header does.
        guard lines.count > 1, let headerLast = Int(lines[1].split(separator: "=")[1].split(separator: ",")[0]) else {
            return XCTFail("no IORING_OP_LAST in \(lines.dropFirst().first ?? "nothing")")
        }
        let marker = "        (liburing's header stops here: IORING_OP_LAST=\(headerLast))"
        XCTAssertEqual(lines.contains(marker), lastOp >= headerLast, run.transcript)
    }

    /// Opcodes by name (any case, with or without IORING_OP_) and by number, one past the table.
    func testChecksNamedOpcodes() throws {
        let run = try Lesson("02").run(["read", "IORING_OP_NOP", "22", "255"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssertEqual(lines.count, 6, run.transcript)
        XCTAssertEqual(lines[2], "IORING_OP_READ (opcode 22, Linux 5.6): supported")
        XCTAssertEqual(lines[3], "IORING_OP_NOP (opcode 0, Linux 5.1): supported")
        XCTAssertEqual(lines[4], "IORING_OP_READ (opcode 22, Linux 5.6): supported")
        XCTAssertEqual(lines[5], "IORING_OP_255 (opcode 255, newer than this lab's table): not supported (past last_op)")
    }

    func testRejectsUnknownOpcodeName() throws {
        try Lesson("02").run(["READ", "NOT_AN_OP"]).assertError(mentioning: "unknown opcode", "NOT_AN_OP")
    }

    func testRejectsOpcodeNumberOutOfRange() throws {
        try Lesson("02").run(["256"]).assertError(mentioning: "OPCODE", "0 to 255", "256")
    }

    /// No limit on how many opcodes are asked about: every number a probe can hold, and names.
    func testAnswersAnyNumberOfOpcodes() throws {
        let run = try Lesson("02").run((0...255).map(String.init) + Array(repeating: "nop", count: 44))
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssertEqual(lines.count, 2 + 300, run.transcript)
        XCTAssertEqual(lines[2], "IORING_OP_NOP (opcode 0, Linux 5.1): supported")
        XCTAssertEqual(lines[2 + 22], "IORING_OP_READ (opcode 22, Linux 5.6): supported")
        XCTAssertEqual(lines[2 + 255], "IORING_OP_255 (opcode 255, newer than this lab's table): not supported (past last_op)")
        XCTAssertEqual(lines.last, "IORING_OP_NOP (opcode 0, Linux 5.1): supported")
    }
}
