#if canImport(Glibc)
import Glibc
#endif
import CFuse
import Synchronization
import CWarpSys
import WarpFSCore

/// Serves a `WarpFileSystem` through libfuse3's low-level API: mounts it,
/// runs the multithreaded loop, and turns each kernel request into one call
/// of the core and exactly one reply. Holds no file-system logic.
public final class FUSEServer: @unchecked Sendable {
    public let fs: WarpFileSystem
    public let mountpoint: String
    private var session: OpaquePointer?
    private let writebackCache: Bool
    /// Reply buffers reused across read requests: a fresh 1 MiB allocation
    /// per request cost a page fault per 4 KiB.
    let replyBuffers = BufferStack()

    /// Creates the FUSE session (nothing is mounted yet). Throws with a
    /// message when libfuse rejects the options.
    public init(fs: WarpFileSystem, mountpoint: String, fsname: String) throws {
        self.fs = fs
        self.mountpoint = mountpoint
        self.writebackCache = fs.options.writebackCache
        var opts = "fsname=\(fsname.replacingComma()),subtype=warpfs,default_permissions"
        if fs.options.allowOther { opts += ",allow_other" }
        if fs.options.readOnly { opts += ",ro" }
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

    // MARK: Plumbing

    static func server(_ req: fuse_req_t?) -> FUSEServer {
        Unmanaged<FUSEServer>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    static func fail(_ req: fuse_req_t?, _ error: Error) {
        let e = (error as? FSError)?.errno ?? EIO
        fuse_reply_err(req, e)
    }

    static func caller(_ req: fuse_req_t?) -> WarpFileSystem.Caller {
        let c = fuse_req_ctx(req)!.pointee
        return WarpFileSystem.Caller(uid: c.uid, gid: c.gid, pid: c.pid)
    }

    /// The mode to create a node with, from the mode and umask the kernel sent.
    static func creationMode(_ req: fuse_req_t?, parent: fuse_ino_t, _ mode: mode_t) -> mode_t {
        server(req).fs.creationMode(parent: parent, mode: mode, umask: fuse_req_ctx(req)!.pointee.umask)
    }

    /// The caller's supplementary groups (read by libfuse from /proc).
    static func groups(_ req: fuse_req_t?) -> [gid_t] {
        var list = [gid_t](repeating: 0, count: 64)
        var n = fuse_req_getgroups(req, Int32(list.count), &list)
        if n > Int32(list.count) {
            list = [gid_t](repeating: 0, count: Int(n))
            n = fuse_req_getgroups(req, Int32(list.count), &list)
        }
        return n > 0 ? Array(list.prefix(min(Int(n), list.count))) : []
    }

    static func replyEntry(_ req: fuse_req_t?, _ e: WarpFileSystem.Entry, _ timeout: Double) {
        var p = entryParam(e, timeout)
        fuse_reply_entry(req, &p)
    }

    static func entryParam(_ e: WarpFileSystem.Entry, _ timeout: Double) -> fuse_entry_param {
        var p = fuse_entry_param()
        p.ino = e.nodeID
        p.generation = e.generation
        p.attr = e.attributes
        p.attr_timeout = timeout
        p.entry_timeout = max(timeout, 60)
        return p
    }

    static func name(_ p: UnsafePointer<CChar>?) -> String { String(cString: p!) }

    static func fh(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(fi!.pointee.fh))!
    }

    static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userdata, conn in
            let s = Unmanaged<FUSEServer>.fromOpaque(userdata!).takeUnretainedValue()
            wf_init_conn(conn, s.writebackCache ? 1 : 0, 1 << 20, s.fs.exportSupport ? 1 : 0)
            let acl = wf_init_acl(conn, s.fs.options.posixACL ? 1 : 0)
            s.fs.kernelGranted(posixACL: acl & 1 != 0, dontMask: acl & 2 != 0)
        }
        ops.lookup = { req, parent, name in
            let s = FUSEServer.server(req)
            do { FUSEServer.replyEntry(req, try s.fs.lookup(parent: parent, name: FUSEServer.name(name)), s.fs.attributeTimeout) }
            catch { FUSEServer.fail(req, error) }
        }
        ops.forget = { req, ino, n in
            FUSEServer.server(req).fs.forget(ino, n)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, list in
            let s = FUSEServer.server(req)
            for i in 0..<count { s.fs.forget(list![i].ino, list![i].nlookup) }
            fuse_reply_none(req)
        }
        ops.getattr = { req, ino, _ in
            let s = FUSEServer.server(req)
            do {
                var st = try s.fs.getattr(ino)
                fuse_reply_attr(req, &st, s.fs.attributeTimeout)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.setattr = { req, ino, attr, toSet, _ in
            let s = FUSEServer.server(req)
            let a = attr!.pointee
            var ch = WarpFileSystem.AttributeChanges()
            if toSet & FUSE_SET_ATTR_MODE != 0 { ch.mode = a.st_mode }
            if toSet & FUSE_SET_ATTR_UID != 0 { ch.uid = a.st_uid }
            if toSet & FUSE_SET_ATTR_GID != 0 { ch.gid = a.st_gid }
            if toSet & FUSE_SET_ATTR_SIZE != 0 { ch.size = UInt64(a.st_size) }
            let now = timespec(tv_sec: 0, tv_nsec: Int(WD_UTIME_NOW))
            if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { ch.atime = now } else if toSet & FUSE_SET_ATTR_ATIME != 0 { ch.atime = a.st_atim }
            if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { ch.mtime = now } else if toSet & FUSE_SET_ATTR_MTIME != 0 { ch.mtime = a.st_mtim }
            if toSet & FUSE_SET_ATTR_CTIME != 0 { ch.ctime = a.st_ctim }
            do {
                var st = try s.fs.setattr(ino, ch, caller: FUSEServer.caller(req))
                fuse_reply_attr(req, &st, s.fs.attributeTimeout)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.readlink = { req, ino in
            do { fuse_reply_readlink(req, try FUSEServer.server(req).fs.readlink(ino)) } catch { FUSEServer.fail(req, error) }
        }
        ops.mknod = { req, parent, name, mode, rdev in
            let s = FUSEServer.server(req)
            let mode = FUSEServer.creationMode(req, parent: parent, mode)
            do { FUSEServer.replyEntry(req, try s.fs.mknod(parent: parent, name: FUSEServer.name(name), mode: mode, rdev: rdev, caller: FUSEServer.caller(req)), s.fs.attributeTimeout) }
            catch { FUSEServer.fail(req, error) }
        }
        ops.mkdir = { req, parent, name, mode in
            let s = FUSEServer.server(req)
            let mode = FUSEServer.creationMode(req, parent: parent, mode)
            do { FUSEServer.replyEntry(req, try s.fs.mkdir(parent: parent, name: FUSEServer.name(name), mode: mode, caller: FUSEServer.caller(req)), s.fs.attributeTimeout) }
            catch { FUSEServer.fail(req, error) }
        }
        ops.symlink = { req, target, parent, name in
            let s = FUSEServer.server(req)
            do {
                FUSEServer.replyEntry(req, try s.fs.symlink(parent: parent, name: FUSEServer.name(name), target: FUSEServer.name(target), caller: FUSEServer.caller(req)),
                           s.fs.attributeTimeout)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.link = { req, ino, newParent, newName in
            let s = FUSEServer.server(req)
            do { FUSEServer.replyEntry(req, try s.fs.link(ino, newParent: newParent, newName: FUSEServer.name(newName)), s.fs.attributeTimeout) }
            catch { FUSEServer.fail(req, error) }
        }
        ops.unlink = { req, parent, name in
            do { try FUSEServer.server(req).fs.unlink(parent: parent, name: FUSEServer.name(name)); fuse_reply_err(req, 0) } catch { FUSEServer.fail(req, error) }
        }
        ops.rmdir = { req, parent, name in
            do { try FUSEServer.server(req).fs.rmdir(parent: parent, name: FUSEServer.name(name)); fuse_reply_err(req, 0) } catch { FUSEServer.fail(req, error) }
        }
        ops.rename = { req, parent, name, newParent, newName, flags in
            do {
                try FUSEServer.server(req).fs.rename(parent: parent, name: FUSEServer.name(name), newParent: newParent,
                                          newName: FUSEServer.name(newName), flags: flags)
                fuse_reply_err(req, 0)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.open = { req, ino, fi in
            do {
                let h = try FUSEServer.server(req).fs.open(ino, flags: fi!.pointee.flags, caller: FUSEServer.caller(req))
                fi!.pointee.fh = UInt64(UInt(bitPattern: h))
                wf_fi_set_keep_cache(fi, FUSEServer.server(req).fs.options.keepCache ? 1 : 0)
                if fuse_reply_open(req, fi) != 0 { FUSEServer.server(req).fs.release(h) }
            } catch { FUSEServer.fail(req, error) }
        }
        ops.create = { req, parent, name, mode, fi in
            let s = FUSEServer.server(req)
            let mode = FUSEServer.creationMode(req, parent: parent, mode)
            do {
                let (e, h) = try s.fs.create(parent: parent, name: FUSEServer.name(name), mode: mode, flags: fi!.pointee.flags, caller: FUSEServer.caller(req))
                fi!.pointee.fh = UInt64(UInt(bitPattern: h))
                wf_fi_set_keep_cache(fi, s.fs.options.keepCache ? 1 : 0)
                var p = FUSEServer.entryParam(e, s.fs.attributeTimeout)
                if fuse_reply_create(req, &p, fi) != 0 { s.fs.release(h) }
            } catch { FUSEServer.fail(req, error) }
        }
        ops.read = { req, _, size, off, fi in
            let s = FUSEServer.server(req)
            let buf = s.replyBuffers.take(size)
            defer { s.replyBuffers.give(buf) }
            do {
                let n = try s.fs.read(FUSEServer.fh(fi), offset: UInt64(off), count: size, into: buf.baseAddress!)
                fuse_reply_buf(req, buf.baseAddress!.assumingMemoryBound(to: CChar.self), n)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.write = { req, _, data, size, off, fi in
            do {
                // A write-back of cached pages carries no writer.
                let writer = wf_fi_writepage(fi) != 0 ? nil : FUSEServer.caller(req)
                let n = try FUSEServer.server(req).fs.write(FUSEServer.fh(fi), offset: UInt64(off), count: size, from: UnsafeRawPointer(data!),
                                                            caller: writer)
                fuse_reply_write(req, n)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.flush = { req, _, fi in
            do { try FUSEServer.server(req).fs.flush(FUSEServer.fh(fi)); fuse_reply_err(req, 0) } catch { FUSEServer.fail(req, error) }
        }
        ops.release = { req, _, fi in
            FUSEServer.server(req).fs.release(FUSEServer.fh(fi))
            fuse_reply_err(req, 0)
        }
        ops.fsync = { req, _, datasync, fi in
            do { try FUSEServer.server(req).fs.fsync(FUSEServer.fh(fi), dataOnly: datasync != 0); fuse_reply_err(req, 0) } catch { FUSEServer.fail(req, error) }
        }
        ops.fallocate = { req, _, mode, off, len, fi in
            do {
                try FUSEServer.server(req).fs.fallocate(FUSEServer.fh(fi), mode: mode, offset: UInt64(off), length: UInt64(len),
                                                        caller: FUSEServer.caller(req))
                fuse_reply_err(req, 0)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.lseek = { req, _, off, whence, fi in
            do { fuse_reply_lseek(req, off_t(try FUSEServer.server(req).fs.lseek(FUSEServer.fh(fi), offset: UInt64(off), whence: whence))) }
            catch { FUSEServer.fail(req, error) }
        }
        ops.opendir = { req, ino, fi in
            do {
                let h = try FUSEServer.server(req).fs.opendir(ino)
                fi!.pointee.fh = UInt64(UInt(bitPattern: h))
                if fuse_reply_open(req, fi) != 0 { FUSEServer.server(req).fs.releasedir(h) }
            } catch { FUSEServer.fail(req, error) }
        }
        ops.readdir = { req, ino, size, off, fi in FUSEServer.readdir(req, ino, size, off, fi, plus: false) }
        ops.readdirplus = { req, ino, size, off, fi in FUSEServer.readdir(req, ino, size, off, fi, plus: true) }
        ops.releasedir = { req, _, fi in
            FUSEServer.server(req).fs.releasedir(FUSEServer.fh(fi))
            fuse_reply_err(req, 0)
        }
        ops.fsyncdir = { req, _, _, fi in
            do { try FUSEServer.server(req).fs.fsyncdir(FUSEServer.fh(fi)); fuse_reply_err(req, 0) } catch { FUSEServer.fail(req, error) }
        }
        ops.statfs = { req, _ in
            do {
                var st = try FUSEServer.server(req).fs.statfs()
                fuse_reply_statfs(req, &st)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.setxattr = { req, ino, name, value, size, flags in
            do {
                try FUSEServer.server(req).fs.setxattr(ino, name: FUSEServer.name(name), value: UnsafeRawBufferPointer(start: value, count: size), flags: flags,
                                                       caller: FUSEServer.caller(req))
                if FUSEServer.name(name) == PosixACL.accessName {
                    FUSEServer.server(req).fs.accessACLWasSet(ino, caller: FUSEServer.caller(req), groups: FUSEServer.groups(req))
                }
                fuse_reply_err(req, 0)
            } catch { FUSEServer.fail(req, error) }
        }
        ops.getxattr = { req, ino, name, size in
            let s = FUSEServer.server(req)
            do {
                if size == 0 {
                    fuse_reply_xattr(req, try s.fs.getxattr(ino, name: FUSEServer.name(name), into: UnsafeMutableRawBufferPointer(start: nil, count: 0),
                                                           caller: FUSEServer.caller(req)))
                } else {
                    let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
                    defer { buf.deallocate() }
                    let n = try s.fs.getxattr(ino, name: FUSEServer.name(name), into: buf, caller: FUSEServer.caller(req))
                    fuse_reply_buf(req, buf.baseAddress!.assumingMemoryBound(to: CChar.self), n)
                }
            } catch { FUSEServer.fail(req, error) }
        }
        ops.listxattr = { req, ino, size in
            let s = FUSEServer.server(req)
            do {
                if size == 0 {
                    fuse_reply_xattr(req, try s.fs.listxattr(ino, into: UnsafeMutableRawBufferPointer(start: nil, count: 0), trusted: FUSEServer.caller(req).uid == 0))
                } else {
                    let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
                    defer { buf.deallocate() }
                    let n = try s.fs.listxattr(ino, into: buf, trusted: FUSEServer.caller(req).uid == 0)
                    fuse_reply_buf(req, buf.baseAddress!.assumingMemoryBound(to: CChar.self), n)
                }
            } catch { FUSEServer.fail(req, error) }
        }
        ops.removexattr = { req, ino, name in
            do { try FUSEServer.server(req).fs.removexattr(ino, name: FUSEServer.name(name)); fuse_reply_err(req, 0) } catch { FUSEServer.fail(req, error) }
        }
        return ops
    }

    static func readdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t,
                        _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
        let s = server(req)
        let h = fh(fi)
        let entries = s.fs.readdir(h, offset: Int(off))
        let buf = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
        defer { buf.deallocate() }
        var pos = 0
        var index = Int(off)
        for e in entries {
            index += 1
            let dots = e.name == "." || e.name == ".."
            if plus {
                var p = fuse_entry_param()
                var looked: WarpFileSystem.Entry?
                if dots {
                    p.attr.st_ino = ino_t(e.ino)
                    p.attr.st_mode = mode_t(e.type) << 12
                } else {
                    do {
                        let en = try s.fs.lookup(parent: ino, name: e.name)
                        looked = en
                        p = entryParam(en, s.fs.attributeTimeout)
                    } catch {
                        continue  // vanished since opendir
                    }
                }
                let n = fuse_add_direntry_plus(req, buf + pos, size - pos, e.name, &p, off_t(index))
                if n > size - pos {
                    if let looked { s.fs.forget(looked.nodeID, 1) }
                    break
                }
                pos += n
            } else {
                var st = stat()
                st.st_ino = ino_t(e.ino)
                st.st_mode = mode_t(e.type) << 12
                let n = fuse_add_direntry(req, buf + pos, size - pos, e.name, &st, off_t(index))
                if n > size - pos { break }
                pos += n
            }
        }
        fuse_reply_buf(req, buf, pos)
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

/// The periodic memory reclaimer thread.
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
            while r.running.load(ordering: .relaxed) {
                usleep(200_000)
                r.fs.reclaimMemory()
            }
            return nil
        }, me)
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        pthread_join(thread, nil)
    }
}
