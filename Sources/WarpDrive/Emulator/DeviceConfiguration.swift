import Synchronization

/// How an emulated ZIP device is built.
public struct EmulatedDeviceConfiguration: Sendable {
    /// Device name; the device appears as `<name>-<id>` like `/dev/hisi_zip-0`.
    public var name: String = "warpdrive_zip_emu"
    /// Device instance number.
    public var id: Int = 0
    /// Engine threads ("cores" of the accelerator).
    public var engines: Int = 2
    /// Queue pairs the device offers (`available_instances` when none is open).
    public var queues: Int = 64
    /// Entries per SQ and CQ.
    public var queueDepth: Int = 1024
    /// Errors after which the device isolates itself (`isolate_strategy`); 0 = never.
    public var isolateThreshold: Int = 0
    /// NUMA node reported in the attributes.
    public var numaNode: Int = 0
    /// Microseconds an idle engine spins before it sleeps (0 = sleep at once).
    public var idleSpinMicroseconds: Int = 10
    /// Which libraries serve deflate, zlib and gzip requests (zstd and lz4
    /// have one library each). Default `.isal`.
    public var deflateEngine: DeflateEngine = .isal
    /// The algorithms the device offers (its `algorithms` attribute); a
    /// request of any other type completes with `badRequest`. Default: all.
    public var algorithms: [CompressionAlgorithm] = CompressionAlgorithm.allCases

    /// The default configuration.
    public init() {}

    /// A configuration with the common knobs set.
    public init(engines: Int, queues: Int = 64, queueDepth: Int = 1024, isolateThreshold: Int = 0) {
        self.engines = engines
        self.queues = queues
        self.queueDepth = queueDepth
        self.isolateThreshold = isolateThreshold
    }
}

/// The libraries an emulated device's engines use for deflate, zlib and
/// gzip. Either way the output is standard deflate that any inflater reads,
/// and either way each engine keeps its contexts for its lifetime.
public enum DeflateEngine: String, Sendable, CaseIterable {
    /// zlib for compression and decompression: the reference. Compressed
    /// bytes equal stock zlib's `deflateInit2` output at the same level and
    /// window (memLevel 8, default strategy), byte for byte.
    case zlib
    /// ISA-L's igzip (`isal_deflate_stateless`) at levels 1...3, the levels
    /// it has (several times zlib's speed at a ratio within 1%); zlib at
    /// levels 0 (stored blocks) and 4...9, so that output there stays byte
    /// for byte zlib's and a window under 32K is honoured (libdeflate, the
    /// other candidate, cannot limit its window). Decompression by
    /// libdeflate's whole-buffer decoder. The default.
    case isal
}

/// Faults the emulated device injects on request, for tests of callers'
/// error paths. All settings take effect at once and are thread-safe.
public final class FaultInjection: Sendable {
    private let errorRatePPM = Atomic<Int>(0)
    private let hang = Atomic<Bool>(false)
    private let rng = Atomic<UInt64>(0x9E37_79B9_7F4A_7C15)

    init() {}

    /// Fraction (0...1) of requests that complete with an engine error.
    public var engineErrorRate: Double {
        get { Double(errorRatePPM.load(ordering: .relaxed)) / 1_000_000 }
        set { errorRatePPM.store(Int((min(max(newValue, 0), 1) * 1_000_000).rounded()), ordering: .relaxed) }
    }

    /// When true the device stops answering: engines take no new work, so
    /// callers run into their time-out. Setting it back to false resumes.
    public var stopAnswering: Bool {
        get { hang.load(ordering: .acquiring) }
        set { hang.store(newValue, ordering: .releasing) }
    }

    /// Seeds the error-rate draw, for reproducible tests.
    public func seed(_ s: UInt64) { rng.store(s | 1, ordering: .relaxed) }

    func drawEngineError() -> Bool {
        let ppm = errorRatePPM.load(ordering: .relaxed)
        if ppm == 0 { return false }
        // xorshift64*, shared; races only reorder draws.
        var x = rng.load(ordering: .relaxed)
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27
        rng.store(x, ordering: .relaxed)
        return Int((x &* 0x2545_F491_4F6C_DD1D) % 1_000_000) < ppm
    }
}

/// Request and byte counters (a snapshot).
public struct WorkCounters: Sendable, Equatable, CustomStringConvertible {
    /// Requests completed (any status).
    public var requests: UInt64 = 0
    /// Input bytes of completed requests.
    public var bytesIn: UInt64 = 0
    /// Output bytes of completed requests.
    public var bytesOut: UInt64 = 0
    /// Requests completed with an error status (faults, engine errors, corrupt input...).
    public var errors: UInt64 = 0
    /// Refusals for lack of room: queue opens with no instance left (device)
    /// and submissions to a full ring.
    public var busyRejections: UInt64 = 0

    /// All zero.
    public init() {}

    /// The counters as `key=value` fields.
    public var description: String {
        "requests=\(requests) in=\(bytesIn) out=\(bytesOut) errors=\(errors) busy=\(busyRejections)"
    }

    /// Adds `b`'s counts to `a`'s (a client's queues summed, for instance).
    public static func += (a: inout WorkCounters, b: WorkCounters) {
        a.requests += b.requests; a.bytesIn += b.bytesIn; a.bytesOut += b.bytesOut
        a.errors += b.errors; a.busyRejections += b.busyRejections
    }
}

final class AtomicCounters: Sendable {
    let requests = Atomic<UInt64>(0)
    let bytesIn = Atomic<UInt64>(0)
    let bytesOut = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)
    let busy = Atomic<UInt64>(0)

    func record(bytesIn i: Int, bytesOut o: Int, error: Bool) {
        requests.add(1, ordering: .relaxed)
        bytesIn.add(UInt64(i), ordering: .relaxed)
        bytesOut.add(UInt64(o), ordering: .relaxed)
        if error { errors.add(1, ordering: .relaxed) }
    }

    var snapshot: WorkCounters {
        var c = WorkCounters()
        c.requests = requests.load(ordering: .relaxed)
        c.bytesIn = bytesIn.load(ordering: .relaxed)
        c.bytesOut = bytesOut.load(ordering: .relaxed)
        c.errors = errors.load(ordering: .relaxed)
        c.busyRejections = busy.load(ordering: .relaxed)
        return c
    }
}
