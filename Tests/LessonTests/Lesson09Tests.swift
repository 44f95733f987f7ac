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
        let dir = try makeScratchDirectory("lesson-09-input")
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
        let dir = try makeScratchDirectory("lesson-09-input")
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

    /// The lesson stops at the first bad file: the files before it are copied, the ones after
    /// it are not read (cat would go on), and there is one error line.
    func testStopsAtTheFirstBadFile() throws {
        let dir = try makeScratchDirectory("lesson-09-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let first = dir.appendingPathComponent("first.txt")
        let last = dir.appendingPathComponent("last.txt")
        try Data("first file\n".utf8).write(to: first)
        try Data("last file\n".utf8).write(to: last)
        let missing = dir.appendingPathComponent("missing.txt").path
        let run = try Lesson("09").run([first.path, missing, last.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "cannot open \(missing)", "ENOENT")
        XCTAssertEqual(run.stdout, "first file\n", run.transcript)
    }

    /// `-` is standard input for cat; the lesson refuses it before reading anything.
    func testRejectsStandardInput() throws {
        let run = try Lesson("09").run(["/etc/hostname", "-"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "standard input", "./-")
        XCTAssertEqual(run.stdout, "", run.transcript)
    }

    /// Every readv has an explicit offset, which man 2 io_uring_enter allows a file that is not
    /// seekable only as 0 or -1: /dev/stdin on a pipe answers lseek with ESPIPE and is refused
    /// before any readv (Linux 6.18 would have ignored the offset and read it).
    func testRefusesAPipe() throws {
        let lesson = try Lesson("09")
        let process = Process()
        process.executableURL = lesson.executable
        process.arguments = ["/dev/stdin"]
        let input = Pipe(), out = Pipe(), err = Pipe()
        process.standardInput = input
        process.standardOutput = out
        process.standardError = err
        // Written and closed before the run: the bytes wait in the pipe, and no write can meet
        // a reader that has already gone (SIGPIPE).
        input.fileHandleForWriting.write(Data("hello through a pipe\n".utf8))
        try input.fileHandleForWriting.close()
        try process.run()
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let transcript = "exit \(process.terminationStatus)\n--- stdout:\n\(stdout)--- stderr:\n\(stderr)"
        if process.terminationStatus == 77 { throw XCTSkip(transcript) }
        XCTAssertEqual(process.terminationStatus, 1, transcript)
        XCTAssertEqual(stderr, "error: cannot cat /dev/stdin: not seekable (lseek: -ESPIPE (-29)), "
            + "and every readv here has an explicit offset\n", transcript)
        XCTAssertEqual(stdout, "", transcript)
    }

    /// Standard input that is a regular file is seekable: /dev/stdin reopens the file, and the
    /// cat reads it like any other.
    func testStandardInputFromAFile() throws {
        let dir = try makeScratchDirectory("lesson-09-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = sampleText(lines: 700, tag: "stdin")
        let file = dir.appendingPathComponent("input.txt")
        try Data(text.utf8).write(to: file)
        let lesson = try Lesson("09")
        let process = Process()
        process.executableURL = lesson.executable
        process.arguments = ["/dev/stdin"]
        let out = Pipe(), err = Pipe()
        process.standardInput = try FileHandle(forReadingFrom: file)
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if process.terminationStatus == 77 { throw XCTSkip(stderr) }
        XCTAssertEqual(process.terminationStatus, 0, stderr)
        XCTAssertEqual(stderr, "")
        XCTAssertEqual(Array(stdout), Array(text.utf8), "cat of /dev/stdin differs from the file")
    }

    /// The harness sends standard output to a regular file; /dev/stdout opens that same file,
    /// so reading it would be `cat f >> f`. Refused, as GNU cat does.
    func testInputIsOutput() throws {
        let run = try Lesson("09").run(["/dev/stdout"])
        try run.skipIfSkipped()
        run.assertError(mentioning: "cannot cat /dev/stdout", "input file is output file")
    }

    /// A directory opens with O_RDONLY; the readv's CQE refuses it.
    func testDirectory() throws {
        let dir = try makeScratchDirectory("lesson-09-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try Lesson("09").run([dir.path])
        try run.skipIfSkipped()
        run.assertError(mentioning: "cannot read \(dir.path)", "-EISDIR", "readv at offset 0")
    }

    /// The cat's failures close the file and free its buffers before the error line: a write(2)
    /// to a full standard output (-ENOSPC, which print's check at exit never sees: the cat writes
    /// past it) and a directory's readv (-EISDIR). No fd is left open at exit.
    func testErrorsCloseTheFile() throws {
        let dir = try makeScratchDirectory("lesson-09-input")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("short.txt")
        try Data("a short file\n".utf8).write(to: file)
        for (arguments, stdoutPath, error) in [
            ([file.path], "/dev/full", "error: cannot write standard output: -ENOSPC (-28)"),
            ([dir.path], nil, "error: cannot read \(dir.path): readv at offset 0 completed with res=-EISDIR (-21)"),
        ] {
            let run = try Lesson("09").run(arguments, stdoutPath: stdoutPath)
            try run.skipIfSkipped()
            XCTAssertEqual(run.status, 1, run.transcript)
            XCTAssertEqual(run.stderr.components(separatedBy: "\n").filter { $0.hasPrefix("error: ") }, [error], run.transcript)
            XCTAssertEqual(run.fdsOpenAtExit, [], run.transcript)
        }
    }

    func testUnknownOption() throws {
        try Lesson("09").run(["--iovecs"]).assertError(mentioning: "unknown option --iovecs", "usage")
    }

    /// Numbered lines with two- to four-byte UTF-8 characters, `lines` of them.
    private func sampleText(lines: Int, tag: String) -> String {
        (1...lines).map { "\(tag) line \($0): é ü ß — € 𝄞 io_uring readv\n" }.joined()
    }
}
