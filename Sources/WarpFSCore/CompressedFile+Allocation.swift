#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

// fallocate: backing space reserved ahead for blocks a later write takes
// (`BlockRanges` holds which).

extension CompressedFile {
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
        try beginChange()
        try unpackIfPacked()
        let bs = UInt64(layout.blockSize)
        let range = Int(offset / bs)..<Int((end - 1) / bs + 1)
        if let account = codec.space {
            let cost = layout.blockSize + BlockLayout.tablePageSize
            let count = range.count - allocated.count(in: range)
                - cache.filter { range.contains($0.key) && $0.value.reservation != nil && !isAllocated($0.key) }.count
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

    private func isAllocated(_ b: Int) -> Bool { allocated.contains(b) }

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
        for p in pieces { allocated.insert(p) }
    }

    /// Takes block `b` out of the allocated blocks; true when it was there
    /// (its reservation now goes with the write).
    func takeAllocation(_ b: Int) -> Bool { allocated.remove(b) }

    func restoreAllocation(_ b: Int) { allocated.insert(b..<(b + 1)) }

    /// Gives back the reservations of the allocated blocks in `range`.
    func releaseAllocations(_ range: Range<Int>) {
        guard let (account, _) = allocatedAccount, !allocated.isEmpty else { return }
        let freed = allocated.remove(range)
        if freed > 0 { account.release(freed * (layout.blockSize + BlockLayout.tablePageSize)) }
    }
}
