import XCTest

final class Lesson08Tests: XCTestCase {
    /// Every CQE by name in arrival order: the timer's -ETIME, the count's 0 after three NOPs,
    /// the removed timeout's -ECANCELED and the removes' 0 and -ENOENT, both outcomes of the
    /// link-timeout race, wait_cqe_timeout's -ETIME return, and which CQEs a count counts (four
    /// cases): lessons/08-timeouts.md, whose expected blocks give each kernel's order (Linux 6.1
    /// posts the empty-pipe read's CQE before its link timeout's, 6.12 and 6.18 after).
    func testTimeouts() throws {
        let run = try Lesson("08").runAndCompareWithProse()
        let lines = run.stdoutLines
        // The empty-pipe races, in whichever order this kernel posts them: the link timeout
        // fired (-ETIME) and cancelled the read (-ECANCELED), each with a CQE of its own.
        let race50 = "a read from an empty pipe, linked to an IORING_OP_LINK_TIMEOUT of 50 ms"
        XCTAssertEqual(cqes(in: lines, after: race50), [
            "link_timeout 50 ms: user_data=52 res=-ETIME (-62) flags=0",
            "read: user_data=51 res=-ECANCELED (-125) flags=0",
        ], run.transcript)
        let race10 = "what a count counts: IORING_OP_TIMEOUT count 2 (1 s), "
            + "then an empty-pipe read with a 10 ms link timeout"
        XCTAssertEqual(cqes(in: lines, after: race10), [
            "link_timeout 10 ms: user_data=93 res=-ETIME (-62) flags=0",
            "read: user_data=92 res=-ECANCELED (-125) flags=0",
            "timeout count 2: user_data=91 res=0 flags=0",
        ], run.transcript)
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "CQE 1: timeout 30 ms: user_data=11 res=-ETIME (-62) flags=0",
            "CQE 4: timeout count 3: user_data=21 res=0 flags=0",
            "CQE 2: timeout 10 s: user_data=31 res=-ECANCELED (-125) flags=0",
            "CQE 1: timeout_remove user_data=31: user_data=32 res=0 flags=0",
            "CQE 2: timeout_remove user_data=999: user_data=42 res=-ENOENT (-2) flags=0",
            "CQE 1: read: user_data=61 res=6 flags=0",
            "CQE 2: link_timeout 50 ms: user_data=62 res=-ECANCELED (-125) flags=0",
            "io_uring_wait_cqe_timeout = 0: timeout 30 ms: user_data=71 res=-ETIME (-62) flags=0",
            // What a count counts: a removed timeout's -ECANCELED and a link timeout's CQE do,
            // an expired timer's does not, nor does that of a timeout completed by its count.
            "CQE 3: timeout count 2: user_data=82 res=0 flags=0",
            "CQE 3: timeout count 2: user_data=91 res=0 flags=0",
            "CQE 2: timeout count 1: user_data=101 res=-ETIME (-62) flags=0",
            "CQE 2: timeout count 1: user_data=112 res=0 flags=0",
            "CQE 3: timeout count 2: user_data=111 res=-ETIME (-62) flags=0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The timers really waited: never less than the time they were given.
        XCTAssertGreaterThanOrEqual(try milliseconds(in: lines, after: "it arrived "), 30, run.transcript)
        XCTAssertGreaterThanOrEqual(
            try milliseconds(in: lines, after: "io_uring_wait_cqe_timeout = -ETIME (-62) after "), 20, run.transcript)
        XCTAssertGreaterThanOrEqual(
            try milliseconds(in: lines, after: "the count timeout's CQE arrived "), 100, run.transcript)
        run.assertQuick()
    }

    func testRejectsArguments() throws {
        try Lesson("08").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
    }

    func testUnknownOption() throws {
        try Lesson("08").run(["--timeout"]).assertError(mentioning: "unknown option --timeout")
    }

    /// The CQE lines right after the line `header`, without their `CQE n: ` (arrival) prefix,
    /// as a set: which CQEs came, whatever their order.
    private func cqes(in lines: [String], after header: String) -> Set<String> {
        guard let start = lines.firstIndex(of: header) else { return [] }
        return Set(lines[(start + 1)...].prefix { $0.hasPrefix("CQE ") }.map {
            String($0.drop { $0 != ":" }.dropFirst(2))
        })
    }

    /// The number right after `prefix` on the line that starts with it.
    private func milliseconds(in lines: [String], after prefix: String) throws -> Int {
        guard let line = lines.first(where: { $0.hasPrefix(prefix) }),
              let value = Int(line.dropFirst(prefix.count).prefix { $0.isNumber }) else {
            throw HarnessError("no line starting with \(prefix)")
        }
        return value
    }
}
