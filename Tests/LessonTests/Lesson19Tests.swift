import XCTest

final class Lesson19Tests: XCTestCase {
    /// One multishot accept SQE, five accept CQEs with F_MORE (each a new fd, the other end of
    /// that client's socket), one of them after the listening fd was closed; the cancel (0) and
    /// the accept's last CQE (-ECANCELED, no F_MORE); the refused connect after it; a second
    /// multishot ended by shutting its listener down (-EINVAL, no F_MORE); every fd closed:
    /// the expected block of lessons/19-multishot-accept.md.
    func testMultishotAccept() throws {
        let run = try Lesson("19").runAndCompareWithProse()
        let lines = run.stdoutLines
        // Every accept CQE comes from the one request, user_data 1901: a new fd and F_MORE,
        // then the last one, without F_MORE. "One request, from one SQE" rests on the shared
        // user_data: a test sees CQEs, not SQEs, so it trusts that the lesson gives 1901 to
        // one SQE only (main.swift's section 2; the output's "one SQE submitted" line), and
        // checks that every accept CQE carries it.
        let accepts = lines.filter { $0.contains("user_data=1901 ") }
        XCTAssertEqual(accepts.count, 6, run.transcript)
        for line in accepts.dropLast() {
            XCTAssertNotNil(line.range(of: #": accept: user_data=1901 res=\d+ flags=0x2 \(F_MORE\)$"#,
                                       options: .regularExpression), line)
        }
        XCTAssertEqual(accepts.last, "accept, its last CQE: user_data=1901 res=-ECANCELED (-125) flags=0", run.transcript)
        // Five different fds, each the server's end of its own client's connection.
        let fds = accepts.dropLast().compactMap { $0.split(separator: " ").first { $0.hasPrefix("res=") } }
        XCTAssertEqual(Set(fds).count, 5, run.transcript)
        for n in 1...5 {
            XCTAssertEqual(lines.filter { $0.hasPrefix("  fd ") && $0.hasSuffix(" is client \(n)'s connection") }.count, 1,
                           "client \(n)\n\(run.transcript)")
        }
        // The lines that prove the ends, asserted again in case the prose block is edited.
        for line in [
            "close (the listening fd, while the multishot is armed): user_data=1903 res=0 flags=0",
            "cancel user_data=1901: user_data=1902 res=0 flags=0",
            "client 6: connect: user_data=1926 res=-ECONNREFUSED (-111) flags=0",
            "multishot accept on it, its last CQE: user_data=1951 res=-EINVAL (-22) flags=0",
            "shutdown (the second listener, SHUT_RD): user_data=1952 res=0 flags=0",
            "IORING_OP_CLOSE of 6 client fds, 5 accepted fds and the second listener: res 0 for all 12",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        run.assertQuick()
    }

    func testHelp() throws {
        let run = try Lesson("19").run(["-h"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-19-multishot-accept"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("19").run(["4"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("19").run(["--clients", "4"]).assertError(mentioning: "unknown option --clients")
    }
}
