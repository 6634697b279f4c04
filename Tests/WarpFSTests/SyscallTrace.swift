#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// `strace` attached to a running file-system process, recording some
/// system calls with the path behind each descriptor (`-y`): evidence that
/// the backing file system was asked for something (an fsync) that no
/// result visible through the mount can show short of a crash.
/// Needs strace (scripts/setup installs it) and root.
final class SyscallTrace {
    private var tracer: pid_t = 0
    private let output: String
    private let messages: String

    /// Attaches to every thread of `pid` and returns once strace reports
    /// them attached; `calls` is strace's `-e trace=` list; files go in `dir`.
    init(pid: pid_t, calls: String, dir: String) throws {
        guard let strace = (["/usr/bin/strace", "/bin/strace"] as [String]).first(where: { access($0, X_OK) == 0 }) else {
            throw Errno(ENOENT, "strace is not installed (scripts/setup installs it)")
        }
        output = dir + "/strace-\(pid).out"
        messages = dir + "/strace-\(pid).err"
        let fd = open(messages, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Errno(errno, "open \(messages)") }
        defer { close(fd) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fd, 1)
        posix_spawn_file_actions_adddup2(&actions, fd, 2)
        // The test threads block SIGINT; strace keeps the mask it is given
        // and would never see the SIGINT that detaches it.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), interrupt = sigset_t()
        sigemptyset(&none)
        sigemptyset(&interrupt)
        sigaddset(&interrupt, SIGINT)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &interrupt)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let args = [strace, "-f", "-y", "-e", "trace=" + calls, "-o", output, "-p", "\(pid)"]
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        wd_spawn_close_from(&actions, 3)   // no stray descriptors (of mounts) in the child
        let rc = posix_spawn(&tracer, strace, &actions, &attr, cargs, environ)
        guard rc == 0 else { throw Errno(rc, "spawn strace") }
        // "Process N attached with T threads" comes once all threads are
        // attached; threads started later are followed (-f).
        let deadline = wd_now_ns() + 20_000_000_000
        while !text(messages).contains("attached") {
            var status: Int32 = 0
            if waitpid(tracer, &status, WNOHANG) == tracer {
                tracer = 0
                throw Errno(EPERM, "strace exited before attaching: \(text(messages))")
            }
            if wd_now_ns() > deadline { _ = stop(); throw Errno(ETIMEDOUT, "strace did not attach: \(text(messages))") }
            usleep(5000)
        }
    }

    /// Detaches and returns the recorded lines ("TID  call(args) = result").
    /// Detach first, exit after: strace inherits the test process's open
    /// descriptors, and closing one of a file on the traced mount while the
    /// tracee is still stopped would wait for ever (hence O_CLOEXEC in the
    /// tests that trace, and SIGKILL only as a last resort).
    func stop() -> [String] {
        if tracer > 0 {
            kill(tracer, SIGINT)
            let deadline = wd_now_ns() + 10_000_000_000
            var status: Int32 = 0
            while waitpid(tracer, &status, WNOHANG) == 0 {
                if wd_now_ns() > deadline { kill(tracer, SIGKILL); waitpid(tracer, &status, 0); break }
                usleep(2000)
            }
            tracer = 0
        }
        return text(output).split(separator: "\n").map(String.init)
    }

    deinit { _ = stop() }

    private func text(_ path: String) -> String {
        (try? FileIO.read(path)).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// The recorded calls named `call` whose first argument is a descriptor of `path`.
    static func calls(_ lines: [String], _ call: String, on path: String) -> [String] {
        lines.filter { $0.contains(" \(call)(") && $0.contains("<\(path)>") }
    }
}
