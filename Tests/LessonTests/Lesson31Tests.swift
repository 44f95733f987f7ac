import XCTest

final class Lesson31Tests: XCTestCase {
    /// The setup flags granted and refused by name; SUBMIT_ALL's submit counts; a completion
    /// on a DEFER_TASKRUN ring invisible to io_uring_peek_cqe until io_uring_get_events (and a
    /// wait), IORING_SQ_TASKRUN with TASKRUN_FLAG; a blocking recv(2) woken (EINTR) on default
    /// and COOP_TASKRUN rings, not on DEFER_TASKRUN (EAGAIN); the -EEXIST a second thread gets
    /// from single-issuer rings; register_ring_fd's index: the expected block of
    /// lessons/31-modern-setup.md.
    func testModernSetup() throws {
        let run = try Lesson("31").runAndCompareWithProse()
        let lines = run.stdoutLines
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        for line in [
            "  DEFER_TASKRUN = -EINVAL (-22), refused",
            "  SINGLE_ISSUER|DEFER_TASKRUN = 0, granted",
            "  TASKRUN_FLAG = -EINVAL (-22), refused",
            "  COOP_TASKRUN|TASKRUN_FLAG = 0, granted",
            "default ring: io_uring_submit = 2, 1 SQE left in the SQ (io_uring_sq_ready)",
            "SUBMIT_ALL ring: io_uring_submit = 3, 0 SQE left in the SQ (io_uring_sq_ready)",
            "  CQE: user_data=3132 res=-EINVAL (-22) flags=0",
            "SINGLE_ISSUER|DEFER_TASKRUN: after send(2): sq flags 0, CQ ready 0; io_uring_peek_cqe = -EAGAIN (-11)",
            "  io_uring_get_events = 0; CQ ready 1; io_uring_peek_cqe = 0: user_data=3161 res=2 flags=0",
            "  io_uring_wait_cqe: user_data=3162 res=2 flags=0",
            "SINGLE_ISSUER|DEFER_TASKRUN|TASKRUN_FLAG: after send(2): sq flags 0x4 (IORING_SQ_TASKRUN), CQ ready 0; "
                + "io_uring_peek_cqe = 0: user_data=3171 res=2 flags=0",
            "default: recv(2) = -EINTR (-4); CQ ready 1",
            "COOP_TASKRUN: recv(2) = -EINTR (-4); CQ ready 1",
            "SINGLE_ISSUER|DEFER_TASKRUN: recv(2) = -EAGAIN (-11); CQ ready 0",
            "  io_uring_wait_cqe: user_data=3165 res=2 flags=0",
            "  io_uring_submit = -EEXIST (-17), io_uring_get_events = 0, io_uring_register_ring_fd = -EEXIST (-17)",
            "  io_uring_submit = -EEXIST (-17), io_uring_get_events = -EEXIST (-17), io_uring_register_ring_fd = -EEXIST (-17)",
            "  CQE: user_data=3191 res=0 flags=0",
            "io_uring_register_ring_fd = 1; enter_ring_fd=0 (the registered index), int_flags=0x1 (INT_FLAG_REG_RING)",
            "io_uring_enter(0, 0, 0, GETEVENTS|REGISTERED_RING) = 0: the ring at index 0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
        // The ring fd before registering and after unregistering: the same number, twice each.
        let fds = lines.filter { $0.hasPrefix("SINGLE_ISSUER|DEFER_TASKRUN ring: ") || $0.hasPrefix("io_uring_unregister_ring_fd = 1;") }
            .flatMap { $0.matches(of: /(?:ring_fd|enter_ring_fd)=(\d+)/).map { String($0.output.1) } }
        XCTAssertEqual(fds.count, 3, run.transcript)
        XCTAssertEqual(Set(fds).count, 1, "ring_fd and enter_ring_fd before, enter_ring_fd after\n\(run.transcript)")
        run.assertQuick()
    }

    /// With io_uring turned off (a container's seccomp profile, sysctl kernel.io_uring_disabled),
    /// io_uring_setup says -EPERM, not -EINVAL: the lesson skips saying so, rather than printing
    /// a refusal per flag and blaming an old kernel. strace makes every io_uring_setup fail so.
    func testSkipsWhenIoUringIsOff() throws {
        guard let strace = ["/usr/bin/strace", "/bin/strace"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("strace is not installed")
        }
        let run = try Lesson("31").run(timeout: 60, wrapper: [strace, "-f", "-qq", "-o", "/dev/null", "--seccomp-bpf",
                                                              "-e", "trace=io_uring_setup", "-e", "inject=io_uring_setup:error=EPERM"])
        if run.status != 77 && run.stdout.isEmpty { throw XCTSkip("strace could not trace here (exit \(run.status))") }
        XCTAssertEqual(run.status, 77, run.transcript)
        XCTAssert(run.transcript.contains("returned -EPERM (-1): io_uring is unavailable here"), run.transcript)
        XCTAssertFalse(run.transcript.contains("refused"), run.transcript)
    }

    func testHelp() throws {
        let run = try Lesson("31").run(["-h"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-31-modern-setup"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("31").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("31").run(["--flags", "0"]).assertError(mentioning: "unknown option --flags")
    }
}
