#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import CWarpSys
import Synchronization
import WarpDrive

// MARK: Through the queue

/// Source and destination buffers for the queue path: in a SharedBufferPool
/// registered with the IOMMU (the device reaches them without copies), or
/// ordinary heap allocations (copied with process_vm_readv/writev).
final class QueueBuffers {
    let registered: Bool
    /// Per block: the plain block (compress) or zlib's stream of it (decompress), exact length.
    private(set) var sources: [UnsafeRawBufferPointer] = []
    /// Per in-flight slot.
    private(set) var destinations: [UnsafeMutableRawBufferPointer] = []
    private var pools: [SharedBufferPool] = []
    private var binding: SVABinding?
    private var heap: [UnsafeMutableRawBufferPointer] = []

    init(direction: Direction, corpus: Corpus, slots: Int, device: EmulatedZipDevice?, registered: Bool) throws {
        self.registered = registered
        let sourceSize = direction == .compress ? corpus.blockSize : corpus.maxStream
        let destinationSize = streamCapacity(corpus.blockSize)
        let src: [UnsafeMutableRawBufferPointer], dst: [UnsafeMutableRawBufferPointer]
        if registered, let device {
            let b = try device.iommu.bind()
            binding = b
            let sp = try SharedBufferPool(binding: b, bufferSize: sourceSize, count: corpus.count)
            let dp = try SharedBufferPool(binding: b, bufferSize: destinationSize, count: slots)
            pools = [sp, dp]
            src = (0..<corpus.count).map { sp.buffer($0) }
            dst = (0..<slots).map { dp.buffer($0) }
        } else {
            src = (0..<corpus.count).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: sourceSize, alignment: 16) }
            dst = (0..<slots).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: destinationSize, alignment: 16) }
            heap = src + dst
        }
        for k in 0..<corpus.count {
            let data = direction == .compress ? corpus.block(k) : corpus.stream(k)
            src[k].copyMemory(from: data)
            sources.append(UnsafeRawBufferPointer(rebasing: src[k][0..<data.count]))
        }
        for d in dst { d.initializeMemory(as: UInt8.self, repeating: 0) }
        destinations = dst
    }

    func release() {
        sources = []; destinations = []
        pools = []
        binding?.unbind(); binding = nil
        for h in heap { h.deallocate() }
        heap = []
    }
}

/// Completions as the session's handler reports them (tag = slot), drained
/// by the client loop. Preallocated: nothing is allocated per request.
final class CompletionLog: @unchecked Sendable {
    private let lock = Mutex(())
    private let capacity: Int
    private let tags: UnsafeMutablePointer<Int>
    private let sizes: UnsafeMutablePointer<Int>
    private var count = 0
    private var failure: (tag: Int, error: WarpDriveError)?

    init(capacity: Int) {
        self.capacity = capacity
        tags = .allocate(capacity: capacity)
        sizes = .allocate(capacity: capacity)
    }

    deinit { tags.deallocate(); sizes.deallocate() }

    func record(_ tag: UInt64, _ result: Result<Int, WarpDriveError>) {
        lock.withLock { _ in
            switch result {
            case .success(let n):
                precondition(count < capacity, "more completions than requests in flight")
                tags[count] = Int(tag)
                sizes[count] = n
                count += 1
            case .failure(let e):
                if failure == nil { failure = (Int(tag), e) }
            }
        }
    }

    /// Moves the recorded completions to `tagsOut`/`sizesOut`; returns how many.
    func drain(_ tagsOut: UnsafeMutablePointer<Int>, _ sizesOut: UnsafeMutablePointer<Int>) -> Int {
        lock.withLock { _ in
            let n = count
            tagsOut.update(from: tags, count: n)
            sizesOut.update(from: sizes, count: n)
            count = 0
            return n
        }
    }

    func takeFailure() -> (tag: Int, error: WarpDriveError)? {
        lock.withLock { _ in
            defer { failure = nil }
            return failure
        }
    }
}

/// Checks queue results against the corpus (used in the warm-up of every configuration).
final class Verifier {
    let inflater: Inflater
    let corpus: Corpus
    private(set) var identical = true

    init(algorithm: AlgorithmOption, corpus: Corpus) {
        self.corpus = corpus
        inflater = Inflater(algorithm: algorithm, capacity: streamCapacity(corpus.blockSize))
    }

    func check(_ d: Direction, output: UnsafeRawBufferPointer, block k: Int) throws {
        if d == .compress {
            if let why = inflater.mismatch(output, original: corpus.block(k)) {
                throw BenchFailure("queue compress: the stream of block \(k) (\(output.count) bytes) is wrong: \(why)")
            }
            let z = corpus.stream(k)
            if output.count != z.count || memcmp(output.baseAddress!, z.baseAddress!, z.count) != 0 { identical = false }
        } else {
            let o = corpus.block(k)
            guard output.count == o.count else {
                throw BenchFailure("queue decompress: block \(k) came back as \(output.count) bytes, expected \(o.count)")
            }
            if memcmp(output.baseAddress!, o.baseAddress!, o.count) != 0 {
                throw BenchFailure("queue decompress: block \(k) differs from the original")
            }
        }
    }
}

/// One session with a completion handler; one client thread (the caller)
/// keeps N requests in flight: submit N, then poll(minimum: 1) and resubmit
/// each completed slot until the trial ends, then drain.
final class QueueRunner {
    let session: CompressionSession
    let log: CompletionLog
    let direction: Direction
    let inflight: Int
    let corpus: Corpus
    let buffers: QueueBuffers
    let device: any AcceleratorDevice
    private let slotBlock: UnsafeMutablePointer<Int>
    private let doneTags: UnsafeMutablePointer<Int>
    private let doneSizes: UnsafeMutablePointer<Int>

    init(settings s: Settings, corpus: Corpus, direction: Direction, inflight n: Int,
         device: any AcceleratorDevice, buffers: QueueBuffers) throws {
        precondition(buffers.destinations.count >= n)
        var c = SessionConfiguration(algorithm: s.algorithm.algorithm, direction: direction, level: s.level)
        c.notification = .interrupt
        c.interruptThreshold = s.interruptThreshold(n)
        let log = CompletionLog(capacity: n)
        session = try CompressionSession(device: device, configuration: c) { tag, result in log.record(tag, result) }
        self.log = log
        self.direction = direction
        inflight = n
        self.corpus = corpus
        self.buffers = buffers
        self.device = device
        slotBlock = .allocate(capacity: n)
        slotBlock.initialize(repeating: 0, count: n)
        doneTags = .allocate(capacity: n)
        doneTags.initialize(repeating: 0, count: n)
        doneSizes = .allocate(capacity: n)
        doneSizes.initialize(repeating: 0, count: n)
    }

    func close() { session.close() }

    deinit {
        slotBlock.deallocate(); doneTags.deallocate(); doneSizes.deallocate()
    }

    /// Runs for `seconds`, or until `requests` have been submitted; checks every result when `verifier` is given.
    func run(seconds: Double?, requests: Int?, verifier: Verifier?) throws -> Trial {
        let blocks = corpus.count, blockSize = corpus.blockSize
        let cap = requests ?? Int.max
        var cursor = 0, submitted = 0, bytes = 0
        let local = device as? EmulatedZipDevice
        let busy0 = local?.engineBusyNanoseconds.reduce(0, +) ?? 0
        let cpu0 = wd_process_cpu_ns(), t0 = wd_now_ns()
        let end = seconds.map { t0 + UInt64($0 * 1e9) } ?? UInt64.max

        func submit(_ slot: Int) throws {
            let k = cursor
            cursor = cursor + 1 == blocks ? 0 : cursor + 1
            submitted += 1
            slotBlock[slot] = k
            try session.submit(buffers.sources[k], into: buffers.destinations[slot], tag: UInt64(slot))
        }

        for slot in 0..<min(inflight, cap) { try submit(slot) }
        var running = true
        while session.outstanding > 0 {
            try session.poll(minimum: 1)
            if let f = log.takeFailure() {
                throw BenchFailure("queue \(direction == .compress ? "compress" : "decompress") of block "
                    + "\(slotBlock[f.tag]) failed: \(f.error.description)")
            }
            let m = log.drain(doneTags, doneSizes)
            if running && (submitted >= cap || wd_now_ns() >= end) { running = false }
            for j in 0..<m {
                let slot = doneTags[j], produced = doneSizes[j], k = slotBlock[slot]
                if let verifier {
                    try verifier.check(direction, output: UnsafeRawBufferPointer(rebasing: buffers.destinations[slot][0..<produced]),
                                       block: k)
                } else if direction == .decompress && produced != blockSize {
                    throw BenchFailure("queue decompress: block \(k) came back as \(produced) bytes, expected \(blockSize)")
                }
                bytes += blockSize   // uncompressed bytes in both directions
                if running && submitted < cap { try submit(slot) }
            }
        }
        let wall = wd_now_ns() - t0, cpu = wd_process_cpu_ns() - cpu0
        let busy = (local?.engineBusyNanoseconds.reduce(0, +) ?? 0) - busy0
        return Trial(bytes: bytes, wallNs: wall, cpuNs: cpu, engineBusyNs: busy)
    }
}
