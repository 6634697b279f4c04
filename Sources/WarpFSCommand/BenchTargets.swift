#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys

/// One place the workloads run, with how to make its caches cold and
/// where its CPU time is counted.
final class BenchTarget {
    let name: String
    let dir: String
    var backing: String?
    var mountpoint: String?
    var options = ""
    var pid: pid_t = 0
    let cleanup: Bool
    var lastRatio: Double?

    init(name: String, dir: String, cleanup: Bool = true) {
        self.name = name
        self.dir = dir
        self.cleanup = cleanup
        mkdir(dir, 0o755)
    }

    static func mount(name: String, root: String, options: String) throws -> BenchTarget {
        let back = root + "/\(name)-backing", mnt = root + "/\(name)"
        mkdir(back, 0o755)
        mkdir(mnt, 0o755)
        let t = BenchTarget(name: name, dir: mnt)
        t.backing = back
        t.mountpoint = mnt
        t.options = options
        try t.start()
        return t
    }

    func start() throws {
        guard let backing, let mountpoint else { return }
        let exe = canonical("/proc/self/exe") ?? CommandLine.arguments[0]
        let args = [exe, "mount", backing, mountpoint, "-f", "-o", options + ",log=" + backing + ".log"]
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        defer { posix_spawnattr_destroy(&attr) }
        guard posix_spawn(&pid, exe, nil, &attr, cargs, environ) == 0 else { throw ValidationError("cannot start \(name)") }
        let deadline = wd_now_ns() + 20_000_000_000
        while !isMountpoint(mountpoint) {
            if wd_now_ns() > deadline { throw ValidationError("\(name) did not mount") }
            usleep(5000)
        }
    }

    func stop() {
        if let mountpoint, isMountpoint(mountpoint) { _ = runProgram("/bin/fusermount3", ["-u", mountpoint]) }
        if pid > 0 { var st: Int32 = 0; waitpid(pid, &st, 0); pid = 0 }
    }

    /// Cold caches: WarpFS targets are remounted (dropping their block
    /// caches); the kernel's page cache is dropped when we are root.
    func makeCold() throws {
        if mountpoint != nil { stop(); try start() }
        sync()
        if let f = fopen("/proc/sys/vm/drop_caches", "w") { fputs("3\n", f); fclose(f) }
    }

    /// CPU seconds used so far by this target's file-system process (0 for plain).
    var cpuSeconds: Double {
        guard pid > 0, let f = fopen("/proc/\(pid)/stat", "r") else { return 0 }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 4096)
        guard fgets(&buf, 4096, f) != nil else { return 0 }
        let s = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let close = s.lastIndex(of: ")") else { return 0 }
        let fields = s[s.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Double(fields[11]), let k = Double(fields[12]) else { return 0 }
        return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func prepare() { mkdir(dir, 0o755) }

    func clean() {
        if let backing {
            // Space used by the data just written, for the achieved ratio.
            lastRatio = ratio(of: backing)
        }
        _ = runProgram("/bin/sh", ["-c", "rm -rf '\(dir)'/* '\(dir)'/.[!.]* 2>/dev/null; true"])
        if cleanup && mountpoint == nil && backing == nil && name != "plain" { rmdir(dir) }
    }

    private func ratio(of dir: String) -> Double? {
        var logical = 0, used = 0
        guard let names = directoryNames(dir) else { return nil }
        for n in names where n == "seq" {
            var st = stat()
            if lstat(dir + "/" + n, &st) == 0 { used += Int(st.st_blocks) * 512 }
            var ms = stat()
            if let mnt = mountpoint, lstat(mnt + "/" + n, &ms) == 0 { logical += Int(ms.st_size) }
        }
        return used > 0 && logical > 0 ? Double(logical) / Double(used) : nil
    }
}
