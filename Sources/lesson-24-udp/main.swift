// Lesson 24: UDP, sendmsg/recvmsg and multishot recvmsg
//
// A UDP socket has no connection: every datagram carries its destination when sent and its
// source when received. sendmsg(2) and recvmsg(2) carry them in a `struct msghdr`: msg_name/
// msg_namelen (the peer's address), msg_iov (the bytes), msg_control (ancillary data), msg_flags
// (MSG_TRUNC, ...). io_uring has both as requests, IORING_OP_SENDMSG and IORING_OP_RECVMSG (Linux
// 5.3), whose SQE holds the address of our msghdr.
//
// Datagrams keep their boundaries: one recvmsg returns one datagram. The multishot recvmsg (Linux
// 6.0) keeps that: one SQE, one CQE per datagram, each in a buffer of its own from a buffer ring
// (lesson 21). The kernel writes each datagram's source address into its buffer too: a `struct
// io_uring_recvmsg_out`, the name, the control data, the payload; liburing's
// io_uring_recvmsg_validate/_name/_payload/_payload_length find them.
//
// Read next: man 3 io_uring_prep_sendmsg, man 3 io_uring_prep_recvmsg (and _multishot), man 3
// io_uring_recvmsg_out, man 3 io_uring_register_buf_ring, man 2 recvmsg.

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-24-udp", max: 0)

// MARK: - 1. Three UDP sockets, made through the ring
//
// User data: 2401-2403 the sockets, 2411-2413 their binds, 2421-2422 the first sendmsgs,
// 2431-2432 the recvmsgs, 2441 the multishot recvmsg, 2451-2454 the sendmsgs of the datagrams
// it receives, 2461 its cancel, 2471-2473 the closes.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_SOCKET, IORING_OP_SENDMSG, IORING_OP_RECVMSG, IORING_OP_ASYNC_CANCEL,
               IORING_OP_CLOSE)
// Multishot recvmsg (IORING_RECV_MULTISHOT, Linux 6.0) is a flag, which no probe lists; a kernel
// without IORING_OP_SEND_ZC, an opcode of the same release, is older than 6.0 and lacks it too.
let probe = io_uring_get_probe_ring(ring)
let (multishotKernel, bindInRing) = probe.map { (io_uring_opcode_supported($0, Int32(IORING_OP_SEND_ZC.rawValue)) != 0,
                                                 io_uring_opcode_supported($0, LAB_IORING_OP_BIND) != 0) } ?? (false, false)
io_uring_free_probe(probe)
guard multishotKernel else { skip("this kernel (no IORING_OP_SEND_ZC) lacks IORING_RECV_MULTISHOT (added in Linux 6.0)") }

let names = ["receiver", "sender A", "sender B"]
for index in names.indices {
    let sqe = getSQE(ring)
    io_uring_prep_socket(sqe, AF_INET, Int32(SOCK_DGRAM.rawValue | SOCK_CLOEXEC.rawValue), 0, 0)
    io_uring_sqe_set_data64(sqe, 2401 + UInt64(index))
}
checkSubmit(io_uring_submit(ring), 3)
let socketCQEs = (0..<3).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
for (index, cqe) in socketCQEs.enumerated() { printCQE(cqe, "socket \(names[index])") }
let fds = socketCQEs.map(\.res)
guard fds.allSatisfy({ $0 >= 0 }) else {
    for fd in fds where fd >= 0 { close(fd) }
    fail("IORING_OP_SOCKET failed")
}
let (receiver, senderA, senderB) = (fds[0], fds[1], fds[2])

// MARK: - 2. Binding each to 127.0.0.1:0
//
// Port 0: the kernel picks a free port, which getsockname(2) tells us. IORING_OP_BIND (Linux 6.11)
// is bind(2) as a request; liburing 2.3 has no helper for it, so the SQE is filled as the kernel's
// io_bind_prep reads it (io_uring/net.c, 6.18): addr = the sockaddr, addr2 (the union with off) =
// its length, len, buf_index, rw_flags zero; that is io_uring_prep_rw(IORING_OP_BIND, sqe, fd,
// addr, 0, addrlen), as liburing 2.7's io_uring_prep_bind does. Without the opcode: bind(2). The
// senders are bound too, so that we know the source port their datagrams must show.

let loopback = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)  // read by each bind
loopback.initialize(to: loopbackAddress(port: 0))
let addressLength = socklen_t(MemoryLayout<sockaddr_in>.size)
var bound: [Int32]
if bindInRing {
    print("binding to 127.0.0.1:0 with IORING_OP_BIND")
    for (index, fd) in fds.enumerated() {
        let sqe = getSQE(ring)
        io_uring_prep_rw(LAB_IORING_OP_BIND, sqe, fd, loopback, 0, UInt64(addressLength))
        io_uring_sqe_set_data64(sqe, 2411 + UInt64(index))
    }
    checkSubmit(io_uring_submit(ring), 3)
    bound = (0..<3).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }.map(\.res)
} else {
    print("binding to 127.0.0.1:0 with bind(2): this kernel lacks IORING_OP_BIND (added in Linux 6.11)")
    bound = fds.map { fd in loopback.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, addressLength) } < 0 ? -errno : 0 }
}
loopback.deallocate()
let ports = fds.map(localPort)
for (index, res) in bound.enumerated() { print("bind \(names[index]) = \(describe(res: res)): 127.0.0.1:\(ports[index])") }
guard bound.allSatisfy({ $0 == 0 }) else {
    for fd in fds { close(fd) }
    fail("binding to 127.0.0.1:0 failed")
}

/// "sender A" for sender A's port: whose port a datagram's source address shows.
func owner(of port: UInt16, _ ports: [UInt16], _ names: [String]) -> String {
    ports.firstIndex(of: port).map { names[$0] } ?? "no socket of ours"
}

/// An IPv4 socket address as text: 127.0.0.1:40000.
func text(_ address: sockaddr_in) -> String {
    let host = UInt32(bigEndian: address.sin_addr.s_addr)
    return "\(host >> 24).\(host >> 16 & 255).\(host >> 8 & 255).\(host & 255):\(UInt16(bigEndian: address.sin_port))"
}

// MARK: - 3. sendmsg: one datagram from each sender
//
// `io_uring_prep_sendmsg(sqe, fd, msg, flags)` puts the msghdr's address in the SQE; msg_name is
// the destination, as with sendto(2). The kernel has read the msghdr, its iovec and the address
// by the time the submit returns (man 3 io_uring_prep_sendmsg, NOTES: IORING_FEAT_SUBMIT_STABLE,
// 5.5), but the bytes only when the send runs, which can be later (a full socket buffer). The lab
// keeps all of it on the heap until the CQE, which is always right.

/// Send each (socket, bytes, user_data) to `port` on 127.0.0.1 with IORING_OP_SENDMSG, all in one
/// submit, and return their CQEs in user_data order.
func sendDatagrams(_ ring: Ring, _ datagrams: [(fd: Int32, bytes: [UInt8], userData: UInt64)], to port: UInt16) -> [io_uring_cqe] {
    let count = datagrams.count
    let destination = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
    destination.initialize(to: loopbackAddress(port: port))
    let messages = UnsafeMutablePointer<msghdr>.allocate(capacity: count)
    let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: count)
    let payloads = datagrams.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0.bytes.count, alignment: 1) }
    for (index, datagram) in datagrams.enumerated() {
        payloads[index].copyBytes(from: datagram.bytes)
        iovecs[index] = iovec(iov_base: payloads[index].baseAddress, iov_len: datagram.bytes.count)
        messages[index] = msghdr(msg_name: destination, msg_namelen: socklen_t(MemoryLayout<sockaddr_in>.size), msg_iov: iovecs + index,
                                 msg_iovlen: 1, msg_control: nil, msg_controllen: 0, msg_flags: 0)
        let sqe = getSQE(ring)
        io_uring_prep_sendmsg(sqe, datagram.fd, messages + index, 0)
        io_uring_sqe_set_data64(sqe, datagram.userData)
    }
    checkSubmit(io_uring_submit(ring), count)
    let cqes = (0..<count).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
    for payload in payloads { payload.deallocate() }  // every CQE is in: the kernel is done with them
    iovecs.deallocate(); messages.deallocate(); destination.deallocate()
    return cqes
}

let first = sendDatagrams(ring, [(senderA, Array("hello from A".utf8), 2421),
                                 (senderB, Array("hello from B".utf8), 2422)], to: ports[0])
printCQE(first[0], "sendmsg sender A")
printCQE(first[1], "sendmsg sender B")

// MARK: - 4. recvmsg: each datagram with its source address
//
// `io_uring_prep_recvmsg(sqe, fd, msg, flags)`: the kernel fills the iovec's buffer with one
// datagram, writes the source address to msg_name, and writes msg_namelen and msg_flags back into
// our msghdr, as recvmsg(2) does. It writes them when the datagram is received, which may be long
// after the submit: here the msghdr, the address and the buffer must stay until the CQE. Two
// datagrams wait in the receiver's queue; each recvmsg takes the oldest. (UDP does not promise
// order; over loopback, sent one after the other from one thread, they arrived in the order sent.)

let message = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)
let source = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
let vector = UnsafeMutablePointer<iovec>.allocate(capacity: 1)
let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 2048, alignment: 16)
for userData: UInt64 in [2431, 2432] {
    source.initialize(to: sockaddr_in())
    vector.initialize(to: iovec(iov_base: bytes.baseAddress, iov_len: bytes.count))
    message.initialize(to: msghdr(msg_name: source, msg_namelen: socklen_t(MemoryLayout<sockaddr_in>.size), msg_iov: vector,
                                  msg_iovlen: 1, msg_control: nil, msg_controllen: 0, msg_flags: 0))
    let sqe = getSQE(ring)
    io_uring_prep_recvmsg(sqe, receiver, message, 0)
    io_uring_sqe_set_data64(sqe, userData)
    checkSubmit(io_uring_submit(ring), 1)
    let cqe = waitCQE(ring, seconds: 5)
    let from = UInt16(bigEndian: source.pointee.sin_port)
    print("recvmsg: \(format(cqe)) " + (cqe.res >= 0 ? quoted(bytes.prefix(Int(cqe.res))) : ""))
    print("  msg_name \(text(source.pointee)) (msg_namelen \(message.pointee.msg_namelen)): the port of "
        + "\(owner(of: from, ports, names)), msg_flags \(message.pointee.msg_flags)")
}
message.deallocate(); source.deallocate(); vector.deallocate(); bytes.deallocate()

// MARK: - 5. A buffer ring for the multishot recvmsg
//
// liburing 2.3 has no io_uring_setup_buf_ring, so, as in lesson 21, we map the ring's memory
// ourselves (page-aligned: 8 entries x 16-byte struct io_uring_buf fit in one page), register it
// as buffer group 24 with io_uring_register_buf_ring (Linux 5.19), and add 8 buffers of 64 bytes.

let entries: UInt32 = 8, bufferSize = 64, group: UInt16 = 24
let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
guard let ringMemory = mmap(nil, pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      ringMemory != MAP_FAILED else {
    for fd in fds { close(fd) }
    fail("mmap of the buffer ring failed: \(describe(res: -errno))")
}
let bufferRing = ringMemory.bindMemory(to: io_uring_buf_ring.self, capacity: 1)
io_uring_buf_ring_init(bufferRing)
var registration = io_uring_buf_reg()
registration.ring_addr = UInt64(UInt(bitPattern: ringMemory))
registration.ring_entries = entries
registration.bgid = group
let registered = io_uring_register_buf_ring(ring, &registration, 0)
print("io_uring_register_buf_ring(group \(group), \(entries) entries) = \(describe(res: registered))")
guard registered == 0 else {
    munmap(ringMemory, pageSize)
    for fd in fds { close(fd) }
    fail("io_uring_register_buf_ring returned \(describe(res: registered))")
}
let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(entries) * bufferSize, alignment: 64)
let mask = io_uring_buf_ring_mask(entries)
for id in 0..<Int(entries) {
    io_uring_buf_ring_add(bufferRing, buffers.baseAddress! + id * bufferSize, UInt32(bufferSize), UInt16(id), mask, Int32(id))
}
io_uring_buf_ring_advance(bufferRing, Int32(entries))

// MARK: - 6. Multishot recvmsg: one SQE, one CQE per datagram
//
// `io_uring_prep_recvmsg_multishot(sqe, fd, msg, flags)` with IOSQE_BUFFER_SELECT and the group
// in buf_group. The msghdr is a template: the kernel reads msg_namelen and msg_controllen from
// it, and with them lays out every buffer it fills (io_uring/net.c, io_recvmsg_multishot):
//
//   | io_uring_recvmsg_out (16) | name (msg_namelen) | control (msg_controllen) | payload ... |
//
// out.namelen, .controllen, .payloadlen and .flags are what recvmsg(2) would have returned. A
// datagram longer than the payload room is cut (the rest is lost, as with recvmsg(2)): res is the
// whole buffer, out.flags has MSG_TRUNC, and out.payloadlen, recvmsg(2)'s return value, is the
// datagram's real length only because we pass MSG_TRUNC in the request's flags (man 2 recv).
// Each CQE has F_MORE while the request stays armed. Three datagrams are queued first (A, B, A)
// and taken one CQE each; a fourth, too long for its buffer, comes after.

let template = UnsafeMutablePointer<msghdr>.allocate(capacity: 1)  // read until the last CQE
template.initialize(to: msghdr(msg_name: nil, msg_namelen: socklen_t(MemoryLayout<sockaddr_in>.size), msg_iov: nil,
                               msg_iovlen: 0, msg_control: nil, msg_controllen: 0, msg_flags: 0))

let queued = sendDatagrams(ring, [(senderA, Array("A: one".utf8), 2451), (senderB, Array("B: two".utf8), 2452),
                                  (senderA, Array("A: three".utf8), 2453)], to: ports[0])
print("sendmsg x3 before arming: res " + queued.map { describe(res: $0.res) }.joined(separator: ", "))

/// Print one CQE of the multishot recvmsg and what its buffer holds; put the buffer back in the
/// ring. Returns whether the request is still armed (F_MORE).
func printDatagram(_ cqe: io_uring_cqe, _ template: UnsafeMutablePointer<msghdr>, _ buffers: UnsafeMutableRawBufferPointer,
                   _ bufferRing: UnsafeMutablePointer<io_uring_buf_ring>, _ ports: [UInt16], _ names: [String]) -> Bool {
    printCQE(cqe, "recvmsg multishot")
    guard cqe.res >= 0, cqe.flags & IORING_CQE_F_BUFFER != 0 else { return cqe.flags & IORING_CQE_F_MORE != 0 }
    let id = Int(cqe.flags >> IORING_CQE_BUFFER_SHIFT)
    let buffer = buffers.baseAddress! + id * bufferSize
    guard let out = io_uring_recvmsg_validate(buffer, cqe.res, template) else {
        print("  buffer \(id): io_uring_recvmsg_validate found no complete header in \(cqe.res) bytes")
        return cqe.flags & IORING_CQE_F_MORE != 0
    }
    let name = io_uring_recvmsg_name(out)!.loadUnaligned(as: sockaddr_in.self)
    let payload = io_uring_recvmsg_payload(out, template)!
    let length = Int(io_uring_recvmsg_payload_length(out, cqe.res, template))
    let flags = out.pointee.flags & UInt32(MSG_TRUNC) != 0 ? "MSG_TRUNC" : "\(out.pointee.flags)"
    print("  buffer \(id): namelen=\(out.pointee.namelen) payloadlen=\(out.pointee.payloadlen) flags=\(flags); "
        + "name \(text(name)) (\(owner(of: UInt16(bigEndian: name.sin_port), ports, names))); "
        + "payload \(length) bytes \(quoted(UnsafeRawBufferPointer(start: payload, count: length)))")
    // Done with the buffer: give it back to the kernel (lesson 21).
    io_uring_buf_ring_add(bufferRing, buffer, UInt32(bufferSize), UInt16(id), io_uring_buf_ring_mask(entries), 0)
    io_uring_buf_ring_advance(bufferRing, 1)
    return cqe.flags & IORING_CQE_F_MORE != 0
}

let multishot = getSQE(ring)
io_uring_prep_recvmsg_multishot(multishot, receiver, template, UInt32(MSG_TRUNC))
io_uring_sqe_set_flags(multishot, IOSQE_BUFFER_SELECT)
multishot.pointee.buf_group = group
io_uring_sqe_set_data64(multishot, 2441)
checkSubmit(io_uring_submit(ring), 1)
var armed = true
for _ in 0..<3 where armed {
    armed = printDatagram(waitCQE(ring, seconds: 5), template, buffers, bufferRing, ports, names)
}
if armed {  // the long datagram: 100 bytes, into a buffer with 64 - 16 - 16 = 32 bytes of payload room
    let long = Array((0..<100).map { UInt8(ascii: "0") + UInt8($0 % 10) })
    let longSent = sendDatagrams(ring, [(senderB, long, 2454)], to: ports[0])
    print("sendmsg sender B, \(long.count) bytes: \(describe(res: longSent[0].res))")
    armed = printDatagram(waitCQE(ring, seconds: 5), template, buffers, bufferRing, ports, names)
}
guard armed else {  // an error ended it (its CQE is printed above): the kernel passed the probe, so it is a bug
    for fd in fds { close(fd) }
    fail("the multishot recvmsg ended early (no F_MORE)")
}

// MARK: - 7. Ending the multishot
//
// A multishot recvmsg stays armed until an error ends it or we cancel it. IORING_OP_ASYNC_CANCEL
// finds it by user_data (io_uring_prep_cancel64); the cancel completes with 0, and the request
// posts its last CQE, -ECANCELED without F_MORE. Only then may its msghdr and buffers go: the
// buffer ring is unregistered, its memory unmapped, the sockets closed.

let cancel = getSQE(ring)
io_uring_prep_cancel64(cancel, 2441, 0)
io_uring_sqe_set_data64(cancel, 2461)
checkSubmit(io_uring_submit(ring), 1)
let ends = [waitCQE(ring, seconds: 5), waitCQE(ring, seconds: 5)].sorted { $0.user_data < $1.user_data }
printCQE(ends[0], "recvmsg multishot, last CQE")
printCQE(ends[1], "cancel user_data=2441")
print("io_uring_unregister_buf_ring(group \(group)) = \(describe(res: io_uring_unregister_buf_ring(ring, Int32(group))))")
print("munmap of the ring memory = \(munmap(ringMemory, pageSize) == 0 ? "0" : describe(res: -errno))")
buffers.deallocate()
template.deallocate()
for (index, fd) in fds.enumerated() {
    let sqe = getSQE(ring)
    io_uring_prep_close(sqe, fd)
    io_uring_sqe_set_data64(sqe, 2471 + UInt64(index))
}
checkSubmit(io_uring_submit(ring), 3)
let closes = (0..<3).map { _ in waitCQE(ring, seconds: 5) }.sorted { $0.user_data < $1.user_data }
print("close receiver, sender A, sender B: " + closes.map { describe(res: $0.res) }.joined(separator: ", "))
destroyRing(ring)
