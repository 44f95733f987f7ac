import XCTest

final class Lesson01Tests: XCTestCase {
    /// Granted sizes for several requests, the decoded features, and -EINVAL for each bad size:
    /// all in the expected block of lessons/01-ring-setup.md for the running kernel (6.18's,
    /// or the one its fence names for 6.1 or 6.12).
    func testRingSetup() throws {
        try Lesson("01").runAndCompareWithProse()
    }

    /// Without CAP_IPC_LOCK a ring's memory is charged to RLIMIT_MEMLOCK on Linux 5.1 to 5.11 and
    /// again since 6.14 (the prose cites the commits). Under a 1 MiB limit the 32768-entry ring
    /// of the CLAMP line (about 4 MiB) is refused there and granted on 5.12 to 6.13 (Debian's 6.1
    /// and 6.12); the 4096-entry ring fits either way. Root has CAP_IPC_LOCK and is never charged,
    /// so as root the lesson runs as a user id made for this run: the charge is per user and
    /// given back a moment after a process exits, so a shared user (nobody) could find the
    /// allowance still held by another run.
    func testMemlockLimitChargesTheRingsSince614() throws {
        for tool in ["prlimit", "setpriv"] where !FileManager.default.isExecutableFile(atPath: "/usr/bin/\(tool)") {
            throw XCTSkip("/usr/bin/\(tool) is not installed")
        }
        let user = 5_000_000 + getpid() % 1_000_000
        let asAnotherUser = ["setpriv", "--reuid=\(user)", "--regid=\(user)", "--clear-groups"]
        let run = try Lesson("01").run(wrapper: ["prlimit", "--memlock=1048576:1048576", "--"]
            + (getuid() == 0 ? asAnotherUser : []))
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, run.transcript)
        let kernel = KernelRange.running
        let charged = kernel.lexicographicallyPrecedes([5, 12]) || !kernel.lexicographicallyPrecedes([6, 14])
        let lines = run.stdoutLines
        XCTAssert(lines.contains("  4096 -> sq_entries=4096 cq_entries=8192"), run.transcript)
        let clamp = "entries 32769 with IORING_SETUP_CLAMP -> "
            + (charged ? "ret=-ENOMEM (-12)" : "sq_entries=32768 cq_entries=65536")
        XCTAssert(lines.contains(clamp), "missing line: \(clamp)\n\(run.transcript)")
    }

    func testRejectsArguments() throws {
        let run = try Lesson("01").run(["extra"])
        run.assertError(mentioning: "usage")
    }
}
