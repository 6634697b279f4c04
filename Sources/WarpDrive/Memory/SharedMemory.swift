#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// A memfd-backed region of shared memory. Ring memory and registered buffer
/// pools live in these, so the device side can map the same pages from
/// another mapping (or, later, another process) without changing the protocol.
public final class SharedMemoryFile: @unchecked Sendable {
    /// The memfd (close-on-exec, size sealed).
    public let fd: Int32
    /// Size in bytes.
    public let size: Int

    /// Creates a zero-filled memfd of `size` bytes, sealed against resizing.
    public init(name: String, size: Int) throws {
        let fd = wd_memfd_create(name)
        guard fd >= 0 else { throw WarpDriveError.system(call: "memfd_create(\(name))", errno: errno) }
        guard ftruncate(fd, off_t(size)) == 0 else {
            let e = errno; close(fd)
            throw WarpDriveError.system(call: "ftruncate(memfd \(name), \(size))", errno: e)
        }
        _ = wd_memfd_seal_size(fd)
        self.fd = fd
        self.size = size
    }

    /// Takes ownership of a memfd received from another process (a ring
    /// region sent by `warpdrived`); `size` is checked against the file.
    public init(adopting fd: Int32, size: Int) throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno; close(fd)
            throw WarpDriveError.system(call: "fstat(received memfd)", errno: e)
        }
        guard Int(st.st_size) == size else {
            close(fd)
            throw WarpDriveError.system(call: "received memfd of \(st.st_size) bytes, expected \(size)", errno: EINVAL)
        }
        self.fd = fd
        self.size = size
    }

    /// Maps the whole file shared, read-write. Each call is a distinct mapping.
    public func map() throws -> SharedMapping {
        try SharedMapping(fd: fd, size: size)
    }

    deinit { close(fd) }
}

/// One `mmap` of a shared memory file; unmapped on deinit.
public final class SharedMapping: @unchecked Sendable {
    /// First byte of the mapping.
    public let base: UnsafeMutableRawPointer
    /// Length in bytes.
    public let size: Int

    init(fd: Int32, size: Int, offset: Int = 0) throws {
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(offset)), p != MAP_FAILED else {
            throw WarpDriveError.system(call: "mmap(\(size) bytes at \(offset))", errno: errno)
        }
        base = p
        self.size = size
    }

    /// Set once `makeRevocable` registered the mapping.
    private let revocable = Atomic<Bool>(false)

    /// The mapping as a raw buffer.
    public var buffer: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: size) }

    /// Marks the mapping as one the kernel may revoke: for mappings of a
    /// device (a uacce queue's MMIO and DUS regions), which the kernel
    /// unmaps when the device's driver goes, after which an access raises
    /// SIGBUS. From now on such a SIGBUS replaces the mapping in place with
    /// zero memory and, when `offset` is given, sets the two 32-bit stop
    /// words at `offset` to 1 (a device reset to the queue code); the
    /// access then proceeds instead of killing the process.
    /// Call it at most once; throws on a second call, on a bad offset
    /// (`offset + 8` past the end, not 4-byte aligned) or a full table.
    public func makeRevocable(stopWordsAt offset: Int?) throws {
        guard revocable.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            throw WarpDriveError.system(call: "wd_revocable_add(mapping already revocable)", errno: EEXIST)
        }
        guard wd_revocable_add(base, size, offset ?? -1) == 0 else {
            let e = errno
            revocable.store(false, ordering: .releasing)
            throw WarpDriveError.system(call: "wd_revocable_add(\(size) bytes, stop words at \(offset.map(String.init) ?? "none"))", errno: e)
        }
    }

    /// Whether `makeRevocable` registered this mapping.
    public var isRevocable: Bool { revocable.load(ordering: .acquiring) }

    deinit {
        if revocable.load(ordering: .acquiring) { wd_revocable_remove(base) }
        munmap(base, size)
    }
}
