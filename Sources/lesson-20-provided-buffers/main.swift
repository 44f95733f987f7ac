// Lesson 20: provided buffers
//
// A server with ten thousand idle connections and a recv in flight on each would, with the
// recvs of lessons 17 and 18, have ten thousand buffers pinned under those recvs, most of them
// waiting for data that may never come. Provided buffers turn this around: the application
// hands the kernel a *group* of buffers up front (IORING_OP_PROVIDE_BUFFERS, Linux 5.7), and a
// recv carries no address at all, only IOSQE_BUFFER_SELECT and the group's id. The kernel picks
// a buffer from the group when the data is there, and the CQE says which one: the flag
// IORING_CQE_F_BUFFER, and the buffer id in the upper 16 bits of cqe->flags
// (flags >> IORING_CQE_BUFFER_SHIFT). Memory is committed to a connection only when it has
// something to say, and a few buffers can serve many sockets.
//
// The buffer is then the application's until it gives it back with another
// IORING_OP_PROVIDE_BUFFERS: that is "recycling". A group that has run out makes a recv complete
// with -ENOBUFS, even when data is waiting. IORING_OP_REMOVE_BUFFERS takes back what is left
// in a group, and its res says how many that was.
//
// This lesson makes two TCP connections on loopback through the ring (lesson 17 shows the
// steps), provides a group of four 32-byte buffers, and watches which buffer each recv gets:
// two recvs waiting on two sockets, then more recvs, the group running empty, recycling, the
// order of recycled buffers, and the removal of what is left. Data is sent through the ring
// from the client sockets; the subject is the receiving side.
//
// Read next: man 3 io_uring_prep_provide_buffers, man 3 io_uring_prep_remove_buffers,
// man 2 io_uring_enter (IOSQE_BUFFER_SELECT, IORING_OP_PROVIDE_BUFFERS, IORING_CQE_F_BUFFER).

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-20-provided-buffers", max: 0)

// MARK: - 1. A ring and two connections
//
// PROVIDE_BUFFERS and REMOVE_BUFFERS are Linux 5.7; the sockets are made with IORING_OP_SOCKET,
// 5.19, which makes this lesson a 5.19 one. We ask the kernel rather than guess from its
// version: requireOpcodes below for the ops of this lesson, and LabNet's listenOnLoopback, the
// first to make a socket, probes IORING_OP_SOCKET (skipping, exit 77, on a kernel without it). Every request has a fixed user_data: 2001-2006 make the connections, 2011-2019 are
// PROVIDE_BUFFERS and REMOVE_BUFFERS, 2021-2029 the recvs, 2031-2038 the sends, 2041-2044 the
// closes.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_PROVIDE_BUFFERS, IORING_OP_REMOVE_BUFFERS, IORING_OP_RECV,
               IORING_OP_SEND, IORING_OP_CONNECT, IORING_OP_ACCEPT, IORING_OP_CLOSE)

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

/// A TCP connection to 127.0.0.1:`port`, made as lesson 17 makes one: IORING_OP_SOCKET for
/// the client (user_data `first`), then IORING_OP_CONNECT and IORING_OP_ACCEPT in one submit
/// (`first + 1`, `first + 2`). The address CONNECT reads stays on the heap until its CQE.
func connection(_ ring: Ring, listener: Int32, port: UInt16, first: UInt64, opened: [Int32]) -> (client: Int32, server: Int32) {
    var sqe = getSQE(ring)
    io_uring_prep_socket(sqe, AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, 0)
    io_uring_sqe_set_data64(sqe, first)
    checkSubmit(io_uring_submit(ring), 1)
    let client = complete(ring, [first], closing: opened)[first]!.res
    guard client >= 0 else { bail("IORING_OP_SOCKET returned \(describe(res: client))", closing: opened) }
    let address = UnsafeMutablePointer<sockaddr_in>.allocate(capacity: 1)
    address.initialize(to: loopbackAddress(port: port))
    defer { address.deallocate() }  // runs after both CQEs
    sqe = getSQE(ring)
    address.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        io_uring_prep_connect(sqe, client, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
    }
    io_uring_sqe_set_data64(sqe, first + 1)
    sqe = getSQE(ring)
    io_uring_prep_accept(sqe, listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
    io_uring_sqe_set_data64(sqe, first + 2)
    checkSubmit(io_uring_submit(ring), 2)
    let cqes = complete(ring, [first + 1, first + 2], closing: opened + [client])
    let (connected, server) = (cqes[first + 1]!.res, cqes[first + 2]!.res)
    guard connected == 0, server >= 0 else {
        bail("connect returned \(describe(res: connected)), accept \(describe(res: server))",
             closing: opened + [client, server])
    }
    return (client, server)
}

let listener = listenOnLoopback(ring, port: 0)
let (clientA, serverA) = connection(ring, listener: listener.fd, port: listener.port, first: 2001, opened: [listener.fd])
let (clientB, serverB) = connection(ring, listener: listener.fd, port: listener.port, first: 2004,
                                    opened: [listener.fd, clientA, serverA])
close(listener.fd)  // nothing else will connect: nothing is left listening
let sockets = [clientA, serverA, clientB, serverB]
print("two connections through the ring: A (client fd \(clientA), server fd \(serverA)), "
    + "B (client fd \(clientB), server fd \(serverB)); listener closed")

// MARK: - 2. Providing a group of buffers
//
// `io_uring_prep_provide_buffers(sqe, addr, len, nr, bgid, bid)` gives the kernel `nr` buffers
// of `len` bytes, laid end to end from `addr`, as group `bgid`, with ids bid, bid+1, ... It is a
// request like any other: it goes through the SQ and answers with a CQE. On success its res
// is 0 on Linux 6.1, 6.12 and 6.18 (man 3 io_uring_prep_provide_buffers says "the number of
// successfully provided buffers": that is what kernels before 5.18 answered; the prose's Kernel
// section has the commit).
//
// The kernel keeps only each buffer's address, length and id: the memory stays ours, and must
// stay allocated while the kernel may write into it: until each buffer has been used (its CQE
// seen) or removed (section 7), and no recv that selects from the group is in flight. We
// allocate the four buffers as one block of 4 x 32 bytes (bufferSize): buffer id N starts at
// byte 32 * N, as the kernel lays them out.

let group: UInt16 = 7, bufferSize = 32, bufferCount = 4
let pool = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize * bufferCount, alignment: 64)
pool.initializeMemory(as: UInt8.self, repeating: 0)

/// Queue IORING_OP_PROVIDE_BUFFERS of `count` buffers of the pool, from id `first`, into `group`.
func provide(_ ring: Ring, _ pool: UnsafeMutableRawBufferPointer, count: Int, first: Int, userData: UInt64) {
    let sqe = getSQE(ring)
    io_uring_prep_provide_buffers(sqe, pool.baseAddress! + first * bufferSize, Int32(bufferSize), Int32(count),
                                  Int32(group), Int32(first))
    io_uring_sqe_set_data64(sqe, userData)
}

provide(ring, pool, count: bufferCount, first: 0, userData: 2011)
checkSubmit(io_uring_submit(ring), 1)
printCQE(complete(ring, [2011], closing: sockets)[2011]!, "PROVIDE_BUFFERS group \(group), \(bufferCount) buffers of \(bufferSize) bytes, ids 0-\(bufferCount - 1)")

// MARK: - 3. Two recvs waiting, and no buffer taken yet
//
// A recv that selects its buffer: `io_uring_prep_recv(sqe, fd, nil, len, 0)`, no address, then
// IOSQE_BUFFER_SELECT in the SQE's flags and the group's id in `sqe->buf_group`. The length
// still caps the read (the kernel uses the smaller of it and the buffer's length).
//
// We submit a recv on A's server socket, then one on B's. Neither socket has data, so both
// wait, and no CQE is there after the submit. Then B's client sends: B's recv, submitted
// second, completes with buffer 0. A buffer is chosen when the data arrives, not when the recv
// is submitted. (Since Linux 5.18, commit b1c62645758e, the kernel does look for a buffer when
// it first tries each recv, finds no data, and puts the buffer back at the front of the group
// before the recv starts to wait; on 6.18, io_recv in io_uring/net.c calls io_kbuf_recycle.
// Before 5.18 a waiting recv kept its buffer.)
//
// Each send goes through the ring from the client's socket, its bytes in `outgoing`, which
// stays allocated until the send's CQE. We wait for both CQEs, the send's and the recv's, and
// print the send's first, whichever came first: they are matched by user_data.

/// Queue a recv on `fd` that lets the kernel pick a buffer of `group`.
func queueRecv(_ ring: Ring, _ fd: Int32, userData: UInt64) {
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

let outgoing = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)

// LabNet's `queueSend(ring, fd, text, outgoing, userData:)` copies `text` into `outgoing` and
// queues an IORING_OP_SEND of it; `outgoing` stays put until the send's CQE.

queueRecv(ring, serverA, userData: 2021)
queueRecv(ring, serverB, userData: 2022)
checkSubmit(io_uring_submit(ring), 2)
print("recv on A (user_data 2021) and on B (2022), IOSQE_BUFFER_SELECT group 7: CQEs ready: \(io_uring_cq_ready(ring))")
queueSend(ring, clientB, "hello B", outgoing, userData: 2031)
checkSubmit(io_uring_submit(ring), 1)
var cqes = complete(ring, [2031, 2022], closing: sockets)
printCQE(cqes[2031]!, "send \"hello B\" from B's client")
printRecv(cqes[2022]!, "recv on B", pool)
queueSend(ring, clientA, "hello A", outgoing, userData: 2032)
checkSubmit(io_uring_submit(ring), 1)
cqes = complete(ring, [2032, 2021], closing: sockets)
printCQE(cqes[2032]!, "send \"hello A\" from A's client")
printRecv(cqes[2021]!, "recv on A", pool)

// MARK: - 4. The group runs empty: -ENOBUFS
//
// From here on each message is sent, its CQE awaited, and then a recv submitted for it, one
// at a time, all on A. Two more messages use up buffers 2 and 3: on Linux 6.1, 6.12 and 6.18 a
// group hands out its buffers in the order they were provided (the list is FIFO; kernels before
// 5.18 took the most recently provided first, see the prose). Then the group is empty. The next
// message arrives, and the recv for it completes at once with -ENOBUFS: there is no buffer to
// put it in. The data is not lost. It stays in the socket for a later recv.
// (And a recv on an empty group before any data has arrived? Exercise 1.)

/// Send `text` from A's client, wait for the send's CQE, then submit a recv on A's server
/// socket and print its CQE.
func sendThenRecv(_ ring: Ring, _ text: String, send: UInt64, recv: UInt64, _ pool: UnsafeMutableRawBufferPointer,
                  _ outgoing: UnsafeMutableRawBufferPointer, _ sockets: [Int32]) {
    queueSend(ring, sockets[0], text, outgoing, userData: send)
    checkSubmit(io_uring_submit(ring), 1)
    let sent = complete(ring, [send], closing: sockets)[send]!
    guard sent.res == text.utf8.count else { bail("send of \(text) returned \(describe(res: sent.res))", closing: sockets) }
    queueRecv(ring, sockets[1], userData: recv)
    checkSubmit(io_uring_submit(ring), 1)
    printRecv(complete(ring, [recv], closing: sockets)[recv]!, "send \(quoted(text.utf8)), then recv on A", pool)
}

sendThenRecv(ring, "three", send: 2033, recv: 2023, pool, outgoing, sockets)
sendThenRecv(ring, "four", send: 2034, recv: 2024, pool, outgoing, sockets)
sendThenRecv(ring, "five", send: 2035, recv: 2025, pool, outgoing, sockets)

// MARK: - 5. Recycling: giving a buffer back
//
// We have read "hello A" out of buffer 1 and are done with it, so we give it back: one more
// PROVIDE_BUFFERS, of 1 buffer with id 1 at its old address. The recv that comes next gets it,
// and with it "five", the message that found no buffer in section 4.
//
// This is the price of the scheme: every buffer given back is an SQE, and a CQE to reap.
// Lesson 21's buffer rings give buffers back by writing to memory shared with the kernel
// instead: three fields per buffer, then one store-release of the ring's tail per batch.

provide(ring, pool, count: 1, first: 1, userData: 2012)
checkSubmit(io_uring_submit(ring), 1)
printCQE(complete(ring, [2012], closing: sockets)[2012]!, "PROVIDE_BUFFERS group 7, buffer 1 given back")
queueRecv(ring, serverA, userData: 2026)
checkSubmit(io_uring_submit(ring), 1)
printRecv(complete(ring, [2026], closing: sockets)[2026]!, "recv on A", pool)

// MARK: - 6. In what order recycled buffers come back
//
// All four buffers are ours again. We give them back one by one, in the order 3, 0, 2, 1: four
// SQEs in one submit, which the kernel runs in order (a PROVIDE_BUFFERS runs as it is
// submitted). Three messages then get buffers 3, 0 and 2 on Linux 6.1, 6.12 and 6.18: first
// given back, first used. Buffer 1 stays in the group.

let givenBack = [3, 0, 2, 1]
for (n, id) in givenBack.enumerated() {
    provide(ring, pool, count: 1, first: id, userData: 2013 + UInt64(n))
}
checkSubmit(io_uring_submit(ring), 4)
cqes = complete(ring, [2013, 2014, 2015, 2016], closing: sockets)
for (n, id) in givenBack.enumerated() {
    printCQE(cqes[2013 + UInt64(n)]!, "PROVIDE_BUFFERS group 7, buffer \(id) given back")
}
sendThenRecv(ring, "six", send: 2036, recv: 2027, pool, outgoing, sockets)
sendThenRecv(ring, "seven", send: 2037, recv: 2028, pool, outgoing, sockets)
sendThenRecv(ring, "eight", send: 2038, recv: 2029, pool, outgoing, sockets)

// MARK: - 7. Taking back what is left: IORING_OP_REMOVE_BUFFERS
//
// `io_uring_prep_remove_buffers(sqe, nr, bgid)` removes up to `nr` buffers from the group,
// from the front, and its res is how many it removed. We ask for 16; one is left (buffer 1).
// Then we ask again, of a group that is now empty. (Linux 5.18 to 6.2 answered both with one
// more than they removed: the prose's Kernel section.) After that no buffer of the group is the
// kernel's, no recv is in flight, and the memory can go.

var sqe = getSQE(ring)
io_uring_prep_remove_buffers(sqe, 16, Int32(group))
io_uring_sqe_set_data64(sqe, 2017)
checkSubmit(io_uring_submit(ring), 1)
printCQE(complete(ring, [2017], closing: sockets)[2017]!, "REMOVE_BUFFERS group 7, up to 16")
sqe = getSQE(ring)
io_uring_prep_remove_buffers(sqe, 16, Int32(group))
io_uring_sqe_set_data64(sqe, 2018)
checkSubmit(io_uring_submit(ring), 1)
printCQE(complete(ring, [2018], closing: sockets)[2018]!, "REMOVE_BUFFERS group 7 again")
pool.deallocate()
outgoing.deallocate()

// MARK: - 8. Closing the sockets through the ring

for (n, fd) in sockets.enumerated() {
    sqe = getSQE(ring)
    io_uring_prep_close(sqe, fd)
    io_uring_sqe_set_data64(sqe, 2041 + UInt64(n))
}
checkSubmit(io_uring_submit(ring), sockets.count)
let closes = complete(ring, (0..<UInt64(sockets.count)).map { 2041 + $0 }, closing: [])
if let failed = closes.values.first(where: { $0.res != 0 }) { fail("close returned \(describe(res: failed.res))") }
destroyRing(ring)
