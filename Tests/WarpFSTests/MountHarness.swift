#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
@_exported import TestSupport

/// Test file helpers on real paths (Glibc, no Foundation).
enum FileIO {
    static func write(_ path: String, _ data: [UInt8], flags: Int32 = O_WRONLY | O_CREAT | O_TRUNC, mode: mode_t = 0o644) throws {
        let fd = open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Errno(errno, "open \(path)") }
        defer { close(fd) }
        var done = 0
        while done < data.count {
            let n = data[done...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard n > 0 else { throw Errno(errno, "write \(path)") }
            done += n
        }
    }

    static func read(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(errno, "open \(path)") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n < 0 { throw Errno(errno, "read \(path)") }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    static func pwrite(_ fd: Int32, _ data: [UInt8], _ off: Int) throws {
        // As a program writes: after a short count (the kernel may split a
        // write into requests), the rest; errno only from a failed call.
        var done = 0
        while done < data.count {
            let n = data[done...].withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(off + done)) }
            guard n > 0 else { throw Errno(n < 0 ? errno : EIO, "pwrite at \(off + done) (\(done) of \(data.count) bytes written)") }
            done += n
        }
    }

    static func pread(_ fd: Int32, _ count: Int, _ off: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = buf[done...].withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress, $0.count, off_t(off + done)) }
            if n < 0 { throw Errno(errno, "pread at \(off)") }
            if n == 0 { break }
            done += n
        }
        return Array(buf[0..<done])
    }

    /// Inverts the byte at `offset` of the file at `path` (damage for tests).
    static func flipByte(_ path: String, at offset: Int) throws {
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw Errno(errno, path) }
        defer { close(fd) }
        var b = try pread(fd, 1, offset)
        b[0] ^= 0xFF
        try pwrite(fd, b, offset)
    }

    static func stat(_ path: String) throws -> Glibc.stat {
        var st = Glibc.stat()
        guard lstat(path, &st) == 0 else { throw Errno(errno, "stat \(path)") }
        return st
    }

    static func exists(_ path: String) -> Bool {
        var st = Glibc.stat()
        return lstat(path, &st) == 0
    }

    static func list(_ path: String) throws -> [String] {
        guard let d = opendir(path) else { throw Errno(errno, "opendir \(path)") }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let n = String(cString: wd_dirent_name(e))
            if n != "." && n != ".." { names.append(n) }
        }
        return names.sorted()
    }
}

struct Errno: Error, CustomStringConvertible, Equatable {
    let code: Int32
    let what: String
    init(_ code: Int32, _ what: String) { self.code = code; self.what = what }
    var description: String { "\(what): \(String(cString: strerror(code))) (\(code))" }
    static func == (a: Errno, b: Errno) -> Bool { a.code == b.code }
}

/// Deterministic data generators.
struct Rng {
    var s: UInt64
    init(_ seed: UInt64) { s = seed | 1 }
    mutating func next() -> UInt64 {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27
        return s &* 0x2545_F491_4F6C_DD1D
    }
    mutating func int(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }
    /// Text-like bytes that compress well.
    mutating func text(_ n: Int) -> [UInt8] {
        let words = ["block", "queue", "engine", "the", "of", "compress", "file", "system", "warp", "drive", "\n"]
        var out: [UInt8] = []
        while out.count < n { out += Array(words[int(words.count)].utf8); out.append(32) }
        return Array(out.prefix(n))
    }
}

/// Where the built `warpfs` is: beside the test bundle.
let warpfsBinary: String = {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, 4095)
    let exe = String(decoding: buf[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
    return dir + "/warpfs"
}()

func makeTempDir(_ prefix: String = "warpfs-test") -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    return String(cString: mkdtemp(&template)!)
}

func removeTree(_ path: String) {
    _ = runCommand(["/bin/rm", "-rf", path])
}

func isMounted(_ path: String) -> Bool {
    guard let f = fopen("/proc/self/mountinfo", "r") else { return false }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 8192)
    while fgets(&line, Int32(line.count), f) != nil {
        let s = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let fields = s.split(separator: " ")
        if fields.count > 4 && fields[4] == path { return true }
    }
    return false
}

/// A real WarpFS mount in a temporary directory: `warpfs mount -f` as a
/// child process, unmounted and cleaned up by `close()` in every path.
final class TestMount {
    let root: String
    let backing: String
    let mountpoint: String
    let logPath: String
    private(set) var pid: pid_t = 0
    let options: String
    /// A command the file-system process runs under (e.g. setpriv with
    /// another real uid), or empty.
    let launcher: [String]

    init(options: String = "", backing existing: String? = nil, launcher: [String] = []) throws {
        root = makeTempDir()
        backing = existing ?? root + "/backing"
        mountpoint = root + "/mnt"
        logPath = root + "/warpfs.log"
        self.options = options
        self.launcher = launcher
        if existing == nil { mkdir(backing, 0o755) }
        mkdir(mountpoint, 0o755)
        try start()
    }

    func start() throws {
        var args = launcher + [warpfsBinary, "mount", backing, mountpoint, "-f", "-o", "log=" + logPath]
        if !options.isEmpty { args += ["-o", options] }
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var p: pid_t = 0
        // The file-system process must not inherit descriptors the tests hold
        // open (on other mounts: it would keep them busy at their unmount).
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        wd_spawn_close_from(&actions, 3)
        let rc = posix_spawn(&p, args[0], &actions, nil, cargs, environ)
        guard rc == 0 else { throw Errno(rc, "spawn \(args[0])") }
        pid = p
        let deadline = wd_now_ns() + 20_000_000_000
        while !isMounted(mountpoint) {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid {
                pid = 0
                throw Errno(EIO, "warpfs exited (status \(status)) before mounting: \(log)")
            }
            if wd_now_ns() > deadline { throw Errno(ETIMEDOUT, "mount did not appear") }
            usleep(5000)
        }
    }

    /// Unmounts and waits for the file-system process to exit.
    func unmount() {
        // Escalate until nothing is mounted: normal, lazy, then the kernel's umount.
        for attempt in [["/bin/fusermount3", "-u"], ["/bin/fusermount3", "-u", "-z"], ["/bin/umount", "-l"]] where isMounted(mountpoint) {
            _ = runCommand(attempt + [mountpoint])
        }
        if pid > 0 {
            let deadline = wd_now_ns() + 20_000_000_000
            var status: Int32 = 0
            while waitpid(pid, &status, WNOHANG) == 0 {
                if wd_now_ns() > deadline { kill(pid, SIGKILL); waitpid(pid, &status, 0); break }
                usleep(5000)
            }
            // A file-system process that died of a crash signal fails the test, with its log.
            let signal = status & 0x7F
            if signal != 0 && signal != 0x7F && [SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGABRT, SIGFPE].contains(signal) {
                Issue.record("warpfs died of signal \(signal); its log:\n\(String(log.suffix(6000)))")
            }
            pid = 0
        }
    }

    func remount() throws {
        unmount()
        try start()
    }

    func close() {
        unmount()
        removeTree(root)
    }

    var log: String { (try? FileIO.read(logPath)).map { String(decoding: $0, as: UTF8.self) } ?? "" }

    func path(_ name: String) -> String { mountpoint + "/" + name }
    func backingPath(_ name: String) -> String { backing + "/" + name }
}

/// Runs `body` with a fresh mount that is always unmounted and removed.
func withMount<T>(options: String = "", _ body: (TestMount) throws -> T) throws -> T {
    let m = try TestMount(options: options)
    defer { m.close() }
    return try body(m)
}

/// VmHWM of a process in KiB (0 when it cannot be read).
func peakResidentKiB(_ pid: pid_t) -> Int {
    guard let raw = try? FileIO.read("/proc/\(pid)/status") else { return 0 }
    let status = String(decoding: raw, as: UTF8.self)
    return status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") }
        .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
}
