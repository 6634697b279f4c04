#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import CWarpSys
import WarpDrive

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
    // zlib on both sides: this bench measures the queue against zlib called directly.
    dc.deflateEngine = .zlib
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
    let columns = Columns([.left(46), .right(10), .right(10), .right(20), .right(17)])
    out(columns.line(["path", "median µs", "p99 µs", "median - compress2", "median - reused"]))
    let base = rows[0].median, baseReused = rows[1].median
    for (i, r) in rows.enumerated() {
        let d1 = i == 0 ? "" : signed(r.median - base), d2 = i <= 1 ? "" : signed(r.median - baseReused)
        out(columns.line([r.name, fmt(r.median, 2), fmt(r.p99, 2), d1, d2]))
    }
    out("  (queue overhead = queue median minus zlib's; compress2 allocates, and glibc trims and page-faults back, "
        + "~260 KB of deflate state on every call: the reused stream is the like-for-like baseline)")
    return rows
}
