// What a lesson takes in: arguments, and temp files in new private directories (mkdtemp, so lessons
// and tests can run in parallel), removed at exit or when a signal ends the lesson (Exit.swift).

import Glibc

/// The arguments (without the program name). `--help`/`-h` prints `usage` and exits 0; an
/// unknown option, an option of `options` without its value, or more than `max` other
/// arguments is an `error:` line and exit 1, never a trap. `options` take a value (`--port 80`).
public func lessonArguments(usage: String, max: Int, options: [String] = []) -> [String] {
    holdUntilExit()  // from here on, exit checks that standard output was written (Exit.swift)
    let arguments = Array(CommandLine.arguments.dropFirst())
    if arguments.contains("--help") || arguments.contains("-h") { print("usage: \(usage)"); exit(0) }
    var others = 0, index = 0
    while index < arguments.count {
        let argument = arguments[index]
        if options.contains(argument) && index + 1 == arguments.count { fail("\(argument) needs a value (usage: \(usage))") }
        if argument.hasPrefix("-") && argument != "-" && !options.contains(argument) { fail("unknown option \(argument) (usage: \(usage))") }
        if options.contains(argument) { index += 2 } else { others += 1; index += 1 }
    }
    if others > max { fail("too many arguments (usage: \(usage))") }
    return arguments
}

/// The value of option `name` (`--port 80`) as a whole number in `range`, or nil if not given.
public func numberOption(_ name: String, in arguments: [String], _ range: ClosedRange<Int>) -> Int? {
    arguments.firstIndex(of: name).map { parseNumber(arguments[$0 + 1], name: name, in: range) }
}

/// `text` as a whole number in `range`, or `error: OPS must be a whole number from 1 to 100000, not "abc"`.
public func parseNumber(_ text: String, name: String, in range: ClosedRange<Int>) -> Int {
    if let value = Int(text), range.contains(value) { return value }
    fail("\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound), not \(quoted(text.utf8))")
}

/// A new empty directory under $TMPDIR (or /tmp), removed with everything in it at exit.
public func makeTempDir(_ purpose: String = "lesson") -> String {
    holdUntilExit()
    removeTempDirsOnSignals()
    let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
    var template = Array("\(base)/iouring-lab-\(purpose)-XXXXXX".utf8CString)
    let path = held.withLock { held in  // made and listed at once: a signal sees both or neither
        mkdtemp(&template).map { held.tempDirs.append(String(cString: $0)); return String(cString: $0) }
    }
    guard let path else { fail("cannot create a directory in \(base): \(describe(res: -errno))") }
    return path
}

/// A new file holding `contents`, in its own temporary directory (removed at exit).
public func makeTempFile(named name: String = "data.txt", contents: [UInt8]) -> String {
    let path = makeTempDir() + "/" + name
    guard let file = fopen(path, "wxe") else { fail("cannot create \(path): \(describe(res: -errno))") }
    let written = fwrite(contents, 1, contents.count, file)
    guard fclose(file) == 0, written == contents.count else { fail("cannot write \(path): \(describe(res: -errno))") }
    return path
}

/// `rm -rf path`, without following symbolic links.
func removeTree(_ path: String) {
    var info = stat()
    guard lstat(path, &info) == 0 else { return }
    if info.st_mode & S_IFMT == S_IFDIR, let dir = opendir(path) {
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { removeTree(path + "/" + name) }
        }
        closedir(dir)
    }
    remove(path)  // unlink(2) for a file, rmdir(2) for a directory
}
