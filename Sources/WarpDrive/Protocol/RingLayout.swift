/// Geometry of one queue's shared memory, as the HiSilicon QM lays it out in
/// the uacce DUS region: the SQ, then the CQ, then one status page.
///
/// The last two 32-bit words of the DUS region are the reset "stop" words
/// (end-8 rx, end-4 tx). The first words of the status page are this
/// emulation's notification words (see `docs/warpdrive.md`).
public struct RingLayout: Sendable, Equatable {
    /// Bytes per submission queue entry (ZIP SQE).
    public static let sqeSize = 128
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

    public init(depth: Int) {
        precondition(depth >= 2 && depth <= 1 << 15, "queue depth must be in 2...32768")
        self.depth = depth
    }

    public var sqOffset: Int { 0 }
    public var cqOffset: Int { depth * RingLayout.sqeSize }
    public var statusOffset: Int { cqOffset + depth * RingLayout.cqeSize }
    /// Total bytes of the DUS region, rounded up to whole pages.
    public var dusSize: Int {
        let raw = statusOffset + RingLayout.pageSize
        return (raw + RingLayout.pageSize - 1) / RingLayout.pageSize * RingLayout.pageSize
    }
    /// Offset of the rx stop word (end - 8).
    public var rxStopOffset: Int { dusSize - 8 }
    /// Offset of the tx stop word (end - 4).
    public var txStopOffset: Int { dusSize - 4 }

    // Status page words (emulation): offsets from statusOffset.
    /// Interrupt counter: the device adds 1 per notification; waiters futex-wait on it.
    static let irqCounter = 0
    /// Number of client threads sleeping on the interrupt counter.
    static let irqWaiters = 4
    /// Interrupt moderation: notify when at least this many completions are unconsumed.
    static let irqThreshold = 8
    /// Bit 0: also signal the queue's eventfd on notification.
    static let irqFlags = 12
}
