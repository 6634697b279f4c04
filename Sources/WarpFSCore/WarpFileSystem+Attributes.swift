#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpFSFormat

// A node's attributes as the mount shows them (the logical size of a
// container, the recorded ctime), their changes, and the file system's.
extension WarpFileSystem {
    /// Logical attributes: backing `stat`, with the logical size of a container.
    func attributes(_ node: Inode) throws -> stat {
        var st = stat()
        _ = try sys("stat node \(node.nodeID)") { fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
        if node.isRegular {
            // A packed file: its share of the pack (its record's bytes), and
            // the change time it had before it was packed.
            // The reference holds its size too (read once, not again as the
            // file's kind).
            let ref = st.st_blocks == 0 && st.st_size == 0 ? packReference(node) : nil
            st.st_size = off_t(ref?.logicalSize ?? logicalSize(node, backingSize: UInt64(st.st_size)))
            if let ref {
                st.st_blocks = blkcnt_t((ref.recordLength + 511) / 512)
                if let t = ref.changeTime { st.st_ctim = timespec(tv_sec: Int(t.seconds), tv_nsec: Int(t.nanoseconds)) }
            } else if let ctime = recordedChangeTime(node, st) { st.st_ctim = ctime }
        }
        return st
    }

    private func logicalSize(_ node: Inode, backingSize: UInt64) -> UInt64 {
        node.lock.withLock { _ in
            switch node.content {
            case .compressed(let f)? where !options.shared || f.holdsWriterLock: return f.size
            case .plain?: return backingSize
            case .compressed?, nil:
                // Shared: another host may have changed it; read its header.
                if !options.shared, let s = node.cachedSize { return s }
                let fd = openBacking(node, O_RDONLY)
                guard fd >= 0 else { return backingSize }
                defer { close(fd) }
                switch try? CompressedFile.kind(fd: fd, name: "node \(node.nodeID)") {
                case .compressed(let h)?: node.cachedSize = h.logicalSize; return h.logicalSize
                case .packed(let ref)?: node.cachedSize = ref.logicalSize; return ref.logicalSize
                default: return backingSize
                }
            }
        }
    }

    /// The packed-file reference on `node`'s backing file, if it has one.
    func packReference(_ node: Inode) -> PackReference? {
        var buf = [UInt8](repeating: 0, count: PackReference.size)
        let n = buf.withUnsafeMutableBytes { CWarpSys.getxattr(node.procPath, PackReference.attributeName, $0.baseAddress, $0.count) }
        guard n == PackReference.size else { return nil }
        return try? PackReference.decode(buf)
    }

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
        if let size = ch.size { try setSize(node, size, caller: caller) }
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
        // Under the file's lock: a packed file's reference is rewritten, and
        // must not race its unpacking or packing.
        node.lock.withLock { _ in
            if let ctime = ch.ctime { recordChangeTime(node, ctime) } else { forgetChangeTime(node) }
        }
        return try attributes(node)
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
}
