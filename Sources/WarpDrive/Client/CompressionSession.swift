#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// What a session does: algorithm, level, window and direction (a UADK
/// session), plus how callers wait.
public struct SessionConfiguration: Sendable {
    /// Stream format of the data the session reads or writes.
    public var algorithm: CompressionAlgorithm
    /// Whether the session compresses or decompresses.
    public var direction: Direction
    /// Compression level, in `algorithm.levels` (ignored when decompressing):
    /// 0...9 for deflate, zlib and gzip, 1...19 for zstd, 1...12 for lz4.
    public var level: Int
    /// Window size as a power of two, 12...15 (4 KiB...32 KiB), for deflate,
    /// zlib and gzip (zstd and lz4 choose their own within the request).
    public var windowBits: Int = 15
    /// Queues the session spreads requests over (round robin). More queues
    /// add isolation and lock independence, not device throughput.
    public var queues: Int = 1
    /// How waiters learn of completions.
    public var notification: NotificationMode = .interrupt
    /// Interrupt moderation: completions per interrupt (1 = each one).
    public var interruptThreshold: Int = 1
    /// How long a request may take before it fails with `timedOut`.
    public var timeoutMilliseconds: Int = 10_000

    /// A configuration with the other settings at their defaults (level:
    /// the algorithm's `defaultLevel`, 6 for the deflate family).
    public init(algorithm: CompressionAlgorithm, direction: Direction, level: Int? = nil) {
        self.algorithm = algorithm
        self.direction = direction
        self.level = level ?? algorithm.defaultLevel
    }
}

/// A compression or decompression session over one or more queues of a
/// device, in the spirit of UADK's `wd_comp` sessions.
///
/// - `compress`/`decompress`-style synchronous calls: `process(_:into:)`.
/// - Asynchronous: `submit(_:into:tag:)` (waits for ring space),
///   `trySubmit` (fails with `queueFull` instead), and `poll` which reaps
///   completions and calls the completion handler with each tag. Many
///   requests may be in flight per queue.
///
/// Thread-safe. A queue that fails (device reset, time-out) is replaced by a
/// fresh one on the next request; the failed request reports the error.
/// Buffers in a `SharedBufferPool` registered for this process are reached
/// by the device without copying; other buffers are copied through the
/// IOMMU emulation.
public final class CompressionSession: @unchecked Sendable {
    /// Called with the tag and outcome of each asynchronous request, on the
    /// thread that reaps it (inside `poll`, `submit` or a synchronous call).
    public typealias CompletionHandler = @Sendable (_ tag: UInt64, _ result: Result<Int, WarpDriveError>) -> Void

    /// The device the session's queues are on (in-process or `warpdrived`).
    public let device: any AcceleratorDevice
    /// The session's settings.
    public let configuration: SessionConfiguration
    private let handler: CompletionHandler?
    /// The SQE every request starts from: type, window, level, flush.
    private let template: ZipSQE
    private let queues: Mutex<[Queue]>
    private let cursor = Atomic<Int>(0)
    private let outstandingAsync = Atomic<Int>(0)

    /// Opens `configuration.queues` queues on `device`.
    public init(device: any AcceleratorDevice, configuration: SessionConfiguration,
                completionHandler: CompletionHandler? = nil) throws {
        guard configuration.direction == .decompress || configuration.algorithm.levels.contains(configuration.level),
              let window = ZipSQE.Window(windowBits: configuration.windowBits) else {
            throw WarpDriveError.badRequest(status: CompletionStatus.badRequest.rawValue)
        }
        // A decompressing request's level means nothing; it is sent within
        // the type's range so that any level a caller passes is accepted.
        let levels = configuration.algorithm.levels
        let level = configuration.direction == .compress ? configuration.level
            : min(max(configuration.level, levels.lowerBound), levels.upperBound)
        template = ZipSQE(type: configuration.algorithm.requestType, window: window, level: level)
        self.device = device
        self.configuration = configuration
        handler = completionHandler
        var qs: [Queue] = []
        for _ in 0..<max(1, configuration.queues) {
            qs.append(try CompressionSession.openQueue(device, configuration))
        }
        queues = Mutex(qs)
    }

    private static func openQueue(_ device: any AcceleratorDevice, _ c: SessionConfiguration) throws -> Queue {
        let q = try Queue.started(device: device, direction: c.direction)
        q.setInterruptThreshold(c.interruptThreshold)
        return q
    }

    /// Releases the session's queues.
    public func close() {
        for q in queues.withLock({ $0 }) { q.release() }
    }

    deinit { close() }

    /// The session's current queues.
    public var currentQueues: [Queue] { queues.withLock { $0 } }

    /// Requests submitted asynchronously and not yet completed.
    public var outstanding: Int { outstandingAsync.load(ordering: .relaxed) }

    /// Round-robin scheduler: the next queue, replacing a failed one.
    private func pickQueue() throws -> Queue {
        let i = cursor.add(1, ordering: .relaxed).oldValue & Int.max
        let (q, failed): (Queue, Bool) = queues.withLock { qs in
            let q = qs[i % qs.count]
            return (q, q.hasFailed)
        }
        guard failed else { return q }
        return try queues.withLock { qs in
            let idx = i % qs.count
            if qs[idx] !== q { return qs[idx] }
            q.release()
            let fresh = try CompressionSession.openQueue(device, configuration)
            qs[idx] = fresh
            return fresh
        }
    }

    // MARK: Building requests

    /// The request to track and the SQE to submit for `src` into `dst`.
    private func prepare(_ src: UnsafeRawBufferPointer, _ dst: UnsafeMutableRawBufferPointer) throws -> (PendingRequest, ZipSQE) {
        let a = configuration.algorithm
        var req = PendingRequest()
        req.algorithm = a
        req.direction = configuration.direction
        req.destination = dst.baseAddress
        req.destinationCapacity = dst.count
        if configuration.direction == .compress {
            guard src.count <= ZipSQE.maxRequestBytes else {
                throw WarpDriveError.requestTooLarge(bytes: src.count, limit: ZipSQE.maxRequestBytes)
            }
            let h = StreamFraming.headerLength(a), t = StreamFraming.trailerLength(a)
            guard dst.count >= h + t, let d = dst.baseAddress else { throw WarpDriveError.destinationTooSmall(capacity: dst.count) }
            StreamFraming.writeHeader(a, level: configuration.level, windowBits: configuration.windowBits, to: d)
            req.headerLength = h
            req.bodyLength = src.count
            return (req, sqe(address(src.baseAddress), src.count, address(d + h), min(dst.count - h - t, ZipSQE.maxRequestBytes)))
        } else {
            let p = try StreamFraming.parse(a, src)
            guard p.bodyLength <= ZipSQE.maxRequestBytes else {
                throw WarpDriveError.requestTooLarge(bytes: p.bodyLength, limit: ZipSQE.maxRequestBytes)
            }
            req.bodyLength = p.bodyLength
            req.expectedChecksum = p.checksum
            req.expectedISize = p.isize
            let s = src.baseAddress.map { address($0 + p.bodyOffset) } ?? 0
            return (req, sqe(s, p.bodyLength, address(dst.baseAddress), min(dst.count, ZipSQE.maxRequestBytes)))
        }
    }

    /// The session's SQE for one request's buffers.
    private func sqe(_ source: UInt64, _ sourceLength: Int, _ destination: UInt64, _ capacity: Int) -> ZipSQE {
        var e = template
        e.sourceAddress = source
        e.inputLength = UInt32(sourceLength)
        e.destinationAddress = destination
        e.destinationCapacity = UInt32(capacity)
        return e
    }

    private func address(_ p: UnsafeRawPointer?) -> UInt64 { UInt64(UInt(bitPattern: p)) }
    private func address(_ p: UnsafeMutableRawPointer?) -> UInt64 { UInt64(UInt(bitPattern: p)) }

    /// Turns a reaped request into its outcome, writing the trailer of a
    /// compressed stream and checking the checksum of a decompressed one.
    private func finish(_ r: inout PendingRequest, queue: Queue) -> Result<Int, WarpDriveError> {
        switch r.failure {
        case .none: break
        case .timedOut: return .failure(.timedOut(device: device.name, queue: queue.number, milliseconds: configuration.timeoutMilliseconds))
        case .reset: return .failure(.deviceReset(device: device.name, queue: queue.number))
        case .released: return .failure(.invalidState(operation: "request", state: QueueState.released.rawValue))
        case .lost: return .failure(queue.failedWith ?? .invalidState(operation: "request", state: QueueState.released.rawValue))
        }
        switch r.status {
        case _ where r.status.isSuccess:
            break
        case .destinationTooSmall:
            return .failure(.destinationTooSmall(capacity: r.destinationCapacity))
        case .pageFault:
            return .failure(.pageFault(pasid: queue.pasid, address: r.faultAddress))
        case .corruptInput:
            return .failure(.corruptData(r.algorithm == .zstd ? "the zstd frame is invalid"
                                         : r.algorithm == .lz4 ? "the lz4 block is invalid" : "the deflate stream is invalid"))
        case .engineError:
            return .failure(.engineError(device: device.name, queue: queue.number, status: r.status.rawValue))
        default:
            return .failure(.badRequest(status: r.status.rawValue))
        }
        let a = r.algorithm
        if r.direction == .compress {
            let total = r.headerLength + r.produced + StreamFraming.trailerLength(a)
            StreamFraming.writeTrailer(a, checksum: r.checksum, isize: UInt32(truncatingIfNeeded: r.bodyLength),
                                       to: r.destination! + r.headerLength + r.produced)
            return .success(total)
        }
        guard r.endOfStream else { return .failure(.corruptData("the stream ends before its last block")) }
        guard r.consumed == r.bodyLength else {
            return .failure(.corruptData("\(r.bodyLength - r.consumed) unexpected bytes after the end of the deflate stream"))
        }
        if (a == .zlib || a == .gzip) && r.checksum != r.expectedChecksum {
            return .failure(.checksumMismatch(expected: r.expectedChecksum, actual: r.checksum))
        }
        if a == .gzip && UInt32(truncatingIfNeeded: r.produced) != r.expectedISize {
            return .failure(.corruptData("gzip size field says \(r.expectedISize), data has \(r.produced) bytes"))
        }
        return .success(r.produced)
    }

    private func deliver(_ queue: Queue) -> (inout PendingRequest) -> Void {
        { [self] r in
            let result = finish(&r, queue: queue)
            outstandingAsync.subtract(1, ordering: .relaxed)
            handler?(r.tag, result)
        }
    }

    /// One submission attempt; a queue found reset is failed (so the next
    /// request gets a fresh queue) and the error rethrown.
    private func submitOnce(_ q: Queue, _ req: PendingRequest, _ sqe: ZipSQE) throws -> Bool {
        do {
            return try q.trySubmit(req, sqe)
        } catch let e as WarpDriveError {
            if case .deviceReset = e { q.failPending(.reset, deliver: deliver(q)) }
            if case .deviceRemoved = e { q.failPending(.lost, lostError: e, deliver: deliver(q)) }
            throw e
        }
    }

    // MARK: Synchronous

    /// Compresses or decompresses `src` into `dst` (by the session's
    /// direction) and returns the bytes written to `dst`.
    public func process(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) throws -> Int {
        let (base, sqe) = try prepare(src, dst)
        let q = try pickQueue()
        let timeout = configuration.timeoutMilliseconds
        let deadline = wd_now_ns() + UInt64(timeout) * 1_000_000
        let deliverAsync = deliver(q)
        return try withUnsafeTemporaryAllocation(of: SyncWaiter.self, capacity: 1) { buf in
            let w = buf.baseAddress!
            w.initialize(to: SyncWaiter())
            defer { w.deinitialize(count: 1) }
            var req = base
            req.waiter = w
            while try !submitOnce(q, req, sqe) {
                try q.wait(until: { q.hasRoom }, deadline: deadline, timeoutMilliseconds: timeout,
                           mode: configuration.notification, deliver: deliverAsync)
            }
            do {
                try q.wait(until: { wd_load_acquire_u32(&w.pointee.done) != 0 }, deadline: deadline,
                           timeoutMilliseconds: timeout, mode: configuration.notification, deliver: deliverAsync)
            } catch {
                // The queue failed; our own request has been completed with the failure.
                if wd_load_acquire_u32(&w.pointee.done) == 0 { throw error }
            }
            return try finish(&w.pointee.request, queue: q).get()
        }
    }

    /// Compresses `data` and returns the stream (convenience for small inputs).
    public func compress(_ data: [UInt8]) throws -> [UInt8] {
        precondition(configuration.direction == .compress, "session decompresses")
        let bound = configuration.algorithm.compressBound(data.count) + 64
        var out = [UInt8](repeating: 0, count: bound)
        let n = try data.withUnsafeBytes { s in try out.withUnsafeMutableBytes { d in try process(s, into: d) } }
        out.removeSubrange(n...)
        return out
    }

    /// Decompresses `data`, whose uncompressed size is at most `capacity`.
    public func decompress(_ data: [UInt8], capacity: Int) throws -> [UInt8] {
        precondition(configuration.direction == .decompress, "session compresses")
        var out = [UInt8](repeating: 0, count: max(capacity, 1))
        let n = try data.withUnsafeBytes { s in try out.withUnsafeMutableBytes { d in try process(s, into: d) } }
        out.removeSubrange(n...)
        return out
    }

    // MARK: Asynchronous

    /// Submits a request; `tag` comes back to the completion handler. Waits
    /// (reaping) while the chosen queue's ring is full.
    public func submit(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, tag: UInt64) throws {
        try submit(src, dst, tag, wait: true)
    }

    /// Submits a request, or throws `queueFull` when the ring has no room.
    public func trySubmit(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, tag: UInt64) throws {
        try submit(src, dst, tag, wait: false)
    }

    private func submit(_ src: UnsafeRawBufferPointer, _ dst: UnsafeMutableRawBufferPointer, _ tag: UInt64, wait: Bool) throws {
        var (req, sqe) = try prepare(src, dst)
        req.tag = tag
        let q = try pickQueue()
        let timeout = configuration.timeoutMilliseconds
        let deadline = wd_now_ns() + UInt64(timeout) * 1_000_000
        outstandingAsync.add(1, ordering: .relaxed)
        do {
            while try !submitOnce(q, req, sqe) {
                guard wait else { throw WarpDriveError.queueFull(queue: q.number) }
                try q.wait(until: { q.hasRoom }, deadline: deadline, timeoutMilliseconds: timeout,
                           mode: configuration.notification, deliver: deliver(q))
            }
        } catch {
            outstandingAsync.subtract(1, ordering: .relaxed)
            throw error
        }
    }

    /// Reaps completions and runs the handler for each. Waits until at
    /// least `minimum` have completed (or none is outstanding), or the
    /// time-out passes. Returns the number delivered by this call.
    @discardableResult
    public func poll(minimum: Int = 0) throws -> Int {
        let count = Atomic<Int>(0)
        let qs = currentQueues
        let timeout = configuration.timeoutMilliseconds
        let deadline = wd_now_ns() + UInt64(timeout) * 1_000_000
        var firstError: Error?
        for q in qs {
            let d = deliver(q)
            q.reap { r in count.add(1, ordering: .relaxed); d(&r) }
        }
        while count.load(ordering: .relaxed) < minimum && outstanding > 0 {
            // Wait on the queue with the most in flight.
            guard let q = qs.filter({ !$0.hasFailed }).max(by: { $0.inFlight < $1.inFlight }), q.inFlight > 0 else {
                break
            }
            let d = deliver(q)
            let before = count.load(ordering: .relaxed)
            do {
                try q.wait(until: { count.load(ordering: .relaxed) > before }, deadline: deadline,
                           timeoutMilliseconds: timeout, mode: configuration.notification,
                           deliver: { r in count.add(1, ordering: .relaxed); d(&r) })
            } catch {
                firstError = firstError ?? error
                break
            }
        }
        if let firstError, count.load(ordering: .relaxed) == 0 { throw firstError }
        return count.load(ordering: .relaxed)
    }
}
