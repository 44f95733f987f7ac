// How a lesson ends: 0 success, 77 skipped (a `SKIP:` line), 1 failure (one `error:` line), as in
// liburing's tests. What a lesson holds is listed in one place, `held`: its rings and temp dirs.
// At exit, however it comes (`fail` and `skip` too), the rings are torn down and the dirs removed,
// and output that could not be written (/dev/full) is an error. SIGINT, SIGTERM and SIGPIPE remove
// the dirs and end the program by that signal (a dying process's rings and fds the kernel frees).

import Glibc
import CLiburing
import Synchronization

/// Print `error: <message>` to standard error and exit with status 1.
public func fail(_ message: String) -> Never {
    fflush(nil)  // what the lesson printed so far comes first, even when stdout is a pipe
    printError(message)
    exit(1)
}

/// Print `SKIP: <reason>` and exit with status 77: this machine lacks something the lesson needs.
public func skip(_ reason: String) -> Never {
    print("SKIP: \(reason)")
    exit(77)  // as in liburing's tests and automake
}

private func printError(_ message: String) {
    _ = Array("error: \(message)\n".utf8).withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

struct Held: @unchecked Sendable {  // a Ring is a pointer, not Sendable: the Mutex guards it
    var rings: [Ring] = [], tempDirs: [String] = []
}
let held = Mutex(Held())

/// Install the exit handler, once (`lessonArguments`, `makeRing` and `makeTempDir` do).
func holdUntilExit() { _ = exitHandler }
private let exitHandler: Void = {
    atexit {
        let flushed = fflush(nil) == 0, error = errno
        let (rings, dirs) = held.withLock { held in defer { held = Held() }; return (held.rings, held.tempDirs) }
        for ring in rings.reversed() {
            io_uring_queue_exit(ring)  // unmaps the rings and closes the ring fd
            ring.deallocate()
        }
        for dir in dirs.reversed() { removeTree(dir) }
        if !flushed {
            printError("cannot write standard output: \(describe(res: -error))")
            _exit(1)
        }
    }
}()

// Removing a directory tree is not async-signal-safe, so no signal handler may do it: a thread of
// ours does. SIGINT and SIGTERM are blocked in every other thread (threads inherit the mask), so
// the kernel hands them to it; SIGPIPE goes to the thread whose write failed, and a tiny handler
// passes it on.
nonisolated(unsafe) private var signalThread = pthread_t()
private func signalSet(_ signals: Int32...) -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in signals { sigaddset(&set, signal) }
    return set
}

/// Start the signal thread, once (`makeTempDir` does).
func removeTempDirsOnSignals() { _ = signalsHandled }
private let signalsHandled: Void = {
    var signals = signalSet(SIGINT, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &signals, nil)
    pthread_create(&signalThread, nil, { _ in
        var signals = signalSet(SIGINT, SIGTERM, SIGPIPE), received: Int32 = 0
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        sigwait(&signals, &received)
        for dir in held.withLock({ $0.tempDirs }).reversed() { removeTree(dir) }
        signal(received, SIG_DFL)  // then die of it, as if it had never been caught
        pthread_sigmask(SIG_UNBLOCK, &signals, nil)
        raise(received)
        return nil
    }, nil)
    signal(SIGPIPE) { signal in
        pthread_kill(signalThread, signal)
        while true { pause() }
    }
}()
