#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

// Storing: block versions and the header written by the protocol of
// `docs/FORMAT.md` (never over the durable copy), sync and the release of
// stale copies, and the write-back errors stores meet.

extension CompressedFile {
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

    /// Makes data and size durable, then releases superseded block copies.
    public func sync() throws {
        try flush()
        _ = try sys("fdatasync \(name)") { fdatasync(fd) }
        durableHeaderCopy = lastHeaderCopy
        try dropStaleCopies()
    }

    /// Writes one block version: payload, then its slot header. In a
    /// version-2 container block 0's payload goes inline in the first page
    /// when it fits; others go to a free run of the group's region
    /// (`place`), never over bytes another slot's header points to.
    func store(block b: Int, encoding: BlockEncoding, payload: UnsafeRawBufferPointer) throws {
        // A file other hosts share is written only under its writer lock
        // (every change takes it first; this is the backstop).
        guard writerLockTimeout == nil || holdsWriterLock else {
            throw FSError(EIO, "\(name): block \(b): a store without the cross-host writer lock was refused")
        }
        var e = entries[b]
        let target = e.durable.map { 1 - $0 } ?? e.current ?? 0
        let len = payload.count
        let inline = layout.version == 2 && b == 0 && len > 0 && len <= BlockLayout.inlineCapacity
        let previous = e.header(target)
        guard nextGeneration <= SlotHeader.maxGeneration else {
            throw FSError(EIO, "\(name): block \(b): the file's generation counter is exhausted (a damaged slot header claims "
                + "generation \(nextGeneration - 1)); copy the file to a new one")
        }
        let offset = inline || len == 0 ? 0 : place(block: b, slot: target, length: len)
        let h = SlotHeader(encoding: encoding, isInline: inline, block: UInt64(b), generation: nextGeneration, storedLength: len,
                           payloadChecksum: crc32Checksum(payload), offset: offset)
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
        if let previous { release(previous, block: b, slot: target, keeping: layout.footprint(h)) }
        // A group's last block written: start the backing file system's
        // write-back of the group now (without waiting), so the disk works
        // while the engines compress the next groups instead of all at the
        // final fsync (a sequential 200 MB write: 13% faster; docs/PERFORMANCE.md).
        if (b + 1) % BlockLayout.blocksPerGroup == 0 {
            let g = b / BlockLayout.blocksPerGroup
            let lo = layout.tableOffset(group: g), hi = layout.regionOffset(group: g + 1)
            _ = wd_start_writeback(fd, Int64(lo), Int64(hi - lo))
        }
    }

    /// Where a payload of `length` bytes for slot `slot` of block `b` goes
    /// in its group's region: the lowest free run that holds it
    /// (`PayloadPlacement.firstFit`). The slot's own previous payload counts
    /// as free (it is not the durable version).
    private func place(block b: Int, slot: Int, length: Int) -> Int {
        let g = b / BlockLayout.blocksPerGroup
        let used = footprintsInUse(group: g, except: (b, slot))
        // The region's size guarantees a fit (see BlockLayout.regionSize).
        let at = PayloadPlacement.firstFit(length: layout.footprintLength(length), unit: layout.placementUnit,
                                           used: used, regionSize: layout.regionSize)!
        // A one-block file rewritten while its durable version holds the
        // start of the region: when the lowest fit would leave the file on
        // more pages than a fresh copy takes once the old version is gone,
        // the new version goes past the place a fresh copy takes, starting
        // on a page, so that compaction at the last close
        // (`compact`) can move it there.
        if layout.version >= 3, b == 0, entries.count == 1, entries[0].durable != nil {
            let fresh = 0..<length
            if pagesTouched([at..<(at + length)]) > pagesTouched([fresh]) {
                let base = layout.regionOffset(group: 0), page = BlockLayout.pageSize
                let past = max(length, used.map(\.upperBound).max() ?? 0)
                let next = ((base + past + page - 1) / page) * page - base
                if next + length <= layout.regionSize { return next }
            }
        }
        return at
    }

    /// The region bytes the valid slots of group `g` take, except one slot's.
    func footprintsInUse(group g: Int, except: (block: Int, slot: Int)) -> [Range<Int>] {
        var used: [Range<Int>] = []
        for k in (g * BlockLayout.blocksPerGroup)..<((g + 1) * BlockLayout.blocksPerGroup) where k < entries.count {
            for s in 0..<2 where !(k == except.block && s == except.slot) {
                if let h = entries[k].header(s) {
                    let r = layout.footprint(h)
                    if !r.isEmpty { used.append(r) }
                }
            }
        }
        return used
    }

    /// Punches the whole pages of an old version that neither `keeping`
    /// nor another valid slot of the group touches (in version 3 payloads
    /// share pages; only a damaged or crafted file has overlapping slots,
    /// and a punch would turn them into lost data).
    private func release(_ old: SlotHeader, block b: Int, slot: Int, keeping: Range<Int>) {
        let r = layout.footprint(old)
        guard !r.isEmpty else { return }
        let g = b / BlockLayout.blocksPerGroup
        let used = footprintsInUse(group: g, except: (b, slot)) + [keeping]
        for run in layout.punchablePages(of: r, used: used, group: g) { punch(run.lowerBound, run.count) }
    }

    func writeSlotHeader(_ h: SlotHeader?, block b: Int, slot: Int) throws {
        var raw = [UInt8](repeating: 0, count: BlockLayout.slotHeaderSize)
        raw.withUnsafeMutableBytes { if let h { h.encode(into: $0, layout: layout) } }
        try raw.withUnsafeBytes { (r) throws in
            try pwriteFully(fd, r.baseAddress!, r.count, layout.slotHeaderOffset(block: b, slot: slot), "write \(name) block \(b) header")
        }
    }

    func punch(_ offset: Int, _ length: Int) {
        guard length > 0 else { return }
        _ = wd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, Int64(offset), Int64(length))
    }

    /// Removes both versions of a block (it becomes a never-written block).
    func clearSlots(_ b: Int) throws {
        guard b < entries.count else { return }
        for s in 0..<2 {
            guard let h = entries[b].header(s) else { continue }
            try writeSlotHeader(nil, block: b, slot: s)
            release(h, block: b, slot: s, keeping: 0..<0)
        }
        entries[b] = Entry()
    }

    func writeHeader() throws {
        let target = durableHeaderCopy.map { 1 - $0 } ?? lastHeaderCopy ?? 0
        header.logicalSize = size
        header.generation = max(header.generation + 1, nextGeneration)
        nextGeneration = header.generation + 1
        var raw = [UInt8](repeating: 0, count: header.size)
        raw.withUnsafeMutableBytes { header.encode(into: $0) }
        try raw.withUnsafeBytes { (r) throws in
            try pwriteFully(fd, r.baseAddress!, r.count, layout.headerCopyOffsets[target], "write header of \(name)")
        }
        lastHeaderCopy = target
        headerDirty = false
    }

    /// Whether some block still has an older copy waiting for a sync.
    public var hasStaleCopies: Bool { changedSinceSync.contains { entries[$0].hasStale } }

    /// After a sync: every block's current version is its durable one, and
    /// older copies go. Only blocks stored since the last sync can differ.
    func dropStaleCopies() throws {
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
    func storeFailed(block b: Int, _ c: CachedBlock, _ error: Error) {
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
                if e.errno == ENOSPC || e.errno == EDQUOT {
                    Log.once(.error, .noSpace, file: name, block: b, e.description)
                } else {
                    Log.error(e.description)
                }
                lastLoggedStoreError = e.errno
            }
        }
        e.logged = true
        if writeError == nil { writeError = e }
    }

    /// Records an error of write-back met while a write's data was being
    /// buffered, for the end of that write (or the next report).
    func deferWriteError(_ error: Error) {
        var e = error as? FSError ?? FSError(EIO, "\(error)")
        // Once per file and errno, as for failed stores: a device gone
        // fails every block of a large write the same way.
        if !e.logged, lastLoggedStoreError != e.errno {
            Log.error(e.description)
            lastLoggedStoreError = e.errno
        }
        e.logged = true
        if writeError == nil { writeError = e }
    }

    func takeWriteError() throws {
        if let e = writeError {
            writeError = nil
            throw e
        }
    }

    /// Whether some block holds data not yet stored (kept for a retry).
    public var hasUnstoredBlocks: Bool { cache.values.contains { $0.dirty || $0.busy } }
}
