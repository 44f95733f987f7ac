// Lesson 25: cancellation
//
// A cancel is a request like any other: IORING_OP_ASYNC_CANCEL names its target (by user_data,
// by file, or "anything"), the kernel searches the places where a request can wait, and two
// CQEs answer, one per request: the target's says how *it* ended, the cancel's what the search
// found. io_uring_register_sync_cancel (6.0) runs the search inside a system call. Each answer
// is made to happen, each target really in flight; lessons/25-cancellation.md says what each
// answer means. CQEs are printed as they arrive, numbered from 1 in each section.
//
// Read next: man 3 io_uring_prep_cancel (cancel64 and cancel_fd are on it),
// man 3 io_uring_register_sync_cancel, man 2 io_uring_enter (IORING_OP_ASYNC_CANCEL).

import Glibc
import CLiburing
import LabSupport
import LabNet

_ = lessonArguments(usage: "lesson-25-cancellation", max: 0)

// MARK: - 1. A ring, sockets, a pipe, and names
//
// user_data: 25, the section, the request (2521: section 2's first). Sockets A and B are ends
// of two socketpairs (peerA, peerB the others); a recv on an empty one waits armed on the
// socket's wait queue (lesson 26's "fast poll"), not on an io-wq worker.

let ring = makeRing(entries: 16)
requireOpcodes(ring, IORING_OP_ASYNC_CANCEL, IORING_OP_RECV, IORING_OP_READ, IORING_OP_TIMEOUT,
               IORING_OP_SPLICE, IORING_OP_SOCKET)
var probe = io_uring_sync_cancel_reg()  // a sync cancel of nothing: -ENOENT since 6.0, -EINVAL before
probe.addr = 2500
if io_uring_register_sync_cancel(ring, &probe) == -EINVAL { skip("IORING_REGISTER_SYNC_CANCEL needs Linux 6.0") }

// The helpers below are @MainActor: they use the lesson's globals, which live on its one thread.
var heldFds: [Int32] = []  // closed by stop() before it fails, so a failure is one error: line
@MainActor func stop(_ message: String) -> Never {
    for fd in heldFds { close(fd) }
    fail(message)
}
var pair: [Int32] = [-1, -1], pipeFDs: [Int32] = [-1, -1]
guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { fail("socketpair: \(describe(res: -errno))") }
let (socketA, peerA) = (pair[0], pair[1])
heldFds += pair
guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { stop("socketpair: \(describe(res: -errno))") }
let (socketB, peerB) = (pair[0], pair[1])
heldFds += pair
guard pipe(&pipeFDs) == 0 else { stop("pipe: \(describe(res: -errno))") }
heldFds += pipeFDs

// Buffers and the timer's timespec stay at one address until the lesson ends.
let buffers = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 8, alignment: 8)
@MainActor func buffer(_ n: Int) -> UnsafeMutableRawPointer { buffers.baseAddress! + 64 * n }
let farAway = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
farAway.initialize(to: __kernel_timespec(tv_sec: 100, tv_nsec: 0))

let names: [UInt64: String] = [
    2521: "recv (socket A)", 2522: "cancel user_data=2521", 2523: "timeout 100 s", 2524: "cancel user_data=2523",
    2525: "cancel user_data=2521, again", 2526: "cancel user_data=2520, never submitted",
    2527: "recv (socket A), IOSQE_IO_LINK", 2528: "nop, linked behind 2527", 2529: "cancel user_data=2528 (linked)",
    2531: "recv (socket A)", 2532: "cancel user_data=2531, ALL", 2533: "cancel user_data=2531, ALL, again",
    2541: "recv (socket A)", 2542: "recv (socket A)", 2543: "recv (slot 0: socket B)", 2544: "timeout 100 s",
    2545: "read (empty pipe)", 2546: "cancel_fd socket A", 2547: "cancel_fd socket A, ALL",
    2548: "cancel_fd slot 0, FD_FIXED", 2549: "cancel ANY", 2551: "multishot recv", 2552: "cancel user_data=2551",
    2561: "recv (socket A)", 2571: "splice (socket A -> pipe)", 2572: "splice (socket B -> pipe)",
    2573: "cancel user_data=2572", 2574: "cancel user_data=2572, ALL", 2575: "splice (socket B -> pipe), queued",
    2576: "cancel user_data=2575, ALL",
]

@MainActor func prepare(_ userData: UInt64, _ prep: (UnsafeMutablePointer<io_uring_sqe>) -> Void) {
    guard let sqe = io_uring_get_sqe(ring) else { stop("io_uring_get_sqe: the SQ is full") }
    prep(sqe)
    io_uring_sqe_set_data64(sqe, userData)
}
/// The next CQE (a copy), waited for 5 s at most: a wait that ends otherwise stops the lesson.
@MainActor func nextCQE() -> io_uring_cqe {
    var cqe: UnsafeMutablePointer<io_uring_cqe>?, limit = __kernel_timespec(tv_sec: 5, tv_nsec: 0)
    let ret = io_uring_wait_cqe_timeout(ring, &cqe, &limit)
    guard ret == 0, let cqe else { stop("io_uring_wait_cqe_timeout returned \(describe(res: ret))\(ret == -ETIME ? ": no CQE within 5 s" : "")") }
    defer { io_uring_cqe_seen(ring, cqe) }
    return cqe.pointee
}
var cqeNumber = 0  // the CQEs' arrival order within a section
@MainActor func section(_ title: String) { print(title); cqeNumber = 0 }
/// Submit what is queued (`submitted` SQEs), then wait for `count` CQEs and print each as it arrives.
@discardableResult @MainActor
func submitAndReap(_ submitted: Int, _ count: Int) -> [io_uring_cqe] {
    if submitted > 0, case let ret = io_uring_submit(ring), ret != submitted {
        stop("io_uring_submit returned \(describe(res: ret)), expected \(submitted)")
    }
    return (0..<count).map { _ in
        let cqe = nextCQE()
        cqeNumber += 1
        printCQE(cqe, "CQE \(cqeNumber): \(names[cqe.user_data] ?? "?")")
        return cqe
    }
}
@MainActor func sendText(_ text: String, to fd: Int32, _ name: String) {
    guard send(fd, text, text.utf8.count, Int32(MSG_NOSIGNAL)) == text.utf8.count else { stop("send: \(describe(res: -errno))") }
    print("wrote \(quoted(text.utf8)) to \(name)")
}

// MARK: - 2. Cancel by user_data
//
// io_uring_prep_cancel64(sqe, user_data, 0) stops one request with that user_data: a recv in
// the poll table, a timer in the timeouts, each submitted before its cancel. Then three -ENOENT:
// a user_data whose CQE we have read, one never used, and a nop in flight where no cancel looks,
// linked behind a recv (IOSQE_IO_LINK). Data for the recv lets both complete.

section("2. cancel by user_data: io_uring_prep_cancel64(sqe, user_data, 0)")
prepare(2521) { io_uring_prep_recv($0, socketA, buffer(0), 64, 0) }
submitAndReap(1, 0)
prepare(2522) { io_uring_prep_cancel64($0, 2521, 0) }
submitAndReap(1, 2)
prepare(2523) { io_uring_prep_timeout($0, farAway, 0, 0) }
submitAndReap(1, 0)
prepare(2524) { io_uring_prep_cancel64($0, 2523, 0) }
submitAndReap(1, 2)
prepare(2525) { io_uring_prep_cancel64($0, 2521, 0) }
prepare(2526) { io_uring_prep_cancel64($0, 2520, 0) }
submitAndReap(2, 2)
prepare(2527) { io_uring_prep_recv($0, socketA, buffer(1), 64, 0); io_uring_sqe_set_flags($0, IOSQE_IO_LINK) }
prepare(2528) { io_uring_prep_nop($0) }
submitAndReap(2, 0)
prepare(2529) { io_uring_prep_cancel64($0, 2528, 0) }
submitAndReap(1, 1)
print("CQEs ready: \(io_uring_cq_ready(ring))")
sendText("hi\n", to: peerA, "socket A")
submitAndReap(0, 2)

// MARK: - 3. IORING_ASYNC_CANCEL_ALL: every request with that user_data
//
// Three recvs on socket A share 2531. Without a flag a cancel stops the first it finds; with
// IORING_ASYNC_CANCEL_ALL (5.19) every one, and its res is the count. Finding nothing is then
// res 0, not -ENOENT.

section("3. IORING_ASYNC_CANCEL_ALL: three recvs share user_data=2531")
for n in 1...3 { prepare(2531) { io_uring_prep_recv($0, socketA, buffer(n), 64, 0) } }
submitAndReap(3, 0)
prepare(2532) { io_uring_prep_cancel64($0, 2531, Int32(IORING_ASYNC_CANCEL_ALL)) }
submitAndReap(1, 4)
prepare(2533) { io_uring_prep_cancel64($0, 2531, Int32(IORING_ASYNC_CANCEL_ALL)) }
submitAndReap(1, 1)

// MARK: - 4. IORING_ASYNC_CANCEL_FD, _FD_FIXED and _ANY
//
// io_uring_prep_cancel_fd(sqe, fd, flags) sets IORING_ASYNC_CANCEL_FD (5.19): requests whose
// file is that fd's file, whatever their user_data (timeouts have no file). _FD_FIXED: a slot of
// the file table (lesson 13). IORING_ASYNC_CANCEL_ANY: every request of the ring; implies ALL.

section("4. IORING_ASYNC_CANCEL_FD, _FD_FIXED, _ANY: five requests in flight")
var slots: [Int32] = [socketB]
let registered = io_uring_register_files(ring, &slots, 1)  // the kernel copies the array
guard registered == 0 else { stop("io_uring_register_files returned \(describe(res: registered))") }
prepare(2541) { io_uring_prep_recv($0, socketA, buffer(4), 64, 0) }
prepare(2542) { io_uring_prep_recv($0, socketA, buffer(5), 64, 0) }
prepare(2543) { io_uring_prep_recv($0, 0, buffer(6), 64, 0); io_uring_sqe_set_flags($0, IOSQE_FIXED_FILE) }
prepare(2544) { io_uring_prep_timeout($0, farAway, 0, 0) }
prepare(2545) { io_uring_prep_read($0, pipeFDs[0], buffer(7), 64, 0) }
submitAndReap(5, 0)
prepare(2546) { io_uring_prep_cancel_fd($0, socketA, 0) }
submitAndReap(1, 2)
prepare(2547) { io_uring_prep_cancel_fd($0, socketA, IORING_ASYNC_CANCEL_ALL) }
submitAndReap(1, 2)
prepare(2548) { io_uring_prep_cancel_fd($0, 0, IORING_ASYNC_CANCEL_FD_FIXED) }
submitAndReap(1, 2)
prepare(2549) { io_uring_prep_cancel64($0, 0, Int32(IORING_ASYNC_CANCEL_ANY)) }
submitAndReap(1, 3)
_ = io_uring_unregister_files(ring)

// MARK: - 5. Cancelling a multishot recv
//
// A multishot recv (lesson 22) on TCP takes buffers from a ring of two (LabNet's makeBufferRing).
// Two messages use both, none is given back; then the cancel. The recv's last CQE lacks F_MORE:
// -ECANCELED if still armed (6.5+), or -ENOBUFS if it tried another receive at once and found
// no buffer (6.1), and then the cancel finds nothing. The loop reads until both have ended.

section("5. cancelling a multishot recv: TCP on 127.0.0.1, a buffer ring of 2 buffers")
let (listener, port, _) = listenOnLoopback(ring, port: 0)
heldFds.append(listener)
let client = plainConnection(port: port)
guard client >= 0 else { stop("connect to 127.0.0.1:\(port): \(describe(res: client))") }
heldFds.append(client)
let server = accept(listener, nil, nil)  // the connection is not the subject: a plain accept(2)
guard server >= 0 else { stop("accept: \(describe(res: -errno))") }
heldFds.append(server)
let bufferRing = makeBufferRing(ring, entries: 2, bufferSize: 64, group: 25)
prepare(2551) {
    io_uring_prep_recv_multishot($0, server, nil, 0, 0)
    io_uring_sqe_set_flags($0, IOSQE_BUFFER_SELECT)
    $0.pointee.buf_group = 25
}
submitAndReap(1, 0)
var multishotEnded = false
for message in ["first\n", "second\n"] {
    guard send(client, message, message.utf8.count, Int32(MSG_NOSIGNAL)) == message.utf8.count else { stop("send: \(describe(res: -errno))") }
    let cqe = submitAndReap(0, 1)[0]
    if cqe.res > 0 && cqe.flags & IORING_CQE_F_BUFFER != 0 {
        let bid = UInt16(cqe.flags >> IORING_CQE_BUFFER_SHIFT)
        print("  buffer \(bid) holds \(quoted(UnsafeRawBufferPointer(start: bufferRing.buffer(bid), count: Int(cqe.res))))")
    }
    multishotEnded = multishotEnded || cqe.flags & IORING_CQE_F_MORE == 0
}
print("both buffers used and none given back; now the cancel")
prepare(2552) { io_uring_prep_cancel64($0, 2551, 0) }
submitAndReap(1, 0)
var cancelAnswered = false
while !cancelAnswered || !multishotEnded {
    let cqe = submitAndReap(0, 1)[0]
    if cqe.user_data == 2552 { cancelAnswered = true } else { multishotEnded = cqe.flags & IORING_CQE_F_MORE == 0 }
}
print("the multishot recv has ended: its last CQE came without F_MORE")
_ = bufferRing.free()  // nothing selects from group 25 any more

// MARK: - 6. io_uring_register_sync_cancel: the search inside a system call
//
// io_uring_register_sync_cancel(ring, &reg) takes a struct io_uring_sync_cancel_reg: addr (the
// user_data), fd, flags (IORING_ASYNC_CANCEL_*), timeout (how long to wait for a running target;
// {-1, -1}: no limit). No SQE, no cancel CQE: it returns the answer, the target's CQE in the CQ.

section("6. io_uring_register_sync_cancel: no SQE, the call returns the answer")
prepare(2561) { io_uring_prep_recv($0, socketA, buffer(0), 64, 0) }
submitAndReap(1, 0)
@MainActor func syncCancel(_ userData: UInt64, flags: UInt32 = 0, timeout: __kernel_timespec) -> (ret: Int32, milliseconds: Int64) {
    var reg = io_uring_sync_cancel_reg()  // the kernel copies it during the call; pad stays zero
    (reg.addr, reg.flags, reg.timeout) = (userData, flags, timeout)
    let started = ContinuousClock.now
    let ret = io_uring_register_sync_cancel(ring, &reg)
    let elapsed = (ContinuousClock.now - started).components
    return (ret, elapsed.seconds * 1000 + elapsed.attoseconds / 1_000_000_000_000_000)
}
let oneSecond = __kernel_timespec(tv_sec: 1, tv_nsec: 0)
var answer = syncCancel(2561, timeout: oneSecond)
print("io_uring_register_sync_cancel(user_data=2561, timeout 1 s) = \(describe(res: answer.ret)); CQEs ready: \(io_uring_cq_ready(ring))")
submitAndReap(0, 1)
answer = syncCancel(2561, timeout: oneSecond)
print("io_uring_register_sync_cancel(user_data=2561, timeout 1 s) = \(describe(res: answer.ret))")

// MARK: - 7. Requests on io-wq workers: -EALREADY, counts that are not CQE counts, -ETIME
//
// A splice runs on an io-wq worker (iou-wrk-PID, a kernel thread of this process); we allow
// two. The first, from empty socket A into the pipe, sleeps waiting for data holding the pipe's
// lock; the second, from socket B (7 bytes), waits for that lock, a wait no signal interrupts.
// Once both sleep (/proc/self/task/*/wchan; an idle worker's is io_wq_worker), later splices
// wait in io-wq's queue. Then the cancels, async and sync; data on socket A ends both splices.

section("7. requests on io-wq workers (two at most) and in io-wq's queue")
var limits: [UInt32] = [0, 2]  // [bounded, unbound]; 0: unchanged. The kernel copies the array.
let limited = io_uring_register_iowq_max_workers(ring, &limits)
guard limited == 0 else { stop("io_uring_register_iowq_max_workers returned \(describe(res: limited))") }
/// Where each io-wq worker of this process that is busy with a request sleeps.
func workersAsleep() -> [String] {
    guard let dir = opendir("/proc/self/task") else { return [] }
    defer { closedir(dir) }
    var found: [String] = []
    while let entry = readdir(dir) {
        let tid = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard readLines("/proc/self/task/\(tid)/comm")?.first?.hasPrefix("iou-wrk") == true,
              let wchan = readLines("/proc/self/task/\(tid)/wchan")?.first, !["0", "io_wq_worker"].contains(wchan) else { continue }
        found.append(wchan)
    }
    return found
}
@MainActor func waitUntilAsleep(_ count: Int) {
    var asleep = workersAsleep(), tries = 0
    while asleep.count < count && tries < 2000 { usleep(1000); asleep = workersAsleep(); tries += 1 }  // 2 s at most
    guard asleep.count == count else { stop("expected \(count) io-wq workers asleep in a request, found \(asleep.count)") }
    print("io-wq workers asleep in a request: \(asleep.count) (\(asleep.joined(separator: ", ")))")
}
guard send(peerB, "queued\n", 7, Int32(MSG_NOSIGNAL)) == 7 else { stop("send: \(describe(res: -errno))") }
prepare(2571) { io_uring_prep_splice($0, socketA, -1, pipeFDs[1], -1, 64, 0) }
submitAndReap(1, 0)
print("submitted: splice (socket A, empty -> pipe), user_data=2571")
waitUntilAsleep(1)
prepare(2572) { io_uring_prep_splice($0, socketB, -1, pipeFDs[1], -1, 64, 0) }
submitAndReap(1, 0)
print("submitted: splice (socket B, 7 bytes -> pipe), user_data=2572")
waitUntilAsleep(2)
prepare(2573) { io_uring_prep_cancel64($0, 2572, 0) }
submitAndReap(1, 1)
@MainActor func queueTwoSplices(_ userData: UInt64) {  // no worker is free: they wait in io-wq's queue
    for _ in 1...2 { prepare(userData) { io_uring_prep_splice($0, socketB, -1, pipeFDs[1], -1, 64, 0) } }
}
queueTwoSplices(2575)
prepare(2576) { io_uring_prep_cancel64($0, 2575, Int32(IORING_ASYNC_CANCEL_ALL)) }
submitAndReap(3, 3)  // both taken off the queue in one look: counted once
queueTwoSplices(2572)
prepare(2574) { io_uring_prep_cancel64($0, 2572, Int32(IORING_ASYNC_CANCEL_ALL)) }
submitAndReap(3, 3)  // 2572 now names one running and two queued: the look finds one running, counts none
print("CQEs ready: \(io_uring_cq_ready(ring))")
answer = syncCancel(2572, flags: IORING_ASYNC_CANCEL_ALL, timeout: oneSecond)
print("io_uring_register_sync_cancel(user_data=2572, ALL, timeout 1 s) = \(describe(res: answer.ret)) after \(answer.milliseconds) ms")
waitUntilAsleep(2)
answer = syncCancel(2572, timeout: __kernel_timespec(tv_sec: 0, tv_nsec: 20_000_000))
print("io_uring_register_sync_cancel(user_data=2572, timeout 20 ms) = \(describe(res: answer.ret)) after \(answer.milliseconds) ms")
sendText("go\n", to: peerA, "socket A")
for cqe in (0..<2).map({ _ in nextCQE() }).sorted(by: { $0.user_data < $1.user_data }) {  // they come in either order
    printCQE(cqe, names[cqe.user_data] ?? "?")
}
_ = fcntl(pipeFDs[0], F_SETFL, O_NONBLOCK)  // an empty pipe reads as -EAGAIN, not a wait without end
let piped = read(pipeFDs[0], buffer(0), 64)
print("the pipe holds \(quoted(UnsafeRawBufferPointer(start: buffer(0), count: max(piped, 0))))")

// MARK: - 8. Cleaning up: every request has completed, nothing points into our memory.

for fd in heldFds { close(fd) }
buffers.deallocate()
farAway.deallocate()
destroyRing(ring)
