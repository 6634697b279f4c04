import Synchronization

/// Allocates Process Address Space IDs from the 20-bit PASID space.
/// PASID 0 is reserved (it means "no PASID" on the bus), as on real IOMMUs.
public final class PASIDAllocator: Sendable {
    /// Largest PASID (2^20 - 1).
    public static let maxPASID: UInt32 = (1 << 20) - 1

    private struct State {
        var next: UInt32 = 1
        var inUse: Set<UInt32> = []
    }
    private let state = Mutex(State())
    private let limit: UInt32

    /// `limit` caps the space (for tests of exhaustion); defaults to the full 20 bits.
    public init(limit: UInt32 = PASIDAllocator.maxPASID) {
        precondition(limit >= 1 && limit <= PASIDAllocator.maxPASID)
        self.limit = limit
    }

    /// A free PASID, or nil when all are in use.
    public func allocate() -> UInt32? {
        state.withLock { s in
            guard s.inUse.count < Int(limit) else { return nil }
            while s.inUse.contains(s.next) { s.next = s.next >= limit ? 1 : s.next + 1 }
            let p = s.next
            s.inUse.insert(p)
            s.next = p >= limit ? 1 : p + 1
            return p
        }
    }

    /// Returns a PASID to the pool.
    public func free(_ pasid: UInt32) {
        _ = state.withLock { $0.inUse.remove(pasid) }
    }

    /// Number of PASIDs currently allocated.
    public var allocatedCount: Int { state.withLock { $0.inUse.count } }
}
