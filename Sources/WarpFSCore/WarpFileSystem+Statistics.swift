#if canImport(Glibc)
import Glibc
#endif

// The mount's live counters as a read-only attribute of its root, for
// `warpfs iostat` (record format: `IOStatistics.Snapshot`, docs/SYSTEM.md).
extension WarpFileSystem {
    /// Read on the mount root: the mount's counters (`IOStatistics`), a
    /// versioned text record made at each read, stored nowhere. Anyone the
    /// kernel lets read the root's `user.*` attributes (read permission on
    /// the root directory) may read it; setting or removing it fails with
    /// EPERM, for root too, and changes nothing. Not listed by listxattr.
    public static let statsAttribute = "user.warpfs.stats"

    /// Whether a request about attribute `name` of node `id` is about the
    /// statistics attribute.
    func isStatisticsAttribute(_ id: UInt64, _ name: String) -> Bool {
        id == 1 && name == Self.statsAttribute
    }

    /// The record now.
    public var statisticsRecord: String { statistics.snapshot(device: codec.fallback ?? device).record }

    /// getxattr of the statistics attribute: copies the record into `buf`,
    /// or, when `buf` is empty, gives a size the record fits in (a bound:
    /// the figures grow between the size query and the read).
    func readStatistics(into buf: UnsafeMutableRawBufferPointer) throws -> Int {
        let text = Array(statisticsRecord.utf8)
        if buf.count == 0 { return max(4096, text.count) }
        guard buf.count >= text.count else { throw FSError(ERANGE) }
        buf.copyBytes(from: text)
        return text.count
    }

    /// setxattr or removexattr of the statistics attribute: refused.
    func refuseStatisticsChange() -> FSError {
        FSError(EPERM, "\(Self.statsAttribute) is read-only: it shows the mount's counters")
    }
}
