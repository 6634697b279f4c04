/// A set of block numbers kept as disjoint ranges sorted by start: the
/// blocks `fallocate` reserved backing space for (a few long runs, not one
/// entry per block of a terabyte). Pure.
struct BlockRanges: Equatable {
    private(set) var ranges: [Range<Int>] = []

    var isEmpty: Bool { ranges.isEmpty }
    /// Blocks in the set.
    var count: Int { ranges.reduce(0) { $0 + $1.count } }

    func contains(_ b: Int) -> Bool { ranges.contains { $0.contains(b) } }

    /// Blocks of `range` in the set.
    func count(in range: Range<Int>) -> Int {
        ranges.reduce(0) { $0 + ($1.overlaps(range) ? $1.clamped(to: range).count : 0) }
    }

    /// Adds `new` (merging it with the ranges it overlaps or touches).
    mutating func insert(_ new: Range<Int>) {
        guard !new.isEmpty else { return }
        var lo = new.lowerBound, hi = new.upperBound
        ranges.removeAll { r in
            guard r.upperBound >= lo && r.lowerBound <= hi else { return false }
            lo = min(lo, r.lowerBound); hi = max(hi, r.upperBound)
            return true
        }
        ranges.append(lo..<hi)
        ranges.sort { $0.lowerBound < $1.lowerBound }
    }

    /// Takes block `b` out; true when it was in the set.
    mutating func remove(_ b: Int) -> Bool {
        guard let i = ranges.firstIndex(where: { $0.contains(b) }) else { return false }
        let r = ranges.remove(at: i)
        ranges.insert(contentsOf: [r.lowerBound..<b, (b + 1)..<r.upperBound].filter { !$0.isEmpty }, at: i)
        return true
    }

    /// Takes the blocks of `range` out; returns how many were in the set.
    mutating func remove(_ range: Range<Int>) -> Int {
        var removed = 0
        var kept: [Range<Int>] = []
        for r in ranges {
            guard r.overlaps(range) else { kept.append(r); continue }
            removed += r.clamped(to: range).count
            if r.lowerBound < range.lowerBound { kept.append(r.lowerBound..<range.lowerBound) }
            if r.upperBound > range.upperBound { kept.append(range.upperBound..<r.upperBound) }
        }
        ranges = kept
        return removed
    }
}
