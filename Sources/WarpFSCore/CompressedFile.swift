#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

/// The content of one compressed backing file: its header, the index of
/// block versions (rebuilt from the slot headers on open), a cache of
/// decompressed blocks, and the write and sync protocol of `docs/FORMAT.md`.
///
/// Its rooms, a file each (this one holds the state they share):
/// - `CompressedFile+Open.swift`: opening, and recovery from what a crash left
/// - `BlockIndex.swift`: what each block's two slots hold
/// - `CompressedFile+Store.swift`: storing block versions and the header,
///   sync, stale copies, write-back errors
/// - `PayloadPlacement.swift`: where a payload goes in its group's region (pure)
/// - `BlockPipeline.swift`: blocks through the accelerator: submission,
///   completion, and retries by `RetryPolicy.swift`
/// - `EntropyCheck.swift`: which blocks are stored raw without an engine (pure)
/// - `BlockCache.swift`: decompressed blocks, reading, read-ahead, eviction
/// - `CompressedFile+Write.swift`: writes (space reserved first, EFBIG),
///   size changes, holes
/// - `CompressedFile+Allocation.swift`, `BlockRanges.swift`: fallocate
/// - `CompressedFile+Compaction.swift`: a small file's payloads moved down at its last close
/// - `CompressedFile+Packing.swift`: a file packed into the pack file
///   (`PackStore`), read from there and unpacked before it changes
/// - `CompressedFile+Shared.swift`: a backing file other hosts share
///   (`-o shared`): the cross-host writer lock, reloading what they changed
///
/// Concurrency. Not thread-safe: every call is made under the owner's lock
/// (`Inode.lock` in the mount; the offline commands use a file from one
/// thread), and that lock guards every stored property below. What a file
/// reaches beyond itself has its own locks, taken after the owner's, never
/// held while calling back into a file or while taking another of them
/// (each is a leaf):
///
///     Inode.lock ─▶ SpaceAccount's state      (reserve, release, snapshot)
///                ─▶ BlockCodec.idleStreams    (stream, recycle)
///                ─▶ a session's queue locks   (inside BlockStream's calls)
///
/// `BlockCodec.liveBytes` and `quarantined` are atomics. A stream's
/// completion handler runs on the thread that reaps, inside the stream's
/// own calls (so under the owner's lock), and writes only that stream's
/// table. No file waits for another file's lock (the mount's memory
/// trimmer only tries them).
public final class CompressedFile {
    // Set at open, never changed.

    /// Backing file descriptor (owned).
    public let fd: Int32
    /// Name for messages (path relative to the backing root).
    public let name: String
    let codec: BlockCodec
    /// The container's layout (its format version changes only when an
    /// emptied version-2 file is upgraded, `upgradeIfEmpty`).
    var layout: BlockLayout
    /// Blocks compressed at once per file (write-back depth).
    let writeDepth = 32

    // The container: header, index and versions (Open, Store).

    public internal(set) var header: FileHeader
    /// Logical size in bytes.
    public internal(set) var size: UInt64
    var entries = BlockIndex()
    /// Generation of the next version stored (header and slots share the counter).
    var nextGeneration: UInt64 = 1
    /// The size changed since the header was last written.
    var headerDirty = false
    /// The header copy the last sync made durable, and the last one written:
    /// the next header write goes to the other copy than the durable one.
    var durableHeaderCopy: Int?
    var lastHeaderCopy: Int?
    /// Blocks stored since the last sync (or found with two versions on open):
    /// the only ones whose durable slot changes, or that can hold a stale copy.
    var changedSinceSync = Set<Int>()
    /// The format version the container takes when it is emptied (truncated
    /// to 0 bytes): the mount's `format_version`. Offline tools leave it.
    public var versionWhenEmptied: UInt16?
    /// Set while the file is packed (its backing file holds a reference to
    /// its record in the pack, and no container): block 0 is read from the
    /// pack, and the first change unpacks it (`unpackIfPacked`).
    var packed: PackedSource?
    /// `-o shared`: how long a change waits for the file's cross-host
    /// writer lock (`CompressedFile+Shared.swift`); nil: not shared.
    public internal(set) var writerLockTimeout: Double?
    /// This file holds its writer lock (until its descriptor closes).
    public internal(set) var holdsWriterLock = false
    /// The pack a shared file was read from before another host unpacked
    /// it (to read it again if it is packed again).
    var packStoreForReload: PackStore?
    /// The tail of the last partial block past `size` was checked to be zeros
    /// (growing the file then needs no look at it).
    var tailVerified = false

    // The block cache and read-ahead (BlockCache).

    var cache: [Int: CachedBlock] = [:]
    /// Stamps `CachedBlock.lastUse` (LRU order).
    var clock: UInt64 = 0
    /// Most decompressed blocks kept per file.
    var cacheLimit = 64
    /// Blocks decompressed ahead of a sequential reader (at most half the cache).
    var readahead = 32
    /// Where the last read ended (a read starting there is sequential).
    var lastReadEnd: UInt64 = .max
    /// Last block whose payload the backing file system was asked to read ahead.
    var hintedUpTo = -1
    /// Why blocks could not be read, for the read that waits for them.
    var loadErrors: [Int: FSError] = [:]

    // The block pipeline (BlockPipeline). The streams' tables are the only
    // record of requests in flight, and hold their buffers.

    var compressor: BlockStream<CompressJob>?
    var decompressor: BlockStream<LoadJob>?
    /// Blocks being decompressed (their jobs are in `decompressor`'s table).
    var loading = Set<Int>()

    // Write-back errors and space (Store, Write).

    /// First error of write-back not yet reported (to write, flush or fsync).
    var writeError: FSError?
    /// A store failed for want of space (ENOSPC, EDQUOT) and none has
    /// succeeded since: writes that would make more blocks dirty are refused
    /// with the same error (after one retry), so refused data cannot pile up
    /// in memory where the space account does not see the limit (a quota).
    var storeBlocked: FSError?
    /// The errno of the last store failure logged: the same failure again is
    /// not logged until a store succeeds (one line, not one per retry).
    var lastLoggedStoreError: Int32?
    /// Blocks given up because they can never be stored (`cannotBeStored`).
    public internal(set) var droppedBlocks = 0
    /// Whether a refusal for want of space, or past `sizeLimit`, was logged
    /// (once per episode: a writer retrying does not fill the log).
    var loggedNoSpace = false
    var loggedTooLarge = false

    // fallocate (Allocation).

    /// Blocks an `allocate` (fallocate) reserved backing space for: a later
    /// write of one of them takes its reservation instead of asking for
    /// space. Given back when written, punched, cut off by truncation, or
    /// when the content is freed.
    var allocated = BlockRanges()
    /// The account the allocations were reserved in.
    var allocatedAccount: (account: SpaceAccount, privileged: Bool)?

    public var blockSize: Int { layout.blockSize }

    /// The largest logical size this file can store: what the layout
    /// addresses, and, on the backing directory's own file system, what its
    /// largest file holds (a block's payload lies about four times further
    /// into the backing file than its data in the logical file).
    public private(set) lazy var sizeLimit: UInt64 = {
        var st = stat()
        guard let account = codec.space, let backing = account.maxFileSize,
              fstat(fd, &st) == 0, UInt64(st.st_dev) == account.device else { return layout.maxLogicalSize }
        return layout.maxLogicalSize(backingLimit: backing)
    }()

    init(fd: Int32, name: String, codec: BlockCodec, header: FileHeader, copy: Int?) {
        self.fd = fd
        self.name = name
        self.codec = codec
        self.header = header
        layout = BlockLayout(header)
        size = header.logicalSize
        durableHeaderCopy = copy
        lastHeaderCopy = copy
        nextGeneration = header.generation + 1
    }

    deinit {
        releaseAllocations(0..<Int.max)
        // Nothing may be in flight into buffers this object owns.
        drainCompressions()
        while let s = decompressor, s.inFlight > 0 { reapDecompressions(minimum: s.inFlight) }
        if let s = compressor { codec.recycle(s) }
        if let s = decompressor { codec.recycle(s) }
        compressor = nil
        decompressor = nil
        close(fd)
    }
}
