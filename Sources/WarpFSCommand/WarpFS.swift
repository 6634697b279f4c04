#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CWarpSys
import FUSEAdapter
import WarpDrive
import WarpFSCore
import WarpFSFormat
import BenchSupport

/// `warpfs`: the command line.
struct WarpFS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warpfs",
        abstract: "A transparent-compression file system on the WarpDrive accelerator queue layer.",
        discussion: """
        warpfs BACKING MOUNTPOINT -o OPTIONS, without a subcommand, is warpfs mount: the form mount(8) runs \
        (through mount.fuse3) for mount -t fuse.warpfs BACKING MOUNTPOINT -o OPTIONS and for an fstab line \
        BACKING MOUNTPOINT fuse.warpfs OPTIONS 0 0. umount MOUNTPOINT unmounts. See docs/SYSTEM.md for fstab and \
        systemd mount units.
        """,
        version: Release.version,
        subcommands: [Mount.self, Unmount.self, Compress.self, Decompress.self, Fsck.self, Stats.self, Property.self, Iostat.self, BenchCommand.self, Devices.self])
}

/// Writes a line to standard error.
func eprint(_ s: String) {
    var line = s + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// The absolute, symlink-free form of an existing path.
func canonical(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
}

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show BACKING's files, uncompressed, at MOUNTPOINT.",
        discussion: """
        Returns once the file system is mounted, leaving its process in the background (-f: stays in the \
        foreground). A bad option, a missing backing directory or a mountpoint in use gives a message naming it, \
        a non-zero exit, and nothing mounted. Options (-o, comma separated, in any number of lists; a later one \
        wins) are WarpFS's own, generic mount options it honours, and options of mount(8) and systemd, which it \
        accepts and ignores so that an fstab line or a mount unit works; any other is refused. Messages go to \
        syslog (ident warpfs, facility daemon, the mount point in each), to FILE with -o log=FILE, or to standard \
        error with -f. warpfs iostat MOUNTPOINT shows the mount's figures as it runs.
        """)

    @Argument(help: "The directory that holds the compressed files.") var backing: String
    @Argument(help: "Where to show them.") var mountpoint: String
    @Option(name: .short, help: ArgumentHelp("Mount options, comma separated:", valueName: "options"))
    var o: [MountOptionList] = []
    @Flag(name: .short, help: "Stay in the foreground.") var f = false
    @Option(name: .customLong("ready-fd"), help: .hidden) var readyFD: Int32?

    func run() throws {
        let options: MountOptions
        do { options = try MountOptions(lists: o.map(\.text)) } catch { throw ValidationError("\(error)") }
        let logPath = options.logPath
        guard let back = canonical(backing), isDirectory(back) else {
            throw ValidationError("backing directory '\(backing)' does not exist or is not a directory")
        }
        guard let mnt = canonical(mountpoint), isDirectory(mnt) else {
            throw ValidationError("mountpoint '\(mountpoint)' does not exist or is not a directory")
        }
        if isMountpoint(mnt) { throw ValidationError("mountpoint '\(mnt)' is already in use (something is mounted there)") }
        if mnt == back || mnt.hasPrefix(back + "/") {
            throw ValidationError("mountpoint '\(mnt)' is inside the backing directory '\(back)'")
        }
        if !f && readyFD == nil {
            try daemonize()
            return
        }
        signal(SIGPIPE, SIG_IGN)
        // Whatever mask the caller left us, termination signals must reach
        // this (main) thread: it runs the loop that unmounts on them. The
        // synchronous ones too, for every thread started from here: a
        // blocked SIGBUS from a revoked device mapping would kill the
        // process without its handler.
        var term = sigset_t()
        sigemptyset(&term)
        for s in [SIGINT, SIGTERM, SIGHUP, SIGBUS, SIGSEGV, SIGILL, SIGFPE] { sigaddset(&term, s) }
        pthread_sigmask(SIG_UNBLOCK, &term, nil)
        do { try configureLog(logPath, background: readyFD != nil, mountpoint: mnt) } catch {
            report(ready: readyFD, logging: false, "warpfs: \(error)")
            throw ExitCode(1)
        }
        raiseFileLimit()
        // A write past RLIMIT_FSIZE fails with EFBIG instead of killing the mount.
        signal(SIGXFSZ, SIG_IGN)
        dropQuotaOverride()
        let fs: WarpFileSystem
        let server: FUSEServer
        do {
            fs = try WarpFileSystem(backing: back, options: options)
            server = try FUSEServer(fs: fs, mountpoint: mnt, fsname: back)
            try server.mount()
        } catch {
            report(ready: readyFD, logging: logPath != nil, "warpfs: \(error)")
            throw ExitCode(1)
        }
        report(ready: readyFD, logging: logPath != nil, nil)
        Log.info("mounted \(back) at \(mnt) (block \(options.blockSize / 1024) KiB, \(options.algorithm) level \(options.level), "
            + "\(fs.deviceSummary))")
        let rc = server.run()
        fs.shutdown()
        Log.info("unmounted \(mnt)")
        Log.flush()
        if rc != 0 { throw ExitCode(rc) }
    }

    /// Where the mount's messages go (docs/SYSTEM.md, "Logging"): to the
    /// file of `-o log=FILE`, which also takes standard error (libfuse's
    /// debug trace, the runtime's last words); else, in the background, to
    /// syslog with the mount point in each message; else (`-f`) to
    /// standard error. libfuse's own messages join them.
    private func configureLog(_ logPath: String?, background: Bool, mountpoint mnt: String) throws {
        if let logPath {
            let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw FSError.last("cannot open the log file '\(logPath)'") }
            dup2(fd, 2)
            Log.configure(.descriptor(fd))
        } else if background {
            Log.configure(.syslog(prefix: mnt))
        }
        FUSEServer.routeLibfuseMessages()
    }

    /// Tells the waiting parent how the mount went ("" = mounted).
    private func report(ready: Int32?, logging: Bool, _ error: String?) {
        guard let fd = ready else {
            if let error { eprint(error) }
            return
        }
        var msg = error ?? "OK"
        msg.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
        close(fd)
        if error == nil {
            // Detach from the caller's terminal or pipes once mounted; messages
            // go to the log file when one was given.
            let null = open("/dev/null", O_RDWR)
            if null >= 0 {
                dup2(null, 0); dup2(null, 1)
                if !logging { dup2(null, 2) }
                close(null)
            }
        }
    }

    /// Re-runs this command in a new session with `--ready-fd`, and waits
    /// until the child has mounted (or failed, whose message we print).
    private func daemonize() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ValidationError("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        // Order matters: the read end may itself be descriptor 3.
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        if fds[1] != 3 { posix_spawn_file_actions_addclose(&actions, fds[1]) }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        posix_spawnattr_setflags(&attr, Int16(0x80))  // POSIX_SPAWN_SETSID
        let exe = canonical("/proc/self/exe") ?? CommandLine.arguments[0]
        var args = Array(CommandLine.arguments.dropFirst())
        args.insert(exe, at: 0)
        args += ["--ready-fd", "3"]
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attr, cargs, environ)
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attr)
        close(fds[1])
        guard rc == 0 else { close(fds[0]); throw ValidationError("cannot start the file system process: errno \(rc)") }
        let out = readToEnd(fds[0])
        close(fds[0])
        let msg = String(decoding: out, as: UTF8.self)
        if msg == "OK" { return }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        eprint(msg.isEmpty ? "warpfs: the file system process exited before mounting" : msg)
        throw ExitCode(1)
    }
}

func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
}

/// Whether something is mounted at `path` (per /proc/self/mountinfo).
func isMountpoint(_ path: String) -> Bool {
    guard let f = fopen("/proc/self/mountinfo", "r") else { return false }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 8192)
    while fgets(&line, Int32(line.count), f) != nil {
        let fields = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .split(separator: " ")
        if fields.count > 4, unescapeMountPath(String(fields[4])) == path { return true }
    }
    return false
}

func unescapeMountPath(_ s: String) -> String {
    var out = ""
    var it = Array(s.utf8)[...]
    var bytes: [UInt8] = []
    while let c = it.first {
        if c == UInt8(ascii: "\\"), it.count >= 4, let v = UInt8(String(decoding: it.dropFirst().prefix(3), as: UTF8.self), radix: 8) {
            bytes.append(v)
            it = it.dropFirst(4)
        } else {
            bytes.append(c)
            it = it.dropFirst()
        }
    }
    out = String(decoding: bytes, as: UTF8.self)
    return out
}

/// The process writes every backing file as root. Root's CAP_SYS_RESOURCE
/// would let those writes exceed the file owner's disk quota, so it leaves
/// the effective set here, before any thread starts (capabilities are per
/// thread; threads inherit the creator's), and the backing file system
/// charges and limits each payload write as it would the owner's own.
/// (Root-reserved blocks stay usable: ext4 grants them to uid 0 as its
/// default `resuid`; `SpaceAccount` keeps them from other writers.)
/// Nothing later needs it: `raiseFileLimit` raises the soft limit only,
/// up to the hard one, and runs before.
func dropQuotaOverride() {
    let capSysResource: Int32 = 24
    let r = wd_drop_effective_capability(capSysResource)
    if r < 0 { Log.warning("cannot drop CAP_SYS_RESOURCE: \(String(cString: strerror(-r))); disk quotas may not apply to writes through the mount") }
}

/// Lets the file system hold one descriptor per known inode.
func raiseFileLimit() {
    var l = rlimit()
    if getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &l) == 0 && l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &l)
    }
}

struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount a WarpFS mount and wait until its data is stored.")

    @Argument(help: "The mountpoint.") var mountpoint: String

    func run() throws {
        guard let mnt = canonical(mountpoint) else { throw ValidationError("'\(mountpoint)' does not exist") }
        guard isMountpoint(mnt) else { throw ValidationError("nothing is mounted at '\(mnt)'") }
        let servers = serverProcesses(for: mnt)
        let rc = runProgram("/bin/fusermount3", ["-u", mnt])
        if rc != 0 {
            if umount2(mnt, 0) != 0 {
                throw ValidationError("cannot unmount '\(mnt)': \(String(cString: strerror(errno)))")
            }
        }
        // Wait for the file-system process to store its data and exit.
        let deadline = wd_now_ns() + 30_000_000_000
        while servers.contains(where: isRunning) && wd_now_ns() < deadline { usleep(10_000) }
    }
}

/// Whether `pid` is alive and not a zombie (an exited server whose parent,
/// e.g. the shell that ran `mount -f`, has not reaped it yet).
func isRunning(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var buf = [UInt8](repeating: 0, count: 512)
    let n = read(fd, &buf, buf.count)
    guard n > 0 else { return false }
    // "pid (comm) S ...": the state follows the last ')'.
    guard let close = buf[0..<n].lastIndex(of: UInt8(ascii: ")")), close + 2 < n else { return true }
    return buf[close + 2] != UInt8(ascii: "Z")
}

/// Processes serving `warpfs mount ... MNT` (or the mount(8) form,
/// `warpfs BACKING MNT ...`).
func serverProcesses(for mnt: String) -> [pid_t] {
    guard let d = opendir("/proc") else { return [] }
    defer { closedir(d) }
    var pids: [pid_t] = []
    while let e = readdir(d) {
        let name = String(cString: wd_dirent_name(e))
        guard let pid = pid_t(name), pid != getpid() else { continue }
        guard let f = fopen("/proc/\(pid)/cmdline", "r") else { continue }
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = fread(&buf, 1, buf.count, f)
        fclose(f)
        let args = buf[0..<n].split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard args.count > 2, args[0].hasSuffix("warpfs"), withMountSubcommand(Array(args.dropFirst())).first == "mount" else { continue }
        if args.contains(where: { canonical($0) == mnt }) { pids.append(pid) }
    }
    return pids
}

func runProgram(_ path: String, _ arguments: [String]) -> Int32 {
    let cargs = ([path] + arguments).map { strdup($0) } + [nil]
    defer { cargs.forEach { free($0) } }
    var pid: pid_t = 0
    guard posix_spawn(&pid, path, nil, nil, cargs, environ) == 0 else { return -1 }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return (status >> 8) & 0xff
}
