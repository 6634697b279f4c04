/// Where a new payload goes in its group's payload region: pure decisions
/// on page ranges, with no file and no state (the caller passes the pages
/// the group's valid slots name, and keeps the cursor).
///
/// A group's region holds the payloads of its 16 blocks, two versions
/// each, in 4 KiB pages (`BlockLayout`). Placement is first fit from a
/// cursor that follows the last payload placed, so payloads written in
/// order lie next to each other and a sequential reader reads the backing
/// file sequentially; it wraps once to the start of the region. The region's
/// size (`BlockLayout.regionPages`) guarantees a fit for any payload of at
/// most a block while the 31 other slots of the group hold theirs.
enum PayloadPlacement {
    /// The first page of the first run of `pages` pages that none of `used`
    /// covers, at or after `cursor`, else from page 0; nil when no run of the
    /// region (`0..<regionPages`) fits.
    static func firstFit(pages: Int, used: [Range<Int>], cursor: Int, regionPages: Int) -> Int? {
        let used = used.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        func fit(from start: Int) -> Int? {
            var at = start
            for r in used where r.upperBound > at {
                if r.lowerBound >= at + pages { break }
                at = max(at, r.upperBound)
            }
            return at + pages <= regionPages ? at : nil
        }
        return fit(from: cursor) ?? fit(from: 0)
    }

    /// The pages of an old payload (`old`) that may be punched once a new
    /// version replaced it: those neither the new version (`keeping`) nor
    /// another valid slot of the group (`others`) names. (Only a damaged or
    /// crafted file has overlapping slots, but punching a page one of them
    /// names would turn it into lost data.)
    static func releasable(_ old: Range<Int>, keeping: Range<Int>, others: [Range<Int>]) -> [Range<Int>] {
        old.subtracting(others + [keeping])
    }
}
