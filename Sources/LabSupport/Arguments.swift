// Command-line arguments: lessons run with none, and take a few where a user expects them.
// A bad argument ends the lesson with one `error:` line and exit 1, never a trap.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif


/// The lesson's arguments (without the program name). `--help`/`-h` prints `usage` and
/// exits 0; more than `max` arguments, or an unknown option, is an error.
public func lessonArguments(usage: String, max: Int) -> [String] {
    let arguments = Array(CommandLine.arguments.dropFirst())
    if arguments.contains("--help") || arguments.contains("-h") {
        print("usage: \(usage)")
        exit(0)
    }
    if let option = arguments.first(where: { $0.hasPrefix("-") && $0 != "-" }) {
        fail("unknown option \(option) (usage: \(usage))")
    }
    if arguments.count > max {
        fail("too many arguments (usage: \(usage))")
    }
    return arguments
}

/// `text` as a whole number in `range`, or exit 1 naming the argument: `error: OPS must be a
/// whole number from 1 to 100000, not "abc"`.
public func parseNumber(_ text: String, name: String, in range: ClosedRange<Int>) -> Int {
    guard let value = Int(text), range.contains(value) else {
        fail("\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound), not \(quoted(Array(text.utf8)))")
    }
    return value
}
