#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// A software-emulated HiSilicon ZIP accelerator that serves uacce-style
/// queues with engine threads.
///
/// The device owns its queue pairs, ring memory (memfds) and engines. Clients
/// reach it through `Queue` (one queue pair) or `CompressionSession`. The
/// doorbell is a store into the queue's MMIO page followed by a call into
/// `doorbell(_:_:)`, which stands in for the MMIO write trapping into the
/// hardware; everything else crosses only shared memory.
public final class EmulatedZipDevice: @unchecked Sendable {
    /// The configuration the device was built with.
    public let configuration: EmulatedDeviceConfiguration
    /// Fault injection switches.
    public let faults = FaultInjection()
    /// The IOMMU that translates the queues' PASIDs.
    public let iommu: IOMMU
    /// Ring geometry of every queue.
    public let layout: RingLayout
    /// The request types of the algorithms the device offers, one bit per type code.
    let offered: UInt64

    /// Whether the device offers request type `t`.
    @inline(__always) func offers(_ t: ZipSQE.RequestType) -> Bool { offered >> UInt64(t.rawValue) & 1 != 0 }

    let lock = Mutex(())
    // Guarded by lock.
    private var queues: [HardwareQueue?]
    private var active: [HardwareQueue] = []
    private var roundRobin = 0
    /// The PASID whose queue was served last (clients take turns).
    private var lastServedPASID: UInt32 = 0
    private var isolatedFlag = false
    private var errorCount = 0
    private var shuttingDown = false

    let counters = AtomicCounters()
    /// Futex word bumped on every doorbell; idle engines sleep on it.
    let workSequence: UnsafeMutablePointer<UInt32>
    let sleepingEngines = Atomic<Int>(0)
    private var threads: [pthread_t] = []
    private var engines: [ZipEngine] = []

    /// Builds the device and starts its engine threads.
    public init(configuration: EmulatedDeviceConfiguration = .init(), iommu: IOMMU = .shared) {
        precondition(configuration.engines >= 1 && configuration.queues >= 1 && configuration.queues <= 1024)
        self.configuration = configuration
        offered = configuration.algorithms.reduce(0) { $0 | 1 << UInt64($1.requestType.rawValue) }
        self.iommu = iommu
        layout = RingLayout(depth: configuration.queueDepth)
        queues = Array(repeating: nil, count: configuration.queues)
        workSequence = .allocate(capacity: 1)
        workSequence.initialize(to: 0)
        for i in 0..<configuration.engines {
            let engine = ZipEngine(index: i, device: self)
            engines.append(engine)
            threads.append(engine.start())
        }
    }

    /// `<name>-<id>`.
    public var name: String { "\(configuration.name)-\(configuration.id)" }

    /// The device's uacce attributes, live.
    public var attributes: DeviceAttributes {
        lock.withLock { _ in
            DeviceAttributes(
                name: name, api: DeviceAttributes.apiQMv2, flags: DeviceAttributes.flagSVA,
                algorithms: configuration.algorithms.map(\.rawValue),
                availableInstances: queues.lazy.filter { $0 == nil }.count,
                queueDepth: layout.depth, regionMMIOSize: RingLayout.mmioSize, regionDUSSize: layout.dusSize,
                isolated: isolatedFlag, isolateStrategy: configuration.isolateThreshold, numaNode: configuration.numaNode)
        }
    }

    /// Device-wide counters (requests, bytes, errors, busy rejections).
    public var totals: WorkCounters { counters.snapshot }

    /// Every open queue: owner, PASID, direction, state and counters, by number.
    public var queueStatus: [QueueStatus] {
        lock.withLock { _ in
            queues.compactMap { q in
                q.map {
                    QueueStatus(number: $0.number, pid: $0.binding.pid, pasid: $0.binding.pasid, direction: $0.direction,
                                state: $0.state, counters: $0.counters.snapshot)
                }
            }
        }
    }

    /// Engine busy time in nanoseconds, per engine (thread CPU time).
    public var engineBusyNanoseconds: [UInt64] { engines.map { $0.busyNanoseconds.load(ordering: .relaxed) } }

    // MARK: Queue lifecycle ("kernel" side)

    /// Opens a queue pair in INIT, bound to `binding`'s address space.
    func openQueue(binding: SVABinding) throws -> HardwareQueue {
        try lock.withLock { _ in
            if isolatedFlag { throw WarpDriveError.deviceIsolated(device: name) }
            guard let n = queues.firstIndex(where: { $0 == nil }) else {
                counters.busy.add(1, ordering: .relaxed)
                throw WarpDriveError.busy(device: name)
            }
            let q = try HardwareQueue(number: n, layout: layout, binding: binding, device: self)
            queues[n] = q
            return q
        }
    }

    func map(_ q: HardwareQueue, region: QueueRegion) throws -> SharedMemoryFile {
        try lock.withLock { _ in
            guard q.state != .released else { throw WarpDriveError.invalidState(operation: "mmap", state: q.state.rawValue) }
            guard !q.mapped.contains(region) else { throw WarpDriveError.alreadyMapped(region: "\(region)") }
            q.mapped.insert(region)
            return region == .mmio ? q.mmioFile : q.dusFile
        }
    }

    func setContext(_ q: HardwareQueue, direction: Direction) throws {
        try lock.withLock { _ in
            guard q.state == .initialized else {
                throw WarpDriveError.invalidState(operation: "SET_QP_CTX", state: q.state.rawValue)
            }
            q.direction = direction
        }
    }

    func start(_ q: HardwareQueue) throws {
        try lock.withLock { _ in
            guard q.state == .initialized else { throw WarpDriveError.invalidState(operation: "START_Q", state: q.state.rawValue) }
            guard q.mapped.count == 2 else {
                throw WarpDriveError.invalidState(operation: "START_Q before both regions are mapped", state: q.state.rawValue)
            }
            if isolatedFlag { throw WarpDriveError.deviceIsolated(device: name) }
            q.state = .started
            active.append(q)
        }
    }

    /// Stops and frees a queue (`PUT_Q` / close): in-flight work is dropped,
    /// engines still running one of its requests are waited for, the address
    /// space is unbound and the instance returns.
    func put(_ q: HardwareQueue) {
        lock.withLock { _ in
            q.state = .released
            q.dead = true
            active.removeAll { $0 === q }
        }
        waitIdle([q])
        lock.withLock { _ in
            if queues[q.number] === q { queues[q.number] = nil }
        }
        q.binding.unbind()
    }

    // MARK: Doorbell

    /// The doorbell write: `raw` is the v2 doorbell word the client stored at
    /// MMIO + 0x1000 of queue `q`'s page.
    func doorbell(_ q: HardwareQueue, _ raw: UInt64) {
        let db = Doorbell(raw: raw)
        var wake = false
        var notify = false
        lock.withLock { _ in
            guard !q.dead, q.state == .started, Int(db.queueNumber) == q.number, Int(db.index) < layout.depth else {
                q.counters.errors.add(1, ordering: .relaxed)
                return
            }
            if db.command == Doorbell.Command.sq.rawValue {
                q.sqTail = Int(db.index)
                wake = true
            } else if db.command == Doorbell.Command.cq.rawValue {
                let consumed = (Int(db.index) - q.cqHead + layout.depth) % layout.depth
                q.cqUnconsumed = max(0, q.cqUnconsumed - consumed)
                q.cqHead = Int(db.index)
                notify = postCompletions(q)
            }
        }
        if notify { q.raiseInterrupt() }
        if wake {
            _ = wd_fetch_add_u32(workSequence, 1)
            if sleepingEngines.load(ordering: .sequentiallyConsistent) > 0 { _ = wd_futex_wake(workSequence, 1) }
        }
    }

    // MARK: Engines' side

    struct Job {
        let queue: HardwareQueue
        let slot: Int
    }

    /// Claims the next SQE: clients in turn, then each client's queues in turn.
    func claim() -> (job: Job?, more: Bool) {
        if faults.stopAnswering { return (nil, false) }
        return lock.withLock { _ in
            let n = active.count
            guard n > 0, !shuttingDown else { return (nil, false) }
            // Clients (PASIDs) take turns, and each client's queues take
            // turns: a process cannot win a larger share by opening more
            // queues. The next client is the nearest PASID after the last
            // one served that has work; with one client this is plain round
            // robin over its queues.
            var pick = -1
            var bestTurn = UInt32.max
            var withWork = 0
            for k in 0..<n {
                let i = (roundRobin + k) % n
                let q = active[i]
                guard q.pendingWork > 0 else { continue }
                withWork += 1
                let turn = (q.binding.pasid &- lastServedPASID &- 1) & PASIDAllocator.maxPASID
                if turn < bestTurn { bestTurn = turn; pick = i }
            }
            guard pick >= 0 else { return (nil, false) }
            let q = active[pick]
            let slot = q.claimHead
            q.claimHead = (slot + 1) % layout.depth
            q.inProgress += 1
            roundRobin = (pick + 1) % n
            lastServedPASID = q.binding.pasid
            // More work for another engine: another queue has some, or this one still does.
            return (Job(queue: q, slot: slot), withWork > 1 || q.pendingWork > 0)
        }
    }

    /// Records an engine's result and posts completions in SQ order.
    func finish(_ job: Job, bytesIn: Int, bytesOut: Int, error: Bool, hardwareError: Bool) {
        let q = job.queue
        q.counters.record(bytesIn: bytesIn, bytesOut: bytesOut, error: error)
        counters.record(bytesIn: bytesIn, bytesOut: bytesOut, error: error)
        var isolateNow = false
        let notify: Bool = lock.withLock { _ in
            q.inProgress -= 1
            if hardwareError {
                errorCount += 1
                let threshold = configuration.isolateThreshold
                if threshold > 0 && errorCount >= threshold && !isolatedFlag { isolateNow = true }
            }
            guard !q.dead else { return false }
            q.finished[job.slot] = true
            return postCompletions(q)
        }
        if notify { q.raiseInterrupt() }
        if isolateNow { fence(isolate: true) }
    }

    /// Posts finished completions in order while the CQ has room. Lock held.
    private func postCompletions(_ q: HardwareQueue) -> Bool {
        var posted = 0
        while q.finished[q.postNext] && q.cqUnconsumed < layout.depth {
            q.finished[q.postNext] = false
            let cqe = CQE(q.dus.base + layout.cqeOffset(q.cqTail))
            cqe.publish(sqHead: UInt16(q.postNext), sqNumber: UInt16(q.number), phase: q.cqPhase)
            q.postNext = (q.postNext + 1) % layout.depth
            q.cqTail += 1
            if q.cqTail == layout.depth { q.cqTail = 0; q.cqPhase ^= 1 }
            q.cqUnconsumed += 1
            posted += 1
        }
        guard posted > 0 else { return false }
        let threshold = Int(max(1, q.status[RingLayout.StatusWord.irqThreshold]))
        let drained = q.pendingWork == 0 && q.inProgress == 0
        return q.cqUnconsumed >= threshold || drained
    }

    // MARK: Faults and reset

    /// Resets the device: every open queue's stop words are set and its
    /// in-flight work dropped (clients see `deviceReset`); the error count
    /// and isolation are cleared. Queues opened afterwards work normally.
    public func reset() { fence(isolate: false) }

    /// Whether the device is isolated (fenced after too many errors).
    public var isIsolated: Bool { lock.withLock { _ in isolatedFlag } }

    /// Waits until no engine works on a request of `qs` (they are no longer
    /// active, so none claims another).
    private func waitIdle(_ qs: [HardwareQueue]) {
        while lock.withLock({ _ in qs.contains { $0.inProgress > 0 } }) { usleep(50) }
    }

    private func fence(isolate: Bool) {
        let victims: [HardwareQueue] = lock.withLock { _ in
            let v = active
            for q in v { q.dead = true }
            active.removeAll()
            isolatedFlag = isolate
            errorCount = 0
            return v
        }
        // Like a hardware reset, which completes before the driver reports
        // it: engines finish the requests they had claimed (their output goes
        // nowhere) before clients see the stop words, so a client that reuses
        // a failed request's buffers never races a late engine write.
        waitIdle(victims)
        lock.withLock { _ in for q in victims { q.setStopWords() } }
        for q in victims { q.raiseInterrupt() }
    }

    /// Stops the engines. Open queues stop being served. Owners call it
    /// while they still hold the device: engine threads reach the device
    /// without owning it, so a last release racing an engine's access
    /// would free it under the engine (deinit calls it too, as a backstop).
    public func shutdown() {
        let wasRunning: Bool = lock.withLock { _ in
            let r = !shuttingDown
            shuttingDown = true
            return r
        }
        guard wasRunning else { return }
        _ = wd_fetch_add_u32(workSequence, 1)
        _ = wd_futex_wake(workSequence, Int32.max)
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
    }

    var isShuttingDown: Bool { lock.withLock { _ in shuttingDown } }

    deinit {
        shutdown()
        workSequence.deallocate()
    }
}
