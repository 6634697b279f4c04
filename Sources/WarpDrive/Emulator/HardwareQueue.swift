#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// The device side of one queue pair: what the kernel driver and the
/// hardware hold. All mutable fields are guarded by the owning device's lock.
final class HardwareQueue: @unchecked Sendable {
    let number: Int
    let layout: RingLayout
    let dusFile: SharedMemoryFile
    let mmioFile: SharedMemoryFile
    /// The device's own mapping of the rings.
    let dus: SharedMapping
    /// Notification eventfd (the queue fd's `poll()` readiness).
    let eventFD: Int32
    let binding: SVABinding
    unowned let device: EmulatedZipDevice
    let counters = AtomicCounters()

    // Guarded by device.lock.
    var state: QueueState = .initialized
    var mapped: Set<QueueRegion> = []
    var direction: Direction = .compress
    /// True once reset, fenced or released: nothing more is claimed or posted.
    var dead = false
    /// SQ tail as last rung.
    var sqTail = 0
    /// Next SQ slot an engine will claim.
    var claimHead = 0
    /// Requests claimed and not yet finished by an engine.
    var inProgress = 0
    /// Finished slots waiting to be posted in order.
    var finished: [Bool]
    /// Next SQ slot whose completion is posted.
    var postNext = 0
    /// CQ write position and phase.
    var cqTail = 0
    var cqPhase: UInt32 = 1
    /// CQ head as last rung, and completions posted but not yet consumed.
    var cqHead = 0
    var cqUnconsumed = 0

    init(number: Int, layout: RingLayout, binding: SVABinding, device: EmulatedZipDevice) throws {
        self.number = number
        self.layout = layout
        self.binding = binding
        self.device = device
        dusFile = try SharedMemoryFile(name: "warpdrive-dus-\(number)", size: layout.dusSize)
        mmioFile = try SharedMemoryFile(name: "warpdrive-mmio-\(number)", size: RingLayout.mmioSize)
        dus = try dusFile.map()
        let fd = wd_eventfd()
        guard fd >= 0 else { throw WarpDriveError.system(call: "eventfd", errno: errno) }
        eventFD = fd
        finished = Array(repeating: false, count: layout.depth)
        Words(dus.base + layout.statusOffset)[RingLayout.StatusWord.irqThreshold] = 1
    }

    deinit { close(eventFD) }

    var status: Words { Words(dus.base + layout.statusOffset) }

    func setStopWords() {
        Words(dus.base + layout.rxStopOffset).storeRelease(0, 1)
        Words(dus.base + layout.txStopOffset).storeRelease(0, 1)
    }

    /// Bumps the interrupt counter, wakes sleeping waiters, and signals the
    /// eventfd when the client asked for fd notification.
    func raiseInterrupt() {
        let s = status
        _ = wd_fetch_add_u32(s.pointer(RingLayout.StatusWord.irqCounter), 1)
        if s.loadAcquire(RingLayout.StatusWord.irqWaiters) > 0 {
            _ = wd_futex_wake(s.pointer(RingLayout.StatusWord.irqCounter), Int32.max)
        }
        if s.loadAcquire(RingLayout.StatusWord.irqFlags) & RingLayout.StatusWord.eventFDFlag != 0 { _ = wd_eventfd_signal(eventFD) }
    }

    var pendingWork: Int { (sqTail - claimHead + layout.depth) % layout.depth }
}
