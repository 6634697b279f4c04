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
import BenchSupport
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
