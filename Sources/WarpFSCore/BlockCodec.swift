#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import WarpDrive
import WarpFSFormat

/// Compresses and decompresses blocks through WarpDrive sessions. Many
/// blocks of one batch are in flight at once, so every engine is busy.
/// No zlib call here or anywhere in the file system compresses: only the
/// accelerator does.
public final class BlockCodec: @unchecked Sendable {
    /// One session with a per-batch result table, checked out exclusively.
    final class Lane: @unchecked Sendable {
        let session: CompressionSession
        let results: UnsafeMutablePointer<Result<Int, WarpDriveError>?>
        let capacity: Int
        init(device: EmulatedZipDevice, config: SessionConfiguration, capacity: Int) throws {
            let results = UnsafeMutablePointer<Result<Int, WarpDriveError>?>.allocate(capacity: capacity)
            results.initialize(repeating: nil, count: capacity)
            self.results = results
            self.capacity = capacity
            let table = ResultTable(results)
            session = try CompressionSession(device: device, configuration: config) { tag, r in
                table.pointer[Int(tag)] = r
            }
        }
        deinit {
            session.close()
            results.deinitialize(count: capacity)
            results.deallocate()
        }
    }

    /// The lane's result slots, written by the completion handler on the
    /// thread that reaps; read by the lane's owner after `poll` returns.
    struct ResultTable: @unchecked Sendable {
        let pointer: UnsafeMutablePointer<Result<Int, WarpDriveError>?>
        init(_ p: UnsafeMutablePointer<Result<Int, WarpDriveError>?>) { pointer = p }
    }

    public let device: EmulatedZipDevice
    public let algorithm: CompressionAlgorithm
    public let level: Int
    private let maxBatch = 256
    private let lanes = Mutex<[String: [Lane]]>([:])

    /// Block buffers in shared memory registered with the device's IOMMU:
    /// the engines read and write them directly instead of copying through
    /// `process_vm_readv`/`writev`. When the pool is exhausted, heap buffers
    /// are used (correct, slower).
    private let pool: SharedBufferPool?
    private let binding: SVABinding?
    public let poolBufferSize: Int

    public init(device: EmulatedZipDevice, algorithm: CompressionAlgorithm, level: Int,
                poolBufferSize: Int = 64 << 10, poolBuffers: Int = 0) {
        self.device = device
        self.algorithm = algorithm
        self.level = level
        self.poolBufferSize = poolBufferSize
        if poolBuffers > 0, let b = try? device.iommu.bind() {
            binding = b
            pool = try? SharedBufferPool(binding: b, bufferSize: poolBufferSize, count: poolBuffers)
        } else {
            binding = nil
            pool = nil
        }
    }

    deinit { binding?.unbind() }

    /// A buffer of `size` bytes, from the registered pool when it fits and one is free.
    func takeBuffer(_ size: Int) -> BlockBuffer {
        if size <= poolBufferSize, let pool, let i = pool.take() {
            return BlockBuffer(bytes: UnsafeMutableRawBufferPointer(rebasing: pool.buffer(i)[0..<size]), pool: pool, index: i)
        }
        return BlockBuffer(bytes: .allocate(byteCount: max(size, 1), alignment: 4096), pool: nil, index: -1)
    }

    private func key(_ a: CompressionAlgorithm, _ d: Direction) -> String { "\(a.rawValue)/\(d.rawValue)" }

    private func checkout(_ a: CompressionAlgorithm, _ d: Direction) throws -> Lane {
        if let l = lanes.withLock({ $0[key(a, d)]?.popLast() }) { return l }
        var c = SessionConfiguration(algorithm: a, direction: d, level: level)
        c.timeoutMilliseconds = 30_000
        c.interruptThreshold = 1
        return try Lane(device: device, config: c, capacity: maxBatch)
    }

    private func checkin(_ l: Lane, _ a: CompressionAlgorithm, _ d: Direction) {
        lanes.withLock { $0[key(a, d), default: []].append(l) }
    }

    /// Runs `jobs` (source, destination) through the accelerator with all of
    /// them in flight; returns bytes produced or the error, per job.
    public func run(_ direction: Direction, algorithm a: CompressionAlgorithm? = nil,
                    _ jobs: [(UnsafeRawBufferPointer, UnsafeMutableRawBufferPointer)]) -> [Result<Int, WarpDriveError>] {
        let alg = a ?? algorithm
        var out: [Result<Int, WarpDriveError>] = []
        out.reserveCapacity(jobs.count)
        var start = 0
        while start < jobs.count {
            let chunk = jobs[start..<min(jobs.count, start + maxBatch)]
            out += runChunk(direction, alg, Array(chunk))
            start += chunk.count
        }
        return out
    }

    private func runChunk(_ d: Direction, _ a: CompressionAlgorithm,
                          _ jobs: [(UnsafeRawBufferPointer, UnsafeMutableRawBufferPointer)]) -> [Result<Int, WarpDriveError>] {
        let lane: Lane
        do { lane = try checkout(a, d) } catch let e as WarpDriveError {
            return jobs.map { _ in .failure(e) }
        } catch { return jobs.map { _ in .failure(.noDevice("\(error)")) } }
        var broken = false
        defer { if !broken { checkin(lane, a, d) } }
        for i in 0..<jobs.count { lane.results[i] = nil }
        var submitted = 0
        for (i, job) in jobs.enumerated() {
            do {
                try lane.session.submit(job.0, into: job.1, tag: UInt64(i))
                submitted += 1
            } catch let e as WarpDriveError {
                lane.results[i] = .failure(e)
            } catch {
                lane.results[i] = .failure(.noDevice("\(error)"))
            }
        }
        while lane.session.outstanding > 0 {
            do { try lane.session.poll(minimum: 1) } catch {
                broken = true  // a failed queue: do not reuse this lane's session state
                break
            }
        }
        return (0..<jobs.count).map { lane.results[$0] ?? .failure(.timedOut(device: device.name, queue: -1, milliseconds: 30_000)) }
    }
}

/// An asynchronous stream of block requests in one direction, owned by one
/// file (its owner serialises calls): submit many, reap them as they finish.
/// Up to `capacity` requests are in flight.
final class BlockStream {
    private struct Table: @unchecked Sendable {
        let done: UnsafeMutablePointer<Result<Int, WarpDriveError>?>
    }
    let session: CompressionSession
    let capacity: Int
    private let table: Table
    private var freeTags: [Int]
    private(set) var inFlight = 0

    init(device: EmulatedZipDevice, algorithm: CompressionAlgorithm, direction: Direction, level: Int, capacity: Int) throws {
        self.capacity = capacity
        let done = UnsafeMutablePointer<Result<Int, WarpDriveError>?>.allocate(capacity: capacity)
        done.initialize(repeating: nil, count: capacity)
        let table = Table(done: done)
        self.table = table
        freeTags = Array((0..<capacity).reversed())
        var c = SessionConfiguration(algorithm: algorithm, direction: direction, level: level)
        c.timeoutMilliseconds = 30_000
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
        return tag
    }

    /// Reaps finished requests (waiting for at least `minimum`) and returns
    /// them; their tags become free.
    func reap(minimum: Int) -> [(tag: Int, result: Result<Int, WarpDriveError>)] {
        var out: [(Int, Result<Int, WarpDriveError>)] = []
        var waitError: WarpDriveError?
        do { try session.poll(minimum: min(minimum, inFlight)) } catch {
            waitError = error as? WarpDriveError ?? .noDevice("\(error)")
        }
        for tag in 0..<capacity where !freeTags.contains(tag) {
            if let r = table.done[tag] {
                out.append((tag, r))
                table.done[tag] = nil
                freeTags.append(tag)
                inFlight -= 1
            }
        }
        // A queue that failed without delivering (should not happen): fail what is left.
        if let waitError, out.count < minimum {
            for tag in 0..<capacity where !freeTags.contains(tag) {
                out.append((tag, .failure(waitError)))
                freeTags.append(tag)
                inFlight -= 1
            }
        }
        return out
    }
}

extension BlockCodec {
    /// A new asynchronous stream on this codec's device.
    func stream(_ direction: Direction, algorithm: CompressionAlgorithm, capacity: Int) throws -> BlockStream {
        try BlockStream(device: device, algorithm: algorithm, direction: direction, level: level, capacity: capacity)
    }
}

/// A block-sized buffer: a registered pool slot or a heap allocation,
/// returned when released.
final class BlockBuffer {
    let bytes: UnsafeMutableRawBufferPointer
    private let pool: SharedBufferPool?
    private let index: Int

    init(bytes: UnsafeMutableRawBufferPointer, pool: SharedBufferPool?, index: Int) {
        self.bytes = bytes
        self.pool = pool
        self.index = index
    }

    deinit {
        if let pool { pool.give(index) } else { bytes.deallocate() }
    }
}
