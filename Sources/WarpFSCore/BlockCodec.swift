#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive
import WarpFSFormat

/// Compresses and decompresses blocks through WarpDrive: each open file
/// gets asynchronous `BlockStream`s on the codec's device, and block buffers
/// come from a pool registered with the device's IOMMU. No zlib call here or
/// anywhere in the file system compresses: only the accelerator does.
///
/// Concurrency: one codec serves every file of a mount, from any thread.
/// Its mutable state is `idleStreams` (a leaf lock: taken under a file's
/// lock, nothing else is locked while it is held, and streams it lets go
/// of are closed after it is released), the atomics `liveBytes`,
/// `quarantined` and `stats`, and the pool's free list (the pool's own leaf lock).
public final class BlockCodec: @unchecked Sendable {
    /// The accelerator: a kernel uacce device, the in-process emulated
    /// device, or a `warpdrived` daemon.
    public let device: any AcceleratorDevice
    /// The in-process device for the algorithms `device` does not offer
    /// (a kernel device the mount chose by itself: `Accelerator.choose`);
    /// nil: every stream goes to `device`.
    public let fallback: (any AcceleratorDevice)?
    /// Compression level of new containers (`level=`); a container's own
    /// blocks use the level its header records (`CompressedFile.compressionLevel`).
    public let level: Int

    /// Block buffers in shared memory registered with the device's IOMMU:
    /// the engines read and write them directly instead of copying through
    /// `process_vm_readv`/`writev`. When the pool is exhausted, heap buffers
    /// are used (correct, slower).
    private let pool: SharedBufferPool?
    public let poolBufferSize: Int
    /// Bytes of block buffers alive (cache, blocks in flight), pool or heap.
    let liveBytes = Atomic<Int>(0)
    /// Above this, files shrink their caches and write-back depth, and idle
    /// files' clean blocks are dropped (see `WarpFileSystem`).
    public let budgetBytes: Int
    /// Backing space reserved for dirty blocks (nil: writes are not checked
    /// ahead, as in offline conversion).
    public let space: SpaceAccount?
    /// How long a request may wait for the device before it fails.
    public let timeoutMilliseconds: Int
    /// When a failed request is sent again (bounded by the time-out).
    let retry: RetryPolicy
    /// The mount's live counters (`warpfs iostat`): atomics, no lock.
    public let stats = IOStatistics()

    /// Whether block buffers exceed the memory budget.
    public var overBudget: Bool { liveBytes.load(ordering: .relaxed) > budgetBytes }

    public init(device: any AcceleratorDevice, fallback: (any AcceleratorDevice)? = nil, level: Int,
                poolBufferSize: Int = 64 << 10, poolBuffers: Int = 0, space: SpaceAccount? = nil,
                timeoutMilliseconds: Int = 10_000) {
        self.device = device
        self.fallback = fallback
        self.timeoutMilliseconds = timeoutMilliseconds
        retry = RetryPolicy(timeoutMilliseconds: timeoutMilliseconds)
        self.space = space
        self.level = level
        self.poolBufferSize = poolBufferSize
        budgetBytes = poolBuffers > 0 ? poolBuffers * poolBufferSize : Int.max
        // Registered buffers where the device offers them (the in-process
        // device); a daemon reaches this process's buffers through its IOMMU
        // emulation (copies). A kernel device copies every buffer through
        // its data area: the fallback's pool serves both then.
        pool = poolBuffers > 0 ? device.makeBufferPool(bufferSize: poolBufferSize, count: poolBuffers)
            ?? fallback?.makeBufferPool(bufferSize: poolBufferSize, count: poolBuffers) : nil
    }

    /// The device streams of `algorithm` go to: `device` when it offers
    /// the algorithm (or there is no fallback), else `fallback`.
    public func device(for algorithm: CompressionAlgorithm) -> any AcceleratorDevice {
        if let fallback, !device.offers(algorithm) { return fallback }
        return device
    }

    /// Whether `e`, from opening a queue, says the device takes no stream
    /// now (no queue free, gone, isolated) rather than what it was asked.
    static func takesNoStream(_ e: WarpDriveError) -> Bool {
        switch e {
        case .busy, .deviceRemoved, .deviceIsolated, .noDevice: return true
        default: return false
        }
    }

    /// Stops both devices' in-process parts (their owner's last step).
    public func shutdownDevices() {
        device.shutdown()
        fallback?.shutdown()
    }

    /// A buffer of `size` bytes, from the registered pool when it fits and one is free.
    func takeBuffer(_ size: Int) -> BlockBuffer {
        liveBytes.add(size, ordering: .relaxed)
        if size <= poolBufferSize, let pool, let i = pool.take() {
            return BlockBuffer(bytes: UnsafeMutableRawBufferPointer(rebasing: pool.buffer(i)[0..<size]), pool: pool, index: i, codec: self)
        }
        return BlockBuffer(bytes: .allocate(byteCount: max(size, 1), alignment: 4096), pool: nil, index: -1, codec: self)
    }

    /// Drained streams kept for reuse, by `BlockStream.poolKey` (every one
    /// under a key is a `BlockStream` of the job type the key names).
    private let idleStreams = Mutex<[StreamKey: [AnyObject]]>([:])
    /// Buffers set aside after time-outs (see `quarantine`).
    let quarantined = Atomic<Int>(0)

    /// Keeps a buffer a timed-out request named: the device may still write
    /// it, so it is never freed or reused (a block per time-out; time-outs
    /// are faults, counted in `quarantined`).
    func quarantine(_ buffer: AnyObject) {
        _ = Unmanaged.passRetained(buffer)
        quarantined.add(1, ordering: .relaxed)
    }

    /// Decompresses one buffer and waits for it (for the rare block whose
    /// encoding differs from its file's).
    func decompressOne(_ algorithm: CompressionAlgorithm, _ src: UnsafeRawBufferPointer,
                       into dst: UnsafeMutableRawBufferPointer) -> Result<Int, WarpDriveError> {
        struct One: BlockRequest {
            let engineInput: UnsafeRawBufferPointer
            let engineOutput: UnsafeMutableRawBufferPointer
        }
        do {
            let s = try stream(.decompress, algorithm: algorithm, capacity: 1, of: One.self)
            defer { recycle(s) }
            try s.submit(One(engineInput: src, engineOutput: dst))
            return s.reap(minimum: 1).first?.result ?? .failure(.noDevice("no completion"))
        } catch {
            return .failure(error as? WarpDriveError ?? .noDevice("\(error)"))
        }
    }
}

/// What makes streams interchangeable: one parked by a file may serve another.
struct StreamKey: Hashable, Sendable {
    let direction: Direction
    let algorithm: CompressionAlgorithm
    /// The compression level (0 for every decompressing stream: one serves any level).
    let level: Int
    let capacity: Int
    /// The stream's job type.
    let job: ObjectIdentifier
}

/// Where a stream's session leaves each result, by tag (written on the
/// reaping thread, inside the stream's own calls).
private struct CompletionSlots: @unchecked Sendable {
    let done: UnsafeMutablePointer<Result<Int, WarpDriveError>?>
    var handler: CompressionSession.CompletionHandler { { [self] tag, r in done[Int(tag)] = r } }
}

/// A request a `BlockStream` carries: the caller's record of one block's
/// trip through an engine, naming the buffers the engine reads and writes.
/// The stream holds it (and so its buffers) until the request is reaped.
protocol BlockRequest {
    /// What the engine reads.
    var engineInput: UnsafeRawBufferPointer { get }
    /// Where the engine writes.
    var engineOutput: UnsafeMutableRawBufferPointer { get }
}

/// An asynchronous stream of block requests in one direction, owned by one
/// file (its owner serialises calls): submit many, each with its job, and
/// reap them as they finish, each job with its result. The stream's table
/// is the only record of what is in flight (callers keep none beside it):
/// up to `capacity` requests.
///
/// Concurrency: owned by one file at a time (parked in the codec's pool,
/// by nobody), whose lock guards every field here. The session's
/// completion handler runs on the owner's thread, inside `submit` and
/// `reap`, and writes only `results`.
final class BlockStream<Job: BlockRequest>: @unchecked Sendable {
    let session: CompressionSession
    let capacity: Int
    /// Which idle streams this one may stand in for (`BlockCodec.recycle`).
    let poolKey: StreamKey
    /// The mount's counters: requests in flight, bytes through the engines, failures.
    private let stats: IOStatistics
    private let results: CompletionSlots
    /// By tag: the job of each request in flight, and its submission number
    /// (results are returned in submission order, so blocks written in order
    /// are stored, and placed, in order).
    private var jobs: [(job: Job, sequence: UInt64)?]
    private var freeTags: [Int]
    private var nextSequence: UInt64 = 0
    private(set) var inFlight = 0

    init(device: any AcceleratorDevice, algorithm: CompressionAlgorithm, direction: Direction, level: Int, capacity: Int,
         timeoutMilliseconds: Int, poolKey: StreamKey, stats: IOStatistics) throws {
        self.capacity = capacity
        self.poolKey = poolKey
        self.stats = stats
        let done = UnsafeMutablePointer<Result<Int, WarpDriveError>?>.allocate(capacity: capacity)
        done.initialize(repeating: nil, count: capacity)
        let results = CompletionSlots(done: done)
        self.results = results
        freeTags = Array((0..<capacity).reversed())
        jobs = Array(repeating: nil, count: capacity)
        var c = SessionConfiguration(algorithm: algorithm, direction: direction, level: level)
        c.timeoutMilliseconds = timeoutMilliseconds
        // Readers wait for one particular block: wake on each completion.
        // Write-back waits for room: one wake-up per several completions
        // (a drained queue interrupts anyway).
        c.interruptThreshold = direction == .decompress ? 1 : max(1, capacity / 4)
        session = try CompressionSession(device: device, configuration: c, completionHandler: results.handler)
    }

    deinit {
        session.close()
        results.done.deinitialize(count: capacity)
        results.done.deallocate()
    }

    var isFull: Bool { freeTags.isEmpty }

    /// Submits `job`'s request. Requires `!isFull`.
    func submit(_ job: Job) throws {
        let tag = freeTags.removeLast()
        results.done[tag] = nil
        do {
            try session.submit(job.engineInput, into: job.engineOutput, tag: UInt64(tag))
        } catch {
            freeTags.append(tag)
            throw error
        }
        inFlight += 1
        if poolKey.direction == .compress {
            stats.compressInFlight.add(1, ordering: .relaxed)
        } else {
            stats.decompressInFlight.add(1, ordering: .relaxed)
        }
        jobs[tag] = (job, nextSequence)
        nextSequence += 1
    }

    /// Reaps finished requests (waiting for at least `minimum`) and returns
    /// their jobs with their results, in submission order. Every one is out
    /// of the table (its tag free) before any is returned, so a job sent
    /// again while the caller goes through the batch never meets a result
    /// of this batch.
    func reap(minimum: Int) -> [(job: Job, result: Result<Int, WarpDriveError>)] {
        var out: [(job: Job, result: Result<Int, WarpDriveError>, sequence: UInt64)] = []
        var waitError: WarpDriveError?
        do { try session.poll(minimum: min(minimum, inFlight)) } catch {
            waitError = error as? WarpDriveError ?? .noDevice("\(error)")
        }
        for tag in 0..<capacity {
            guard let r = results.done[tag], let entry = jobs[tag] else { continue }
            count(entry.job, r)
            out.append((entry.job, r, entry.sequence))
            results.done[tag] = nil
            release(tag)
        }
        // A queue that failed without delivering (should not happen): fail what is left.
        if let waitError, out.count < minimum {
            for tag in 0..<capacity {
                guard let entry = jobs[tag] else { continue }
                count(entry.job, .failure(waitError))
                out.append((entry.job, .failure(waitError), entry.sequence))
                release(tag)
            }
        }
        if out.count > 1 { out.sort { $0.sequence < $1.sequence } }
        return out.map { ($0.job, $0.result) }
    }

    private func release(_ tag: Int) {
        jobs[tag] = nil
        freeTags.append(tag)
        inFlight -= 1
        if poolKey.direction == .compress {
            stats.compressInFlight.subtract(1, ordering: .relaxed)
        } else {
            stats.decompressInFlight.subtract(1, ordering: .relaxed)
        }
    }

    /// Adds a reaped request to the mount's counters: the bytes of one the
    /// engine completed, or a failure (an output that does not fit is the
    /// answer for an incompressible block, not a failure).
    private func count(_ job: Job, _ result: Result<Int, WarpDriveError>) {
        switch result {
        case .success(let n):
            let input = UInt64(job.engineInput.count)
            if poolKey.direction == .compress {
                stats.compressIn.add(input, ordering: .relaxed)
                stats.compressOut.add(UInt64(n), ordering: .relaxed)
            } else {
                stats.decompressIn.add(input, ordering: .relaxed)
                stats.decompressOut.add(UInt64(n), ordering: .relaxed)
            }
        case .failure(.destinationTooSmall): break
        case .failure: stats.acceleratorFailures.add(1, ordering: .relaxed)
        }
    }
}

extension BlockCodec {
    /// A stream for one file, on the device for its algorithm
    /// (`device(for:)`): a returned idle one when there is one (opening a
    /// queue costs a memfd, two mappings and an eventfd), else a new one.
    ///
    /// When the device has no queue left, idle streams of every kind are
    /// closed (their queues freed) and the call waits, up to the engine
    /// time-out, for a queue to come back; but when it is a kernel device
    /// with a fallback, the fallback takes the stream at once (also when
    /// the kernel device has gone).
    ///
    /// `level` is a compressing stream's level (nil: the codec's); it must
    /// be one `algorithm` has. Decompressing streams ignore it.
    func stream<Job>(_ direction: Direction, algorithm: CompressionAlgorithm, level: Int? = nil, capacity: Int,
                     of: Job.Type = Job.self) throws -> BlockStream<Job> {
        let level = direction == .compress ? level ?? self.level : 0
        let target = device(for: algorithm)
        // A kernel device named alone may lack a file's algorithm: no verdict
        // on the data (fsck), EIO for the reader, and the log says why.
        guard target.offers(algorithm) else {
            throw WarpDriveError.noDevice("\(target.name) does not offer \(algorithm), the encoding of this file "
                + "(use -o device=emulated, or no device=)")
        }
        let key = StreamKey(direction: direction, algorithm: algorithm, level: level, capacity: capacity, job: ObjectIdentifier(Job.self))
        let deadline = wd_now_ns() + UInt64(timeoutMilliseconds) * 1_000_000
        func open(on d: any AcceleratorDevice) throws -> BlockStream<Job> {
            try BlockStream(device: d, algorithm: algorithm, direction: direction, level: level, capacity: capacity,
                            timeoutMilliseconds: timeoutMilliseconds, poolKey: key, stats: stats)
        }
        while true {
            // The key names the job type: what is parked under it is a BlockStream<Job>.
            if let s = idleStreams.withLock({ $0[key]?.popLast() }) { return s as! BlockStream<Job> }
            do {
                return try open(on: target)
            } catch let e as WarpDriveError where fallback != nil && target !== fallback && BlockCodec.takesNoStream(e) {
                // A kernel device the mount chose by itself, with no queue
                // free (every process on the host shares its few) or gone.
                // Its parked streams go first: they hold its queues, or are
                // dead with it.
                let parked = takeParked(on: target)
                if case .busy = e, !parked.isEmpty { continue }
                // Then the in-process device serves this stream (its output
                // is the same format; a parked stream of either kind serves
                // the key later).
                do {
                    return try open(on: fallback!)
                } catch WarpDriveError.busy(let d) {
                    if !takeParked(on: nil).isEmpty { continue }
                    guard wd_now_ns() < deadline else { throw WarpDriveError.busy(device: d) }
                    usleep(2000)
                }
            } catch WarpDriveError.busy(let d) {
                if !takeParked(on: nil).isEmpty { continue }     // dropping them released their queues
                guard wd_now_ns() < deadline else { throw WarpDriveError.busy(device: d) }
                usleep(2000)
            }
        }
    }

    /// Takes the parked streams on `device` (every one when nil) out of
    /// the pool; they close, giving their queues back, when the caller
    /// lets go of them (after the pool's lock).
    private func takeParked(on device: (any AcceleratorDevice)?) -> [AnyObject] {
        idleStreams.withLock { idle -> [AnyObject] in
            guard let device else {
                defer { idle = [:] }
                return idle.values.flatMap { $0 }
            }
            var taken: [AnyObject] = []
            for (key, streams) in idle {
                let (on, off) = streams.reduce(into: ([AnyObject](), [AnyObject]())) { parts, s in
                    if (s as? any ParkedStream)?.session.device === device { parts.0.append(s) } else { parts.1.append(s) }
                }
                guard !on.isEmpty else { continue }
                taken += on
                idle[key] = off.isEmpty ? nil : off
            }
            return taken
        }
    }

    /// Takes back a drained stream for reuse by another file (16 kept per kind).
    func recycle<Job>(_ s: BlockStream<Job>) {
        guard s.inFlight == 0 else { return }
        // A failed queue of a kernel device with a fallback is not kept: the
        // next file opens a fresh stream, on the kernel device once it is
        // back, in-process while it is gone.
        // Nor are the others parked on it: a reset or a removal fails
        // every queue of the device, and they would fail the next files.
        if fallback != nil, s.session.device !== fallback, s.session.currentQueues.contains(where: \.hasFailed) {
            _ = takeParked(on: s.session.device)
            return
        }
        idleStreams.withLock { idle in
            if idle[s.poolKey, default: []].count < 16 { idle[s.poolKey, default: []].append(s) }
        }
    }
}

/// What the stream pool needs of a parked stream whatever its job type:
/// the session, whose device says where its queues are.
protocol ParkedStream: AnyObject {
    var session: CompressionSession { get }
}

extension BlockStream: ParkedStream {}

/// A block-sized buffer: a registered pool slot or a heap allocation,
/// returned when released.
final class BlockBuffer {
    let bytes: UnsafeMutableRawBufferPointer
    private let pool: SharedBufferPool?
    private let index: Int
    private let codec: BlockCodec          // strong: a buffer kept past unmount (unstorable data) outlives the file system

    init(bytes: UnsafeMutableRawBufferPointer, pool: SharedBufferPool?, index: Int, codec: BlockCodec) {
        self.bytes = bytes
        self.pool = pool
        self.index = index
        self.codec = codec
    }

    deinit {
        codec.liveBytes.subtract(bytes.count, ordering: .relaxed)
        if let pool { pool.give(index) } else { bytes.deallocate() }
    }
}
