#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpFSFormat

/// The pack file of a backing directory: `.warpfs-pack/pages`, slotted
/// 4 KiB pages (`PackPage`) holding the payloads of packed small files, and
/// `.warpfs-pack/id`, the pack's random id that references name.
///
/// What it promises (docs/FORMAT.md, "Packed small files"):
/// - `append` writes a record only into bytes no live record covers, then
///   the page's directory; `sync` makes both durable. A reference is set on
///   the owner only after that, so a reference never names a record that a
///   crash can lose.
/// - `release` frees a record only after its owner's reference is durably
///   gone; a page with no live record left is punched (its space returns).
///   A crash between the two leaves an orphan, found and freed by
///   `warpfs fsck --repair`: space, never data.
///
/// The pack directory and its files must belong to this process's user (or,
/// for root, to the owner of the directory that holds the pack) and be
/// writable by nobody else; otherwise the pack is refused (EPERM), as a
/// planted pack could feed any file's data.
///
/// Concurrency: one lock guards the known pages and every change of the
/// pages file (a record's read takes none: a record is never written over
/// while a reference names it). A leaf after `Inode.lock`: nothing else is
/// taken under it.
public final class PackStore: @unchecked Sendable {
    /// The directory's name, reserved in every directory of a mount.
    public static let directoryName = ".warpfs-pack"
    /// The pages file's name in the pack directory.
    public static let pagesName = "pages"
    static let idName = "id"

    /// The pack's id (references carry it).
    public let id: UInt64
    /// The pages file (read-write unless the backing directory is read-only).
    let fd: Int32
    let dirFD: Int32
    public let writable: Bool

    private struct State {
        /// Pages known to have room, by index (learned from appends and releases).
        var roomy: [UInt32: PackPage] = [:]
        /// Below this page, no hole is left to reuse (found with SEEK_HOLE).
        var holeCursor = 0
    }
    private let state = Mutex(State())
    /// Other hosts share the pack (`-o shared`): every change of a page
    /// holds an exclusive record lock on the pages file, and a page is read
    /// afresh before it changes (`free` always does; packing, which appends,
    /// is off under `shared`).
    public var crossHostLocking = false
    /// How long a change waits for that lock (`lock_timeout`); then it fails
    /// with EAGAIN (a record not freed is an orphan `warpfs fsck` frees).
    public var crossHostLockTimeout: Double = 30

    /// Runs `body` holding the pages file's cross-host lock when `crossHostLocking`.
    private func lockedAcrossHosts<T>(_ body: () throws -> T) throws -> T {
        guard crossHostLocking else { return try body() }
        let lock = RecordLock(fd)
        switch lock.take(exclusive: true, timeout: crossHostLockTimeout) {
        case .success: break
        case .failure(.held): throw FSError(EAGAIN, "the pack's lock is held by another host for more than \(Int(crossHostLockTimeout)) s")
        case .failure(.unsupported(let e)): throw FSError(e, "lock the pack")
        }
        defer { lock.release() }
        return try body()
    }

    private init(id: UInt64, fd: Int32, dirFD: Int32, writable: Bool) {
        self.id = id; self.fd = fd; self.dirFD = dirFD; self.writable = writable
    }

    deinit { close(fd); close(dirFD) }

    /// Opens the pack of the backing directory open at `root`; creates it
    /// when `create` and it does not exist. Nil when there is none (and
    /// `create` is false).
    public static func open(root: Int32, create: Bool, readOnly: Bool = false) throws -> PackStore? {
        var dir = openat(root, directoryName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if dir < 0 && errno == ENOENT {
            guard create, !readOnly else { return nil }
            if mkdirat(root, directoryName, 0o700) != 0 && errno != EEXIST { throw FSError.last("create \(directoryName)") }
            // Its name durable before any file refers to the pack.
            let parent = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if parent >= 0 { _ = fsync(parent); close(parent) }
            dir = openat(root, directoryName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
        guard dir >= 0 else { throw FSError.last("open \(directoryName)") }
        // Root trusts a pack of the user who owns the directory holding it
        // (fsck of a user's backing directory); everyone else their own only.
        var holder = stat()
        let owners: Set<uid_t> = geteuid() == 0 && fstat(root, &holder) == 0 ? [0, holder.st_uid] : [geteuid()]
        do {
            try checkOwnership(dir, directoryName, owners: owners)
            let id = try readOrCreateID(dir: dir, create: create && !readOnly, owners: owners)
            var flags = (readOnly ? O_RDONLY : O_RDWR) | O_NOFOLLOW | O_CLOEXEC
            if create && !readOnly { flags |= O_CREAT }
            var fd = openat(dir, pagesName, flags, 0o600)
            var writable = !readOnly
            if fd < 0 && (errno == EACCES || errno == EROFS) { fd = openat(dir, pagesName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC); writable = false }
            guard fd >= 0 else { throw FSError.last("open \(directoryName)/\(pagesName)") }
            // A pages file just made: its name durable before a record in it is referred to.
            if create && !readOnly { _ = fsync(dir) }
            do { try checkOwnership(fd, "\(directoryName)/\(pagesName)", regular: true, owners: owners) } catch { close(fd); throw error }
            return PackStore(id: id, fd: fd, dirFD: dir, writable: writable)
        } catch {
            close(dir)
            throw error
        }
    }

    /// The pack that serves the directory open at `dirFD`, for the offline
    /// tools: the first `.warpfs-pack` found in that directory or one of its
    /// ancestors on the same device (each step opened with O_NOFOLLOW, so a
    /// symbolic link is never taken for one), opened as `open` does (its
    /// owner and mode checked). Nil when there is none up to the device's
    /// root or the file system's. `levels` is how far up it was found (0:
    /// in `dirFD` itself). A pack of another backing directory (a mount of
    /// an ancestor) is refused by its id when a reference is read.
    public static func locate(from dirFD: Int32, readOnly: Bool) throws -> (store: PackStore, levels: Int)? {
        var st = stat()
        _ = try sys("stat the directory") { fstat(dirFD, &st) }
        let device = st.st_dev
        var current = dup(dirFD)
        guard current >= 0 else { throw FSError.last("dup the directory") }
        defer { close(current) }
        for levels in 0..<4096 {
            var entry = stat()
            if fstatat(current, directoryName, &entry, AT_SYMLINK_NOFOLLOW) == 0, entry.st_mode & S_IFMT == S_IFDIR {
                guard let store = try open(root: current, create: false, readOnly: readOnly) else { return nil }
                return (store, levels)
            }
            var here = stat()
            _ = try sys("stat a directory above") { fstat(current, &here) }
            let parent = openat(current, "..", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard parent >= 0 else { return nil }
            var up = stat()
            guard fstat(parent, &up) == 0, up.st_dev == device, up.st_ino != here.st_ino || up.st_dev != here.st_dev else {
                close(parent)
                return nil
            }
            close(current)
            current = parent
        }
        return nil
    }

    /// Refuses a pack object another user owns or may write.
    private static func checkOwnership(_ fd: Int32, _ what: String, regular: Bool = false, owners: Set<uid_t>) throws {
        var st = stat()
        _ = try sys("stat \(what)") { fstat(fd, &st) }
        // A file of the pack has one name: a hard link could make any
        // file the owner may link (another user's) the pack.
        guard owners.contains(st.st_uid), st.st_mode & 0o022 == 0, (st.st_mode & S_IFMT == S_IFREG) == regular,
              !regular || st.st_nlink == 1 else {
            throw FSError(EPERM, "\(what) belongs to uid \(st.st_uid) with mode \(String(st.st_mode & 0o7777, radix: 8)): a pack must be "
                + "owned by uid \(owners.sorted().map(String.init).joined(separator: " or ")) and writable by nobody else; "
                + "packed files cannot be read from it")
        }
    }

    private static func readOrCreateID(dir: Int32, create: Bool, owners: Set<uid_t>) throws -> UInt64 {
        let fd = openat(dir, idName, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        if fd >= 0 {
            defer { close(fd) }
            try checkOwnership(fd, "\(directoryName)/\(idName)", regular: true, owners: owners)
            var buf = [UInt8](repeating: 0, count: 32)
            let n = try buf.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, 0, "read \(directoryName)/\(idName)") }
            let text = String(decoding: buf[0..<n], as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
            guard text.utf8.count == 16, let id = UInt64(text, radix: 16), id != 0 else {
                throw FSError(EIO, "\(directoryName)/\(idName) does not hold a pack id (16 hex digits)")
            }
            return id
        }
        guard errno == ENOENT, create else { throw FSError.last("open \(directoryName)/\(idName)") }
        // Written under a temporary name and renamed: a crash leaves no id or a whole one.
        let id = UInt64.random(in: 1...UInt64.max)
        let text = Array((String(repeating: "0", count: 16 - String(id, radix: 16).count) + String(id, radix: 16) + "\n").utf8)
        let tmp = "\(idName).tmp"
        unlinkat(dir, tmp, 0)
        let out = openat(dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw FSError.last("create \(directoryName)/\(tmp)") }
        defer { close(out) }
        try text.withUnsafeBytes { try pwriteFully(out, $0.baseAddress!, $0.count, 0, "write \(directoryName)/\(tmp)") }
        _ = try sys("fsync \(directoryName)/\(tmp)") { fsync(out) }
        if wd_renameat2(dir, tmp, dir, idName, 1 /* RENAME_NOREPLACE */) != 0 {
            let e = errno
            unlinkat(dir, tmp, 0)
            // Another process made it first: take its id.
            if e == EEXIST { return try readOrCreateID(dir: dir, create: false, owners: owners) }
            throw FSError(e, "rename \(directoryName)/\(tmp)")
        }
        _ = fsync(dir)
        return id
    }

    /// Reads the payload `ref` names into `buf` (at least `payloadLength`
    /// bytes) and checks it: the pack's id, the record's key, the payload's
    /// checksum. Throws EIO naming `name` otherwise.
    public func read(_ ref: PackReference, into buf: UnsafeMutableRawBufferPointer, name: String) throws {
        guard ref.hasRecord else { return }
        guard ref.packID == id else {
            throw FSError(EIO, "\(name): packed into pack \(hex(ref.packID)), not this backing directory's (\(hex(id))): mount the "
                + "directory that holds that pack")
        }
        if let damage = try recordDamage(ref, into: buf, name: name) { throw FSError(EIO, "\(name): \(damage)") }
    }

    /// Reads the record `ref` names (a reference of this pack, with a
    /// record) into `buf` and says what is wrong with it: nil when its key
    /// and payload checksum are right, else why (for messages, after the
    /// file's name). Throws only when the pack cannot be read.
    public func recordDamage(_ ref: PackReference, into buf: UnsafeMutableRawBufferPointer, name: String) throws -> String? {
        precondition(ref.hasRecord && buf.count >= ref.payloadLength)
        let base = Int(ref.page) * PackPage.size + ref.offset
        var key: UInt64 = 0
        let k = try withUnsafeMutableBytes(of: &key) { try preadFully(fd, $0.baseAddress!, 8, base, "read the pack for \(name)") }
        let n = try preadFully(fd, buf.baseAddress!, ref.payloadLength, base + PackPage.keySize, "read the pack for \(name)")
        guard k == 8, UInt64(littleEndian: key) == ref.key else {
            return "its record in the pack (page \(ref.page), offset \(ref.offset)) is gone or another file's"
        }
        guard n == ref.payloadLength else { return "its record in the pack is truncated (\(n) of \(ref.payloadLength) bytes)" }
        let sum = crc32Checksum(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
        guard sum == ref.payloadChecksum else {
            return "its record in the pack fails its checksum (stored 0x\(String(ref.payloadChecksum, radix: 16)), "
                + "read 0x\(String(sum, radix: 16))): the pack is damaged"
        }
        return nil
    }

    /// Writes a record (`key`, then `payload`) into free bytes of a page and
    /// enters it in the page's directory; not durable until `sync`.
    /// Returns the record's page and offset.
    public func append(key: UInt64, payload: UnsafeRawBufferPointer) throws -> (page: UInt32, offset: Int) {
        let length = PackPage.keySize + payload.count
        precondition(payload.count > 0 && payload.count <= PackPage.maxPayload)
        guard writable else { throw FSError(EROFS, "the pack is read-only") }
        return try state.withLock { s in
            var page = PackPage(), index: UInt32, fresh = false
            if let (i, p) = s.roomy.filter({ $0.value.place(length: length) != nil }).min(by: { $0.key < $1.key }) {
                index = i; page = p
            } else {
                index = try freePage(&s)
                fresh = true
            }
            let (entry, offset) = page.place(length: length)!
            page.add(entry: entry, offset: offset, length: length)
            let base = Int(index) * PackPage.size
            var record = [UInt8](repeating: 0, count: length)
            record.withUnsafeMutableBytes { b in
                b.storeBytes(of: key.littleEndian, toByteOffset: 0, as: UInt64.self)
                UnsafeMutableRawBufferPointer(rebasing: b[PackPage.keySize...]).copyMemory(from: payload)
            }
            if fresh {
                // One write of the whole page: directory, zeros, the record.
                var whole = [UInt8](repeating: 0, count: PackPage.size)
                whole.replaceSubrange(0..<PackPage.recordAreaStart, with: page.encodedDirectory())
                whole.replaceSubrange(offset..<(offset + length), with: record)
                try whole.withUnsafeBytes { try pwriteFully(fd, $0.baseAddress!, $0.count, base, "write the pack") }
            } else {
                try record.withUnsafeBytes { try pwriteFully(fd, $0.baseAddress!, $0.count, base + offset, "write the pack") }
                try page.encodedDirectory().withUnsafeBytes { try pwriteFully(fd, $0.baseAddress!, $0.count, base, "write the pack") }
            }
            remember(&s, index, page)
            return (index, offset)
        }
    }

    /// A page to start: a hole below the end of the file (a page punched
    /// before), or a new one at the end.
    private func freePage(_ s: inout State) throws -> UInt32 {
        var st = stat()
        _ = try sys("stat the pack") { fstat(fd, &st) }
        let end = (Int(st.st_size) + PackPage.size - 1) / PackPage.size
        while s.holeCursor < end {
            let hole = lseek(fd, off_t(s.holeCursor * PackPage.size), Int32(WD_SEEK_HOLE))
            guard hole >= 0, Int(hole) < Int(st.st_size) else { break }
            let p = Int(hole) / PackPage.size
            s.holeCursor = p + 1
            guard let page = UInt32(exactly: p) else { break }
            // A hole may start inside a page still partly written: take only whole free pages.
            if Int(hole) % PackPage.size == 0, (p + 1) * PackPage.size <= Int(st.st_size), s.roomy[page] == nil {
                let next = lseek(fd, off_t(p * PackPage.size), Int32(WD_SEEK_DATA))
                if next < 0 || Int(next) >= (p + 1) * PackPage.size { return page }
            }
        }
        s.holeCursor = end + 1
        guard let page = UInt32(exactly: end), page < UInt32.max else { throw FSError(ENOSPC, "the pack has no page left") }
        return page
    }

    private func remember(_ s: inout State, _ index: UInt32, _ page: PackPage) {
        // A page with less room than a small record is not worth a look.
        if PackPage.size - PackPage.recordAreaStart - page.usedBytes < 64 || page.entries.count >= PackPage.maxEntries {
            s.roomy[index] = nil
        } else {
            s.roomy[index] = page
        }
        if s.roomy.count > 4096, let fullest = s.roomy.max(by: { $0.value.usedBytes < $1.value.usedBytes }) { s.roomy[fullest.key] = nil }
    }

    /// Makes appended records and freed entries durable.
    public func sync() throws {
        _ = try sys("fdatasync the pack") { fdatasync(fd) }
    }

    /// Frees the record `ref` names, once its owner no longer refers to it
    /// durably: its directory entry goes, and the page is punched when no
    /// live record is left in it. A record that is not there (another key,
    /// a free entry) is left alone. Returns whether one was freed.
    @discardableResult
    public func release(_ ref: PackReference) throws -> Bool {
        guard ref.hasRecord, ref.packID == id, writable else { return false }
        return try state.withLock { s in try lockedAcrossHosts { try free(&s, page: ref.page, offset: ref.offset, key: ref.key) } }
    }

    /// Frees the record at `offset` of `page` if its key is `key`.
    private func free(_ s: inout State, page index: UInt32, offset: Int, key: UInt64) throws -> Bool {
        let base = Int(index) * PackPage.size
        var bytes = [UInt8](repeating: 0, count: PackPage.size)
        let n = try bytes.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, base, "read the pack") }
        guard n == PackPage.size, case .page(var page) = PackPage.decode(bytes), let entry = page.entry(at: offset) else { return false }
        let stored = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
        guard stored == key else { return false }
        page.remove(entry: entry)
        if page.isEmpty {
            _ = try sys("punch the pack") { wd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, Int64(base), Int64(PackPage.size)) }
            s.roomy[index] = PackPage()
        } else {
            try page.encodedDirectory().withUnsafeBytes { try pwriteFully(fd, $0.baseAddress!, $0.count, base, "write the pack") }
            remember(&s, index, page)
        }
        return true
    }

    /// One live record of the pack, as `records` finds it.
    public struct Record: Sendable, Equatable {
        public let page: UInt32
        public let offset: Int
        public let length: Int
        public let key: UInt64
    }

    /// Every live record, and the pages whose directory is damaged
    /// (nothing in them is freed or reused). Reads only pages with data.
    public func records() throws -> (records: [Record], damagedPages: [(page: UInt32, reason: String)]) {
        try state.withLock { _ in
            var st = stat()
            _ = try sys("stat the pack") { fstat(fd, &st) }
            var out: [Record] = [], damaged: [(UInt32, String)] = []
            var bytes = [UInt8](repeating: 0, count: PackPage.size)
            var at = 0
            while at < Int(st.st_size) {
                let data = lseek(fd, off_t(at), Int32(WD_SEEK_DATA))
                if data < 0 { break }
                let p = Int(data) / PackPage.size
                // Pages past what a reference can name are no records.
                guard UInt32(exactly: p) != nil else { break }
                let n = try bytes.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, p * PackPage.size, "read the pack") }
                at = (p + 1) * PackPage.size
                guard n > 0 else { break }
                switch bytes.withUnsafeBytes({ PackPage.decode(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                case .unformatted: continue
                case .damaged(let why): damaged.append((UInt32(p), why))
                case .page(let page):
                    for case let e? in page.entries where e.offset + e.length <= n {
                        let key = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: e.offset, as: UInt64.self)) }
                        out.append(Record(page: UInt32(p), offset: e.offset, length: e.length, key: key))
                    }
                }
            }
            return (out, damaged)
        }
    }

    /// Frees an orphaned record (`warpfs fsck --repair`).
    @discardableResult
    public func free(_ r: Record) throws -> Bool {
        guard writable else { throw FSError(EROFS, "the pack is read-only") }
        return try state.withLock { s in try lockedAcrossHosts { try free(&s, page: r.page, offset: r.offset, key: r.key) } }
    }

    /// Bytes the pages file takes on disk.
    public var allocatedBytes: UInt64 {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_blocks) * 512 : 0
    }

    private func hex(_ v: UInt64) -> String { String(v, radix: 16) }
}
