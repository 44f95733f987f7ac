// Lesson 15: SQPOLL, submitting without a system call
//
// So far every io_uring_submit made one io_uring_enter(2) call: cheap for a batch, but still a
// system call. With IORING_SETUP_SQPOLL the kernel starts a thread of its own for the ring, the
// SQ thread, which watches the SQ tail in shared memory. While it is awake, putting an SQE in the
// ring is all it takes: io_uring_submit only moves the SQ tail, and the thread picks the SQE up.
// No system call at all.
//
// The thread does not spin forever. When it has found no work for `sq_thread_idle`
// milliseconds it sets IORING_SQ_NEED_WAKEUP in the SQ ring's flags word and goes to sleep.
// From then on a submission needs a wake-up: io_uring_submit sees the flag and calls
// io_uring_enter(2) with IORING_ENTER_SQ_WAKEUP; the woken thread clears the flag.
//
// This lesson submits 10 NOPs one at a time and, before each, reads the flags word itself:
// the first NOP wakes the sleeping thread, the next eight go in while it is awake, then we let
// it idle until NEED_WAKEUP appears, and the last NOP wakes it again. `strace -f -e
// trace=io_uring_enter` confirms it: two io_uring_enter calls for ten submissions.
//
// Read next: man 2 io_uring_setup (IORING_SETUP_SQPOLL, IORING_SETUP_SQ_AFF), man 3
// io_uring_submit, man 2 io_uring_enter (IORING_ENTER_SQ_WAKEUP), man 3 io_uring_peek_cqe.

import Glibc
import CLiburing
import LabSupport
import Synchronization

_ = lessonArguments(usage: "lesson-15-sqpoll", max: 0)

let idleMilliseconds: UInt32 = 100  // sq_thread_idle
let clock = ContinuousClock()

// MARK: - 1. May this process use SQPOLL?
//
// SQPOLL got easier in three steps:
//   before 5.11  only with CAP_SYS_ADMIN (root), and only on registered files (lesson 13);
//   5.11         ordinary fds too, announced by the feature bit IORING_FEAT_SQPOLL_NONFIXED,
//                and CAP_SYS_NICE is enough instead of CAP_SYS_ADMIN;
//   5.13         no privilege at all (kernel commit 548d819d1eed, "io_uring: allow SQPOLL
//                without CAP_SYS_ADMIN or CAP_SYS_NICE"; some older stable kernels took it too).
// Without the privilege, setup fails with -EPERM. A plain ring tells us the features (and, if
// io_uring itself is unavailable here, makeRing says why and skips). Then we try one SQPOLL
// ring ourselves: -EPERM from it, after a plain ring worked, is the privilege check of a kernel
// before 5.13, not seccomp or the io_uring_disabled sysctl that makeRing would blame.
// (makeRing exits when setup fails; for this try, and for section 7's, the failure is the
// answer we want, so `trySetup` calls liburing itself.)

/// io_uring_queue_init_params on a ring made only for its answer: 0 (the ring is torn down at
/// once) or the -errno of the refusal.
func trySetup(entries: UInt32, _ params: inout io_uring_params) -> Int32 {
    let ring = Ring.allocate(capacity: 1)
    defer { ring.deallocate() }
    ring.initialize(to: io_uring())
    let ret = io_uring_queue_init_params(entries, ring, &params)
    if ret == 0 { io_uring_queue_exit(ring) }
    return ret
}

var plainParams = io_uring_params()
let plainRing = makeRing(entries: 1, params: &plainParams)
destroyRing(plainRing)
guard plainParams.features & IORING_FEAT_SQPOLL_NONFIXED != 0 else {
    skip("this kernel lacks IORING_FEAT_SQPOLL_NONFIXED (Linux 5.11): SQPOLL needs root "
        + "(CAP_SYS_ADMIN) and registered files here, and this lesson uses neither")
}
print("IORING_FEAT_SQPOLL_NONFIXED: yes (Linux 5.11+): an SQPOLL ring may use ordinary fds")
// Before 5.12 the SQ thread is a kernel thread outside our process; this lesson watches it in
// /proc/self/task, which needs the SQ thread of 5.12, announced by IORING_FEAT_NATIVE_WORKERS.
guard plainParams.features & IORING_FEAT_NATIVE_WORKERS != 0 else {
    skip("this kernel lacks IORING_FEAT_NATIVE_WORKERS (Linux 5.12): its SQ thread is a kernel "
        + "thread outside this process, which the lesson cannot watch in /proc/self/task")
}

var probeParams = io_uring_params()
probeParams.flags = IORING_SETUP_SQPOLL
if trySetup(entries: 1, &probeParams) == -EPERM {
    skip("io_uring_setup with IORING_SETUP_SQPOLL returned -EPERM (-1), while a plain ring works: "
        + "on Linux 5.11 and 5.12 SQPOLL needs CAP_SYS_NICE (or root); since 5.13 it needs no privilege. "
        + "Run as root, or give the binary the capability: sudo setcap cap_sys_nice+ep <binary>")
}

// MARK: - 2. An SQPOLL ring
//
// `params.flags = IORING_SETUP_SQPOLL` asks for the SQ thread; `params.sq_thread_idle` is how
// many milliseconds it keeps polling after its last piece of work before it sleeps. The kernel
// counts that time in jiffies (4 ms each at HZ=250), so "idle" is accurate to a few
// milliseconds.
//
// Since Linux 5.12 the SQ thread is a thread of our own process, named iou-sqp-<pid>: it shows
// up in /proc/self/task, and the ring's /proc/self/fdinfo entry gives its tid (SqThread).
// It lives as long as the ring: destroyRing ends it.

var params = io_uring_params()
params.flags = IORING_SETUP_SQPOLL
params.sq_thread_idle = idleMilliseconds
let ring = makeRing(entries: 8, params: &params)
print("SQPOLL ring: sq_entries=\(params.sq_entries) cq_entries=\(params.cq_entries) "
    + "sq_thread_idle=\(params.sq_thread_idle) ms")

// MARK: - 3. The flags word, read from shared memory
//
// The SQ ring's flags word lives in the memory the kernel shares with us; liburing keeps a
// pointer to it in `ring.sq.kflags`. The SQ thread changes it with atomic operations, at any
// moment, from another CPU. Reading it with a plain `kflags.pointee` would be a data race
// (Swift and C both say so) and the optimizer could keep a stale copy in a register. liburing's
// C code reads it with IO_URING_READ_ONCE, a macro Swift cannot import, which forces one real
// load each time. The Synchronization module gives us that and more: Atomic<UInt32> has
// exactly UInt32's layout, so we view the word as an Atomic for the length of one load, with
// acquiring ordering (our later reads of the rings cannot move before it; stronger than a
// single flag check needs, never wrong). No C helper is needed.

/// The SQ ring's flags word, as the kernel last set it.
func sqFlags(_ ring: Ring) -> UInt32 {
    guard let flagsWord = ring.pointee.sq.kflags else { fail("the ring has no SQ flags pointer") }
    return flagsWord.withMemoryRebound(to: Atomic<UInt32>.self, capacity: 1) {
        $0.pointee.load(ordering: .acquiring)
    }
}

/// `0x1 (NEED_WAKEUP)`, or `0x0`.
func describe(sqFlags flags: UInt32) -> String {
    let known: [(UInt32, String)] = [
        (IORING_SQ_NEED_WAKEUP, "NEED_WAKEUP"),  // 5.1: the SQ thread sleeps; wake it to submit
        (IORING_SQ_CQ_OVERFLOW, "CQ_OVERFLOW"),  // 5.8: completions wait in the overflow list (lesson 06)
        (IORING_SQ_TASKRUN, "TASKRUN"),          // 5.19: task work waits (with IORING_SETUP_TASKRUN_FLAG)
    ]
    let names = known.filter { flags & $0.0 != 0 }.map(\.1)
    return "0x" + String(flags, radix: 16) + (names.isEmpty ? "" : " (" + names.joined(separator: "|") + ")")
}

// A thread that starts with nothing to do goes to sleep: on Linux 6.18 at once. We wait until
// the flag says so (for at most sq_thread_idle and 2 s more): then the first submission below
// needs a wake-up, whatever the scheduler ran first.
let startedWaiting = clock.now
while sqFlags(ring) & IORING_SQ_NEED_WAKEUP == 0 {
    if clock.now - startedWaiting > .seconds(2) + .milliseconds(Int(idleMilliseconds)) {
        fail("the SQ thread never set IORING_SQ_NEED_WAKEUP after starting with nothing to do")
    }
    usleep(1000)
}
print("before any submission: sq flags \(describe(sqFlags: sqFlags(ring))): nothing to do, the thread sleeps")

// Now that the thread has run, fdinfo names it (until it first runs, SqThread shows the pid
// of the task that created the ring) and it has given itself its name. Its status file says
// where it may run. These /proc files are lines of `Name:<tab>value` (read with LabSupport's
// readLines); `procField` picks out one value.

/// The value on the `name:` line of a /proc file (`SqThread:\t1234` gives "1234"), or nil.
func procField(_ name: String, in path: String) -> String? {
    readLines(path)?.first { $0.hasPrefix(name + ":") }
        .map { String($0.dropFirst(name.count + 1).drop { $0 == " " || $0 == "\t" }) }
}

let threadID = procField("SqThread", in: "/proc/self/fdinfo/\(ring.pointee.ring_fd)") ?? "?"
let threadName = readLines("/proc/self/task/\(threadID)/comm")?.first ?? "?"
let threadCPUs = procField("Cpus_allowed_list", in: "/proc/self/task/\(threadID)/status") ?? "?"
print("SQ thread: tid \(threadID), named \(threadName), may run on CPUs \(threadCPUs)")

// MARK: - 4. Submitting, and reaping by polling the CQ
//
// Each NOP goes in the usual way: io_uring_get_sqe, io_uring_prep_nop, io_uring_submit. On an
// SQPOLL ring io_uring_submit (liburing 2.3, src/queue.c) stores the new SQ tail, then reads the
// flags word (after a full memory barrier, so the kernel sees the tail before we look):
//
//   NEED_WAKEUP clear  it returns at once: no system call. The thread will find the SQE.
//   NEED_WAKEUP set    it calls io_uring_enter(fd, 1, 0, IORING_ENTER_SQ_WAKEUP), which only
//                      wakes the thread and returns.
//
// Its return value is the number of SQEs put in the ring, not a sign that the kernel has seen
// them yet. We read the flags ourselves just before each call to count the submissions that
// needed a wake-up (liburing's own read comes a few instructions later).
//
// Reaping must not enter the kernel either, or we would only have moved the system call.
// io_uring_wait_cqe enters (with IORING_ENTER_GETEVENTS) when no CQE is there yet; so we poll
// instead: io_uring_peek_cqe only reads the CQ ring and returns -EAGAIN while it is empty. We
// spin on the CQ as the SQ thread spins on the SQ: two CPUs busy to save system calls, which
// is the trade SQPOLL makes. The spin is bounded: a few seconds without a CQE is a failure.
// (On a busy machine where our thread and the SQ thread share a CPU, each round trip waits for
// the scheduler to switch between them: milliseconds instead of microseconds. That is why
// SQPOLL programs give the SQ thread a CPU of its own; section 7.)

/// Spin on io_uring_peek_cqe until a CQE is there; copy it and hand the slot back.
func spinForCQE(_ ring: Ring, clock: ContinuousClock) -> io_uring_cqe {
    let started = clock.now
    var cqePointer: UnsafeMutablePointer<io_uring_cqe>? = nil
    var spins = 0
    while true {
        let ret = io_uring_peek_cqe(ring, &cqePointer)
        if ret == 0, let cqePointer {
            let cqe = cqePointer.pointee  // copy it before the slot goes back to the kernel
            io_uring_cqe_seen(ring, cqePointer)
            return cqe
        }
        guard ret == -EAGAIN else { fail("io_uring_peek_cqe returned \(describe(res: ret))") }
        spins += 1
        if spins % 1024 == 0 && clock.now - started > .seconds(5) {
            fail("no CQE within 5 s: the SQ thread did not pick up the NOP")
        }
    }
}

var submitted = 0
var wakeUps: [Int] = []  // the NOPs whose submission found NEED_WAKEUP set
var lastSubmission = clock.now

/// One NOP: read the flags, io_uring_submit, spin for the CQE, read the flags again.
func submitNOP(_ number: Int, _ ring: Ring, clock: ContinuousClock,
               submitted: inout Int, wakeUps: inout [Int], lastSubmission: inout ContinuousClock.Instant) {
    // The SQ has 8 entries and holds at most this one NOP: io_uring_get_sqe cannot fail.
    let sqe = getSQE(ring)
    io_uring_prep_nop(sqe)
    io_uring_sqe_set_data64(sqe, UInt64(number))
    let before = sqFlags(ring)
    let needsWakeUp = before & IORING_SQ_NEED_WAKEUP != 0
    lastSubmission = clock.now
    let ret = io_uring_submit(ring)
    checkSubmit(ret, 1)
    submitted += 1
    if needsWakeUp { wakeUps.append(number) }
    let cqe = spinForCQE(ring, clock: clock)
    // The thread posts the CQE a moment before it stores the new SQ head (io_submit_sqes flushes
    // completions, then io_commit_sqring). Until it does, the NOP still counts as in the SQ, and
    // the next io_uring_submit would return 2. On a busy machine that moment can be long: wait.
    while io_uring_sq_ready(ring) != 0 && clock.now - lastSubmission < .seconds(5) {}
    guard cqe.user_data == UInt64(number) else { fail("a CQE with user_data=\(cqe.user_data) matches no NOP") }
    print("NOP \(number): sq flags \(describe(sqFlags: before)) -> "
        + (needsWakeUp ? "wake-up needed" : "no wake-up") + "; io_uring_submit = \(ret); "
        + format(cqe) + "; sq flags now \(describe(sqFlags: sqFlags(ring)))")
}

// MARK: - 5. The first NOP wakes the thread; the next eight find it awake
//
// NOP 1 finds NEED_WAKEUP set, so io_uring_submit makes the wake-up call. The thread wakes,
// clears the flag, then finds the SQE: by the time its CQE is visible to us the flag is clear.
// Having just worked, it now polls for another sq_thread_idle, and NOPs 2 to 9, submitted
// right away, go in without a system call. (Each one follows the previous CQE within
// microseconds, far less than the 100 ms of idle time, and each NOP the thread handles starts
// its idle time afresh, so it cannot doze off in the middle.)

submitNOP(1, ring, clock: clock, submitted: &submitted, wakeUps: &wakeUps, lastSubmission: &lastSubmission)
let wakeUpsBefore = wakeUps.count
for number in 2...9 {
    submitNOP(number, ring, clock: clock, submitted: &submitted, wakeUps: &wakeUps, lastSubmission: &lastSubmission)
}
print("while the thread was awake: 8 submissions, \(wakeUps.count - wakeUpsBefore) wake-ups needed")

// MARK: - 6. Idle: NEED_WAKEUP appears, and a submission wakes the thread again
//
// Now we give it nothing to do and watch the flags word, once a millisecond (usleep is a
// system call, but not io_uring_enter). sq_thread_idle after its last piece of work, the
// thread sets NEED_WAKEUP and sleeps. It uses no CPU now, and it would never notice a new SQE
// by itself: only a wake-up brings it back, which io_uring_submit does for NOP 10.

let idleStarted = lastSubmission
var idleFor: Duration = .zero
while sqFlags(ring) & IORING_SQ_NEED_WAKEUP == 0 {
    idleFor = clock.now - idleStarted
    if idleFor > .seconds(3) { fail("IORING_SQ_NEED_WAKEUP did not appear within 3 s of idling") }
    usleep(1000)
}
idleFor = clock.now - idleStarted
print("idle: sq flags \(describe(sqFlags: sqFlags(ring))) \(Int(idleFor / .milliseconds(1))) ms after the last "
    + "submission (sq_thread_idle=\(idleMilliseconds) ms)")

submitNOP(10, ring, clock: clock, submitted: &submitted, wakeUps: &wakeUps, lastSubmission: &lastSubmission)
print("operations submitted: \(submitted), wake-ups needed: \(wakeUps.count) ("
    + wakeUps.map { "NOP \($0)" }.joined(separator: ", ") + ")")

// Closing the ring ends the SQ thread. The kernel tears a ring down in a work queue, so the
// thread is gone a moment after destroyRing returns; we wait (bounded) to see it go.
destroyRing(ring)
let closedAt = clock.now
while access("/proc/self/task/\(threadID)", F_OK) == 0 && clock.now - closedAt < .seconds(2) {
    usleep(1000)
}
print("after destroyRing: SQ thread \(threadID) "
    + (access("/proc/self/task/\(threadID)", F_OK) == 0 ? "still running after 2 s" : "has exited"))

// MARK: - 7. sq_thread_cpu: a CPU of its own
//
// An SQ thread that polls takes a CPU; with IORING_SETUP_SQ_AFF, `params.sq_thread_cpu` pins it
// to one CPU (man 2 io_uring_setup). Programs pin it away from their own threads, so the two
// spinning sides never wait for each other. The kernel checks that the CPU exists, is online
// and is in this process's cpuset (the cgroup's cpuset.cpus), or setup fails with -EINVAL. The
// affinity that taskset or sched_setaffinity sets is not checked: under `taskset -c 1`, CPU 0
// was accepted on Linux 6.18. We take the first CPU in our own affinity list (0 on most
// machines, 1 under `taskset -c 1`), let the thread start (it sleeps at once, nothing to do),
// and read back where it may run.

let firstCPU = UInt32((procField("Cpus_allowed_list", in: "/proc/self/status") ?? "").prefix { $0.isNumber }) ?? 0
var pinnedParams = io_uring_params()
pinnedParams.flags = IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF
pinnedParams.sq_thread_cpu = firstCPU
pinnedParams.sq_thread_idle = idleMilliseconds
let pinnedRing = makeRing(entries: 8, params: &pinnedParams)
let pinnedStarted = clock.now
while sqFlags(pinnedRing) & IORING_SQ_NEED_WAKEUP == 0 && clock.now - pinnedStarted < .seconds(3) {
    usleep(1000)
}
let pinnedFdinfo = "/proc/self/fdinfo/\(pinnedRing.pointee.ring_fd)"
let pinnedThread = procField("SqThread", in: pinnedFdinfo) ?? "?"
print("SQ_AFF, sq_thread_cpu=\(firstCPU): fdinfo SqThreadCpu \(procField("SqThreadCpu", in: pinnedFdinfo) ?? "?"), "
    + "thread may run on CPUs \(procField("Cpus_allowed_list", in: "/proc/self/task/\(pinnedThread)/status") ?? "?")")
destroyRing(pinnedRing)

// A CPU this machine does not have: the kernel refuses the ring (and creates no thread).
var badParams = io_uring_params()
badParams.flags = IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF
badParams.sq_thread_cpu = 4096
print("SQ_AFF, sq_thread_cpu=4096: io_uring_queue_init_params = \(describe(res: trySetup(entries: 8, &badParams)))")
