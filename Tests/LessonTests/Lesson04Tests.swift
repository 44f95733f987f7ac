import Foundation
import XCTest

final class Lesson04Tests: XCTestCase {
    /// The file's bytes, every read's res (16 ×4, the short 4, the 0 at EOF), -ENOENT and
    /// -EBADF as CQE results, and where the requests ran (the reads inline, the missing name's
    /// openat on an io-wq worker, the empty pipe's read parked on a poll): all in the expected
    /// block of lessons/04-read-file.md.
    func testReadsTheDefaultFile() throws {
        let run = try Lesson("04").runAndCompareWithProse()
        // The lines that prove where requests run, asserted again in case the block is edited.
        let lines = run.stdoutLines
        let workers = "io-wq worker threads (named iou-wrk-*) in this process: "
        XCTAssert(lines.contains("reads whose CQE was in the CQ when io_uring_submit returned: 6 of 6"), run.transcript)
        XCTAssertEqual(lines.filter { $0.hasPrefix(workers) }, [workers + "0", workers + "1", workers + "1"],
                       run.transcript)
        XCTAssert(lines.contains("read 16 bytes from an empty pipe: CQEs in the CQ when io_uring_submit returned: "
            + "0, 20 ms later: 0"), run.transcript)
        XCTAssert(lines.contains("read from the pipe: user_data=5 res=3 flags=0 \"hi\\n\""), run.transcript)
    }

    /// A file named on the command line: its text, a short read and the 0 at EOF.
    func testReadsAGivenFile() throws {
        let dir = try makeScratchDirectory("lesson-04-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("given.txt")
        try Data("hello from the test\n".utf8).write(to: file)

        let run = try Lesson("04").run([file.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssert(lines.contains("read 65536 bytes at offset 0: user_data=101 res=20 flags=0 "
            + "\"hello from the t\"...  <- short read: 20 of 65536 bytes"), run.transcript)
        XCTAssert(lines.contains("read 65536 bytes at offset 20: user_data=102 res=0 flags=0  <- 0: end of file"),
                  run.transcript)
        XCTAssert(lines.contains("the file's 20 bytes in 2 reads: \"hello from the test\\n\""), run.transcript)
    }

    /// A large binary file is not dumped: 8 reads shown, the rest counted, a 256-byte prefix.
    func testBoundsTheOutputForALargeFile() throws {
        let dir = try makeScratchDirectory("lesson-04-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("big.bin")
        try Data(repeating: 0xff, count: 1_000_000).write(to: file)

        let run = try Lesson("04").run([file.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssertEqual(lines.filter { $0.hasPrefix("read 65536 bytes") }.count, 9, run.transcript)
        XCTAssert(lines.contains("... 8 more reads not shown"), run.transcript)
        XCTAssert(lines.contains("read 65536 bytes at offset 1000000: user_data=117 res=0 flags=0  <- 0: end of file"),
                  run.transcript)
        let prefix = "\"" + String(repeating: "\\xff", count: 256) + "\"..."
        XCTAssert(lines.contains("the file's 1000000 bytes in 17 reads, the first 256: " + prefix), run.transcript)
        XCTAssert(run.stdout.utf8.count < 5000, "output is bounded\n\(run.transcript)")
    }

    /// The error comes from the openat CQE's res.
    func testMissingFile() throws {
        let run = try Lesson("04").run(["/nonexistent/lesson-04/missing.txt"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "-ENOENT", "openat completed")
    }

    /// A directory opens with O_RDONLY; it is the read that fails.
    func testDirectory() throws {
        let dir = try makeScratchDirectory("lesson-04-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try Lesson("04").run([dir.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "-EISDIR", "read at offset 0")
    }

    /// The read's error path closes the file it opened before it exits.
    func testDirectoryLeavesNoFDOpen() throws {
        let dir = try makeScratchDirectory("lesson-04-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try Lesson("04").run([dir.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 1, run.transcript)
        XCTAssertEqual(run.fdsOpenAtExit, [], run.transcript)
    }

    /// A FIFO cannot seek: the lesson reads it at offset -1, gets the writer's bytes, then 0
    /// when the writer closes.
    func testReadsAFIFOAtOffsetMinusOne() throws {
        let dir = try makeScratchDirectory("lesson-04-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let fifo = dir.appendingPathComponent("fifo").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        // The writer's open blocks until the lesson opens the FIFO for reading; it writes one
        // line and closes, which is the reader's end of file. (Should the lesson never open the
        // FIFO, the thread stays blocked in open until the test process exits.)
        let writer = Thread {
            let fd = open(fifo, O_WRONLY)
            guard fd >= 0 else { return }
            let line = Array("through a pipe\n".utf8)
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        writer.start()

        let run = try Lesson("04").run([fifo], timeout: 10)
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssert(lines.contains("read 65536 bytes at offset -1 (not seekable): user_data=101 res=15 flags=0 "
            + "\"through a pipe\\n\"  <- short read: 15 of 65536 bytes"), run.transcript)
        XCTAssert(lines.contains("read 65536 bytes at offset -1 (not seekable): user_data=102 res=0 flags=0  "
            + "<- 0: end of file"), run.transcript)
        XCTAssert(lines.contains("the file's 15 bytes in 2 reads: \"through a pipe\\n\""), run.transcript)
    }

    /// "-" is not taken for standard input (openat would look for a file named "-").
    func testRejectsDash() throws {
        try Lesson("04").run(["-"]).assertError(mentioning: "\"-\"", "/dev/stdin")
    }

    func testTooManyArguments() throws {
        let run = try Lesson("04").run(["a", "b"])
        run.assertError(mentioning: "too many arguments", "usage")
    }
}
