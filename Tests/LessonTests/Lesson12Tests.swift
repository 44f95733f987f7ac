import Foundation
import XCTest

final class Lesson12Tests: XCTestCase {
    /// Each op's res in the chain, statx's size after fallocate, the listing before (empty),
    /// after the chain and after the cleanup: the expected block of lessons/12-file-ops.md.
    func testChainInATempDirectory() throws {
        let run = try Lesson("12").runAndCompareWithProse()
        let lines = run.stdoutLines
        for line in [
            "io_uring_submit_and_wait = 11",
            "CQE 2: fallocate 65536 bytes at 0: user_data=102 res=0 flags=0",
            "  uring-os/data.bin  (file, 65536 bytes, 2 links)",
            "  uring-os/symlink.bin -> data.bin  (symlink)",
            "CQE 4: unlinkat uring-os AT_REMOVEDIR: user_data=206 res=0 flags=0",
            "listing after cleanup: (empty)",
            "listing after cleanup equals listing before: yes",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        XCTAssert(lines.contains { $0.hasPrefix("statx: stx_size=65536 stx_nlink=1 ") }, run.transcript)
    }

    /// A directory of the user's, with content of its own: the chain works there and leaves it
    /// exactly as it was.
    func testGivenDirectoryIsLeftAsItWas() throws {
        let dir = try makeScratchDirectory("lesson-12-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data("hello\n".utf8).write(to: dir.appendingPathComponent("notes.txt"))
        let before = try snapshot(dir)

        let run = try Lesson("12").run([dir.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssert(run.stdoutLines.contains("  uring-os/hardlink.bin  (file, 65536 bytes, 2 links)"), run.transcript)
        XCTAssert(run.stdoutLines.contains("listing after cleanup equals listing before: yes"), run.transcript)
        XCTAssertEqual(try snapshot(dir), before, run.transcript)
    }

    /// DIR holds a `uring-os` that is a symlink to a directory outside DIR: the lesson refuses
    /// before creating anything, and neither DIR nor the directory the symlink points to changes.
    func testSymlinkNamedUringOsIsRefused() throws {
        let parent = try makeScratchDirectory("lesson-12-input")
        defer { try? FileManager.default.removeItem(at: parent) }
        let dir = parent.appendingPathComponent("dir")
        let outside = parent.appendingPathComponent("outside")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: false)
        try Data("outside\n".utf8).write(to: outside.appendingPathComponent("keep.txt"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("uring-os").path,
                                                   withDestinationPath: "../outside")
        let outsideBefore = try snapshot(outside)
        try assertRefused(dir, mentioning: "already holds a symlink named uring-os")
        XCTAssertEqual(try snapshot(outside), outsideBefore)
    }

    /// A real directory `uring-os` of the user's is not ours either: refused, left as it was.
    func testExistingDirectoryNamedUringOsIsRefused() throws {
        let dir = try makeScratchDirectory("lesson-12-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let existing = dir.appendingPathComponent("uring-os")
        try FileManager.default.createDirectory(at: existing, withIntermediateDirectories: false)
        try Data("keep\n".utf8).write(to: existing.appendingPathComponent("keep.txt"))
        try Data("keep\n".utf8).write(to: existing.appendingPathComponent("data.bin"))
        try assertRefused(dir, mentioning: "already holds a directory named uring-os")
    }

    /// A step fails inside the chain: under `ulimit -f 0` the write fails with -EFBIG, the ten
    /// links after it are cancelled, and the cleanup closes the fd and removes `uring-os.tmp`:
    /// DIR ends exactly as found. The prose shows this run, with SIGXFSZ ignored as a
    /// precaution; it says the run is the same without (the write runs on an io-wq worker on
    /// Linux 6.18, and the signal kills no one), so both are run.
    func testFailedWriteInsideChainLeavesDirectoryAsItWas() throws {
        try failedWriteInsideChain(ignoringSIGXFSZ: true)
    }

    func testFailedWriteInsideChainWithoutTheTrap() throws {
        try failedWriteInsideChain(ignoringSIGXFSZ: false)
    }

    private func failedWriteInsideChain(ignoringSIGXFSZ: Bool) throws {
        let dir = try makeScratchDirectory("lesson-12-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data("hello\n".utf8).write(to: dir.appendingPathComponent("notes.txt"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("link").path,
                                                   withDestinationPath: "notes.txt")
        let before = try snapshot(dir)

        // stdout and stderr are pipes: under ulimit -f 0 a file could not take the output either.
        let lesson = try Lesson("12")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        let trap = ignoringSIGXFSZ ? "trap '' XFSZ; " : ""
        process.arguments = ["-c", trap + "ulimit -f 0; exec \"$0\" \"$1\"", lesson.executable.path, dir.path]
        let out = Pipe(), err = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let transcript = "exit \(process.terminationStatus)\n--- stdout:\n\(stdout)--- stderr:\n\(stderr)"
        if process.terminationStatus == 77 { throw XCTSkip(transcript) }

        XCTAssertEqual(process.terminationReason, .exit, "killed by a signal?\n\(transcript)")
        XCTAssertEqual(process.terminationStatus, 1, transcript)
        XCTAssertEqual(stderr, "error: write 16 bytes at 0 completed with res=-EFBIG (-27); \(dir.path) is as it was\n",
                       transcript)
        let lines = stdout.components(separatedBy: "\n")
        for line in [
            "CQE 1: write 16 bytes at 0: user_data=101 res=-EFBIG (-27) flags=0",
            "CQE 7: close the file's fd: user_data=107 res=-ECANCELED (-125) flags=0",
            "CQE 11: symlinkat uring-os/symlink.bin -> data.bin: user_data=111 res=-ECANCELED (-125) flags=0",
            "write 16 bytes at 0 failed: the 10 links after it were cancelled",
            "  uring-os.tmp  (file, 0 bytes, 1 link)",
            "io_uring_submit_and_wait = 3",
            "CQE 1: close the file's fd: user_data=201 res=0 flags=0",
            "CQE 2: unlinkat uring-os.tmp: user_data=205 res=0 flags=0",
            "CQE 3: close the directory fd: user_data=207 res=0 flags=0",
            "listing after cleanup equals listing before: yes",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(transcript)")
        }
        XCTAssertEqual(try snapshot(dir), before, transcript)
    }

    /// The temp name is taken: refused before the openat, no chain runs, the file is untouched.
    func testTakenTempNameLeavesDirectoryAsItWas() throws {
        let dir = try makeScratchDirectory("lesson-12-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data("not yours\n".utf8).write(to: dir.appendingPathComponent("uring-os.tmp"))
        try assertRefused(dir, mentioning: "already holds a file named uring-os.tmp")
    }

    func testMissingDirectory() throws {
        let run = try Lesson("12").run(["/nonexistent/lesson-12"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "-ENOENT", "openat completed")
    }

    func testFileIsNotADirectory() throws {
        let dir = try makeScratchDirectory("lesson-12-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("file.txt")
        try Data("x".utf8).write(to: file)
        let run = try Lesson("12").run([file.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "-ENOTDIR")
    }

    func testTooManyArguments() throws {
        try Lesson("12").run(["a", "b"]).assertError(mentioning: "too many arguments", "usage")
    }

    /// The lesson refuses DIR before creating anything: one error line (so no `fds open at exit`
    /// line either: the directory fd its IORING_OP_OPENAT opened is closed), no chain, DIR unchanged.
    private func assertRefused(_ dir: URL, mentioning refusal: String,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let before = try snapshot(dir)
        let run = try Lesson("12").run([dir.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: refusal, "untouched", file: file, line: line)
        XCTAssertFalse(run.stdout.contains("one chain of 11"), run.transcript, file: file, line: line)
        XCTAssertEqual(try snapshot(dir), before, run.transcript, file: file, line: line)
    }

    /// Everything under `dir`, recursively: each path with its type, link count, size, symlink
    /// target and file contents.
    private func snapshot(_ dir: URL) throws -> [String] {
        let manager = FileManager.default
        let paths = try manager.subpathsOfDirectory(atPath: dir.path).sorted()
        return try paths.map { relative in
            let path = dir.appendingPathComponent(relative).path
            let attributes = try manager.attributesOfItem(atPath: path)  // does not follow symlinks
            let type = attributes[.type] as? FileAttributeType
            var line = "\(relative) \(type?.rawValue ?? "?") links=\(attributes[.referenceCount] ?? "?")"
            if type == .typeSymbolicLink {
                line += " -> " + (try manager.destinationOfSymbolicLink(atPath: path))
            } else if type == .typeRegular {
                line += " size=\(attributes[.size] ?? "?") " + (try Data(contentsOf: URL(fileURLWithPath: path))).base64EncodedString()
            }
            return line
        }
    }
}
