// How a lesson ends: 0 success, 77 skipped (with a `SKIP:` line), 1 failure (with one `error:`
// line). These are the conventions of liburing's own test suite (test/helpers.h: T_EXIT_*).
//
// Whatever a lesson still holds when it ends (rings, temp files) is released by an exit
// handler, newest first, so that an early `fail` or `skip` leaves nothing behind either.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// The exit status of a lesson that could not run here, as in liburing's tests and automake.
public let skipExitCode: Int32 = 77

/// Print `error: <message>` to standard error and exit with status 1.
public func fail(_ message: String) -> Never {
    fflush(nil)  // what the lesson printed so far comes first, even when stdout is a pipe
    let line = Array("error: \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(1)
}

/// Print `SKIP: <reason>` and exit with status 77: this machine lacks something the lesson needs.
public func skip(_ reason: String) -> Never {
    print("SKIP: \(reason)")
    exit(skipExitCode)
}

// MARK: - Releasing what a lesson holds at exit

// A release only frees memory, closes fds or removes files, so it may run on any thread.
private struct PendingRelease: @unchecked Sendable {
    let id: Int
    let release: () -> Void
}
private let pendingReleases = Mutex<[PendingRelease]>([])
private let nextReleaseID = Atomic<Int>(1)
private let exitHandlerInstalled = Atomic<Bool>(false)

/// Remember `release` until the program exits (it then runs, newest first) or until the caller
/// runs it early with `releaseNow(id)`. Returns the id to do so.
func releaseAtExit(_ release: @escaping () -> Void) -> Int {
    if exitHandlerInstalled.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
        atexit { runPendingReleases() }
    }
    let id = nextReleaseID.add(1, ordering: .relaxed).oldValue
    pendingReleases.withLock { $0.append(PendingRelease(id: id, release: release)) }
    return id
}

/// Run one remembered release now instead of at exit. Does nothing if it already ran.
func releaseNow(_ id: Int) {
    let pending = pendingReleases.withLock { list -> PendingRelease? in
        guard let index = list.firstIndex(where: { $0.id == id }) else { return nil }
        return list.remove(at: index)
    }
    pending?.release()
}

private func runPendingReleases() {
    while let pending = pendingReleases.withLock({ $0.popLast() }) {
        pending.release()
    }
}
