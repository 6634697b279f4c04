#if canImport(Glibc)
import Glibc
#endif
import CFuse
import Synchronization
import CWarpSys
import WarpFSCore

/// Serves a `WarpFileSystem` through libfuse3's low-level API: mounts it
/// and runs the multithreaded loop, whose requests the operations
/// (`Operations.swift`) turn into one call of the core and exactly one
/// reply (`Requests.swift`). Holds no file-system logic.
public final class FUSEServer: @unchecked Sendable {
    public let fs: WarpFileSystem
    public let mountpoint: String
    private var session: OpaquePointer?
    /// Reply buffers reused across read requests: a fresh 1 MiB allocation
    /// per request cost a page fault per 4 KiB.
    let replyBuffers = BufferStack()

    /// Creates the FUSE session (nothing is mounted yet). Throws with a
    /// message when libfuse rejects the options.
    public init(fs: WarpFileSystem, mountpoint: String, fsname: String) throws {
        self.fs = fs
        self.mountpoint = mountpoint
        var opts = "fsname=\(fsname.replacingComma()),subtype=warpfs,default_permissions"
        if fs.options.allowOther { opts += ",allow_other" }
        if fs.options.readOnly { opts += ",ro" }
        // Generic mount flags the kernel applies (libfuse passes them to
        // mount(2)). The kernel never updates a FUSE file's access time
        // itself (WarpFS does, by `accessTimes`); noatime is set only so that
        // the mount table shows the policy in force.
        if !fs.options.executables { opts += ",noexec" }
        if fs.options.synchronous { opts += ",sync" }
        if fs.options.accessTimes == .noatime { opts += ",noatime" }
        // libfuse mounts nosuid,nodev unless told otherwise; only root may.
        if fs.options.devices || fs.options.setID {
            let asked = [fs.options.devices ? "dev" : nil, fs.options.setID ? "suid" : nil].compactMap { $0 }.joined(separator: "' and '")
            guard geteuid() == 0 else {
                throw FSError(EPERM, "option '\(asked)' needs a mount by root (fusermount3 refuses it for other users)")
            }
            if fs.options.devices { opts += ",dev" }
            if fs.options.setID { opts += ",suid" }
        }
        var argv = ["warpfs", "-o", opts]
        if fs.options.debug { argv.append("-d") }
        var args = fuse_args(argc: 0, argv: nil, allocated: 0)
        for a in argv { fuse_opt_add_arg(&args, a) }
        defer { fuse_opt_free_args(&args) }
        var ops = FUSEServer.operations()
        let me = Unmanaged.passUnretained(self).toOpaque()
        guard let se = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, me) else {
            throw FSError(EINVAL, "libfuse refused the session options '\(opts)'")
        }
        session = se
    }

    /// Sends libfuse's own messages to the mount's log (`Log`: syslog for a
    /// background mount), at their level; its debug trace stays on
    /// standard error.
    public static func routeLibfuseMessages() {
        wf_route_log { level, line in
            guard let line else { return }
            let text = "libfuse: " + String(cString: line)
            // fuse_log_level: 0 emerg ... 3 err, 4 warning, 5 notice, 6 info.
            Log.write(level <= 3 ? .error : level == 4 ? .warning : .info, text)
        }
    }

    /// Mounts at `mountpoint`, then raises the mount's kernel readahead.
    public func mount() throws {
        guard let se = session else { throw FSError(EINVAL, "no session") }
        guard fuse_session_mount(se, mountpoint) == 0 else {
            throw FSError(EIO, "cannot mount on '\(mountpoint)' (is it an existing directory, not already mounted?)")
        }
        if fs.options.readaheadKiB > 0 { setReadahead(fs.options.readaheadKiB) }
        // Attributes only (offset -1): no page is locked, so it is safe inside a request.
        fs.invalidateAttributes = { ino in _ = fuse_lowlevel_notify_inval_inode(se, ino, -1, 0) }
    }

    /// The kernel offers FUSE 128 KiB of readahead, so sequential reads
    /// arrive as 128 KiB requests; the mount's backing device info takes a
    /// larger value (root only). The device number comes from mountinfo:
    /// a stat of the mountpoint would wait for the loop, which is not running yet.
    private func setReadahead(_ kib: Int) {
        guard let f = fopen("/proc/self/mountinfo", "r") else { return }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 8192)
        var device: String?
        while fgets(&line, Int32(line.count), f) != nil {
            let fields = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: " ")
            if fields.count > 4 && String(fields[4]) == mountpoint { device = String(fields[2]) }
        }
        guard let device, let out = fopen("/sys/class/bdi/\(device)/read_ahead_kb", "w") else { return }
        fputs("\(kib)\n", out)
        fclose(out)
    }

    /// Runs the request loop until unmounted or signalled (SIGINT, SIGTERM,
    /// SIGHUP), then stores buffered data and unmounts.
    public func run() -> Int32 {
        guard let se = session else { return 1 }
        fuse_set_signal_handlers(se)
        let reclaimer = startReclaimer()
        let rc = wf_session_loop_mt(se, 0, 16)
        reclaimer.stop()
        fuse_remove_signal_handlers(se)
        fs.flushAll()
        fuse_session_unmount(se)
        return rc
    }

    deinit {
        if let se = session { fuse_session_destroy(se) }
    }

    /// A thread that asks the file system to give memory back every 200 ms
    /// (it does nothing below the budget). Signals are blocked in it.
    private func startReclaimer() -> Reclaimer {
        let r = Reclaimer(fs: fs)
        r.start()
        return r
    }
}

extension String {
    func replacingComma() -> String { String(map { $0 == "," ? "_" : $0 }) }
}

/// A stack of reusable page-aligned buffers (at most 32 kept).
final class BufferStack: @unchecked Sendable {
    private struct Buffer: @unchecked Sendable { let bytes: UnsafeMutableRawBufferPointer }
    private let free = Mutex<[Buffer]>([])

    func take(_ size: Int) -> UnsafeMutableRawBufferPointer {
        let reused: Buffer? = free.withLock { stack in
            guard let i = stack.lastIndex(where: { $0.bytes.count >= size }) else { return nil }
            return stack.remove(at: i)
        }
        return reused?.bytes ?? .allocate(byteCount: max(size, 1 << 20), alignment: 4096)
    }

    func give(_ b: UnsafeMutableRawBufferPointer) {
        let kept = free.withLock { stack in
            guard stack.count < 32 else { return false }
            stack.append(Buffer(bytes: b))
            return true
        }
        if !kept { b.deallocate() }
    }
}

/// The maintenance thread: every 200 ms it gives memory back over the
/// budget and packs the small files whose `pack_delay` has passed.
final class Reclaimer: @unchecked Sendable {
    private let fs: WarpFileSystem
    private let running = Atomic<Bool>(true)
    private var thread = pthread_t()

    init(fs: WarpFileSystem) { self.fs = fs }

    func start() {
        var all = sigset_t(), old = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let me = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let r = Unmanaged<Reclaimer>.fromOpaque(arg!).takeRetainedValue()
            // Signals stay with the other threads, but not the synchronous
            // ones: a blocked SIGBUS from a fault kills the process without
            // its handler (a uacce device removed under a retried store).
            var faults = sigset_t()
            sigemptyset(&faults)
            for s in [SIGBUS, SIGSEGV, SIGILL, SIGFPE] { sigaddset(&faults, s) }
            pthread_sigmask(SIG_UNBLOCK, &faults, nil)
            while r.running.load(ordering: .relaxed) {
                usleep(200_000)
                r.fs.reclaimMemory()
                r.fs.packWaitingFiles()
                r.fs.retryKeptFiles()
            }
            return nil
        }, me)
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        pthread_join(thread, nil)
    }
}
