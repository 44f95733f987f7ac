// One way to print what the kernel answered, so every lesson's output reads the same.

import CLiburing

/// A CQE as one line: `user_data=7 res=-ECANCELED (-125) flags=0`.
/// Flags are named (`F_MORE`, `F_BUFFER`, ...); with `F_BUFFER` the buffer id is shown too.
public func format(_ cqe: io_uring_cqe) -> String {
    "user_data=\(cqe.user_data) res=\(describe(res: cqe.res)) flags=\(format(cqeFlags: cqe.flags))"
}

/// Print a CQE, optionally after a label: `read #2: user_data=2 res=16 flags=0`.
public func printCQE(_ cqe: io_uring_cqe, _ label: String? = nil) {
    print(label.map { "\($0): " } ?? "", format(cqe), separator: "")
}

/// CQE flags by name (man 2 io_uring_enter, "IORING_CQE_F_*").
public func format(cqeFlags flags: UInt32) -> String {
    if flags == 0 { return "0" }
    let known: [(UInt32, String)] = [
        (IORING_CQE_F_BUFFER, "F_BUFFER"),              // 5.7: cqe.flags >> 16 is a buffer id
        (IORING_CQE_F_MORE, "F_MORE"),                  // 5.13: a multishot request goes on
        (IORING_CQE_F_SOCK_NONEMPTY, "F_SOCK_NONEMPTY"), // 5.19: more data is waiting
        (IORING_CQE_F_NOTIF, "F_NOTIF"),                // 6.0: a zero-copy send's notification
    ]
    var names = known.filter { flags & $0.0 != 0 }.map(\.1)
    let unknown = flags & ~known.reduce(0) { $0 | $1.0 } & ((1 << IORING_CQE_BUFFER_SHIFT) - 1)
    if unknown != 0 { names.append("0x" + String(unknown, radix: 16)) }
    if flags & IORING_CQE_F_BUFFER != 0 { names.append("buf=\(flags >> IORING_CQE_BUFFER_SHIFT)") }
    return "0x" + String(flags, radix: 16) + " (" + names.joined(separator: "|") + ")"
}

/// Bytes as text for printing, with control characters (newlines too) escaped: `"hi\n"`.
public func quoted(_ bytes: some Sequence<UInt8>) -> String {
    var text = "\""
    for byte in bytes {
        switch byte {
        case UInt8(ascii: "\n"): text += "\\n"
        case UInt8(ascii: "\t"): text += "\\t"
        case UInt8(ascii: "\""): text += "\\\""
        case UInt8(ascii: "\\"): text += "\\\\"
        case 0x20..<0x7f: text.append(Character(Unicode.Scalar(byte)))
        default: text += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }
    }
    return text + "\""
}
