// Undoing what a bench set up (mounts, loop devices, temporary files) on
// every way out: normal end, thrown error, exit(), SIGINT, SIGTERM, SIGHUP.
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// Actions that undo what a bench made, run in reverse order of
/// registration, each at most once: by the bench itself at its end, by
/// exit() (an atexit handler), or on Ctrl-C.
///
/// Setting something up and registering its undoing happen in one
/// `critical` section, so an interruption finds either neither or both.
/// On a signal the bench's own thread stops at its next
/// `checkInterrupted()` (so nothing writes into a directory while its
/// mount goes away), runs the actions and exits; if it does not get there
/// within `graceSeconds` (stuck in a system call), the signal thread runs
/// them itself, unmounting lazily what is still busy.
public final class Cleanup: @unchecked Sendable {
    public static let shared = Cleanup()
    public static let graceSeconds: UInt64 = 20

    /// The signal received; 0 while none.
    private let interrupted = Atomic<Int32>(0)

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var actions: [(id: Int, run: () -> Void)] = []
    private var nextID = 0
    private var atExitInstalled = false
    private var signalsInstalled = false

    private init() {
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_RECURSIVE))
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
    }

    /// Runs `body` with the registry locked: no cleanup runs meanwhile.
    public func critical<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Registers `action`; returns its id for `run(_:)` or `forget(_:)`.
    @discardableResult
    public func add(_ action: @escaping () -> Void) -> Int {
        critical {
            if !atExitInstalled {
                atExitInstalled = true
                atexit { Cleanup.shared.runAll() }
            }
            nextID += 1
            actions.append((nextID, action))
            return nextID
        }
    }

    /// Runs the action `id` now (if it has not run) and forgets it.
    public func run(_ id: Int) {
        critical {
            guard let i = actions.firstIndex(where: { $0.id == id }) else { return }
            let a = actions.remove(at: i)
            a.run()
        }
    }

    /// Forgets the action `id` without running it.
    public func forget(_ id: Int) {
        critical { actions.removeAll { $0.id == id } }
    }

    /// Runs every registered action, the last registered first.
    public func runAll() {
        critical {
            while let a = actions.popLast() { a.run() }
        }
    }

    /// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call it
    /// before any other thread starts, so all inherit the mask) and starts
    /// a thread that waits for them: on one, it prints `message`, runs
    /// every action and exits with status 128 + the signal. Programs
    /// started with `runCapturing` get an empty mask back.
    public func handleSignals(_ message: String) {
        let install = critical { () -> Bool in
            defer { signalsInstalled = true }
            return !signalsInstalled
        }
        guard install else { return }
        var set = Cleanup.signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        _ = spawn {
            var set = Cleanup.signalSet()
            var sig: Int32 = 0
            while sigwait(&set, &sig) != 0 {}
            eprint("\n" + message + " (signal \(sig))")
            Cleanup.shared.interrupted.store(sig, ordering: .sequentiallyConsistent)
            let deadline = wd_now_ns() + Cleanup.graceSeconds * 1_000_000_000
            while wd_now_ns() < deadline { usleep(20_000) }
            Cleanup.shared.runAll()
            _exit(128 + sig)
        }
    }

    /// The signal that interrupted the bench; nil while none has.
    public var signalReceived: Int32? {
        let sig = interrupted.load(ordering: .relaxed)
        return sig == 0 ? nil : sig
    }

    /// After a signal: throws `Interrupted`. The bench's thread calls it
    /// between operations; its error unwinds through the `defer`s that close
    /// files, so the mounts are no longer busy when the actions run.
    @inline(__always)
    public func checkInterrupted() throws(Interrupted) {
        let sig = interrupted.load(ordering: .relaxed)
        if sig != 0 { throw Interrupted(signal: sig) }
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, s) }
        return set
    }
}

/// A signal arrived: the bench stops, undoes what it made and exits with 128 + `signal`.
public struct Interrupted: Error, CustomStringConvertible {
    public let signal: Int32
    public var description: String { "interrupted by signal \(signal)" }
}
