#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

// Open regular files: the shared content (container or plain file) under
// the inode's lock, and the handles' I/O.
extension WarpFileSystem {
    /// The shared content of a regular file; loads it if needed. Lock held.
    private func content(_ node: Inode) throws -> FileContent {
        if let c = node.content { return c }
        var fd = openBacking(node, O_RDWR)
        if fd < 0 && (errno == EACCES || errno == EROFS || errno == ETXTBSY) { fd = openBacking(node, O_RDONLY) }
        guard fd >= 0 else { throw FSError.last("open \(displayName(node))") }
        let name = displayName(node)
        // While packing is on: no packing of this file while it is open here
        // (the packer gives a file up rather than wait for this lock, so the
        // wait is short). Not under `shared`: other hosts' writer locks span
        // the whole file.
        if options.packSmallFiles && !options.shared, case .held? = PackingLock.share(fd, seconds: 5) {
            Log.error("\(name): still being packed after 5 s; opened without waiting for it")
        }
        do {
            let c: FileContent
            let kind = try CompressedFile.kind(fd: fd, name: name)
            switch kind {
            case .plain: c = .plain(fd)
            case .compressed, .packed:
                let f: CompressedFile
                let lockTimeout = options.shared ? Double(options.lockTimeoutSeconds) : nil
                if case .packed(let ref) = kind {
                    f = try packedContent(fd: fd, name: name, reference: ref)
                    f.writerLockTimeout = lockTimeout
                } else {
                    f = try CompressedFile.open(fd: fd, name: name, codec: codec, writerLockTimeout: lockTimeout)
                }
                f.versionWhenEmptied = options.formatVersion
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

    /// Sets the length of `node`'s content `c` (lock held): a container
    /// stores what the cut changed, a plain file is truncated in place.
    private func truncate(_ c: FileContent, of node: Inode, to size: UInt64) throws {
        switch c {
        case .compressed(let f):
            try f.truncate(to: size)
            try f.flush()
        case .plain(let fd):
            _ = try sys("truncate \(displayName(node))") { ftruncate(fd, off_t(size)) }
        }
    }

    /// SETATTR of the size of `node` by `caller`; as a write, the change
    /// drops set-ID bits. A file nobody has open is not kept loaded.
    func setSize(_ node: Inode, _ size: UInt64, caller: Caller?) throws {
        guard node.isRegular else { throw FSError(EISDIR) }
        try node.lock.withLock { (_) throws in
            let c = try content(node)
            try truncate(c, of: node, to: size)
            if node.openHandles == 0 {
                // Shared: as a last close does, durable before the writer lock goes.
                if options.shared, case .compressed(let f) = c, f.holdsWriterLock {
                    try f.sync()
                    f.releaseWriterLock()
                }
                node.content = nil
            }
        }
        try dropSetIDBits(node, caller: caller)
    }

    /// Stores `node`'s buffered blocks (before times are set over them).
    func flushContent(_ node: Inode) throws {
        try node.lock.withLock { (_) throws in
            if case .compressed(let f)? = node.content { try f.flush() }
        }
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
            // Close-to-open across hosts: a file another handle here keeps
            // open is read again, unless this host is its writer.
            if options.shared, node.content != nil, node.openHandles > 0, case .compressed(let f) = c, !f.holdsWriterLock {
                try f.reloadFromDisk()
            }
            node.openHandles += 1
            if flags & O_TRUNC != 0 {
                try truncate(c, of: node, to: 0)
                // The kernel sends no SETATTR for an atomic O_TRUNC.
                try dropSetIDBits(node, caller: caller)
            }
        }
        let h = OpenHandle(inode: node, flags: flags)
        h.privileged = caller.map { $0.uid == 0 } ?? runsAsRoot
        return Unmanaged.passRetained(h).toOpaque()
    }

    static func handle(_ fh: UnsafeMutableRawPointer) -> OpenHandle { Unmanaged<OpenHandle>.fromOpaque(fh).takeUnretainedValue() }

    public func read(_ fh: UnsafeMutableRawPointer, offset: UInt64, count: Int, into buf: UnsafeMutableRawPointer) throws -> Int {
        let h = Self.handle(fh)
        return try h.inode.lock.withLock { (_) throws -> Int in
            switch try content(h.inode) {
            case .compressed(let f):
                let n: Int
                do {
                    n = try f.read(offset: offset, count: count, into: buf)
                } catch let e as FSError where options.shared && e.errno == EIO && !f.holdsWriterLock {
                    n = try readAgainAfterAnotherHostsChange(f, offset: offset, count: count, into: buf)
                } catch { FSError.log(error); throw error }
                touchAccessTime(h.inode)
                codec.stats.noteRead(n)
                return n
            case .plain(let fd):
                let n = try preadFully(fd, buf, count, Int(offset), "read")
                touchAccessTime(h.inode)
                codec.stats.noteRead(n)
                return n
            }
        }
    }

    /// Shared: a block that fails its checksum may be a version another
    /// host's writer has since replaced and freed (its place reused). The
    /// index is read again and the read retried, a few times while that
    /// writer keeps changing the file; a block that still fails is EIO.
    private func readAgainAfterAnotherHostsChange(_ f: CompressedFile, offset: UInt64, count: Int,
                                                 into buf: UnsafeMutableRawPointer) throws -> Int {
        var attempt = 0
        while true {
            attempt += 1
            do {
                try f.reloadFromDisk()
                return try f.read(offset: offset, count: count, into: buf)
            } catch let e as FSError where e.errno == EIO && attempt < 8 {
                usleep(useconds_t(5_000 * attempt))
            } catch {
                FSError.log(error)
                throw error
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
                    // Shared: the writer lock first, so the end is where the
                    // last writer on any host left it.
                    try f.beginChange()
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
            codec.stats.noteWrite(count)
            h.wrote = true
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
            // Shared: the release of a handle that wrote makes the file
            // durable and gives the writer lock back, also while other
            // handles of this host keep it open (a host whose handles
            // overlap would otherwise never let another host write). The
            // release, not each close: a child closing an inherited copy of
            // the descriptor is a close too.
            if options.shared, h.wrote, h.inode.openHandles > 0, case .compressed(let f)? = h.inode.content, f.holdsWriterLock {
                do {
                    try f.flush()
                    try preservingTimes(h.inode, f.fd) { () throws in try f.sync() }
                    f.releaseWriterLock()
                } catch { Log.error("\(f.name): storing at the release of a handle that wrote failed; the writer lock stays: \(error)") }
            }
            guard h.inode.openHandles == 0, let c = h.inode.content else { return }
            switch c {
            case .compressed(let f):
                do {
                    try settleForLastClose(h.inode, f)
                } catch {
                    // Keep the content (and its unstored blocks) in memory: the
                    // next open, fsync or the unmount retries; nothing is dropped.
                    // Blocks that can never be stored were given up already:
                    // with nothing left to retry, the memory goes.
                    if f.hasUnstoredBlocks {
                        Log.error("\(f.name): storing on close failed, kept in memory and tried again every second: \(error)")
                        keep(h.inode)
                        return
                    }
                    FSError.log(error)
                }
                h.inode.cachedSize = f.size
            case .plain(let fd):
                close(fd)
            }
            h.inode.content = nil
            // Stored now: an inode kept for its unstored data need not stay.
            if h.inode.keptUnstored.exchange(false, ordering: .acquiringAndReleasing) { inodes.dropIfForgotten(h.inode) }
        }
    }

    /// Runs maintenance that must not change the file's times (punching
    /// superseded copies updates mtime on the backing file system): atime
    /// and mtime are put back, and the ctime shown is recorded. Callers
    /// store buffered data first (`flush`): that is a change of the file.
    /// Under the inode's lock, as access-time updates are, so neither undoes
    /// the other.
    func preservingTimes(_ node: Inode, _ fd: Int32, _ body: () throws -> Void) throws {
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
}
