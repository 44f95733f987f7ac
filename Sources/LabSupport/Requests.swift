// Requests and their answers: the probe-based skip; the round trip of lesson 03 for lessons whose
// subject is something else (they still call io_uring_submit themselves; 03 and 06 make every
// call); one way to print what the kernel answered. io_uring never sets `errno`: liburing returns
// `-errno`, and a failed request's CQE holds `-errno` in `res` (man 2 io_uring_enter).

import CLiburing

/// Every opcode up to Linux 6.16 by number, with the first release that had it (liburing 2.3: to 48).
public let opcodeTable: [(name: String, since: String)] = """
    NOP 5.1, READV 5.1, WRITEV 5.1, FSYNC 5.1, READ_FIXED 5.1, WRITE_FIXED 5.1, POLL_ADD 5.1, POLL_REMOVE 5.1,
    SYNC_FILE_RANGE 5.2, SENDMSG 5.3, RECVMSG 5.3, TIMEOUT 5.4, TIMEOUT_REMOVE 5.5, ACCEPT 5.5, ASYNC_CANCEL 5.5,
    LINK_TIMEOUT 5.5, CONNECT 5.5, FALLOCATE 5.6, OPENAT 5.6, CLOSE 5.6, FILES_UPDATE 5.6, STATX 5.6, READ 5.6,
    WRITE 5.6, FADVISE 5.6, MADVISE 5.6, SEND 5.6, RECV 5.6, OPENAT2 5.6, EPOLL_CTL 5.6, SPLICE 5.7,
    PROVIDE_BUFFERS 5.7, REMOVE_BUFFERS 5.7, TEE 5.8, SHUTDOWN 5.11, RENAMEAT 5.11, UNLINKAT 5.11, MKDIRAT 5.15,
    SYMLINKAT 5.15, LINKAT 5.15, MSG_RING 5.18, FSETXATTR 5.19, SETXATTR 5.19, FGETXATTR 5.19, GETXATTR 5.19,
    SOCKET 5.19, URING_CMD 5.19, SEND_ZC 6.0, SENDMSG_ZC 6.1, READ_MULTISHOT 6.7, WAITID 6.7, FUTEX_WAIT 6.7,
    FUTEX_WAKE 6.7, FUTEX_WAITV 6.7, FIXED_FD_INSTALL 6.8, FTRUNCATE 6.9, BIND 6.11, LISTEN 6.11, RECV_ZC 6.15,
    EPOLL_WAIT 6.15, READV_FIXED 6.15, WRITEV_FIXED 6.15, PIPE 6.16
    """.split(separator: ",").map { let entry = $0.split(whereSeparator: \.isWhitespace); return (String(entry[0]), String(entry[1])) }

/// `IORING_OP_READ` for opcode 22; `IORING_OP_63` for one newer than this table.
public func opcodeName(_ opcode: UInt32) -> String {
    Int(opcode) < opcodeTable.count ? "IORING_OP_" + opcodeTable[Int(opcode)].name : "IORING_OP_\(opcode)"
}

/// Exit 77 naming what is missing, unless lesson 02's probe (5.6) finds every one of `opcodes`.
public func requireOpcodes(_ ring: Ring, _ opcodes: io_uring_op...) {
    guard let probe = io_uring_get_probe_ring(ring) else { skip("IORING_REGISTER_PROBE needs Linux 5.6") }
    defer { io_uring_free_probe(probe) }
    for opcode in opcodes where io_uring_opcode_supported(probe, Int32(opcode.rawValue)) == 0 {
        let since = Int(opcode.rawValue) < opcodeTable.count ? opcodeTable[Int(opcode.rawValue)].since : "?"
        skip("this kernel does not support \(opcodeName(opcode.rawValue)) (added in Linux \(since))")
    }
}

/// `io_uring_get_sqe`, or exit 1 if the SQ is full: for lessons in which that would be a bug.
public func getSQE(_ ring: Ring) -> UnsafeMutablePointer<io_uring_sqe> {
    guard let sqe = io_uring_get_sqe(ring) else { fail("io_uring_get_sqe returned nil: the SQ is full") }
    return sqe
}

/// Exit 1 unless `io_uring_submit` accepted all `count` SQEs (a failing one is accepted: see its CQE).
public func checkSubmit(_ ret: Int32, _ count: Int) {
    guard ret == count else { fail("io_uring_submit returned \(describe(res: ret)), expected \(count)") }
}

/// `io_uring_wait_cqe` (for at most `seconds`, if given), a copy of the CQE, then `io_uring_cqe_seen`.
public func waitCQE(_ ring: Ring, seconds: Int? = nil) -> io_uring_cqe {
    var cqePointer: UnsafeMutablePointer<io_uring_cqe>?, limit = __kernel_timespec(tv_sec: Int64(seconds ?? 0), tv_nsec: 0)
    let ret = seconds == nil ? io_uring_wait_cqe(ring, &cqePointer) : io_uring_wait_cqe_timeout(ring, &cqePointer, &limit)
    guard ret == 0, let cqePointer else { fail("io_uring_wait_cqe returned \(describe(res: ret))\(ret == -ETIME ? ": no completion within \(seconds ?? 0) s" : "")") }
    defer { io_uring_cqe_seen(ring, cqePointer) }  // the slot is the kernel's again
    return cqePointer.pointee
}

/// `12` for a count or an fd, `-ENOENT (-2)` for a negated errno, a failed system call's too.
public func describe(res: Int32) -> String {
    let name = strerrorname_np(-res).map { String(cString: $0) } ?? "errno \(-res)"  // glibc 2.32+
    return res >= 0 ? "\(res)" : "-\(name) (\(res))"
}

/// A CQE as one line: `user_data=7 res=-ECANCELED (-125) flags=0`, flags named (`F_MORE`, ...).
public func format(_ cqe: io_uring_cqe) -> String {
    "user_data=\(cqe.user_data) res=\(describe(res: cqe.res)) flags=\(format(cqeFlags: cqe.flags))"
}

/// Print a CQE, optionally after a label: `read #2: user_data=2 res=16 flags=0`.
public func printCQE(_ cqe: io_uring_cqe, _ label: String? = nil) {
    print(label.map { "\($0): " } ?? "", format(cqe), separator: "")
}

/// CQE flags by name (man 2 io_uring_enter, "IORING_CQE_F_*"); with F_BUFFER, the buffer id.
public func format(cqeFlags flags: UInt32) -> String {
    let known = [(IORING_CQE_F_BUFFER, "F_BUFFER"), (IORING_CQE_F_MORE, "F_MORE"),
                 (IORING_CQE_F_SOCK_NONEMPTY, "F_SOCK_NONEMPTY"), (IORING_CQE_F_NOTIF, "F_NOTIF")]
    let names = known.filter { flags & $0.0 != 0 }.map(\.1)
        + (flags & IORING_CQE_F_BUFFER != 0 ? ["buf=\(flags >> IORING_CQE_BUFFER_SHIFT)"] : [])
    return flags == 0 ? "0" : "0x" + String(flags, radix: 16) + " (" + names.joined(separator: "|") + ")"
}

/// Bytes as text for printing, with control characters (newlines too) escaped: `"hi\n"`.
public func quoted(_ bytes: some Sequence<UInt8>) -> String {
    let escapes: [UInt8: String] = [0x0A: "\\n", 0x09: "\\t", 0x22: "\\\"", 0x5C: "\\\\"]
    return "\"" + bytes.map { byte in
        escapes[byte] ?? ((0x20..<0x7f).contains(byte) ? String(UnicodeScalar(byte))
            : "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16))
    }.joined() + "\""
}
