#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// Runs `args` (an absolute path first) to completion and returns its exit
/// code (the low byte of the wait status) and what it wrote to stdout and
/// stderr together.
public func runCommand(_ args: [String]) -> (status: Int32, output: String) {
    // Close-on-exec, so a child another thread spawns meanwhile does not
    // keep the write end open (and this read waiting for that child).
    var fds: [Int32] = [0, 0]
    guard wd_pipe_cloexec(&fds) == 0 else { return (-1, "pipe failed: \(errno)") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
    posix_spawn_file_actions_addclose(&actions, fds[0])
    posix_spawn_file_actions_addclose(&actions, fds[1])
    wd_spawn_close_from(&actions, 3)
    let cargs = args.map { strdup($0) } + [nil]
    defer { cargs.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, args[0], &actions, nil, cargs, environ)
    posix_spawn_file_actions_destroy(&actions)
    close(fds[1])
    guard rc == 0 else { close(fds[0]); return (-1, "spawn failed: \(rc)") }
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = read(fds[0], &buf, buf.count)
        if n > 0 { out += buf[0..<n]; continue }
        if n < 0 && errno == EINTR { continue }
        break
    }
    close(fds[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return ((status >> 8) & 0xff, String(decoding: out, as: UTF8.self))
}
