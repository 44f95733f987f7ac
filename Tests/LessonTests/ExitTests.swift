import Foundation
import XCTest

/// How every lesson ends when the world gets in the way: output that cannot be written, and a
/// signal in the middle of the run. (Each lesson's own tests cover its bad input.)
final class ExitTests: XCTestCase {
    /// Every lesson in Sources, by number.
    static let lessons = ((try? FileManager.default.contentsOfDirectory(atPath: packageRoot.path + "/Sources")) ?? [])
        .filter { $0.hasPrefix("lesson-") }.map { String($0.dropFirst("lesson-".count).prefix(2)) }.sorted()

    /// `lesson >/dev/full`: print's buffer cannot be flushed (ENOSPC). That is one `error:` line
    /// and exit 1, never a silent 0.
    func testOutputThatCannotBeWrittenIsAnError() throws {
        for number in Self.lessons {
            let run = try Lesson(number).run(stdoutPath: "/dev/full")
            run.assertError(mentioning: "standard output", "ENOSPC")
        }
    }

    /// SIGINT or SIGTERM while lesson 11 copies a large file: its temp directory is removed
    /// (run() fails the test on anything left in $TMPDIR) and it dies of that same signal.
    func testASignalRemovesTheTempDirectoryAndEndsTheLessonByThatSignal() throws {
        let dir = try makeScratchDirectory("exit-signal")
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("large.bin")  // sparse: 2 GB of zeros, no disk used
        XCTAssertTrue(FileManager.default.createFile(atPath: file.path, contents: nil))
        try FileHandle(forWritingTo: file).truncate(atOffset: 2_000_000_000)
        for signal in [SIGINT, SIGTERM] {
            let run = try Lesson("11").run([file.path], signal: signal)
            XCTAssertTrue(run.crashed, "not ended by a signal\n\(run.transcript)")
            XCTAssertEqual(run.status, signal, "ended by another signal\n\(run.transcript)")
        }
    }

    /// `lesson | true`: the reader is gone before the lesson writes, so its write raises
    /// SIGPIPE. The temp directory is removed all the same, and the lesson dies of SIGPIPE
    /// (which bash's pipefail reports as 128 + 13).
    func testABrokenPipeRemovesTheTempDirectoryAndEndsTheLessonBySIGPIPE() throws {
        let run = try Lesson("11").run(wrapper: ["bash", "-c", "set -o pipefail; \"$0\" \"$@\" | true"])
        XCTAssertEqual(run.status, 128 + SIGPIPE, run.transcript)
    }
}
