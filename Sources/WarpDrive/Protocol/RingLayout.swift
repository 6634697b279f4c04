/// Geometry of one queue's shared memory, as the HiSilicon QM lays it out in
/// the uacce DUS region: the SQ, then the CQ, then one status page.
///
/// The last two 32-bit words of the DUS region are the reset "stop" words
/// (end-8 rx, end-4 tx). The first words of the status page are this
/// emulation's notification words (see `docs/warpdrive.md`).
public struct RingLayout: Sendable, Equatable {
    /// Bytes per submission queue entry (ZIP SQE).
    public static let sqeSize = ZipSQE.size
    /// Bytes per completion queue entry.
    public static let cqeSize = 16
    /// Size of the status page, and of a page for region offsets.
    public static let pageSize = 4096
    /// Bytes of the MMIO region: two pages, the doorbell at offset 0x1000.
    public static let mmioSize = 2 * 4096
    /// Offset of the 64-bit doorbell register in the MMIO region.
    public static let doorbellOffset = 0x1000

    /// Entries per ring (SQ and CQ have the same depth).
    public let depth: Int

    /// The depths a ring may have.
    public static let depths = 2...(1 << 15)

    /// The layout of rings `depth` entries deep (`depths`: 2...32768).
    public init(depth: Int) {
        precondition(RingLayout.depths.contains(depth), "queue depth must be in 2...32768")
        self.depth = depth
    }

    /// Offset of the SQ.
    public var sqOffset: Int { 0 }
    /// Offset of the CQ, after the SQ.
    public var cqOffset: Int { depth * RingLayout.sqeSize }
    /// Offset of the status page, after the CQ.
    public var statusOffset: Int { cqOffset + depth * RingLayout.cqeSize }
    /// Offset of SQ slot `slot`.
    func sqeOffset(_ slot: Int) -> Int { sqOffset + slot * RingLayout.sqeSize }
    /// Offset of CQ slot `slot`.
    func cqeOffset(_ slot: Int) -> Int { cqOffset + slot * RingLayout.cqeSize }
    /// Total bytes of the DUS region, rounded up to whole pages.
    public var dusSize: Int {
        let raw = statusOffset + RingLayout.pageSize
        return (raw + RingLayout.pageSize - 1) / RingLayout.pageSize * RingLayout.pageSize
    }
    /// Offset of the rx stop word (end - 8).
    public var rxStopOffset: Int { dusSize - 8 }
    /// Offset of the tx stop word (end - 4).
    public var txStopOffset: Int { dusSize - 4 }

    /// The status page's words (emulation), as word indexes from
    /// `statusOffset` (byte offsets 0, 4, 8, 12).
    enum StatusWord {
        /// Interrupt counter: the device adds 1 per notification; waiters futex-wait on it.
        static let irqCounter = 0
        /// Number of client threads sleeping on the interrupt counter.
        static let irqWaiters = 1
        /// Interrupt moderation: notify when at least this many completions are unconsumed.
        static let irqThreshold = 2
        /// Notification flags (`eventFDFlag`).
        static let irqFlags = 3
        /// `irqFlags` bit: also signal the queue's eventfd on notification.
        static let eventFDFlag: UInt32 = 1
    }
}
