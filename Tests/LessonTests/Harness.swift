// The test harness: run a lesson's real executable and hold its output against the
// "Expected output" block of its prose, lessons/NN-slug.md. The prose is the oracle, so the
// program and what the learner reads about it cannot drift apart.
//
// In an expected block every line must match one output line, in order, with nothing extra:
//   {name}   a placeholder: matches any non-empty text within the line (an fd, a time, ...)
//   ...      a line of its own: matches any number of output lines, none included
// Everything else matches literally. Where a kernel prints something else, the prose gives it
// a block of its own, named in the fence: ```kernel<6.6 (see KernelRange at the end).
//
// Every run sets LAB_CHECK_FDS, so LabSupport makes an fd left open at exit an `error:` line
// and exit 1: every test of every lesson also checks that each path closes what it opened.

import Foundation
import XCTest

/// The package's root directory, found from this file's path.
let packageRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// One lesson, found by its number alone: `Sources/lesson-NN-*`, `lessons/NN-*.md`, and the
/// executable `swift build` put next to this test bundle.
struct Lesson {
    let number: String
    let name: String  // lesson-07-linked-ops

    init(_ number: String, file: StaticString = #filePath, line: UInt = #line) throws {
        self.number = number
        let sources = try FileManager.default.contentsOfDirectory(atPath: packageRoot.path + "/Sources")
        guard let name = sources.first(where: { $0.hasPrefix("lesson-\(number)-") }) else {
            throw HarnessError("no Sources/lesson-\(number)-* directory")
        }
        self.name = name
    }

    var slug: String { String(name.dropFirst("lesson-".count)) }  // 07-linked-ops
    var prose: URL { packageRoot.appendingPathComponent("lessons/\(slug).md") }
    var executable: URL { Bundle.main.bundleURL.appendingPathComponent(name) }

    /// Run the lesson with `arguments`, in a private $TMPDIR, for at most `timeout` seconds.
    /// Fails the test if the lesson left anything in that $TMPDIR.
    /// - `wrapper`: a command that runs the lesson (`["taskset", "-c", "1"]`, `["setpriv", ...]`).
    /// - `stdoutPath`: standard output goes there (`/dev/full`) instead of being captured.
    /// - `signal`: sent once the lesson has made something in $TMPDIR (its temp directory).
    func run(_ arguments: [String] = [], timeout: TimeInterval = 30, wrapper: [String] = [],
             stdoutPath: String? = nil, signal: Int32? = nil) throws -> Run {
        let running = try start(arguments, wrapper: wrapper, stdoutPath: stdoutPath)
        var signalled = signal == nil
        while running.process.isRunning && Date().timeIntervalSince(running.started) < timeout {
            if !signalled, let signal, (try? FileManager.default.contentsOfDirectory(atPath: running.tmpdir.path))?.isEmpty == false {
                kill(running.process.processIdentifier, signal)
                signalled = true
            }
            usleep(signalled ? 5_000 : 200)
        }
        return try running.finish(timeout: 0)
    }

    /// Start the lesson and return at once: for a server, which the test then talks to
    /// (`waitForLine`) before `finish` waits for it to end. Same $TMPDIR and checks as `run`.
    func start(_ arguments: [String] = [], wrapper: [String] = [], stdoutPath: String? = nil) throws -> Running {
        guard FileManager.default.isExecutableFile(atPath: executable.path) else {
            throw HarnessError("\(executable.path) is not built: run `swift build` (or `make test`) first")
        }
        let scratch = FileManager.default.temporaryDirectory
            .appendingPathComponent("lesson-test-\(number)-\(UUID().uuidString)")
        let tmpdir = scratch.appendingPathComponent("tmp")
        try FileManager.default.createDirectory(at: tmpdir, withIntermediateDirectories: true)
        let outURL = scratch.appendingPathComponent("stdout")
        let errURL = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: outURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        let out = try FileHandle(forWritingTo: stdoutPath.map { URL(fileURLWithPath: $0) } ?? outURL)
        let err = try FileHandle(forWritingTo: errURL)
        defer { try? out.close(); try? err.close() }  // the child has its own copies

        let process = Process()
        if let command = wrapper.first {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = [command] + wrapper.dropFirst() + [executable.path] + arguments
        } else {
            process.executableURL = executable
            process.arguments = arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(["TMPDIR": tmpdir.path, "LAB_CHECK_FDS": "1"]) { $1 }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        let running = Running(command: (wrapper + [name] + arguments).joined(separator: " "), process: process,
                              scratch: scratch, tmpdir: tmpdir, outURL: outURL, errURL: errURL)
        do { try process.run() } catch { try? FileManager.default.removeItem(at: scratch); throw error }
        return running
    }

    /// The fenced block under "## Expected output" in the lesson's prose.
    func expectedOutput() throws -> [String] {
        let text = try String(contentsOf: prose, encoding: .utf8)
        var lines = text.components(separatedBy: "\n")[...]
        guard let heading = lines.firstIndex(where: { $0.hasPrefix("## Expected output") }) else {
            throw HarnessError("\(prose.lastPathComponent) has no \"## Expected output\" section")
        }
        lines = lines[(heading + 1)...]
        if let next = lines.firstIndex(where: { $0.hasPrefix("## ") }) { lines = lines[..<next] }
        // Every fenced block of the section, with the kernel range its info string names.
        var blocks: [(range: KernelRange?, lines: [String])] = []
        while let open = lines.firstIndex(where: { $0.hasPrefix("```") }) {
            guard let close = lines[(open + 1)...].firstIndex(where: { $0.hasPrefix("```") }) else { break }
            let info = lines[open].dropFirst(3).trimmingCharacters(in: .whitespaces)
            blocks.append((try info.isEmpty ? nil : KernelRange(info, in: prose.lastPathComponent),
                           Array(lines[(open + 1)..<close])))
            lines = lines[(close + 1)...]
        }
        let kernel = KernelRange.running
        if let block = blocks.first(where: { $0.range?.contains(kernel) == true }) ?? blocks.first(where: { $0.range == nil }) {
            return block.lines
        }
        throw HarnessError("\(prose.lastPathComponent): no fenced block under \"## Expected output\" for Linux "
            + kernel.map(String.init).joined(separator: "."))
    }

    /// Run with no arguments: exit 0 and output matching the prose's expected block, or a skip
    /// (exit 77) reported as a skipped test. Returns the run for further assertions.
    @discardableResult
    func runAndCompareWithProse(_ arguments: [String] = [],
                                file: StaticString = #filePath, line: UInt = #line) throws -> Run {
        let run = try run(arguments)
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, "exit status\n\(run.transcript)", file: file, line: line)
        let expected = try expectedOutput()
        if let mismatch = OutputPattern(expected).mismatch(in: run.stdoutLines) {
            XCTFail("\(run.command): output does not match the expected output in "
                + "lessons/\(slug).md\n\(mismatch)\n\(run.transcript)", file: file, line: line)
        }
        return run
    }
}

/// A lesson that is still running (`Lesson.start`).
final class Running {
    let command: String, process: Process, scratch: URL, tmpdir: URL, outURL: URL, errURL: URL
    let started = Date()
    private var finished: Run?

    init(command: String, process: Process, scratch: URL, tmpdir: URL, outURL: URL, errURL: URL) {
        (self.command, self.process, self.scratch, self.tmpdir, self.outURL, self.errURL) = (command, process, scratch, tmpdir, outURL, errURL)
    }
    deinit {  // a test that threw before finish: never leave a lesson running
        if finished == nil { _ = try? finish(timeout: 0) }
    }

    /// What the lesson has printed so far.
    var stdout: String { (try? String(contentsOf: outURL, encoding: .utf8)) ?? "" }

    /// The first line of standard output `matching`, once the lesson has printed it (within
    /// `timeout` seconds); throws, with the output so far, if it exits or times out first.
    func waitForLine(timeout: TimeInterval = 10, matching: (String) -> Bool) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let lines = stdout.components(separatedBy: "\n").dropLast()  // complete lines only
            if let line = lines.first(where: matching) { return line }
            if !process.isRunning || Date() > deadline {
                let run = try finish(timeout: 0)
                throw HarnessError("\(command): the line the test waits for did not come\n\(run.transcript)")
            }
            usleep(2_000)
        }
    }

    /// The port in the first line that says `listening on 127.0.0.1:PORT`.
    func waitForPort(timeout: TimeInterval = 10) throws -> UInt16 {
        let line = try waitForLine(timeout: timeout) { $0.contains("listening on 127.0.0.1:") }
        let digits = line.components(separatedBy: "listening on 127.0.0.1:")[1].prefix { $0.isNumber }
        guard let port = UInt16(digits) else { throw HarnessError("\(command): no port in \(line)") }
        return port
    }

    /// Wait up to `timeout` seconds for the lesson to exit (then kill it), and return the run.
    /// Fails the test if it left anything in its $TMPDIR.
    func finish(timeout: TimeInterval) throws -> Run {
        if let finished { return finished }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        let timedOut = process.isRunning
        if timedOut {
            // Under a wrapper the lesson is a grandchild: kill the wrapper's children first, or a
            // hung lesson outlives the test.
            let children = Process()
            children.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            children.arguments = ["pkill", "-KILL", "-P", "\(process.processIdentifier)"]
            try? children.run()
            children.waitUntilExit()
            process.terminate()
        }
        process.waitUntilExit()
        defer { try? FileManager.default.removeItem(at: scratch) }
        let run = Run(
            command: command,
            status: process.terminationStatus,
            crashed: process.terminationReason == .uncaughtSignal,
            stdout: try String(contentsOf: outURL, encoding: .utf8),
            stderr: try String(contentsOf: errURL, encoding: .utf8),
            seconds: Date().timeIntervalSince(started))
        finished = run
        if timedOut {
            throw HarnessError("\(run.command) did not finish within \(Int(Date().timeIntervalSince(started))) s\n\(run.transcript)")
        }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: tmpdir.path)
        XCTAssertEqual(leftovers, [], "\(run.command) left files behind in $TMPDIR")
        return run
    }
}

/// What one run of a lesson did.
struct Run {
    let command: String
    let status: Int32
    let crashed: Bool
    let stdout: String
    let stderr: String
    let seconds: TimeInterval

    var stdoutLines: [String] {
        var lines = stdout.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        return lines
    }

    /// "Well under 2 s", not checked where every instruction is emulated: .ci/test-kernels' guests
    /// under TCG set LAB_EMULATED=1 (a lesson's cold first run took 2.45 s there).
    func assertQuick(file: StaticString = #filePath, line: UInt = #line) {
        guard ProcessInfo.processInfo.environment["LAB_EMULATED"] == nil else { return }
        XCTAssertLessThan(seconds, 2, "the lesson must finish well under 2 s\n\(transcript)", file: file, line: line)
    }

    var transcript: String {
        "--- \(command): exit \(status)\(crashed ? " (signal)" : "") after "
            + String(format: "%.2f", seconds) + " s\n--- stdout:\n\(stdout)--- stderr:\n\(stderr)---"
    }

    /// The fds the lesson left open at exit, as LabSupport reports them when LAB_CHECK_FDS is
    /// set (every run sets it): `fds open at exit: 5 7` gives ["5", "7"]. Opened by a system
    /// call or through the ring alike; empty for a lesson that closes what it opens.
    var fdsOpenAtExit: [String] {
        stderr.components(separatedBy: "\n").first { $0.hasPrefix("error: fds open at exit: ") }
            .map { $0.dropFirst("error: fds open at exit: ".count).split(separator: " ").map(String.init) } ?? []
    }

    /// A lesson that exits 77 could not run here: the test is skipped, with the lesson's reason.
    func skipIfSkipped() throws {
        if status == 77 && !crashed {
            let reason = stdoutLines.first { $0.hasPrefix("SKIP:") } ?? "exit 77 without a SKIP: line"
            throw XCTSkip("\(command): \(reason)")
        }
    }

    /// The bad-input contract: exit 1 and exactly one line on stderr, `error: ...` containing
    /// every string in `mentions`.
    func assertError(mentioning mentions: String..., file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(crashed, "crashed\n\(transcript)", file: file, line: line)
        XCTAssertEqual(status, 1, "exit status\n\(transcript)", file: file, line: line)
        var lines = stderr.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        XCTAssertEqual(lines.count, 1, "expected one line on stderr\n\(transcript)", file: file, line: line)
        XCTAssert(lines.first?.hasPrefix("error: ") == true, "stderr must start with error:\n\(transcript)",
                  file: file, line: line)
        for mention in mentions {
            XCTAssert(stderr.contains(mention), "error line lacks \(mention)\n\(transcript)",
                      file: file, line: line)
        }
    }
}

/// An expected-output block compiled to line patterns.
struct OutputPattern {
    enum Line {
        case anyLines
        case pattern(NSRegularExpression, source: String)
    }
    let lines: [Line]

    init(_ expected: [String]) {
        lines = expected.map { text in
            if text.trimmingCharacters(in: .whitespaces) == "..." { return .anyLines }
            // Literal text, with each {placeholder} standing for any non-empty text.
            var regex = "^"
            var rest = text[...]
            while let open = rest.firstIndex(of: "{"),
                  let close = rest[open...].firstIndex(of: "}"),
                  rest.index(after: open) < close {
                regex += NSRegularExpression.escapedPattern(for: String(rest[..<open])) + ".+?"
                rest = rest[rest.index(after: close)...]
            }
            regex += NSRegularExpression.escapedPattern(for: String(rest)) + "$"
            return .pattern(try! NSRegularExpression(pattern: regex), source: text)
        }
    }

    /// nil if `output` matches; otherwise a description of the first expected line that
    /// could not be matched in order.
    func mismatch(in output: [String]) -> String? {
        if matches(output[...], lines[...]) { return nil }
        // Explain: walk forward as far as the expected lines can be found in order.
        var position = 0
        for line in lines {
            guard case let .pattern(regex, source) = line else { continue }
            guard let found = output[position...].firstIndex(where: { Self.matches(regex, $0) }) else {
                return "expected line not found (in order): \(source)"
            }
            position = found + 1
        }
        return "every expected line appears, but the output has lines the prose does not show "
            + "(add them to the expected block, or a `...` line where output varies)"
    }

    private func matches(_ output: ArraySlice<String>, _ pattern: ArraySlice<Line>) -> Bool {
        guard let first = pattern.first else { return output.isEmpty }
        switch first {
        case .anyLines:
            return (output.startIndex...output.endIndex).contains {
                matches(output[$0...], pattern.dropFirst())
            }
        case let .pattern(regex, _):
            guard let line = output.first, Self.matches(regex, line) else { return false }
            return matches(output.dropFirst(), pattern.dropFirst())
        }
    }

    private static func matches(_ regex: NSRegularExpression, _ line: String) -> Bool {
        regex.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)) != nil
    }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A new directory of the test's own (inputs for a lesson), outside the lesson's $TMPDIR.
/// The caller removes it: `defer { try? FileManager.default.removeItem(at: dir) }`.
func makeScratchDirectory(_ label: String) throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir
}

/// The kernels an expected block is for, from its fence's info string: ```` ```kernel<6.6 ````
/// (older than 6.6), ```` ```kernel>=6.6 ````, or both with a space between. A block with no
/// info string is for every kernel no other block claims: the lab's own (the CI's) output.
struct KernelRange {
    var from: [Int] = [0]
    var below: [Int] = [Int.max]

    init(_ info: String, in file: String) throws {
        for term in info.split(separator: " ") {
            if term.hasPrefix("kernel<") {
                below = KernelRange.version(term.dropFirst("kernel<".count))
            } else if term.hasPrefix("kernel>=") {
                from = KernelRange.version(term.dropFirst("kernel>=".count))
            } else {
                throw HarnessError("\(file): an expected block's fence says \"\(info)\"; write kernel<X.Y or kernel>=X.Y")
            }
        }
    }

    func contains(_ kernel: [Int]) -> Bool {
        !kernel.lexicographicallyPrecedes(from) && kernel.lexicographicallyPrecedes(below)
    }

    static func version(_ text: some StringProtocol) -> [Int] {
        text.prefix { $0.isNumber || $0 == "." }.split(separator: ".").compactMap { Int($0) }
    }

    /// This machine's kernel, from uname: [6, 18, 44].
    static var running: [Int] {
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return version(release)
    }
}
