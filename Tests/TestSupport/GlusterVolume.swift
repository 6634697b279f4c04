// A real GlusterFS volume mounted twice, for the tests of a backing
// directory that several hosts share: `hostA` and `hostB` are two FUSE
// client mounts of one volume, each with its own caches, as two machines
// would have.
#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import CWarpSys
import Synchronization

/// One GlusterFS volume with a single brick in a temporary directory,
/// mounted at `hostA` and `hostB`.
///
/// `init` starts glusterd if none runs (a private one: its state, run
/// directory, logs and command socket in a temporary directory of its own,
/// not /var/lib/glusterd), creates and starts a volume with a unique name,
/// and mounts it twice; it throws `Failure`, naming the step and quoting the
/// failing command's output, when any of that fails, so that a test that
/// needs GlusterFS fails rather than passes without it. `close()` undoes
/// everything; it is safe to call twice and also runs when the process
/// exits. What a process killed before that leaves (glusterd, brick and
/// client processes, mounts, directories, volumes: all named with its pid)
/// is removed by the next process that makes a GlusterVolume. A test writes:
///
///     let v = try GlusterVolume()
///     defer { v.close() }
///
/// Consistency between the mounts. A write through one mount and `close()`,
/// then `open()` and a read through the other, sees the new bytes and the
/// new size (close-to-open, as NFS gives); a rename, unlink or create
/// through one is seen at once by lookups through the other. The volume's
/// client-side caching translators are off, because each keeps something
/// the other mount can change behind its back:
///   - performance.write-behind: acknowledges writes before the brick has
///     them, and with flush-behind (its default) even the close; off, a
///     close returns after the brick has the data;
///   - performance.quick-read: keeps small files' contents from the lookup;
///   - performance.io-cache, performance.read-ahead: page caches of their
///     own (io-cache revalidates only once a second);
///   - performance.stat-prefetch (md-cache): keeps stats, extended
///     attributes and names for a second: a stale size or name;
///   - performance.readdir-ahead, performance.parallel-readdir: keep
///     directory listings;
///   - performance.nl-cache: keeps "no such file";
///   - performance.open-behind: answers open() before the brick opened the
///     file, so locks and unlink-while-open would differ from a real open.
/// The client mounts (glusterfs run directly: mount.glusterfs 10.3 turns
/// `-o fopen-keep-cache=false` into `--fopen-keep-cache==false`, which fails):
///   - entry-timeout=0, negative-timeout=0: the kernel caches no names and
///     no absences;
///   - attribute-timeout=0: the kernel asks for attributes at every stat;
///   - fopen-keep-cache=false: the kernel drops a file's cached pages at each
///     open, so an open after the other mount's close reads the new data;
///   - direct-io-mode: `disable` by default (the page cache is kept while a
///     descriptor stays open, as on NFS): a descriptor opened before the
///     other mount's write can then read the old bytes (199 of 200 reads
///     did). `directIO: true` sends every read and write to the brick,
///     which is stronger than close-to-open: no stale read at all.
/// Measured on GlusterFS 10.3 (GlusterHarnessTests): 200 rounds of a read
/// through one mount, a write and close through the other (1 byte to
/// 300 KB, five names reused), then stat, open and read through the
/// first; and 20 rounds of create, rename, mkdir, unlink and rmdir checked
/// through the other mount. With all of the above: nothing stale. With the
/// translators at their defaults (write-behind, quick-read, stat-prefetch,
/// open-behind on): 195 of 200 rounds saw the old size or bytes, and every
/// renamed name was still seen. With the kernel's default entry-timeout
/// (1 s): every renamed name was still seen. The kernel's default
/// attribute-timeout and fopen-keep-cache did not show stale data in those
/// rounds; they are set anyway, so that the guarantee does not rest on the
/// FUSE bridge's defaults or the kernel's invalidation heuristics.
///
/// If a glusterd already runs (a system one), the volume is created there
/// (its state then is in /var/lib/glusterd) and only that volume is stopped
/// and deleted again; glusterd itself is left alone.
public final class GlusterVolume: @unchecked Sendable {
    /// What could not be set up, with the failing command's output.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The volume's name (unique: the process id and a counter).
    public let name: String
    /// The two client mounts of the volume.
    public let hostA: String
    public let hostB: String
    /// The temporary directory holding the brick, the mountpoints and the
    /// client logs; removed by `close()`.
    public let directory: String
    /// The brick's directory (what the volume stores, as plain files).
    public let brick: String
    /// Whether this process started the glusterd the volume lives on.
    public private(set) var startedGlusterd = false
    /// Pids of the processes started for this volume (the brick's glusterfsd,
    /// the two glusterfs clients) and of glusterd if this process started it.
    public private(set) var processIDs: [pid_t] = []
    /// What went wrong while tearing down (a lazy unmount, a process that
    /// needed SIGKILL, a gluster command that failed); empty after a clean
    /// `close()`.
    public var teardownProblems: [String] { state.withLock { $0.problems } }

    private let directIO: Bool
    private var daemon: GlusterDaemon?
    private var volumeCreated = false
    private var brickSocket: String?
    private let state = Mutex<(closed: Bool, problems: [String])>((false, []))
    private var cleanupID = 0

    private static let counter = Mutex(0)

    /// Starts glusterd if needed, creates and starts a volume and mounts it
    /// at `hostA` and `hostB`. `timeout` (seconds) bounds the wait for a
    /// started glusterd to answer, and separately everything after
    /// `volume start` (the brick's process, both mounts, both reaching the
    /// brick); mounting is retried until then.
    public init(directIO: Bool = false, timeout: Double = 30) throws {
        self.directIO = directIO
        let n = GlusterVolume.counter.withLock { c in c += 1; return c }
        name = "warpfs-\(getpid())-\(n)"
        directory = GlusterVolume.makeTempDir("warpfs-gluster-\(getpid())")
        brick = directory + "/brick"
        hostA = directory + "/hostA"
        hostB = directory + "/hostB"
        for d in [brick, hostA, hostB, directory + "/log", directory + "/run"] { mkdir(d, 0o755) }
        cleanupID = Cleanup.shared.add { [self] in close() }
        do {
            try setUp(timeout: timeout)
        } catch {
            close()
            throw error
        }
    }

    private func setUp(timeout: Double) throws {
        guard let glusterfs = findProgram("glusterfs"), findProgram("gluster") != nil, findProgram("glusterd") != nil else {
            throw Failure(description: "GlusterFS is not installed: gluster, glusterd or glusterfs is not in PATH or the sbin directories (scripts/setup installs glusterfs-server and glusterfs-client)")
        }
        let d = try GlusterDaemon.acquire(timeout: timeout)
        daemon = d
        startedGlusterd = d.started
        if d.started, let pid = d.pid { processIDs.append(pid) }
        let host = GlusterVolume.hostname()

        var r = d.cli(["volume", "create", name, "\(host):\(brick)", "force"])
        guard r.status == 0 else { throw Failure(description: "gluster volume create \(name) \(host):\(brick) force failed (\(r.status)): \(r.output)") }
        volumeCreated = true
        for (key, value) in GlusterVolume.volumeOptions {
            r = d.cli(["volume", "set", name, key, value])
            guard r.status == 0 else { throw Failure(description: "gluster volume set \(name) \(key) \(value) failed (\(r.status)): \(r.output)") }
        }
        r = d.cli(["volume", "start", name])
        guard r.status == 0 else { throw Failure(description: "gluster volume start \(name) failed (\(r.status)): \(r.output)") }

        // The brick's process, and the socket it made in /var/run/gluster
        // (glusterd does not remove it when the volume stops).
        let deadline = monotonicSeconds() + timeout
        var brickProcess: GlusterProcess?
        while brickProcess == nil {
            brickProcess = GlusterProcess.all().first { $0.arguments.contains(brick) && $0.name == "glusterfsd" }
            if brickProcess != nil { break }
            guard monotonicSeconds() < deadline else {
                throw Failure(description: "no glusterfsd serves the brick \(brick) \(Int(timeout)) s after gluster volume start: \(d.cli(["volume", "status", name]).output)\(GlusterVolume.tail(d.logDirectory.map { $0 + "/bricks" }))")
            }
            usleep(100_000)
        }
        processIDs.append(brickProcess!.pid)
        if let i = brickProcess!.arguments.firstIndex(of: "-S"), i + 1 < brickProcess!.arguments.count {
            brickSocket = brickProcess!.arguments[i + 1]
        }

        for (mountpoint, label) in [(hostA, "hostA"), (hostB, "hostB")] {
            let args = [glusterfs, "--process-name", "fuse", "--volfile-server=\(host)", "--volfile-id=/\(name)",
                        "--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0",
                        "--fopen-keep-cache=false", "--direct-io-mode=\(directIO ? "enable" : "disable")",
                        "--log-file=\(directory)/log/\(label).log", "--pid-file=\(directory)/run/\(label).pid", mountpoint]
            var last = ""
            while true {
                let m = runCommand(args)
                if m.status == 0 && GlusterVolume.isMounted(mountpoint) { break }
                last = "\(args.joined(separator: " ")) exited \(m.status): \(m.output)"
                guard monotonicSeconds() < deadline else {
                    throw Failure(description: "mounting volume \(name) at \(mountpoint) failed for \(Int(timeout)) s: \(last)\(GlusterVolume.tail(directory + "/log/\(label).log"))")
                }
                usleep(250_000)
            }
            if let pid = GlusterVolume.readPid(directory + "/run/\(label).pid") { processIDs.append(pid) }
        }

        // Both clients reach the brick: a file made through A is read back
        // through B (until then, operations fail with ENOTCONN).
        let probe = "/.harness-probe"
        var why = ""
        while true {
            why = GlusterVolume.probe(hostA + probe, hostB + probe)
            if why.isEmpty { break }
            guard monotonicSeconds() < deadline else {
                throw Failure(description: "volume \(name) is mounted but not usable through both mounts after \(Int(timeout)) s: \(why)\(GlusterVolume.tail(directory + "/log/hostA.log"))")
            }
            usleep(100_000)
        }
    }

    /// The volume options, in the order they are set (see the type's comment).
    public static let volumeOptions: [(String, String)] = [
        ("performance.write-behind", "off"),
        ("performance.quick-read", "off"),
        ("performance.io-cache", "off"),
        ("performance.read-ahead", "off"),
        ("performance.stat-prefetch", "off"),
        ("performance.readdir-ahead", "off"),
        ("performance.parallel-readdir", "off"),
        ("performance.nl-cache", "off"),
        ("performance.open-behind", "off"),
    ]

    /// Unmounts both mounts (lazily if a plain unmount keeps failing), stops
    /// and deletes the volume, stops what this process started for it
    /// (glusterd too, once its last volume is gone) and removes the
    /// temporary directory. Safe to call more than once.
    public func close() {
        let first = state.withLock { s in defer { s.closed = true }; return !s.closed }
        guard first else { return }
        Cleanup.shared.forget(cleanupID)
        var problems: [String] = []

        for (mountpoint, label) in [(hostA, "hostA"), (hostB, "hostB")] {
            var tries = 0
            while GlusterVolume.isMounted(mountpoint) && tries < 5 {
                if runCommand(["/bin/umount", mountpoint]).status == 0 { break }
                tries += 1
                usleep(200_000)
            }
            if GlusterVolume.isMounted(mountpoint) {
                let r = runCommand(["/bin/umount", "-l", mountpoint])
                problems.append("\(mountpoint) stayed busy; unmounted lazily (\(r.status): \(r.output))")
            }
            if let pid = GlusterVolume.readPid(directory + "/run/\(label).pid") {
                if let p = GlusterVolume.stop([pid], grace: 5) { problems.append("glusterfs client of \(label): \(p)") }
            }
        }

        if volumeCreated, let d = daemon {
            let stop = d.cli(["volume", "stop", name, "force"])
            if stop.status != 0 { problems.append("gluster volume stop \(name) force failed (\(stop.status)): \(stop.output)") }
            let delete = d.cli(["volume", "delete", name])
            if delete.status != 0 { problems.append("gluster volume delete \(name) failed (\(delete.status)): \(delete.output)") }
        }
        // Whatever still runs for this directory: the brick if the volume
        // did not stop, a client that outlived its unmount.
        let left = GlusterProcess.all().filter { $0.mentions(directory) }.map(\.pid)
        if !left.isEmpty, let p = GlusterVolume.stop(left, grace: 5) { problems.append("left over: \(p)") }
        if let s = brickSocket, GlusterProcess.all().allSatisfy({ !$0.arguments.contains(s) }) { unlink(s) }

        if let d = daemon {
            daemon = nil
            // A system glusterd's brick log (a private one's is in its directory).
            if !d.started {
                unlink("/var/log/glusterfs/bricks/" + String(brick.dropFirst().map { $0 == "/" ? "-" : $0 }) + ".log")
            }
            problems += GlusterDaemon.release(d)
        }
        _ = runCommand(["/bin/rm", "-rf", "--one-file-system", directory])
        if !problems.isEmpty {
            var err = "GlusterVolume \(name): " + problems.joined(separator: "; ") + "\n"
            _ = err.withUTF8 { write(2, $0.baseAddress, $0.count) }
        }
        state.withLock { $0.problems = problems }
    }

    deinit { close() }

    /// The volumes of the glusterd that answers on the default socket (a
    /// system one), with the command's status.
    public static func systemVolumes() -> (status: Int32, names: [String]) {
        guard let gluster = findProgram("gluster") else { return (-1, []) }
        let r = runCommand([gluster, "--mode=script", "--timeout=60", "volume", "list"])
        return (r.status, r.output.split(separator: "\n").map(String.init))
    }

    // MARK: - Helpers

    /// Empty when a file written through `a` reads back through `b`;
    /// otherwise why not.
    private static func probe(_ a: String, _ b: String) -> String {
        let fd = open(a, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { return "create \(a): \(String(cString: strerror(errno)))" }
        let ok = write(fd, "probe", 5) == 5
        let e = errno
        Glibc.close(fd)
        defer { unlink(a) }
        guard ok else { return "write \(a): \(String(cString: strerror(e)))" }
        let fdb = open(b, O_RDONLY)
        guard fdb >= 0 else { return "open \(b): \(String(cString: strerror(errno)))" }
        defer { Glibc.close(fdb) }
        var buf = [UInt8](repeating: 0, count: 16)
        let n = read(fdb, &buf, 16)
        return n == 5 && buf[0..<5].elementsEqual("probe".utf8) ? "" : "read \(b): \(n) bytes"
    }

    /// Sends SIGTERM to `pids`, waits up to `grace` seconds, then SIGKILL;
    /// nil when all ended without SIGKILL, else what needed it.
    static func stop(_ pids: [pid_t], grace: Double) -> String? {
        let live = pids.filter(GlusterProcess.isAlive)
        guard !live.isEmpty else { return nil }
        for p in live { kill(p, SIGTERM) }
        let deadline = monotonicSeconds() + grace
        while monotonicSeconds() < deadline && live.contains(where: GlusterProcess.isAlive) { usleep(50_000) }
        let stuck = live.filter(GlusterProcess.isAlive)
        guard !stuck.isEmpty else { return nil }
        for p in stuck { kill(p, SIGKILL) }
        // SIGKILL is delivered at once, the exit takes a moment: wait (bounded) for it.
        let killDeadline = monotonicSeconds() + 5
        while monotonicSeconds() < killDeadline && stuck.contains(where: GlusterProcess.isAlive) { usleep(20_000) }
        return "pids \(stuck) ignored SIGTERM for \(Int(grace)) s; killed"
    }

    static func isMounted(_ path: String) -> Bool {
        guard let text = readText("/proc/self/mountinfo") else { return false }
        return text.split(separator: "\n").contains { line in
            let f = line.split(separator: " ")
            return f.count > 4 && f[4] == path
        }
    }

    /// Mountpoints under `dir` (for a leftover of a killed run).
    static func mounts(under dir: String) -> [String] {
        guard let text = readText("/proc/self/mountinfo") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 4 && f[4].hasPrefix(dir + "/") ? String(f[4]) : nil
        }
    }

    static func readText(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        return String(decoding: readToEnd(fd), as: UTF8.self)
    }

    static func readPid(_ path: String) -> pid_t? {
        guard let t = readText(path), let p = pid_t(t.filter { $0.isNumber }), p > 0 else { return nil }
        return p
    }

    /// The last lines of a log file (or of every file in a directory).
    static func tail(_ path: String?) -> String {
        guard let path else { return "" }
        let r = runCommand(["/bin/sh", "-c", "tail -n 15 \"$0\"/* \"$0\" 2>/dev/null", path])
        return r.output.isEmpty ? "" : "\n--- \(path):\n" + r.output
    }

    static func hostname() -> String {
        var buf = [CChar](repeating: 0, count: 256)
        gethostname(&buf, buf.count - 1)
        return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func makeTempDir(_ prefix: String) -> String {
        var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
        return String(cString: mkdtemp(&template)!)
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A process as /proc shows it.
public struct GlusterProcess: Sendable {
    public let pid: pid_t
    /// The executable's name (/proc/PID/comm).
    public let name: String
    public let arguments: [String]

    /// Whether one of the arguments is `path` or lies under it.
    public func mentions(_ path: String) -> Bool {
        arguments.contains { $0 == path || $0.hasPrefix(path + "/") || $0.contains("=" + path + "/") }
    }

    /// Every live (not zombie) process whose name starts with "gluster".
    public static func all() -> [GlusterProcess] {
        guard let dir = opendir("/proc") else { return [] }
        defer { closedir(dir) }
        var out: [GlusterProcess] = []
        while let e = readdir(dir) {
            let entry = String(cString: wd_dirent_name(e))
            guard let pid = pid_t(entry), isAlive(pid),
                  let comm = GlusterVolume.readText("/proc/\(pid)/comm"), comm.hasPrefix("gluster"),
                  let cmdline = GlusterVolume.readText("/proc/\(pid)/cmdline") else { continue }
            out.append(GlusterProcess(pid: pid, name: String(comm.filter { $0 != "\n" }),
                                      arguments: cmdline.split(separator: "\0").map(String.init)))
        }
        return out
    }

    /// Whether `pid` exists and is not a zombie (glusterd's processes are
    /// daemons: init, not this process, reaps them).
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard let stat = GlusterVolume.readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].drop(while: { $0 == " " }).first
        return state != nil && state != "Z" && state != "X"
    }
}

/// The glusterd the volumes of this process use: started here (private
/// state in a temporary directory) or found running; shared by the
/// volumes alive at one time and stopped, if started here, with the last.
final class GlusterDaemon: @unchecked Sendable {
    let started: Bool
    let pid: pid_t?
    /// The private daemon's directory; nil for a glusterd found running.
    let directory: String?
    let socket: String?
    var logDirectory: String? { directory.map { $0 + "/log" } }
    private let gluster: String

    private init(started: Bool, pid: pid_t?, directory: String?, gluster: String) {
        self.started = started
        self.pid = pid
        self.directory = directory
        self.socket = directory.map { $0 + "/glusterd.socket" }
        self.gluster = gluster
    }

    /// Runs the gluster command line against this daemon (no questions,
    /// each request bounded to 60 s).
    func cli(_ args: [String]) -> (status: Int32, output: String) {
        var a = [gluster, "--mode=script", "--timeout=60"]
        if let directory, let socket { a += ["--glusterd-sock=\(socket)", "--log-file=\(directory)/log/cli.log"] }
        return runCommand(a + args)
    }

    private static let shared = Mutex<(daemon: GlusterDaemon?, users: Int)>((nil, 0))

    static func acquire(timeout: Double) throws -> GlusterDaemon {
        try shared.withLock { s in
            if let d = s.daemon { s.users += 1; return d }
            let d = try start(timeout: timeout)
            s = (d, 1)
            return d
        }
    }

    /// Drops one user; the last stops a daemon started here. Returns what
    /// went wrong.
    static func release(_ d: GlusterDaemon) -> [String] {
        let last = shared.withLock { s -> Bool in
            guard s.daemon === d else { return false }
            s.users -= 1
            if s.users == 0 { s.daemon = nil; return true }
            return false
        }
        guard last, d.started, let dir = d.directory else { return [] }
        var problems: [String] = []
        let pids = [d.pid].compactMap { $0 } + GlusterProcess.all().filter { $0.mentions(dir) }.map(\.pid)
        if let p = GlusterVolume.stop(Array(Set(pids)), grace: 10) { problems.append("glusterd: \(p)") }
        _ = runCommand(["/bin/rm", "-rf", "--one-file-system", dir])
        return problems
    }

    private static func start(timeout: Double) throws -> GlusterDaemon {
        guard let gluster = findProgram("gluster"), let glusterd = findProgram("glusterd") else {
            throw GlusterVolume.Failure(description: "GlusterFS is not installed: gluster or glusterd is not in PATH or the sbin directories (scripts/setup installs glusterfs-server)")
        }
        removeLeftovers()
        if let other = GlusterProcess.all().first(where: { $0.name == "glusterd" }) {
            // A leftover of another live test process: its socket and port
            // are its own, and it stops it when it ends.
            if let f = other.arguments.first(where: { $0.contains("/warpfs-glusterd-") }) {
                throw GlusterVolume.Failure(description: "glusterd \(other.pid) of another test process runs (\(f)); GlusterFS tests must not run in two processes at once")
            }
            let d = GlusterDaemon(started: false, pid: nil, directory: nil, gluster: gluster)
            let r = d.cli(["volume", "list"])
            guard r.status == 0 else {
                throw GlusterVolume.Failure(description: "glusterd \(other.pid) (\(other.arguments.joined(separator: " "))) runs but does not answer gluster volume list (\(r.status)): \(r.output)")
            }
            // Volumes of test processes that ended without their close().
            for line in r.output.split(separator: "\n") where line.hasPrefix("warpfs-") {
                let parts = line.split(separator: "-")
                guard parts.count == 3, let owner = pid_t(parts[1]), owner != getpid(),
                      kill(owner, 0) != 0 && errno == ESRCH else { continue }
                _ = d.cli(["volume", "stop", String(line), "force"])
                _ = d.cli(["volume", "delete", String(line)])
            }
            return d
        }

        let dir = GlusterVolume.makeTempDir("warpfs-glusterd-\(getpid())")
        for sub in ["state", "run", "log"] { mkdir(dir + "/" + sub, 0o755) }
        // glusterd.vol as Debian ships it, with every path in `dir`.
        let vol = """
            volume management
                type mgmt/glusterd
                option working-directory \(dir)/state
                option run-directory \(dir)/run
                option logging-directory \(dir)/log
                option glusterd-sockfile \(dir)/glusterd.socket
                option transport-type socket
                option transport.socket.keepalive-time 10
                option transport.socket.keepalive-interval 2
                option transport.socket.read-fail-log off
                option transport.socket.listen-port 24007
                option ping-timeout 0
                option event-threads 1
                option max-port 60999
            end-volume

            """
        let f = fopen(dir + "/glusterd.vol", "w")
        guard let f, fputs(vol, f) >= 0, fclose(f) == 0 else {
            _ = runCommand(["/bin/rm", "-rf", dir])
            throw GlusterVolume.Failure(description: "cannot write \(dir)/glusterd.vol: \(String(cString: strerror(errno)))")
        }
        // glusterd daemonizes once it listens; its exit status says whether
        // it got that far.
        let r = runCommand([glusterd, "-f", dir + "/glusterd.vol", "-p", dir + "/glusterd.pid", "-l", dir + "/log/glusterd.log"])
        let pid = GlusterVolume.readPid(dir + "/glusterd.pid")
        let d = GlusterDaemon(started: true, pid: pid, directory: dir, gluster: gluster)
        func fail(_ what: String) -> GlusterVolume.Failure {
            let log = GlusterVolume.tail(dir + "/log/glusterd.log")
            _ = GlusterVolume.stop([pid].compactMap { $0 } + GlusterProcess.all().filter { $0.mentions(dir) }.map(\.pid), grace: 5)
            _ = runCommand(["/bin/rm", "-rf", "--one-file-system", dir])
            return GlusterVolume.Failure(description: what + log)
        }
        guard r.status == 0, let pid else {
            throw fail("glusterd -f \(dir)/glusterd.vol failed (exit \(r.status), pid file \(pid.map(String.init) ?? "missing")): \(r.output)")
        }
        let deadline = monotonicSeconds() + timeout
        while true {
            let q = d.cli(["volume", "list"])
            if q.status == 0 { break }
            guard GlusterProcess.isAlive(pid) else { throw fail("glusterd \(pid) died after starting: gluster volume list: \(q.output)") }
            guard monotonicSeconds() < deadline else { throw fail("glusterd \(pid) does not answer after \(Int(timeout)) s: gluster volume list (\(q.status)): \(q.output)") }
            usleep(100_000)
        }
        return d
    }

    /// What a test process killed before its `close()` left: its private
    /// glusterd with the brick and client processes, the mounts, the
    /// directories; and its volumes on a system glusterd.
    private static func removeLeftovers() {
        guard let dir = opendir("/tmp") else { return }
        var stale: [String] = []
        while let e = readdir(dir) {
            let name = String(cString: wd_dirent_name(e))
            for prefix in ["warpfs-gluster-", "warpfs-glusterd-"] where name.hasPrefix(prefix) {
                let rest = name.dropFirst(prefix.count)
                guard let owner = pid_t(rest.prefix(while: { $0 != "-" })), owner != getpid(),
                      kill(owner, 0) != 0 && errno == ESRCH else { continue }
                stale.append("/tmp/" + name)
            }
        }
        closedir(dir)
        for path in stale {
            for m in GlusterVolume.mounts(under: path) { _ = runCommand(["/bin/umount", "-l", m]) }
            for p in GlusterProcess.all() where p.mentions(path) {
                kill(p.pid, SIGKILL)
                // A brick's socket in /var/run/gluster.
                if p.name == "glusterfsd", let i = p.arguments.firstIndex(of: "-S"), i + 1 < p.arguments.count {
                    unlink(p.arguments[i + 1])
                }
            }
            _ = runCommand(["/bin/rm", "-rf", "--one-file-system", path])
        }
    }
}
