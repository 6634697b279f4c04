#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

// Names: looking them up, creating and removing nodes, renaming, links.
// A new node is created owner-only and settled for its caller (`settle`).
extension WarpFileSystem {
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
        if runsAsRoot && (caller.uid != 0 || caller.gid != 0) {
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
    ///
    /// The node is found again by name (no call creates a directory, node or
    /// symlink and returns a descriptor), so before anything is given away
    /// the object found must be the one just made: this process's, of the
    /// `type` created, with no group or other bits yet and no other link.
    /// Anything else (a name swapped in the moment between, by a rename
    /// through the mount or in the backing directory) is refused untouched.
    /// `prepare` runs on the node's descriptor before it is settled (a new
    /// directory takes its parent's properties there).
    private func created(_ p: Inode, _ name: String, type: mode_t, mode: mode_t, caller: Caller,
                         prepare: (Int32) -> Void = { _ in }) throws -> Entry {
        let fd = openat(p.fd, name, Int32(WD_O_PATH) | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw FSError.last("open new \(name)") }
        defer { close(fd) }
        var st = stat()
        _ = try sys("stat new \(name)") { fstatat(fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
        let ours = st.st_uid == geteuid() && st.st_mode & S_IFMT == type
            && (type == S_IFLNK || st.st_mode & 0o077 == 0)
            && (type == S_IFDIR ? st.st_nlink <= 2 : st.st_nlink == 1)
        guard ours else { throw FSError(EEXIST, "\(name) was replaced while it was being created; left as it is") }
        prepare(fd)
        do {
            try settle(fd, parent: p, mode: mode, caller: caller)
        } catch {
            unlinkat(p.fd, name, type == S_IFDIR ? AT_REMOVEDIR : 0)
            throw error
        }
        return try entry(parent: p, name: name)
    }

    public func lookup(parent: UInt64, name: String) throws -> Entry {
        switch name {
        case ".": return try entry(of: parent)
        case "..": return try parentEntry(of: parent)
        default:
            // The pack is not a name of the mount.
            if WarpFileSystem.isReservedName(name) { throw FSError(ENOENT) }
            return try entry(parent: inode(parent), name: name)
        }
    }

    public func forget(_ node: UInt64, _ n: UInt64) { inodes.forget(node, n) }

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
        return try created(p, name, type: mode & S_IFMT, mode: mode, caller: caller)
    }

    public func mkdir(parent: UInt64, name: String, mode: mode_t, caller: Caller) throws -> Entry {
        let p = try inode(parent)
        try checkName(name); try writable()
        _ = try sys("mkdir \(name)") { mkdirat(p.fd, name, 0o700) }
        return try created(p, name, type: S_IFDIR, mode: mode, caller: caller) { inheritProperties(from: p, into: $0, name: name) }
    }

    public func symlink(parent: UInt64, name: String, target: String, caller: Caller) throws -> Entry {
        let p = try inode(parent)
        try checkName(name); try writable()
        _ = try sys("symlink \(name)") { symlinkat(target, p.fd, name) }
        return try created(p, name, type: S_IFLNK, mode: 0o777, caller: caller)
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
        if WarpFileSystem.isReservedName(name) { throw FSError(ENOENT) }
        // A packed file's record is freed once its last name is gone.
        let held = holdForRemoval(p, name)
        defer { if let held { close(held.fd) } }
        _ = try sys("unlink \(name)") { unlinkat(p.fd, name, 0) }
        if let held { releaseIfGone(held.fd, node: held.node, directory: p) }
    }

    public func rmdir(parent: UInt64, name: String) throws {
        let p = try inode(parent)
        try writable()
        if WarpFileSystem.isReservedName(name) { throw FSError(ENOENT) }
        _ = try sys("rmdir \(name)") { unlinkat(p.fd, name, AT_REMOVEDIR) }
    }

    public func rename(parent: UInt64, name: String, newParent: UInt64, newName: String, flags: UInt32) throws {
        let p = try inode(parent), np = try inode(newParent)
        try checkName(newName); try writable()
        if WarpFileSystem.isReservedName(name) { throw FSError(ENOENT) }
        // A file renamed over is removed: its record, if packed, is freed.
        let held = flags & 2 == 0 ? holdForRemoval(np, newName) : nil       // not RENAME_EXCHANGE
        defer { if let held { close(held.fd) } }
        _ = try sys("rename \(name)") { wd_renameat2(p.fd, name, np.fd, newName, flags) }
        if let held { releaseIfGone(held.fd, node: held.node, directory: np) }
    }

    /// Creates a regular file (a compressed container unless the mount's
    /// options or the directory's properties say plain; its codec, level and
    /// block size from the same) and returns its entry and a read-write descriptor.
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
                let settings = newFileSettings(in: p)
                if settings.compress {
                    _ = try CompressedFile.create(fd: dup(fd), name: name, codec: codec, blockSize: settings.blockSize,
                                                  encoding: settings.encoding, level: settings.level, version: options.formatVersion)
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
}
