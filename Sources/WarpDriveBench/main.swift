// warpdrive-bench: the WarpDrive accelerator queue layer against zlib called
// directly, on the same blocks of mixed compressible data, in the same run.
//
//   swift build -c release --product warpdrive-bench
//   .build/release/warpdrive-bench [--quick] [--json figures.json]
//
// It prints figures; it is not a test (but it aborts when a result is wrong).
//
// Data: 64 KiB blocks cut from a deterministic corpus of system files (text
// and binaries: /usr/share/dict, /usr/share/doc/**/copyright,
// /usr/lib/x86_64-linux-gnu/*.so*, /usr/bin/*), topped up with seeded
// pseudo-random ~2:1 data when the files do not reach the requested size.
//
// (a) Latency of a minimal request: synchronous `process` of 64 bytes through
//     a session (busy-poll and interrupt), next to zlib's compress2 (and a
//     reused deflate stream) on the same 64 bytes.
// (b) Throughput, compress and decompress, for E engines and N requests in
//     flight: one client thread keeps N asynchronous requests in flight on
//     buffers of a registered SharedBufferPool; the baseline is zlib on E
//     threads over the same blocks. Baseline and queue trials alternate, so
//     machine noise hits both; medians and ratios of medians are reported.
import ArgumentParser
import CWarpSys
import Synchronization
import WarpDrive
#if canImport(Glibc)
import Glibc
#endif

// MARK: - Command line

enum AlgorithmOption: String, ExpressibleByArgument, CaseIterable, Sendable {
    case zlib, gzip, deflate

    var algorithm: CompressionAlgorithm {
        switch self {
        case .zlib: return .zlib
        case .gzip: return .gzip
        case .deflate: return .deflate
        }
    }

    /// zlib's windowBits for deflateInit2 / inflateInit2 (32K window).
    var windowBits: Int32 {
        switch self {
        case .zlib: return 15
        case .gzip: return 31
        case .deflate: return -15
        }
    }
}

/// Everything the run uses, with the --quick defaults applied.
struct Settings: Sendable {
    var level: Int
    var seconds: Double
    var trials: Int
    var engines: [Int]
    var inflight: [Int]
    var algorithm: AlgorithmOption
    var blockSize: Int
    var corpusBytes: Int
    var latencyReps: Int
    var irqDivisor: Int
    var idleSpin: Int
    var quick: Bool
    var syntheticOnly: Bool
    var jsonPath: String?
    /// Queue path through warpdrived at this socket instead of an in-process device.
    var daemonSocket: String? = nil

    func interruptThreshold(_ n: Int) -> Int { max(1, n / irqDivisor) }

    /// Engine count of the extra "unregistered buffers" rows.
    var unregisteredEngines: Int { engines.contains(2) ? 2 : engines.max()! }
    static let unregisteredInflight = 16
}

@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warpdrive-bench",
        abstract: "Measure the WarpDrive queue layer against zlib called directly, on the same blocks, in the same run.",
        discussion: """
        Prints (a) the round trip of a minimal request through a queue next to zlib on the same 64 bytes, and \
        (b) compress and decompress throughput through the queue (one client thread, N requests in flight, \
        E engines, registered buffers) next to zlib on E threads, as medians of interleaved trials and their \
        ratio. MB/s are 10^6 bytes of uncompressed data per second in both directions.
        """)

    @Option(help: "Compression level 0-9.") var level: Int = 1
    @Option(help: "Seconds per trial (default 1.0; 0.25 with --quick).") var seconds: Double?
    @Option(help: "Trials per configuration; medians are reported (default 5; 3 with --quick).") var trials: Int?
    @Option(help: "Engine counts, comma separated (zlib runs on as many threads).") var engines: String = "1,2"
    @Option(help: "Requests in flight, comma separated (default 1,4,16,64; 1,16 with --quick).") var inflight: String?
    @Option(help: "Stream format, the same for both paths.") var algorithm: AlgorithmOption = .zlib
    @Option(name: .customLong("block-kib"), help: "Block size in KiB.") var blockKiB: Int = 64
    @Option(name: .customLong("corpus-mib"), help: "Corpus size in MiB (default 32; 8 with --quick).") var corpusMiB: Int?
    @Option(help: "Timed requests per latency path (default 20000; 3000 with --quick).") var latencyReps: Int?
    @Option(help: "Also write the figures as JSON to this path.") var json: String?
    @Option(help: "Interrupt moderation: threshold = max(1, in-flight / this).") var irqDivisor: Int = 2
    @Option(help: "Engine idle spin before sleeping, in µs (a device setting; default: the device's default).")
    var idleSpin: Int?
    @Flag(help: "A CI-sized run (well under 30 s): fewer and shorter trials, fewer configurations.") var quick = false
    @Flag(help: .hidden) var syntheticOnly = false
    @Option(name: .customLong("device"), help: ArgumentHelp(
        "Run the queue path through the warpdrived listening on this socket (throughput only, unregistered buffers; "
            + "give --engines the daemon's engine count so zlib runs on as many threads).", valueName: "socket"))
    var daemonSocket: String?

    func validate() throws {
        guard (0...9).contains(level) else { throw ValidationError("--level must be 0...9") }
        if let seconds, !(seconds > 0 && seconds <= 600) { throw ValidationError("--seconds must be in (0, 600]") }
        if let trials, trials < 1 { throw ValidationError("--trials must be at least 1") }
        guard (1...8192).contains(blockKiB) else { throw ValidationError("--block-kib must be 1...8192 (device limit 8 MiB)") }
        if let corpusMiB, corpusMiB < 1 { throw ValidationError("--corpus-mib must be at least 1") }
        if let latencyReps, latencyReps < 10 { throw ValidationError("--latency-reps must be at least 10") }
        guard irqDivisor >= 1 else { throw ValidationError("--irq-divisor must be at least 1") }
        if let idleSpin, idleSpin < 0 { throw ValidationError("--idle-spin must be >= 0") }
        _ = try Bench.intList(engines, "--engines", 1...64)
        if let inflight { _ = try Bench.intList(inflight, "--inflight", 1...1000) }
    }

    static func intList(_ s: String, _ name: String, _ range: ClosedRange<Int>) throws -> [Int] {
        var out: [Int] = []
        for part in s.split(separator: ",") {
            guard let v = Int(part.trimmingSpaces), range.contains(v) else {
                throw ValidationError("\(name): '\(part)' is not an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            if !out.contains(v) { out.append(v) }
        }
        guard !out.isEmpty else { throw ValidationError("\(name) is empty") }
        return out
    }

    func settings() throws -> Settings {
        let corpusMiB = self.corpusMiB ?? (quick ? 8 : 32)
        let blockSize = blockKiB << 10
        guard corpusMiB << 20 >= blockSize else { throw ValidationError("the corpus must hold at least one block") }
        return Settings(
            level: level, seconds: seconds ?? (quick ? 0.25 : 1.0), trials: trials ?? (quick ? 3 : 5),
            engines: try Bench.intList(engines, "--engines", 1...64),
            inflight: try Bench.intList(inflight ?? (quick ? "1,16" : "1,4,16,64"), "--inflight", 1...1000),
            algorithm: algorithm, blockSize: blockSize, corpusBytes: corpusMiB << 20,
            latencyReps: latencyReps ?? (quick ? 3000 : 20000), irqDivisor: irqDivisor,
            idleSpin: idleSpin ?? EmulatedDeviceConfiguration().idleSpinMicroseconds,
            quick: quick, syntheticOnly: syntheticOnly, jsonPath: json, daemonSocket: daemonSocket)
    }

    func run() throws {
        do {
            try runBench(try settings())
        } catch let e as BenchFailure {
            eprint("warpdrive-bench: FAILED: \(e.description)")
            throw ExitCode(2)
        } catch let e as WarpDriveError {
            eprint("warpdrive-bench: FAILED: \(e.description)")
            throw ExitCode(2)
        }
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return s
    }
}

// MARK: - The run

func runBench(_ s: Settings) throws {
    let started = wd_now_ns()
    let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))
    let commandLine = CommandLine.arguments.map(shellQuote).joined(separator: " ")
    let zlibVersionString = String(cString: zlibVersion())
    let cpu = cpuModel()
    out("warpdrive-bench: WarpDrive queue layer vs zlib called directly (same data, same run)")
    out("command: \(commandLine)")
    out("machine: \(cores) online cores (sysconf _SC_NPROCESSORS_ONLN), \(cpu); zlib \(zlibVersionString)")
    let configs = 2 * (s.engines.count * s.inflight.count + 1)
    let estimate = Double(configs * s.trials * 2) * s.seconds
    out("settings: \(s.algorithm.rawValue) level \(s.level), \(s.blockSize >> 10) KiB blocks, \(s.trials) trials x "
        + "\(fmt(s.seconds, 2)) s per path, engines \(s.engines.map(String.init).joined(separator: ",")), "
        + "in flight \(s.inflight.map(String.init).joined(separator: ",")), interrupt threshold max(1, N/\(s.irqDivisor)), "
        + "engine idle spin \(s.idleSpin) µs\(s.quick ? ", --quick" : "") (throughput trials ~\(Int(estimate.rounded())) s)")

    let corpus = try Corpus.build(s)
    out("")
    out(corpus.summary(s))

    var report: [(String, JSON)] = [
        ("command", .string(commandLine)),
        ("machine", .object([("online_cores", .int(cores)), ("cpu", .string(cpu)), ("zlib", .string(zlibVersionString))])),
        ("settings", .object([
            ("algorithm", .string(s.algorithm.rawValue)), ("level", .int(s.level)), ("block_bytes", .int(s.blockSize)),
            ("seconds_per_trial", .number(s.seconds)), ("trials", .int(s.trials)),
            ("engines", .array(s.engines.map { .int($0) })), ("inflight", .array(s.inflight.map { .int($0) })),
            ("irq_divisor", .int(s.irqDivisor)), ("idle_spin_us", .int(s.idleSpin)), ("quick", .bool(s.quick)),
        ])),
        ("corpus", corpus.json),
    ]

    // (a) Latency.
    if s.daemonSocket == nil {
        let latency = try measureLatency(s, corpus)
        report.append(("latency", .array(latency.map(\.json))))
    }

    // (b) Throughput.
    let rows = try s.daemonSocket.map { try measureDaemonThroughput(s, corpus, socket: $0) } ?? measureThroughput(s, corpus)
    report.append(("throughput", .array(rows.map(\.json))))
    let scaling = printScaling(s, rows)
    report.append(("engine_scaling", .array(scaling)))

    let wall = Double(wd_now_ns() - started) / 1e9
    out("")
    out("wall time: \(fmt(wall, 1)) s")
    report.append(("wall_seconds", .number(wall)))
    if let path = s.jsonPath {
        try writeFile(path, JSON.object(report).render() + "\n")
        out("figures written to \(path)")
    }
}

// MARK: - Corpus

/// The blocks, and zlib's own stream of each block at the run's level and format.
final class Corpus: @unchecked Sendable {
    struct Source { var name: String; var files: Int; var bytes: Int }

    let blockSize: Int
    let count: Int
    let sources: [Source]
    /// Largest compressed stream of a block.
    let maxStream: Int
    private let plain: UnsafeMutableRawBufferPointer
    private let packed: UnsafeMutableRawBufferPointer
    private let offsets: [Int]
    private let lengths: [Int]

    var totalBytes: Int { count * blockSize }
    var streamBytes: Int { lengths.reduce(0, +) }
    var ratio: Double { Double(totalBytes) / Double(streamBytes) }

    func block(_ k: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: plain[k * blockSize ..< (k + 1) * blockSize])
    }

    func stream(_ k: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: packed[offsets[k] ..< offsets[k] + lengths[k]])
    }

    /// Bytes taken from one file at most, so that one big library cannot make up the corpus.
    static let fileCap = 1 << 20

    private init(blockSize: Int, count: Int, sources: [Source], plain: UnsafeMutableRawBufferPointer,
                 packed: UnsafeMutableRawBufferPointer, offsets: [Int], lengths: [Int]) {
        self.blockSize = blockSize; self.count = count; self.sources = sources
        self.plain = plain; self.packed = packed; self.offsets = offsets; self.lengths = lengths
        maxStream = lengths.max() ?? 0
    }

    deinit { plain.deallocate(); packed.deallocate() }

    static func build(_ s: Settings) throws -> Corpus {
        let blockSize = s.blockSize
        let target = s.corpusBytes / blockSize * blockSize
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: target, alignment: 64)
        var filled = 0
        var sources: [Source] = []
        if !s.syntheticOnly {
            // Sources in this order, files in sorted order within each; each source
            // gets an equal share of what is left, each file at most `fileCap`.
            let kinds: [(String, () -> [String])] = [
                ("/usr/share/dict", { listFiles("/usr/share/dict", recursive: true) { _ in true } }),
                ("/usr/share/doc/**/copyright", { listFiles("/usr/share/doc", recursive: true) { $0 == "copyright" } }),
                ("/usr/lib/x86_64-linux-gnu/*.so*", { listFiles("/usr/lib/x86_64-linux-gnu", recursive: false) { $0.contains(".so") } }),
                ("/usr/bin/*", { listFiles("/usr/bin", recursive: false) { _ in true } }),
            ]
            var seen = Set<UInt64>()   // (dev, inode) hashes: symlinks and hard links are read once
            for (i, (name, list)) in kinds.enumerated() {
                let share = (target - filled) / (kinds.count - i)
                var taken = 0, files = 0
                for path in list() where taken < share {
                    var st = stat()
                    guard stat(path, &st) == 0, st.st_mode & 0o170000 == 0o100000, st.st_size > 0 else { continue }
                    guard seen.insert(UInt64(st.st_dev) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(st.st_ino)).inserted else { continue }
                    let n = readFile(path, into: plain.baseAddress! + filled + taken, limit: min(fileCap, share - taken))
                    if n > 0 { taken += n; files += 1 }
                }
                filled += taken
                sources.append(Source(name: name, files: files, bytes: taken))
            }
        }
        if filled < target {
            fillSynthetic(UnsafeMutableRawBufferPointer(rebasing: plain[filled..<target]))
            sources.append(Source(name: "synthetic (seeded words + random bytes)", files: 0, bytes: target - filled))
        }

        // zlib's stream of every block, checked once: it must inflate back.
        let count = target / blockSize
        let cap = slotCapacity(blockSize)
        let packed = UnsafeMutableRawBufferPointer.allocate(byteCount: count * cap, alignment: 64)
        let z = ZStream(level: s.level, windowBits: s.algorithm.windowBits, capacity: cap)
        let check = Inflater(algorithm: s.algorithm, capacity: cap)
        var offsets: [Int] = [], lengths: [Int] = []
        var at = 0
        for k in 0..<count {
            let blk = UnsafeRawBufferPointer(rebasing: plain[k * blockSize ..< (k + 1) * blockSize])
            let n = z.compress(blk)
            let stream = UnsafeRawBufferPointer(rebasing: z.output[0..<n])
            if let why = check.mismatch(stream, original: blk) {
                throw BenchFailure("zlib baseline: block \(k) does not inflate back: \(why)")
            }
            packed.baseAddress!.advanced(by: at).copyMemory(from: stream.baseAddress!, byteCount: n)
            offsets.append(at); lengths.append(n)
            at += n
        }
        return Corpus(blockSize: blockSize, count: count, sources: sources, plain: plain, packed: packed,
                      offsets: offsets, lengths: lengths)
    }

    /// ~2:1 compressible data (zlib level 1): words from a small fixed
    /// vocabulary, mixed with runs of random bytes, from a seeded xorshift.
    static func fillSynthetic(_ buf: UnsafeMutableRawBufferPointer) {
        let vocabulary: [[UInt8]] = """
            queue engine block ring doorbell phase completion submission address space the of and a to in is for \
            buffer device request stream window level zlib deflate inflate checksum page fault interrupt thread \
            kernel user memory shared register pool slot tag poll wait busy idle spin core data file header trailer
            """.split(separator: " ").map { Array($0.utf8) }
        let separators: [[UInt8]] = [[0x20], [0x20], [0x20], [0x2c, 0x20], [0x2e, 0x0a], [0x0a]]
        var rng = XorShift(seed: 0x5EED_0F_C0_4B_05)
        var p = 0
        let n = buf.count
        while p < n {
            let r = rng.next()
            if r % 16 < 3 {
                let run = 1 + Int((r >> 8) % 12)
                for _ in 0..<run where p < n { buf[p] = UInt8(truncatingIfNeeded: rng.next() >> 24); p += 1 }
            } else {
                let w = vocabulary[Int((r >> 16) % UInt64(vocabulary.count))]
                let sep = separators[Int((r >> 40) % UInt64(separators.count))]
                for b in w where p < n { buf[p] = b; p += 1 }
                for b in sep where p < n { buf[p] = b; p += 1 }
            }
        }
    }

    func summary(_ s: Settings) -> String {
        var lines: [String] = []
        lines.append("corpus: \(mib(totalBytes)) MiB in \(count) blocks of \(blockSize >> 10) KiB "
            + "(at most \(Corpus.fileCap >> 20) MiB per file, an equal share per source, sorted order):")
        for src in sources {
            lines.append("  " + pad(src.name, 44) + lpad(mib(src.bytes), 7) + " MiB"
                + (src.files > 0 ? "  (\(src.files) files)" : src.name.hasPrefix("synthetic") ? "" : "  (none readable)"))
        }
        var ratios = (0..<count).map { Double(blockSize) / Double(lengths[$0]) }
        ratios.sort()
        lines.append("  zlib level \(s.level) (\(s.algorithm.rawValue)) ratio \(fmt(ratio, 2)):1 over the blocks "
            + "(per block: min \(fmt(ratios.first!, 2)), median \(fmt(median(ratios), 2)), max \(fmt(ratios.last!, 2)))")
        return lines.joined(separator: "\n")
    }

    var json: JSON {
        .object([
            ("bytes", .int(totalBytes)), ("blocks", .int(count)), ("block_bytes", .int(blockSize)),
            ("compressed_bytes", .int(streamBytes)), ("zlib_ratio", .number(ratio)),
            ("sources", .array(sources.map { .object([("name", .string($0.name)), ("files", .int($0.files)), ("bytes", .int($0.bytes))]) })),
        ])
    }
}

/// Destination capacity for one block: the block plus deflate's worst-case growth and framing.
func slotCapacity(_ blockSize: Int) -> Int { blockSize + blockSize / 512 + 1024 }

struct XorShift {
    var x: UInt64
    init(seed: UInt64) { x = seed | 1 }
    mutating func next() -> UInt64 {
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27
        return x &* 0x2545_F491_4F6C_DD1D
    }
}

// MARK: - zlib called directly

/// A deflate and an inflate stream, reused with deflateReset / inflateReset.
final class ZStream: @unchecked Sendable {
    private let d = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    private let i = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    let output: UnsafeMutableRawBufferPointer

    init(level: Int, windowBits: Int32, capacity: Int) {
        d.initialize(to: z_stream())
        i.initialize(to: z_stream())
        let rd = wd_deflate_init2(d, Int32(level), windowBits, 8, Z_DEFAULT_STRATEGY)
        let ri = wd_inflate_init2(i, windowBits)
        if rd != Z_OK || ri != Z_OK { die("zlib: deflateInit2 returned \(rd), inflateInit2 returned \(ri)") }
        output = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit {
        deflateEnd(d); inflateEnd(i)
        d.deallocate(); i.deallocate(); output.deallocate()
    }

    /// Compresses `src` into `output`; returns the stream length.
    @inline(__always)
    func compress(_ src: UnsafeRawBufferPointer) -> Int {
        deflateReset(d)
        d.pointee.next_in = UnsafeMutablePointer(mutating: src.baseAddress!.assumingMemoryBound(to: UInt8.self))
        d.pointee.avail_in = UInt32(src.count)
        d.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        d.pointee.avail_out = UInt32(output.count)
        let rc = deflate(d, Z_FINISH)
        if rc != Z_STREAM_END { die("zlib: deflate returned \(rc)") }
        return output.count - Int(d.pointee.avail_out)
    }

    /// Inflates `src` into `output`; returns the bytes produced, or -1 when
    /// the stream is not one complete stream.
    @inline(__always)
    func decompress(_ src: UnsafeRawBufferPointer) -> Int {
        inflateReset(i)
        i.pointee.next_in = UnsafeMutablePointer(mutating: src.baseAddress!.assumingMemoryBound(to: UInt8.self))
        i.pointee.avail_in = UInt32(src.count)
        i.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        i.pointee.avail_out = UInt32(output.count)
        let rc = inflate(i, Z_FINISH)
        guard rc == Z_STREAM_END, i.pointee.avail_in == 0 else { return -1 }
        return output.count - Int(i.pointee.avail_out)
    }
}

/// Checks that a compressed stream inflates back to the original: zlib's
/// `uncompress` for the zlib format, an inflate stream for gzip and raw deflate.
final class Inflater {
    let algorithm: AlgorithmOption
    private let z: ZStream
    private let scratch: UnsafeMutableRawBufferPointer

    init(algorithm: AlgorithmOption, capacity: Int) {
        self.algorithm = algorithm
        z = ZStream(level: 1, windowBits: algorithm.windowBits, capacity: capacity)
        scratch = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { scratch.deallocate() }

    /// nil when `stream` inflates to exactly `original`, else what is wrong.
    func mismatch(_ stream: UnsafeRawBufferPointer, original: UnsafeRawBufferPointer) -> String? {
        let produced: Int
        let at: UnsafeRawPointer
        if algorithm == .zlib {
            var len = uLongf(scratch.count)
            let rc = uncompress(scratch.baseAddress!.assumingMemoryBound(to: UInt8.self), &len,
                                stream.baseAddress!.assumingMemoryBound(to: UInt8.self), uLong(stream.count))
            guard rc == Z_OK else { return "zlib uncompress returned \(rc) for a \(stream.count)-byte stream" }
            produced = Int(len)
            at = UnsafeRawPointer(scratch.baseAddress!)
        } else {
            produced = z.decompress(stream)
            guard produced >= 0 else { return "zlib inflate (\(algorithm.rawValue)) rejected the \(stream.count)-byte stream" }
            at = UnsafeRawPointer(z.output.baseAddress!)
        }
        guard produced == original.count else { return "inflates to \(produced) bytes, expected \(original.count)" }
        if memcmp(at, original.baseAddress!, produced) != 0 { return "inflates to different bytes than the original" }
        return nil
    }
}

// MARK: - (a) Latency

struct LatencyRow {
    var name: String
    var median: Double
    var p99: Double
    var json: JSON { .object([("path", .string(name)), ("median_us", .number(median)), ("p99_us", .number(p99))]) }
}

func measureLatency(_ s: Settings, _ corpus: Corpus) throws -> [LatencyRow] {
    let size = min(64, corpus.blockSize)
    let input = UnsafeRawBufferPointer(rebasing: corpus.block(0)[0..<size])

    // zlib directly: compress2 (init + deflate + end per call), and a reused stream.
    let bound = Int(compressBound(uLong(size))) + 64
    let direct = UnsafeMutableRawBufferPointer.allocate(byteCount: bound, alignment: 64)
    defer { direct.deallocate() }
    let reused = ZStream(level: s.level, windowBits: s.algorithm.windowBits, capacity: bound)

    // The queue: one engine, two sessions (busy-poll and interrupt), registered buffers.
    var dc = EmulatedDeviceConfiguration(engines: 1)
    dc.idleSpinMicroseconds = s.idleSpin
    let device = EmulatedZipDevice(configuration: dc)
    defer { device.shutdown() }
    let binding = try device.iommu.bind()
    defer { binding.unbind() }
    let pool = try SharedBufferPool(binding: binding, bufferSize: 4096, count: 2)
    let src = pool.buffer(0), dst = pool.buffer(1)
    src.copyMemory(from: input)
    let qin = UnsafeRawBufferPointer(rebasing: src[0..<size])
    var sessions: [CompressionSession] = []
    defer { for x in sessions { x.close() } }
    for mode in [NotificationMode.busyPoll, .interrupt] {
        var c = SessionConfiguration(algorithm: s.algorithm.algorithm, direction: .compress, level: s.level)
        c.notification = mode
        sessions.append(try CompressionSession(device: device, configuration: c))
    }
    // Check once that the queue's output inflates back.
    let checker = Inflater(algorithm: s.algorithm, capacity: 4096)
    for x in sessions {
        let n = try x.process(qin, into: dst)
        if let why = checker.mismatch(UnsafeRawBufferPointer(rebasing: dst[0..<n]), original: input) {
            throw BenchFailure("latency: the queue's \(size)-byte stream is wrong: \(why)")
        }
    }

    let level = Int32(s.level)
    let paths: [(String, () throws -> Void)] = [
        ("zlib compress2, directly", {
            var len = uLongf(bound)
            let rc = compress2(direct.baseAddress!.assumingMemoryBound(to: UInt8.self), &len,
                               input.baseAddress!.assumingMemoryBound(to: UInt8.self), uLong(size), level)
            if rc != Z_OK { throw BenchFailure("compress2 returned \(rc)") }
        }),
        ("zlib deflate, reused stream (deflateReset)", { _ = reused.compress(input) }),
        ("queue, busy-poll (sync process)", { _ = try sessions[0].process(qin, into: dst) }),
        ("queue, interrupt (sync process)", { _ = try sessions[1].process(qin, into: dst) }),
    ]
    // Interleaved in rounds so drift hits every path; one discarded warm-up round first.
    let rounds = 10
    let chunk = max(1, s.latencyReps / rounds)
    var samples = [[UInt64]](repeating: [], count: paths.count)
    for i in samples.indices { samples[i].reserveCapacity(chunk * rounds) }
    for round in -1..<rounds {
        for (p, path) in paths.enumerated() {
            let body = path.1
            for _ in 0..<(round < 0 ? max(200, chunk / 5) : chunk) {
                let t0 = wd_now_ns()
                try body()
                let t1 = wd_now_ns()
                if round >= 0 { samples[p].append(t1 - t0) }
            }
        }
    }
    var rows: [LatencyRow] = []
    for (p, path) in paths.enumerated() {
        let us = samples[p].map { Double($0) / 1000 }.sorted()
        rows.append(LatencyRow(name: path.0, median: median(us), p99: percentileSorted(us, 0.99)))
    }

    out("")
    out("(a) round trip of a minimal request: \(size) bytes, \(s.algorithm.rawValue) level \(s.level), "
        + "\(chunk * rounds) timed requests per path (interleaved in \(rounds) rounds), 1 engine, registered buffers")
    out(pad("path", 46) + lpad("median µs", 10) + lpad("p99 µs", 10) + lpad("median - compress2", 20)
        + lpad("median - reused", 17))
    let base = rows[0].median, baseReused = rows[1].median
    for (i, r) in rows.enumerated() {
        let d1 = i == 0 ? "" : signed(r.median - base), d2 = i <= 1 ? "" : signed(r.median - baseReused)
        out(pad(r.name, 46) + lpad(fmt(r.median, 2), 10) + lpad(fmt(r.p99, 2), 10) + lpad(d1, 20) + lpad(d2, 17))
    }
    out("  (queue overhead = queue median minus zlib's; compress2 allocates, and glibc trims and page-faults back, "
        + "~260 KB of deflate state on every call: the reused stream is the like-for-like baseline)")
    return rows
}

// MARK: - (b) Throughput

struct Trial {
    var bytes: Int
    var wallNs: UInt64
    var cpuNs: UInt64
    var engineBusyNs: UInt64 = 0
    var mbps: Double { Double(bytes) / (Double(wallNs) / 1e9) / 1e6 }
    var cpuPerGB: Double { (Double(cpuNs) / 1e9) / (Double(bytes) / 1e9) }
}

struct Row {
    var direction: Direction
    var engines: Int
    var inflight: Int
    var registered: Bool
    var irqThreshold: Int
    var direct: [Trial] = []
    var queue: [Trial] = []
    var identicalStreams: Bool? = nil

    var directMBps: Double { median(direct.map(\.mbps)) }
    var queueMBps: Double { median(queue.map(\.mbps)) }
    var ratio: Double { queueMBps / directMBps }
    var trialRatios: [Double] { zip(queue, direct).map { $0.mbps / $1.mbps } }
    var directCPU: Double { median(direct.map(\.cpuPerGB)) }
    var queueCPU: Double { median(queue.map(\.cpuPerGB)) }
    var engineUtilization: Double {
        median(queue.map { Double($0.engineBusyNs) / (Double($0.wallNs) * Double(engines)) })
    }
    var directionName: String { direction == .compress ? "compress" : "decompress" }

    static var header: String {
        pad("direction", 11) + lpad("engines", 7) + lpad("in flight", 10) + lpad("irq thr", 8) + lpad("zlib MB/s", 11)
            + lpad("queue MB/s", 12) + lpad("ratio", 8) + lpad("ratio min-max", 15) + lpad("zlib CPU s/GB", 15)
            + lpad("queue CPU s/GB", 16) + lpad("engine busy", 13)
    }

    var line: String {
        let r = trialRatios
        return pad(directionName, 11) + lpad("\(engines)", 7) + lpad("\(inflight)", 10) + lpad("\(irqThreshold)", 8)
            + lpad(fmt(directMBps, 1), 11) + lpad(fmt(queueMBps, 1), 12) + lpad(fmt(ratio, 3), 8)
            + lpad("\(fmt(r.min()!, 3))-\(fmt(r.max()!, 3))", 15) + lpad(fmt(directCPU, 2), 15)
            + lpad(fmt(queueCPU, 2), 16) + lpad(fmt(engineUtilization * 100, 0) + "%", 13)
            + (registered ? "" : "  unregistered buffers")
    }

    var json: JSON {
        var fields: [(String, JSON)] = [
            ("direction", .string(directionName)), ("engines", .int(engines)), ("inflight", .int(inflight)),
            ("buffers", .string(registered ? "registered pool" : "unregistered heap")),
            ("interrupt_threshold", .int(irqThreshold)), ("zlib_threads", .int(engines)),
            ("zlib_mbps", .number(directMBps)), ("queue_mbps", .number(queueMBps)), ("ratio", .number(ratio)),
            ("ratio_min", .number(trialRatios.min()!)), ("ratio_max", .number(trialRatios.max()!)),
            ("zlib_cpu_s_per_gb", .number(directCPU)), ("queue_cpu_s_per_gb", .number(queueCPU)),
            ("engine_busy_fraction", .number(engineUtilization)),
            ("zlib_mbps_trials", .array(direct.map { .number($0.mbps) })),
            ("queue_mbps_trials", .array(queue.map { .number($0.mbps) })),
        ]
        if let identicalStreams { fields.append(("queue_streams_identical_to_zlib", .bool(identicalStreams))) }
        return .object(fields)
    }
}

func measureThroughput(_ s: Settings, _ corpus: Corpus) throws -> [Row] {
    out("")
    out("(b) throughput on \(corpus.count) blocks of \(corpus.blockSize >> 10) KiB; MB/s = 10^6 uncompressed bytes/s "
        + "(both directions); medians of \(s.trials) trials of \(fmt(s.seconds, 2)) s, zlib and queue trials alternating")
    out("    zlib: as many threads as engines, deflateReset/inflateReset per block, round robin over the blocks")
    out("    queue: 1 client thread, N requests in flight (async submit + poll(minimum: 1)), interrupt notification, "
        + "registered SharedBufferPool buffers unless marked")
    out("    ratio = median(queue) / median(zlib); ratio min-max over the per-trial ratios; CPU = process CPU time; "
        + "engine busy = engine CPU / (wall x engines)")
    out("")
    out(Row.header)
    var rows: [Row] = []
    var identical = true
    for direction in [Direction.compress, .decompress] {
        for e in s.engines {
            var dc = EmulatedDeviceConfiguration(engines: e)
            dc.idleSpinMicroseconds = s.idleSpin
            let device = EmulatedZipDevice(configuration: dc)
            defer { device.shutdown() }
            let direct = DirectRunner(threads: e, settings: s, corpus: corpus)
            let slots = max(s.inflight.max()!, Settings.unregisteredInflight)
            let pooled = try QueueBuffers(direction: direction, corpus: corpus, slots: slots, device: device, registered: true)
            defer { pooled.release() }
            for n in s.inflight {
                let row = try measureConfig(s, corpus, direction: direction, engines: e, inflight: n,
                                            device: device, buffers: pooled, direct: direct)
                out(row.line)
                if row.identicalStreams == false { identical = false }
                rows.append(row)
            }
            if e == s.unregisteredEngines {
                let heap = try QueueBuffers(direction: direction, corpus: corpus, slots: Settings.unregisteredInflight,
                                            device: device, registered: false)
                defer { heap.release() }
                let row = try measureConfig(s, corpus, direction: direction, engines: e,
                                            inflight: Settings.unregisteredInflight, device: device, buffers: heap, direct: direct)
                out(row.line)
                if row.identicalStreams == false { identical = false }
                rows.append(row)
            }
        }
    }
    out("  unregistered buffers: ordinary heap memory; the device copies it with process_vm_readv/writev "
        + "(zlib's figures in those rows are its own interleaved trials)")
    out("  correctness: checked once per configuration before timing (decompressed = original block; compressed "
        + "inflates back with zlib); queue compressed streams \(identical ? "were" : "were NOT all") byte-identical to zlib's")
    return rows
}

/// Throughput with the queue path through `warpdrived` at `socket`: the
/// same blocks, unregistered buffers (the daemon copies them with
/// process_vm_readv/writev), zlib on `--engines` threads alongside.
func measureDaemonThroughput(_ s: Settings, _ corpus: Corpus, socket: String) throws -> [Row] {
    let remote = try RemoteDevice(socket: socket)
    let e = s.engines[0]
    out("")
    out("(b) throughput through warpdrived (pid \(remote.daemonPID)) at \(socket), \(corpus.count) blocks of "
        + "\(corpus.blockSize >> 10) KiB; medians of \(s.trials) trials of \(fmt(s.seconds, 2)) s, zlib (\(e) threads) "
        + "and queue trials alternating; engine busy is not visible from here")
    out("")
    out(Row.header)
    var rows: [Row] = []
    for direction in [Direction.compress, .decompress] {
        let direct = DirectRunner(threads: e, settings: s, corpus: corpus)
        let heap = try QueueBuffers(direction: direction, corpus: corpus, slots: s.inflight.max()!, device: nil, registered: false)
        defer { heap.release() }
        for n in s.inflight {
            let row = try measureConfig(s, corpus, direction: direction, engines: e, inflight: n,
                                        device: remote, buffers: heap, direct: direct)
            out(row.line)
            rows.append(row)
        }
    }
    return rows
}

/// Warm-up and check, then `trials` alternating zlib / queue trials.
func measureConfig(_ s: Settings, _ corpus: Corpus, direction: Direction, engines e: Int, inflight n: Int,
                   device: any AcceleratorDevice, buffers: QueueBuffers, direct: DirectRunner) throws -> Row {
    var row = Row(direction: direction, engines: e, inflight: n, registered: buffers.registered,
                  irqThreshold: s.interruptThreshold(n))
    let runner = try QueueRunner(settings: s, corpus: corpus, direction: direction, inflight: n,
                                 device: device, buffers: buffers)
    defer { runner.close() }
    try direct.verify(direction)
    let verifier = Verifier(algorithm: s.algorithm, corpus: corpus)
    _ = try runner.run(seconds: nil, requests: max(2 * n, 48), verifier: verifier)
    if direction == .compress { row.identicalStreams = verifier.identical }
    _ = direct.run(direction, seconds: min(0.05, s.seconds))
    for _ in 0..<s.trials {
        row.direct.append(direct.run(direction, seconds: s.seconds))
        row.queue.append(try runner.run(seconds: s.seconds, requests: nil, verifier: nil))
    }
    return row
}

func printScaling(_ s: Settings, _ rows: [Row]) -> [JSON] {
    guard let hi = s.engines.max(), let lo = s.engines.min(), hi != lo else { return [] }
    let a = s.engines.contains(2) && s.engines.contains(1) ? 2 : hi
    let b = s.engines.contains(2) && s.engines.contains(1) ? 1 : lo
    out("")
    out("engine scaling: median MB/s with \(a) engines / \(b) engine\(b == 1 ? "" : "s") "
        + "(zlib: \(a) threads / \(b)), registered buffers")
    out(pad("direction", 11) + lpad("in flight", 10) + lpad("queue", 9) + lpad("zlib", 9))
    var json: [JSON] = []
    for d in [Direction.compress, .decompress] {
        for n in s.inflight {
            let pick = { (e: Int) in rows.first { $0.direction == d && $0.engines == e && $0.inflight == n && $0.registered } }
            guard let ra = pick(a), let rb = pick(b) else { continue }
            let q = ra.queueMBps / rb.queueMBps, z = ra.directMBps / rb.directMBps
            out(pad(ra.directionName, 11) + lpad("\(n)", 10) + lpad(fmt(q, 2) + "x", 9) + lpad(fmt(z, 2) + "x", 9))
            json.append(.object([("direction", .string(ra.directionName)), ("inflight", .int(n)),
                                 ("engines", .array([.int(a), .int(b)])), ("queue", .number(q)), ("zlib", .number(z))]))
        }
    }
    return json
}

// MARK: Direct zlib on threads

final class StopFlag: Sendable {
    let stop = Atomic<Bool>(false)
    let bytes = Atomic<Int>(0)
}

/// zlib on `threads` threads, each with its own reused streams, over the
/// blocks round robin (thread t takes blocks t, t + T, t + 2T, ...).
final class DirectRunner: @unchecked Sendable {
    let threads: Int
    let corpus: Corpus
    let workers: [ZStream]

    init(threads: Int, settings s: Settings, corpus: Corpus) {
        self.threads = threads
        self.corpus = corpus
        workers = (0..<threads).map { _ in
            ZStream(level: s.level, windowBits: s.algorithm.windowBits, capacity: slotCapacity(corpus.blockSize))
        }
    }

    /// The direct path's results are right (a few blocks).
    func verify(_ d: Direction) throws {
        let w = workers[0]
        for k in stride(from: 0, to: corpus.count, by: max(1, corpus.count / 8)) {
            if d == .compress {
                let n = w.compress(corpus.block(k))
                guard n == corpus.stream(k).count, memcmp(w.output.baseAddress!, corpus.stream(k).baseAddress!, n) == 0 else {
                    throw BenchFailure("zlib baseline: block \(k) compressed differently on a second run")
                }
            } else {
                let n = w.decompress(corpus.stream(k))
                guard n == corpus.blockSize, memcmp(w.output.baseAddress!, corpus.block(k).baseAddress!, n) == 0 else {
                    throw BenchFailure("zlib baseline: block \(k) does not inflate back to the original")
                }
            }
        }
    }

    func run(_ d: Direction, seconds: Double) -> Trial {
        let flag = StopFlag()
        let corpus = self.corpus, t = threads, compress = d == .compress
        let cpu0 = wd_process_cpu_ns(), t0 = wd_now_ns()
        var handles: [pthread_t] = []
        for i in 0..<t {
            let w = workers[i]
            handles.append(spawn {
                var k = i, bytes = 0
                let count = corpus.count
                while !flag.stop.load(ordering: .relaxed) {
                    let b = k % count
                    if compress {
                        _ = w.compress(corpus.block(b))
                        bytes += corpus.blockSize
                    } else {
                        let n = w.decompress(corpus.stream(b))
                        if n != corpus.blockSize { die("zlib baseline: inflate of block \(b) gave \(n) bytes") }
                        bytes += n
                    }
                    k += t
                }
                flag.bytes.add(bytes, ordering: .relaxed)
            })
        }
        sleepSeconds(seconds)
        flag.stop.store(true, ordering: .relaxed)
        for h in handles { pthread_join(h, nil) }
        return Trial(bytes: flag.bytes.load(ordering: .relaxed), wallNs: wd_now_ns() - t0, cpuNs: wd_process_cpu_ns() - cpu0)
    }
}

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
        let destinationSize = slotCapacity(corpus.blockSize)
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
        inflater = Inflater(algorithm: algorithm, capacity: slotCapacity(corpus.blockSize))
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

// MARK: - Helpers

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func eprint(_ message: String) {
    var m = message + "\n"
    m.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func die(_ message: String) -> Never {
    eprint("warpdrive-bench: FAILED: " + message)
    exit(2)
}

/// Prints a line and flushes, so progress shows when stdout is a pipe.
func out(_ s: String) {
    print(s)
    fflush(nil)
}

final class ThreadBody: @unchecked Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

func spawn(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var t = pthread_t()
    let rc = pthread_create(&t, nil, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
    }, box)
    if rc != 0 { die("pthread_create failed: \(rc)") }
    return t
}

func sleepSeconds(_ s: Double) {
    var ts = timespec(tv_sec: Int(s), tv_nsec: Int((s - Double(Int(s))) * 1e9))
    var rem = timespec()
    while nanosleep(&ts, &rem) != 0 && errno == EINTR { ts = rem }
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    let m = s.count / 2
    return s.count % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/// Nearest-rank percentile of sorted values.
func percentileSorted(_ s: [Double], _ p: Double) -> Double {
    guard !s.isEmpty else { return .nan }
    let rank = Int((p * Double(s.count)).rounded(.up))
    return s[min(max(rank, 1), s.count) - 1]
}

func fmt(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "-" }
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([Int32(digits), x]) { vsnprintf(&buf, 64, "%.*f", $0) }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func signed(_ x: Double) -> String { (x >= 0 ? "+" : "") + fmt(x, 2) }

func mib(_ bytes: Int) -> String { fmt(Double(bytes) / Double(1 << 20), 1) }

func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }

func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? " " + s : String(repeating: " ", count: w - s.count) + s }

func shellQuote(_ a: String) -> String {
    let safe = a.utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || "_./=,:-+@%".utf8.contains(c)
    }
    if safe && !a.isEmpty { return a }
    return "'" + a.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
}

/// Files (by lstat: symbolic links to files are included, symbolic links to
/// directories are not followed) whose name matches, sorted.
func listFiles(_ root: String, recursive: Bool, _ match: (String) -> Bool) -> [String] {
    var found: [String] = []
    var stack = [root]
    while let dir = stack.popLast() {
        guard let h = opendir(dir) else { continue }
        while let e = readdir(h) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let path = dir + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            if st.st_mode & 0o170000 == 0o040000 {
                if recursive { stack.append(path) }
                continue
            }
            if match(name) { found.append(path) }
        }
        closedir(h)
    }
    return found.sorted()
}

/// Reads up to `limit` bytes of the file at `path` into `dst`; 0 when unreadable.
func readFile(_ path: String, into dst: UnsafeMutableRawPointer, limit: Int) -> Int {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var n = 0
    while n < limit {
        let r = read(fd, dst + n, limit - n)
        if r < 0 && errno == EINTR { continue }
        if r < 0 { return 0 }   // unreadable: skip the file entirely
        if r == 0 { break }
        n += r
    }
    return n
}

func cpuModel() -> String {
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    let n = buf.withUnsafeMutableBytes { readFile("/proc/cpuinfo", into: $0.baseAddress!, limit: $0.count) }
    let text = String(decoding: buf[0..<n], as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        if let colon = line.firstIndex(of: ":") { return String(line[line.index(after: colon)...].trimmingSpaces) }
    }
    return "unknown CPU"
}

func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw BenchFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var t = text
    try t.withUTF8 { b in
        var off = 0
        while off < b.count {
            let r = write(fd, b.baseAddress! + off, b.count - off)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw BenchFailure("writing \(path): \(String(cString: strerror(errno)))") }
            off += r
        }
    }
}

/// A minimal JSON value and writer.
indirect enum JSON {
    case number(Double), int(Int), string(String), bool(Bool), array([JSON]), object([(String, JSON)])

    func render(_ indent: String = "") -> String {
        switch self {
        case .number(let x): return x.isFinite ? "\(x)" : "null"
        case .int(let i): return "\(i)"
        case .bool(let b): return b ? "true" : "false"
        case .string(let s): return JSON.quote(s)
        case .array(let xs):
            if xs.allSatisfy({ if case .number = $0 { return true }; if case .int = $0 { return true }; return false }) {
                return "[" + xs.map { $0.render() }.joined(separator: ", ") + "]"
            }
            let inner = indent + "  "
            return "[\n" + xs.map { inner + $0.render(inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let fields):
            let inner = indent + "  "
            return "{\n" + fields.map { inner + JSON.quote($0.0) + ": " + $0.1.render(inner) }.joined(separator: ",\n")
                + "\n" + indent + "}"
        }
    }

    /// A JSON string literal (the same quoting as `warpfs devices --json`).
    static func quote(_ s: String) -> String { DeviceReportFormat.string(s) }
}
