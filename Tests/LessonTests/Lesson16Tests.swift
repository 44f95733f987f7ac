import Foundation
import XCTest

final class Lesson16Tests: XCTestCase {
    /// The default temp file: statx, the disk and its io_poll, the O_DIRECT alignment rules
    /// (-EINVAL three ways), the buffered -EOPNOTSUPP on the IOPOLL ring, and a final read whose
    /// result agrees with io_poll: the expected block of lessons/16-iopoll.md.
    func testDefaultRun() throws {
        let lesson = try Lesson("16")
        let run = try lesson.run()
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        if lines.contains(where: { $0.hasPrefix("block device: none") }) {
            // $TMPDIR is on tmpfs or another filesystem without a disk: the expected block
            // shows a disk's alignment rules, so only the honest result can be checked here.
            try assertHonestResult(run)
            throw XCTSkip("the default file is on no block device (is $TMPDIR on tmpfs?); "
                + "the expected output of lessons/16-iopoll.md is for a file on a disk")
        }
        if let mismatch = OutputPattern(try lesson.expectedOutput()).mismatch(in: lines) {
            XCTFail("output does not match lessons/16-iopoll.md\n\(mismatch)\n\(run.transcript)")
        }
        try assertHonestResult(run)
    }

    /// A small file of the test's own on the same filesystem: a short O_DIRECT read of its
    /// 20 bytes, and the same honest result.
    func testGivenFile() throws {
        let dir = try makeScratchDirectory("lesson-16-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("given.txt")
        try Data("twenty bytes, given\n".utf8).write(to: file)

        let run = try Lesson("16").run([file.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssertEqual(lines.first, "file: \(file.path)", run.transcript)
        XCTAssert(lines.contains("a regular file of 20 bytes on device " + deviceNumber(of: file)), run.transcript)
        XCTAssert(lines.contains("  4096 bytes at offset 0 into a page-aligned buffer: user_data=11 res=20 flags=0  "
            + "\"twenty bytes, given\\n\"..."), run.transcript)
        try assertHonestResult(run)
    }

    /// A file on tmpfs (Linux 6.6+ accepts O_DIRECT there): no disk, and the IOPOLL read is
    /// refused with -EOPNOTSUPP, explained as such. Before 6.6, the lesson skips with its reason.
    func testFileWithoutADisk() throws {
        let shm = URL(fileURLWithPath: "/dev/shm")
        guard FileManager.default.isWritableFile(atPath: shm.path) else { throw XCTSkip("no writable /dev/shm") }
        let dir = shm.appendingPathComponent("lesson-16-input-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("on-tmpfs.txt")
        try Data(repeating: UInt8(ascii: "t"), count: 5000).write(to: file)

        let run = try Lesson("16").run([file.path])
        if run.status == 77 {
            XCTAssert(run.stdout.contains("SKIP: open(\(file.path), O_RDONLY | O_DIRECT) failed with -EINVAL (-22)"),
                      run.transcript)
            throw XCTSkip("this kernel's tmpfs refuses O_DIRECT")
        }
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssert(lines.contains { $0.hasPrefix("block device: none: /sys/dev/block/0:") }, run.transcript)
        XCTAssert(lines.contains("io_poll: unknown: no disk queue to read"), run.transcript)
        XCTAssert(lines.contains("buffered fd (no O_DIRECT) on the IOPOLL ring: user_data=21 res=-EOPNOTSUPP (-95) flags=0"),
                  run.transcript)
        try assertHonestResult(run)
    }

    func testMissingFile() throws {
        try Lesson("16").run(["/nonexistent/lesson-16/missing"]).assertError(mentioning: "ENOENT")
    }

    func testDirectoryAndDevice() throws {
        let dir = try makeScratchDirectory("lesson-16-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Lesson("16").run([dir.path]).assertError(mentioning: "is a directory")
        try Lesson("16").run(["/dev/null"]).assertError(mentioning: "neither a regular file nor a block device")
    }

    func testArguments() throws {
        try Lesson("16").run(["a", "b"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("16").run(["--direct"]).assertError(mentioning: "unknown option", "usage")
    }

    // MARK: - Helpers

    /// The final read must agree with the io_poll line: bytes and "a polled read" only when the
    /// disk has poll queues; -EOPNOTSUPP, explained, when it has none or there is no disk.
    private func assertHonestResult(_ run: Run, file: StaticString = #filePath, line: UInt = #line) throws {
        let lines = run.stdoutLines
        let ioPollLine = try XCTUnwrap(lines.first { $0.hasPrefix("io_poll: ") }, run.transcript, file: file, line: line)
        let ioPoll = ioPollLine.dropFirst("io_poll: ".count).prefix { $0 != " " && $0 != ":" }
        let cqeLine = try XCTUnwrap(lines.first { $0.hasPrefix("O_DIRECT fd on the IOPOLL ring: ") }, run.transcript,
                                    file: file, line: line)
        let result = try XCTUnwrap(lines.first { $0.hasPrefix("result: ") }, run.transcript, file: file, line: line)
        XCTAssertEqual(lines.last, result, "the result is the last line\n\(run.transcript)", file: file, line: line)
        let res = cqeLine.components(separatedBy: " res=").last?.components(separatedBy: " ").first ?? ""
        switch ioPoll {
        case "0":
            XCTAssertEqual(res, "-EOPNOTSUPP", run.transcript, file: file, line: line)
            XCTAssert(result.hasPrefix("result: no polled read happened: ") && result.contains("(io_poll=0)"),
                      run.transcript, file: file, line: line)
        case "1":
            XCTAssert((Int(res) ?? 0) > 0, "io_poll=1: expected bytes\n\(run.transcript)", file: file, line: line)
            XCTAssert(result.hasPrefix("result: a polled read: \(res) bytes"), run.transcript, file: file, line: line)
        case "unknown":
            XCTAssertEqual(res, "-EOPNOTSUPP", run.transcript, file: file, line: line)
            XCTAssertEqual(result, "result: no polled read happened: the file is on no block device, "
                + "so there is nothing to poll", run.transcript, file: file, line: line)
        default:
            XCTFail("unexpected io_poll line: \(ioPollLine)\n\(run.transcript)", file: file, line: line)
        }
        if !result.hasPrefix("result: a polled read") {
            XCTAssertFalse(result.contains("polled read:"), run.transcript, file: file, line: line)
        }
    }

    /// `major:minor` of the filesystem `url` is on, as the lesson prints it.
    private func deviceNumber(of url: URL) -> String {
        var info = stat()
        guard stat(url.path, &info) == 0 else { return "?" }
        let dev = UInt64(info.st_dev)
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        return "\(major):\(minor)"
    }
}
