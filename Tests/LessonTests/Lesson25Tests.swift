import XCTest

final class Lesson25Tests: XCTestCase {
    /// The expected block of lessons/25-cancellation.md for this kernel (6.5 and later: the
    /// multishot recv is still armed when the cancel comes; before 6.5 it has ended with
    /// -ENOBUFS), then the lines that prove the lesson, one by one: each target's and each
    /// cancel's res by name, the -ENOENT of a request in flight, ALL's counts of io-wq's queue
    /// (1 for two, 0 beside a running request), and how long each sync cancel took.
    func testCancellation() throws {
        let run = try Lesson("25").runAndCompareWithProse()
        let lines = run.stdoutLines
        // Section 2 to 7, in order, as on every kernel (sections 4 and 5 are checked below).
        let inOrder = [
            "CQE 1: cancel user_data=2521: user_data=2522 res=0 flags=0",
            "CQE 2: recv (socket A): user_data=2521 res=-ECANCELED (-125) flags=0",
            "CQE 3: cancel user_data=2523: user_data=2524 res=0 flags=0",
            "CQE 4: timeout 100 s: user_data=2523 res=-ECANCELED (-125) flags=0",
            "CQE 5: cancel user_data=2521, again: user_data=2525 res=-ENOENT (-2) flags=0",
            "CQE 6: cancel user_data=2520, never submitted: user_data=2526 res=-ENOENT (-2) flags=0",
            // In flight, yet not found: a nop linked behind a waiting recv. It completes later.
            "CQE 7: cancel user_data=2528 (linked): user_data=2529 res=-ENOENT (-2) flags=0",
            "CQEs ready: 0",
            "wrote \"hi\\n\" to socket A",
            "CQE 8: recv (socket A), IOSQE_IO_LINK: user_data=2527 res=3 flags=0",
            "CQE 9: nop, linked behind 2527: user_data=2528 res=0 flags=0",
            "CQE 1: cancel user_data=2531, ALL: user_data=2532 res=3 flags=0",
            "CQE 5: cancel user_data=2531, ALL, again: user_data=2533 res=0 flags=0",
            "CQE 1: cancel_fd socket A: user_data=2546 res=0 flags=0",
            "CQE 3: cancel_fd socket A, ALL: user_data=2547 res=1 flags=0",
            "CQE 5: cancel_fd slot 0, FD_FIXED: user_data=2548 res=0 flags=0",
            "CQE 6: recv (slot 0: socket B): user_data=2543 res=-ECANCELED (-125) flags=0",
            "CQE 7: cancel ANY: user_data=2549 res=2 flags=0",
            "io_uring_register_sync_cancel(user_data=2561, timeout 1 s) = 0; CQEs ready: 1",
            "CQE 1: recv (socket A): user_data=2561 res=-ECANCELED (-125) flags=0",
            "io_uring_register_sync_cancel(user_data=2561, timeout 1 s) = -ENOENT (-2)",
            // A splice stuck on an io-wq worker: -EALREADY, no CQE. Two queued splices taken off
            // by one look at io-wq's queue: counted 1. Two more queued beside the running one
            // with its user_data: counted 0. Each time two CQEs. The stuck one ends later, whole.
            "CQE 1: cancel user_data=2572: user_data=2573 res=-EALREADY (-114) flags=0",
            "CQE 2: cancel user_data=2575, ALL: user_data=2576 res=1 flags=0",
            "CQE 3: splice (socket B -> pipe), queued: user_data=2575 res=-ECANCELED (-125) flags=0",
            "CQE 4: splice (socket B -> pipe), queued: user_data=2575 res=-ECANCELED (-125) flags=0",
            "CQE 5: cancel user_data=2572, ALL: user_data=2574 res=0 flags=0",
            "CQE 6: splice (socket B -> pipe): user_data=2572 res=-ECANCELED (-125) flags=0",
            "CQE 7: splice (socket B -> pipe): user_data=2572 res=-ECANCELED (-125) flags=0",
            "CQEs ready: 0",
            "splice (socket A -> pipe): user_data=2571 res=3 flags=0",
            "splice (socket B -> pipe): user_data=2572 res=7 flags=0",
            "the pipe holds \"go\\nqueued\\n\"",
        ]
        var position = lines.startIndex
        for line in inOrder {
            guard let found = lines[position...].firstIndex(of: line) else {
                XCTFail("missing line (in order): \(line)\n\(run.transcript)")
                return
            }
            position = found + 1
        }
        // Three recvs shared user_data 2531: three -ECANCELED CQEs with it.
        XCTAssertEqual(lines.filter { $0.hasSuffix("recv (socket A): user_data=2531 res=-ECANCELED (-125) flags=0") }.count, 3, run.transcript)
        // The cancel by fd stopped one recv on socket A, and the one with ALL the other.
        let fdTargets = lines.filter { $0.contains("recv (socket A): user_data=254") && $0.hasSuffix("res=-ECANCELED (-125) flags=0") }
        XCTAssertEqual(Set(fdTargets.map { $0.dropFirst("CQE n: ".count) }).count, 2, run.transcript)
        // ANY's two targets, right after its own CQE, in the order this kernel posts them.
        let any = Array(lines.drop { !$0.hasPrefix("CQE 7: cancel ANY:") }.dropFirst().prefix(2))
        XCTAssertEqual(Set(any.map { String($0.dropFirst("CQE n: ".count)) }),
                       ["timeout 100 s: user_data=2544 res=-ECANCELED (-125) flags=0",
                        "read (empty pipe): user_data=2545 res=-ECANCELED (-125) flags=0"], run.transcript)
        // The multishot recv's end, one of the two documented answers: still armed, so the
        // cancel finds it (0) and it ends with -ECANCELED; or it ran out of buffers first
        // (-ENOBUFS) and the cancel found nothing (-ENOENT). Either way no F_MORE.
        let end = Array(lines.drop { $0 != "both buffers used and none given back; now the cancel" }.dropFirst().prefix(2))
        let armed = ["CQE 3: cancel user_data=2551: user_data=2552 res=0 flags=0",
                     "CQE 4: multishot recv: user_data=2551 res=-ECANCELED (-125) flags=0"]
        let ranDry = ["CQE 3: multishot recv: user_data=2551 res=-ENOBUFS (-105) flags=0",
                      "CQE 4: cancel user_data=2551: user_data=2552 res=-ENOENT (-2) flags=0"]
        XCTAssert(end == armed || end == ranDry, "the multishot's end: \(end)\n\(run.transcript)")
        // The sync cancel with ALL returned 0 well within its 1 s, the stuck splice still running
        // (both workers asleep after it); the single-target one waited out its 20 ms.
        func milliseconds(_ prefix: String) -> Int? {
            lines.first { $0.hasPrefix(prefix) }.flatMap { Int($0.split(separator: " ").dropLast().last ?? "") }
        }
        let all = milliseconds("io_uring_register_sync_cancel(user_data=2572, ALL, timeout 1 s) = 0 after ")
        XCTAssertLessThan(all ?? 1000, 500, run.transcript)
        let afterAll = lines.drop { !$0.hasPrefix("io_uring_register_sync_cancel(user_data=2572, ALL") }.dropFirst().first
        XCTAssert(afterAll?.hasPrefix("io-wq workers asleep in a request: 2 (") == true, run.transcript)
        let single = milliseconds("io_uring_register_sync_cancel(user_data=2572, timeout 20 ms) = -ETIME (-62) after ")
        XCTAssertGreaterThanOrEqual(single ?? -1, 20, run.transcript)
        run.assertQuick()
    }

    func testHelp() throws {
        let run = try Lesson("25").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-25-cancellation"], run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("25").run(["2521"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("25").run(["--all"]).assertError(mentioning: "unknown option --all")
    }
}
