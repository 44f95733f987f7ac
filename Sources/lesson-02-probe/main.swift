// Lesson 02: probing which opcodes the kernel supports
//
// Every request in an SQE names an opcode: IORING_OP_NOP is 0, IORING_OP_READ is 22, and each
// kernel release has added more. A program built against one header runs on many kernels, so
// it cannot know from its header what the kernel in front of it can do. Since Linux 5.6 it can
// ask: `io_uring_get_probe_ring` makes one io_uring_register(2) call, IORING_REGISTER_PROBE,
// and the kernel fills in a table with one entry per opcode it knows, each flagged supported or
// not. This lesson prints that table, counts it, and shows how every later lesson uses the
// same probe to decide whether to run or to skip (exit 77) on an older kernel.
//
// Read next: man 2 io_uring_register (IORING_REGISTER_PROBE), man 3 io_uring_get_probe,
// man 3 io_uring_opcode_supported, man 3 io_uring_free_probe. (io_uring_get_probe_ring has no
// man page in liburing 2.3: it is declared in liburing.h, beside io_uring_get_probe.)

import Glibc
import CLiburing
import LabSupport

let usage = "lesson-02-probe [OPCODE ...]   (OPCODE: a name such as READ or IORING_OP_SEND_ZC, or a number 0-255)"
// Any number of opcodes may be asked about (a shell's limit on the command line aside).
let arguments = lessonArguments(usage: usage, max: .max)

// Opcodes asked for on the command line, checked before any ring exists so that a typo is an
// error and not a half-printed table. A name is looked up in LabSupport's `opcodeTable`, which
// knows opcodes newer than liburing 2.3's header; a number may be anything a probe can hold.
let requested: [UInt32] = arguments.map { text in
    if let first = text.utf8.first, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) {
        return UInt32(parseNumber(text, name: "OPCODE", in: 0...255))
    }
    var name = text.uppercased()
    if name.hasPrefix("IORING_OP_") { name.removeFirst("IORING_OP_".count) }
    guard let opcode = opcodeTable.firstIndex(where: { $0.name == name }) else {
        fail("unknown opcode \(quoted(Array(text.utf8))): give a name such as READ or "
            + "IORING_OP_SEND_ZC, or a number from 0 to 255")
    }
    return UInt32(opcode)
}

// MARK: - 1. Asking the kernel
//
// The probe belongs to the kernel, not to one ring, but the request travels through a ring's
// fd, so we make a small ring first. `io_uring_get_probe_ring` then
//   - allocates a `struct io_uring_probe` with room for 256 `io_uring_probe_op` entries,
//   - calls io_uring_register(ring_fd, IORING_REGISTER_PROBE, probe, 256),
//   - returns it, or nil if the kernel refused (before 5.6 it answers -EINVAL).
// The probe is ours to free with `io_uring_free_probe`. (`io_uring_get_probe()` does the same
// with a throwaway ring of its own.)
//
// The kernel fills in
//   last_op   the highest opcode it knows
//   ops_len   how many entries of ops[] it wrote: last_op + 1, as our array has room for 256
//   ops[i]    op = i, and flags with IO_URING_OP_SUPPORTED set if it can run opcode i.
// An opcode the kernel knows may still be unsupported: some depend on how it was built (the
// socket opcodes need CONFIG_NET, the futex ones CONFIG_FUTEX, EPOLL_CTL CONFIG_EPOLL).
//
// The ring comes from LabSupport's `makeRing`, which is lesson 01's setup wrapped up: it
// allocates the `struct io_uring` on the heap so that it never moves, calls
// io_uring_queue_init_params, skips the lesson (exit 77, with the reason) on -EPERM or
// -ENOSYS, fails on anything else, and tears the ring down with io_uring_queue_exit at
// `destroyRing(ring)` or, failing that, at exit.

let ring = makeRing(entries: 4)

guard let probe = io_uring_get_probe_ring(ring) else {
    skip("io_uring_get_probe_ring failed: this kernel cannot be probed for opcodes "
        + "(IORING_REGISTER_PROBE needs Linux 5.6)")
}
let lastOp = UInt32(probe.pointee.last_op)
print("io_uring_get_probe_ring: last_op=\(lastOp) ops_len=\(probe.pointee.ops_len)")

// The liburing header this program was compiled against ends its opcode enum with
// IORING_OP_LAST, one past the last opcode it names. liburing 2.3's, the lab's target, names
// opcodes up to IORING_OP_SENDMSG_ZC (48), so its IORING_OP_LAST is 49; another liburing has
// another value, which is why we print it rather than assume it. A newer kernel answers about
// opcodes the header has never heard of: they exist and work, the header simply has no name
// for them (and liburing no prep helper). We know their names from LabSupport's table, and
// would use them by number. (The kernel has an IORING_OP_LAST of its own, from the header it
// was built with; last_op above is that value minus one.) On Debian 12's Linux 6.1 the two end
// together: its last opcode, SENDMSG_ZC (48), is the header's last too.
let headerLast = IORING_OP_LAST.rawValue
print("liburing's header: IORING_OP_LAST=\(headerLast), so it names opcodes 0 to \(headerLast - 1)")

/// The first kernel release with `opcode`, from LabSupport's table (`5.6`), or `?` for an
/// opcode newer than the table.
func since(_ opcode: UInt32) -> String {
    Int(opcode) < opcodeTable.count ? opcodeTable[Int(opcode)].since : "?"
}

// With opcodes on the command line, answer just those and stop.
if !requested.isEmpty {
    for opcode in requested {
        let supported = io_uring_opcode_supported(probe, Int32(opcode)) != 0
        let origin = since(opcode) == "?" ? "newer than this lab's table" : "Linux " + since(opcode)
        print("\(opcodeName(opcode)) (opcode \(opcode), \(origin)): "
            + (supported ? "supported" : opcode > lastOp ? "not supported (past last_op)" : "not supported"))
    }
    io_uring_free_probe(probe)
    destroyRing(ring)
    exit(0)
}

// MARK: - 2. The opcode table
//
// One line per opcode from 0 to last_op. `io_uring_opcode_supported(probe, op)` is a tiny
// inline function: 0 if op > last_op, otherwise ops[op].flags & IO_URING_OP_SUPPORTED.
// Where the header's names end inside the kernel's table, a line marks the spot. The two
// String methods in this extension only pad the columns.

extension String {
    /// Left-aligned in a column of `width` characters.
    func padded(to width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
    /// Right-aligned in a column of `width` characters.
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

print("opcode  name                        kernel  supported")
var supportedCount = 0
for opcode in 0...lastOp {
    if opcode == headerLast {
        print("        (liburing's header stops here: IORING_OP_LAST=\(headerLast))")
    }
    let supported = io_uring_opcode_supported(probe, Int32(opcode)) != 0
    if supported { supportedCount += 1 }
    print(String(opcode).leftPadded(to: 6) + "  " + opcodeName(opcode).padded(to: 28)
        + since(opcode).padded(to: 8) + (supported ? "yes" : "no"))
}
print("\(supportedCount) of \(lastOp + 1) opcodes supported")

// Past the end of the table there is nothing to read: the function checks last_op first and
// answers 0 ("no"), rather than reading beyond the ops[] the kernel filled in.
let pastEnd = lastOp + 1
print("io_uring_opcode_supported(probe, \(pastEnd)) = \(io_uring_opcode_supported(probe, Int32(pastEnd))) "
    + "(\(pastEnd) is past last_op \(lastOp))")

// MARK: - 3. How later lessons decide to skip
//
// A lesson that needs an opcode newer than 5.1 calls LabSupport's
// `requireOpcodes(ring, IORING_OP_X, ...)` before its first SQE. That function is exactly what
// this lesson did: io_uring_get_probe_ring, io_uring_opcode_supported for each opcode,
// io_uring_free_probe; on the first "no" it prints `SKIP: this kernel does not support
// IORING_OP_X (added in Linux Y)` and exits 77, which the tests report as skipped. (With no
// probe before 5.6, such a lesson needs 5.6 even when its opcode is older.) Here is the
// same decision for a few later lessons, on this probe. Opcodes newer than liburing 2.3's
// header are written by number, as a lesson would: io_uring_op(rawValue: 56) is IORING_OP_BIND.

let laterLessons: [(lesson: String, opcodes: [io_uring_op], optional: Bool)] = [
    ("lesson 04 (read-file)", [IORING_OP_OPENAT, IORING_OP_READ, IORING_OP_CLOSE], false),
    ("lesson 17 (tcp-basics, coming later)", [IORING_OP_SOCKET, IORING_OP_ACCEPT, IORING_OP_CONNECT,
                                               IORING_OP_SEND, IORING_OP_RECV, IORING_OP_SHUTDOWN], false),
    ("lesson 17 (tcp-basics, coming later)", [io_uring_op(rawValue: 56), io_uring_op(rawValue: 57)], true),
    ("lesson 23 (send-zc, coming later)", [IORING_OP_SEND_ZC], false),
]
print("requireOpcodes, i.e. this probe, for later lessons:")
for (lesson, opcodes, optional) in laterLessons {
    let names = opcodes.map { opcodeName($0.rawValue) }.joined(separator: " ")
    let missing = opcodes.first { io_uring_opcode_supported(probe, Int32($0.rawValue)) == 0 }
    switch (missing, optional) {
    case (nil, false):
        print("  \(lesson) needs \(names): all supported, it runs")
    case (nil, true):
        print("  \(lesson) also tries \(names): all supported, so it may use them")
    case let (missing?, false):
        print("  \(lesson) needs \(names): \(opcodeName(missing.rawValue)) (Linux \(since(missing.rawValue))) "
            + "is not supported, it would skip (exit 77)")
    case let (missing?, true):
        print("  \(lesson) also tries \(names): \(opcodeName(missing.rawValue)) (Linux \(since(missing.rawValue))) "
            + "is not supported, so it does without them")
    }
}

// The probe is a malloc'd copy of the kernel's answer: free it. Then the real thing, as
// lesson 04 starts: if this call returns at all, the three opcodes are there (it needs 5.6,
// like this lesson).
io_uring_free_probe(probe)
requireOpcodes(ring, IORING_OP_OPENAT, IORING_OP_READ, IORING_OP_CLOSE)
print("requireOpcodes(ring, IORING_OP_OPENAT, IORING_OP_READ, IORING_OP_CLOSE) returned: lesson 04 would go on")

destroyRing(ring)
