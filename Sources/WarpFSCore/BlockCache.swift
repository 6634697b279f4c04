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
    /// For a block a write started empty (a hole, or past the end): how far
    /// from its start writes have filled it without a gap. Any other block
    /// (loaded, or a hole a reader looked at) counts as whole (`Int.max`).
    var coveredUpTo = Int.max
    /// Started empty by a write and not yet filled to its end by writes.
    var isPartlyWritten: Bool { coveredUpTo < data.count }
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

// The block cache: decompressed blocks, reading through them, read-ahead
// for a sequential reader, and eviction.

extension CompressedFile {
    /// The pieces of the byte range `start..<end`, one per block it overlaps:
    /// block number, offset in the block, length, and offset in the file.
    func spans(_ start: UInt64, _ end: UInt64) -> [(block: Int, inBlock: Int, count: Int, position: UInt64)] {
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
                try startDecompression(b, payload: payloadBuffer, into: c)
            case .deflate, .zlib, .gzip, .zstd, .lz4:
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
    func cached(_ b: Int, load: Bool) throws -> CachedBlock {
        clock += 1
        if load && b < entries.count {
            // A hit: decompressed in the cache; a miss: the read waits for
            // the block to be read and decompressed (read ahead or now).
            if cache[b] != nil && !loading.contains(b) {
                codec.stats.cacheHits.add(1, ordering: .relaxed)
            } else if !entries[b].isHole {
                codec.stats.cacheMisses.add(1, ordering: .relaxed)
            }
        }
        while loading.contains(b) { reapDecompressions(minimum: 1) }
        if let c = cache[b] { c.lastUse = clock; return c }
        if load && b < entries.count && !entries[b].isHole {
            if loadErrors[b] == nil { try startLoads(b...b) }
            while loading.contains(b) { reapDecompressions(minimum: 1) }
            if var e = loadErrors.removeValue(forKey: b) {
                // Once per file and block: a reader retrying a damaged block
                // does not fill the log (the application gets EIO each time).
                Log.once(.error, .damage, file: name, block: b, e.description)
                e.logged = true
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

    /// Keeps the cache within its limit (a few blocks per file over the
    /// mount's memory budget): clean blocks go, dirty ones start storing.
    func trimCache() {
        // Over the mount's memory budget every file keeps only a few blocks.
        let cacheLimit = codec.overBudget ? min(self.cacheLimit, 8) : self.cacheLimit
        guard cache.count > cacheLimit else { return }
        // Dirty blocks that are complete go to the accelerator; clean,
        // settled blocks are dropped, least recently used first.
        // Blocks behind a sequential reader go first, then least recently used;
        // blocks read ahead of it stay (dropping them would decompress them twice).
        let behind = lastReadEnd == .max ? 0 : Int(lastReadEnd / UInt64(layout.blockSize))
        // A block a writer is still filling is neither evicted (also once an
        // fsync stored it) nor stored early, unless memory is short: stored
        // half written and dropped, it would have to be read back
        // (decompressed) for the writer's next piece, and while the
        // accelerator fails that read fails the write, whose data the
        // kernel's write-back then drops.
        let overBudget = codec.overBudget
        let victims = cache.filter { !$0.value.dirty && !$0.value.busy && (overBudget || !$0.value.isPartlyWritten) }.sorted { a, b in
            let aBehind = a.key < behind, bBehind = b.key < behind
            return aBehind != bBehind ? aBehind : a.value.lastUse < b.value.lastUse
        }
        for (b, _) in victims.prefix(cache.count - cacheLimit * 3 / 4) { cache[b] = nil }
        // (While stores are refused for want of space, the writer's retry
        // is the one at the door of `write`, not one per dirty block here.)
        if cache.count > cacheLimit, storeBlocked == nil {
            // The first block that cannot be sent ends the round: getting a
            // stream may wait up to the engine time-out, once, not per block.
            for (b, c) in cache where c.dirty && !c.busy && (overBudget || !c.isPartlyWritten) {
                do { try startCompression(b) } catch { break }
            }
        }
    }

    /// Drops clean cached blocks (after a sync, or to save memory).
    public func dropCache() {
        cache = cache.filter { $0.value.dirty || $0.value.busy }
    }
}
