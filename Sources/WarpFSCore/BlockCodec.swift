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
public final class BlockCodec: @unchecked Sendable {
    /// The accelerator: the in-process emulated device, or a `warpdrived` daemon.
    public let device: any AcceleratorDevice
    public let algorithm: CompressionAlgorithm
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

    /// Whether block buffers exceed the memory budget.
    public var overBudget: Bool { liveBytes.load(ordering: .relaxed) > budgetBytes }

    public init(device: any AcceleratorDevice, algorithm: CompressionAlgorithm, level: Int,
                poolBufferSize: Int = 64 << 10, poolBuffers: Int = 0, space: SpaceAccount? = nil,
                timeoutMilliseconds: Int = 10_000) {
        self.device = device
        self.timeoutMilliseconds = timeoutMilliseconds
        self.space = space
        self.algorithm = algorithm
        self.level = level
        self.poolBufferSize = poolBufferSize
        budgetBytes = poolBuffers > 0 ? poolBuffers * poolBufferSize : Int.max
        // Registered buffers where the device offers them (the in-process
        // device); a daemon reaches this process's buffers through its IOMMU
        // emulation (copies).
        pool = poolBuffers > 0 ? device.makeBufferPool(bufferSize: poolBufferSize, count: poolBuffers) : nil
    }

    /// A buffer of `size` bytes, from the registered pool when it fits and one is free.
    func takeBuffer(_ size: Int) -> BlockBuffer {
        liveBytes.add(size, ordering: .relaxed)
        if size <= poolBufferSize, let pool, let i = pool.take() {
            return BlockBuffer(bytes: UnsafeMutableRawBufferPointer(rebasing: pool.buffer(i)[0..<size]), pool: pool, index: i, codec: self)
        }
        return BlockBuffer(bytes: .allocate(byteCount: max(size, 1), alignment: 4096), pool: nil, index: -1, codec: self)
    }

    private let idleStreams = Mutex<[String: [BlockStream]]>([:])
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
        do {
            let s = try stream(.decompress, algorithm: algorithm, capacity: 1)
            defer { recycle(s) }
            _ = try s.submit(src, dst)
            return s.reap(minimum: 1).first?.result ?? .failure(.noDevice("no completion"))
        } catch {
            return .failure(error as? WarpDriveError ?? .noDevice("\(error)"))
        }
    }
}

/// An asynchronous stream of block requests in one direction, owned by one
/// file (its owner serialises calls): submit many, reap them as they finish.
/// Up to `capacity` requests are in flight.
final class BlockStream: @unchecked Sendable {
    private struct Table: @unchecked Sendable {
        let done: UnsafeMutablePointer<Result<Int, WarpDriveError>?>
    }
    let session: CompressionSession
    let capacity: Int
    private let table: Table
    private var freeTags: [Int]
    /// Tags submitted and not yet reaped (so reaping does not search `freeTags`).
    private var pending: [Bool]
    /// Submission sequence number per tag: results are returned in submission
    /// order, so blocks written in order are stored (and placed) in order.
    private var sequence: [UInt64]
    private var nextSequence: UInt64 = 0
    private(set) var inFlight = 0

    init(device: any AcceleratorDevice, algorithm: CompressionAlgorithm, direction: Direction, level: Int, capacity: Int,
         timeoutMilliseconds: Int) throws {
        self.capacity = capacity
        let done = UnsafeMutablePointer<Result<Int, WarpDriveError>?>.allocate(capacity: capacity)
        done.initialize(repeating: nil, count: capacity)
        let table = Table(done: done)
        self.table = table
        freeTags = Array((0..<capacity).reversed())
        pending = Array(repeating: false, count: capacity)
        sequence = Array(repeating: 0, count: capacity)
        var c = SessionConfiguration(algorithm: algorithm, direction: direction, level: level)
        c.timeoutMilliseconds = timeoutMilliseconds
        // Readers wait for one particular block: wake on each completion.
        // Write-back waits for room: one wake-up per several completions
        // (a drained queue interrupts anyway).
        c.interruptThreshold = direction == .decompress ? 1 : max(1, capacity / 4)
        session = try CompressionSession(device: device, configuration: c) { tag, r in table.done[Int(tag)] = r }
    }

    deinit {
        session.close()
        table.done.deinitialize(count: capacity)
        table.done.deallocate()
    }

    var isFull: Bool { freeTags.isEmpty }

    /// Submits a request; returns its tag. Requires `!isFull`.
    func submit(_ src: UnsafeRawBufferPointer, _ dst: UnsafeMutableRawBufferPointer) throws -> Int {
        let tag = freeTags.removeLast()
        table.done[tag] = nil
        do {
            try session.submit(src, into: dst, tag: UInt64(tag))
        } catch {
            freeTags.append(tag)
            throw error
        }
        inFlight += 1
        pending[tag] = true
        sequence[tag] = nextSequence
        nextSequence += 1
        return tag
    }

    /// Reaps finished requests (waiting for at least `minimum`) and returns
    /// them; their tags become free.
    func reap(minimum: Int) -> [(tag: Int, result: Result<Int, WarpDriveError>)] {
        var out: [(tag: Int, result: Result<Int, WarpDriveError>)] = []
        var waitError: WarpDriveError?
        do { try session.poll(minimum: min(minimum, inFlight)) } catch {
            waitError = error as? WarpDriveError ?? .noDevice("\(error)")
        }
        for tag in 0..<capacity where pending[tag] {
            if let r = table.done[tag] {
                out.append((tag, r))
                table.done[tag] = nil
                release(tag)
            }
        }
        // A queue that failed without delivering (should not happen): fail what is left.
        if let waitError, out.count < minimum {
            for tag in 0..<capacity where pending[tag] {
                out.append((tag, .failure(waitError)))
                release(tag)
            }
        }
        if out.count > 1 { out.sort { sequence[$0.tag] < sequence[$1.tag] } }
        return out
    }

    private func release(_ tag: Int) {
        pending[tag] = false
        freeTags.append(tag)
        inFlight -= 1
    }
}

extension BlockCodec {
    /// A new asynchronous stream on this codec's device.
    /// A stream for one file: a returned idle one when there is one (opening a
    /// queue costs a memfd, two mappings and an eventfd), else a new one.
    ///
    /// When the device has no queue left, idle streams of every kind are
    /// closed (their queues freed) and the call waits, up to the engine
    /// time-out, for a queue to come back.
    func stream(_ direction: Direction, algorithm: CompressionAlgorithm, capacity: Int) throws -> BlockStream {
        let key = "\(direction.rawValue)/\(algorithm.rawValue)/\(capacity)"
        let deadline = wd_now_ns() + UInt64(timeoutMilliseconds) * 1_000_000
        while true {
            if let s = idleStreams.withLock({ $0[key]?.popLast() }) { return s }
            do {
                return try BlockStream(device: device, algorithm: algorithm, direction: direction, level: level, capacity: capacity,
                                       timeoutMilliseconds: timeoutMilliseconds)
            } catch WarpDriveError.busy(let d) {
                let parked = idleStreams.withLock { idle -> [BlockStream] in
                    defer { idle = [:] }
                    return idle.values.flatMap { $0 }
                }
                if !parked.isEmpty { continue }     // dropping them released their queues
                guard wd_now_ns() < deadline else { throw WarpDriveError.busy(device: d) }
                usleep(2000)
            }
        }
    }

    /// Takes back a drained stream for reuse by another file (16 kept per kind).
    func recycle(_ s: BlockStream) {
        guard s.inFlight == 0 else { return }
        let c = s.session.configuration
        let key = "\(c.direction.rawValue)/\(c.algorithm.rawValue)/\(s.capacity)"
        idleStreams.withLock { idle in
            if idle[key, default: []].count < 16 { idle[key, default: []].append(s) }
        }
    }
}

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
