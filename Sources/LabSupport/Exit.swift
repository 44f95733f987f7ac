// How a lesson ends: 0 success, 77 skipped (`SKIP:`), 1 failure (one `error:` line), as in liburing's
// tests. What it holds is listed in one place, `held`: rings and temp dirs. At exit (not after a Swift
// trap) the rings are torn down and the dirs removed; unwritable output (/dev/full) is an error. SIGINT,
// SIGTERM and SIGPIPE remove the dirs and end the program by that signal (the kernel frees the rest).

import Glibc
import CLiburing
import Synchronization

/// Print `error: <message>` to standard error and exit with status 1.
public func fail(_ message: String) -> Never {
    fflush(nil)  // what the lesson printed so far comes first, even when stdout is a pipe
    failed.store(true, ordering: .relaxed)  // one error line: no second one about stdout at exit
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
let held = Mutex(Held()), failed = Atomic<Bool>(false)

/// Install the exit handler, once (`lessonArguments`, `makeRing` and `makeTempDir` do).
func holdUntilExit() { _ = (fdsAtStart, exitHandler) }
private let fdsAtStart = Set((3..<4096).filter { fcntl($0, F_GETFD) >= 0 })  // inherited: not ours
private let exitHandler: Void = {
    atexit {
        let flushed = fflush(nil) == 0 && lab_stdout_error() == 0, error = errno  // now, or earlier
        held.withLock { held in  // under the lock, so that a signal meanwhile waits for the end
            for ring in held.rings.reversed() { io_uring_queue_exit(ring); ring.deallocate() }  // unmap, close
            for dir in held.tempDirs.reversed() { removeTree(dir) }
            held = Held()
        }
        if !flushed && !failed.load(ordering: .relaxed) { printError("cannot write standard output: \(error > 0 ? describe(res: -error) : "a write failed")") }
        // The tests set LAB_CHECK_FDS: an fd the lesson opened (by syscall or ring) must be closed.
        let open = getenv("LAB_CHECK_FDS") == nil ? [] : (3..<4096).filter { fcntl($0, F_GETFD) >= 0 && !fdsAtStart.contains($0) }
        if !open.isEmpty { printError("fds open at exit: \(open.map(String.init).joined(separator: " "))") }
        if !flushed || !open.isEmpty { _exit(1) }
    }
}()

// Removing a directory tree is not async-signal-safe, so no signal handler may do it: a thread of
// ours does. SIGINT and SIGTERM are blocked in every other thread (threads inherit the mask), so
// the kernel hands them to it. SIGPIPE goes to the thread whose write failed: a tiny handler passes
// it on and parks that thread, as the signal thread parks the lesson's thread for the other two.
nonisolated(unsafe) private var signalThread = pthread_t(), lessonThread = pthread_t()
private let parked = Atomic<Bool>(false)
private func signalSet(_ signals: Int32...) -> sigset_t {
    signals.reduce(into: sigset_t()) { _ = sigaddset(&$0, $1) }  // sigset_t() is the empty set
}

func removeTempDirsOnSignals() { _ = signalsHandled }  // once; makeTempDir calls it, on the lesson's thread
private let signalsHandled: Void = {
    var signals = signalSet(SIGINT, SIGTERM, SIGPIPE), pipe = signalSet(SIGPIPE)
    pthread_sigmask(SIG_BLOCK, &signals, nil)  // the new thread starts with all three blocked
    lessonThread = pthread_self()
    pthread_create(&signalThread, nil, { _ in
        var signals = signalSet(SIGINT, SIGTERM, SIGPIPE), received: Int32 = 0
        sigwait(&signals, &received)
        held.withLock { held in  // and keep the lock: no new directory from now on
            if received != SIGPIPE { pthread_kill(lessonThread, SIGPIPE) }
            for _ in 0..<10_000 where !parked.load(ordering: .acquiring) { usleep(100) }
            for dir in held.tempDirs.reversed() { removeTree(dir) }
            signal(received, SIG_DFL)  // then die of it, as if it had never been caught
            var only = signalSet(received)
            pthread_sigmask(SIG_UNBLOCK, &only, nil)
            raise(received)
        }
        return nil
    }, nil)
    let inherited = signal(SIGPIPE) { signal in
        pthread_kill(signalThread, signal)  // for a real SIGPIPE; a parking one stays pending
        parked.store(true, ordering: .releasing)
        while true { pause() }
    }
    if unsafeBitCast(inherited, to: Int.self) == 1 { signal(SIGPIPE, SIG_IGN) }  // was SIG_IGN: keep it
    pthread_sigmask(SIG_UNBLOCK, &pipe, nil)  // SIGPIPE again, on the lesson's thread only
}()
