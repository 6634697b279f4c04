extension Range where Bound == Int {
    /// The runs of this range that none of `covered` covers, in order: what
    /// may be released of a payload's pages when other slots still name some
    /// (the file system and `fsck` alike never punch a page a valid slot names).
    public func subtracting(_ covered: [Range<Int>]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var at = lowerBound
        for r in covered.sorted(by: { $0.lowerBound < $1.lowerBound }) where !r.isEmpty && r.upperBound > at && r.lowerBound < upperBound {
            if r.lowerBound > at { out.append(at..<r.lowerBound) }
            at = Swift.max(at, r.upperBound)
            if at >= upperBound { break }
        }
        if at < upperBound { out.append(at..<upperBound) }
        return out
    }
}
