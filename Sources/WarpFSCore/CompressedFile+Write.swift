#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

// Writing: data into the cache with its backing space reserved first
// (ENOSPC, EDQUOT and EFBIG refused before any byte is accepted), size
// changes, and holes.

extension CompressedFile {
    /// Writes `count` bytes at `offset` into the block cache. A block that
    /// the write fills to its end is sent to the accelerator at once; the
    /// call returns when the data is buffered. At most `writeDepth` blocks
    /// are in flight per file (back-pressure beyond that).
    ///
    /// `privileged`: the writer is root, who may use the backing file
    /// system's root-reserved space (see `SpaceAccount`).
    public func write(offset: UInt64, count: Int, from src: UnsafeRawPointer, privileged: Bool = true) throws {
        guard count > 0 else { return try takeWriteError() }
        try beginChange()
        try unpackIfPacked()
        let end = offset + UInt64(count)
        // A file with no block stored has nothing past its end to clear: a
        // write past the end need not read its last block back (which
        // needs the accelerator).
        if size == 0 && entries.count == 0 { tailVerified = true }
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
                    if !loggedNoSpace { Log.once(.error, .noSpace, file: name, block: needing[0], e.message); loggedNoSpace = true }
                    throw e
                }
                loggedNoSpace = false
                reserved.formUnion(needing)
            }
        }
        // After a block of this write could not be sent, the others wait for
        // a later flush: getting a stream may wait up to the engine
        // time-out, once per write, not once per block.
        var sendFailed = false
        for (b, inBlock, n, pos) in pieces {
            settle(b)
            let whole = inBlock == 0 && n == layout.blockSize
            // A block this write starts from nothing is filled piece by piece.
            let fresh = cache[b] == nil && (b >= entries.count || entries[b].isHole)
            let block = try cached(b, load: !whole)
            if fresh { block.coveredUpTo = 0 }
            if block.reservation == nil, let account = codec.space, reserved.remove(b) != nil { block.reservation = (account, cost) }
            (block.data.baseAddress! + inBlock).copyMemory(from: src + Int(pos - offset), byteCount: n)
            block.dirty = true
            if inBlock <= block.coveredUpTo { block.coveredUpTo = max(block.coveredUpTo, inBlock + n) }
            // A failure here is reported at the end, once every piece of this
            // write is buffered and the size covers it.
            if inBlock + n == layout.blockSize && !sendFailed {
                do { try startCompression(b) } catch { sendFailed = true; deferWriteError(error) }
            }
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
        try beginChange()
        if newSize == size && packed != nil { return }
        try unpackIfPacked()
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
        if newSize == 0, let v = versionWhenEmptied, v != layout.version { try reformatEmptied(as: v) }
    }

    /// An emptied container of another format version than the mount's
    /// (`versionWhenEmptied`: version 2 files become version 3 under a
    /// default mount, and the other way under `format_version=2`) is made
    /// anew in that version: the backing file is cut to nothing and gets a
    /// new header, made durable at once. (A crash between the two leaves
    /// an empty plain file: the truncation, no other data.)
    private func reformatEmptied(as version: UInt16) throws {
        guard fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY else { return }
        _ = try sys("truncate \(name) to upgrade its format") { ftruncate(fd, 0) }
        header = FileHeader(version: version, blockSize: header.blockSize, encoding: header.encoding, level: header.level,
                            generation: nextGeneration, logicalSize: 0)
        layout = BlockLayout(header)
        entries = BlockIndex()
        changedSinceSync.removeAll()
        durableHeaderCopy = nil
        lastHeaderCopy = nil
        try writeHeader()
        _ = try sys("fdatasync \(name)") { fdatasync(fd) }
        durableHeaderCopy = lastHeaderCopy
        Log.info("\(name): emptied; its container is now format version \(header.version)")
    }

    /// Zeroes a byte range (FALLOC_FL_PUNCH_HOLE): whole blocks become
    /// holes, and give back what an allocation reserved for them.
    /// `keepingAllocations`: FALLOC_FL_ZERO_RANGE, whose blocks stay allocated.
    public func zeroRange(offset: UInt64, length: UInt64, keepingAllocations: Bool = false) throws {
        try beginChange()
        try unpackIfPacked()
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
