#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

/// One decompressed block held in memory.
final class CachedBlock {
    private let buffer: BlockBuffer
    var data: UnsafeMutableRawBufferPointer { buffer.bytes }
    /// Changed since last stored.
    var dirty = false
    /// Being compressed: its bytes must not change until stored.
    var busy = false
    var lastUse: UInt64 = 0
    /// Backing space reserved for storing this block's dirty content.
    var reservation: (account: SpaceAccount, bytes: Int)?
    /// `zeroed: false` for a block about to be overwritten whole (a decompression target).
    init(_ buffer: BlockBuffer, zeroed: Bool = true) {
        self.buffer = buffer
        if zeroed { buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0) }
    }
    deinit { reservation.map { $0.account.release($0.bytes) } }

    /// Ends the reservation once the content is stored (`used` bytes written).
    func stored(used: Int) {
        guard !dirty, let r = reservation else { return }
        r.account.release(r.bytes, used: used)
        reservation = nil
    }

    /// Gives the content up (it can never be stored): no longer dirty, and
    /// its reservation ends with nothing written.
    func abandon() {
        dirty = false
        reservation.map { $0.account.release($0.bytes) }
        reservation = nil
    }
}

/// The content of one compressed backing file: its header, the index of
/// block versions (rebuilt from the slot headers on open), a cache of
/// decompressed blocks, and the write and sync protocol of `docs/FORMAT.md`.
///
/// Not thread-safe: the owner serialises calls (one lock per file).
public final class CompressedFile {
    /// Per block: what each of its two slots holds, which is newest, and
    /// which holds the last durable version.
    struct Entry {
        var slot: (SlotHeader?, SlotHeader?) = (nil, nil)
        var current: Int? = nil
        var durable: Int? = nil

        func header(_ s: Int) -> SlotHeader? { s == 0 ? slot.0 : slot.1 }
        mutating func set(_ s: Int, _ h: SlotHeader?) { if s == 0 { slot.0 = h } else { slot.1 = h } }
        var newest: SlotHeader? { current.flatMap { header($0) } }
        var isHole: Bool { newest == nil || newest!.encoding == .zero }
        var hasStale: Bool { slot.0 != nil && slot.1 != nil }
        var isEmpty: Bool { slot.0 == nil && slot.1 == nil && current == nil && durable == nil }
    }

    /// The entries of a file's blocks, stored only for blocks that have a
    /// slot: a sparse terabyte costs nothing, and a header claiming an
    /// absurd size cannot make the index allocate for it.
    struct BlockIndex {
        /// Blocks covered by the logical size.
        private(set) var count = 0
        private var stored: [Int: Entry] = [:]

        subscript(b: Int) -> Entry {
            get { stored[b] ?? Entry() }
            set { stored[b] = newValue.isEmpty ? nil : newValue }
        }
        mutating func grow(to n: Int) { count = max(count, n) }
        /// Forgets blocks from `n` on (their slots must already be cleared).
        mutating func shrink(to n: Int) {
            count = n
            for b in stored.keys where b >= n { stored[b] = nil }
        }
        /// Blocks with an entry at or after `b` (in no particular order).
        func populated(from b: Int) -> [Int] { stored.keys.filter { $0 >= b } }
    }

    /// Backing file descriptor (owned).
    public let fd: Int32
    /// Name for messages (path relative to the backing root).
    public let name: String
    let codec: BlockCodec
    public private(set) var header: FileHeader
    let layout: BlockLayout
    var entries = BlockIndex()
    /// Logical size in bytes.
    public private(set) var size: UInt64
    private var cache: [Int: CachedBlock] = [:]
    private var clock: UInt64 = 0
    private var nextGeneration: UInt64 = 1
    private var headerDirty = false
    private var durableHeaderCopy: Int?
    private var lastHeaderCopy: Int?
    private var tailVerified = false
    /// Most decompressed blocks kept per file.
    var cacheLimit = 64
    /// Blocks compressed at once per file (write-back depth).
    var writeDepth = 32
    /// Blocks decompressed ahead of a sequential reader (at most half the cache).
    var readahead = 32

    // The asynchronous pipeline (see docs/ARCHITECTURE.md).
    private var compressor: BlockStream<CompressJob>?
    private var decompressor: BlockStream<LoadJob>?
    /// Blocks being decompressed (their jobs are in `decompressor`'s table).
    private var loading = Set<Int>()
    private var loadErrors: [Int: FSError] = [:]    // block -> why it could not be read
    /// First error of write-back not yet reported (to write, flush or fsync).
    private var writeError: FSError?
    /// A store failed for want of space (ENOSPC, EDQUOT) and none has
    /// succeeded since: writes that would make more blocks dirty are refused
    /// with the same error (after one retry), so refused data cannot pile up
    /// in memory where the space account does not see the limit (a quota).
    private var storeBlocked: FSError?
    /// The errno of the last store failure logged: the same failure again is
    /// not logged until a store succeeds (one line, not one per retry).
    private var lastLoggedStoreError: Int32?
    /// Blocks given up because they can never be stored (`cannotBeStored`).
    public private(set) var droppedBlocks = 0
    /// Whether a refusal for want of space, or past `sizeLimit`, was logged
    /// (once per episode: a writer retrying does not fill the log).
    private var loggedNoSpace = false
    private var loggedTooLarge = false
    private var lastReadEnd: UInt64 = .max
    /// Per group, the page after the last payload placed (next placement starts there).
    private var groupCursor: [Int: Int] = [:]
    /// Last block whose payload the backing file system was asked to read ahead.
    private var hintedUpTo = -1
    /// Blocks stored since the last sync (or found with two versions on open):
    /// the only ones whose durable slot changes, or that can hold a stale copy.
    private var changedSinceSync = Set<Int>()
    /// Blocks an `allocate` (fallocate) reserved backing space for, in
    /// disjoint ranges sorted by start: a later write of one of them takes
    /// its reservation instead of asking for space. Given back when written,
    /// punched, cut off by truncation, or when the content is freed.
    private var allocated: [Range<Int>] = []
    private var allocatedAccount: (account: SpaceAccount, privileged: Bool)?

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

    private init(fd: Int32, name: String, codec: BlockCodec, header: FileHeader, copy: Int?) {
        self.fd = fd
        self.name = name
        self.codec = codec
        self.header = header
        layout = BlockLayout(blockSize: header.blockSize)
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

    /// What the first bytes of a backing file say it is.
    public enum Kind {
        case compressed(FileHeader)
        case plain
    }

    /// Classifies the file open at `fd`: a WarpFS container, or a plain file.
    /// A file with the magic but no valid header copy is an error (EIO),
    /// never silently shown as plain bytes.
    public static func kind(fd: Int32, name: String) throws -> Kind {
        switch try headerCopies(fd: fd, name: name).kind {
        case .plain: return .plain
        case .container(let h, _): return .compressed(h)
        case .damaged(let error): throw FSError(EIO, "\(name): damaged WarpFS header (\(error))")
        }
    }

    /// The header copies at the start of the file open at `fd`.
    static func headerCopies(fd: Int32, name: String) throws -> HeaderCopies {
        var buf = [UInt8](repeating: 0, count: HeaderCopies.span)
        let n = try buf.withUnsafeMutableBytes { (b) throws -> Int in
            try preadFully(fd, b.baseAddress!, b.count, 0, "read header of \(name)")
        }
        return buf.withUnsafeBytes { HeaderCopies(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    /// Creates an empty container in the (empty) file at `fd`.
    public static func create(fd: Int32, name: String, codec: BlockCodec, blockSize: Int, encoding: BlockEncoding) throws -> CompressedFile {
        let h = FileHeader(blockSize: blockSize, encoding: encoding, level: UInt8(codec.level), generation: 1, logicalSize: 0)
        let f = CompressedFile(fd: fd, name: name, codec: codec, header: h, copy: nil)
        try f.writeHeader()
        return f
    }

    /// Opens the container at `fd` and rebuilds the block index from the slot headers.
    public static func open(fd: Int32, name: String, codec: BlockCodec) throws -> CompressedFile {
        let copies = try headerCopies(fd: fd, name: name)
        guard let decoded = copies.newest else {
            throw FSError(EIO, "\(name): damaged WarpFS header (\(copies.firstError))")
        }
        let f = CompressedFile(fd: fd, name: name, codec: codec, header: decoded.header, copy: decoded.copy)
        try f.loadIndex()
        return f
    }

    private func loadIndex() throws {
        let count = layout.blockCount(logicalSize: size)
        entries = BlockIndex()
        entries.grow(to: count)
        var maxGen = header.generation
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        var group = 0
        while group * BlockLayout.blocksPerGroup < count {
            // Groups with nothing stored are holes in the backing file: jump
            // to the group of the next data (a sparse file costs no reads).
            if group > 0 {
                let next = lseek(fd, off_t(layout.tableOffset(group: group)), Int32(WD_SEEK_DATA))
                if next < 0 { break }       // ENXIO: no data past here
                group = max(group, layout.group(containing: Int(next)))
                if group * BlockLayout.blocksPerGroup >= count { break }
            }
            let first = group * BlockLayout.blocksPerGroup
            let off = layout.tableOffset(group: group)
            let n = try table.withUnsafeMutableBytes { b in
                try preadFully(fd, b.baseAddress!, b.count, off, "read slot headers of \(name)")
            }
            let slots = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<n]), group: group, blockSize: layout.blockSize) }
            var newestInGroup: UInt64 = 0
            for k in 0..<BlockLayout.blocksPerGroup where first + k < count {
                var e = Entry()
                for s in 0..<2 {
                    let h = slots.header(block: first + k, s)
                    e.set(s, h)
                    if let h {
                        maxGen = max(maxGen, h.generation)
                        // Placement resumes after the newest payload of the group.
                        if h.generation >= newestInGroup, !h.pageRange.isEmpty {
                            newestInGroup = h.generation
                            groupCursor[group] = h.pageRange.upperBound
                        }
                    }
                }
                switch (e.slot.0, e.slot.1) {
                case (nil, nil): e.current = nil
                case (_?, nil): e.current = 0
                case (nil, _?): e.current = 1
                case (let a?, let b?): e.current = a.generation >= b.generation ? 0 : 1; changedSinceSync.insert(first + k)
                }
                // Two versions: a crash came between a write and the sync that
                // drops the older one. The newer may be torn (its payload not
                // written, or written after its header); then the older, the
                // last durable version, is the block's content.
                if let cur = e.current, let other = e.header(1 - cur), !payloadIntact(block: first + k, slot: cur, header: e.header(cur)!),
                   payloadIntact(block: first + k, slot: 1 - cur, header: other) {
                    Log.error("\(name): block \(first + k): the newest version (generation \(e.header(cur)!.generation)) is torn; "
                        + "using the previous one (generation \(other.generation))")
                    e.current = 1 - cur      // the torn copy is dropped with the stale ones below
                }
                e.durable = e.current
                entries[first + k] = e
            }
            group += 1
        }
        nextGeneration = maxGen + 1
        // A backing file open read-only (a read-only backing file system) is
        // read as it is: nothing is placed in it, so nothing needs clearing.
        guard fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY else { changedSinceSync.removeAll(); return }
        let pastEnd = try dropSlotsPastEnd(count: count)
        // What is on disk now is what the next writes must not overwrite:
        // make it durable, then drop older copies.
        if !changedSinceSync.isEmpty || pastEnd {
            _ = fdatasync(fd)
            try dropStaleCopies()
        }
    }

    /// Clears slots of blocks at or past the logical end: what a crash leaves
    /// when blocks were stored and the size covering them was not. They were
    /// never part of the file. Left on disk, placement (which sees only the
    /// index) would reuse their pages, and the file growing over them later
    /// would bring them back, damaged. True when something was cleared (the
    /// caller makes it durable before anything is placed).
    private func dropSlotsPastEnd(count: Int) throws -> Bool {
        let g = count / BlockLayout.blocksPerGroup
        var cleared = false
        // Groups wholly past the end: cut off.
        let beyond = layout.tableOffset(group: g + 1)
        var st = stat()
        if fstat(fd, &st) == 0, Int(st.st_size) > beyond, lseek(fd, off_t(beyond), Int32(WD_SEEK_DATA)) >= 0 {
            _ = try sys("truncate \(name) past its end") { ftruncate(fd, off_t(beyond)) }
            cleared = true
        }
        // The group holding the end: the slots of its blocks past it.
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        let n = try table.withUnsafeMutableBytes { b in
            try preadFully(fd, b.baseAddress!, b.count, layout.tableOffset(group: g), "read slot headers of \(name)")
        }
        let slots = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<n]), group: g, blockSize: layout.blockSize) }
        let inUse = pagesInUse(group: g, except: (-1, -1))
        let base = layout.regionOffset(group: g)
        for b in slots.blocks where b >= count {
            for s in 0..<2 {
                guard let h = slots.header(block: b, s) else { continue }
                try writeSlotHeader(nil, block: b, slot: s)
                for run in h.pageRange.subtracting(inUse) {
                    punch(base + run.lowerBound * BlockLayout.pageSize, run.count * BlockLayout.pageSize)
                }
                cleared = true
            }
        }
        if cleared { Log.info("\(name): cleared block versions past the end of the file (left by a crash)") }
        return cleared
    }

    /// Whether the payload of a slot reads back with its checksum.
    private func payloadIntact(block b: Int, slot: Int, header h: SlotHeader) -> Bool {
        guard h.storedLength > 0 else { return true }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: h.storedLength, alignment: 16)
        defer { buf.deallocate() }
        return (try? readPayload(block: b, slot: slot, header: h, into: buf)) == nil
    }

    /// Reads a slot's payload into `buf` (at least `storedLength` bytes) and
    /// checks it: nil when intact, else why not, naming file and block.
    private func readPayload(block b: Int, slot: Int, header h: SlotHeader, into buf: UnsafeMutableRawBufferPointer) throws -> FSError? {
        let n = try preadFully(fd, buf.baseAddress!, h.storedLength, layout.payloadOffset(block: b, slot: slot, header: h),
                               "read \(name) block \(b)")
        switch h.damage(ofPayload: UnsafeRawBufferPointer(buf), read: n) {
        case nil: return nil
        case .truncated(let n): return FSError(EIO, "\(name): block \(b) is truncated (\(n) of \(h.storedLength) bytes)")
        case .checksum(let stored, let read):
            return FSError(EIO, "\(name): block \(b) fails its checksum (stored 0x\(String(stored, radix: 16)), "
                + "read 0x\(String(read, radix: 16))): the backing file is damaged")
        }
    }

    // MARK: Pipeline plumbing

    /// The stream format of the file's compressed blocks (a header's encoding is always a compressed one).
    private var algorithm: CompressionAlgorithm { header.encoding.algorithm ?? .deflate }

    private func compressStream() throws -> BlockStream<CompressJob> {
        if let s = compressor { return s }
        do {
            let s = try codec.stream(.compress, algorithm: algorithm, capacity: writeDepth, of: CompressJob.self)
            compressor = s
            return s
        } catch { throw FSError(EIO, "\(name): no accelerator queue for compression: \(error)") }
    }

    private func decompressStream() throws -> BlockStream<LoadJob> {
        if let s = decompressor { return s }
        do {
            let s = try codec.stream(.decompress, algorithm: algorithm, capacity: max(readahead, 8) * 2, of: LoadJob.self)
            decompressor = s
            return s
        } catch { throw FSError(EIO, "\(name): no accelerator queue for decompression: \(error)") }
    }

    /// Sends `job`'s request on `s`. A failure to send goes through the
    /// retry policy as a failed completion does (after a reset the session
    /// opens a fresh queue for the next try).
    private func send<J: PipelineJob>(_ job: J, on s: BlockStream<J>) throws {
        var job = job
        while true {
            do { return try s.submit(job) } catch let e as WarpDriveError where codec.retry.retry(after: e, &job.tries, now: wd_now_ns()) {}
        }
    }

    /// After a failed try of `job` (reaped from `s`): sends it again when
    /// the retry policy allows; true when it is on its way. After a time-out
    /// the device may still write the old output buffer: it is set aside.
    private func retried<J: PipelineJob>(_ job: J, after e: WarpDriveError, on s: BlockStream<J>) -> Bool {
        var job = job
        guard codec.retry.retry(after: e, &job.tries, now: wd_now_ns()) else { return false }
        if case .timedOut = e { job.replaceOutput(codec, blockSize: layout.blockSize) }
        do { try send(job, on: s) } catch { return false }
        // One line per try a failure used up, and one for the first reset:
        // a device that keeps resetting does not fill the log.
        if case .deviceReset = e, job.tries.resets > 1 { return true }
        Log.error("\(name): block \(job.block): \(J.what) failed (\(e)); retrying")
        return true
    }

    /// Stores finished compressions; waits for at least `minimum`.
    private func reapCompressions(minimum: Int) {
        guard let s = compressor, s.inFlight > 0 else { return }
        for (job, result) in s.reap(minimum: minimum) {
            if case .failure(let e) = result, retried(job, after: e, on: s) { continue }
            let b = job.block, source = job.source, output = job.output.bytes, rawLength = job.rawLength
            source.busy = false
            do {
                switch result {
                case .success(let n) where n <= rawLength - rawLength / 8:
                    try store(block: b, encoding: header.encoding, payload: UnsafeRawBufferPointer(rebasing: output[0..<n]))
                    source.stored(used: BlockLayout.pages(n) * BlockLayout.pageSize)
                case .success, .failure(.destinationTooSmall):
                    // Saves less than 12.5%: stored raw.
                    try store(block: b, encoding: .raw, payload: UnsafeRawBufferPointer(rebasing: source.data[0..<rawLength]))
                    source.stored(used: BlockLayout.pages(rawLength) * BlockLayout.pageSize)
                case .failure(let e):
                    throw FSError(EIO, "\(name): block \(b) could not be compressed: \(e)")
                }
            } catch {
                storeFailed(block: b, source, error)
            }
        }
    }

    /// Store errors no retry cures, for the block that met them:
    /// - `EFBIG`: the block's place in the backing file lies past the
    ///   largest file the backing file system (or `RLIMIT_FSIZE`) allows;
    ///   the place of a block never changes.
    /// - `EINVAL`: the backing file system refuses the offset or the request
    ///   itself; the same request would be refused again.
    /// - `EROFS`: the backing file system was made read-only (ext4 does so
    ///   on errors); it stays so until an administrator remounts it, which
    ///   the descriptors this process holds open prevent.
    /// - `EPERM`, `EBADF`: the backing file became immutable or append-only,
    ///   or could only be opened read-only.
    /// `ENOSPC` and `EDQUOT` are not among them (freeing space cures them),
    /// nor `EIO` (an accelerator failure, or a backing device error that may
    /// pass). As the kernel does with a page whose writeback fails for good,
    /// such a block is given up: its memory and its space reservation are
    /// released, the error reaches the writer (next write, fsync or close),
    /// and the file's log says so once, not once per block or retry.
    static func cannotBeStored(_ errno: Int32) -> Bool {
        [EFBIG, EINVAL, EROFS, EPERM, EBADF].contains(errno)
    }

    /// Handles a failed store of block `b` (content `c`): gives the block up
    /// when no retry can store it, else keeps it dirty for a later flush. The
    /// error is reported once to the writer; repeats are not logged.
    private func storeFailed(block b: Int, _ c: CachedBlock, _ error: Error) {
        var e = error as? FSError ?? FSError(EIO, "\(error)")
        if CompressedFile.cannotBeStored(e.errno) {
            c.abandon()
            if cache[b] === c { cache[b] = nil }
            droppedBlocks += 1
            if droppedBlocks == 1 {
                Log.error("\(e.description); the data of \(name) block \(b), and of any other of its blocks that fails so, "
                    + "can never be stored there: it is dropped and the writer gets \(String(cString: strerror(e.errno)))")
            }
        } else {
            c.dirty = true           // keep the data; a later flush retries
            if e.errno == ENOSPC || e.errno == EDQUOT { storeBlocked = e; storeBlocked?.logged = true }
            if lastLoggedStoreError != e.errno {
                Log.error(e.description)
                lastLoggedStoreError = e.errno
            }
        }
        e.logged = true
        if writeError == nil { writeError = e }
    }

    /// Records an error of write-back met while a write's data was being
    /// buffered, for the end of that write (or the next report).
    private func deferWriteError(_ error: Error) {
        var e = error as? FSError ?? FSError(EIO, "\(error)")
        if !e.logged { Log.error(e.description); e.logged = true }
        if writeError == nil { writeError = e }
    }

    /// Whether some block holds data not yet stored (kept for a retry).
    public var hasUnstoredBlocks: Bool { cache.values.contains { $0.dirty || $0.busy } }

    /// Caches finished decompressions; waits for at least `minimum`.
    private func reapDecompressions(minimum: Int) {
        guard let s = decompressor, s.inFlight > 0 else { return }
        for (job, result) in s.reap(minimum: minimum) {
            let b = job.block
            loading.remove(b)
            if case .failure(let e) = result, retried(job, after: e, on: s) { loading.insert(b); continue }
            let target = job.target
            switch result {
            case .success(let n) where n == layout.blockSize:
                // Fresh in the LRU order: read-ahead blocks must not be the
                // first evicted (they would be decompressed twice).
                clock += 1
                target.lastUse = clock
                if cache[b] == nil { cache[b] = target }
            case .success(let n):
                loadErrors[b] = FSError(EIO, "\(name): block \(b) decompresses to \(n) bytes, not \(layout.blockSize)")
            case .failure(let e):
                loadErrors[b] = FSError(EIO, "\(name): block \(b) cannot be decompressed: \(e)")
            }
        }
    }

    /// Waits until block `b` is neither being compressed nor loaded.
    private func settle(_ b: Int) {
        while let c = cache[b], c.busy { reapCompressions(minimum: 1) }
        while loading.contains(b) { reapDecompressions(minimum: 1) }
    }

    /// Waits for every compression in flight (their results stored).
    private func drainCompressions() {
        while let s = compressor, s.inFlight > 0 { reapCompressions(minimum: s.inFlight) }
    }

    private func takeWriteError() throws {
        if let e = writeError {
            writeError = nil
            throw e
        }
    }

    /// The pieces of the byte range `start..<end`, one per block it overlaps:
    /// block number, offset in the block, length, and offset in the file.
    private func spans(_ start: UInt64, _ end: UInt64) -> [(block: Int, inBlock: Int, count: Int, position: UInt64)] {
        let bs = UInt64(layout.blockSize)
        var out: [(Int, Int, Int, UInt64)] = []
        var pos = start
        while pos < end {
            let inBlock = Int(pos % bs)
            let n = Int(min(end - pos, bs - UInt64(inBlock)))
            out.append((Int(pos / bs), inBlock, n, pos))
            pos += UInt64(n)
        }
        return out
    }

    // MARK: Reading

    /// Reads up to `count` bytes at `offset` into `out`; returns bytes read (0 at or past EOF).
    public func read(offset: UInt64, count: Int, into out: UnsafeMutableRawPointer) throws -> Int {
        guard offset < size, count > 0 else { return 0 }
        let end = min(size, offset + UInt64(count))
        let bs = UInt64(layout.blockSize)
        let first = Int(offset / bs), last = Int((end - 1) / bs)
        // Start the blocks of this read, and the next ones for a sequential reader.
        // A jump (a new reader starting at 0 included): what was hinted before may lie elsewhere.
        if offset != lastReadEnd { hintedUpTo = first - 1 }
        var ahead = last
        if offset == lastReadEnd || offset == 0 { ahead = min(entries.count - 1, last + readahead) }
        try startLoads(first...max(first, ahead))
        // The backing reads of the window after this one start now, so the
        // disk works while the engines decompress this window.
        if ahead > last, ahead + 1 < entries.count, hintedUpTo < ahead + readahead {
            let from = max(ahead + 1, hintedUpTo + 1), to = min(entries.count - 1, ahead + readahead)
            if from <= to { hintBacking(from...to) }
            hintedUpTo = to
        }
        lastReadEnd = end
        for (b, inBlock, n, pos) in spans(offset, end) {
            let block = try cached(b, load: true)
            (out + Int(pos - offset)).copyMemory(from: block.data.baseAddress! + inBlock, byteCount: n)
        }
        reapCompressions(minimum: 0)
        trimCache()
        releaseIdleStreams()
        return Int(end - offset)
    }

    /// Asks the backing file system to start reading the payloads of the
    /// uncached blocks in `range`: one hint per group over the pages its
    /// payloads span (packed together when the blocks were written in order).
    private func hintBacking(_ range: ClosedRange<Int>) {
        var spans: [Int: (lo: Int, hi: Int)] = [:]
        for b in range where b < entries.count && cache[b] == nil && !loading.contains(b) {
            guard let h = entries[b].newest, let slot = entries[b].current, h.storedLength > 0 else { continue }
            let at = layout.payloadOffset(block: b, slot: slot, header: h)
            let g = b / BlockLayout.blocksPerGroup
            let old = spans[g] ?? (at, at + h.storedLength)
            spans[g] = (min(old.lo, at), max(old.hi, at + h.storedLength))
        }
        for (_, s) in spans { _ = posix_fadvise(fd, off_t(s.lo), off_t(s.hi - s.lo), POSIX_FADV_WILLNEED) }
    }

    /// Reads the payloads of uncached blocks in `range` and submits their
    /// decompression, all in flight together.
    private func startLoads(_ range: ClosedRange<Int>) throws {
        // Blocks hinted as the previous call's next window are not hinted again.
        if range.count > 1, range.upperBound > hintedUpTo {
            hintBacking(max(range.lowerBound, hintedUpTo + 1)...range.upperBound)
            hintedUpTo = range.upperBound
        }
        for b in range where b < entries.count && cache[b] == nil && !loading.contains(b) && !entries[b].isHole {
            if decompressor?.isFull ?? false { break }
            guard let h = entries[b].newest, let slot = entries[b].current else { continue }
            let payloadBuffer = codec.takeBuffer(h.storedLength)
            if let damage = try readPayload(block: b, slot: slot, header: h, into: payloadBuffer.bytes) {
                loadErrors[b] = damage
                continue
            }
            let payload = UnsafeRawBufferPointer(rebasing: payloadBuffer.bytes[0..<h.storedLength])
            let c = CachedBlock(codec.takeBuffer(layout.blockSize), zeroed: h.encoding.algorithm == nil)
            switch h.encoding {
            case .zero:
                clock += 1; c.lastUse = clock
                cache[b] = c
            case .raw:
                c.data.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: h.storedLength)
                clock += 1; c.lastUse = clock
                cache[b] = c
            case _ where h.encoding == header.encoding:
                let s = try decompressStream()
                try send(LoadJob(block: b, target: c, payload: payloadBuffer, tries: RetryPolicy.Record(firstSent: wd_now_ns())), on: s)
                loading.insert(b)
            case .deflate, .zlib, .gzip:
                // A block in another encoding than the file's: decode it on its own.
                switch codec.decompressOne(h.encoding.algorithm!, payload, into: c.data) {
                case .success(let n) where n == layout.blockSize: cache[b] = c
                case .success(let n): loadErrors[b] = FSError(EIO, "\(name): block \(b) decompresses to \(n) bytes")
                case .failure(let e): loadErrors[b] = FSError(EIO, "\(name): block \(b) cannot be decompressed: \(e)")
                }
            }
        }
    }

    /// The cached block `b`, loading it (or starting it empty) when absent.
    private func cached(_ b: Int, load: Bool) throws -> CachedBlock {
        clock += 1
        while loading.contains(b) { reapDecompressions(minimum: 1) }
        if let c = cache[b] { c.lastUse = clock; return c }
        if load && b < entries.count && !entries[b].isHole {
            if loadErrors[b] == nil { try startLoads(b...b) }
            while loading.contains(b) { reapDecompressions(minimum: 1) }
            if let e = loadErrors.removeValue(forKey: b) {
                Log.error(e.description)
                throw e
            }
            guard let c = cache[b] else { throw FSError(EIO, "\(name): block \(b) could not be loaded") }
            c.lastUse = clock
            return c
        }
        let c = CachedBlock(codec.takeBuffer(layout.blockSize))
        c.lastUse = clock
        cache[b] = c
        return c
    }

    // MARK: Writing

    /// Writes `count` bytes at `offset` into the block cache. A block that
    /// the write fills to its end is sent to the accelerator at once; the
    /// call returns when the data is buffered. At most `writeDepth` blocks
    /// are in flight per file (back-pressure beyond that).
    ///
    /// `privileged`: the writer is root, who may use the backing file
    /// system's root-reserved space (see `SpaceAccount`).
    public func write(offset: UInt64, count: Int, from src: UnsafeRawPointer, privileged: Bool = true) throws {
        guard count > 0 else { return try takeWriteError() }
        let end = offset + UInt64(count)
        // What can never be stored is refused before any of it is accepted,
        // as the backing file system refuses a write past its largest file.
        guard end <= sizeLimit else {
            let e = FSError(EFBIG, "\(name): writes past \(sizeLimit) bytes are refused (File too large): the blocks of a larger "
                + "file lie past the largest file the backing file system allows", logged: true)
            if !loggedTooLarge { Log.error(e.message); loggedTooLarge = true }
            throw e
        }
        if offset > size { try extend(to: offset) }
        let bs = UInt64(layout.blockSize)
        entries.grow(to: Int((end - 1) / bs) + 1)
        let pieces = spans(offset, end)
        // Reserve backing space for every block this write makes dirty,
        // before accepting any of its data.
        // Blocks reserved here and not yet handed to their cached block; what
        // is left when the write fails is given back.
        var reserved = Set<Int>()
        var fromAllocation = Set<Int>()
        let cost = layout.blockSize + BlockLayout.tablePageSize
        defer {
            // Reservations taken from an allocation go back to it.
            for b in reserved.intersection(fromAllocation) { restoreAllocation(b) }
            let fresh = reserved.subtracting(fromAllocation).count
            if let account = codec.space, fresh > 0 { account.release(cost * fresh) }
        }
        if let account = codec.space {
            // A block being compressed releases its reservation when stored:
            // let that happen first, so what needs one is known here.
            for p in pieces { settle(p.block) }
            var needing = pieces.filter { cache[$0.block]?.reservation == nil }.map(\.block)
            // Blocks an allocation reserved for come with their reservation.
            let covered = needing.filter { takeAllocation($0) }
            if !covered.isEmpty {
                reserved.formUnion(covered)
                fromAllocation = Set(covered)
                needing.removeAll { fromAllocation.contains($0) }
            }
            if !needing.isEmpty {
                // The backing file system refused this file's data for want of
                // space (a quota the account cannot see): new data waits until
                // a retry of the oldest unstored block goes through.
                if storeBlocked != nil { retryBlockedStore() }
                if let blocked = storeBlocked {
                    // This refusal is the report of the failure.
                    if let e = writeError, e.errno == blocked.errno { writeError = nil }
                    throw blocked
                }
                guard account.reserve(cost * needing.count, privileged: privileged) else {
                    let (held, free) = account.snapshot(privileged: privileged)
                    let e = FSError(ENOSPC, "\(name): no space left in the backing file system for block \(needing[0]) "
                        + "(\(free >> 20) MiB free\(privileged ? "" : " to users other than root"), \(held >> 20) MiB held "
                        + "for blocks not yet stored)", logged: true)
                    if !loggedNoSpace { Log.error(e.message); loggedNoSpace = true }
                    throw e
                }
                loggedNoSpace = false
                reserved.formUnion(needing)
            }
        }
        for (b, inBlock, n, pos) in pieces {
            settle(b)
            let whole = inBlock == 0 && n == layout.blockSize
            let block = try cached(b, load: !whole)
            if block.reservation == nil, let account = codec.space, reserved.remove(b) != nil { block.reservation = (account, cost) }
            (block.data.baseAddress! + inBlock).copyMemory(from: src + Int(pos - offset), byteCount: n)
            block.dirty = true
            // A failure here is reported at the end, once every piece of this
            // write is buffered and the size covers it.
            if inBlock + n == layout.blockSize { do { try startCompression(b) } catch { deferWriteError(error) } }
        }
        if end > size { size = end; headerDirty = true }
        reapCompressions(minimum: 0)
        // Back-pressure on memory: over budget, a writer waits for its own
        // blocks in flight instead of adding more.
        if codec.overBudget, let s = compressor, s.inFlight > 4 { reapCompressions(minimum: s.inFlight - 4) }
        trimCache()
        // An earlier block's write-back failure is reported here, after this
        // write's data is safely buffered: failing the request must not make
        // the kernel drop data that had nothing to do with the failure.
        try takeWriteError()
    }

    /// Sends dirty block `b` to the accelerator (or stores it as a hole).
    private func startCompression(_ b: Int) throws {
        guard let c = cache[b], c.dirty, !c.busy else { return }
        var len = layout.blockSize
        while len > 0 && c.data[len - 1] == 0 { len -= 1 }
        c.dirty = false
        let content = UnsafeRawBufferPointer(rebasing: c.data[0..<len])
        // All zeros: a hole. Random-looking bytes: raw, without spending an engine on them.
        if len == 0 || CompressedFile.looksIncompressible(content) {
            do {
                try store(block: b, encoding: len == 0 ? .zero : .raw, payload: content)
                c.stored(used: BlockLayout.pages(len) * BlockLayout.pageSize)
            } catch {
                storeFailed(block: b, c, error)
            }
            return
        }
        let s = try compressStream()
        while s.isFull { reapCompressions(minimum: 1) }
        let out = codec.takeBuffer(layout.blockSize)
        c.busy = true
        do {
            try send(CompressJob(block: b, source: c, output: out, rawLength: len, tries: RetryPolicy.Record(firstSent: wd_now_ns())), on: s)
        } catch {
            c.busy = false
            c.dirty = true
            throw FSError(EIO, "\(name): block \(b) could not be sent for compression: \(error)")
        }
    }

    /// Tries the oldest block whose store failed for want of space once more
    /// (a write is waiting on it); success reopens the file to new data.
    private func retryBlockedStore() {
        guard let b = cache.filter({ $0.value.dirty && !$0.value.busy }).keys.min() else {
            storeBlocked = nil       // nothing unstored is left to wait for
            return
        }
        do { try startCompression(b) } catch { deferWriteError(error) }
        drainCompressions()
    }

    /// Entropy estimate on a sample (btrfs-style heuristic): 4096 bytes taken
    /// across the block in 64-byte runs. Shannon entropy above 7.5 bits per
    /// byte means deflate would not save 12.5%: skip the compression attempt.
    static func looksIncompressible(_ data: UnsafeRawBufferPointer) -> Bool {
        guard data.count >= 8192 else { return false }
        var counts = [Int](repeating: 0, count: 256)
        // Sample offsets are multiples of 512 bytes, so data repeating with
        // a power-of-two period shows up as repeated samples below.
        let runs = 64, run = 64
        let stride = max(512, (data.count - run) / (runs - 1) / 512 * 512)
        var n = 0
        for r in 0..<runs where r * stride + run <= data.count {
            let base = r * stride
            for i in 0..<run { counts[Int(data[base + i])] += 1 }
            n += run
        }
        // Repeated runs (long matches) compress even when bytes look random.
        var distinct = Set<UInt64>()
        var samples = 0
        for r in 0..<runs where r * stride + 8 <= data.count {
            distinct.insert(data.loadUnaligned(fromByteOffset: r * stride, as: UInt64.self))
            samples += 1
        }
        if distinct.count < samples * 3 / 4 { return false }
        var h = 0.0
        for c in counts where c > 0 {
            let p = Double(c) / Double(n)
            h -= p * log2(p)
        }
        return h > 7.5
    }

    /// Makes sure the bytes between the current end and `newSize` read as
    /// zeros: the tail of the last partial block is cleared.
    private func extend(to newSize: UInt64) throws {
        let bs = UInt64(layout.blockSize)
        if size % bs != 0, !tailVerified {
            let b = Int(size / bs)
            if b < entries.count && (!entries[b].isHole || cache[b] != nil) {
                settle(b)
                let block = try cached(b, load: true)
                let from = Int(size % bs)
                let tail = UnsafeMutableRawBufferPointer(rebasing: block.data[from...])
                if tail.contains(where: { $0 != 0 }) {
                    tail.initializeMemory(as: UInt8.self, repeating: 0)
                    block.dirty = true
                }
            }
        }
        tailVerified = true
        let count = layout.blockCount(logicalSize: newSize)
        entries.grow(to: count)
        if newSize != size { size = newSize; headerDirty = true }
    }

    /// Changes the logical size. Shrinking drops whole blocks past the end
    /// (their slots are cleared) and zeroes the tail of the new last block.
    public func truncate(to newSize: UInt64) throws {
        guard newSize <= sizeLimit else { throw FSError(EFBIG, "\(name): size \(newSize) is too large (at most \(sizeLimit) bytes here)") }
        drainCompressions()
        while let s = decompressor, s.inFlight > 0 { reapDecompressions(minimum: s.inFlight) }
        if newSize >= size { try extend(to: newSize); return }
        let bs = UInt64(layout.blockSize)
        let keep = layout.blockCount(logicalSize: newSize)
        for b in cache.keys where b >= keep { cache[b] = nil }
        for b in loadErrors.keys where b >= keep { loadErrors[b] = nil }
        releaseAllocations(keep..<Int.max)
        for b in entries.populated(from: keep) { try clearSlots(b) }
        entries.shrink(to: keep)
        if newSize % bs != 0 {
            let b = Int(newSize / bs)
            if !entries[b].isHole || cache[b] != nil {
                let block = try cached(b, load: true)
                UnsafeMutableRawBufferPointer(rebasing: block.data[Int(newSize % bs)...]).initializeMemory(as: UInt8.self, repeating: 0)
                block.dirty = true
            }
        }
        size = newSize
        headerDirty = true
        tailVerified = true
    }

    /// Zeroes a byte range (FALLOC_FL_PUNCH_HOLE): whole blocks become
    /// holes, and give back what an allocation reserved for them.
    /// `keepingAllocations`: FALLOC_FL_ZERO_RANGE, whose blocks stay allocated.
    public func zeroRange(offset: UInt64, length: UInt64, keepingAllocations: Bool = false) throws {
        let bs = UInt64(layout.blockSize)
        let (rangeEnd, overflow) = offset.addingReportingOverflow(length)
        let wholeFirst = Int(min((offset + bs - 1) / bs, UInt64(Int.max))), wholeEnd = Int(min((overflow ? UInt64.max : rangeEnd) / bs, UInt64(Int.max)))
        if wholeFirst < wholeEnd && !keepingAllocations { releaseAllocations(wholeFirst..<wholeEnd) }
        let end = min(size, overflow ? UInt64.max : rangeEnd)
        guard offset < end else { return }
        for (b, inBlock, n, _) in spans(offset, end) {
            settle(b)
            if entries[b].isHole && cache[b] == nil { continue }
            let block = try cached(b, load: n != layout.blockSize)
            UnsafeMutableRawBufferPointer(rebasing: block.data[inBlock..<(inBlock + n)]).initializeMemory(as: UInt8.self, repeating: 0)
            block.dirty = true
        }
    }

    /// `fallocate` (modes 0 and FALLOC_FL_KEEP_SIZE): reserves the most
    /// that the blocks of the range can take in the backing file (a raw
    /// payload and a table page each, as for a dirty block) for a later
    /// write of them, or fails with ENOSPC before changing anything; without
    /// `keepSize` the file then grows to cover the range. Blocks already
    /// reserved for (dirty, or allocated before) are not counted twice.
    /// The reservation lasts while this content is open (see docs/FORMAT.md).
    public func allocate(offset: UInt64, length: UInt64, keepSize: Bool, privileged: Bool) throws {
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= sizeLimit else {
            throw FSError(EFBIG, "\(name): allocation past \(sizeLimit) bytes (File too large)", logged: true)
        }
        guard length > 0 else { return }
        let bs = UInt64(layout.blockSize)
        let range = Int(offset / bs)..<Int((end - 1) / bs + 1)
        if let account = codec.space {
            let cost = layout.blockSize + BlockLayout.tablePageSize
            var count = range.count
            for r in allocated where r.overlaps(range) { count -= r.clamped(to: range).count }
            count -= cache.filter { range.contains($0.key) && $0.value.reservation != nil && !isAllocated($0.key) }.count
            if count > 0 {
                let (bytes, tooMany) = cost.multipliedReportingOverflow(by: count)
                guard !tooMany, account.reserve(bytes, privileged: privileged) else {
                    let (held, free) = account.snapshot(privileged: privileged)
                    throw FSError(ENOSPC, "\(name): cannot allocate \(length) bytes at \(offset): the backing file system cannot hold "
                        + "\(count) more blocks stored raw (\(free >> 20) MiB free\(privileged ? "" : " to users other than root"), "
                        + "\(held >> 20) MiB held for blocks not yet stored)", logged: true)
                }
                allocatedAccount = (account, privileged)
                addAllocation(range)
            }
        }
        if !keepSize && end > size { try truncate(to: end) }
    }

    private func isAllocated(_ b: Int) -> Bool { allocated.contains { $0.contains(b) } }

    /// Adds `range` to the allocated blocks, less the blocks a dirty cached
    /// block already holds a reservation for (they were not counted).
    private func addAllocation(_ range: Range<Int>) {
        var pieces = [range]
        for (b, c) in cache where range.contains(b) && c.reservation != nil && !isAllocated(b) {
            pieces = pieces.flatMap { r -> [Range<Int>] in
                guard r.contains(b) else { return [r] }
                return [r.lowerBound..<b, (b + 1)..<r.upperBound].filter { !$0.isEmpty }
            }
        }
        for p in pieces { merge(p) }
    }

    private func merge(_ new: Range<Int>) {
        var lo = new.lowerBound, hi = new.upperBound
        allocated.removeAll { r in
            guard r.upperBound >= lo && r.lowerBound <= hi else { return false }
            lo = min(lo, r.lowerBound); hi = max(hi, r.upperBound)
            return true
        }
        allocated.append(lo..<hi)
        allocated.sort { $0.lowerBound < $1.lowerBound }
    }

    /// Takes block `b` out of the allocated blocks; true when it was there
    /// (its reservation now goes with the write).
    private func takeAllocation(_ b: Int) -> Bool {
        guard let i = allocated.firstIndex(where: { $0.contains(b) }) else { return false }
        let r = allocated.remove(at: i)
        allocated.insert(contentsOf: [r.lowerBound..<b, (b + 1)..<r.upperBound].filter { !$0.isEmpty }, at: i)
        return true
    }

    private func restoreAllocation(_ b: Int) { merge(b..<(b + 1)) }

    /// Gives back the reservations of the allocated blocks in `range`.
    private func releaseAllocations(_ range: Range<Int>) {
        guard let (account, _) = allocatedAccount, !allocated.isEmpty else { return }
        var freed = 0
        var kept: [Range<Int>] = []
        for r in allocated {
            guard r.overlaps(range) else { kept.append(r); continue }
            freed += r.clamped(to: range).count
            if r.lowerBound < range.lowerBound { kept.append(r.lowerBound..<range.lowerBound) }
            if r.upperBound > range.upperBound { kept.append(range.upperBound..<r.upperBound) }
        }
        allocated = kept
        if freed > 0 { account.release(freed * (layout.blockSize + BlockLayout.tablePageSize)) }
    }

    /// Bytes of backing space allocations of this file hold (for tests and messages).
    public var allocatedBlocks: Int { allocated.reduce(0) { $0 + $1.count } }

    /// Compresses and stores every dirty block, and waits for them.
    public func writeDirtyBlocks() throws {
        for (b, c) in cache.sorted(by: { $0.key < $1.key }) where c.dirty && !c.busy { try startCompression(b) }
        drainCompressions()
        try takeWriteError()
    }

    /// Stores dirty blocks and the header (no durability promise). Reports
    /// a write-back error that happened since the last report.
    /// The header is written once every block is stored or given up (one
    /// that can never be stored does not hold the size back).
    public func flush() throws {
        var failure: Error?
        do { try writeDirtyBlocks() } catch { failure = error }
        if headerDirty, failure == nil || !hasUnstoredBlocks { try writeHeader() }
        releaseIdleStreams()
        if let failure { throw failure }
    }

    /// Gives idle accelerator streams back to the mount's pool, so queues are
    /// held only by files with requests in flight.
    func releaseIdleStreams() {
        if let s = compressor, s.inFlight == 0 { codec.recycle(s); compressor = nil }
        if let s = decompressor, s.inFlight == 0 { codec.recycle(s); decompressor = nil }
    }

    /// Makes data and size durable, then releases superseded block copies.
    public func sync() throws {
        try flush()
        _ = try sys("fdatasync \(name)") { fdatasync(fd) }
        durableHeaderCopy = lastHeaderCopy
        try dropStaleCopies()
    }

    private func trimCache() {
        // Over the mount's memory budget every file keeps only a few blocks.
        let cacheLimit = codec.overBudget ? min(self.cacheLimit, 8) : self.cacheLimit
        guard cache.count > cacheLimit else { return }
        // Dirty blocks that are complete go to the accelerator; clean,
        // settled blocks are dropped, least recently used first.
        // Blocks behind a sequential reader go first, then least recently used;
        // blocks read ahead of it stay (dropping them would decompress them twice).
        let behind = lastReadEnd == .max ? 0 : Int(lastReadEnd / UInt64(layout.blockSize))
        let victims = cache.filter { !$0.value.dirty && !$0.value.busy }.sorted { a, b in
            let aBehind = a.key < behind, bBehind = b.key < behind
            return aBehind != bBehind ? aBehind : a.value.lastUse < b.value.lastUse
        }
        for (b, _) in victims.prefix(cache.count - cacheLimit * 3 / 4) { cache[b] = nil }
        // (While stores are refused for want of space, the writer's retry
        // is the one at the door of `write`, not one per dirty block here.)
        if cache.count > cacheLimit, storeBlocked == nil {
            for (b, c) in cache where c.dirty && !c.busy { try? startCompression(b) }
        }
    }

    /// Drops clean cached blocks (after a sync, or to save memory).
    public func dropCache() {
        cache = cache.filter { $0.value.dirty || $0.value.busy }
    }

    /// Writes one block version: payload, then its slot header. Block 0's
    /// payload goes inline in the first page when it fits; others go to a
    /// free run of pages in the group's region (`place`), never over a page
    /// another slot's header points to.
    private func store(block b: Int, encoding: BlockEncoding, payload: UnsafeRawBufferPointer) throws {
        var e = entries[b]
        let target = e.durable.map { 1 - $0 } ?? e.current ?? 0
        let len = payload.count
        let inline = b == 0 && len > 0 && len <= BlockLayout.inlineCapacity
        let previous = e.header(target)
        guard nextGeneration <= SlotHeader.maxGeneration else {
            throw FSError(EIO, "\(name): block \(b): the file's generation counter is exhausted (a damaged slot header claims "
                + "generation \(nextGeneration - 1)); copy the file to a new one")
        }
        let page = inline || len == 0 ? 0 : place(block: b, slot: target, pages: BlockLayout.pages(len))
        let h = SlotHeader(encoding: encoding, isInline: inline, block: UInt64(b), generation: nextGeneration, storedLength: len,
                           payloadChecksum: crc32Checksum(payload), page: page)
        if len > 0 {
            try pwriteFully(fd, payload.baseAddress!, len, layout.payloadOffset(block: b, slot: target, header: h), "write \(name) block \(b)")
        }
        nextGeneration += 1
        try writeSlotHeader(h, block: b, slot: target)
        e.set(target, h)
        e.current = target
        entries[b] = e
        changedSinceSync.insert(b)
        // The backing file system takes data again.
        storeBlocked = nil
        lastLoggedStoreError = nil
        // Release what the slot's previous version used and the new one does not.
        if let previous { release(previous, block: b, slot: target, keeping: h.pageRange) }
    }

    /// Where `pages` pages for slot `slot` of block `b` go: the first free
    /// run at or after the group's cursor (wrapping once), so payloads
    /// written in order lie next to each other. The slot's own previous
    /// payload counts as free (it is not the durable version).
    private func place(block b: Int, slot: Int, pages: Int) -> Int {
        let g = b / BlockLayout.blocksPerGroup
        let used = pagesInUse(group: g, except: (b, slot)).sorted { $0.lowerBound < $1.lowerBound }
        let limit = layout.regionPages
        func firstFit(from start: Int, to end: Int) -> Int? {
            var at = start
            for r in used where r.upperBound > at {
                if r.lowerBound >= at + pages { break }
                at = max(at, r.upperBound)
            }
            return at + pages <= end ? at : nil
        }
        let cursor = groupCursor[g] ?? 0
        // The region's size guarantees a fit (see BlockLayout.regionPages).
        let at = firstFit(from: cursor, to: limit) ?? firstFit(from: 0, to: limit)!
        groupCursor[g] = at + pages
        return at
    }

    /// The page ranges the valid slots of group `g` name, except one slot's.
    private func pagesInUse(group g: Int, except: (block: Int, slot: Int)) -> [Range<Int>] {
        var used: [Range<Int>] = []
        for k in (g * BlockLayout.blocksPerGroup)..<((g + 1) * BlockLayout.blocksPerGroup) {
            for s in 0..<2 where !(k == except.block && s == except.slot) {
                if let r = entries[k].header(s)?.pageRange, !r.isEmpty { used.append(r) }
            }
        }
        return used
    }

    /// Punches the pages of an old version that `keeping` does not cover.
    /// Never punches a page another valid slot of the group names (only a
    /// damaged or crafted file has such overlaps, but a punch would turn
    /// them into lost data).
    private func release(_ old: SlotHeader, block b: Int, slot: Int, keeping: Range<Int>) {
        let r = old.pageRange
        guard !r.isEmpty else { return }
        let g = b / BlockLayout.blocksPerGroup
        let used = pagesInUse(group: g, except: (b, slot)).filter { $0.overlaps(r) } + (keeping.isEmpty ? [] : [keeping])
        let base = layout.regionOffset(group: g)
        for run in r.subtracting(used) { punch(base + run.lowerBound * BlockLayout.pageSize, run.count * BlockLayout.pageSize) }
    }

    private func writeSlotHeader(_ h: SlotHeader?, block b: Int, slot: Int) throws {
        var raw = [UInt8](repeating: 0, count: BlockLayout.slotHeaderSize)
        raw.withUnsafeMutableBytes { if let h { h.encode(into: $0) } }
        try raw.withUnsafeBytes { (r) throws in
            try pwriteFully(fd, r.baseAddress!, r.count, layout.slotHeaderOffset(block: b, slot: slot), "write \(name) block \(b) header")
        }
    }

    private func punch(_ offset: Int, _ length: Int) {
        guard length > 0 else { return }
        _ = wd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, Int64(offset), Int64(length))
    }

    /// Removes both versions of a block (it becomes a never-written block).
    private func clearSlots(_ b: Int) throws {
        guard b < entries.count else { return }
        for s in 0..<2 {
            guard let h = entries[b].header(s) else { continue }
            try writeSlotHeader(nil, block: b, slot: s)
            release(h, block: b, slot: s, keeping: 0..<0)
        }
        entries[b] = Entry()
    }

    private func writeHeader() throws {
        let target = durableHeaderCopy.map { 1 - $0 } ?? lastHeaderCopy ?? 0
        header.logicalSize = size
        header.generation = max(header.generation + 1, nextGeneration)
        nextGeneration = header.generation + 1
        var raw = [UInt8](repeating: 0, count: FileHeader.size)
        raw.withUnsafeMutableBytes { header.encode(into: $0) }
        try raw.withUnsafeBytes { (r) throws in
            try pwriteFully(fd, r.baseAddress!, r.count, FileHeader.copyOffsets[target], "write header of \(name)")
        }
        lastHeaderCopy = target
        headerDirty = false
    }

    /// Whether some block still has an older copy waiting for a sync.
    public var hasStaleCopies: Bool { changedSinceSync.contains { entries[$0].hasStale } }

    /// After a sync: every block's current version is its durable one, and
    /// older copies go. Only blocks stored since the last sync can differ.
    private func dropStaleCopies() throws {
        defer { changedSinceSync.removeAll(keepingCapacity: true) }
        for b in changedSinceSync {
            var e = entries[b]
            e.durable = e.current
            if e.hasStale, let cur = e.current, let oldHeader = e.header(1 - cur) {
                let old = 1 - cur
                try writeSlotHeader(nil, block: b, slot: old)
                release(oldHeader, block: b, slot: old, keeping: 0..<0)
                e.set(old, nil)
            }
            entries[b] = e
        }
    }

    // MARK: Holes

    /// `SEEK_DATA` / `SEEK_HOLE` at block granularity.
    public func seek(_ offset: UInt64, data: Bool) throws -> UInt64 {
        guard offset < size else { throw FSError(ENXIO) }
        let bs = UInt64(layout.blockSize)
        let start = Int(offset / bs)
        func isHole(_ b: Int) -> Bool { entries[b].isHole && !(cache[b]?.dirty ?? false) }
        if data {
            // The first block at or after `start` with data: among stored and dirty blocks only.
            let candidates = entries.populated(from: start) + cache.keys.filter { $0 >= start }
            guard let b = candidates.filter({ $0 < entries.count && !isHole($0) }).min() else { throw FSError(ENXIO) }
            return max(offset, UInt64(b) * bs)
        }
        var b = start
        while b < entries.count && !isHole(b) { b += 1 }
        return b < entries.count ? max(offset, UInt64(b) * bs) : size
    }
}

/// A block request of the pipeline: which block, what the retry policy
/// knows of it, and how to replace its output buffer after a time-out.
protocol PipelineJob: BlockRequest {
    /// What the engine does, for messages ("compression").
    static var what: String { get }
    var block: Int { get }
    var tries: RetryPolicy.Record { get set }
    /// Sets the output buffer aside for good (the device may still write
    /// it after a time-out) and takes a fresh one.
    mutating func replaceOutput(_ codec: BlockCodec, blockSize: Int)
}

/// A dirty block being compressed: `source` is busy (its bytes must not
/// change) until the job is reaped.
struct CompressJob: PipelineJob {
    static let what = "compression"
    let block: Int
    let source: CachedBlock
    var output: BlockBuffer
    /// Bytes of the block up to its last nonzero byte (what a raw store keeps).
    let rawLength: Int
    var tries: RetryPolicy.Record

    var engineInput: UnsafeRawBufferPointer { UnsafeRawBufferPointer(source.data) }
    var engineOutput: UnsafeMutableRawBufferPointer { output.bytes }
    mutating func replaceOutput(_ codec: BlockCodec, blockSize: Int) {
        codec.quarantine(output)
        output = codec.takeBuffer(blockSize)
    }
}

/// A stored block being decompressed into `target`, which joins the cache
/// when the job is reaped whole.
struct LoadJob: PipelineJob {
    static let what = "decompression"
    let block: Int
    var target: CachedBlock
    let payload: BlockBuffer
    var tries: RetryPolicy.Record

    var engineInput: UnsafeRawBufferPointer { UnsafeRawBufferPointer(payload.bytes) }
    var engineOutput: UnsafeMutableRawBufferPointer { target.data }
    mutating func replaceOutput(_ codec: BlockCodec, blockSize: Int) {
        codec.quarantine(target)
        target = CachedBlock(codec.takeBuffer(blockSize), zeroed: false)
    }
}
