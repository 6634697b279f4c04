#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys

/// Space a target gave the sequential file just written.
struct SpaceUse {
    /// The file's size.
    var logical: Int
    /// Space allocated for it (for btrfs: data + metadata, from the file system's usage before and after).
    var allocated: Int
    /// For btrfs: the file's data extents alone (`compsize -b`).
    var dataOnly: Int?

    var ratio: Double { allocated > 0 ? Double(logical) / Double(allocated) : .nan }
    var dataOnlyRatio: Double? { dataOnly.map { $0 > 0 ? Double(logical) / Double($0) : .nan } }
}

/// One place the workloads run, with how to make its caches cold, where
/// its CPU time is counted and how its allocated space is measured.
class BenchTarget {
    let name: String
    /// Where the workloads' files go.
    let dir: String

    init(name: String, dir: String) {
        self.name = name
        self.dir = dir
    }

    /// How cold reads are made cold, for the report.
    var coldMethod: String { canDropCaches ? "sync; echo 3 > /proc/sys/vm/drop_caches" : "not cold: not root, caches not dropped" }
    /// Whose CPU time the "CPU s" column counts.
    var cpuMethod: String { "none (the kernel works in the bench's own context)" }
    /// How allocated space is measured.
    var spaceMethod: String { "st_blocks * 512 of the file, against st_size" }

    /// CPU seconds used so far by the target's own file-system work (0 when none is separate).
    var cpuSeconds: Double { 0 }

    func prepare() { mkdir(dir, 0o755) }

    /// Removes what the workloads left.
    func clean() { _ = runProgram("/bin/sh", ["-c", "rm -rf '\(dir)'/* '\(dir)'/.[!.]* 2>/dev/null; true"]) }

    func makeCold() throws {
        sync()
        dropCaches()
    }

    /// Called just before the sequential write.
    func beforeWrite() {}

    /// The space `file` (a name in `dir`, just written and fsynced) takes.
    func space(of file: String) -> SpaceUse? {
        var st = stat()
        guard lstat(dir + "/" + file, &st) == 0 else { return nil }
        return SpaceUse(logical: Int(st.st_size), allocated: Int(st.st_blocks) * 512)
    }

    /// Unmounts and removes what the target made.
    func stop() {}
}

let canDropCaches = getuid() == 0

/// Drops the kernel's clean page cache, dentries and inodes (root only).
func dropCaches() {
    if let f = fopen("/proc/sys/vm/drop_caches", "w") { fputs("3\n", f); fclose(f) }
}

/// The backing file system itself, or an extra directory given on the command line.
final class DirectoryTarget: BenchTarget {
    /// Whether `dir` is removed after each run (an extra target's own subdirectory).
    let removeDir: Bool

    init(name: String, dir: String, removeDir: Bool) {
        self.removeDir = removeDir
        super.init(name: name, dir: dir)
        mkdir(dir, 0o755)
    }

    override func clean() {
        super.clean()
        if removeDir { rmdir(dir) }
    }
}

/// A WarpFS mount of a backing directory, run by `warpfs mount -f` as a child.
final class WarpFSTarget: BenchTarget, @unchecked Sendable {
    let backing: String
    let options: String
    private var pid: pid_t = 0
    private var cleanupID = 0

    init(name: String, root: String, options: String) throws {
        backing = root + "/\(name)-backing"
        self.options = options
        super.init(name: name, dir: root + "/\(name)")
        mkdir(backing, 0o755)
        mkdir(dir, 0o755)
        try start()
    }

    override var coldMethod: String { "remount (drops WarpFS's caches); " + super.coldMethod }
    override var cpuMethod: String { "the warpfs mount process (user + system)" }
    override var spaceMethod: String { "st_blocks * 512 of the backing file, against the size seen through the mount" }

    func start() throws {
        try Cleanup.shared.critical { () throws(ValidationError) in
            let exe = canonical("/proc/self/exe") ?? CommandLine.arguments[0]
            let args = [exe, "mount", backing, dir, "-f", "-o", options + ",log=" + backing + ".log"]
            let cargs = args.map { strdup($0) } + [nil]
            defer { cargs.forEach { free($0) } }
            guard withUnblockedSignals({ attr in posix_spawn(&pid, exe, nil, &attr, cargs, environ) }) == 0 else {
                throw ValidationError("cannot start \(name)")
            }
            cleanupID = Cleanup.shared.add { [self] in unmount() }
            let deadline = wd_now_ns() + 20_000_000_000
            while !isMountpoint(dir) {
                if wd_now_ns() > deadline { throw ValidationError("\(name) did not mount (see \(backing).log)") }
                usleep(5000)
            }
        }
    }

    override func stop() { Cleanup.shared.run(cleanupID) }

    /// The accelerator the mount took, from its log's `mounted` line (a
    /// kernel device or the in-process one: the figures depend on it).
    var accelerator: String {
        let fd = open(backing + ".log", O_RDONLY | O_CLOEXEC)
        let raw = fd < 0 ? "" : String(decoding: readToEnd(fd), as: UTF8.self)
        if fd >= 0 { close(fd) }
        guard let line = raw.split(separator: "\n").last(where: { $0.contains(" mounted ") }),
              let open = line.firstRange(of: " (block ") else { return "unknown (no mounted line in \(backing).log)" }
        return String(line[line.index(after: open.lowerBound)...].dropFirst().dropLast())
    }

    /// Unmounts and waits for the server to store its data and exit. A
    /// busy mount (a file still open, as on an interruption) is detached
    /// lazily and its server told to stop with SIGTERM; a server that did
    /// not mount is stopped the same way, and one that does not exit is killed.
    private func unmount() {
        let mounted = isMountpoint(dir)
        if mounted && runProgram("/bin/fusermount3", ["-u", dir]) != 0 {
            _ = runProgram("/bin/fusermount3", ["-u", "-z", dir])
            if pid > 0 { kill(pid, SIGTERM) }
        }
        guard pid > 0 else { return }
        if !mounted { kill(pid, SIGTERM) }
        var st: Int32 = 0
        func exited(within seconds: UInt64) -> Bool {
            let deadline = wd_now_ns() + seconds * 1_000_000_000
            while wd_now_ns() < deadline {
                if waitpid(pid, &st, WNOHANG) != 0 { return true }
                usleep(5000)
            }
            return false
        }
        if !exited(within: 30) {
            kill(pid, SIGTERM)
            if !exited(within: 5) { kill(pid, SIGKILL); waitpid(pid, &st, 0) }
        }
        pid = 0
    }

    override func makeCold() throws {
        stop()
        try start()
        try super.makeCold()
    }

    override var cpuSeconds: Double { pid > 0 ? processCPUSeconds(pid) : 0 }

    override func space(of file: String) -> SpaceUse? {
        var b = stat(), m = stat()
        guard lstat(backing + "/" + file, &b) == 0, lstat(dir + "/" + file, &m) == 0 else { return nil }
        return SpaceUse(logical: Int(m.st_size), allocated: Int(b.st_blocks) * 512)
    }
}

/// User + system CPU seconds of `pid` (from /proc/PID/stat); 0 when unreadable.
func processCPUSeconds(_ pid: pid_t) -> Double {
    guard let fields = procStat(pid), fields.count > 13, let u = Double(fields[11]), let k = Double(fields[12]) else { return 0 }
    return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// The fields of /proc/PID/stat after "(comm)": field 0 is the state, 1 the parent.
func procStat(_ pid: pid_t) -> [Substring]? {
    let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 1024)
    let n = read(fd, &buf, buf.count)
    guard n > 0 else { return nil }
    let s = String(decoding: buf[0..<n], as: UTF8.self)
    guard let close = s.lastIndex(of: ")") else { return nil }
    return s[s.index(after: close)...].split(separator: " ")
}

/// CPU seconds used so far by all kernel threads (children of kthreadd):
/// where btrfs compresses, decompresses, checksums and where the loop
/// device does its I/O.
func kernelThreadsCPUSeconds() -> Double {
    guard let names = directoryNames("/proc") else { return 0 }
    var ticks = 0.0
    for n in names {
        guard let pid = pid_t(n), let f = procStat(pid), f.count > 13, f[1] == "2" || pid == 2,
              let u = Double(f[11]), let k = Double(f[12]) else { continue }
        ticks += u + k
    }
    return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
}
