// Figures from repeated measurements: medians, percentiles, one timed trial.

/// The median; NaN for no values.
public func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    let m = s.count / 2
    return s.count % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/// How a percentile picks one of n sorted values. The two benches have
/// always used different rules; each keeps its own so its figures stay
/// comparable with what was published before.
public enum PercentileRule: Sendable {
    /// The value of rank ⌈p·n⌉ (counting from 1): `warpdrive-bench`.
    case nearestRank
    /// The value at index ⌊p·n⌋ (counting from 0), the last one at most:
    /// `warpfs bench` (its p50 of an even count is the upper middle value).
    case indexFloor
}

/// The `p` percentile (0...1) of values sorted in ascending order; NaN for no values.
public func percentileSorted(_ s: [Double], _ p: Double, rule: PercentileRule = .nearestRank) -> Double {
    guard !s.isEmpty else { return .nan }
    switch rule {
    case .nearestRank:
        let rank = Int((p * Double(s.count)).rounded(.up))
        return s[min(max(rank, 1), s.count) - 1]
    case .indexFloor:
        return s[min(max(Int(Double(s.count) * p), 0), s.count - 1)]
    }
}

/// One timed run of a workload: bytes of uncompressed data moved, wall and
/// process CPU time, and (for an emulated device) the engines' busy time.
public struct Trial: Sendable {
    public var bytes: Int
    public var wallNs: UInt64
    public var cpuNs: UInt64
    public var engineBusyNs: UInt64

    public init(bytes: Int, wallNs: UInt64, cpuNs: UInt64, engineBusyNs: UInt64 = 0) {
        self.bytes = bytes; self.wallNs = wallNs; self.cpuNs = cpuNs; self.engineBusyNs = engineBusyNs
    }

    /// 10^6 bytes per second.
    public var mbps: Double { Double(bytes) / (Double(wallNs) / 1e9) / 1e6 }
    /// CPU seconds per 10^9 bytes.
    public var cpuPerGB: Double { (Double(cpuNs) / 1e9) / (Double(bytes) / 1e9) }
}
