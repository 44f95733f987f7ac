// Lesson 21: buffer rings
//
// Lesson 20's provided buffers have a cost: every buffer given back to the kernel is an SQE
// (IORING_OP_PROVIDE_BUFFERS) and a CQE to reap. A *buffer ring* (Linux 5.19) replaces that with
// memory the application and the kernel share, like the SQ and CQ themselves: an array of
// `struct io_uring_buf` entries (address, length, buffer id) and a 16-bit tail. The application
// writes entries at the tail and then moves the tail; the kernel takes entries at its head,
// which it keeps to itself. Giving buffers back is writing that memory: three fields per buffer,
// then one store-release of the tail for the whole batch. No SQE, no system call.
//
// liburing 2.3 has no io_uring_setup_buf_ring (2.4 added it), so the lesson does what that
// function does: it maps the ring's memory itself, registers it as buffer group 9, fills it, and
// at the end unregisters it and unmaps the memory. Recvs select buffers from the group exactly
// as in lesson 20 (IOSQE_BUFFER_SELECT, sqe->buf_group), and the CQE names the buffer the same
// way (IORING_CQE_F_BUFFER, the id in flags >> IORING_CQE_BUFFER_SHIFT).
//
// Read next: man 3 io_uring_register_buf_ring, man 3 io_uring_buf_ring_init,
// man 3 io_uring_buf_ring_add, man 3 io_uring_buf_ring_advance, man 3 io_uring_buf_ring_cq_advance,
// man 3 io_uring_unregister_buf_ring.

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-21-buffer-rings", max: 0)

// MARK: - 1. A ring and a connection
//
// Buffer rings and IORING_OP_SOCKET are both Linux 5.19. The connection is made through the
// ring as lesson 17 shows; the subject is the server socket's recvs. requireOpcodes checks this
// lesson's ops; LabNet's listenOnLoopback, the first to make a socket, probes IORING_OP_SOCKET
// (exit 77 without it). user_data: 2101-2103 make the connection, 2111 is a PROVIDE_BUFFERS,
// 2121-2127 the recvs, 2131-2136 the sends, 2141-2142 the closes.

let ring = makeRing(entries: 8)
requireOpcodes(ring, IORING_OP_PROVIDE_BUFFERS, IORING_OP_RECV, IORING_OP_SEND, IORING_OP_CONNECT,
               IORING_OP_ACCEPT, IORING_OP_CLOSE)

/// Close `fds` (an error path: the lesson ends), then print `error: message` and exit 1.
func bail(_ message: String, closing fds: [Int32]) -> Never {
    for fd in fds where fd >= 0 { close(fd) }
    fail(message)
}

/// Wait for the CQEs of the requests with these user_data (5 s at most for each) and return
/// them by user_data, whatever order they came in. Anything else is a bug: stop.
func complete(_ ring: Ring, _ userData: [UInt64], closing fds: [Int32]) -> [UInt64: io_uring_cqe] {
    var cqes: [UInt64: io_uring_cqe] = [:]
    while cqes.count < userData.count {
        let cqe = waitCQE(ring, seconds: 5)
        guard userData.contains(cqe.user_data), cqes[cqe.user_data] == nil else {
            bail("a CQE nobody waits for: \(format(cqe))", closing: fds)
        }
        cqes[cqe.user_data] = cqe
    }
    return cqes
}

let listener = listenOnLoopback(ring, port: 0)
var sqe = getSQE(ring)
io_uring_prep_socket(sqe, AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, 0)
io_uring_sqe_set_data64(sqe, 2101)
checkSubmit(io_uring_submit(ring), 1)
let client = complete(ring, [2101], closing: [listener.fd])[2101]!.res
guard client >= 0 else { bail("IORING_OP_SOCKET returned \(describe(res: client))", closing: [listener.fd]) }
let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)  // CONNECT reads it: kept until its CQE
address.initialize(to: loopbackAddress(port: listener.port))
sqe = getSQE(ring)
address.withMemoryRebound(to: sockaddr.self, capacity: 1) {
    io_uring_prep_connect(sqe, client, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
}
io_uring_sqe_set_data64(sqe, 2102)
sqe = getSQE(ring)
io_uring_prep_accept(sqe, listener.fd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
io_uring_sqe_set_data64(sqe, 2103)
checkSubmit(io_uring_submit(ring), 2)
var cqes = complete(ring, [2102, 2103], closing: [listener.fd, client])
address.deallocate()
let server = cqes[2103]!.res
close(listener.fd)  // nothing else will connect: nothing is left listening
guard cqes[2102]!.res == 0, server >= 0 else {
    bail("connect returned \(describe(res: cqes[2102]!.res)), accept \(describe(res: server))", closing: [client, server])
}
let sockets = [client, server]
print("a connection through the ring: client fd \(client), server fd \(server); listener closed")

// MARK: - 2. The ring's memory, and what the kernel checks when it is registered
//
// The ring is `entries` structs io_uring_buf of 16 bytes (addr, len, bid, and a reserved field
// that in entry 0 doubles as the tail). 4 entries are 64 bytes, but the kernel pins whole pages
// and wants the address page-aligned, so we map one anonymous page, as liburing 2.4's
// io_uring_setup_buf_ring does. It is shared with the kernel until we unregister the ring.
//
// `io_uring_register_buf_ring(ring, &reg, 0)` is io_uring_register(2) with
// IORING_REGISTER_PBUF_RING: a system call, done when it returns (the kernel copies `reg`). The
// kernel refuses (Linux 6.18):
//   - a number of entries that is not a power of two, or 65536 or more: -EINVAL
//     (io_register_pbuf_ring in io_uring/kbuf.c);
//   - an address that is not page-aligned: -EINVAL, and a NULL one: -EFAULT (io_create_region
//     in io_uring/memmap.c, which pins the pages; 6.1 and 6.12 check both in
//     io_register_pbuf_ring itself);
//   - a group that already has a ring, or still holds lesson 20's buffers: -EEXIST (kbuf.c;
//     a lesson-20 group that recvs or REMOVE_BUFFERS emptied is taken over: 0).
// We try the first two, then register for real, then try again.

let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
let entries: UInt32 = 4, group: UInt16 = 9, bufferSize = 32
guard let memory = mmap(nil, pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      memory != UnsafeMutableRawPointer(bitPattern: -1) else {
    bail("mmap of \(pageSize) bytes failed: \(describe(res: -errno))", closing: sockets)
}
print("ring memory: mmap of \(pageSize) bytes at \(memory), for \(entries) entries of "
    + "\(MemoryLayout<io_uring_buf>.size) bytes (struct io_uring_buf)")

/// io_uring_register_buf_ring of `entries` entries at `address` as buffer group `group`.
func register(_ ring: Ring, _ address: UnsafeMutableRawPointer, entries: UInt32, group: UInt16) -> Int32 {
    var reg = io_uring_buf_reg()  // the reserved fields must be zero
    reg.ring_addr = UInt64(UInt(bitPattern: address))
    reg.ring_entries = entries
    reg.bgid = group
    return io_uring_register_buf_ring(ring, &reg, 0)
}

print("io_uring_register_buf_ring(6 entries) = \(describe(res: register(ring, memory, entries: 6, group: group)))")
print("io_uring_register_buf_ring(address + 64, not page-aligned) = "
    + describe(res: register(ring, memory + 64, entries: entries, group: group)))
let registered = register(ring, memory, entries: entries, group: group)
print("io_uring_register_buf_ring(\(entries) entries, group \(group)) = \(describe(res: registered))")
guard registered == 0 else {
    munmap(memory, pageSize)
    bail("io_uring_register_buf_ring returned \(describe(res: registered))", closing: sockets)
}
print("io_uring_register_buf_ring again, group \(group) = \(describe(res: register(ring, memory, entries: entries, group: group)))")

// A group is either lesson 20's kind or a ring, never both: PROVIDE_BUFFERS into group 9 now is
// refused with -EINVAL (and REMOVE_BUFFERS too).

let pool = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize * Int(entries), alignment: 64)
pool.initializeMemory(as: UInt8.self, repeating: 0)
sqe = getSQE(ring)
io_uring_prep_provide_buffers(sqe, pool.baseAddress, Int32(bufferSize), 1, Int32(group), 0)
io_uring_sqe_set_data64(sqe, 2111)
checkSubmit(io_uring_submit(ring), 1)
printCQE(complete(ring, [2111], closing: sockets)[2111]!, "PROVIDE_BUFFERS into group 9")

// MARK: - 3. Filling the ring
//
// `io_uring_buf_ring_init(br)` sets the tail to 0. `io_uring_buf_ring_add(br, addr, len, bid,
// mask, offset)` writes addr, len and bid into the entry at (tail + offset) & mask (mask =
// entries - 1, io_uring_buf_ring_mask), and does not move the tail: the kernel cannot see the
// entry yet. `io_uring_buf_ring_advance(br, count)` then publishes `count` entries at once, with
// one store-release of the new tail. No SQE, no system call. We add our four buffers in the
// order 3, 1, 0, 2, so that "ring order" and "id order" differ.
//
// The head is the kernel's: the index of the next entry it will take. It is not in the shared
// memory, and before Linux 6.8 nothing shows it. Since 6.8, io_uring_register(2) with
// IORING_REGISTER_PBUF_STATUS (named in the shim; later liburings: io_uring_buf_ring_head)
// copies it out in a struct io_uring_buf_status. Older kernels answer -EINVAL (an opcode they do
// not know), and then the lesson says so once and prints only the tail.

let br = memory.bindMemory(to: io_uring_buf_ring.self, capacity: 1)
let mask = io_uring_buf_ring_mask(entries)

/// Add buffers `ids` of `pool` at the tail (not yet visible), then advance the tail over them.
func refill(_ br: UnsafeMutablePointer<io_uring_buf_ring>, _ ids: [Int], _ pool: UnsafeMutableRawBufferPointer) {
    let tail = Int(br.pointee.tail)
    for (offset, id) in ids.enumerated() {
        io_uring_buf_ring_add(br, pool.baseAddress! + id * bufferSize, UInt32(bufferSize), UInt16(id), mask, Int32(offset))
    }
    let slots = (0..<ids.count).map { (tail + $0) & Int(mask) }.map { slot in  // the id read back from the page
        "slot \(slot) = buffer \(UnsafeRawPointer(br).load(fromByteOffset: slot * MemoryLayout<io_uring_buf>.stride, as: io_uring_buf.self).bid)"
    }
    print("io_uring_buf_ring_add: " + slots.joined(separator: ", "))
    io_uring_buf_ring_advance(br, Int32(ids.count))
    print("io_uring_buf_ring_advance(\(ids.count)): tail \(tail) -> \(br.pointee.tail)")
}

/// The kernel's head of `group` (IORING_REGISTER_PBUF_STATUS, Linux 6.8), or -errno. The struct
/// lives for the one system call, which copies it in and out.
func kernelHead(_ ring: Ring, group: UInt16) -> Int32 {
    var status = lab_io_uring_buf_status()  // struct io_uring_buf_status, in the shim
    status.buf_group = UInt32(group)
    let ret = io_uring_register(UInt32(ring.pointee.ring_fd), UInt32(LAB_IORING_REGISTER_PBUF_STATUS), &status, 1)
    return ret < 0 ? ret : Int32(status.head)
}

/// Print the kernel's head of `group` beside our tail, where the kernel can tell (Linux 6.8).
func printHead(_ ring: Ring, group: UInt16, tail: UInt16) {
    let head = kernelHead(ring, group: group)
    if head >= 0 { print("the kernel's head (IORING_REGISTER_PBUF_STATUS) = \(head), our tail = \(tail)") }
}

io_uring_buf_ring_init(br)
refill(br, [3, 1, 0, 2], pool)
let head = kernelHead(ring, group: group)
if head < 0 {
    print("IORING_REGISTER_PBUF_STATUS = \(describe(res: head)): this kernel does not show its head (Linux 6.8 does)")
}
printHead(ring, group: group, tail: br.pointee.tail)

// MARK: - 4. Consuming: buffers come in ring order
//
// A recv with IOSQE_BUFFER_SELECT and buf_group 9, exactly as in lesson 20. The first is
// submitted before any data: it waits, and the head does not move (a recv that has to wait
// takes no entry: the kernel only moves the head when data is copied). Then four messages, one
// at a time (send, its CQE, then the recv for it): the ids come back as 3, 1, 0, 2, the order of
// the ring, not of the ids. Then head = tail: the ring is empty.

/// Queue a recv on `fd` that lets the kernel pick a buffer of `group`.
func queueRecv(_ ring: Ring, _ fd: Int32, group: UInt16, userData: UInt64) {
    let sqe = getSQE(ring)
    io_uring_prep_recv(sqe, fd, nil, bufferSize, 0)  // no buffer address: the kernel picks one
    io_uring_sqe_set_flags(sqe, IOSQE_BUFFER_SELECT)
    sqe.pointee.buf_group = group
    io_uring_sqe_set_data64(sqe, userData)
}

/// A recv's CQE, and the bytes the kernel put in the buffer it chose.
func printRecv(_ cqe: io_uring_cqe, _ label: String, _ pool: UnsafeMutableRawBufferPointer) {
    var line = "\(label): \(format(cqe))"
    if cqe.res > 0 && cqe.flags & IORING_CQE_F_BUFFER != 0 {
        let id = Int(cqe.flags >> IORING_CQE_BUFFER_SHIFT)  // the buffer the kernel chose
        line += " \(quoted(pool[(id * bufferSize)..<(id * bufferSize + Int(cqe.res))])) in buffer \(id)"
    }
    print(line)
}

let outgoing = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 16)

// LabNet's `queueSend(ring, fd, text, outgoing, userData:)` copies `text` into `outgoing` and
// queues an IORING_OP_SEND of it; `outgoing` stays put until the send's CQE.

/// Send `text` from the client, wait for the send's CQE, then submit a recv and print its CQE.
func sendThenRecv(_ ring: Ring, _ text: String, send: UInt64, recv: UInt64, _ pool: UnsafeMutableRawBufferPointer,
                  _ outgoing: UnsafeMutableRawBufferPointer, _ sockets: [Int32]) {
    queueSend(ring, sockets[0], text, outgoing, userData: send)
    checkSubmit(io_uring_submit(ring), 1)
    let sent = complete(ring, [send], closing: sockets)[send]!
    guard sent.res == text.utf8.count else { bail("send of \(text) returned \(describe(res: sent.res))", closing: sockets) }
    queueRecv(ring, sockets[1], group: 9, userData: recv)
    checkSubmit(io_uring_submit(ring), 1)
    printRecv(complete(ring, [recv], closing: sockets)[recv]!, "send \(quoted(text.utf8)), then recv", pool)
}

queueRecv(ring, server, group: group, userData: 2121)
checkSubmit(io_uring_submit(ring), 1)
print("recv (user_data 2121), IOSQE_BUFFER_SELECT group 9, no data yet: CQEs ready: \(io_uring_cq_ready(ring))")
printHead(ring, group: group, tail: br.pointee.tail)
queueSend(ring, client, "one", outgoing, userData: 2131)  // its CQE and the recv's, in either order
checkSubmit(io_uring_submit(ring), 1)
cqes = complete(ring, [2131, 2121], closing: sockets)
guard cqes[2131]!.res == 3 else { bail("send of one returned \(describe(res: cqes[2131]!.res))", closing: sockets) }
printCQE(cqes[2131]!, "send \"one\" from the client")
printRecv(cqes[2121]!, "the waiting recv", pool)
sendThenRecv(ring, "two", send: 2132, recv: 2122, pool, outgoing, sockets)
sendThenRecv(ring, "three", send: 2133, recv: 2123, pool, outgoing, sockets)
sendThenRecv(ring, "four", send: 2134, recv: 2124, pool, outgoing, sockets)
printHead(ring, group: group, tail: br.pointee.tail)

// MARK: - 5. Empty, then refilled by the application
//
// The ring is empty, so the recv for the next message completes at once with -ENOBUFS, as in
// lesson 20 (the data stays in the socket). We give buffers 2 and 0 back: io_uring_buf_ring_add
// into the slots after the tail, which wrap round (tail 4 and 5, masked by 3, are slots 0 and
// 1), and io_uring_buf_ring_advance. No SQE, no CQE, no system call (strace shows none between
// the refill's two lines and the next submit). The next recv gets buffer 2, and "five".
// (io_uring_buf_ring_cq_advance(ring, br, count) publishes the tail and marks count CQEs seen
// together, for a loop that gives buffers back as it reaps; waitCQE marks each CQE seen itself.)

sendThenRecv(ring, "five", send: 2135, recv: 2125, pool, outgoing, sockets)
refill(br, [2, 0], pool)
queueRecv(ring, server, group: group, userData: 2126)
checkSubmit(io_uring_submit(ring), 1)
printRecv(complete(ring, [2126], closing: sockets)[2126]!, "recv after the refill", pool)
sendThenRecv(ring, "six", send: 2136, recv: 2127, pool, outgoing, sockets)
printHead(ring, group: group, tail: br.pointee.tail)

// MARK: - 6. Unregistering, and giving the memory back
//
// io_uring_unregister_buf_ring(ring, bgid) (IORING_UNREGISTER_PBUF_RING) drops the group and
// unpins the ring's page; only then may the memory go. No recv is in flight and the kernel holds
// no buffer of ours, so the buffers can go too. (Destroying the io_uring would also drop the
// group.)

print("io_uring_unregister_buf_ring(group \(group)) = \(describe(res: io_uring_unregister_buf_ring(ring, Int32(group))))")
print("munmap = \(munmap(memory, pageSize) == 0 ? "0" : describe(res: -errno))")
pool.deallocate()
outgoing.deallocate()

for (n, fd) in sockets.enumerated() {
    sqe = getSQE(ring)
    io_uring_prep_close(sqe, fd)
    io_uring_sqe_set_data64(sqe, 2141 + UInt64(n))
}
checkSubmit(io_uring_submit(ring), 2)
cqes = complete(ring, [2141, 2142], closing: [])
if let failed = cqes.values.first(where: { $0.res != 0 }) { fail("close returned \(describe(res: failed.res))") }
destroyRing(ring)
