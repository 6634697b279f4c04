#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpFSCore
import WarpFSFormat

/// Where a mount's messages go (syslog in the background, `-o log=FILE`,
/// standard error with `-f`) and how repeated ones are held back, on real
/// mounts.
@Suite(.serialized) struct LoggingTests {
    /// A background mount without `log=` writes to syslog: ident `warpfs`
    /// with its pid, facility daemon, the mount point before each message.
    /// The machine has no syslog daemon, and the test touches no global
    /// /dev/log: in a private mount namespace (unshare -m), /dev is
    /// overlaid with a writable layer in the test's directory and the
    /// test's own datagram socket is bound over /dev/log there; the mount,
    /// a write and the unmount run inside it. The namespace, its /dev and
    /// the mount end with its last process.
    @Test func aBackgroundMountLogsToSyslogWithItsMountPoint() throws {
        let root = makeTempDir("warpfs-syslog")
        let listener = try DatagramListener(root + "/log.sock")
        defer {
            listener.close()
            stopServers(under: root)
            removeTree(root)
        }
        for d in ["b", "m", "up", "work"] { mkdir(root + "/" + d, 0o755) }
        let script = """
            set -e
            R="$1"; W="$2"
            mount -t overlay overlay -o lowerdir=/dev,upperdir="$R/up",workdir="$R/work" /dev
            touch /dev/log
            mount --bind "$R/log.sock" /dev/log
            trap '"$W" unmount "$R/m" 2>/dev/null || true' EXIT
            "$W" mount "$R/b" "$R/m"
            echo written > "$R/m/f"
            test "$(cat "$R/m/f")" = written
            "$W" unmount "$R/m"
            trap - EXIT
            """
        let r = runCommand(["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", root, warpfsBinary])
        #expect(r.status == 0, "\(r.output)")
        let messages = listener.drain()
        // "<30>" is LOG_DAEMON | LOG_INFO; glibc puts the time between it and the ident.
        let mounted = messages.first { $0.contains("warpfs[") && $0.contains("]: \(root)/m: mounted \(root)/b at \(root)/m") }
        #expect(mounted?.hasPrefix("<30>") == true, "\(messages)")
        #expect(messages.contains { $0.contains("]: \(root)/m: unmounted \(root)/m") }, "\(messages)")
        // Each message names the mount point.
        #expect(!messages.isEmpty && messages.allSatisfy { $0.contains("]: \(root)/m: ") }, "\(messages)")
    }

    /// `-o log=FILE` still sends a background mount's messages to the file.
    @Test func aBackgroundMountWithALogFileWritesTheFile() throws {
        let root = makeTempDir()
        defer {
            if isMounted(root + "/m") { _ = runCommand(["/bin/fusermount3", "-u", "-z", root + "/m"]) }
            stopServers(under: root)
            removeTree(root)
        }
        mkdir(root + "/b", 0o755)
        mkdir(root + "/m", 0o755)
        let mounted = runCommand([warpfsBinary, "mount", root + "/b", root + "/m", "-o", "log=" + root + "/warpfs.log"])
        try #require(mounted.status == 0, "\(mounted.output)")
        try FileIO.write(root + "/m/f", Array("written".utf8))
        let unmounted = runCommand([warpfsBinary, "unmount", root + "/m"])
        #expect(unmounted.status == 0, "\(unmounted.output)")
        let log = String(decoding: try FileIO.read(root + "/warpfs.log"), as: UTF8.self)
        #expect(log.contains(" warpfs INFO: mounted \(root)/b at \(root)/m") && log.contains(" warpfs INFO: unmounted \(root)/m"), "\(log)")
    }

    /// A foreground mount without `log=` writes to standard error, each
    /// line with the time and level.
    @Test func aForegroundMountWritesToStandardError() throws {
        let root = makeTempDir()
        mkdir(root + "/b", 0o755)
        mkdir(root + "/m", 0o755)
        var pid: pid_t = 0
        defer {
            if isMounted(root + "/m") { _ = runCommand(["/bin/fusermount3", "-u", "-z", root + "/m"]) }
            if pid > 0 { var s: Int32 = 0; waitpid(pid, &s, 0) }
            removeTree(root)
        }
        let args = ["/bin/sh", "-c", "exec \"$0\" mount -f \"$1\" \"$2\" 2>\"$3\"", warpfsBinary, root + "/b", root + "/m", root + "/stderr"]
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        wd_spawn_close_from(&actions, 3)
        try #require(posix_spawn(&pid, args[0], &actions, nil, cargs, environ) == 0)
        let deadline = wd_now_ns() + 20_000_000_000
        while !isMounted(root + "/m") && wd_now_ns() < deadline { usleep(5000) }
        try #require(isMounted(root + "/m"), "not mounted: \(String(decoding: (try? FileIO.read(root + "/stderr")) ?? [], as: UTF8.self))")
        _ = runCommand(["/bin/fusermount3", "-u", root + "/m"])
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        pid = 0
        let err = String(decoding: try FileIO.read(root + "/stderr"), as: UTF8.self)
        let line = err.split(separator: "\n").first { $0.contains("mounted \(root)/b at \(root)/m") }.map(String.init) ?? ""
        // 2025-01-31T12:00:00Z warpfs INFO: mounted ...
        #expect(line.count > 21 && Array(line.utf8)[10] == UInt8(ascii: "T") && line.dropFirst(20).hasPrefix(" warpfs INFO: mounted"), "\(err)")
        #expect(err.contains("warpfs INFO: unmounted \(root)/m"), "\(err)")
    }

    /// A damaged block read a thousand times fails a thousand times and is
    /// logged once (the key is the file and block), while the counters see
    /// every EIO.
    @Test func aThousandReadsOfADamagedBlockAreOneLine() throws {
        try withMount(options: "block_size=64k") { m in
            var r = Rng(9)
            let data = r.text(4 * (64 << 10))
            try FileIO.write(m.path("c"), data)
            m.unmount()
            let slot = try #require(try liveSlots(m.backingPath("c"), blockSize: 64 << 10).first { $0.block == 1 })
            let payload = try containerLayout(m.backingPath("c")).payloadOffset(block: 1, slot: slot.slot, header: slot.header)
            try flipBit(m.backingPath("c"), offset: payload + 100, bit: 3)
            try m.start()
            let fd = open(m.path("c"), O_RDONLY)
            try #require(fd >= 0)
            defer { close(fd) }
            var buf = [UInt8](repeating: 0, count: 4096)
            var failures = 0
            for _ in 0..<1000 where pread(fd, &buf, buf.count, off_t(64 << 10)) == -1 && errno == EIO { failures += 1 }
            #expect(failures == 1000)
            #expect(try FileIO.pread(fd, 1000, 0) == Array(data[0..<1000]))
            var raw = [UInt8](repeating: 0, count: 65536)
            let n = getxattr(m.mountpoint, WarpFileSystem.statsAttribute, &raw, raw.count)
            let stats = try #require(IOStatistics.Snapshot(record: String(decoding: raw[0..<max(n, 0)], as: UTF8.self)))
            #expect((stats[.eio] ?? 0) >= 1000, "\(stats.record)")
            let lines = m.log.split(separator: "\n").filter { $0.contains("c: block 1 ") }
            #expect(lines.count == 1 && lines.first?.contains("fails its checksum") == true, "\(m.log)")
        }
    }

    /// The global cap: at most N lines in one second, the rest counted and
    /// reported before the next line admitted.
    @Test func theRateLimiterCapsLinesPerSecond() {
        var limiter = LogRateLimiter(linesPerSecond: 3)
        var answers: [String] = []
        for second: Int64 in [10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11] {
            let (admit, before) = limiter.admit(nowSeconds: second)
            answers.append("\(admit ? "y" : "n")\(before)")
        }
        #expect(answers == ["y0", "y0", "y0", "n0", "n0", "n0", "n0", "n0", "y5", "y0", "y0", "n0"])
        let left = limiter.takeSuppressed(), after = limiter.takeSuppressed()
        #expect(left == 1 && after == 0)
        #expect(Log.suppressedLine(5) == "5 messages suppressed (more than \(Log.linesPerSecond) a second)")
    }

    /// Once-per-block keys: remembered up to the capacity, oldest forgotten first.
    @Test func recentKeysForgetTheOldestFirst() {
        var keys = RecentKeys(capacity: 3)
        let answers = ["a", "b", "c", "a", "c", "d", "a", "d"].map { keys.insert($0) }
        // "d" makes the set forget "a", the oldest; "a" again makes it forget "b".
        #expect(answers == [true, true, true, false, false, true, true, false])
        #expect(keys.count == 3)
    }
}

/// A Unix datagram socket bound at a path: a stand-in for the syslog daemon.
final class DatagramListener {
    let path: String
    private var fd: Int32

    init(_ path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Errno(errno, "socket") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw Errno(ENAMETOOLONG, path) }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { let e = Errno(errno, "bind \(path)"); Glibc.close(fd); throw e }
    }

    /// The messages waiting, without waiting for more.
    func drain() -> [String] {
        var out: [String] = []
        var buf = [UInt8](repeating: 0, count: 8192)
        while true {
            let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            if n <= 0 { break }
            out.append(String(decoding: buf[0..<n], as: UTF8.self))
        }
        return out
    }

    func close() {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        unlink(path)
    }
}

/// Ends (SIGTERM, then SIGKILL) `warpfs` processes whose command line names
/// a path under `root`: a server a failed test left behind, also one in
/// another mount namespace, which the test cannot unmount from here.
func stopServers(under root: String) {
    func servers() -> [pid_t] {
        guard let d = opendir("/proc") else { return [] }
        defer { closedir(d) }
        var pids: [pid_t] = []
        while let e = readdir(d) {
            let name = String(cString: wd_dirent_name(e))
            guard let pid = pid_t(name), pid != getpid(), let raw = try? FileIO.read("/proc/\(pid)/cmdline") else { continue }
            let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.first?.hasSuffix("warpfs") == true && args.contains(where: { $0.hasPrefix(root + "/") }) { pids.append(pid) }
        }
        return pids
    }
    for pid in servers() { kill(pid, SIGTERM) }
    let deadline = wd_now_ns() + 10_000_000_000
    while !servers().isEmpty && wd_now_ns() < deadline { usleep(10_000) }
    for pid in servers() { kill(pid, SIGKILL) }
}
