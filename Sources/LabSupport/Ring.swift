// Owning a ring: create it once, keep it at one address, tear it down exactly once.
//
// `struct io_uring` is liburing's view of the rings the kernel shares with us: pointers into
// the mmap'd memory (which never moves) and liburing's own bookkeeping, such as its private SQ
// tail, which every call reads and updates. So there must be exactly one copy, used by every
// call: a Swift `var ring = io_uring()` passed as `&ring` is only guaranteed to be the same
// memory for the length of one call. `makeRing` therefore allocates it on the heap and hands
// back that pointer, which is what the lessons pass to `io_uring_get_sqe(ring)`,
// `io_uring_submit(ring)` and the rest, exactly as C code passes `&ring`. (The kernel itself
// never sees this struct; the buffers a request names are what the kernel touches later.)

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLiburing
import Synchronization

/// A ring created with `io_uring_queue_init_params`. `params` is in-out: the kernel writes back
/// what it granted (`sq_entries`, `cq_entries`, `features`, the mmap offsets).
///
/// If io_uring is unavailable here (`-EPERM`, `-ENOSYS`) this explains why and exits 77; any
/// other failure exits 1 with the errno name. The ring is torn down by `destroyRing` or, if
/// the lesson never calls it, when the program exits.
public func makeRing(entries: UInt32, params: inout io_uring_params) -> UnsafeMutablePointer<io_uring> {
    let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
    ring.initialize(to: io_uring())
    let ret = io_uring_queue_init_params(entries, ring, &params)
    if ret < 0 {
        ring.deallocate()
        exitBecauseSetupFailed(ret, entries: entries)
    }
    let release = releaseAtExit {
        io_uring_queue_exit(ring)  // unmaps the rings and closes the ring fd
        ring.deallocate()
    }
    ringReleases.withLock { $0[UInt(bitPattern: ring)] = release }
    return ring
}

/// A ring with default parameters, or with the given `IORING_SETUP_*` flags.
public func makeRing(entries: UInt32, flags: UInt32 = 0) -> UnsafeMutablePointer<io_uring> {
    var params = io_uring_params()
    params.flags = flags
    return makeRing(entries: entries, params: &params)
}

/// `io_uring_queue_exit` now rather than at exit. Call it only once no request is in flight:
/// tearing a ring down cancels whatever it still had pending.
public func destroyRing(_ ring: UnsafeMutablePointer<io_uring>) {
    guard let release = ringReleases.withLock({ $0.removeValue(forKey: UInt(bitPattern: ring)) }) else {
        return
    }
    releaseNow(release)
}

// Which exit-time release belongs to which ring (keyed by the ring's address).
private let ringReleases = Mutex<[UInt: Int]>([:])

/// What a failed `io_uring_setup` means, said plainly. `-EPERM` and `-ENOSYS` mean io_uring
/// itself is unavailable on this machine, so the lesson is skipped (exit 77); anything else
/// is a failure (exit 1).
public func exitBecauseSetupFailed(_ ret: Int32, entries: UInt32) -> Never {
    switch -ret {
    case EPERM:
        switch readSysctl("/proc/sys/kernel/io_uring_disabled") {
        case "2":
            skip("io_uring_setup returned -EPERM: io_uring is disabled on this machine "
                + "(sysctl kernel.io_uring_disabled = 2). As root: sysctl -w kernel.io_uring_disabled=0")
        case "1":
            skip("io_uring_setup returned -EPERM: io_uring is limited to the group in "
                + "kernel.io_uring_group (sysctl kernel.io_uring_disabled = 1). Join that group, "
                + "or as root: sysctl -w kernel.io_uring_disabled=0")
        default:
            skip("io_uring_setup returned -EPERM: a seccomp profile forbids io_uring here "
                + "(Docker's and Podman's default profiles do). Run the container with "
                + "--security-opt seccomp=unconfined, or a profile that allows io_uring_setup, "
                + "io_uring_enter and io_uring_register")
        }
    case ENOSYS:
        skip("io_uring_setup returned -ENOSYS: this kernel has no io_uring (it needs Linux 5.1+ "
            + "built with CONFIG_IO_URING), or a seccomp filter hides the system call")
    case ENOMEM:
        fail("io_uring_setup(\(entries)) returned \(describe(res: ret)): the ring's memory could "
            + "not be allocated; without CAP_IPC_LOCK it counts against RLIMIT_MEMLOCK (see ulimit -l)")
    default:
        fail("io_uring_setup(\(entries)) returned \(describe(res: ret))")
    }
}

/// The first line of a /proc/sys file, or nil if it cannot be read (older kernels lack some).
public func readSysctl(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    guard fgets(&line, Int32(line.count), file) != nil else { return nil }
    let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return text.trimmingNewline
}

extension String {
    var trimmingNewline: String {
        var text = self
        while text.last == "\n" { text.removeLast() }
        return text
    }
}
