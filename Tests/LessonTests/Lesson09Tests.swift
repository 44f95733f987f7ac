import Foundation
import XCTest

final class Lesson09Tests: XCTestCase {
    /// Bytes per iovec for the gather and the scatter, the reassembled text, and the cat of the
    /// temp file: the expected block of lessons/09-vectored-io.md.
    func testScatterGather() throws {
        let run = try Lesson("09").runAndCompareWithProse()
        let lines = run.stdoutLines
        for line in [
            "writev: user_data=1 res=75 flags=0",
            "readv: user_data=2 res=75 flags=0",
            "  iovec 3: 15 of 40 bytes \"d by one readv\\n\"",
            "reassembled: \"gathered from three buffers, written by one writev, scattered by one readv\\n\"",
            "gathered from three buffers, written by one writev, scattered by one readv",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    /// cat of one file larger than a request (16 KiB), with multi-byte UTF-8 characters that
    /// straddle the 4 KiB iovecs: the output is the file, byte for byte, and nothing else.
    func testCatsAFile() throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = sampleText(lines: 1500, tag: "one")
        XCTAssertGreaterThan(text.utf8.count, 3 * 16384)
        let file = dir.appendingPathComponent("big.txt")
        try Data(text.utf8).write(to: file)

        let run = try Lesson("09").run([file.path])
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stderr, "", run.transcript)
        XCTAssertEqual(Array(run.stdout.utf8), Array(text.utf8), "cat output differs from the file")
    }

    /// Several files, an empty one among them: their bytes concatenated, in order.
    func testCatsSeveralFiles() throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let texts = ["first file\n", "", sampleText(lines: 400, tag: "third"), "no newline at the end"]
        var paths: [String] = []
        for (index, text) in texts.enumerated() {
            let file = dir.appendingPathComponent("file\(index).txt")
            try Data(text.utf8).write(to: file)
            paths.append(file.path)
        }

        let run = try Lesson("09").run(paths)
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stderr, "", run.transcript)
        XCTAssertEqual(Array(run.stdout.utf8), Array(texts.joined().utf8), "cat output differs from the files")
    }

    func testMissingFile() throws {
        let missing = "/nonexistent/lesson-09/missing.txt"
        let run = try Lesson("09").run([missing])
        try run.skipIfSkipped()
        run.assertError(mentioning: "cannot open \(missing)", "ENOENT")
    }

    /// A directory opens with O_RDONLY; the readv's CQE refuses it.
    func testDirectory() throws {
        let dir = try makeDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try Lesson("09").run([dir.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "cannot read \(dir.path)", "-EISDIR", "readv at offset 0")
    }

    func testUnknownOption() throws {
        try Lesson("09").run(["--iovecs"]).assertError(mentioning: "unknown option --iovecs", "usage")
    }

    /// Numbered lines with two- to four-byte UTF-8 characters, `lines` of them.
    private func sampleText(lines: Int, tag: String) -> String {
        (1...lines).map { "\(tag) line \($0): é ü ß — € 𝄞 io_uring readv\n" }.joined()
    }

    private func makeDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("lesson-09-input-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }
}
