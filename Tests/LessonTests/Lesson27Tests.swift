import XCTest

final class Lesson27Tests: XCTestCase {
    /// The eventfd's counter beside the CQEs of each step: one signal per batch (1 for four
    /// NOPs in one submit, 4 for four submits), the other loop's poll(2) woken by a timeout's
    /// completion, the async registration (no signal for an inline NOP or a recv completed by
    /// this thread's task work, one for a NOP an io-wq worker completed), and no signal while
    /// IORING_CQ_EVENTFD_DISABLED is set: the expected block of lessons/27-eventfd.md.
    func testEventfd() throws {
        let run = try Lesson("27").runAndCompareWithProse()
        let lines = run.stdoutLines
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "io_uring_register_eventfd again = -EBUSY (-16)",
            "4 NOPs in one submit: 4 CQEs (user_data 2721-2724, res 0); eventfd counter: 1",
            "4 NOPs in four submits: 4 CQEs (user_data 2731-2734, res 0); eventfd counter: 4",
            "a 20 ms timeout; poll(2) on the eventfd alone (5 s at most) returned 1: revents = POLLIN",
            "  then: eventfd counter: 1; 1 CQE in the CQ: user_data=2751 res=-ETIME (-62) flags=0",
            "NOP, completed inline during the submit: 1 CQE (user_data 2761, res 0); eventfd counter: -EAGAIN (-11): no signal",
            "NOP with IOSQE_ASYNC, completed by an io-wq worker: 1 CQE (user_data 2762, res 0); eventfd counter: 1",
            "recv on an empty socket, completed when the peer wrote: 1 CQE (user_data 2763, res 1); eventfd counter: -EAGAIN (-11): no signal",
            "io_uring_cq_eventfd_toggle(false) = 0; CQ flags: 0x1 (IORING_CQ_EVENTFD_DISABLED)",
            "3 NOPs in one submit: 3 CQEs (user_data 2771-2773, res 0); eventfd counter: -EAGAIN (-11): no signal",
            "2 NOPs in one submit: 2 CQEs (user_data 2774-2775, res 0); eventfd counter: 1",
            "io_uring_unregister_eventfd again = -ENXIO (-6)",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        run.assertQuick()
    }

    func testHelp() throws {
        let run = try Lesson("27").run(["-h"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-27-eventfd"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("27").run(["1"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("27").run(["--async"]).assertError(mentioning: "unknown option --async")
    }
}
