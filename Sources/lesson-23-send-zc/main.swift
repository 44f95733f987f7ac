// Lesson 23: zero-copy send
//
// A plain send (IORING_OP_SEND, lesson 17) copies our bytes into the kernel's socket buffers
// before it completes: once its CQE is in, the buffer is ours again. IORING_OP_SEND_ZC (Linux
// 6.0) asks the network stack to send straight from our pages instead. The kernel then keeps
// pointing at our buffer after the send has "completed": TCP may have to retransmit, so it
// holds the pages until the peer has acknowledged the data. So a zero-copy send has TWO CQEs,
// with the same user_data:
//
//   1. the result: res = bytes sent (or -errno), flags IORING_CQE_F_MORE ("another CQE follows");
//   2. the notification: res 0, flags IORING_CQE_F_NOTIF: the kernel no longer needs the buffer.
//
// Only after the second may the buffer be changed or freed. The lesson prints both CQEs of every
// send, refills its buffer only after the notification, and prints what the receiver got.
//
// It also asks the kernel whether it really avoided the copy (IORING_SEND_ZC_REPORT_USAGE, 6.2):
// over loopback it did not, and the notification says so. And it sends from a registered buffer
// (io_uring_prep_send_zc_fixed), which spares the kernel pinning the pages on every send.
//
// Read next: man 2 io_uring_enter (IORING_OP_SEND_ZC, IORING_RECVSEND_FIXED_BUF), man 3
// io_uring_prep_send_zc (liburing 2.3's page covers neither _fixed nor the usage report), the
// kernel's Documentation/networking/msg_zerocopy.rst.

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-23-send-zc", max: 0)

// MARK: - 1. A connected TCP pair, made through the ring (lesson 17 shows each step)
//
// User data: 2301-2303 for the connection, 2311-2314 for the four zero-copy sends (both CQEs of
// a send carry its user_data), 2321-2324 for the receives of what they sent, 2331-2333 for the
// closes.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_SEND_ZC, IORING_OP_SOCKET, IORING_OP_CONNECT, IORING_OP_ACCEPT,
               IORING_OP_RECV, IORING_OP_CLOSE)
let listener = listenOnLoopback(ring, port: 0, backlog: 1)
print("listener: 127.0.0.1:\(listener.port)")

let socketSQE = getSQE(ring)
io_uring_prep_socket(socketSQE, AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, 0)
io_uring_sqe_set_data64(socketSQE, 2301)
checkSubmit(io_uring_submit(ring), 1)
let socketCQE = waitCQE(ring, seconds: 5)
printCQE(socketCQE, "socket")
guard socketCQE.res >= 0 else { close(listener.fd); fail("IORING_OP_SOCKET returned \(describe(res: socketCQE.res))") }
let client = socketCQE.res

// connect and accept in one submit; the address stays on the heap until connect's CQE.
let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
address.initialize(to: loopbackAddress(port: listener.port))
let accept = getSQE(ring)
io_uring_prep_accept(accept, listener.fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
io_uring_sqe_set_data64(accept, 2303)
let connect = getSQE(ring)
address.withMemoryRebound(to: sockaddr.self, capacity: 1) {
    io_uring_prep_connect(connect, client, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
}
io_uring_sqe_set_data64(connect, 2302)
checkSubmit(io_uring_submit(ring), 2)
let pair = [waitCQE(ring, seconds: 5), waitCQE(ring, seconds: 5)].sorted { $0.user_data < $1.user_data }
address.deallocate()
printCQE(pair[0], "connect")
printCQE(pair[1], "accept")
guard pair[0].res == 0, pair[1].res >= 0 else {
    close(client); close(listener.fd)
    if pair[1].res >= 0 { close(pair[1].res) }
    fail("the connection failed: connect \(describe(res: pair[0].res)), accept \(describe(res: pair[1].res))")
}
let server = pair[1].res

// MARK: - 2. One zero-copy send, both its CQEs, and the receiver's bytes
//
// `io_uring_prep_send_zc(sqe, fd, buf, len, msg_flags, zc_flags)` fills an IORING_OP_SEND_ZC
// SQE: addr/len the buffer, msg_flags as for send(2), and zc_flags in sqe->ioprio:
// IORING_RECVSEND_POLL_FIRST, IORING_RECVSEND_FIXED_BUF (which _fixed sets, with buf_index), and
// since 6.2 (and 6.1.2) IORING_SEND_ZC_REPORT_USAGE. MSG_WAITALL makes io_uring retry a short
// send until all `len` bytes are out; if an error stops it after some bytes went out, res is the
// bytes sent so far, not the error (io_send_zc, Linux 6.18).
//
// The order of the two CQEs is the kernel's design: the result is posted when the send returns,
// the notification by task work queued when the last reference to our pages is dropped, which
// runs later (io_uring/net.c, io_send_zc: "If we're in io-wq we can't rely on tw ordering
// guarantees, defer flushing notif", Linux 6.18). The lesson checks it on every send.
//
// When does that last reference go? When TCP frees the data from its retransmit queue, that is
// when the peer ACKs it. So after the result CQE the receiver reads (IORING_OP_RECV, MSG_WAITALL),
// and reading makes it send an ACK at once; then we wait for the notification. Those two CQEs may
// come either way round; the lesson prints the notification first, then the receive.

let size = 16 * 1024
let received = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)

/// `16384 x "a"`: the received bytes as runs of one value, so we see which bytes arrived.
func runs(_ bytes: UnsafeRawBufferPointer) -> String {
    var parts: [String] = [], start = 0
    for index in 1...bytes.count where index == bytes.count || bytes[index] != bytes[start] {
        parts.append("\(index - start) x \(quoted([bytes[start]]))")
        start = index
    }
    return parts.joined(separator: ", ")
}

/// A notification CQE: with IORING_SEND_ZC_REPORT_USAGE, res is not an errno but a report, whose
/// bit 31 (IORING_NOTIF_USAGE_ZC_COPIED) says the data was copied after all.
func formatNotification(_ cqe: io_uring_cqe) -> String {
    let bits = UInt32(bitPattern: cqe.res)
    let res = bits == 0 ? "0" : "0x" + String(bits, radix: 16)
        + (bits == IORING_NOTIF_USAGE_ZC_COPIED ? " (IORING_NOTIF_USAGE_ZC_COPIED)" : "")
    return "user_data=\(cqe.user_data) res=\(res) flags=\(format(cqeFlags: cqe.flags))"
}

/// Close the sockets, then end the lesson with an error line (no fd left open at exit).
func stop(_ message: String, closing fds: [Int32]) -> Never {
    for fd in fds { close(fd) }
    fail(message)
}

/// Send all of `buffer` on `client` with IORING_OP_SEND_ZC (from registered buffer `fixed` if
/// given), print its CQEs, receive on `server` into `received` and print what came; return the
/// notification's res (nil if there was none).
func sendZeroCopy(_ ring: Ring, _ buffer: UnsafeMutableRawBufferPointer, zcFlags: UInt32, fixed: UInt32? = nil, userData: UInt64,
                  _ sockets: (client: Int32, server: Int32, listener: Int32), received: UnsafeMutableRawBufferPointer) -> Int32? {
    let (client, server) = (sockets.client, sockets.server)
    let size = buffer.count
    let sqe = getSQE(ring)
    if let fixed {
        io_uring_prep_send_zc_fixed(sqe, client, buffer.baseAddress, size, Int32(MSG_WAITALL), zcFlags, fixed)
    } else {
        io_uring_prep_send_zc(sqe, client, buffer.baseAddress, size, Int32(MSG_WAITALL), zcFlags)
    }
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)

    let result = waitCQE(ring, seconds: 5)
    print("  CQE 1, the result:       \(format(result))")
    guard result.user_data == userData, result.flags & IORING_CQE_F_NOTIF == 0 else {
        stop("expected the result CQE of \(userData) first, got \(format(result))", closing: [client, server, sockets.listener])
    }
    // Without F_MORE there is no notification: the send failed before it took the buffer.
    guard result.flags & IORING_CQE_F_MORE != 0 else { print("  no F_MORE: no notification follows"); return nil }

    var notification: io_uring_cqe? = nil
    if result.res > 0 {
        let recv = getSQE(ring)
        io_uring_prep_recv(recv, server, received.baseAddress, Int(result.res), Int32(MSG_WAITALL))
        io_uring_sqe_set_data64(recv, userData + 10)
        checkSubmit(io_uring_submit(ring), 1)
        var receiveLine = ""
        for _ in 0..<2 {
            let cqe = waitCQE(ring, seconds: 5)
            if cqe.user_data == userData + 10 {
                receiveLine = "  recv on the other end:  \(format(cqe))"
                    + (cqe.res > 0 ? ": " + runs(UnsafeRawBufferPointer(rebasing: received.prefix(Int(cqe.res)))) : "")
            } else {
                notification = cqe
            }
        }
        if let notification { print("  CQE 2, the notification: \(formatNotification(notification))") }
        print(receiveLine)
    } else {
        notification = waitCQE(ring, seconds: 5)
        print("  CQE 2, the notification: \(formatNotification(notification!))")
    }
    guard let notification, notification.user_data == userData, notification.flags & IORING_CQE_F_NOTIF != 0 else {
        stop("expected the notification CQE of \(userData)", closing: [client, server, sockets.listener])
    }
    return notification.res
}

// The buffer: heap memory at one address for the whole lesson. Before each send it is filled
// with one letter; it is refilled only after the previous send's notification.
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: Int(sysconf(Int32(_SC_PAGESIZE))))
buffer.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "a"))
let sockets = (client: client, server: server, listener: listener.fd)
print("send_zc 1: \(size) bytes of \"a\", zc_flags 0")
let first = sendZeroCopy(ring, buffer, zcFlags: 0, userData: 2311, sockets, received: received)

// The notification is in (or there was none: then the kernel never took the buffer), so the
// kernel has let go of the buffer and we may write into it.
buffer.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "b"))
print((first != nil ? "after the notification" : "send 1 took no buffer (no F_MORE)")
    + ", the same buffer refilled: send_zc 2: \(size) bytes of \"b\"")
_ = sendZeroCopy(ring, buffer, zcFlags: 0, userData: 2312, sockets, received: received)

// MARK: - 3. Did the kernel avoid the copy? IORING_SEND_ZC_REPORT_USAGE (Linux 6.2)
//
// With this zc flag, the notification's res reports how the data went: 0 if zero-copy was used,
// IORING_NOTIF_USAGE_ZC_COPIED (bit 31) if it was copied (io_uring/notif.c, Linux 6.18: the bit is
// set when the stack copied our pages, or never used them). Over loopback it is always copied:
// the receiving socket could keep the data queued for as long as its reader likes, and the sender
// cannot wait that long for its pages, so the stack copies user pages before it delivers to a
// local socket (Documentation/networking/msg_zerocopy.rst, "Loopback"). On a NIC that can do
// scatter-gather it can be 0 (not run here). A kernel without the flag (6.0, 6.1.0 and 6.1.1: it came in 6.2, and the 6.1
// stable series took it in 6.1.2) rejects the send with -EINVAL and one CQE, and the lesson says so.

buffer.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "c"))
print("send_zc 3: \(size) bytes of \"c\", zc_flags IORING_SEND_ZC_REPORT_USAGE")
let report = sendZeroCopy(ring, buffer, zcFlags: IORING_SEND_ZC_REPORT_USAGE, userData: 2313, sockets, received: received)
let reports = report != nil
switch report {
case .some(let res) where UInt32(bitPattern: res) & IORING_NOTIF_USAGE_ZC_COPIED != 0:
    print("  the kernel reports: the data was copied, not sent from our pages")
case .some(0):
    print("  the kernel reports: zero-copy was used")
case .some(let res):
    print("  the kernel reports an unknown usage value 0x\(String(UInt32(bitPattern: res), radix: 16))")
case .none:
    print("  this kernel rejects IORING_SEND_ZC_REPORT_USAGE (added in Linux 6.2 and 6.1.2)")
}

// MARK: - 4. The fixed-buffer variant
//
// `io_uring_prep_send_zc_fixed(sqe, fd, buf, len, msg_flags, zc_flags, buf_index)` is the same
// SQE with IORING_RECVSEND_FIXED_BUF in ioprio and the registered buffer's index in buf_index;
// buf/len must lie inside that buffer (lesson 14). A plain send_zc has the kernel look up and pin
// our pages on every send; a registered buffer was pinned once, at registration.

let registeredBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: Int(sysconf(Int32(_SC_PAGESIZE))))
var iovec = Glibc.iovec(iov_base: registeredBuffer.baseAddress, iov_len: size)
let registered = io_uring_register_buffers(ring, &iovec, 1)
print("io_uring_register_buffers(1 buffer of \(size) bytes) = \(describe(res: registered))")
if registered == 0 {
    registeredBuffer.initializeMemory(as: UInt8.self, repeating: UInt8(ascii: "d"))
    let zcFlags = reports ? IORING_SEND_ZC_REPORT_USAGE : 0
    print("send_zc_fixed 4: \(size) bytes of \"d\" from registered buffer 0, zc_flags \(reports ? "IORING_SEND_ZC_REPORT_USAGE" : "0")")
    _ = sendZeroCopy(ring, registeredBuffer, zcFlags: zcFlags, fixed: 0, userData: 2314, sockets, received: received)
    // What must wait for the notification is rewriting or freeing the memory (below), not this
    // call: a send holds its own reference to the registered buffer. (Called early, it returned
    // at once on 6.18, io_send_zc_import tying the buffer to the notification; on 6.12 and 6.1
    // it waited for the notification.)
    print("io_uring_unregister_buffers = \(describe(res: io_uring_unregister_buffers(ring)))")
}

// MARK: - 5. Closing, through the ring
//
// Every send has had its notification, so the buffers are ours: free them, then close the
// sockets. (IORING_OP_SENDMSG_ZC, Linux 6.1, is the same two-CQE contract for sendmsg(2): a
// msghdr with several iovecs, or a destination address for UDP.)

buffer.deallocate()
registeredBuffer.deallocate()
received.deallocate()
for (fd, userData) in [(client, UInt64(2331)), (server, 2332), (listener.fd, 2333)] {
    let sqe = getSQE(ring)
    io_uring_prep_close(sqe, fd)
    io_uring_sqe_set_data64(sqe, userData)
}
checkSubmit(io_uring_submit(ring), 3)
let closes = (0..<3).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
print("close client, server, listener: " + closes.map { describe(res: $0.res) }.joined(separator: ", "))
if registered != 0 { fail("io_uring_register_buffers returned \(describe(res: registered))") }
destroyRing(ring)
