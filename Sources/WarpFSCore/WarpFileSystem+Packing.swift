#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpFSFormat

/// The mount's packing of small files: its pack (`PackStore`, opened when
/// first needed) and the closed small files waiting to be packed.
///
/// Its lock is a leaf: held for the queue's dictionary work and for opening
/// the pack, nothing else is taken under it.
final class Packing: @unchecked Sendable {
    struct Waiting {
        let node: Inode
        /// When it was queued (monotonic nanoseconds).
        let since: UInt64
    }
    struct State {
        var store: PackStore?
        /// Why the pack could not be opened (logged once, not per file).
        var failure: String?
        var waiting: [UInt64: Waiting] = [:]
        /// The backing file system keeps no user extended attributes: nothing is packed.
        var unsupported = false
    }
    let state = Mutex(State())
}

/// The packing lock of a backing file: an OFD record lock on one byte far
/// past any data (offset 2^62), taken shared by every content this mount
/// opens (`content()`, while packing is on) and exclusive by the packer
/// for the whole of a file's packing. It ties the two together through the
/// backing file itself, so an open that comes through another inode object
/// than the one the packer queued (the kernel forgot the file and looked it
/// up again) still waits for, or stops, the packing. Released with the
/// descriptor.
enum PackingLock {
    static let offset: off_t = 1 << 62

    /// Takes it without waiting; false when the other kind is held (or
    /// the file system has no record locks).
    static func take(_ fd: Int32, exclusive: Bool) -> Bool {
        if case .success = RecordLock(fd, start: offset, length: 1).take(exclusive: exclusive) { return true }
        return false
    }

    /// Takes it shared, waiting (at most `seconds`) for a packing of the
    /// file to end or give up. Nil when held; else why not.
    static func share(_ fd: Int32, seconds: Double) -> RecordLock.Refusal? {
        if case .failure(let why) = RecordLock(fd, start: offset, length: 1).take(exclusive: false, timeout: seconds, poll: 0.002) {
            return why
        }
        return nil
    }
}

extension WarpFileSystem {
    /// Names a mount reserves in every directory: its own pack.
    static func isReservedName(_ name: String) -> Bool { name == PackStore.directoryName }

    /// The backing directory's pack; created when `create` (and packing is
    /// on). Nil when there is none.
    func packStore(create: Bool) throws -> PackStore? {
        try packing.state.withLock { s in
            if let store = s.store { return store }
            do {
                let store = try PackStore.open(root: inodes.root.fd, create: create && options.packSmallFiles && !options.readOnly,
                                               readOnly: options.readOnly)
                store?.crossHostLocking = options.shared
                store?.crossHostLockTimeout = Double(options.lockTimeoutSeconds)
                s.store = store
                return store
            } catch {
                if s.failure == nil { Log.error("the pack (\(PackStore.directoryName)): \(error)") }
                s.failure = "\(error)"
                throw error
            }
        }
    }

    /// The content of a packed file, read from the pack.
    func packedContent(fd: Int32, name: String, reference: PackReference) throws -> CompressedFile {
        guard let store = try packStore(create: false) else {
            throw FSError(EIO, "\(name): packed, but the backing directory has no pack (\(PackStore.directoryName))")
        }
        return CompressedFile.openPacked(fd: fd, name: name, codec: codec, reference: reference, store: store)
    }

    /// After a file's last close (`settleForLastClose`): a packed file that
    /// was unlinked frees its record, and one that still carries the
    /// container a crash or a reader left beside its reference is cut to
    /// nothing; a container that qualifies waits to be packed.
    func afterLastClose(_ node: Inode, _ f: CompressedFile) {
        if let ref = f.packReference {
            var st = stat()
            guard fstat(f.fd, &st) == 0 else { return }
            // What is on disk decides, not what this host read at open: the
            // file may have been unpacked since (by another host under
            // `shared`), and its container is then the data.
            guard (try? CompressedFile.packReference(fd: f.fd, name: f.name)) == ref else { return }
            if st.st_nlink == 0 {
                // The removal of its last name durable first (`syncfs`: the
                // name's directory is not known here), then the record.
                guard wd_syncfs(f.fd) == 0, let store = try? packStore(create: false) else { return }
                do { try store.release(ref) } catch { Log.error("\(f.name): deleted, but its record in the pack stays: \(error)") }
            } else if st.st_size > 0, !options.readOnly, !options.shared || f.holdsWriterLock,
                      fcntl(f.fd, F_GETFL) & O_ACCMODE != O_RDONLY {
                var times = [st.st_atim, st.st_mtim]
                if ftruncate(f.fd, 0) == 0 { futimens(f.fd, &times) }
            }
            return
        }
        guard options.packSmallFiles, !options.readOnly, f.mayBePacked else { return }
        packing.state.withLock { s in
            if !s.unsupported { s.waiting[node.nodeID] = Packing.Waiting(node: node, since: wd_now_ns()) }
        }
    }

    /// Packs the small files that have waited `pack_delay` seconds since
    /// their last close (`all`: every one, as the unmount does). Runs on the
    /// maintenance thread, and at unmount; never while holding a lock.
    public func packWaitingFiles(all: Bool = false) {
        let delay = UInt64(options.packDelaySeconds) * 1_000_000_000
        while true {
            let due: [Inode] = packing.state.withLock { s in
                // Read under the lock: a file queued after it was read would
                // be younger than "now" (and UInt64 has no negative age).
                let now = wd_now_ns()
                let ready = s.waiting.values.filter { all || now >= $0.since && now - $0.since >= delay }
                    .sorted { $0.since < $1.since }.prefix(1024)
                for w in ready { s.waiting[w.node.nodeID] = nil }
                return ready.map(\.node)
            }
            if due.isEmpty { return }
            pack(due)
            if !all { return }
        }
    }

    /// The inode the table holds for `node`'s backing object now (another
    /// object when the kernel forgot `node` and looked the file up again),
    /// or `node` itself when the table holds none. (What keeps an open
    /// through a new inode from racing the packer is the packing lock.)
    private func liveInode(_ node: Inode) -> Inode {
        inodes.find(dev: node.dev, ino: node.ino) ?? node
    }

    /// One file on its way into the pack.
    private struct Staged {
        let node: Inode
        let fd: Int32
        let name: String
        let reference: PackReference
        /// The backing file when its container was read: it must not change
        /// before its reference is set.
        let before: stat
        let dropChangeTimeRecord: Bool
    }

    /// Packs `nodes` by the protocol of docs/FORMAT.md, "Packed small files":
    /// 1. each closed container's payload is written into the pack, and the
    ///    pack made durable (one sync for all);
    /// 2. each backing file gets its reference, if it has not changed since
    ///    its container was read, and the references are made durable;
    /// 3. each container is cut off (its times kept).
    /// A file opened, changed or removed meanwhile is skipped and its record
    /// freed. A crash leaves each file with its container, its reference,
    /// or both (the same data): never neither.
    private func pack(_ nodes: [Inode]) {
        let store: PackStore
        do {
            guard let s = try packStore(create: true) else { return }
            store = s
        } catch { return }
        guard store.writable else { return }
        var staged: [Staged] = []
        for queued in nodes {
            // The inode the mount knows the file by now (the kernel may have
            // forgotten the queued one and looked the file up again): its
            // lock and its content are what opens and changes go through.
            let node = liveInode(queued)
            node.lock.withLock { _ in
                // Opened again: its next last close queues it again.
                guard node.content == nil else { return }
                let fd = openBacking(node, O_RDWR)
                guard fd >= 0 else { return }
                // The file's packing lock, kept until the descriptor closes:
                // refused while any content of this mount has the file
                // open, whatever inode it came through.
                guard PackingLock.take(fd, exclusive: true) else { close(fd); return }
                let name = displayName(node)
                do {
                    var st = stat()
                    guard fstat(fd, &st) == 0, try CompressedFile.packReference(fd: fd, name: name) == nil,
                          let input = try CompressedFile.packingInput(fd: fd, name: name) else { close(fd); return }
                    var ref = PackReference(blockSize: input.header.blockSize, fileEncoding: input.header.encoding, level: input.header.level,
                                            payloadEncoding: input.encoding, payloadLength: input.payload.count,
                                            logicalSize: input.header.logicalSize, payloadChecksum: input.checksum, packID: store.id,
                                            page: 0, offset: 0, key: 0)
                    // The change time shown now stays what the mount shows once packed.
                    let ctime = recordedChangeTime(node, st) ?? st.st_ctim
                    ref.changeTime = (Int64(ctime.tv_sec), UInt32(clamping: ctime.tv_nsec))
                    if !input.payload.isEmpty {
                        ref.key = UInt64.random(in: 1...UInt64.max)
                        let at = try input.payload.withUnsafeBytes { try store.append(key: ref.key, payload: $0) }
                        ref.page = at.page
                        ref.offset = at.offset
                    }
                    staged.append(Staged(node: node, fd: fd, name: name, reference: ref, before: st,
                                         dropChangeTimeRecord: input.dropChangeTimeRecord))
                } catch {
                    Log.error("\(name): not packed: \(error)")
                    close(fd)
                }
            }
        }
        guard !staged.isEmpty else { return }
        defer { for s in staged { close(s.fd) } }
        func abandon(_ s: Staged) { _ = try? store.release(s.reference) }
        do { try store.sync() } catch {
            Log.error("packing \(staged.count) files: \(error)")
            staged.forEach(abandon)
            return
        }
        var referenced: [Staged] = []
        for s in staged {
            let node = liveInode(s.node)
            // Only if the file's lock is free: an open waiting for the
            // packing lock holds it (the file is then given up, not waited for).
            let set = node.lock.withLockIfAvailable { _ -> Bool in
                var st = stat()
                guard node.content == nil, fstat(s.fd, &st) == 0, st.st_nlink > 0, st.st_size == s.before.st_size,
                      st.st_mtim.tv_sec == s.before.st_mtim.tv_sec, st.st_mtim.tv_nsec == s.before.st_mtim.tv_nsec,
                      st.st_ctim.tv_sec == s.before.st_ctim.tv_sec, st.st_ctim.tv_nsec == s.before.st_ctim.tv_nsec else { return false }
                if s.dropChangeTimeRecord {
                    _ = fremovexattr(s.fd, WarpFileSystem.changeTimeAttribute)
                    node.changeTimeMark = nil
                }
                let value = s.reference.encoded()
                guard value.withUnsafeBytes({ fsetxattr(s.fd, PackReference.attributeName, $0.baseAddress, $0.count, Int32(XATTR_CREATE)) }) == 0 else {
                    let e = errno
                    if e == ENOTSUP || e == EOPNOTSUPP {
                        let first = packing.state.withLock { st in defer { st.unsupported = true; st.waiting.removeAll() }; return !st.unsupported }
                        if first { Log.error("the backing file system keeps no user extended attributes: small files are not packed") }
                    } else {
                        Log.error("\(s.name): not packed: \(FSError(e, "set its packed-file reference"))")
                    }
                    return false
                }
                return true
            } ?? false
            if set { referenced.append(s) } else { abandon(s) }
        }
        // On journaling file systems the first fsync commits every reference set above.
        var durable: [Staged] = []
        for s in referenced {
            if Glibc.fsync(s.fd) == 0 { durable.append(s) } else { Log.error("\(s.name): \(FSError.last("fsync after packing"))") }
        }
        for s in durable {
            let node = liveInode(s.node)
            // Busy: the container stays beside the reference (the same data;
            // the file's next last close cuts it off).
            _ = node.lock.withLockIfAvailable { _ in
                guard node.content == nil, (try? CompressedFile.packReference(fd: s.fd, name: s.name)) == s.reference else { return }
                var times = [s.before.st_atim, s.before.st_mtim]
                if ftruncate(s.fd, 0) == 0 { futimens(s.fd, &times) }
                node.cachedSize = s.reference.logicalSize
            }
        }
    }

    /// A change of a packed file's metadata: the backing file's change time
    /// is the one shown from now on (the reference's is cleared).
    func forgetPackedChangeTime(_ node: Inode) {
        guard var ref = packReference(node), ref.changeTime != nil else { return }
        ref.changeTime = nil
        replaceReference(node, ref)
    }

    /// Records the change time a packed file shows in its reference; false
    /// when the file is not packed.
    func setPackedChangeTime(_ node: Inode, _ ctime: timespec) -> Bool {
        guard var ref = packReference(node), (0..<1_000_000_000).contains(ctime.tv_nsec) else { return false }
        ref.changeTime = (Int64(ctime.tv_sec), UInt32(ctime.tv_nsec))
        replaceReference(node, ref)
        return true
    }

    private func replaceReference(_ node: Inode, _ ref: PackReference) {
        let value = ref.encoded()
        _ = value.withUnsafeBytes { CWarpSys.setxattr(node.procPath, PackReference.attributeName, $0.baseAddress, $0.count, Int32(XATTR_REPLACE)) }
    }

    /// Frees the record of a packed file whose last name was just removed
    /// (`fd`: the file, held across the removal), unless the mount has it
    /// open: then its last close does (`afterLastClose`).
    func releaseIfGone(_ fd: Int32, node: Inode?, directory: Inode) {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_nlink == 0, st.st_mode & S_IFMT == S_IFREG,
              let ref = try? CompressedFile.packReference(fd: fd, name: "a removed file"), ref.hasRecord else { return }
        let open = node?.lock.withLock { _ in node?.content != nil } ?? false
        guard !open, let store = try? packStore(create: false) else { return }
        // The removal of the name durable before the record can be reused:
        // a crash must not bring the name back naming a freed record.
        let dir = openat(directory.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dir >= 0 else { return }
        let synced = Glibc.fsync(dir) == 0
        close(dir)
        guard synced else { return }
        do { try store.release(ref) } catch { Log.error("a removed packed file's record stays in the pack: \(error)") }
    }

    /// Opens a name about to be removed or replaced, to see after the
    /// change whether its file is gone (`releaseIfGone`): a regular file
    /// whose backing file may be packed (at most one page long).
    func holdForRemoval(_ parent: Inode, _ name: String) -> (fd: Int32, node: Inode?)? {
        var st = stat()
        // A packed backing file is empty, or holds at most a one-page
        // container a crash left beside its reference.
        guard fstatat(parent.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_nlink == 1,
              st.st_size <= off_t(2 * PackPage.size), (try? packStore(create: false)) != nil else { return nil }
        var fd = openat(parent.fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | 0o1000000)     // O_NOATIME
        if fd < 0 && errno == EPERM { fd = openat(parent.fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK) }
        guard fd >= 0 else { return nil }
        return (fd, inodes.find(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino)))
    }
}
