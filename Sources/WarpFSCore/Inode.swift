#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpFSFormat

/// The content of an open regular file, shared by every handle and hard
/// link of the backing inode.
enum FileContent {
    /// A WarpFS container: blocks compressed through the accelerator.
    case compressed(CompressedFile)
    /// A file without a WarpFS header: read and written as it is.
    case plain(Int32)
}

/// One backing object the kernel knows by a node id (passthrough_hp style:
/// an `Int32(WD_O_PATH)` descriptor, so renames of ancestors need no path updates).
final class Inode: @unchecked Sendable {
    let nodeID: UInt64
    let generation: UInt64
    /// `Int32(WD_O_PATH) | O_NOFOLLOW` descriptor of the backing object.
    let fd: Int32
    let dev: UInt64
    let ino: UInt64
    let type: mode_t
    /// Kernel lookup count. Guarded by the inode table's lock (`InodeTable`).
    var lookups: UInt64 = 0

    /// The file's content lock: serialises content operations on this file
    /// and is held across them, waits for the accelerator included. First
    /// in the lock order (docs/ARCHITECTURE.md, "Threads and locks"): taken
    /// before WarpDrive's locks, never while holding another inode's lock
    /// or the inode table's.
    let lock = Mutex(())
    // Guarded by lock:
    var content: FileContent?
    var openHandles = 0
    /// Logical size of a compressed file whose content is not loaded (cache for getattr).
    var cachedSize: UInt64?
    /// Set while the content stays in memory after its last close because
    /// blocks could not be stored (the accelerator failed or went away):
    /// the table keeps such an inode even when the kernel forgets it, so
    /// that the retry (`retryKeptFiles`) and the unmount still find the
    /// data. Written under `lock`, read by the table under its own.
    let keptUnstored = Atomic<Bool>(false)
    /// The backing ctime the last write of the change-time record left
    /// (see `recordChangeTime`); nil when unknown in this mount. Under the
    /// lock where maintenance and reads write it; `setattr` and `attributes`
    /// read and write it without.
    var changeTimeMark: timespec?
    /// A directory's properties as last read or set (`WarpFileSystem+Properties.swift`).
    /// Its own lock, a leaf: held for the one or two xattr calls that read
    /// or replace them, nothing else taken under it.
    let properties = Mutex<CachedProperties>(.unread)

    init(nodeID: UInt64, generation: UInt64, fd: Int32, dev: UInt64, ino: UInt64, type: mode_t) {
        self.nodeID = nodeID; self.generation = generation; self.fd = fd
        self.dev = dev; self.ino = ino; self.type = type
    }

    deinit { close(fd) }

    var isDirectory: Bool { type == S_IFDIR }
    var isRegular: Bool { type == S_IFREG }

    /// `/proc/self/fd/N`: reopens the backing object with real access modes.
    var procPath: String { "/proc/self/fd/\(fd)" }
}

/// An open file or directory (the FUSE `fh`).
final class OpenHandle: @unchecked Sendable {
    let inode: Inode
    let flags: Int32
    /// Directory stream for directory handles. `dir` and `dirEntries` need
    /// no lock: the kernel sends one READDIR at a time per open directory
    /// (the open file's position lock), and RELEASEDIR after the last.
    var dir: OpaquePointer?
    /// Entries read so far (offset cookie = index) for directory handles.
    var dirEntries: [(name: String, ino: UInt64, type: UInt8)]?
    /// The opener is root: its writes may use root-reserved backing space.
    var privileged = true
    /// Something was written through this handle (`shared`: its close
    /// makes the file durable and gives the writer lock back).
    var wrote = false

    init(inode: Inode, flags: Int32) {
        self.inode = inode
        self.flags = flags
    }

    var append: Bool { flags & O_APPEND != 0 }
}

/// Node ids ↔ inodes, keyed also by backing (device, inode) so hard links
/// share one `Inode` (and so one content). Node ids are stable or
/// transient (`NodeID`); an id's kernel lookups are counted, and the inode
/// goes (its descriptor closed) when the kernel forgets them all.
final class InodeTable: @unchecked Sendable {
    private struct State {
        var byID: [UInt64: Inode] = [:]
        var byKey: [Key: Inode] = [:]
        /// Transient ids given out so far.
        var transient: UInt64 = 0
    }
    struct Key: Hashable { let dev: UInt64; let ino: UInt64 }
    /// The inode table's lock: guards `State` and every inode's `lookups`.
    /// Last in the lock order (a leaf): held only for dictionary work,
    /// nothing else is taken or waited for under it; an inode the table
    /// drops is released after the unlock (see `forget`).
    private let state = Mutex(State())
    let root: Inode

    init(rootFD: Int32, dev: UInt64, ino: UInt64) {
        root = Inode(nodeID: NodeID.root, generation: 0, fd: rootFD, dev: dev, ino: ino, type: S_IFDIR)
        root.lookups = 1 << 40
        state.withLock { s in
            s.byID[NodeID.root] = root
            s.byKey[Key(dev: dev, ino: ino)] = root
        }
    }

    func get(_ id: UInt64) -> Inode? { state.withLock { $0.byID[id] } }

    /// The inode of `id`, with one kernel lookup added, if it is known.
    func retain(_ id: UInt64) -> Inode? {
        state.withLock { s in
            guard let node = s.byID[id] else { return nil }
            node.lookups += 1
            return node
        }
    }

    /// Finds or creates the inode for a backing object just looked up
    /// (`fd` is consumed), and adds one kernel lookup. A new inode gets the
    /// stable id and generation `identify` gives, or a transient id when it
    /// gives none (`identify` runs without the table lock).
    func remember(fd: Int32, st: stat, identify: () -> (nodeID: UInt64, generation: UInt64)?) -> Inode {
        let key = Key(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
        if let existing = state.withLock({ s -> Inode? in
            guard let e = s.byKey[key] else { return nil }
            e.lookups += 1
            return e
        }) {
            close(fd)
            return existing
        }
        let identity = identify()
        return state.withLock { s in
            if let existing = s.byKey[key] {
                close(fd)
                existing.lookups += 1
                return existing
            }
            var id: UInt64, generation: UInt64
            if let identity, s.byID[identity.nodeID] == nil {
                (id, generation) = identity
            } else {
                s.transient += 1
                (id, generation) = (NodeID.transient(s.transient), 0)
            }
            let node = Inode(nodeID: id, generation: generation, fd: fd, dev: key.dev, ino: key.ino, type: st.st_mode & S_IFMT)
            node.lookups = 1
            s.byID[id] = node
            s.byKey[key] = node
            return node
        }
    }

    /// Drops `n` kernel lookups; the inode goes when none remain (its
    /// content stays alive while handles hold it).
    func forget(_ id: UInt64, _ n: UInt64) {
        // The dropped inode comes out of the lock: if this was its last
        // reference, its descriptor is closed and its content (which may
        // wait for blocks in flight) released without the table locked.
        _ = state.withLock { s -> Inode? in
            guard id != 1, let node = s.byID[id] else { return nil }
            node.lookups = node.lookups > n ? node.lookups - n : 0
            // Unstored data kept after a failed last close keeps the inode
            // (a lookup of the same file finds it again by its key).
            guard node.lookups == 0, !node.keptUnstored.load(ordering: .acquiring) else { return nil }
            return InodeTable.remove(node, from: &s)
        }
    }

    /// Takes `node` out of both maps; returns it, to be released after the unlock.
    private static func remove(_ node: Inode, from s: inout State) -> Inode {
        s.byID[node.nodeID] = nil
        let key = Key(dev: node.dev, ino: node.ino)
        if s.byKey[key] === node { s.byKey[key] = nil }
        return node
    }

    /// Drops `node` if the kernel has forgotten it (no lookups left): for an
    /// inode the table kept for its unstored data, once that is stored.
    func dropIfForgotten(_ node: Inode) {
        _ = state.withLock { s -> Inode? in
            guard node.lookups == 0, node !== root, s.byID[node.nodeID] === node,
                  !node.keptUnstored.load(ordering: .acquiring) else { return nil }
            return InodeTable.remove(node, from: &s)
        }
    }

    /// The inode of a backing object, if the table knows it.
    func find(dev: UInt64, ino: UInt64) -> Inode? { state.withLock { $0.byKey[Key(dev: dev, ino: ino)] } }

    /// Every inode currently known (for flushing at unmount).
    var all: [Inode] { state.withLock { Array($0.byID.values) } }
}
