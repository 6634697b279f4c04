#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive
import WarpFSFormat

/// The WarpFS file system core: every operation the FUSE adapter forwards,
/// on node ids and handles, answering with values or `FSError`.
///
/// Files are backed one-to-one by files of the backing directory. Regular
/// files with a WarpFS header are containers whose blocks go through the
/// accelerator (`CompressedFile`); files without one are passed through.
public final class WarpFileSystem: @unchecked Sendable {
    /// What the kernel gets for a looked-up name.
    public struct Entry {
        public var nodeID: UInt64
        public var generation: UInt64
        public var attributes: stat
    }

    /// The caller of a request (for ownership of new files).
    public struct Caller: Sendable {
        public var uid: uid_t
        public var gid: gid_t
        public var umask: mode_t
        /// The calling thread (0: unknown), for its groups and capabilities.
        public var pid: pid_t = 0
        public init(uid: uid_t, gid: gid_t, umask: mode_t) { self.uid = uid; self.gid = gid; self.umask = umask }
        public init(uid: uid_t, gid: gid_t, umask: mode_t, pid: pid_t) { self.uid = uid; self.gid = gid; self.umask = umask; self.pid = pid }
    }

    public let backingPath: String
    public let options: MountOptions
    /// The accelerator the mount uses.
    public let device: any AcceleratorDevice
    /// The in-process emulated device, when the mount owns one (not with `-o device=SOCKET`).
    public let localDevice: EmulatedZipDevice?
    let codec: BlockCodec
    let inodes: InodeTable
    /// Stable node ids and reopening by them; nil where the backing file
    /// system does not allow it (then the mount offers no export support).
    let stableHandles: StableHandles?
    /// Drops the kernel's cached attributes of a node (set by the adapter).
    public var invalidateAttributes: ((UInt64) -> Void)?
    private let isRoot = geteuid() == 0
    /// The user who mounted: this process's real uid (see `mayControl`).
    private let mounter = getuid()
    /// What the kernel agreed to at FUSE init about POSIX ACLs (`PosixACL.swift`).
    let aclState = Atomic<UInt8>(0)

    /// Opens the backing directory and starts the accelerator.
    public init(backing: String, options: MountOptions) throws {
        let fd = Glibc.open(backing, Int32(WD_O_PATH) | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FSError.last("backing directory '\(backing)'") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = FSError.last("stat '\(backing)'"); close(fd); throw e }
        backingPath = backing
        self.options = options
        if let socket = options.deviceSocket {
            guard !options.faultInjection else {
                close(fd)
                throw FSError(EINVAL, "option 'fault_injection' drives the in-process device; it cannot be combined with 'device=\(socket)'")
            }
            do { device = try ReconnectingDevice(socket: socket) } catch {
                close(fd)
                throw FSError(EIO, "option 'device=\(socket)': \(error)")
            }
            localDevice = nil
        } else {
            var config = EmulatedDeviceConfiguration(engines: options.engines)
            // Each file with I/O in flight holds up to two queues (compress and
            // decompress) while it has requests in flight.
            config.queues = options.queues
            let local = EmulatedZipDevice(configuration: config)
            device = local
            localDevice = local
        }
        // Registered buffers for the cache and the blocks in flight: the
        // engines reach them without copies. Sized to the memory budget.
        codec = BlockCodec(device: device, level: options.level,
                           poolBufferSize: options.blockSize, poolBuffers: max(64, options.memoryBudgetMiB << 20 / options.blockSize),
                           space: SpaceAccount(fd: fd), timeoutMilliseconds: options.engineTimeoutSeconds * 1000)
        inodes = InodeTable(rootFD: fd, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        do {
            let handles = try StableHandles(rootFD: fd, readOnly: options.readOnly)
            stableHandles = handles
            Log.info("file handles are stable (backing handles \(handles.layout.rawValue)): export support on")
        } catch {
            stableHandles = nil
            Log.info("export support off, file handles last only while the kernel caches their file: \(error)")
        }
    }

    /// Whether the mount offers the kernel export support (file handles that
    /// survive FORGET and remounts, NFS re-export).
    public var exportSupport: Bool { stableHandles != nil }

    /// How long the kernel may cache attributes. Short: `st_blocks` changes
    /// when buffered blocks are stored.
    public var attributeTimeout: Double { 1.0 }
    /// How long the kernel may cache names. Long: only this mount changes the
    /// backing directory while it is mounted.
    public var entryTimeout: Double { 60.0 }

    // MARK: Helpers

    func inode(_ id: UInt64) throws -> Inode {
        guard let i = inodes.get(id) else { throw FSError(ESTALE, "unknown node \(id)") }
        return i
    }

    private func checkName(_ name: String) throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else { throw FSError(EINVAL, "bad name '\(name)'") }
        guard name.utf8.count <= 255 else { throw FSError(ENAMETOOLONG) }
    }

    private func writable() throws {
        if options.readOnly { throw FSError(EROFS) }
    }

    /// Logical attributes: backing `stat`, with the logical size of a container.
    func attributes(_ node: Inode) throws -> stat {
        var st = stat()
        _ = try sys("stat node \(node.nodeID)") { fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
        if node.isRegular {
            st.st_size = off_t(logicalSize(node, backingSize: UInt64(st.st_size)))
            if let ctime = recordedChangeTime(node, st) { st.st_ctim = ctime }
        }
        return st
    }

    private func logicalSize(_ node: Inode, backingSize: UInt64) -> UInt64 {
        node.lock.withLock { _ in
            switch node.content {
            case .compressed(let f)?: return f.size
            case .plain?: return backingSize
            case nil:
                if let s = node.cachedSize { return s }
                let fd = openBacking(node, O_RDONLY)
                guard fd >= 0 else { return backingSize }
                defer { close(fd) }
                switch try? CompressedFile.kind(fd: fd, name: "node \(node.nodeID)") {
                case .compressed(let h)?: node.cachedSize = h.logicalSize; return h.logicalSize
                default: return backingSize
                }
            }
        }
    }

    /// Name of a node for messages: its backing path when resolvable.
    func displayName(_ node: Inode) -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = Glibc.readlink(node.procPath, &buf, 4095)
        guard n > 0 else { return "node \(node.nodeID)" }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Opens the backing file of `node` for the file system's own I/O, with
    /// O_NOATIME where allowed: only reads through the mount set access
    /// times, by the mount's policy (`touchAccessTime`), not the file
    /// system reading headers, indexes or read-ahead.
    private func openBacking(_ node: Inode, _ mode: Int32) -> Int32 {
        let fd = Glibc.open(node.procPath, mode | O_CLOEXEC | 0o1000000)     // O_NOATIME
        if fd < 0 && errno == EPERM { return Glibc.open(node.procPath, mode | O_CLOEXEC) }
        return fd
    }

    /// The shared content of a regular file; loads it if needed. Lock held.
    private func content(_ node: Inode) throws -> FileContent {
        if let c = node.content { return c }
        var fd = openBacking(node, O_RDWR)
        if fd < 0 && (errno == EACCES || errno == EROFS || errno == ETXTBSY) { fd = openBacking(node, O_RDONLY) }
        guard fd >= 0 else { throw FSError.last("open \(displayName(node))") }
        let name = displayName(node)
        do {
            let c: FileContent
            switch try CompressedFile.kind(fd: fd, name: name) {
            case .plain: c = .plain(fd)
            case .compressed:
                let f = try CompressedFile.open(fd: fd, name: name, codec: codec)
                f.cacheLimit = options.cacheBlocksPerFile
                f.readahead = max(2, min(32, options.cacheBlocksPerFile / 2))
                c = .compressed(f)
            }
            node.content = c
            node.cachedSize = nil
            return c
        } catch {
            close(fd)
            Log.error("\(error)")
            throw error
        }
    }

    private func entry(parent: Inode, name: String) throws -> Entry {
        let fd = openat(parent.fd, name, Int32(WD_O_PATH) | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw FSError(errno) }
        var st = stat()
        guard fstatat(fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) == 0 else { let e = FSError(errno); close(fd); throw e }
        return try entry(remember(fd: fd, st: st))
    }

    /// The inode of a backing object just opened (`fd` is consumed), with one kernel lookup added.
    private func remember(fd: Int32, st: stat) -> Inode {
        inodes.remember(fd: fd, st: st) { stableHandles?.identity(fd: fd, st: st) }
    }

    /// The entry of an inode that just got a kernel lookup; the lookup is
    /// dropped again when there is no entry to give.
    private func entry(_ node: Inode) throws -> Entry {
        do {
            return Entry(nodeID: node.nodeID, generation: node.generation, attributes: try attributes(node))
        } catch {
            inodes.forget(node.nodeID, 1)
            throw error
        }
    }

    /// LOOKUP "." of a node: the kernel finds a node from a file handle's id
    /// alone. An id it has forgotten (or one from before a remount) is
    /// opened again by the backing handle it encodes (`StableHandles`).
    private func entry(of id: UInt64) throws -> Entry {
        if let node = inodes.retain(id) { return try entry(node) }
        guard let handles = stableHandles else { throw FSError(ESTALE, "unknown node \(id)") }
        let (fd, st) = try handles.reopen(id)
        let node = remember(fd: fd, st: st)
        guard node.nodeID == id else {
            // The object has another id now (e.g. it is the root): the handle is not its own.
            inodes.forget(node.nodeID, 1)
            throw FSError(ESTALE, "node \(id) names node \(node.nodeID)")
        }
        return try entry(node)
    }

    /// LOOKUP ".." of a directory node (the kernel's get_parent, reconnecting
    /// a directory found by handle). The root is its own parent.
    private func parentEntry(of id: UInt64) throws -> Entry {
        let node = try inode(id)
        guard node.isDirectory else { throw FSError(ENOTDIR) }
        if node === inodes.root { return try entry(of: NodeID.root) }
        let fd = openat(node.fd, "..", Int32(WD_O_PATH) | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FSError.last("lookup .. of \(displayName(node))") }
        var st = stat()
        guard fstat(fd, &st) == 0, isUnder(directory: fd, rootDev: inodes.root.dev, rootIno: inodes.root.ino) else {
            close(fd)
            throw FSError(ESTALE, "the parent of \(displayName(node)) is not under the backing root")
        }
        return try entry(remember(fd: fd, st: st))
    }

    /// Gives a node this process has just created its caller as owner and
    /// exactly the mode the kernel passed (the caller's umask is already
    /// applied; this process's own umask plays no part). Nodes are created
    /// owner-only (0600, 0700) and settled here through `fd`, a descriptor
    /// of the node itself, never a path that could follow a symlink: nobody
    /// can use a node before it is the caller's, and the mode comes after the
    /// chown, which clears set-user-ID and set-group-ID. In a set-group-ID
    /// directory the node keeps the group the backing file system gave it
    /// (the directory's) and a new directory keeps its S_ISGID, as on ext4.
    /// Throws when the node cannot be given to the caller: it must not stay
    /// this process's with the caller's mode (the creator removes it).
    private func settle(_ fd: Int32, parent: Inode, mode: mode_t, caller: Caller) throws {
        var st = stat()
        _ = try sys("stat new node") { fstatat(fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
        if isRoot && (caller.uid != 0 || caller.gid != 0) {
            var dir = stat()
            _ = try sys("stat \(displayName(parent))") { fstatat(parent.fd, "", &dir, Int32(WD_AT_EMPTY_PATH)) }
            let gid = dir.st_mode & S_ISGID != 0 ? gid_t.max : caller.gid
            _ = try sys("chown new node to \(caller.uid):\(caller.gid)") {
                fchownat(fd, "", caller.uid, gid, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW)
            }
        }
        guard st.st_mode & S_IFMT != S_IFLNK else { return }  // a symlink's mode is always 0777
        var exact = mode & 0o7777
        if st.st_mode & S_IFMT == S_IFDIR { exact |= st.st_mode & S_ISGID }
        _ = try sys("chmod new node") { fchmodat(AT_FDCWD, "/proc/self/fd/\(fd)", exact, 0) }
    }

    /// The entry of a node just created under `name` (owner-only), settled
    /// for `caller`; the node is removed again if that fails.
    private func created(_ p: Inode, _ name: String, mode: mode_t, directory: Bool = false, caller: Caller) throws -> Entry {
        let fd = openat(p.fd, name, Int32(WD_O_PATH) | O_NOFOLLOW | O_CLOEXEC)
        do {
            guard fd >= 0 else { throw FSError.last("open new \(name)") }
            defer { close(fd) }
            try settle(fd, parent: p, mode: mode, caller: caller)
        } catch {
            unlinkat(p.fd, name, directory ? AT_REMOVEDIR : 0)
            throw error
        }
        return try entry(parent: p, name: name)
    }

    // MARK: Names

    public func lookup(parent: UInt64, name: String) throws -> Entry {
        switch name {
        case ".": try entry(of: parent)
        case "..": try parentEntry(of: parent)
        default: try entry(parent: inode(parent), name: name)
        }
    }

    public func forget(_ node: UInt64, _ n: UInt64) { inodes.forget(node, n) }

    public func getattr(_ node: UInt64) throws -> stat { try attributes(inode(node)) }

    /// What `setattr` changes.
    public struct AttributeChanges {
        public var mode: mode_t?
        public var uid: uid_t?
        public var gid: gid_t?
        public var size: UInt64?
        public var atime: timespec?
        public var mtime: timespec?
        /// The kernel's own ctime (writeback cache), to be shown from now on.
        public var ctime: timespec?
        public init() {}
    }

    /// `caller`: who asks (nil: this process). A mode the kernel sends is
    /// either a chmod or its clearing of set-ID bits before a write,
    /// truncate or fallocate, computed with an older rule that keeps
    /// S_ISGID without S_IXGRP for everyone; a caller outside the file's
    /// group without CAP_FSETID keeps it in neither case (`CallerCredentials`).
    public func setattr(_ id: UInt64, _ ch: AttributeChanges, caller: Caller? = nil) throws -> stat {
        let node = try inode(id)
        try writable()
        if var mode = ch.mode {
            if mode & S_ISGID != 0, let caller, caller.uid != 0, node.isRegular {
                var st = stat()
                _ = try sys("stat node \(node.nodeID)") { fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
                if !CallerCredentials(caller).mayKeepSetGroupID(gid: ch.gid ?? st.st_gid) { mode &= ~S_ISGID }
            }
            _ = try sys("chmod \(displayName(node))") { fchmodat(AT_FDCWD, node.procPath, mode & 0o7777, 0) }
        }
        if ch.uid != nil || ch.gid != nil {
            _ = try sys("chown \(displayName(node))") {
                fchownat(node.fd, "", ch.uid ?? uid_t.max, ch.gid ?? gid_t.max, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW)
            }
        }
        if let size = ch.size {
            guard node.isRegular else { throw FSError(EISDIR) }
            try node.lock.withLock { (_) throws in
                switch try content(node) {
                case .compressed(let f):
                    try f.truncate(to: size)
                    try f.flush()
                case .plain(let fd):
                    _ = try sys("truncate \(displayName(node))") { ftruncate(fd, off_t(size)) }
                }
                if node.openHandles == 0 { node.content = nil }
            }
            try dropSetIDBits(node, caller: caller)
        }
        if ch.atime != nil || ch.mtime != nil {
            // Store buffered data first so the times set here are the last word.
            if node.isRegular { try flushContent(node) }
            var times = [ch.atime ?? timespec(tv_sec: 0, tv_nsec: Int(WD_UTIME_OMIT)),
                         ch.mtime ?? timespec(tv_sec: 0, tv_nsec: Int(WD_UTIME_OMIT))]
            if node.type == S_IFLNK {
                _ = try sys("utimens \(displayName(node))") { utimensat(node.fd, "", &times, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
            } else {
                _ = try sys("utimens \(displayName(node))") { utimensat(AT_FDCWD, node.procPath, &times, 0) }
            }
        }
        // The ctime shown: the kernel's (writeback cache), else the backing one this change set.
        if let ctime = ch.ctime { recordChangeTime(node, ctime) } else { forgetChangeTime(node) }
        return try attributes(node)
    }

    private func flushContent(_ node: Inode) throws {
        try node.lock.withLock { (_) throws in
            if case .compressed(let f)? = node.content { try f.flush() }
        }
    }

    public func readlink(_ id: UInt64) throws -> String {
        let node = try inode(id)
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = try sys("readlink") { readlinkat(node.fd, "", &buf, buf.count - 1) }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func mknod(parent: UInt64, name: String, mode: mode_t, rdev: dev_t, caller: Caller) throws -> Entry {
        let p = try inode(parent)
        try checkName(name); try writable()
        if mode & S_IFMT == S_IFREG {
            let (e, fd) = try createFile(p, name, mode: mode, exclusive: true, caller: caller)
            close(fd)
            return e
        }
        _ = try sys("mknod \(name)") { mknodat(p.fd, name, (mode & S_IFMT) | 0o600, rdev) }
        return try created(p, name, mode: mode, caller: caller)
    }

    public func mkdir(parent: UInt64, name: String, mode: mode_t, caller: Caller) throws -> Entry {
        let p = try inode(parent)
        try checkName(name); try writable()
        _ = try sys("mkdir \(name)") { mkdirat(p.fd, name, 0o700) }
        return try created(p, name, mode: mode, directory: true, caller: caller)
    }

    public func symlink(parent: UInt64, name: String, target: String, caller: Caller) throws -> Entry {
        let p = try inode(parent)
        try checkName(name); try writable()
        _ = try sys("symlink \(name)") { symlinkat(target, p.fd, name) }
        return try created(p, name, mode: 0o777, caller: caller)
    }

    public func link(_ id: UInt64, newParent: UInt64, newName: String) throws -> Entry {
        let node = try inode(id), p = try inode(newParent)
        try checkName(newName); try writable()
        if node.type == S_IFLNK {
            _ = try sys("link \(newName)") { linkat(node.fd, "", p.fd, newName, Int32(WD_AT_EMPTY_PATH)) }
        } else {
            _ = try sys("link \(newName)") { linkat(AT_FDCWD, node.procPath, p.fd, newName, AT_SYMLINK_FOLLOW) }
        }
        return try entry(parent: p, name: newName)
    }

    public func unlink(parent: UInt64, name: String) throws {
        let p = try inode(parent)
        try writable()
        _ = try sys("unlink \(name)") { unlinkat(p.fd, name, 0) }
    }

    public func rmdir(parent: UInt64, name: String) throws {
        let p = try inode(parent)
        try writable()
        _ = try sys("rmdir \(name)") { unlinkat(p.fd, name, AT_REMOVEDIR) }
    }

    public func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32) throws {
        let p = try inode(parent), np = try inode(newParent)
        try checkName(newName); try writable()
        _ = try sys("rename \(name)") { wd_renameat2(p.fd, name, np.fd, newName, flags) }
    }

    // MARK: Files

    /// Creates a regular file (a compressed container unless disabled) and
    /// returns its entry and a read-write descriptor.
    private func createFile(_ p: Inode, _ name: String, mode: mode_t, exclusive: Bool, caller: Caller) throws -> (Entry, Int32) {
        var fd = openat(p.fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        var created = fd >= 0
        if fd < 0 && errno == EEXIST && !exclusive {
            fd = openat(p.fd, name, O_RDWR | O_CLOEXEC | O_NOFOLLOW)
            created = false
        }
        guard fd >= 0 else { throw FSError.last("create \(name)") }
        if created {
            do {
                if options.compressNewFiles {
                    _ = try CompressedFile.create(fd: dup(fd), name: name, codec: codec, blockSize: options.blockSize,
                                                  encoding: options.encoding)
                }
                // After the header: a write by a process without CAP_FSETID clears set-user-ID.
                try settle(fd, parent: p, mode: mode, caller: caller)
            } catch {
                unlinkat(p.fd, name, 0)
                close(fd)
                throw error
            }
        }
        do {
            return (try entry(parent: p, name: name), fd)
        } catch {
            close(fd)
            throw error
        }
    }

    public func create(parent: UInt64, name: String, mode: mode_t, flags: Int32, caller: Caller) throws -> (Entry, UnsafeMutableRawPointer) {
        let p = try inode(parent)
        try checkName(name); try writable()
        var existing = stat()
        let existed = fstatat(p.fd, name, &existing, AT_SYMLINK_NOFOLLOW) == 0
        let (e, fd) = try createFile(p, name, mode: mode, exclusive: flags & O_EXCL != 0, caller: caller)
        close(fd)
        // O_TRUNC of a file this call created truncates nothing (and keeps its set-ID bits).
        let fh = try open(e.nodeID, flags: flags & ~(O_CREAT | O_EXCL | (existed ? 0 : O_TRUNC)), caller: caller)
        return (e, fh)
    }

    /// Opens a file; the handle is an opaque pointer the adapter keeps in `fh`.
    /// `caller`: who opens it (nil: this process). Writes through the handle
    /// may use root-reserved backing space only when that is root: with the
    /// writeback cache the kernel sends every write as uid 0 (seen on 6.18,
    /// also when the user's own fsync or close triggers it), so the opener
    /// is the writer the file system can know.
    public func open(_ id: UInt64, flags: Int32, caller: Caller? = nil) throws -> UnsafeMutableRawPointer {
        let node = try inode(id)
        if flags & O_ACCMODE != O_RDONLY || flags & O_TRUNC != 0 { try writable() }
        try node.lock.withLock { (_) throws in
            let c = try content(node)
            node.openHandles += 1
            if flags & O_TRUNC != 0 {
                switch c {
                case .compressed(let f): try f.truncate(to: 0); try f.flush()
                case .plain(let fd): _ = try sys("truncate") { ftruncate(fd, 0) }
                }
                // The kernel sends no SETATTR for an atomic O_TRUNC.
                try dropSetIDBits(node, caller: caller)
            }
        }
        let h = OpenHandle(inode: node, flags: flags)
        h.privileged = caller.map { $0.uid == 0 } ?? isRoot
        return Unmanaged.passRetained(h).toOpaque()
    }

    static func handle(_ fh: UnsafeMutableRawPointer) -> OpenHandle { Unmanaged<OpenHandle>.fromOpaque(fh).takeUnretainedValue() }

    public func read(_ fh: UnsafeMutableRawPointer, offset: UInt64, count: Int, into buf: UnsafeMutableRawPointer) throws -> Int {
        let h = Self.handle(fh)
        return try h.inode.lock.withLock { (_) throws -> Int in
            switch try content(h.inode) {
            case .compressed(let f):
                let n: Int
                do { n = try f.read(offset: offset, count: count, into: buf) } catch { Log.error("\(error)"); throw error }
                touchAccessTime(h.inode)
                return n
            case .plain(let fd):
                let n = try preadFully(fd, buf, count, Int(offset), "read")
                touchAccessTime(h.inode)
                return n
            }
        }
    }

    /// `caller`: the writer, when the request comes from it (not the
    /// kernel's write-back of cached pages): its write drops set-ID bits.
    public func write(_ fh: UnsafeMutableRawPointer, offset: UInt64, count: Int, from buf: UnsafeRawPointer, caller: Caller? = nil) throws -> Int {
        let h = Self.handle(fh)
        try writable()
        try dropSetIDBits(h.inode, caller: caller)
        return try h.inode.lock.withLock { (_) throws -> Int in
            switch try content(h.inode) {
            case .compressed(let f):
                do {
                    // With the writeback cache the kernel places O_APPEND writes itself.
                    let appendHere = h.append && !options.writebackCache
                    try f.write(offset: appendHere ? f.size : offset, count: count, from: buf, privileged: h.privileged)
                } catch {
                    FSError.log(error)
                    throw error
                }
            case .plain(let fd):
                var off = Int(offset)
                if h.append && !options.writebackCache { var st = stat(); fstat(fd, &st); off = Int(st.st_size) }
                try pwriteFully(fd, buf, count, off, "write")
            }
            return count
        }
    }

    /// `close()` of one descriptor: stores buffered blocks; errors reach close().
    public func flush(_ fh: UnsafeMutableRawPointer) throws {
        let h = Self.handle(fh)
        try h.inode.lock.withLock { (_) throws in
            if case .compressed(let f)? = h.inode.content {
                do { try f.flush() } catch { FSError.log(error); throw error }
                // Without the writeback cache the kernel shows the times the
                // file system reports and caches them: what this store changed
                // must not wait for the cache to expire.
                if !options.writebackCache { invalidateAttributes?(h.inode.nodeID) }
            }
        }
    }

    /// Last reference to a handle: when the file has no handle left, its
    /// content is stored, superseded block copies released, and memory freed.
    public func release(_ fh: UnsafeMutableRawPointer) {
        let um = Unmanaged<OpenHandle>.fromOpaque(fh)
        let h = um.takeUnretainedValue()
        defer { um.release() }
        h.inode.lock.withLock { _ in
            h.inode.openHandles -= 1
            guard h.inode.openHandles == 0, let c = h.inode.content else { return }
            switch c {
            case .compressed(let f):
                do {
                    try f.flush()
                    if f.hasStaleCopies { try preservingTimes(h.inode, f.fd) { () throws in try f.sync() } }
                } catch {
                    // Keep the content (and its unstored blocks) in memory: the
                    // next open, fsync or the unmount retries; nothing is dropped.
                    // Blocks that can never be stored were given up already:
                    // with nothing left to retry, the memory goes.
                    if f.hasUnstoredBlocks {
                        Log.error("\(f.name): storing on close failed, kept in memory for a retry: \(error)")
                        return
                    }
                    FSError.log(error)
                }
                h.inode.cachedSize = f.size
            case .plain(let fd):
                close(fd)
            }
            h.inode.content = nil
        }
    }

    /// Runs maintenance that must not change the file's times (punching
    /// superseded copies updates mtime on the backing file system): atime
    /// and mtime are put back, and the ctime shown is recorded. Callers
    /// store buffered data first (`flush`): that is a change of the file.
    /// Under the inode's lock, as access-time updates are, so neither undoes
    /// the other.
    private func preservingTimes(_ node: Inode, _ fd: Int32, _ body: () throws -> Void) throws {
        var st = stat()
        fstat(fd, &st)
        let ctime = recordedChangeTime(node, st) ?? st.st_ctim
        try body()
        var times = [st.st_atim, st.st_mtim]
        futimens(fd, &times)
        recordChangeTime(node, ctime)
    }

    public func fsync(_ fh: UnsafeMutableRawPointer, dataOnly: Bool) throws {
        let h = Self.handle(fh)
        try h.inode.lock.withLock { (_) throws in
            switch try content(h.inode) {
            case .compressed(let f):
                do {
                    try f.flush()
                    try preservingTimes(h.inode, f.fd) { () throws in try f.sync() }
                } catch { FSError.log(error); throw error }
            case .plain(let fd):
                _ = try sys("fsync") { dataOnly ? fdatasync(fd) : Glibc.fsync(fd) }
            }
            // A container's sync stores data and size (fdatasync); fsync also
            // promises the rest of the metadata: times (restored just now), mode, owner.
            if !dataOnly, case .compressed(let f)? = h.inode.content { _ = try sys("fsync \(f.name)") { Glibc.fsync(f.fd) } }
        }
    }

    /// `caller`: who allocates; as a write, the change drops set-ID bits.
    public func fallocate(_ fh: UnsafeMutableRawPointer, mode: Int32, offset: UInt64, length: UInt64, caller: Caller? = nil) throws {
        let h = Self.handle(fh)
        try writable()
        try dropSetIDBits(h.inode, caller: caller)
        try h.inode.lock.withLock { (_) throws in
            switch try content(h.inode) {
            case .compressed(let f):
                // Allocation reserves backing space for a later write of the
                // range or fails with ENOSPC (docs/FORMAT.md, "Allocation").
                switch mode {
                case 0, FALLOC_FL_KEEP_SIZE:
                    try f.allocate(offset: offset, length: length, keepSize: mode != 0, privileged: h.privileged)
                case FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
                    try f.zeroRange(offset: offset, length: length)
                case FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE:
                    try f.allocate(offset: offset, length: length, keepSize: mode != FALLOC_FL_ZERO_RANGE, privileged: h.privileged)
                    try f.zeroRange(offset: offset, length: length, keepingAllocations: true)
                default:
                    throw FSError(EOPNOTSUPP)
                }
            case .plain(let fd):
                _ = try sys("fallocate") { wd_fallocate(fd, mode, Int64(offset), Int64(length)) }
            }
        }
    }

    public func lseek(_ fh: UnsafeMutableRawPointer, offset: UInt64, whence: Int32) throws -> UInt64 {
        let h = Self.handle(fh)
        return try h.inode.lock.withLock { (_) throws -> UInt64 in
            switch try content(h.inode) {
            case .compressed(let f):
                guard whence == Int32(WD_SEEK_DATA) || whence == Int32(WD_SEEK_HOLE) else { throw FSError(EINVAL) }
                return try f.seek(offset, data: whence == Int32(WD_SEEK_DATA))
            case .plain(let fd):
                return UInt64(try sys("lseek") { Glibc.lseek(fd, off_t(offset), whence) })
            }
        }
    }

    // MARK: Directories

    public func opendir(_ id: UInt64) throws -> UnsafeMutableRawPointer {
        let node = try inode(id)
        let fd = openat(node.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FSError.last("opendir") }
        guard let dir = fdopendir(fd) else { let e = FSError.last("opendir"); close(fd); throw e }
        let h = OpenHandle(inode: node, flags: O_RDONLY)
        h.dir = dir
        return Unmanaged.passRetained(h).toOpaque()
    }

    /// Directory entries from index `offset` on (the offset cookie is the
    /// index + 1). The listing is read once per opendir, so offsets are stable.
    public func readdir(_ fh: UnsafeMutableRawPointer, offset: Int) -> ArraySlice<(name: String, ino: UInt64, type: UInt8)> {
        let h = Self.handle(fh)
        if h.dirEntries == nil || offset == 0 {
            var list: [(name: String, ino: UInt64, type: UInt8)] = []
            if let d = h.dir {
                rewinddir(d)
                while let e = Glibc.readdir(d) {
                    let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                    list.append((name, UInt64(e.pointee.d_ino), e.pointee.d_type))
                }
            }
            h.dirEntries = list
        }
        let all = h.dirEntries!
        return all[min(offset, all.count)...]
    }

    /// `fsync` of a directory: makes the names created, renamed or removed
    /// in it durable (the backing directory's fsync). Always a full fsync,
    /// also for fdatasync: a directory's names are its data.
    public func fsyncdir(_ fh: UnsafeMutableRawPointer) throws {
        let h = Self.handle(fh)
        guard let d = h.dir else { throw FSError(EBADF) }
        do { _ = try sys("fsync directory \(displayName(h.inode))") { Glibc.fsync(dirfd(d)) } } catch {
            Log.error("\(error)")
            throw error
        }
    }

    public func releasedir(_ fh: UnsafeMutableRawPointer) {
        let um = Unmanaged<OpenHandle>.fromOpaque(fh)
        if let d = um.takeUnretainedValue().dir { closedir(d) }
        um.release()
    }

    public func statfs() throws -> statvfs {
        var s = statvfs()
        _ = try sys("statfs") { fstatvfs(inodes.root.fd, &s) }
        // Space promised to unstored blocks and to allocations is not free.
        if let held = codec.space?.snapshot().reserved, held > 0, s.f_frsize > 0 {
            let blocks = fsblkcnt_t(held / Int(s.f_frsize))
            s.f_bfree -= min(s.f_bfree, blocks)
            s.f_bavail -= min(s.f_bavail, blocks)
        }
        return s
    }

    // MARK: Extended attributes

    /// The backing object's `/proc/self/fd/N` path for the xattr calls. The
    /// kernel resolves it by jumping to the object the descriptor holds and
    /// follows no symlink after the jump, so on a symlink the calls reach the
    /// link itself, as the l*xattr calls do. (Linux 6.13's *xattrat calls
    /// refuse an `O_PATH` descriptor with AT_EMPTY_PATH: EBADF.) `user.*` on
    /// a symlink is refused by the kernel before the request is sent, as on ext4.
    private func xattrPath(_ node: Inode) -> String { node.procPath }

    /// Runs one xattr call on the backing object. The application gets the
    /// backing errno; running out of room (the backing file system's
    /// capacity for attributes is the mount's) is also logged, with the file.
    private func backingXattr<T: BinaryInteger>(_ what: String, _ node: Inode, _ name: String?, size: Int = 0, _ call: () -> T) throws -> T {
        do { return try sys(what, call) } catch let e as FSError {
            if [ENOSPC, EDQUOT, E2BIG, EIO].contains(e.errno) {
                let attribute = name.map { " '\($0)' (\(size) bytes)" } ?? ""
                Log.warning("\(displayName(node)): \(what)\(attribute): \(String(cString: strerror(e.errno))) from the backing file system")
            }
            throw e
        }
    }

    /// Only root and the user who mounted may use the mount root's control
    /// attributes (`deviceAttribute`, `faultAttribute`): with `allow_other`
    /// other users reach the root too, and neither stopping the accelerator
    /// nor the counters of everyone's traffic is theirs. Others get EPERM.
    private func mayControl(_ caller: Caller) -> Bool { caller.uid == 0 || caller.uid == mounter }

    /// Read on the mount root: the accelerator's counters (not stored anywhere).
    public static let deviceAttribute = "user.warpfs.device"
    /// Written on the mount root with `-o fault_injection`: `error_rate=F`
    /// (a fraction of requests fail with an engine error), `hang` (the
    /// device stops answering), `resume`, `reset` (the device fences every
    /// queue; requests in flight fail). For testing error paths.
    public static let faultAttribute = "user.warpfs.fault"

    private func controlFault(_ command: String) throws {
        guard options.faultInjection, let device = localDevice else {
            throw FSError(EPERM, "\(WarpFileSystem.faultAttribute): fault injection is off (mount with -o fault_injection)")
        }
        let parts = command.split(separator: "=", maxSplits: 1).map(String.init)
        switch (parts[0], parts.count > 1 ? parts[1] : nil) {
        case ("error_rate", let v?):
            guard let rate = Double(v), (0...1).contains(rate) else {
                throw FSError(EINVAL, "\(WarpFileSystem.faultAttribute): error_rate=\(v): expected a fraction in 0...1")
            }
            device.faults.engineErrorRate = rate
        case ("hang", nil): device.faults.stopAnswering = true
        case ("resume", nil): device.faults.stopAnswering = false
        case ("reset", nil): device.reset()
        default:
            throw FSError(EINVAL, "\(WarpFileSystem.faultAttribute): unknown command '\(command)' (error_rate=F, hang, resume, reset)")
        }
        Log.info("fault injection: \(command)")
    }

    private var deviceReport: String {
        let aside = "buffers set aside after time-outs=\(codec.quarantined.load(ordering: .relaxed))"
        guard let local = localDevice else {
            return "\(device.name) (served by warpdrived at \(options.deviceSocket ?? "?")): \(aside)\n"
        }
        return "\(local.name): \(local.totals), isolated=\(local.isIsolated ? 1 : 0), \(aside)\n"
    }

    /// Attributes of backing objects that belong to the mount itself
    /// (`trusted.warpfs.*`: the file-handle key on the root, the recorded
    /// change time on files): not shown through the mount, not readable or
    /// writable through it, so no copy made through the mount (`cp -a`)
    /// carries them and nobody changes them under the mount.
    private func isMountPrivate(_ id: UInt64, _ name: String) -> Bool {
        name.hasPrefix("trusted.warpfs.")
    }

    public func setxattr(_ id: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32, caller: Caller) throws {
        if isMountPrivate(id, name) { throw FSError(EPERM, "\(name) belongs to the mount") }
        if id == 1 && name == WarpFileSystem.faultAttribute {
            guard mayControl(caller) else {
                throw FSError(EPERM, "\(WarpFileSystem.faultAttribute): uid \(caller.uid) may not inject faults (only root and uid \(mounter))")
            }
            let text = String(decoding: value, as: UTF8.self)
            return try controlFault(String(text.filter { $0 != " " && $0 != "\n" && $0 != "\0" }))
        }
        let node = try inode(id)
        try writable()
        try refuseACLIfOff(name)
        let path = xattrPath(node)
        _ = try backingXattr("setxattr", node, name, size: value.count) { CWarpSys.setxattr(path, name, value.baseAddress, value.count, flags) }
    }

    /// Size when `into` is empty, else the bytes copied (ERANGE if too small).
    public func getxattr(_ id: UInt64, name: String, into buf: UnsafeMutableRawBufferPointer, caller: Caller) throws -> Int {
        if id == 1 && name == WarpFileSystem.deviceAttribute {
            guard mayControl(caller) else { throw FSError(EPERM) }
            let text = Array(deviceReport.utf8)
            if buf.count == 0 { return text.count }
            guard buf.count >= text.count else { throw FSError(ERANGE) }
            buf.copyBytes(from: text)
            return text.count
        }
        if isMountPrivate(id, name) { throw FSError(ENODATA) }
        let node = try inode(id)
        try refuseACLIfOff(name)
        let path = xattrPath(node)
        do {
            return try backingXattr("getxattr", node, name) { CWarpSys.getxattr(path, name, buf.baseAddress, buf.count) }
        } catch let e as FSError where e.errno == EOPNOTSUPP && PosixACL.isACL(name) {
            // A backing file system without ACLs has none to give: the
            // kernel asks on every permission check, and must hear "none".
            throw FSError(ENODATA)
        }
    }

    /// Size when `into` is empty, else the bytes copied (ERANGE if too
    /// small). `trusted`: whether the caller may see `trusted.*` names
    /// (CAP_SYS_ADMIN on ext4; the backing call runs as root and lists them all).
    public func listxattr(_ id: UInt64, into buf: UnsafeMutableRawBufferPointer, trusted: Bool = true) throws -> Int {
        let node = try inode(id)
        let acls = aclsEnforced
        // Any node may carry the mount's own attributes: always filtered.
        return try filteredList(node, into: buf) {
            (acls || !PosixACL.isACL($0)) && (trusted || !$0.hasPrefix("trusted.")) && !isMountPrivate(id, $0)
        }
    }

    /// listxattr keeping only the names `keep` accepts: the ACL attributes
    /// on a mount without ACLs (ext4 mounted noacl lists none), `trusted.*`
    /// for a caller other than root. The backing list is read whole (again
    /// if it grew in between), so a size query gives the filtered size.
    private func filteredList(_ node: Inode, into buf: UnsafeMutableRawBufferPointer, keep: (String) -> Bool) throws -> Int {
        var all: [UInt8] = []
        while true {
            let size = try sys("listxattr \(displayName(node))") { CWarpSys.listxattr(node.procPath, nil, 0) }
            all = [UInt8](repeating: 0, count: size)
            let n = all.withUnsafeMutableBytes { CWarpSys.listxattr(node.procPath, $0.baseAddress?.assumingMemoryBound(to: CChar.self), size) }
            if n >= 0 { all.removeSubrange(n...); break }
            if errno != ERANGE && errno != EINTR { throw FSError.last("listxattr \(displayName(node))") }
        }
        var kept: [UInt8] = []
        for name in all.split(separator: 0) where keep(String(decoding: name, as: UTF8.self)) {
            kept += name
            kept.append(0)
        }
        if buf.count == 0 { return kept.count }
        guard buf.count >= kept.count else { throw FSError(ERANGE) }
        buf.copyBytes(from: kept)
        return kept.count
    }

    public func removexattr(_ id: UInt64, name: String) throws {
        if isMountPrivate(id, name) { throw FSError(EPERM, "\(name) belongs to the mount") }
        let node = try inode(id)
        try writable()
        try refuseACLIfOff(name)
        let path = xattrPath(node)
        _ = try backingXattr("removexattr", node, name) { CWarpSys.removexattr(path, name) }
    }

    // MARK: Lifetime

    /// Stores every buffered block and header, makes them durable and drops
    /// superseded copies, as a last close does (on unmount or signal: a
    /// release the kernel had not yet delivered must not leave stale copies).
    public func flushAll() {
        for node in inodes.all where node.isRegular {
            node.lock.withLock { _ in
                if case .compressed(let f)? = node.content {
                    do {
                        try f.flush()
                        if f.hasStaleCopies { try preservingTimes(node, f.fd) { () throws in try f.sync() } }
                    } catch { Log.error("\(f.name): storing at unmount failed: \(error)") }
                }
            }
        }
    }

    /// Drops clean cached blocks of files nobody is using right now (their
    /// lock is free), while block buffers exceed the memory budget. Called
    /// periodically by the server; never waits for a file's lock.
    public func reclaimMemory() {
        guard codec.overBudget else { return }
        for node in inodes.all where node.isRegular {
            node.lock.withLockIfAvailable { _ in
                if case .compressed(let f)? = node.content { f.dropCache() }
            }
            if !codec.overBudget { return }
        }
    }

    /// Stops the accelerator.
    public func shutdown() {
        flushAll()
        device.shutdown()
    }
}
