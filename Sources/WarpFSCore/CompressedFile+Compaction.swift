#if canImport(Glibc)
import Glibc
#endif
import WarpFSFormat

// Compaction of a small file at its last close: payloads moved down into
// free space of its first pages, so a file rewritten in place takes as few
// pages as a fresh copy.

extension CompressedFile {
    /// Moves a small file's payloads to lower free places when that frees
    /// whole pages, by the write protocol of `docs/FORMAT.md`: each moved
    /// payload is a new version of its block (same bytes, checked against
    /// their checksum, new generation) in the slot that does not hold the
    /// durable one; then the file is synced and the old versions dropped.
    /// A crash at any point leaves each block with its old or its new
    /// version, the same bytes either way.
    ///
    /// Why: a version written while the previous one is durable goes
    /// beside it, so a one-block file rewritten in place moves from its
    /// first page to the next and, once the old version is dropped, takes
    /// two pages where a fresh copy takes one (the first page holds the
    /// header and the table, so it is never freed). Only files of one group
    /// (at most 16 blocks) in format version 3 are compacted, only when
    /// every block has a single durable version and nothing is buffered,
    /// and only when pages are freed (a no-op otherwise: no write, no sync).
    /// `plan` is `compactionPlan()`'s, taken under the same lock. Returns
    /// the number of blocks moved.
    @discardableResult
    public func compact(_ plan: [Int]) throws -> Int {
        var moved = 0
        for b in plan {
            guard let cur = entries[b].current, let h = entries[b].header(cur), h.storedLength > 0 else { continue }
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: h.storedLength, alignment: 16)
            defer { buf.deallocate() }
            // A payload that does not read back intact is left where it is.
            guard try readPayload(block: b, slot: cur, header: h, into: buf) == nil else { continue }
            try store(block: b, encoding: h.encoding, payload: UnsafeRawBufferPointer(buf))
            moved += 1
        }
        if moved > 0 {
            _ = try sys("fdatasync \(name)") { fdatasync(fd) }
            try dropStaleCopies()
        }
        return moved
    }

    /// The blocks to move, in the order `store` places them (lowest fit,
    /// the old versions still in place), when moving them leaves fewer
    /// pages touched; nil when compaction does not apply or frees nothing.
    public func compactionPlan() -> [Int]? {
        guard packed == nil, writerLockTimeout == nil || holdsWriterLock, layout.version >= 3, entries.count > 0, fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY, entries.count <= BlockLayout.blocksPerGroup,
              !hasUnstoredBlocks, changedSinceSync.isEmpty, (0..<entries.count).allSatisfy({ !entries[$0].hasStale }) else { return nil }
        var now: [Int: Range<Int>] = [:]
        for b in 0..<entries.count {
            if let h = entries[b].newest, !layout.footprint(h).isEmpty { now[b] = layout.footprint(h) }
        }
        guard !now.isEmpty else { return nil }
        // Simulate: each block in order of its place, moved to the lowest fit
        // among everything still on disk (its own old version included).
        var occupied = Array(now.values)
        var final = now
        var plan: [Int] = []
        for (b, r) in now.sorted(by: { $0.value.lowerBound < $1.value.lowerBound }) {
            guard let at = PayloadPlacement.firstFit(length: r.count, unit: layout.placementUnit, used: occupied, regionSize: layout.regionSize),
                  at < r.lowerBound else { continue }
            let moved = at..<(at + r.count)
            occupied.append(moved)
            final[b] = moved
            plan.append(b)
        }
        guard !plan.isEmpty, pagesTouched(Array(final.values)) < pagesTouched(Array(now.values)) else { return nil }
        return plan
    }

    /// Pages of the file that group 0's payloads `ranges` and the first
    /// page (header and table) touch.
    func pagesTouched(_ ranges: [Range<Int>]) -> Int {
        let base = layout.regionOffset(group: 0), page = BlockLayout.pageSize
        var pages: Set<Int> = [0]
        for r in ranges where !r.isEmpty {
            for p in ((base + r.lowerBound) / page)...((base + r.upperBound - 1) / page) { pages.insert(p) }
        }
        return pages.count
    }
}
