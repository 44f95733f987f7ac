import Foundation
import XCTest

final class Lesson10Tests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = try makeScratchDirectory("lesson-10-input")
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    /// The generated 1 MiB + 100 bytes: 9 blocks, the read past the end returning 0, the loop's
    /// peak of 8 requests in flight, the measured CQEs (all 8 reads done at the first reap), and
    /// the copy read back equal: the expected block of lessons/10-file-copy.md.
    func testDefaultCopy() throws {
        let run = try Lesson("10").runAndCompareWithProse()
        let lines = run.stdoutLines
        for line in [
            "in flight at peak: 8 requests (queue depth 8; the loop's own count)",
            "measured with io_uring_cq_ready before each of the 19 reaps:",
            "  first reap: 8 CQEs waiting, of 8 requests in flight",
            "copied: 1048676 bytes",
            "identical: yes",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        try assertMeasuredOverlap(run, reaps: 19, queueDepth: 8)
    }

    // MARK: - Good copies of given files

    func testEmptyFile() throws {
        let source = try makeFile("empty", bytes: 0)
        let copy = dir.appendingPathComponent("copy")
        let run = try copyExpectingSuccess(source, copy, bytes: 0)
        XCTAssert(run.stdoutLines.contains("plan: 0 bytes (fstat) in 0 blocks of at most 131072 bytes, queue depth 8"),
                  run.transcript)
        XCTAssert(run.stdoutLines.contains("block 0 at offset 0: read res=0 (end of file)"), run.transcript)
        XCTAssert(run.stdoutLines.contains("requests: 1 read (0 short, 1 at end of file), 0 writes (0 short)"),
                  run.transcript)
        XCTAssertEqual(try Data(contentsOf: copy), Data())
    }

    /// 394915 bytes: three full blocks and one of 1699.
    func testSizeNotAMultipleOfTheBlockSize() throws {
        let source = try makeFile("odd", bytes: 394_915)
        let copy = dir.appendingPathComponent("copy")
        let run = try copyExpectingSuccess(source, copy, bytes: 394_915)
        for line in [
            "plan: 394915 bytes (fstat) in 4 blocks of at most 131072 bytes, queue depth 8",
            "block 3 at offset 393216: read res=1699, write res=1699",
            "block 4 at offset 394915: read res=0 (end of file)",
            "in flight at peak: 4 requests (queue depth 8; the loop's own count)",
            "  first reap: 4 CQEs waiting, of 4 requests in flight",
        ] {
            XCTAssert(run.stdoutLines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    /// 8 MiB and 7 bytes: 65 blocks through 8 slots.
    func testMultiMegabyteCopy() throws {
        let size = 8 * 1_048_576 + 7
        let source = try makeFile("big", bytes: size)
        let copy = dir.appendingPathComponent("copy")
        let run = try copyExpectingSuccess(source, copy, bytes: size)
        for line in [
            "plan: 8388615 bytes (fstat) in 65 blocks of at most 131072 bytes, queue depth 8",
            "... 62 more blocks",
            "block 64 at offset 8388608: read res=7, write res=7",
            "block 65 at offset 8388615: read res=0 (end of file)",
            "requests: 66 reads (0 short, 1 at end of file), 65 writes (0 short)",
            "in flight at peak: 8 requests (queue depth 8; the loop's own count)",
            "measured with io_uring_cq_ready before each of the 131 reaps:",
            "  first reap: 8 CQEs waiting, of 8 requests in flight",
        ] {
            XCTAssert(run.stdoutLines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        try assertMeasuredOverlap(run, reaps: 131, queueDepth: 8)
    }

    /// An existing, longer DST is overwritten and cut to SRC's length.
    func testOverwritesALongerDestination() throws {
        let source = try makeFile("short", bytes: 1000)
        let copy = try makeFile("long", bytes: 200_000, seed: 7)
        let run = try copyExpectingSuccess(source, copy, bytes: 1000)
        XCTAssert(run.stdoutLines.contains("plan: 1000 bytes (fstat) in 1 block of at most 131072 bytes, queue depth 8"),
                  run.transcript)
    }

    /// /proc/version says its size is 0: the read past the end is short, the next returns 0,
    /// and the copy still holds the text. This is the short-read path on a real kernel file.
    /// (A copy of given files is `cp SRC DST`: no read-back check; the test compares the bytes.)
    func testShortReadsOfAProcFile() throws {
        let proc = URL(fileURLWithPath: "/proc/version")
        guard let text = try? Data(contentsOf: proc), !text.isEmpty else {
            throw XCTSkip("/proc/version is not readable here")
        }
        let copy = dir.appendingPathComponent("version")
        let run = try Lesson("10").run([proc.path, copy.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(run.stdoutLines.contains("block 0 at offset 0: read res=\(text.count) (short, of 131072), "
            + "read res=0 (end of file), write res=\(text.count)"), run.transcript)
        XCTAssert(run.stdoutLines.contains("requests: 2 reads (1 short, 1 at end of file), 1 write (0 short)"),
                  run.transcript)
        XCTAssertFalse(run.stdoutLines.contains { $0.hasPrefix("identical:") }, run.transcript)
        XCTAssertEqual(try Data(contentsOf: copy), text)
    }

    // MARK: - Bad input: one error line, exit 1, nothing damaged

    func testMissingSource() throws {
        let existing = try makeFile("existing", bytes: 5000)
        let before = try Data(contentsOf: existing)
        let missing = dir.appendingPathComponent("missing")
        try Lesson("10").run([missing.path, existing.path]).assertError(mentioning: "SRC", "ENOENT")
        XCTAssertEqual(try Data(contentsOf: existing), before, "DST must be untouched")

        let fresh = dir.appendingPathComponent("fresh")
        try Lesson("10").run([missing.path, fresh.path]).assertError(mentioning: "ENOENT")
        XCTAssertFalse(FileManager.default.fileExists(atPath: fresh.path), "DST must not be created")
    }

    func testSourceIsADirectory() throws {
        let existing = try makeFile("existing", bytes: 5000)
        let before = try Data(contentsOf: existing)
        // Decided from stat(2) by the lesson, not returned by the kernel: no errno in the line.
        let run = try Lesson("10").run([dir.path, existing.path])
        run.assertError(mentioning: "SRC", "it is a directory")
        XCTAssertFalse(run.stderr.contains("EISDIR"), run.transcript)
        XCTAssertEqual(try Data(contentsOf: existing), before, "DST must be untouched")
    }

    func testSourceIsNotARegularFile() throws {
        let copy = dir.appendingPathComponent("copy")
        try Lesson("10").run(["/dev/null", copy.path]).assertError(mentioning: "SRC", "character device")
        XCTAssertFalse(FileManager.default.fileExists(atPath: copy.path), "DST must not be created")
    }

    /// A FIFO as SRC (opening it would wait for a writer) and a character device as DST are
    /// refused by what they are, with the message the prose's table shows.
    func testFifoAndDevice() throws {
        let fifo = dir.appendingPathComponent("fifo")
        XCTAssertEqual(mkfifo(fifo.path, 0o600), 0, "mkfifo")
        let copy = dir.appendingPathComponent("copy")
        try Lesson("10").run([fifo.path, copy.path]).assertError(mentioning: "SRC", "it is a FIFO")
        XCTAssertFalse(FileManager.default.fileExists(atPath: copy.path), "DST must not be created")

        let source = try makeFile("source", bytes: 5000)
        try Lesson("10").run([source.path, "/dev/null"]).assertError(mentioning: "DST", "it is a character device")
    }

    /// A DST that is a symbolic link to a path that does not exist: cp refuses to write through
    /// it, and so does the lesson, without creating the file the link names.
    func testDanglingSymlinkDestination() throws {
        let source = try makeFile("source", bytes: 5000)
        let target = dir.appendingPathComponent("target")
        let link = dir.appendingPathComponent("dangling")
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: target.path)
        try Lesson("10").run([source.path, link.path])
            .assertError(mentioning: "DST", "not writing through dangling symlink")
        XCTAssertFalse(FileManager.default.fileExists(atPath: target.path), "the link's target must not be created")
    }

    /// The same path, `./name`, a hard link and a symbolic link: all the same file, refused,
    /// and the file keeps its content.
    func testSameFileIsRefused() throws {
        let file = try makeFile("same", bytes: 70_000)
        let before = try Data(contentsOf: file)
        let hardLink = dir.appendingPathComponent("hard")
        try FileManager.default.linkItem(at: file, to: hardLink)
        let symbolicLink = dir.appendingPathComponent("symbolic")
        try FileManager.default.createSymbolicLink(at: symbolicLink, withDestinationURL: file)

        for (source, destination) in [
            (file.path, file.path),
            (file.path, dir.path + "/./same"),
            (file.path, hardLink.path),
            (file.path, symbolicLink.path),
            (symbolicLink.path, file.path),
        ] {
            try Lesson("10").run([source, destination]).assertError(mentioning: "same file", "nothing copied")
            XCTAssertEqual(try Data(contentsOf: file), before, "\(source) -> \(destination) changed the file")
        }
    }

    /// Root may write anywhere permissions are concerned, so "unwritable" here is a DST whose
    /// directory does not exist, and a DST that is a directory.
    func testUnwritableDestination() throws {
        let source = try makeFile("source", bytes: 5000)
        let before = try Data(contentsOf: source)
        let nowhere = dir.appendingPathComponent("no-such-dir/copy")
        try Lesson("10").run([source.path, nowhere.path]).assertError(mentioning: "DST", "ENOENT")

        let subdirectory = dir.appendingPathComponent("subdir")
        try FileManager.default.createDirectory(at: subdirectory, withIntermediateDirectories: false)
        try Lesson("10").run([source.path, subdirectory.path]).assertError(mentioning: "DST", "it is a directory")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: subdirectory.path), [])
        XCTAssertEqual(try Data(contentsOf: source), before, "SRC must be untouched")
    }

    /// A write that fails in the middle of the copy: /proc/version opens for writing as root,
    /// but every write to it fails (-EIO on Linux 6.18; a non-root user gets EACCES at open,
    /// before any request). After every request in flight has completed, the blocks and the
    /// totals are printed as the prose promises, the failed write's block with its -errno,
    /// then one error line naming DST.
    func testWriteErrorDuringTheCopy() throws {
        guard FileManager.default.fileExists(atPath: "/proc/version") else {
            throw XCTSkip("no /proc/version here")
        }
        let source = try makeFile("source", bytes: 400_000)
        let run = try Lesson("10").run([source.path, "/proc/version"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "DST")
        guard getuid() == 0 else { return }  // not root: refused at open, nothing copied or printed
        let lines = run.stdoutLines
        // Block 0's read is the first CQE reaped, so its write always goes out, and fails.
        XCTAssert(lines.contains { $0.hasPrefix("block 0 at offset 0: read res=131072, write res=-") },
                  run.transcript)
        XCTAssert(lines.contains { $0.hasPrefix("requests: 4 reads (0 short, 0 at end of file), ") }, run.transcript)
        XCTAssert(lines.contains("copied: 0 bytes"), run.transcript)
        XCTAssertFalse(lines.contains { $0.hasPrefix("identical:") }, "no check after an error\n\(run.transcript)")
    }

    /// A file size limit (`ulimit -f 500`: 512000 bytes) cuts the copy of 1 MiB, and no SIGXFSZ
    /// kills the lesson (the writes run on io-wq workers, which block signals). Block 3 crosses
    /// the limit: its write is short (118784 of 131072) and the write of its rest fails with
    /// -EFBIG. Every block the copy took after 3 is printed, its write failed with -EFBIG or never
    /// queued, and the writes count must agree with those lines. The error line names the failure
    /// reaped first, and which one that is depends on the kernel (lessons/10-file-copy.md): the
    /// worker hands each failed write back to the lesson's thread as task work, which Linux 6.9
    /// and later run in the order queued (170539bdf109, "io_uring: handle traditional task_work
    /// in FIFO order"): block 4's write, or the rest of block 3 if that was queued first; older
    /// kernels run it newest first: the rest of block 3, or any failed write after it.
    func testFileSizeLimitDuringTheCopy() throws {
        let source = try makeFile("source", bytes: 1_048_576)
        let copy = dir.appendingPathComponent("copy")
        let run = try Lesson("10").run([source.path, copy.path],
                                       wrapper: ["bash", "-c", "ulimit -f 500; exec \"$0\" \"$@\""])
        try run.skipIfSkipped()
        let (stdout, stderr, transcript) = (run.stdout, run.stderr, run.transcript)
        XCTAssertFalse(run.crashed, "killed by a signal?\n\(transcript)")
        XCTAssertEqual(run.status, 1, transcript)
        let lines = stdout.components(separatedBy: "\n")
        let blocks = lines.filter { $0.hasPrefix("block ") || $0.hasPrefix("... ") }
        XCTAssertEqual(Array(blocks.prefix(4)), [
            "block 0 at offset 0: read res=131072, write res=131072",
            "block 1 at offset 131072: read res=131072, write res=131072",
            "... 1 more block",
            "block 3 at offset 393216: read res=131072, write res=118784 (short, of 131072), write res=-EFBIG (-27)",
        ], transcript)
        // Blocks 4 and on: each one the copy took, in order, none of them written.
        var failedWrites: [Int] = []
        for (number, line) in zip(4..., blocks.dropFirst(4)) {
            let head = "block \(number) at offset \(number * 131072): read res=131072, "
            if line == head + "write res=-EFBIG (-27)" {
                failedWrites.append(number)
            } else {
                XCTAssertEqual(line, head + "not written (the copy had stopped)", transcript)
            }
        }
        XCTAssertGreaterThan(blocks.count, 4, "no block after 3 was printed\n\(transcript)")
        // The failure reaped first: the rest of block 3, or a whole block's write that failed (from
        // Linux 6.9 only block 4's, the first queued; before it any, newest first).
        let newestFirst = try KernelRange("kernel<6.9", in: "Lesson10Tests").contains(KernelRange.running)
        let firstFailures = [(bytes: 12288, offset: 512000)]
            + failedWrites.filter { newestFirst || $0 == 4 }.map { (bytes: 131072, offset: $0 * 131072) }
        let errorLines = firstFailures.map {
            "error: write of \($0.bytes) bytes at offset \($0.offset) of DST completed with res=-EFBIG (-27)\n"
        }
        XCTAssert(errorLines.contains(stderr), "the error line is none of \(errorLines)\n\(transcript)")
        let taken = blocks.count - 4 + 4  // blocks 0...3, and those after
        // 3 whole blocks, block 3's short write and its rest, and each failed later write.
        XCTAssert(lines.contains("requests: \(taken) reads (0 short, 0 at end of file), "
            + "\(3 + 2 + failedWrites.count) writes (1 short)"), transcript)
        XCTAssert(lines.contains("copied: 393216 bytes in whole blocks; written: 512000 bytes in all"), transcript)
        XCTAssertFalse(lines.contains { $0.hasPrefix("identical:") }, "no check after an error\n\(transcript)")
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: copy.path)[.size] as? Int, 512_000,
                       transcript)
    }

    /// Every way out closes what it opened: a refusal after both files are open (the same file),
    /// a write error in the middle of the copy, and a good copy: no fd open at exit.
    func testNoFileDescriptorLeftOpen() throws {
        let source = try makeFile("source", bytes: 400_000)
        let copy = dir.appendingPathComponent("copy")
        for (arguments, status) in [([source.path, source.path], 1), ([source.path, "/proc/version"], 1),
                                    ([source.path, copy.path], 0)] {
            let run = try Lesson("10").run(arguments)
            try run.skipIfSkipped()
            XCTAssertEqual(run.status, Int32(status), run.transcript)
            XCTAssertEqual(run.fdsOpenAtExit, [], run.transcript)
        }
    }

    func testArguments() throws {
        try Lesson("10").run(["only-one"]).assertError(mentioning: "both SRC and DST", "usage")
        try Lesson("10").run(["a", "b", "c"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("10").run(["--qd", "4"]).assertError(mentioning: "unknown option", "usage")
    }

    // MARK: - Helpers

    /// The measured line: `reaps that found requests still without a CQE: N, at most M at once`.
    /// N and M depend on timing; they are bounded: N of the reaps, and M < the queue depth (the
    /// reap that measured it had at least one CQE waiting), and M is 0 exactly when N is.
    private func assertMeasuredOverlap(_ run: Run, reaps: Int, queueDepth: Int,
                                       file: StaticString = #filePath, line: UInt = #line) throws {
        let prefix = "  reaps that found requests still without a CQE: "
        guard let measured = run.stdoutLines.first(where: { $0.hasPrefix(prefix) }) else {
            return XCTFail("no measured line\n\(run.transcript)", file: file, line: line)
        }
        let numbers = measured.dropFirst(prefix.count).split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count == 2 else {
            return XCTFail("cannot read \(measured)\n\(run.transcript)", file: file, line: line)
        }
        let (count, most) = (numbers[0], numbers[1])
        XCTAssert((0...reaps).contains(count), "\(measured)\n\(run.transcript)", file: file, line: line)
        XCTAssert((0..<queueDepth).contains(most), "\(measured)\n\(run.transcript)", file: file, line: line)
        XCTAssertEqual(count == 0, most == 0, "\(measured)\n\(run.transcript)", file: file, line: line)
    }

    /// A file of `bytes` deterministic pseudo-random bytes in the test's directory.
    private func makeFile(_ name: String, bytes: Int, seed: UInt64 = 1) throws -> URL {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        var data = Data(capacity: bytes + 8)
        while data.count < bytes {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            withUnsafeBytes(of: state) { data.append(contentsOf: $0) }
        }
        let url = dir.appendingPathComponent(name)
        try data.prefix(bytes).write(to: url)
        return url
    }

    /// Copy `source` to `copy`: exit 0, `copied` and the time printed, and the two files equal
    /// byte for byte as Foundation reads them (a copy of given files is not read back by the lesson).
    @discardableResult
    private func copyExpectingSuccess(_ source: URL, _ copy: URL, bytes: Int,
                                      file: StaticString = #filePath, line: UInt = #line) throws -> Run {
        let run = try Lesson("10").run([source.path, copy.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript, file: file, line: line)
        XCTAssert(run.stdoutLines.contains("copied: \(bytes) bytes"), run.transcript, file: file, line: line)
        XCTAssert(run.stdoutLines.contains { $0.hasPrefix("time: ") && $0.hasSuffix(" MB/s") }, run.transcript,
                  file: file, line: line)
        let copied = try Data(contentsOf: copy)
        XCTAssertEqual(copied.count, bytes, "size of the copy", file: file, line: line)
        XCTAssert(copied == (try Data(contentsOf: source)), "the copy differs from the source",
                  file: file, line: line)
        return run
    }
}
