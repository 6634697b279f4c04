#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// How a waiting caller learns of completions.
public enum NotificationMode: Sendable {
    /// Spin on the CQ: lowest latency, burns a core while waiting.
    case busyPoll
    /// Sleep until the device raises an interrupt (futex on the status page;
    /// the queue's eventfd is also signalled for event loops).
    case interrupt
}

/// A request as the client tracks it between submission and completion
/// (plain data: copied, never allocated per request).
struct PendingRequest {
    var tag: UInt64 = 0
    var waiter: UnsafeMutablePointer<SyncWaiter>? = nil
    var algorithm: CompressionAlgorithm = .deflate
    var direction: Direction = .compress
    var destination: UnsafeMutableRawPointer? = nil
    var destinationCapacity = 0
    var headerLength = 0
    var bodyLength = 0
    var expectedChecksum: UInt32 = 0
    var expectedISize: UInt32 = 0
    // Results, filled in when reaped.
    var status = CompletionStatus.ok
    var endOfStream = false
    var consumed = 0
    var produced = 0
    var checksum: UInt32 = 0
    var faultAddress: UInt64 = 0
    /// Set when the queue failed before the device answered.
    var failure: QueueFailure = .none
    // A device addressing DUS offsets: data-area ranges holding a copy of
    // the source and the output on its way to `bounceTarget` (-1: none).
    var bounceSource = -1
    var bounceSourceLength = 0
    var bounceDestination = -1
    var bounceDestinationLength = 0
    var bounceTarget: UnsafeMutableRawPointer? = nil
}

/// First-fit allocator over a queue's data area (offsets into the DUS
/// region), for requests whose buffers lie outside it.
struct DataAreaAllocator {
    /// Free ranges (offset, length), sorted by offset, never adjacent.
    private var free: [(Int, Int)]
    let start: Int, end: Int
    init(start: Int, end: Int) {
        self.start = start; self.end = end
        free = end > start ? [(start, end - start)] : []
    }
    static func rounded(_ n: Int) -> Int { max(64, (n + 63) / 64 * 64) }
    mutating func allocate(_ n: Int) -> Int? {
        let n = DataAreaAllocator.rounded(n)
        guard let i = free.firstIndex(where: { $0.1 >= n }) else { return nil }
        let (o, l) = free[i]
        if l == n { free.remove(at: i) } else { free[i] = (o + n, l - n) }
        return o
    }
    mutating func release(_ o: Int, _ n: Int) {
        let n = DataAreaAllocator.rounded(n)
        var i = free.firstIndex(where: { $0.0 > o }) ?? free.count
        free.insert((o, n), at: i)
        if i + 1 < free.count, free[i].0 + free[i].1 == free[i + 1].0 {
            free[i].1 += free[i + 1].1; free.remove(at: i + 1)
        }
        if i > 0, free[i - 1].0 + free[i - 1].1 == free[i].0 {
            free[i - 1].1 += free[i].1; free.remove(at: i); i -= 1
        }
    }
}

enum QueueFailure: UInt8 { case none, timedOut, reset, released, lost }

/// A synchronous caller's completion slot, on the caller's stack.
struct SyncWaiter {
    var done: UInt32 = 0
    var request = PendingRequest()
}

/// One accelerator queue pair, user side (a UADK "ctx"): opened from a
/// device, its two regions mapped, its direction set, started, used, released.
///
/// Follows uacce's state machine: regions map once each (`alreadyMapped`),
/// the context is set and the queue started only in INIT (`invalidState`),
/// nothing works after `release()`. Thread-safe: submissions and reaping are
/// serialised by a per-queue lock held for a few hundred nanoseconds.
public final class Queue: @unchecked Sendable {
    /// The device serving the queue (in-process or `warpdrived`).
    public let device: any AcceleratorDevice
    /// Queue number on the device (`qn` in the doorbell).
    public let number: Int
    /// Ring geometry.
    public let layout: RingLayout
    /// The address-space binding requests are translated with.
    public let pasid: UInt32

    /// The device side of the queue.
    let backend: any DeviceQueue
    private var mmio: SharedMapping?
    private var dus: SharedMapping?
    let lock = Mutex(())

    // Guarded by lock.
    private var sqTail = 0
    private var sqHead = 0
    private var cqHead = 0
    private var cqPhase: UInt32 = 1
    private var pending: UnsafeMutablePointer<PendingRequest>
    private var failure: QueueFailure = .none
    private var failureError: WarpDriveError?
    private var isStarted = false
    private var dataArea = DataAreaAllocator(start: 0, end: 0)
    /// In-flight count when a request last found no room in the data area
    /// (-1: it had room): a submitter waits for a completion, not a free slot.
    private var dataAreaFullAt = -1
    /// `wd_revocable_epoch()` as read before the last check that found the
    /// DUS mapping not replaced: while the epoch still reads so, no
    /// replacement has begun since, and a reap needs no table scan.
    private var unrevokedAtEpoch = UInt64.max
    private(set) var phaseFlips = 0
    private let busyCount = Atomic<UInt64>(0)

    /// Opens a queue in INIT on `device`, bound to the address space of
    /// process `pid` (default: this process). Takes one of the device's
    /// instances; `WarpDriveError.busy` when none is left.
    public convenience init(device: EmulatedZipDevice, pid: pid_t) throws {
        self.init(device: device, backend: try device.openDeviceQueue(pid: pid))
    }

    /// Opens a queue in INIT on `device`, bound to this process's address
    /// space. `WarpDriveError.busy` when no instance is left.
    public convenience init(device: any AcceleratorDevice) throws {
        self.init(device: device, backend: try device.openDeviceQueue())
    }

    init(device: any AcceleratorDevice, backend: any DeviceQueue) {
        self.backend = backend
        self.device = device
        number = backend.number
        pasid = backend.pasid
        layout = backend.layout
        pending = .allocate(capacity: layout.depth)
        pending.initialize(repeating: PendingRequest(), count: layout.depth)
    }

    /// Opens, maps, sets the direction and starts a queue: ready for requests.
    public static func started(device: any AcceleratorDevice, direction: Direction) throws -> Queue {
        let q = try Queue(device: device)
        do {
            try q.map(.mmio)
            try q.map(.dus)
            try q.setContext(direction)
            try q.start()
        } catch {
            q.release()
            throw error
        }
        return q
    }

    /// Current state (INIT, STARTED, ZOMBIE).
    public var state: QueueState { backend.state }

    /// Maps a region (uacce `mmap` at `region * PAGE_SIZE`). Each region maps once.
    public func map(_ region: QueueRegion) throws {
        let m = try backend.mapRegion(region)
        switch region {
        case .mmio: mmio = m
        case .dus:
            dus = m
            if backend.addressing == .dusOffset {
                lock.withLock { _ in dataArea = DataAreaAllocator(start: layout.dusSize, end: m.size) }
            }
        }
    }

    /// Sets the queue's direction (HiSilicon `SET_QP_CTX` qc_type). INIT only.
    public func setContext(_ direction: Direction) throws {
        try backend.setContext(direction)
    }

    /// Starts the queue (`START_Q`). INIT only, both regions mapped.
    public func start() throws {
        try backend.start()
        lock.withLock { _ in isStarted = true }
    }

    /// Stops and frees the queue (`PUT_Q` / close): its instance returns to
    /// the device and its address space is unbound. Pending requests fail.
    /// Idempotent.
    public func release() { failPending(.released) }

    /// The eventfd that becomes readable when the device raises a completion
    /// interrupt, for `poll`/`epoll` loops (enable with `setFDNotification`).
    public var notificationFD: Int32 { backend.notificationFD }

    /// Asks the device to also signal `notificationFD` on completion interrupts.
    public func setFDNotification(_ on: Bool) {
        guard let dus else { return }
        Words(dus.base + layout.statusOffset).storeRelease(RingLayout.StatusWord.irqFlags, on ? RingLayout.StatusWord.eventFDFlag : 0)
    }

    /// Interrupt moderation: interrupt once at least `n` completions wait
    /// (or the queue has drained). 1 = every completion.
    public func setInterruptThreshold(_ n: Int) {
        guard let dus else { return }
        Words(dus.base + layout.statusOffset).storeRelease(RingLayout.StatusWord.irqThreshold, UInt32(max(1, min(n, layout.depth))))
    }

    /// Whether a submission can find room: a free SQ slot and, for a device
    /// addressing DUS offsets, a completion since the data area was last full.
    public var hasRoom: Bool {
        lock.withLock { _ in
            let n = (sqTail - sqHead + layout.depth) % layout.depth
            return n < layout.depth - 1 && (dataAreaFullAt < 0 || n < dataAreaFullAt)
        }
    }

    /// Requests submitted and not yet reaped.
    public var inFlight: Int { lock.withLock { _ in (sqTail - sqHead + layout.depth) % layout.depth } }

    /// Ring positions, for tests and diagnostics.
    public struct RingPosition: Sendable, Equatable {
        /// SQ head and tail, CQ head, the expected phase, and how often it flipped.
        public var sqHead: Int, sqTail: Int, cqHead: Int, phase: UInt32, phaseFlips: Int
    }
    /// The client's view of the rings.
    public var ringPosition: RingPosition {
        lock.withLock { _ in RingPosition(sqHead: sqHead, sqTail: sqTail, cqHead: cqHead, phase: cqPhase, phaseFlips: phaseFlips) }
    }

    /// Counters the device keeps for this queue, plus ring-full rejections.
    public var counters: WorkCounters {
        var c = backend.counters
        c.busyRejections = busyCount.load(ordering: .relaxed)
        return c
    }

    deinit {
        release()
        pending.deinitialize(count: layout.depth)
        pending.deallocate()
    }

    // MARK: Submission

    private var stopped: Bool {
        guard let dus else { return false }
        return Words(dus.base + layout.rxStopOffset).loadAcquire(0) != 0
            || Words(dus.base + layout.txStopOffset).loadAcquire(0) != 0
    }

    private var statusWords: Words { Words(dus!.base + layout.statusOffset) }

    private func ring(_ cmd: Doorbell.Command, _ index: Int) {
        let raw = Doorbell(queueNumber: UInt16(number), command: cmd, index: UInt16(index)).raw
        wd_store_release_u64((mmio!.base + RingLayout.doorbellOffset).assumingMemoryBound(to: UInt64.self), raw)
        backend.doorbell(raw)
    }

    /// Stores `sqe` (tagged with its slot) into the SQ and rings the
    /// doorbell. Returns false when the ring is full.
    func trySubmit(_ request: PendingRequest, _ sqe: ZipSQE) throws -> Bool {
        try lock.withLock { _ in
            if let e = failureError { throw e }
            guard let dus, let _ = mmio, isStarted else {
                throw WarpDriveError.invalidState(operation: "submit", state: backend.state.rawValue)
            }
            // Stop words: a reset, or a device gone (revoked mappings read
            // as stopped; the device's own answer tells them apart).
            if stopped { throw backend.lostError ?? WarpDriveError.deviceReset(device: device.name, queue: number) }
            let next = (sqTail + 1) % layout.depth
            if next == sqHead {
                busyCount.add(1, ordering: .relaxed)
                backend.noteRingFull()
                return false
            }
            var entry = sqe
            var request = request
            if backend.addressing == .dusOffset {
                guard try placeInDataArea(&entry, &request, dus) else {
                    let n = (sqTail - sqHead + layout.depth) % layout.depth
                    dataAreaFullAt = n > 0 ? n : -1
                    backend.noteRingFull()
                    return false
                }
                dataAreaFullAt = -1
            }
            entry.tag = UInt32(truncatingIfNeeded: sqTail)
            entry.store(to: dus.base + layout.sqeOffset(sqTail))
            pending[sqTail] = request
            sqTail = next
            ring(.sq, sqTail)
            return true
        }
    }

    /// For a device without SVA: turns the SQE's process addresses into
    /// offsets into the DUS region. A buffer inside the data area (built
    /// there by the caller) is addressed in place; any other is copied into
    /// a range of the data area (the source now, the output when reaped).
    /// False when the data area has no room now. Called with the lock held.
    private func placeInDataArea(_ e: inout ZipSQE, _ r: inout PendingRequest, _ dus: SharedMapping) throws -> Bool {
        let base = UInt64(UInt(bitPattern: dus.base))
        let lo = base + UInt64(layout.dusSize), hi = base + UInt64(dus.size)
        func inside(_ a: UInt64, _ n: Int) -> Bool { a >= lo && a <= hi && UInt64(n) <= hi - a }
        let src = e.sourceAddress, n = Int(e.inputLength)
        let dst = e.destinationAddress, cap = Int(e.destinationCapacity)
        let srcInside = n == 0 || inside(src, n), dstInside = cap == 0 || inside(dst, cap)
        let need = (srcInside ? 0 : DataAreaAllocator.rounded(n)) + (dstInside ? 0 : DataAreaAllocator.rounded(cap))
        if need > dataArea.end - dataArea.start {
            throw WarpDriveError.requestTooLarge(bytes: need, limit: dataArea.end - dataArea.start)
        }
        var srcOff = n == 0 ? UInt64(layout.dusSize) : src &- base
        var dstOff = cap == 0 ? UInt64(layout.dusSize) : dst &- base
        if !srcInside {
            guard let o = dataArea.allocate(n) else { return false }
            (dus.base + o).copyMemory(from: UnsafeRawPointer(bitPattern: UInt(src))!, byteCount: n)
            r.bounceSource = o; r.bounceSourceLength = n
            srcOff = UInt64(o)
        }
        if !dstInside {
            guard let o = dataArea.allocate(cap) else {
                if r.bounceSource >= 0 { dataArea.release(r.bounceSource, n); r.bounceSource = -1 }
                return false
            }
            r.bounceDestination = o; r.bounceDestinationLength = cap
            r.bounceTarget = UnsafeMutableRawPointer(bitPattern: UInt(dst))
            dstOff = UInt64(o)
        }
        e.sourceAddress = srcOff
        e.destinationAddress = dstOff
        return true
    }

    /// Copies a bounced request's output to the caller's buffer and frees
    /// its data-area ranges. Called with the lock held.
    private func unbounce(_ r: inout PendingRequest, _ dus: SharedMapping) {
        if r.bounceDestination >= 0 {
            if let t = r.bounceTarget, r.status.isSuccess {
                t.copyMemory(from: dus.base + r.bounceDestination, byteCount: min(r.produced, r.bounceDestinationLength))
            }
            dataArea.release(r.bounceDestination, r.bounceDestinationLength)
            r.bounceDestination = -1
        }
        if r.bounceSource >= 0 {
            dataArea.release(r.bounceSource, r.bounceSourceLength)
            r.bounceSource = -1
        }
    }

    // MARK: Completion

    /// Reaps every posted completion. Synchronous waiters are marked done;
    /// asynchronous ones are handed to `deliver` outside the lock.
    /// Returns the number reaped.
    @discardableResult
    func reap(_ deliver: (inout PendingRequest) -> Void) -> Int {
        var total = 0
        var revoked = false
        withUnsafeTemporaryAllocation(of: PendingRequest.self, capacity: 32) { batch in
            var more = true
            while more {
                var n = 0
                lock.withLock { _ in
                    more = false
                    guard let dus, failure == .none else { return }
                    // A device mapping the kernel may revoke reads as zeros
                    // once replaced (`SharedMapping.makeRevocable`): a zeroed
                    // CQE even has a valid phase after a wrap. An entry is
                    // taken only if no replacement began while it was read.
                    let guarded = dus.isRevocable
                    var epoch = guarded ? wd_revocable_epoch() : 0
                    // Replaced already (a fault before this reap, e.g. on the
                    // status page): nothing here is the device's. The slot is
                    // marked before the epoch moves, so reading the epoch
                    // first and then asking covers every earlier replacement;
                    // the answer holds while the epoch stays (reaps run in
                    // every spin of a wait: no scan of the table each time).
                    if guarded, epoch != unrevokedAtEpoch {
                        if wd_revocable_is_revoked(dus.base) != 0 { revoked = true; return }
                        unrevokedAtEpoch = epoch
                    }
                    var reaped = 0
                    while true {
                        if n == batch.count { more = true; break }
                        let cqe = CQE(dus.base + layout.cqeOffset(cqHead))
                        guard cqe.phase() == cqPhase else { break }
                        let slot = Int(cqe.sqHead) % layout.depth
                        let sqe = ZipSQE(loading: dus.base + layout.sqeOffset(slot))
                        var req = pending[slot]
                        req.status = sqe.status
                        req.endOfStream = sqe.endOfStream
                        req.consumed = Int(sqe.consumed)
                        req.produced = Int(sqe.produced)
                        req.checksum = sqe.checksum
                        req.faultAddress = sqe.faultAddress
                        if req.bounceSource >= 0 || req.bounceDestination >= 0 { unbounce(&req, dus) }
                        if guarded, wd_revocable_epoch() != epoch {
                            // Read before asking: a replacement of this
                            // mapping that begins later moves it again.
                            let now = wd_revocable_epoch()
                            if wd_revocable_is_revoked(dus.base) != 0 { revoked = true; break }
                            epoch = now     // another mapping's
                            unrevokedAtEpoch = now
                        }
                        pending[slot].waiter = nil
                        sqHead = (slot + 1) % layout.depth
                        cqHead += 1
                        if cqHead == layout.depth { cqHead = 0; cqPhase ^= 1; phaseFlips += 1 }
                        reaped += 1
                        if let w = req.waiter {
                            w.pointee.request = req
                            wd_store_release_u32(&w.pointee.done, 1)
                        } else {
                            (batch.baseAddress! + n).initialize(to: req)
                            n += 1
                        }
                    }
                    if reaped > 0 { ring(.cq, cqHead) }
                    total += reaped
                }
                for i in 0..<n { deliver(&batch[i]) }
                batch.baseAddress!.deinitialize(count: n)
            }
        }
        // The device's memory is gone: what is still pending fails, the
        // entry found during the replacement included.
        if revoked { failPending(.lost, lostError: backend.lostError ?? .deviceRemoved(device: device.name), deliver: deliver) }
        return total
    }

    /// Waits (reaping as it goes) until `done()` holds, the deadline passes
    /// (`timedOut`; the queue is failed) or the device is reset (`deviceReset`).
    func wait(until done: () -> Bool, deadline: UInt64, timeoutMilliseconds: Int, mode: NotificationMode,
              deliver: (inout PendingRequest) -> Void) throws {
        var spins = 0
        var sleptIdle = false
        while true {
            let irq = statusWords.loadAcquire(RingLayout.StatusWord.irqCounter)
            reap(deliver)
            if done() { return }
            if let e = lock.withLock({ _ in failureError }) { throw e }
            if stopped {
                if let lost = backend.lostError {
                    failPending(.lost, lostError: lost, deliver: deliver)
                } else {
                    failPending(.reset, deliver: deliver)
                }
                throw lock.withLock { _ in failureError! }
            }
            let now = wd_now_ns()
            if now >= deadline {
                failPending(.timedOut, timeoutMilliseconds: timeoutMilliseconds, deliver: deliver)
                throw lock.withLock { _ in failureError! }
            }
            if mode == .busyPoll || spins < 64 {
                spins += 1
                if spins & 0xffff == 0, let lost = backend.lostError {
                    failPending(.lost, lostError: lost, deliver: deliver)
                    throw lost
                }
                wd_cpu_relax()
                continue
            }
            // About to sleep again after a sleep no interrupt ended: a device
            // that can no longer answer (a daemon gone) must turn into an
            // error, not a wait until the deadline. (Checked only then: for a
            // daemon the check is a system call, not worth one per request.)
            if sleptIdle, let lost = backend.lostError {
                failPending(.lost, lostError: lost, deliver: deliver)
                throw lock.withLock { _ in failureError! }
            }
            if backend.waitsWithPoll {
                // A kernel device wakes poll() on the descriptor; it is
                // readable once per batch of new completions.
                var p = pollfd(fd: backend.notificationFD, events: Int16(POLLIN), revents: 0)
                let ms = Int32(max(1, min(deadline - now, 50_000_000) / 1_000_000))
                _ = poll(&p, 1, ms)
                sleptIdle = statusWords.loadAcquire(RingLayout.StatusWord.irqCounter) == irq
                continue
            }
            let s = statusWords
            _ = wd_fetch_add_u32(s.pointer(RingLayout.StatusWord.irqWaiters), 1)
            _ = wd_futex_wait(s.pointer(RingLayout.StatusWord.irqCounter), irq, Int64(min(deadline - now, 50_000_000)))
            _ = wd_fetch_add_u32(s.pointer(RingLayout.StatusWord.irqWaiters), UInt32.max)
            sleptIdle = statusWords.loadAcquire(RingLayout.StatusWord.irqCounter) == irq
        }
    }

    /// Fails the queue: the device side is released first (so it writes no
    /// more into callers' buffers), then every pending request completes
    /// with the failure. Only the first failure counts; idempotent.
    func failPending(_ why: QueueFailure, timeoutMilliseconds: Int = 0, lostError: WarpDriveError? = nil,
                     deliver: (inout PendingRequest) -> Void = { _ in }) {
        let first: Bool = lock.withLock { _ in
            guard failure == .none else { return false }
            failure = why
            isStarted = false
            switch why {
            case .timedOut: failureError = .timedOut(device: device.name, queue: number, milliseconds: timeoutMilliseconds)
            case .reset: failureError = .deviceReset(device: device.name, queue: number)
            case .lost: failureError = lostError ?? .invalidState(operation: "submit", state: QueueState.released.rawValue)
            case .released, .none: failureError = .invalidState(operation: "submit", state: QueueState.released.rawValue)
            }
            return true
        }
        guard first else { return }
        backend.put()
        var orphans: [PendingRequest] = []
        lock.withLock { _ in
            while sqHead != sqTail {
                var req = pending[sqHead]
                req.failure = why
                pending[sqHead].waiter = nil
                if let w = req.waiter {
                    w.pointee.request = req
                    wd_store_release_u32(&w.pointee.done, 1)
                } else {
                    orphans.append(req)
                }
                sqHead = (sqHead + 1) % layout.depth
            }
        }
        for i in orphans.indices { deliver(&orphans[i]) }
    }

    /// The error the queue failed with, if it has failed.
    var failedWith: WarpDriveError? { lock.withLock { _ in failureError } }

    /// Whether the queue has failed (reset, time-out or released).
    public var hasFailed: Bool { lock.withLock { _ in failure != .none } }
}
