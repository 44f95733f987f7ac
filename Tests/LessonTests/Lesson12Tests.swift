import Foundation
import XCTest

final class Lesson12Tests: XCTestCase {
    /// Each op's res in the chain, statx's size after fallocate, the listing before (empty),
    /// after the chain and after the cleanup: the expected block of lessons/12-file-ops.md.
    func testChainInATempDirectory() throws {
        let run = try Lesson("12").runAndCompareWithProse()
        let lines = run.stdoutLines
        for line in [
            "io_uring_submit = 11",
            "CQE 2: fallocate 65536 bytes at 0: user_data=4 res=0 flags=0",
            "  uring-os/data.bin  (file, 65536 bytes, 2 links)",
            "  uring-os/symlink.bin -> data.bin  (symlink)",
            "CQE 4: unlinkat uring-os AT_REMOVEDIR: user_data=17 res=0 flags=0",
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
        let dir = try makeDirectory()
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

    /// The failure path: DIR already holds a directory `uring-os`. mkdirat fails with -EEXIST;
    /// whatever the other links did (this kernel lets them run), the cleanup removes exactly the
    /// names the lesson created and DIR ends as it was, `uring-os/keep.txt` included.
    func testFailedMkdiratLeavesDirectoryAsItWas() throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let existing = dir.appendingPathComponent("uring-os")
        try FileManager.default.createDirectory(at: existing, withIntermediateDirectories: false)
        try Data("keep\n".utf8).write(to: existing.appendingPathComponent("keep.txt"))
        try Data("hi\n".utf8).write(to: dir.appendingPathComponent("notes.txt"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("link").path,
                                                   withDestinationPath: "notes.txt")
        let before = try snapshot(dir)

        let run = try Lesson("12").run([dir.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "mkdirat uring-os completed with res=-EEXIST (-17)", "is as it was")
        let lines = run.stdoutLines
        XCTAssert(lines.contains("CQE 8: mkdirat uring-os: user_data=10 res=-EEXIST (-17) flags=0"), run.transcript)
        XCTAssert(lines.contains("listing after cleanup equals listing before: yes"), run.transcript)
        XCTAssertEqual(try snapshot(dir), before, run.transcript)
    }

    /// The openat fails (the temp name is taken): no chain runs, the file is untouched.
    func testTakenTempNameLeavesDirectoryAsItWas() throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data("not yours\n".utf8).write(to: dir.appendingPathComponent("uring-os.tmp"))
        let before = try snapshot(dir)

        let run = try Lesson("12").run([dir.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "openat uring-os.tmp completed with res=-EEXIST (-17)")
        XCTAssertFalse(run.stdout.contains("one chain of 11"), run.transcript)
        XCTAssertEqual(try snapshot(dir), before, run.transcript)
    }

    func testMissingDirectory() throws {
        let run = try Lesson("12").run(["/nonexistent/lesson-12"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "-ENOENT", "openat completed")
    }

    func testFileIsNotADirectory() throws {
        let dir = try makeDirectory()
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

    private func makeDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("lesson-12-input-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
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
