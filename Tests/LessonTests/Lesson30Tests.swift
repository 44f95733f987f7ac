import XCTest

final class Lesson30Tests: XCTestCase {
    /// A file, a client socket and an accepted connection in slots the kernel picked from the
    /// allocation range (2, 3, 4), the listener in slot 0 (named), a read and a loopback
    /// exchange through the slots, -ENFILE once the range is full, close_direct, and
    /// /proc/self/fd showing no new fd (before Linux 6.11: only the listener, which needs
    /// bind(2)); then liburing 2.3's trap, whose regular fd the same list catches: the expected
    /// block of lessons/30-direct-descriptors.md for this kernel.
    func testDirectDescriptors() throws {
        let run = try Lesson("30").runAndCompareWithProse()
        let lines = run.stdoutLines
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "io_uring_register_file_alloc_range(offset 2, length 3) = 0",
            "openat_direct (IORING_FILE_INDEX_ALLOC): user_data=3001 res=2 flags=0",
            "read slot 2: user_data=3002 res=20 flags=0",
            "  \"read through slot 2\\n\"",
            "socket_direct_alloc (the client): user_data=3020 res=3 flags=0",
            "accept_direct (IORING_FILE_INDEX_ALLOC): user_data=3021 res=4 flags=0",
            "connect slot 3: user_data=3022 res=0 flags=0",
            "recv through slot 4: user_data=3024 res=4 flags=0",
            "  \"ping\"",
            "recv through slot 3: user_data=3026 res=4 flags=0",
            "  \"pong\"",
            "socket_direct_alloc (range full): user_data=3030 res=-ENFILE (-23) flags=0",
            "socket_direct_alloc (after that close): user_data=3031 res=2 flags=0",
            "read slot 2 (closed): user_data=3050 res=-EBADF (-9) flags=0",
            "close_direct slot 2 again: user_data=3051 res=-EBADF (-9) flags=0",
            "io_uring_prep_openat_direct(..., IORING_FILE_INDEX_ALLOC) wrote file_index=0 into the SQE",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // No regular fd while the slots are live, but the listener where bind(2) made one.
        let regularListener = lines.contains { $0.contains(" with a regular fd, ") }
        let live = lines.first { $0.hasPrefix("/proc/self/fd with ") } ?? ""
        if regularListener {
            XCTAssertNotNil(live.range(of: #"^/proc/self/fd with 3 files in slots 2, 3, 4: \d+ fds, new: fd \d+ \(a socket\)$"#,
                                       options: .regularExpression), run.transcript)
        } else {
            XCTAssertNotNil(live.range(of: #"^/proc/self/fd with 4 files in slots 0, 2, 3, 4: \d+ fds, no new fd$"#,
                                       options: .regularExpression), run.transcript)
        }
        // Before, after the closes: the same count. After the trap: one more, the data file.
        let counts = lines.filter { $0.hasPrefix("/proc/self/fd ") }.compactMap { line in
            line.components(separatedBy: ": ").dropFirst().first.flatMap { Int($0.prefix { $0.isNumber }) }
        }
        XCTAssertEqual(counts.count, 4, run.transcript)
        if counts.count == 4 {
            XCTAssertEqual(counts[0], counts[2], "the count before and after the closes\n\(run.transcript)")
            XCTAssertEqual(counts[3], counts[0] + 1, "the trap's regular fd\n\(run.transcript)")
        }
        XCTAssert(lines.contains { $0.hasPrefix("/proc/self/fd after the closes: ") && $0.hasSuffix(", no new fd") }, run.transcript)
        XCTAssertNotNil(lines.first { $0.hasPrefix("/proc/self/fd after it: ") }?
            .range(of: #", new: fd \d+ \(data\.txt\)$"#, options: .regularExpression), run.transcript)
        run.assertQuick()
    }

    func testHelp() throws {
        let run = try Lesson("30").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-30-direct-descriptors"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("30").run(["8"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("30").run(["--slots", "8"]).assertError(mentioning: "unknown option --slots")
    }
}
