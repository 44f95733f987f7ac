import Foundation
import XCTest

final class Lesson04Tests: XCTestCase {
    static let workers = "io-wq worker threads (named iou-wrk-*) in this process: "
    static let doneAtSubmit = "reads whose CQE was in the CQ when io_uring_submit returned: "
    /// Filesystems that open a file with FMODE_NOWAIT, so a read of cached pages runs inline:
    /// the expected block's "where" lines hold (seen on 6.18 for each). ext2 is not here: on
    /// 6.18 here the ext4 driver mounted it (reads inline), but ext2's own driver does not set
    /// the flag, so where it is used the reads go to a worker.
    static let diskFileSystems: Set = ["ext4", "ext3", "xfs", "btrfs"]

    /// The file's bytes, every read's res (16 ×4, the short 4, the 0 at EOF), -ENOENT and
    /// -EBADF as CQE results, and where the requests ran: all in the expected block of
    /// lessons/04-read-file.md, which shows a run on ext4. Where the reads run depends on the
    /// filesystem of the temp file (the system temp directory's), so `checkDefaultRun` holds
    /// the run against the answer the prose gives for the filesystem the lesson printed.
    func testReadsTheDefaultFile() throws {
        let lesson = try Lesson("04")
        let run = try lesson.run()
        try run.skipIfSkipped()
        try checkDefaultRun(run, lesson)
    }

    /// The same run with the temp file on tmpfs, where every read goes to an io-wq worker (on
    /// 6.18): the prose's tmpfs lines. The harness sets TMPDIR itself (and checks its own for
    /// leftovers), so a shell between it and the lesson points TMPDIR at /dev/shm instead.
    func testReadsTheDefaultFileOnTmpfs() throws {
        let dir = "/dev/shm/lesson-04-test-\(UUID().uuidString)"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        } catch {
            throw XCTSkip("cannot make a directory in /dev/shm: \(error)")
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }

        let lesson = try Lesson("04")
        let run = try lesson.run(wrapper: ["sh", "-c", "TMPDIR=\"$0\" exec \"$@\"", dir])
        try run.skipIfSkipped()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [],
                       "the lesson left files behind in \(dir)\n\(run.transcript)")
        guard run.stdoutLines.contains("filesystem: tmpfs") else {
            throw XCTSkip("/dev/shm is not tmpfs here\n\(run.transcript)")
        }
        try checkDefaultRun(run, lesson)
    }

    /// Holds a run without arguments against the prose, keyed on its `filesystem:` line:
    /// - a disk filesystem (ext4 and the like): the expected block, which shows ext4, with
    ///   six reads done at submit and no worker until the openat of missing.txt;
    /// - tmpfs: the expected block with the three lines the prose gives for tmpfs (the reads
    ///   went to a worker, and how many were done by the time submit returned varies);
    /// - anything else: only the lines that prove the lesson (bytes, results, errors, the
    ///   lookup's worker, the pipe's poll), as nothing was measured there.
    private func checkDefaultRun(_ run: Run, _ lesson: Lesson,
                                 file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(run.status, 0, "exit status\n\(run.transcript)", file: file, line: line)
        let lines = run.stdoutLines
        let fileSystem = lines.first { $0.hasPrefix("filesystem: ") }?.dropFirst("filesystem: ".count)
        let workerCounts = lines.filter { $0.hasPrefix(Self.workers) }.map { $0.dropFirst(Self.workers.count) }
        var expected = try lesson.expectedOutput()
        XCTAssert(expected.contains("filesystem: ext4"), "the expected block shows a run on ext4",
                  file: file, line: line)

        if let fileSystem, Self.diskFileSystems.contains(String(fileSystem)) {
            expected = expected.map { $0 == "filesystem: ext4" ? "filesystem: \(fileSystem)" : $0 }
            // The lines that prove where requests run, asserted again in case the block is edited.
            XCTAssert(lines.contains(Self.doneAtSubmit + "6 of 6"), run.transcript, file: file, line: line)
            XCTAssertEqual(workerCounts, ["0", "1", "1"], run.transcript, file: file, line: line)
        } else if fileSystem == "tmpfs" {
            // The prose's three tmpfs lines, with its N as a placeholder.
            let tmpfsLines = ["filesystem: tmpfs", Self.doneAtSubmit + "N of 6", Self.workers + "1"]
            let prose = try String(contentsOf: lesson.prose, encoding: .utf8)
            XCTAssert(prose.contains(tmpfsLines.joined(separator: "\n")),
                      "lessons/04-read-file.md shows the three lines that differ on tmpfs", file: file, line: line)
            let ext4Lines = ["filesystem: ext4", Self.doneAtSubmit + "6 of 6", Self.workers + "0"]
            for (ext4Line, tmpfsLine) in zip(ext4Lines, tmpfsLines) {
                guard let index = expected.firstIndex(of: ext4Line) else {
                    XCTFail("the expected block lacks \(ext4Line)", file: file, line: line)
                    continue
                }
                expected[index] = tmpfsLine.replacingOccurrences(of: "N of 6", with: "{n} of 6")
            }
            XCTAssertEqual(workerCounts, ["1", "1", "1"], run.transcript, file: file, line: line)
        } else {
            for proof in ["the file's 68 bytes in 6 reads: "
                            + "\"io_uring reads files\\nsixteen bytes at a time\\nuntil a read returns 0\\n\"",
                          "openat missing.txt: user_data=3 res=-ENOENT (-2) flags=0"] {
                XCTAssert(lines.contains(proof), "missing: \(proof)\n\(run.transcript)", file: file, line: line)
            }
            let badRead = lines.first { $0.hasPrefix("read on the closed fd ") }
            XCTAssert(badRead?.hasSuffix(": user_data=4 res=-EBADF (-9) flags=0") == true, run.transcript,
                      file: file, line: line)
            // A worker answered the lookup, and the pipe's read took no new one.
            XCTAssertEqual(workerCounts.count, 3, run.transcript, file: file, line: line)
            if workerCounts.count == 3 {
                XCTAssertGreaterThanOrEqual(Int(workerCounts[1]) ?? 0, 1, run.transcript, file: file, line: line)
                XCTAssertEqual(workerCounts[2], workerCounts[1], run.transcript, file: file, line: line)
            }
            expected = []
        }
        if !expected.isEmpty, let mismatch = OutputPattern(expected).mismatch(in: lines) {
            XCTFail("\(run.command): output does not match the expected output in lessons/04-read-file.md "
                + "(for \(fileSystem ?? "no filesystem line"))\n\(mismatch)\n\(run.transcript)", file: file, line: line)
        }
        XCTAssert(lines.contains("read 16 bytes from an empty pipe: CQEs in the CQ when io_uring_submit returned: "
            + "0, 20 ms later: 0"), run.transcript, file: file, line: line)
        XCTAssert(lines.contains("read from the pipe: user_data=5 res=3 flags=0 \"hi\\n\""), run.transcript,
                  file: file, line: line)
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
