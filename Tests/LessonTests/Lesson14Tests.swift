import XCTest

final class Lesson14Tests: XCTestCase {
    /// The pinned pages (VmPin), the fixed writes and the read-back, -EFAULT for every address
    /// range outside the named buffer and for a buf_index past the table, and the unregistering:
    /// the expected block of lessons/14-fixed-buffers.md.
    func testFixedBuffers() throws {
        let run = try Lesson("14").runAndCompareWithProse()
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        let lines = run.stdoutLines
        for line in [
            "io_uring_register_buffers(2 iovecs) = 0",
            "write_fixed buf_index 0, address buffer 0 + 1000, 14 bytes, file offset 17: user_data=2 res=14 flags=0",
            "read back: \"registered once,\\nused by index\\n\"",
            "read_fixed buf_index 0, address buffer 0 + 4080, 16 bytes (its last 16 bytes): user_data=4 res=16 flags=0",
            "read_fixed buf_index 0, address buffer 0 + 4096, 16 bytes (just past its end): user_data=5 res=-EFAULT (-14) flags=0",
            "read_fixed buf_index 2, address buffer 1 + 0, 16 bytes (the table has 2): user_data=8 res=-EFAULT (-14) flags=0",
            "io_uring_unregister_buffers = 0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    func testRejectsArguments() throws {
        try Lesson("14").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
    }
}
