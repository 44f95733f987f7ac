import XCTest

final class Lesson20Tests: XCTestCase {
    /// The expected block of lessons/20-provided-buffers.md, then the lines that prove the lesson,
    /// asserted again in case the block is edited: the buffer is chosen when the data arrives
    /// (B's recv, submitted second, gets buffer 0), the group runs empty (-ENOBUFS), recycling
    /// fixes it without losing the message, recycled buffers come back first in first out, and
    /// REMOVE_BUFFERS answers with the number it removed.
    func testProvidedBuffers() throws {
        let run = try Lesson("20").runAndCompareWithProse()
        let lines = run.stdoutLines
        for line in [
            "PROVIDE_BUFFERS group 7, 4 buffers of 32 bytes, ids 0-3: user_data=2011 res=0 flags=0",
            "recv on A (user_data 2021) and on B (2022), IOSQE_BUFFER_SELECT group 7: CQEs ready: 0",
            "recv on B: user_data=2022 res=7 flags=0x1 (F_BUFFER|buf=0) \"hello B\" in buffer 0",
            "recv on A: user_data=2021 res=7 flags=0x10001 (F_BUFFER|buf=1) \"hello A\" in buffer 1",
            "send \"five\", then recv on A: user_data=2025 res=-ENOBUFS (-105) flags=0",
            "recv on A: user_data=2026 res=4 flags=0x10001 (F_BUFFER|buf=1) \"five\" in buffer 1",
            "REMOVE_BUFFERS group 7, up to 16: user_data=2017 res=1 flags=0",
            "REMOVE_BUFFERS group 7 again: user_data=2018 res=0 flags=0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The ids the recvs got, in order: 0 (B), 1 (A), 2, 3, none, 1, then 3, 0, 2.
        let ids = lines.filter { $0.contains("recv on ") && $0.contains(": user_data=") }.map { line in
            line.components(separatedBy: "buf=").dropFirst().first.map { String($0.prefix { $0.isNumber }) } ?? "none"
        }
        XCTAssertEqual(ids, ["0", "1", "2", "3", "none", "1", "3", "0", "2"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("20").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("20").run(["--port", "1"]).assertError(mentioning: "unknown option", "usage")
    }
}
