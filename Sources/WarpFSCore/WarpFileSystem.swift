#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive

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

    /// The caller of a request: owner of the nodes it creates, and whose
    /// credentials decide what it may keep (set-ID bits, control attributes).
    public struct Caller: Sendable {
        public var uid: uid_t
        public var gid: gid_t
        /// The calling thread (0: unknown), for its groups and capabilities.
        public var pid: pid_t
        public init(uid: uid_t, gid: gid_t, pid: pid_t = 0) { self.uid = uid; self.gid = gid; self.pid = pid }
    }

    // MARK: State
    //
    // Requests run on many threads at once. The fields here are set in
    // `init` and not changed after, except `invalidateAttributes` (set once
    // by the adapter before the loop runs) and `aclState` (atomic, written
    // at FUSE init). What changes lives behind these locks, in this order
    // (one may be taken while holding those before it, never the reverse):
    //
    //   1. `Inode.lock`, a file's content lock: its content, open handles,
    //      cached size. Held across the file's I/O, accelerator waits
    //      included. Never two at once: no thread waits for an inode's lock
    //      while holding another's (`reclaimMemory` only tries them).
    //   2. WarpDrive's locks, taken by that I/O through `codec`'s streams:
    //      a session's queue list, then the per-queue lock (`Queue.lock`:
    //      ring indices, pending requests), then the device's
    //      (docs/warpdrive.md).
    //   3. Leaves, held for a few instructions or one system call, with
    //      nothing taken or waited for under them: `inodes`' lock (node ids,
    //      backing keys, every inode's kernel lookup count), `codec`'s idle
    //      streams, its `SpaceAccount`, the registered buffers' free list,
    //      `Log`'s lock. The counters (`statistics`) are atomics.

    public let backingPath: String
    public let options: MountOptions
    /// The accelerator the mount uses (for the algorithms it offers; the
    /// codec's fallback takes the rest).
    public let device: any AcceleratorDevice
    /// Which device serves what, and why (`Accelerator.Choice.summary`).
    public let deviceSummary: String
    /// Blocks to and from the accelerator: streams, registered buffers, backing space.
    let codec: BlockCodec
    /// Node ids to inodes (its own lock, a leaf); each inode's content under its lock.
    let inodes: InodeTable
    /// Stable node ids and reopening by them; nil where the backing file
    /// system does not allow it (then the mount offers no export support).
    let stableHandles: StableHandles?
    /// Drops the kernel's cached attributes of a node (set by the adapter
    /// before the loop runs; called under the node's lock, it takes none).
    public var invalidateAttributes: ((UInt64) -> Void)?
    /// This process is root: it gives new nodes to their callers.
    let runsAsRoot = geteuid() == 0
    /// The user who mounted: this process's real uid (see `mayControl`).
    let mounter = getuid()
    /// The pack and the small files waiting to be packed (`WarpFileSystem+Packing.swift`).
    let packing = Packing()
    /// Files whose last close could not store everything, kept in memory
    /// and tried again (`WarpFileSystem+Lifetime.swift`). A leaf lock.
    let keptFiles = Mutex(KeptFiles())
    /// What the kernel agreed to at FUSE init about POSIX ACLs (`WarpFileSystem+Xattrs.swift`).
    let aclState = Atomic<UInt8>(0)

    /// Opens the backing directory and starts the accelerator.
    public init(backing: String, options: MountOptions) throws {
        let fd = Glibc.open(backing, Int32(WD_O_PATH) | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FSError.last("backing directory '\(backing)'") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { let e = FSError.last("stat '\(backing)'"); close(fd); throw e }
        backingPath = backing
        self.options = options
        if options.faultInjection, let socket = options.deviceSocket, socket != MountOptions.emulatedDevice {
            close(fd)
            throw FSError(EINVAL, "option 'fault_injection' drives the in-process device; it cannot be combined with 'device=\(socket)'")
        }
        let choice: Accelerator.Choice
        do { choice = try Accelerator.choose(options) } catch {
            close(fd)
            throw error
        }
        device = choice.device
        deviceSummary = choice.summary
        // Registered buffers for the cache and the blocks in flight: the
        // engines reach them without copies. Sized to the memory budget.
        codec = Accelerator.codec(on: device, fallback: choice.fallback, options,
                                  poolBuffers: max(64, options.memoryBudgetMiB << 20 / options.blockSize), space: SpaceAccount(fd: fd))
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

    /// The mount's live counters (`warpfs iostat`, `user.warpfs.stats`).
    public var statistics: IOStatistics { codec.stats }

    /// Whether the mount offers the kernel export support (file handles that
    /// survive FORGET and remounts, NFS re-export).
    public var exportSupport: Bool { stableHandles != nil }

    /// How long the kernel may cache attributes. Short: `st_blocks` changes
    /// when buffered blocks are stored.
    public var attributeTimeout: Double { options.shared ? 0 : 1.0 }
    /// How long the kernel may cache names. Long: only this mount changes the
    /// backing directory while it is mounted (not at all under `shared`:
    /// other hosts change it too).
    public var entryTimeout: Double { options.shared ? 0 : 60.0 }

    // MARK: Helpers

    func inode(_ id: UInt64) throws -> Inode {
        guard let i = inodes.get(id) else { throw FSError(ESTALE, "unknown node \(id)") }
        return i
    }

    func checkName(_ name: String) throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else { throw FSError(EINVAL, "bad name '\(name)'") }
        guard name.utf8.count <= 255 else { throw FSError(ENAMETOOLONG) }
        guard !WarpFileSystem.isReservedName(name) else { throw FSError(EPERM, "'\(name)' is reserved for the backing directory's pack") }
    }

    func writable() throws {
        if options.readOnly { throw FSError(EROFS) }
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
    func openBacking(_ node: Inode, _ mode: Int32) -> Int32 {
        let fd = Glibc.open(node.procPath, mode | O_CLOEXEC | 0o1000000)     // O_NOATIME
        if fd < 0 && errno == EPERM { return Glibc.open(node.procPath, mode | O_CLOEXEC) }
        return fd
    }
}
