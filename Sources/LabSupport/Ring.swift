// Owning a ring. `struct io_uring` holds pointers into the rings the kernel shares with us and
// liburing's own bookkeeping (its private SQ tail), which every call updates: there must be one
// copy at one address, and `&ring` on a Swift `var` is that only for the length of one call. So
// `makeRing` puts it on the heap and returns the pointer, which lessons pass as C passes `&ring`.

import Glibc
import CLiburing

public typealias Ring = UnsafeMutablePointer<io_uring>

/// `io_uring_queue_init_params` (`params` gets what the kernel granted); torn down at exit if not before.
public func makeRing(entries: UInt32, params: inout io_uring_params) -> Ring {
    holdUntilExit()
    let ring = Ring.allocate(capacity: 1)
    ring.initialize(to: io_uring())
    let ret = io_uring_queue_init_params(entries, ring, &params)
    if ret < 0 { ring.deallocate(); exitBecauseSetupFailed(ret, entries: entries) }
    held.withLock { $0.rings.append(ring) }
    return ring
}

/// A ring with default parameters, or with the given `IORING_SETUP_*` flags.
public func makeRing(entries: UInt32, flags: UInt32 = 0) -> Ring {
    var params = io_uring_params()
    params.flags = flags
    return makeRing(entries: entries, params: &params)
}

/// `io_uring_queue_exit` (unmap the rings, close the ring fd): only when nothing is in flight.
public func destroyRing(_ ring: Ring) {
    guard held.withLock({ held in held.rings.firstIndex(of: ring).map { held.rings.remove(at: $0) } }) != nil else { return }
    io_uring_queue_exit(ring)
    ring.deallocate()
}

/// A failed `io_uring_setup`: `-EPERM` or `-ENOSYS` means io_uring is unavailable here, and the
/// lesson is skipped (exit 77); lesson 01 shows why. Anything else is a failure (exit 1).
public func exitBecauseSetupFailed(_ ret: Int32, entries: UInt32) -> Never {
    let what = "io_uring_setup(\(entries)) returned \(describe(res: ret))"
    if ret == -EPERM || ret == -ENOSYS {
        skip("\(what): io_uring is unavailable here. Linux 5.1+ has it, unless sysctl kernel.io_uring_disabled "
            + "(6.6+) limits it or a seccomp profile forbids it (Docker's and Podman's default profiles do)")
    }
    fail(what + (ret == -ENOMEM ? ": without CAP_IPC_LOCK the ring's memory may count against RLIMIT_MEMLOCK (ulimit -l)" : ""))
}

/// The lines of a text file (in /proc or /sys, say), or nil if it cannot be read.
public func readLines(_ path: String) -> [String]? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 4096)
    while case let count = fread(&chunk, 1, chunk.count, file), count > 0 { bytes += chunk[..<count] }
    return String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)  // blank lines left out
}
