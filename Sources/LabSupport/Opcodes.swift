// Opcode names and the kernel that brought each, and the probe-based skip every lesson uses.
//
// Lesson 02 explains the probe itself: `io_uring_get_probe_ring` asks the kernel
// (IORING_REGISTER_PROBE, Linux 5.6) which opcodes it supports. `requireOpcodes` is that same
// call followed by `io_uring_opcode_supported` for each opcode a lesson is about to use.

import CLiburing

/// Every opcode up to Linux 6.16, by number: its name and the first mainline release with it.
/// liburing 2.3's headers stop at IORING_OP_SENDMSG_ZC (48); the later ones are listed by number.
public let opcodeTable: [(name: String, since: String)] = [
    ("NOP", "5.1"), ("READV", "5.1"), ("WRITEV", "5.1"), ("FSYNC", "5.1"),
    ("READ_FIXED", "5.1"), ("WRITE_FIXED", "5.1"), ("POLL_ADD", "5.1"), ("POLL_REMOVE", "5.1"),
    ("SYNC_FILE_RANGE", "5.2"), ("SENDMSG", "5.3"), ("RECVMSG", "5.3"), ("TIMEOUT", "5.4"),
    ("TIMEOUT_REMOVE", "5.5"), ("ACCEPT", "5.5"), ("ASYNC_CANCEL", "5.5"), ("LINK_TIMEOUT", "5.5"),
    ("CONNECT", "5.5"), ("FALLOCATE", "5.6"), ("OPENAT", "5.6"), ("CLOSE", "5.6"),
    ("FILES_UPDATE", "5.6"), ("STATX", "5.6"), ("READ", "5.6"), ("WRITE", "5.6"),
    ("FADVISE", "5.6"), ("MADVISE", "5.6"), ("SEND", "5.6"), ("RECV", "5.6"),
    ("OPENAT2", "5.6"), ("EPOLL_CTL", "5.6"), ("SPLICE", "5.7"), ("PROVIDE_BUFFERS", "5.7"),
    ("REMOVE_BUFFERS", "5.7"), ("TEE", "5.8"), ("SHUTDOWN", "5.11"), ("RENAMEAT", "5.11"),
    ("UNLINKAT", "5.11"), ("MKDIRAT", "5.15"), ("SYMLINKAT", "5.15"), ("LINKAT", "5.15"),
    ("MSG_RING", "5.18"), ("FSETXATTR", "5.19"), ("SETXATTR", "5.19"), ("FGETXATTR", "5.19"),
    ("GETXATTR", "5.19"), ("SOCKET", "5.19"), ("URING_CMD", "5.19"), ("SEND_ZC", "6.0"),
    ("SENDMSG_ZC", "6.1"), ("READ_MULTISHOT", "6.7"), ("WAITID", "6.7"), ("FUTEX_WAIT", "6.7"),
    ("FUTEX_WAKE", "6.7"), ("FUTEX_WAITV", "6.7"), ("FIXED_FD_INSTALL", "6.8"), ("FTRUNCATE", "6.9"),
    ("BIND", "6.11"), ("LISTEN", "6.11"), ("RECV_ZC", "6.15"), ("EPOLL_WAIT", "6.15"),
    ("READV_FIXED", "6.15"), ("WRITEV_FIXED", "6.15"), ("PIPE", "6.16"),
]

/// `IORING_OP_READ` for opcode 22; `IORING_OP_63` for one newer than this table.
public func opcodeName(_ opcode: UInt32) -> String {
    Int(opcode) < opcodeTable.count ? "IORING_OP_" + opcodeTable[Int(opcode)].name : "IORING_OP_\(opcode)"
}

/// Exit 77, naming what is missing, unless this kernel supports every opcode in `opcodes`.
public func requireOpcodes(_ ring: UnsafeMutablePointer<io_uring>, _ opcodes: io_uring_op...) {
    guard let probe = io_uring_get_probe_ring(ring) else {
        skip("this kernel cannot be probed for opcodes (IORING_REGISTER_PROBE needs Linux 5.6)")
    }
    defer { io_uring_free_probe(probe) }
    // The probe holds 256 entries; io_uring_opcode_supported only checks against last_op.
    for opcode in opcodes where opcode.rawValue > 255
        || io_uring_opcode_supported(probe, Int32(opcode.rawValue)) == 0 {
        let since = Int(opcode.rawValue) < opcodeTable.count ? opcodeTable[Int(opcode.rawValue)].since : "?"
        skip("this kernel does not support \(opcodeName(opcode.rawValue)) (added in Linux \(since))")
    }
}
