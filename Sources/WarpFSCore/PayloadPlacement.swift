/// Where a new payload goes in its group's payload region: pure decisions
/// on byte ranges of the region, with no file and no state (the caller
/// passes the bytes the group's valid slots take).
///
/// A group's region holds the payloads of its 16 blocks, two versions
/// each (`BlockLayout`). Placement is first fit from the start of the
/// region: payloads written in order lie next to each other, so a
/// sequential reader reads the backing file sequentially, and space freed
/// by dropped versions near the start is used again before the file grows
/// (a rewritten small file stays in its first page). The region's size
/// (`BlockLayout.regionSize`) guarantees a fit for any payload of at most a
/// block while the 31 other slots of the group hold theirs.
enum PayloadPlacement {
    /// The start (a multiple of `unit`) of the lowest run of `length` bytes
    /// that none of `used` covers in `0..<regionSize`; nil when none fits.
    static func firstFit(length: Int, unit: Int, used: [Range<Int>], regionSize: Int) -> Int? {
        let used = used.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        var at = 0
        for r in used where r.upperBound > at {
            if r.lowerBound >= at + length { break }
            at = (max(at, r.upperBound) + unit - 1) / unit * unit
        }
        return at + length <= regionSize ? at : nil
    }
}
