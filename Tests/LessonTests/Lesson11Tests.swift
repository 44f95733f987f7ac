import Foundation
import XCTest

final class Lesson11Tests: XCTestCase {
    /// Bytes moved by every splice and the tee, tee leaving pipe A full, the linked pair, the
    /// short splice that cancels its link, and all four copies equal to the source: the
    /// expected block of lessons/11-splice-tee.md.
    func testSpliceAndTeeTheDefaultFile() throws {
        let run = try Lesson("11").runAndCompareWithProse()
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        let lines = run.stdoutLines
        for line in [
            "pipe A: capacity 65536 bytes, pipe B: capacity 65536 bytes (F_GETPIPE_SZ)",
            "  in the pipes now (FIONREAD): A 10000 bytes, B 10000 bytes",
            "  CQE 2: splice pipe A -> linked-copy.txt: user_data=22 res=10000 flags=0",
            "  CQE 1: splice source -> pipe C: user_data=31 res=4096 flags=0  <- short: 4096 of 10000 bytes",
            "  CQE 2: splice pipe C -> small-pipe-copy.txt: user_data=32 res=-ECANCELED (-125) flags=0",
            "splice-copy.txt: 10000 bytes, identical to the source",
            "tee-copy.txt: 10000 bytes, identical to the source",
            "linked-copy.txt: 10000 bytes, identical to the source",
            "small-pipe-copy.txt: 10000 bytes, identical to the source",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    /// A file larger than a pipe goes round by round: 1 MB is 16 rounds of at most 64 KiB
    /// (245 through the one-page pipe), output bounded, and every copy identical.
    func testCopiesALargerFileInRounds() throws {
        let dir = try makeScratchDirectory("lesson-11-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("big.bin")
        try Data((0..<1_000_000).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }).write(to: file)

        let run = try Lesson("11").run([file.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        for line in [
            "source: \(file.path), 1000000 bytes",
            "round 3: offset 131072, 65536 bytes",
            "... 13 more rounds not shown",
            "  CQE 1: splice source -> pipe C: user_data=31 res=4096 flags=0  <- short: 4096 of 65536 bytes",
            "... 242 more rounds not shown",
            "splice-copy.txt: 1000000 bytes, identical to the source",
            "tee-copy.txt: 1000000 bytes, identical to the source",
            "linked-copy.txt: 1000000 bytes, identical to the source",
            "small-pipe-copy.txt: 1000000 bytes, identical to the source",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        XCTAssertLessThan(lines.count, 80, "output is bounded\n\(run.transcript)")
    }

    /// An error path with every fd open: under RLIMIT_FSIZE of 32 KiB the splice of a 40000-byte
    /// source into splice-copy.txt stops short at 32768 bytes, and the lesson ends with one error
    /// line, exit 1, and none of its 11 fds (the source, three pipes, four
    /// copies) left open: it used to exit with all of them open.
    func testShortSpliceErrorClosesEveryFd() throws {
        for tool in ["prlimit"] where !FileManager.default.isExecutableFile(atPath: "/usr/bin/\(tool)") {
            throw XCTSkip("/usr/bin/\(tool) is not installed")
        }
        let dir = try makeScratchDirectory("lesson-11-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("40000.bin")
        try Data((0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: file)

        let run = try Lesson("11").run([file.path], wrapper: ["prlimit", "--fsize=32768", "--"])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 1, run.transcript)
        XCTAssert(run.stdoutLines.contains("  splice pipe A -> splice-copy.txt: user_data=13 res=32768 flags=0"),
                  run.transcript)
        let errors = run.stderr.components(separatedBy: "\n").filter { $0.hasPrefix("error: ") }
        XCTAssertEqual(errors, ["error: splice pipe A -> splice-copy.txt moved 32768 bytes, expected 40000"], run.transcript)
        XCTAssertEqual(run.fdsOpenAtExit, [], run.transcript)
    }

    /// Copies are sized by st_size, and /proc says 0 bytes for a file that holds more: the size
    /// check (a read at offset st_size must find the end) refuses it before anything is copied,
    /// where the lesson used to print "0 bytes, identical to the source" and exit 0.
    func testProcFileWhoseSizeStatDoesNotTell() throws {
        let run = try Lesson("11").run(["/proc/self/status"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "/proc/self/status says 0 bytes (stat)", "a read at offset 0 still found data")
        XCTAssertFalse(run.stdout.contains("identical"), run.transcript)
        XCTAssertFalse(run.stdout.contains("splice"), "nothing may be copied\n\(run.transcript)")
    }

    /// A sysfs file says 4096 bytes and holds a few: its last byte is missing, refused too.
    func testSysfsFileShorterThanItsSize() throws {
        let path = "/sys/kernel/mm/transparent_hugepage/enabled"
        var info = stat()
        guard stat(path, &info) == 0, info.st_size == 4096 else { throw XCTSkip("no \(path) of 4096 bytes here") }
        let run = try Lesson("11").run([path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "says 4096 bytes (stat)", "a read of its last byte found the end of the file")
        XCTAssertFalse(run.stdout.contains("splice"), "nothing may be copied\n\(run.transcript)")
    }

    /// A file that really is empty: 0 bytes by stat and by read, so nothing to copy, and four
    /// empty copies that do match it.
    func testEmptyFile() throws {
        let dir = try makeScratchDirectory("lesson-11-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("empty")
        try Data().write(to: file)
        let run = try Lesson("11").run([file.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(run.stdoutLines.contains("source: \(file.path), 0 bytes"), run.transcript)
        XCTAssert(run.stdoutLines.contains("small-pipe-copy.txt: 0 bytes, identical to the source"), run.transcript)
    }

    func testMissingFile() throws {
        try Lesson("11").run(["/nonexistent/lesson-11/source.txt"]).assertError(mentioning: "ENOENT")
    }

    func testDirectoryIsNotARegularFile() throws {
        let dir = try makeScratchDirectory("lesson-11-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Lesson("11").run([dir.path]).assertError(mentioning: "not a regular file")
    }

    func testTooManyArguments() throws {
        try Lesson("11").run(["a", "b"]).assertError(mentioning: "too many arguments", "usage")
    }

}
