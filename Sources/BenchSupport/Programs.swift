// Running the system's programs (mount, mkfs, tar, ...) from a bench.
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// What a program printed and how it ended.
public struct ProgramResult: Sendable {
    /// The exit code, 128 + the signal when a signal ended it, -1 when it could not be started.
    public let status: Int32
    /// Standard output and standard error together.
    public let output: String
    public var succeeded: Bool { status == 0 }
    public init(status: Int32, output: String) { self.status = status; self.output = output }
    /// The output's last non-empty line, for a one-line reason.
    public var lastLine: String {
        output.split(separator: "\n").last.map { String($0).trimmingSpaces } ?? "exit status \(status)"
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// Runs `path` with `arguments` to completion, capturing its output. The
/// child starts with no signal blocked (whatever the calling thread
/// blocks) and no descriptors but 0-2.
public func runCapturing(_ path: String, _ arguments: [String]) -> ProgramResult {
    var fds: [Int32] = [0, 0]
    guard wd_pipe_cloexec(&fds) == 0 else { return ProgramResult(status: -1, output: "pipe: \(String(cString: strerror(errno)))") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
    wd_spawn_close_from(&actions, 3)
    let cargs = ([path] + arguments).map { strdup($0) } + [nil]
    defer { cargs.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = withUnblockedSignals { attr in posix_spawn(&pid, path, &actions, &attr, cargs, environ) }
    posix_spawn_file_actions_destroy(&actions)
    close(fds[1])
    guard rc == 0 else {
        close(fds[0])
        return ProgramResult(status: -1, output: "cannot run \(path): \(String(cString: strerror(rc)))")
    }
    let out = readToEnd(fds[0])
    close(fds[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return ProgramResult(status: code, output: String(decoding: out, as: UTF8.self))
}

/// The executable `name` in PATH or in the sbin and bin directories (which
/// a root shell has but a test's environment may not); nil when none.
/// Spawn attributes that give the child an empty signal mask (a caller
/// blocking SIGTERM or SIGINT for its own handling must not pass that on),
/// handed to `body` and destroyed after it.
public func withUnblockedSignals<R>(_ body: (inout posix_spawnattr_t) throws -> R) rethrows -> R {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var none = sigset_t()
    sigemptyset(&none)
    posix_spawnattr_setsigmask(&attr, &none)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
    return try body(&attr)
}

/// Everything readable from `fd` until end of file (reads interrupted by a
/// signal are retried; another error ends the read).
public func readToEnd(_ fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fd, &buf, buf.count)
        if n > 0 { out += buf[0..<n]; continue }
        if n < 0 && errno == EINTR { continue }
        return out
    }
}

public func findProgram(_ name: String) -> String? {
    let path = getenv("PATH").map { String(cString: $0) } ?? ""
    let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    for d in dirs where !d.isEmpty {
        let p = d + "/" + name
        if access(p, X_OK) == 0 { return p }
    }
    return nil
}
