import XCTest

final class Lesson26Tests: XCTestCase {
    /// One-shot poll masks on a pipe and a TCP connection (with the unasked POLLHUP, POLLERR and
    /// POLLRDHUP, and poll(2)'s answers beside them), a multishot poll's CQEs with F_MORE and
    /// its end by poll_remove, poll_update's CQE and the re-armed poll's, -ENOENT, and fast
    /// poll's recv beside a POLL_ADD in the ring's poll list: the expected block of
    /// lessons/26-poll.md. One documented other answer: a kernel without 84230ad2d2af loses the
    /// CQE of a poll that an update made ready at once (the prose's Kernel section); accepted
    /// only on a kernel not known to have that fix.
    func testPoll() throws {
        let lesson = try Lesson("26")
        let run = try lesson.run()
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, "exit status\n\(run.transcript)")
        let lines = run.stdoutLines
        let updatedPoll = "  the updated poll: user_data=2642 res=4 flags=0 = POLLOUT"
        let lost = "  the updated poll: no CQE within 1 s: lost (a kernel without 84230ad2d2af)"
        let mayLose = !Self.hasUpdateFix(Self.stableVersion())
        let expected = try lesson.expectedOutput().map { mayLose && lines.contains(lost) && $0 == updatedPoll ? lost : $0 }
        if let mismatch = OutputPattern(expected).mismatch(in: lines) {
            XCTFail("output does not match the expected output in lessons/26-poll.md\n\(mismatch)\n\(run.transcript)")
        }
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "write(2) of 1 byte wakes it: user_data=2611 res=1 flags=0 = POLLIN",
            "poll POLLIN|POLLRDNORM, the same: user_data=2613 res=65 flags=0 = POLLIN|POLLRDNORM",
            "poll POLLIN on the read end: user_data=2616 res=16 flags=0 = POLLHUP",
            "a pipe whose read end is closed: poll POLLOUT on its write end: user_data=2617 res=12 flags=0 = POLLOUT|POLLERR",
            "close(2) of C: its FIN wakes the poll: user_data=2622 res=8193 flags=0 = POLLIN|POLLRDHUP",
            "  poll(2) on S with events POLLIN: revents = POLLIN",
            "after shutdown(S, SHUT_WR), both directions shut: poll POLLIN on S: user_data=2623 res=8209 flags=0 = POLLIN|POLLHUP|POLLRDHUP",
            "poll_remove user_data=2631: user_data=2632 res=0 flags=0",
            "the multishot poll's last CQE: user_data=2631 res=-ECANCELED (-125) flags=0",
            "poll_update of 2641 to POLLOUT, user_data 2642: user_data=2643 res=0 flags=0",
            mayLose && lines.contains(lost) ? lost : updatedPoll,
            "  the ring's poll list (fdinfo PollList): IORING_OP_POLL_ADD, IORING_OP_RECV",
            "  the library's own recv(2), MSG_DONTWAIT: 15 bytes \"for the library\"",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The multishot poll: every CQE before its last has F_MORE, its last has none, and
        // nothing else carries its user_data.
        let multishot = lines.filter { $0.contains(": user_data=2631 res=") }
        XCTAssertEqual(multishot.count, 5, run.transcript)
        XCTAssert(multishot.dropLast().allSatisfy { $0.contains(" flags=0x2 (F_MORE) = POLLIN") }, run.transcript)
        XCTAssertEqual(multishot.last?.hasSuffix("res=-ECANCELED (-125) flags=0"), true, run.transcript)
        // The updated poll never answers under its old user_data.
        XCTAssertFalse(lines.contains { $0.contains("user_data=2641 ") }, run.transcript)
        run.assertQuick()
    }

    /// 84230ad2d2af: in 6.19, and in the stable kernels from 6.18.3, 6.12.64 and 6.1.160; the
    /// bug it fixes came with 6.0 (97b388d70b53).
    static func hasUpdateFix(_ kernel: [Int]) -> Bool {
        let series = Array(kernel.prefix(2)), fixedIn: [[Int]: [Int]] = [[6, 18]: [6, 18, 3], [6, 12]: [6, 12, 64], [6, 1]: [6, 1, 160]]
        if kernel.lexicographicallyPrecedes([6, 0]) || !kernel.lexicographicallyPrecedes([6, 19]) { return true }
        return fixedIn[series].map { !kernel.lexicographicallyPrecedes($0) } ?? false
    }

    /// The running kernel with its stable number: Debian's 6.1 says 6.1.0-57 in uname -r and
    /// "Debian 6.1.192-3" in uname -v, at the end of /proc/version (whose gcc may say "Debian 12.2.0").
    static func stableVersion() -> [Int] {
        let text = (try? String(contentsOfFile: "/proc/version", encoding: .utf8)) ?? "", running = KernelRange.running
        let debian = text.matches(of: /Debian (\d+\.\d+\.\d+)/).map { KernelRange.version($0.output.1) }.last
        if let debian, debian.prefix(2) == running.prefix(2) { return debian }
        return running
    }

    func testHelp() throws {
        let run = try Lesson("26").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-26-poll"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("26").run(["3"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("26").run(["--fd", "3"]).assertError(mentioning: "unknown option --fd")
    }
}
