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
            try assertHonestResult(run, bytes: 4096, start: "\"lesson 16: read with O_D\"...")
            throw XCTSkip("the default file is on no block device (is $TMPDIR on tmpfs?); "
                + "the expected output of lessons/16-iopoll.md is for a file on a disk")
        }
        if let mismatch = OutputPattern(try lesson.expectedOutput()).mismatch(in: lines) {
            XCTFail("output does not match lessons/16-iopoll.md\n\(mismatch)\n\(run.transcript)")
        }
        try assertHonestResult(run, bytes: 4096, start: "\"lesson 16: read with O_D\"...")
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
        try assertHonestResult(run, bytes: 20, start: "\"twenty bytes, given\\n\"...")
    }

    /// A file on tmpfs: no disk, and the IOPOLL read is refused with -EOPNOTSUPP, explained as
    /// such. tmpfs accepts O_DIRECT since Linux 6.6 (e88e0d366f9c, "tmpfs: trivial support for
    /// direct IO"): on an older kernel the lesson must skip, saying why, and the test checks that.
    func testFileWithoutADisk() throws {
        let shm = URL(fileURLWithPath: "/dev/shm")
        guard FileManager.default.isWritableFile(atPath: shm.path) else { throw XCTSkip("no writable /dev/shm") }
        let dir = shm.appendingPathComponent("lesson-16-input-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("on-tmpfs.txt")
        try Data(repeating: UInt8(ascii: "t"), count: 5000).write(to: file)

        let run = try Lesson("16").run([file.path])
        if try KernelRange("kernel<6.6", in: "Lesson16Tests").contains(KernelRange.running) {
            XCTAssertEqual(run.status, 77, "tmpfs refuses O_DIRECT before Linux 6.6: a skip\n\(run.transcript)")
            XCTAssertEqual(run.stdoutLines.last, "SKIP: open(\(file.path), O_RDONLY | O_DIRECT) failed with -EINVAL (-22): "
                + "this filesystem refuses O_DIRECT (tmpfs did before Linux 6.6), and IOPOLL works only with O_DIRECT. "
                + "Give a FILE on a disk filesystem (ext4, xfs) or a block device", run.transcript)
            XCTAssertEqual(run.stderr, "", run.transcript)
            return
        }
        XCTAssertEqual(run.status, 0, run.transcript)
        let lines = run.stdoutLines
        XCTAssert(lines.contains { $0.hasPrefix("block device: none: /sys/dev/block/0:") }, run.transcript)
        XCTAssert(lines.contains("io_poll: unknown: no disk queue to read"), run.transcript)
        XCTAssert(lines.contains("buffered fd (no O_DIRECT) on the IOPOLL ring: user_data=21 res=-EOPNOTSUPP (-95) flags=0"),
                  run.transcript)
        try assertHonestResult(run, bytes: 4096, start: "\"tttttttttttttttttttttttt\"...")
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
    /// disk has poll queues; when it has none, -EOPNOTSUPP since Linux 6.11 (73e59d3eeca4, "block:
    /// avoid polling configuration errors"), and before it the `bytes` (or, on 6.1, res 0 with
    /// the bytes in the buffer, which the line quotes: `start`) through an ordinary queue; with
    /// no disk at all, -EOPNOTSUPP. Never a claim of a polled read without poll queues.
    private func assertHonestResult(_ run: Run, bytes: Int, start: String,
                                    file: StaticString = #filePath, line: UInt = #line) throws {
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
            let disk = ioPollLine.components(separatedBy: "/sys/block/").last?.prefix { $0 != "/" } ?? "?"
            let noQueues = "result: no polled read happened: \(disk) has no poll queues (io_poll=0), "
            if try KernelRange("kernel<6.11", in: "Lesson16Tests").contains(KernelRange.running) {
                let unpolled = noQueues + "so this kernel sent the read to an ordinary queue and an interrupt "
                    + "completed it (Linux before 6.11): "
                if res == "0" {
                    XCTAssertEqual(result, unpolled + "res 0, yet the buffer holds \(start): a short read done in "
                        + "two steps, of which the CQE counts only the second", run.transcript, file: file, line: line)
                } else {
                    XCTAssertEqual(res, "\(bytes)", run.transcript, file: file, line: line)
                    XCTAssertEqual(result, unpolled + "\(bytes) bytes", run.transcript, file: file, line: line)
                }
            } else {
                XCTAssertEqual(res, "-EOPNOTSUPP", run.transcript, file: file, line: line)
                XCTAssertEqual(result, noQueues + "so the kernel refused the polled request", run.transcript,
                               file: file, line: line)
            }
        case "1":
            XCTAssertEqual(res, "\(bytes)", "io_poll=1: expected bytes\n\(run.transcript)", file: file, line: line)
            XCTAssert(result.hasPrefix("result: a polled read: \(bytes) bytes"), run.transcript, file: file, line: line)
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
