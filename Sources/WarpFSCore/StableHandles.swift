#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// Node ids WarpFS gives the kernel.
///
/// The kernel's file handles of a FUSE mount (`name_to_handle_at`, NFS)
/// hold a node id and a 32-bit generation, and the kernel finds an object
/// it no longer caches by sending LOOKUP "." with the node id alone. So a
/// node id must name its backing object by itself, across FORGET and
/// remounts: it is the backing inode number and generation,
/// `generation << 32 | ino` ("stable" ids). Objects that cannot be found
/// again from those two numbers (another file system mounted inside the
/// backing directory, an inode number past 32 bits, a backing file system
/// whose handles WarpFS cannot rebuild) get "transient" ids, `n << 32`
/// counting from 1: their low 32 bits are zero, which no inode number is,
/// so the two kinds never meet. Id 1 is the root; the stable id that would
/// be 1 (inode 1, generation 0) is transient instead.
enum NodeID {
    static let root: UInt64 = 1

    static func stable(ino: UInt32, generation: UInt32) -> UInt64? {
        let id = UInt64(generation) << 32 | UInt64(ino)
        return ino != 0 && id != root ? id : nil
    }

    static func isStable(_ id: UInt64) -> Bool { id != root && id & 0xffff_ffff != 0 }

    static func transient(_ n: UInt64) -> UInt64 { n << 32 }
}

/// A handle of the backing file system (`name_to_handle_at`).
struct BackingHandle: Equatable, CustomStringConvertible {
    var type: Int32
    var bytes: [UInt8]

    /// The handle of the object open as `fd` (O_PATH will do), or -errno.
    static func of(_ fd: Int32) -> Result<BackingHandle, FSError> {
        var type: Int32 = 0
        var len = UInt32(WD_HANDLE_MAX)
        var buf = [UInt8](repeating: 0, count: Int(WD_HANDLE_MAX))
        let r = wd_handle_of(fd, &type, &buf, &len)
        guard r == 0 else { return .failure(FSError(-r)) }
        return .success(BackingHandle(type: type, bytes: Array(buf[0..<Int(len)])))
    }

    /// Opens the object (`open_by_handle_at`) on the file system of `mountFD`.
    func open(mountFD: Int32, flags: Int32) -> Int32 {
        wd_open_handle(mountFD, type, bytes, UInt32(bytes.count), flags)
    }

    func word(_ i: Int) -> UInt32 {
        bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) }
    }

    init(type: Int32, bytes: [UInt8]) { self.type = type; self.bytes = bytes }

    init(type: Int32, words: [UInt32]) {
        self.type = type
        bytes = words.withUnsafeBytes { Array($0) }
    }

    var description: String { "type \(type), \(bytes.count) bytes" }
}

/// Where a backing file system keeps the inode number and generation in its
/// handles: the formats WarpFS can rebuild from those two numbers alone.
/// Words are the host's 32-bit integers, as the kernel writes them.
enum HandleLayout: String, CaseIterable {
    /// FILEID_INO32_GEN, type 1 { ino, gen }: ext2, ext3, ext4 and the other
    /// file systems using the kernel's generic 32-bit encoder.
    case ino32Generation = "type 1 {ino, generation} (ext4)"
    /// tmpfs: type 1 { gen, ino low, ino high }. tmpfs finds an inode by
    /// handle only once a handle of it was made (that puts it in the hash
    /// the lookup uses), which WarpFS does at each lookup.
    case tmpfs = "type 1 {generation, ino low, ino high} (tmpfs)"

    /// The generation in `h`, when `h` has this layout and names inode `ino`.
    func generation(in h: BackingHandle, ino: UInt64) -> UInt32? {
        guard h.type == 1, ino < 1 << 32 else { return nil }
        switch self {
        case .ino32Generation:
            guard h.bytes.count == 8, h.word(0) == UInt32(ino) else { return nil }
            return h.word(1)
        case .tmpfs:
            guard h.bytes.count == 12, h.word(1) == UInt32(ino), h.word(2) == 0 else { return nil }
            return h.word(0)
        }
    }

    func handle(ino: UInt32, generation: UInt32) -> BackingHandle {
        switch self {
        case .ino32Generation: BackingHandle(type: 1, words: [ino, generation])
        case .tmpfs: BackingHandle(type: 1, words: [generation, ino, 0])
        }
    }
}

/// Stable node ids and the reopening of backing objects by them (the
/// kernel's export support: handles that survive FORGET and remounts).
///
/// Set up only where it works: the backing root's own handle must have a
/// `HandleLayout`, rebuilding it from (ino, generation) must give the same
/// bytes, and opening it by handle must give the root again (which needs
/// CAP_DAC_READ_SEARCH, so root). Otherwise the mount does not offer
/// export support and says why in its log.
///
/// What a handle may reach: the node id comes from whoever holds the
/// handle (an NFS client can forge one), so an id is honoured only for an
/// object of the backing file system that
/// - still exists with that inode number and generation: the reopened
///   object's own handle must equal the one rebuilt from the id (ext4
///   ignores a zero generation when opening);
/// - is a directory under the backing root: walking ".." from it reaches
///   the root; or is a non-directory with links: a file has no way up, so
///   instead the FUSE generation of every stable id is a 32-bit keyed tag
///   of the id (SipHash-2-4, a key kept in the backing root's
///   `trusted.warpfs.handle_key`), and the kernel refuses a handle whose
///   generation is not the one LOOKUP answered. Only ids WarpFS gave out
///   (for objects it found under the root) carry the right tag.
final class StableHandles: @unchecked Sendable {
    static let keyAttribute = "trusted.warpfs.handle_key"

    let layout: HandleLayout
    /// The backing root opened for reading: `open_by_handle_at` refuses O_PATH.
    let mountFD: Int32
    let rootDev: UInt64
    let rootIno: UInt64
    private let key: (UInt64, UInt64)

    /// Sets up stable handles for the backing root open as `rootFD`, or
    /// throws why the backing file system cannot have them. `readOnly`: a
    /// missing key is not created.
    init(rootFD: Int32, readOnly: Bool) throws {
        var st = stat()
        guard fstat(rootFD, &st) == 0 else { throw FSError.last("stat of the backing root") }
        let rootIno = UInt64(st.st_ino)
        self.rootDev = UInt64(st.st_dev)
        self.rootIno = rootIno
        let rootHandle: BackingHandle
        switch BackingHandle.of(rootFD) {
        case .success(let h): rootHandle = h
        case .failure(let e):
            throw FSError(e.errno, "the backing file system gives no file handles (\(e))")
        }
        guard let layout = HandleLayout.allCases.first(where: { $0.generation(in: rootHandle, ino: rootIno) != nil }),
              let generation = layout.generation(in: rootHandle, ino: rootIno)
        else {
            throw FSError(EOPNOTSUPP, "its handles (\(rootHandle)) have no layout WarpFS can rebuild from an inode number and generation")
        }
        guard layout.handle(ino: UInt32(rootIno), generation: generation) == rootHandle else {
            throw FSError(EOPNOTSUPP, "rebuilding the root's handle (\(rootHandle)) from its inode number and generation gives other bytes")
        }
        self.layout = layout
        let m = openat(rootFD, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard m >= 0 else { throw FSError.last("open of the backing root") }
        mountFD = m
        do {
            let fd = rootHandle.open(mountFD: mountFD, flags: Int32(WD_O_PATH) | O_CLOEXEC)
            guard fd >= 0 else {
                throw FSError(-fd, -fd == EPERM ? "opening by handle needs CAP_DAC_READ_SEARCH (mount as root)"
                                                : "opening the root by its handle failed: \(String(cString: strerror(-fd)))")
            }
            var again = stat()
            fstat(fd, &again)
            close(fd)
            guard UInt64(again.st_dev) == rootDev, UInt64(again.st_ino) == rootIno else {
                throw FSError(EOPNOTSUPP, "opening the root by its handle gave another object")
            }
            key = try StableHandles.loadKey(mountFD, readOnly: readOnly)
        } catch {
            close(m)
            throw error
        }
    }

    deinit { close(mountFD) }

    /// The 128-bit tag key of this backing directory, created at the first
    /// read-write mount.
    private static func loadKey(_ fd: Int32, readOnly: Bool) throws -> (UInt64, UInt64) {
        var raw = [UInt8](repeating: 0, count: 16)
        for _ in 0..<2 {
            let n = fgetxattr(fd, keyAttribute, &raw, 32)
            if n == 16 {
                return raw.withUnsafeBytes {
                    (UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                     UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
                }
            }
            if n >= 0 || errno == ERANGE {
                throw FSError(EINVAL, "the backing root's \(keyAttribute) is not 16 bytes (remove it to make a new key; handles given out before stop working)")
            }
            guard errno == ENODATA else { throw FSError.last("reading the backing root's \(keyAttribute)") }
            guard !readOnly else {
                throw FSError(ENODATA, "the backing root has no \(keyAttribute) yet and the mount is read-only (a read-write mount creates it)")
            }
            guard randomBytes(&raw) else { throw FSError(EIO, "no random bytes for the handle key") }
            if fsetxattr(fd, keyAttribute, raw, 16, Int32(XATTR_CREATE)) != 0 && errno != EEXIST {
                throw FSError.last("storing \(keyAttribute) on the backing root")
            }
            // Read it back: another mount may have stored its key first.
        }
        throw FSError(EIO, "the handle key could not be read back")
    }

    private static func randomBytes(_ buf: inout [UInt8]) -> Bool {
        let fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) } == buf.count
    }

    /// The FUSE generation of a stable id: the low 32 bits of its SipHash-2-4.
    func tag(_ id: UInt64) -> UInt64 { SipHash24.hash(key: key, id) & 0xffff_ffff }

    /// The stable node id and FUSE generation of a backing object just
    /// looked up under the root, or nil when it gets a transient id.
    func identity(fd: Int32, st: stat) -> (nodeID: UInt64, generation: UInt64)? {
        guard UInt64(st.st_dev) == rootDev, case .success(let h) = BackingHandle.of(fd),
              let generation = layout.generation(in: h, ino: UInt64(st.st_ino)),
              let id = NodeID.stable(ino: UInt32(st.st_ino), generation: generation)
        else { return nil }
        return (id, tag(id))
    }

    /// Opens (O_PATH) the backing object stable id `id` names, if it still
    /// exists with that generation and the mount may reach it (see the
    /// type's comment); ESTALE otherwise.
    func reopen(_ id: UInt64) throws -> (fd: Int32, st: stat) {
        guard NodeID.isStable(id) else { throw FSError(ESTALE, "node \(id) is not a stable id") }
        let ino = UInt32(truncatingIfNeeded: id), generation = UInt32(id >> 32)
        let handle = layout.handle(ino: ino, generation: generation)
        let fd = handle.open(mountFD: mountFD, flags: Int32(WD_O_PATH) | O_CLOEXEC)
        guard fd >= 0 else {
            if -fd != ESTALE && -fd != ENOENT { Log.warning("reopening inode \(ino) by handle: \(String(cString: strerror(-fd)))") }
            throw FSError(ESTALE, "inode \(ino) generation \(generation) is gone")
        }
        do {
            var st = stat()
            guard fstat(fd, &st) == 0, UInt64(st.st_dev) == rootDev, UInt64(st.st_ino) == UInt64(ino), st.st_nlink > 0,
                  case .success(let own) = BackingHandle.of(fd), own == handle
            else { throw FSError(ESTALE, "inode \(ino) generation \(generation) is gone") }
            if st.st_mode & S_IFMT == S_IFDIR {
                guard isUnderRoot(directory: fd) else {
                    Log.warning("refused a handle of directory inode \(ino): not under the backing root")
                    throw FSError(ESTALE, "directory inode \(ino) is not under the backing root")
                }
            }
            return (fd, st)
        } catch {
            close(fd)
            throw error
        }
    }

    /// Whether walking ".." from the directory open as `fd` reaches the
    /// backing root before leaving the backing file system or reaching its top.
    func isUnderRoot(directory fd: Int32) -> Bool {
        isUnder(directory: fd, rootDev: rootDev, rootIno: rootIno)
    }
}

/// Whether walking ".." from the directory open as `fd` reaches the
/// directory (`rootDev`, `rootIno`) before leaving its file system or
/// reaching the top. `fd` stays open.
func isUnder(directory fd: Int32, rootDev: UInt64, rootIno: UInt64) -> Bool {
    var current = fd
    defer { if current != fd { close(current) } }
    var st = stat()
    guard fstat(current, &st) == 0 else { return false }
    for _ in 0..<4096 {
        if UInt64(st.st_dev) == rootDev && UInt64(st.st_ino) == rootIno { return true }
        let parent = openat(current, "..", Int32(WD_O_PATH) | O_DIRECTORY | O_CLOEXEC)
        guard parent >= 0 else { return false }
        var up = stat()
        guard fstat(parent, &up) == 0, UInt64(up.st_dev) == rootDev, up.st_ino != st.st_ino || up.st_dev != st.st_dev else {
            close(parent)
            return false
        }
        if current != fd { close(current) }
        current = parent
        st = up
    }
    return false
}

/// SipHash-2-4 of one 64-bit word (Aumasson and Bernstein): a keyed
/// function whose outputs cannot be predicted without the key.
enum SipHash24 {
    static func hash(key: (UInt64, UInt64), _ word: UInt64) -> UInt64 {
        var v0 = key.0 ^ 0x736f_6d65_7073_6575
        var v1 = key.1 ^ 0x646f_7261_6e64_6f6d
        var v2 = key.0 ^ 0x6c79_6765_6e65_7261
        var v3 = key.1 ^ 0x7465_6462_7974_6573
        func round() {
            v0 &+= v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32)
            v2 &+= v3; v3 = rotl(v3, 16); v3 ^= v2
            v0 &+= v3; v3 = rotl(v3, 21); v3 ^= v0
            v2 &+= v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32)
        }
        func compress(_ m: UInt64) { v3 ^= m; round(); round(); v0 ^= m }
        compress(word)
        compress(8 << 56)  // the final block: the message length (8 bytes) in the top byte
        v2 ^= 0xff
        round(); round(); round(); round()
        return v0 ^ v1 ^ v2 ^ v3
    }

    private static func rotl(_ x: UInt64, _ b: UInt64) -> UInt64 { x << b | x >> (64 - b) }
}
