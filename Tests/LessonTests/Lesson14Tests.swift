import XCTest

final class Lesson14Tests: XCTestCase {
    /// The pinned pages (VmPin), the fixed writes and the read-back, -EFAULT for every address
    /// range outside the named buffer and for a buf_index past the table, and the unregistering:
    /// the expected block of lessons/14-fixed-buffers.md.
    func testFixedBuffers() throws {
        let run = try Lesson("14").runAndCompareWithProse()
        // The lines that prove the lesson, asserted again in case the prose block is edited.
        let lines = run.stdoutLines
        for line in [
            "io_uring_register_buffers(2 iovecs) = 0",
            "write_fixed buf_index 0, address buffer 0 + 1000, 14 bytes, file offset 17: user_data=12 res=14 flags=0",
            "read back: \"registered once,\\nused by index\\n\"",
            "read_fixed buf_index 0, address buffer 0 + 4080, 16 bytes (its last 16 bytes): user_data=21 res=16 flags=0",
            "read_fixed buf_index 0, address buffer 0 + 4096, 16 bytes (just past its end): user_data=22 res=-EFAULT (-14) flags=0",
            "read_fixed buf_index 2, address buffer 1 + 0, 16 bytes (the table has 2): user_data=25 res=-EFAULT (-14) flags=0",
            "io_uring_unregister_buffers = 0",
        ] {
            XCTAssert(lines.contains(line), "missing line: \(line)\n\(run.transcript)")
        }
    }

    /// Over RLIMIT_MEMLOCK, io_uring_register_buffers is -ENOMEM: one error line that names the
    /// limit, exit 1, and the temp file closed (no fd open at exit). The limit, 16 KiB, holds the ring (2 pages, charged
    /// before 5.12 and since 6.14) but not the ring and the buffers' 3 pages; where the ring is
    /// not charged (5.12 to 6.13), 8 KiB does not hold the buffers. Root has CAP_IPC_LOCK and is never charged, so as
    /// root the lesson runs as a user id made for this run, with $TMPDIR opened to it: the charge
    /// is per user and given back a moment after a process exits, so a run as a shared user
    /// (nobody) could find the allowance still held by another run.
    func testMemlockLimitIsAnErrorThatClosesTheFile() throws {
        for tool in ["prlimit", "setpriv"] where !FileManager.default.isExecutableFile(atPath: "/usr/bin/\(tool)") {
            throw XCTSkip("/usr/bin/\(tool) is not installed")
        }
        // The ring's 2 pages count too before 5.12 and since 6.14 (lesson 01's prose); 5.12 to
        // 6.13 (Debian's 6.1 and 6.12) charge the buffers alone, so there 8 KiB is the limit that fails.
        let kernel = KernelRange.running
        let ringCharged = kernel.lexicographicallyPrecedes([5, 12]) || !kernel.lexicographicallyPrecedes([6, 14])
        let limit = ["prlimit", "--memlock=\(ringCharged ? 16384 : 8192):\(ringCharged ? 16384 : 8192)", "--"]
        let user = 4_000_000 + getpid() % 1_000_000
        let asAnotherUser = ["sh", "-c", "chmod 777 \"$TMPDIR\" && exec setpriv --reuid=\(user) --regid=\(user) "
            + "--clear-groups \"$@\"", "sh"]
        let run = try Lesson("14").run(wrapper: (getuid() == 0 ? asAnotherUser : []) + limit)
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 1, run.transcript)
        XCTAssert(run.stdoutLines.contains("io_uring_register_buffers(2 iovecs) = -ENOMEM (-12)"), run.transcript)
        let errors = run.stderr.components(separatedBy: "\n").filter { $0.hasPrefix("error: ") }
        XCTAssertEqual(errors, ["error: io_uring_register_buffers returned -ENOMEM (-12): without CAP_IPC_LOCK "
            + "the pinned pages count against RLIMIT_MEMLOCK (ulimit -l)"], run.transcript)
        XCTAssertEqual(run.fdsOpenAtExit, [], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("14").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
    }
}
