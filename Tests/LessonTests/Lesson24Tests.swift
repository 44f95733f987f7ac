import XCTest

final class Lesson24Tests: XCTestCase {
    /// Three UDP sockets made and bound through the ring (bind(2) before 6.11), a datagram from
    /// each sender received with recvmsg and its source address, then a multishot recvmsg on a
    /// buffer ring: one CQE per datagram with F_MORE, each buffer's name and payload, the long
    /// datagram cut (MSG_TRUNC, payloadlen 100, 32 bytes kept), and the cancel's end (-ECANCELED,
    /// no F_MORE). The expected block of lessons/24-udp.md for this kernel. The lesson may skip
    /// only on a kernel before 6.0 (no multishot recvmsg): from 6.0 on a skip is a failure.
    func testUDP() throws {
        let lesson = try Lesson("24")
        let run = try lesson.run()
        if !KernelRange.running.lexicographicallyPrecedes([6, 0]) {
            XCTAssertNotEqual(run.status, 77, "Linux 6.0 and later have multishot recvmsg: no skip\n\(run.transcript)")
        }
        try run.skipIfSkipped()
        XCTAssertEqual(run.status, 0, "exit status\n\(run.transcript)")
        let lines = run.stdoutLines
        if let mismatch = OutputPattern(try lesson.expectedOutput()).mismatch(in: lines) {
            XCTFail("output does not match the expected output in lessons/24-udp.md\n\(mismatch)\n\(run.transcript)")
        }
        // The ports the lesson bound, and the source ports it printed: each datagram must show
        // its sender's port (checked here from the numbers, not from the lesson's own label).
        func port(after marker: String, in line: String) -> String? {
            line.components(separatedBy: marker).dropFirst().first.map { String($0.prefix { $0.isNumber }) }
        }
        let bound = Dictionary(uniqueKeysWithValues: ["receiver", "sender A", "sender B"].compactMap { name in
            lines.first { $0.hasPrefix("bind \(name) = 0: 127.0.0.1:") }
                .flatMap { port(after: "127.0.0.1:", in: $0) }.map { (name, $0) }
        })
        XCTAssertEqual(bound.count, 3, run.transcript)
        XCTAssertEqual(Set(bound.values).count, 3, "three different ports\n\(run.transcript)")
        let names = lines.filter { $0.hasPrefix("  msg_name 127.0.0.1:") }
        XCTAssertEqual(names.count, 2, run.transcript)
        for (line, sender) in zip(names, ["sender A", "sender B"]) {
            XCTAssertEqual(port(after: "msg_name 127.0.0.1:", in: line), bound[sender], "\(line)\n\(run.transcript)")
        }
        // The multishot: one CQE per datagram, each with F_MORE and its own buffer, the payload
        // and source of the datagram it holds, in the order sent.
        let datagrams = lines.filter { $0.hasPrefix("  buffer ") }
        let expected = [("0", "sender A", "\"A: one\""), ("1", "sender B", "\"B: two\""), ("2", "sender A", "\"A: three\""),
                        ("3", "sender B", "\"01234567890123456789012345678901\"")]
        XCTAssertEqual(datagrams.count, expected.count, run.transcript)
        for (line, (id, sender, payload)) in zip(datagrams, expected) {
            XCTAssert(line.hasPrefix("  buffer \(id): namelen=16 ") && line.hasSuffix(payload), "\(line)\n\(run.transcript)")
            XCTAssertEqual(port(after: "name 127.0.0.1:", in: line), bound[sender], "\(line)\n\(run.transcript)")
        }
        XCTAssert(datagrams.last?.contains("payloadlen=100 flags=MSG_TRUNC") == true, run.transcript)
        let shots = lines.filter { $0.hasPrefix("recvmsg multishot: user_data=2441 ") }
        XCTAssertEqual(shots.count, 4, run.transcript)
        XCTAssert(shots.allSatisfy { $0.contains("F_MORE") && $0.contains("F_BUFFER") }, run.transcript)
        XCTAssert(lines.contains("recvmsg multishot, last CQE: user_data=2441 res=-ECANCELED (-125) flags=0"), run.transcript)
        XCTAssertEqual(lines.last, "close receiver, sender A, sender B: 0, 0, 0", run.transcript)
    }

    func testRejectsArguments() throws {
        try Lesson("24").run(["extra"]).assertError(mentioning: "too many arguments", "usage")
        try Lesson("24").run(["--seconds", "1"]).assertError(mentioning: "unknown option --seconds")
    }

    func testHelp() throws {
        let run = try Lesson("24").run(["--help"])
        XCTAssertEqual(run.status, 0, run.transcript)
        XCTAssertEqual(run.stdoutLines, ["usage: lesson-24-udp"], run.transcript)
    }
}
