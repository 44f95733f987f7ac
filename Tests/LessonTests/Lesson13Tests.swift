import XCTest

final class Lesson13Tests: XCTestCase {
    /// Reads through slot indices (before and after the real fds are closed), the update, the
    /// emptied slot's -EBADF, the multi-slot updates (skips counted, a partial failure that
    /// returns a count, a failure at the first entry that returns -EBADF yet empties its slot),
    /// the sparse table and its never-filled slot's -EBADF: the expected block of
    /// lessons/13-fixed-files.md for this kernel (fdinfo lists slots one way before Linux 6.14,
    /// another since).
    func testFixedFiles() throws {
        let run = try Lesson("13").runAndCompareWithProse()
        let lines = run.stdoutLines
        // fdinfo after slot 2 was emptied, on any kernel: slots 0 and 1 hold apple and damson,
        // slot 2 no file (6.14 and later leave it out, older kernels print "<none>").
        let emptied = "io_uring_register_files_update(offset 2, [-1]) = 1"
        let after = Array(lines.drop { $0 != emptied }.dropFirst())
        XCTAssertEqual(after.first, "fdinfo of the ring fd: UserFiles: 3", run.transcript)
        let table = Array(after.dropFirst().prefix { $0.hasPrefix("  ") })
        XCTAssert((2...3).contains(table.count)
            && table[0].hasPrefix("  0: ") && table[0].hasSuffix("apple.txt")
            && table[1].hasPrefix("  1: ") && table[1].hasSuffix("damson.txt")
            && table.dropFirst(2).allSatisfy { $0 == "  2: <none>" },
            "slots after emptying slot 2: \(table)\n\(run.transcript)")
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "read slot 0: user_data=11 res=6 flags=0 \"apple\\n\"",
            "read slot 2: user_data=23 res=7 flags=0 \"cherry\\n\"",
            "read slot 1 (updated): user_data=31 res=7 flags=0 \"damson\\n\"",
            "read slot 2 (emptied): user_data=32 res=-EBADF (-9) flags=0",
            "read slot 0 (emptied by the failed update): user_data=41 res=-EBADF (-9) flags=0",
            "io_uring_register_files_sparse(4) = 0",
            "read slot 0 (never filled): user_data=61 res=-EBADF (-9) flags=0",
            "read slot 3 (filled): user_data=62 res=6 flags=0 \"apple\\n\"",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The three updates of several slots: skipped entries count, an error after a success
        // is dropped (the count is returned), an error at the first entry is returned.
        let updates = lines.filter { $0.hasPrefix("io_uring_register_files_update(offset 0, [") }
        XCTAssertEqual(updates.count, 3, run.transcript)
        if updates.count == 3 {
            XCTAssert(updates[0].hasPrefix("io_uring_register_files_update(offset 0, [-2, ")
                && updates[0].hasSuffix(", -2]) = 3"), updates[0])
            XCTAssert(updates[1].hasSuffix(", 999]) = 1"), updates[1])
            XCTAssert(updates[2].hasPrefix("io_uring_register_files_update(offset 0, [999, ")
                && updates[2].hasSuffix("]) = -EBADF (-9)"), updates[2])
        }
        // The closed fds really were closed in the process.
        XCTAssertEqual(lines.filter { $0.hasSuffix("F_GETFD) fails with -EBADF (-9)") }.count, 3, run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("13").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
    }
}
