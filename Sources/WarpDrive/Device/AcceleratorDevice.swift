#if canImport(Glibc)
import Glibc
#endif

/// What a client-side `Queue` needs from a device: open a queue pair bound
/// to the caller's address space. Implemented by the in-process
/// `EmulatedZipDevice` and by `RemoteDevice` (a queue served by `warpdrived`).
public protocol AcceleratorDevice: AnyObject, Sendable {
    /// `<name>-<id>` of the device, for messages.
    var name: String { get }
    /// Opens a queue pair in INIT bound to the calling process's address
    /// space (uacce `open()`): `busy` when no instance is left.
    func openDeviceQueue() throws -> any DeviceQueue
    /// Stops what the device runs in this process (an in-process device's
    /// engines). Owners call it while they still hold the device; for a
    /// device served by another process it does nothing.
    func shutdown()
    /// One line on the device's state for status reports.
    var statusSummary: String { get }
    /// A pool of buffers registered with the device (its engines reach them
    /// without copies), or nil when the device offers none (a device in
    /// another process reaches unregistered memory through its IOMMU).
    func makeBufferPool(bufferSize: Int, count: Int) -> SharedBufferPool?
    /// Whether the device's engines run `algorithm` (its `algorithms`
    /// attribute): a client with a choice sends other algorithms elsewhere.
    func offers(_ algorithm: CompressionAlgorithm) -> Bool
}

extension AcceleratorDevice {
    /// Nothing to stop: the device runs elsewhere.
    public func shutdown() {}
    /// The device's name.
    public var statusSummary: String { name }
    /// No registered buffers.
    public func makeBufferPool(bufferSize: Int, count: Int) -> SharedBufferPool? { nil }
    /// Every algorithm: the emulated device, and a daemon serving one, run them all.
    public func offers(_ algorithm: CompressionAlgorithm) -> Bool { true }
}

/// A device that injects faults on request, for tests of callers' error
/// paths: a capability callers ask for (`device as? any FaultInjectingDevice`),
/// not a concrete type. The emulated device has it.
public protocol FaultInjectingDevice: AcceleratorDevice {
    /// The fault settings (engine error rate, not answering).
    var faults: FaultInjection { get }
    /// Fences every queue as a hardware reset does: requests in flight fail.
    func reset()
}

/// The device side of one queue pair as its client reaches it: the uacce
/// calls (mmap, SET_QP_CTX, START_Q, PUT_Q) and the doorbell store.
public protocol DeviceQueue: AnyObject, Sendable {
    /// Queue number on the device (`qn` in the doorbell).
    var number: Int { get }
    /// The PASID the queue's requests are translated with.
    var pasid: UInt32 { get }
    /// Ring geometry.
    var layout: RingLayout { get }
    /// Lifecycle state as the device sees it.
    var state: QueueState { get }
    /// The eventfd signalled on completion interrupts (when asked for).
    var notificationFD: Int32 { get }
    /// Counters the device keeps for the queue.
    var counters: WorkCounters { get }
    /// The memory of a ring region, to be mapped by the client (uacce `mmap`).
    func map(_ region: QueueRegion) throws -> SharedMemoryFile
    /// Sets the direction (`SET_QP_CTX`). INIT only.
    func setContext(_ direction: Direction) throws
    /// Starts the queue (`START_Q`). INIT only, both regions mapped.
    func start() throws
    /// Delivers the doorbell word the client just stored at MMIO + 0x1000.
    func doorbell(_ raw: UInt64)
    /// Stops and frees the queue (`PUT_Q`): when it returns, no engine
    /// touches the client's memory for this queue any more.
    func put()
    /// Counts a submission refused because the ring was full.
    func noteRingFull()
    /// Why the device can no longer serve the queue (e.g. the daemon is
    /// gone), or nil. Checked by waiters before they sleep.
    var lostError: WarpDriveError? { get }
    /// How the queue's requests name their buffers.
    var addressing: DeviceAddressing { get }
    /// A region mapped into this process for the ring code. By default the
    /// file `map(_:)` returns, mapped once; a device node maps its own region.
    func mapRegion(_ region: QueueRegion) throws -> SharedMapping
    /// Whether completion waiters sleep in `poll()` on `notificationFD`
    /// (a kernel device) rather than on the status page's futex word.
    var waitsWithPoll: Bool { get }
}

/// How SQE source and destination addresses name memory.
public enum DeviceAddressing: Sendable, Equatable {
    /// Process virtual addresses (SVA): any buffer of the bound process.
    case virtual
    /// Byte offsets into the queue's own DUS region, valid only inside its
    /// data area (from `RingLayout.dusSize` to the region's end): a device
    /// without SVA. Other buffers are copied through the data area.
    case dusOffset
}

extension DeviceQueue {
    /// SVA: requests carry process addresses.
    public var addressing: DeviceAddressing { .virtual }
    /// Maps the shared memory file of the region.
    public func mapRegion(_ region: QueueRegion) throws -> SharedMapping { try map(region).map() }
    /// The futex on the status page.
    public var waitsWithPoll: Bool { false }
}

/// A queue of the in-process emulated device.
final class LocalDeviceQueue: DeviceQueue, @unchecked Sendable {
    let device: EmulatedZipDevice
    let hw: HardwareQueue

    init(device: EmulatedZipDevice, hw: HardwareQueue) { self.device = device; self.hw = hw }

    var number: Int { hw.number }
    var pasid: UInt32 { hw.binding.pasid }
    var layout: RingLayout { hw.layout }
    var state: QueueState { device.lock.withLock { _ in hw.state } }
    var notificationFD: Int32 { hw.eventFD }
    var counters: WorkCounters { hw.counters.snapshot }
    func map(_ region: QueueRegion) throws -> SharedMemoryFile { try device.map(hw, region: region) }
    func setContext(_ direction: Direction) throws { try device.setContext(hw, direction: direction) }
    func start() throws { try device.start(hw) }
    @inline(__always) func doorbell(_ raw: UInt64) { device.doorbell(hw, raw) }
    func put() { device.put(hw) }
    func noteRingFull() {
        device.counters.busy.add(1, ordering: .relaxed)
        hw.counters.busy.add(1, ordering: .relaxed)
    }
    var lostError: WarpDriveError? { nil }
}

extension EmulatedZipDevice: FaultInjectingDevice {
    /// Totals and isolation, for status reports.
    public var statusSummary: String { "\(name): \(totals), isolated=\(isIsolated ? 1 : 0)" }

    /// Buffers registered with this process's address space: the engines
    /// reach them through their own mapping, without copies.
    public func makeBufferPool(bufferSize: Int, count: Int) -> SharedBufferPool? {
        guard let binding = try? iommu.bind() else { return nil }
        return try? SharedBufferPool(binding: binding, bufferSize: bufferSize, count: count)
    }

    /// Opens a queue bound to this process.
    public func openDeviceQueue() throws -> any DeviceQueue { try openDeviceQueue(pid: getpid()) }

    /// Opens a queue bound to the address space of process `pid` (the
    /// daemon opens queues for its clients this way).
    public func openDeviceQueue(pid: pid_t) throws -> any DeviceQueue {
        try openDeviceQueue(binding: try iommu.bind(pid: pid))
    }

    /// Opens a queue bound to the address space of a client process, which
    /// its requests reach only as far as the client could itself
    /// (`IOMMU.bind(client:)`): how `warpdrived` opens its clients' queues.
    public func openDeviceQueue(client: ClientProcess) throws -> any DeviceQueue {
        try openDeviceQueue(binding: try iommu.bind(client: client))
    }

    private func openDeviceQueue(binding: SVABinding) throws -> any DeviceQueue {
        do {
            return LocalDeviceQueue(device: self, hw: try openQueue(binding: binding))
        } catch {
            binding.unbind()
            throw error
        }
    }
}
