// warpdrive-bench: the WarpDrive queue layer against zlib called directly,
// on the same 64 KiB blocks, in the same run, interleaved.
//
//   swift build -c release --product warpdrive-bench && .build/release/warpdrive-bench
//
// (a) round-trip latency of a minimal request (median, p99), busy-poll and
//     interrupt, next to zlib on the same 64 bytes;
// (b) compress and decompress throughput with 1 and 2 engines and 1, 4, 16
//     and 64 requests in flight, each as a ratio of medians to zlib on the
//     same blocks with as many threads as engines.
import ArgumentParser
import CWarpSys
import Synchronization
import WarpDrive
#if canImport(Glibc)
import Glibc
#endif

@main
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warpdrive-bench",
        abstract: "Measure the WarpDrive queue layer against direct zlib on the same blocks.")

    @Option(help: "Compression level.") var level = 1
    @Option(help: "Seconds per trial.") var seconds = 0.7
    @Option(help: "Trials per configuration (medians are reported).") var trials = 5
    @Option(help: "Engine counts, comma separated.") var engines = "1,2"
    @Option(help: "Requests in flight, comma separated.") var inflight = "1,4,16,64"
    @Option(help: "Block size in KiB.") var blockKiB = 64
    @Option(help: "Corpus size in MiB.") var corpusMiB = 32
    @Option(help: "Latency repetitions.") var latencyReps = 20000
    @Option(help: "Write the figures as JSON to this file.") var json: String?
    @Option(help: "Engine idle spin before sleeping, µs (device setting).") var idleSpin = EmulatedDeviceConfiguration().idleSpinMicroseconds
    @Option(help: "Interrupt moderation: one interrupt per (in flight / this) completions.") var irqDivisor = 2
    @Flag(help: "A short run (CI-sized).") var quick = false

    mutating func run() throws {
        if quick { seconds = 0.25; trials = 3; corpusMiB = 8; inflight = "1,16"; latencyReps = 3000 }
        let engineList = engines.split(separator: ",").compactMap { Int($0) }
        let inflightList = inflight.split(separator: ",").compactMap { Int($0) }
        let blockSize = blockKiB << 10
        print("warpdrive-bench: \(sysconf(Int32(_SC_NPROCESSORS_ONLN))) cores; " + CommandLine.arguments.joined(separator: " "))
        let corpus = Corpus(mib: corpusMiB, blockSize: blockSize, level: level)
        print(corpus.summary)
        var report = JSONReport()

        // (a) Latency.
        print("\n(a) round trip of a minimal request (64 bytes, zlib level \(level)), \(latencyReps) requests")
        print(pad("path", 34) + pad("median µs", 12) + pad("p99 µs", 12))
        let tiny = [UInt8](corpus.blocks[0].prefix(64))
        let direct = latencyDirect(tiny, level: level, reps: latencyReps)
        print(pad("zlib directly", 34) + pad(f(direct.0), 12) + pad(f(direct.1), 12))
        report.add("latency.direct", ["median_us": direct.0, "p99_us": direct.1])
        for mode in [NotificationMode.busyPoll, .interrupt] {
            let q = try latencyQueue(tiny, level: level, reps: latencyReps, mode: mode)
            let name = mode == .busyPoll ? "busy-poll" : "interrupt"
            print(pad("queue, \(name)", 34) + pad(f(q.0), 12) + pad(f(q.1), 12))
            report.add("latency.queue.\(name)", ["median_us": q.0, "p99_us": q.1])
        }

        // (b) Throughput.
        print("\n(b) throughput on \(corpus.blocks.count) blocks of \(blockKiB) KiB, uncompressed MB/s, medians of \(trials) interleaved trials of \(seconds) s")
        print(pad("direction", 11) + pad("engines", 8) + pad("in flight", 10) + pad("zlib MB/s", 11) + pad("queue MB/s", 12)
            + pad("ratio", 8) + pad("ratio range", 15) + pad("CPU s/GB zlib", 14) + pad("queue", 8))
        var scaling: [String: [Int: Double]] = [:]
        for direction in [Direction.compress, .decompress] {
            let dname = direction == .compress ? "compress" : "decompress"
            for e in engineList {
                var dc = EmulatedDeviceConfiguration(engines: e)
                dc.idleSpinMicroseconds = idleSpin
                let device = EmulatedZipDevice(configuration: dc)
                defer { device.shutdown() }
                let buffers = try QueueBuffers(device: device, corpus: corpus, registered: true)
                for n in inflightList {
                    let r = try compare(direction, engines: e, inflight: n, device: device, buffers: buffers, corpus: corpus)
                    print(pad(dname, 11) + pad("\(e)", 8) + pad("\(n)", 10) + r.row)
                    report.add("throughput.\(dname).e\(e).n\(n)", r.json)
                    scaling[dname, default: [:]][e * 1000 + n] = r.queueMedian
                }
                if e == engineList.max(), inflightList.contains(16) {
                    let plain = try QueueBuffers(device: device, corpus: corpus, registered: false)
                    let r = try compare(direction, engines: e, inflight: 16, device: device, buffers: plain, corpus: corpus)
                    print(pad(dname, 11) + pad("\(e)", 8) + pad("16*", 10) + r.row)
                    report.add("throughput.\(dname).e\(e).n16.unregistered", r.json)
                }
            }
        }
        print("* buffers not in a registered pool: the device copies them with process_vm_readv/writev")
        if engineList.contains(1) && engineList.contains(2) {
            print("\nengine scaling (queue MB/s with 2 engines / 1 engine):")
            for (d, m) in scaling.sorted(by: { $0.key < $1.key }) {
                let parts = inflightList.compactMap { n -> String? in
                    guard let one = m[1000 + n], let two = m[2000 + n], one > 0 else { return nil }
                    report.add("scaling.\(d).n\(n)", ["ratio": two / one])
                    return "\(n) in flight \(f(two / one))x"
                }
                print("  \(d): " + parts.joined(separator: ", "))
            }
        }
        if let json { try report.write(json) }
    }

    // MARK: Throughput

    struct Comparison {
        var directMedian: Double, queueMedian: Double, ratios: [Double], cpuDirect: Double, cpuQueue: Double
        var row: String {
            pad(f(directMedian), 11) + pad(f(queueMedian), 12) + pad(f(queueMedian / directMedian, 3), 8)
                + pad("\(f(ratios.min() ?? 0, 3))-\(f(ratios.max() ?? 0, 3))", 15) + pad(f(cpuDirect), 14) + pad(f(cpuQueue), 8)
        }
        var json: [String: Double] {
            ["zlib_mbps": directMedian, "queue_mbps": queueMedian, "ratio": queueMedian / directMedian,
             "ratio_min": ratios.min() ?? 0, "ratio_max": ratios.max() ?? 0, "cpu_s_per_gb_zlib": cpuDirect, "cpu_s_per_gb_queue": cpuQueue]
        }
    }

    func compare(_ d: Direction, engines e: Int, inflight n: Int, device: EmulatedZipDevice, buffers: QueueBuffers, corpus: Corpus) throws -> Comparison {
        var direct: [Double] = [], queue: [Double] = [], ratios: [Double] = [], cpuD: [Double] = [], cpuQ: [Double] = []
        // Warm-up (also checks results).
        _ = try queueTrial(d, inflight: n, device: device, buffers: buffers, corpus: corpus, seconds: 0.1, verify: true)
        for _ in 0..<trials {
            let a = directTrial(d, threads: e, corpus: corpus, seconds: seconds)
            let b = try queueTrial(d, inflight: n, device: device, buffers: buffers, corpus: corpus, seconds: seconds, verify: false)
            direct.append(a.mbps); queue.append(b.mbps); ratios.append(b.mbps / a.mbps)
            cpuD.append(a.cpuPerGB); cpuQ.append(b.cpuPerGB)
        }
        return Comparison(directMedian: median(direct), queueMedian: median(queue), ratios: ratios,
                          cpuDirect: median(cpuD), cpuQueue: median(cpuQ))
    }

    struct Trial { var mbps: Double; var cpuPerGB: Double }

    /// zlib on `threads` threads, each compressing (or inflating) blocks round robin.
    func directTrial(_ d: Direction, threads: Int, corpus: Corpus, seconds: Double) -> Trial {
        let stop = Atomic<Bool>(false)
        let bytes = Atomic<Int>(0)
        let cpu0 = wd_process_cpu_ns(), t0 = wd_now_ns()
        runThreads(threads) { t in
            let worker = ZlibWorker(level: corpus.level, blockSize: corpus.blockSize)
            var i = t
            var done = 0
            while !stop.load(ordering: .relaxed) {
                let k = i % corpus.blocks.count
                if d == .compress { worker.compress(corpus.blocks[k]) } else { worker.decompress(corpus.streams[k]) }
                done += corpus.blocks[k].count
                i += threads
                if t == 0 && Double(wd_now_ns() - t0) / 1e9 >= seconds { stop.store(true, ordering: .relaxed) }
            }
            bytes.add(done, ordering: .relaxed)
        }
        let wall = Double(wd_now_ns() - t0) / 1e9, cpu = Double(wd_process_cpu_ns() - cpu0) / 1e9
        let b = Double(bytes.load(ordering: .relaxed))
        return Trial(mbps: b / wall / 1e6, cpuPerGB: cpu / (b / 1e9))
    }

    /// One client thread keeping `inflight` requests in flight on one session.
    func queueTrial(_ d: Direction, inflight n: Int, device: EmulatedZipDevice, buffers: QueueBuffers, corpus: Corpus,
                    seconds: Double, verify: Bool) throws -> Trial {
        let done = CompletionLog(capacity: n)
        var config = SessionConfiguration(algorithm: .zlib, direction: d, level: corpus.level)
        config.notification = .interrupt
        config.interruptThreshold = max(1, n / irqDivisor)
        let session = try CompressionSession(device: device, configuration: config) { tag, r in done.record(tag, r) }
        defer { session.close() }
        var next = 0
        var bytes = 0
        var slotBlock = [Int](repeating: 0, count: n)
        func submit(_ slot: Int) throws {
            let k = next % corpus.blocks.count
            next += 1
            slotBlock[slot] = k
            let src = d == .compress ? buffers.plain(k) : buffers.stream(k)
            try session.submit(src, into: buffers.destination(slot), tag: UInt64(slot))
        }
        let cpu0 = wd_process_cpu_ns(), t0 = wd_now_ns()
        let end = t0 + UInt64(seconds * 1e9)
        for s in 0..<n { try submit(s) }
        var running = true
        while session.outstanding > 0 {
            try session.poll(minimum: 1)
            for (slot, result) in done.drain() {
                let k = slotBlock[slot]
                let produced = try result.get()
                if verify { try check(d, produced: produced, slot: slot, block: k, buffers: buffers, corpus: corpus) }
                bytes += corpus.blocks[k].count
                if running && wd_now_ns() >= end { running = false }
                if running { try submit(slot) }
            }
        }
        let wall = Double(wd_now_ns() - t0) / 1e9, cpu = Double(wd_process_cpu_ns() - cpu0) / 1e9
        return Trial(mbps: Double(bytes) / wall / 1e6, cpuPerGB: cpu / (Double(bytes) / 1e9))
    }

    func check(_ d: Direction, produced: Int, slot: Int, block k: Int, buffers: QueueBuffers, corpus: Corpus) throws {
        let out = Array(UnsafeRawBufferPointer(rebasing: buffers.destination(slot)[0..<produced]))
        let ok: Bool
        if d == .compress {
            ok = out == corpus.streams[k]   // byte-identical to zlib's own stream
        } else {
            ok = out == corpus.blocks[k]
        }
        guard ok else { throw ValidationError("result of block \(k) differs from zlib's (\(d))") }
    }

    // MARK: Latency

    func latencyDirect(_ data: [UInt8], level: Int, reps: Int) -> (Double, Double) {
        let worker = ZlibWorker(level: level, blockSize: 4096)
        var samples: [Double] = []
        samples.reserveCapacity(reps)
        for i in 0..<(reps + reps / 10) {
            let t = wd_now_ns()
            worker.compress(data)
            if i >= reps / 10 { samples.append(Double(wd_now_ns() - t) / 1000) }
        }
        return (percentile(samples, 0.5), percentile(samples, 0.99))
    }

    func latencyQueue(_ data: [UInt8], level: Int, reps: Int, mode: NotificationMode) throws -> (Double, Double) {
        let device = EmulatedZipDevice(configuration: EmulatedDeviceConfiguration(engines: 1))
        defer { device.shutdown() }
        var config = SessionConfiguration(algorithm: .zlib, direction: .compress, level: level)
        config.notification = mode
        let s = try CompressionSession(device: device, configuration: config)
        defer { s.close() }
        let binding = try device.iommu.bind()
        let pool = try SharedBufferPool(binding: binding, bufferSize: 4096, count: 2)
        let src = pool.buffer(0), dst = pool.buffer(1)
        data.withUnsafeBytes { src.copyMemory(from: $0) }
        let input = UnsafeRawBufferPointer(rebasing: src[0..<data.count])
        var samples: [Double] = []
        samples.reserveCapacity(reps)
        for i in 0..<(reps + reps / 10) {
            let t = wd_now_ns()
            _ = try s.process(input, into: dst)
            if i >= reps / 10 { samples.append(Double(wd_now_ns() - t) / 1000) }
        }
        return (percentile(samples, 0.5), percentile(samples, 0.99))
    }
}

// MARK: Data

/// The blocks, and zlib's own stream of each at the level.
struct Corpus: @unchecked Sendable {
    let blocks: [[UInt8]]
    let streams: [[UInt8]]
    let level: Int
    let blockSize: Int
    let summary: String

    init(mib: Int, blockSize: Int, level: Int) {
        let target = mib << 20
        var data: [UInt8] = []
        data.reserveCapacity(target)
        var sources: [String: Int] = [:]
        // An equal share from each kind of system file: text, headers, libraries, documents, programs.
        let dirs = ["/usr/share/dict", "/usr/include", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc", "/usr/bin"]
        for (i, dir) in dirs.enumerated() {
            let share = (target - data.count) / (dirs.count - i)
            var taken = 0
            for path in listFiles(dir) where taken < share {
                guard let bytes = readFile(path, limit: min(2 << 20, share - taken)), bytes.count >= 4096 else { continue }
                data += bytes
                taken += bytes.count
            }
            if taken > 0 { sources[dir] = taken }
        }
        var synthetic = 0
        if data.count < target {
            var x: UInt64 = 0x9E3779B97F4A7C15
            let words = Array("the queue engine block ring doorbell phase completion submission address space ".utf8)
            while data.count < target {
                x ^= x >> 12; x ^= x << 25; x ^= x >> 27
                let r = x &* 0x2545F4914F6CDD1D
                if r % 3 == 0 { data.append(UInt8(truncatingIfNeeded: r >> 8)) } else { data.append(words[Int(r >> 16) % words.count]) }
                synthetic += 1
            }
        }
        var blocks: [[UInt8]] = []
        var i = 0
        while i + blockSize <= data.count { blocks.append(Array(data[i..<(i + blockSize)])); i += blockSize }
        let w = ZlibWorker(level: level, blockSize: blockSize)
        streams = blocks.map { w.compress($0) }
        self.blocks = blocks
        self.level = level
        self.blockSize = blockSize
        let total = blocks.count * blockSize
        let packed = streams.reduce(0) { $0 + $1.count }
        let parts = sources.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value >> 20) MiB" } + (synthetic > 0 ? ["synthetic \(synthetic >> 20) MiB"] : [])
        summary = "corpus: \(total >> 20) MiB (" + parts.joined(separator: ", ") + "); zlib level \(level) ratio \(f(Double(total) / Double(packed))):1"
    }
}

/// Source and destination buffers the queue works on: in a registered
/// shared pool (zero copy) or on the heap (copied through the IOMMU emulation).
final class QueueBuffers: @unchecked Sendable {
    private var keep: [SharedBufferPool] = []
    private var heap: [UnsafeMutableRawBufferPointer] = []
    private var plains: [UnsafeRawBufferPointer] = []
    private var streams: [UnsafeRawBufferPointer] = []
    private var destinations: [UnsafeMutableRawBufferPointer] = []
    private let binding: SVABinding

    init(device: EmulatedZipDevice, corpus: Corpus, registered: Bool) throws {
        binding = try device.iommu.bind()
        let n = corpus.blocks.count
        let cap = corpus.blockSize + 1024
        func make(_ count: Int, _ size: Int) throws -> [UnsafeMutableRawBufferPointer] {
            if registered {
                let pool = try SharedBufferPool(binding: binding, bufferSize: size, count: count)
                keep.append(pool)
                return (0..<count).map { pool.buffer($0) }
            }
            let bufs = (0..<count).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64) }
            heap += bufs
            return bufs
        }
        let p = try make(n, corpus.blockSize), s = try make(n, cap)
        for k in 0..<n {
            corpus.blocks[k].withUnsafeBytes { p[k].copyMemory(from: $0) }
            corpus.streams[k].withUnsafeBytes { s[k].copyMemory(from: $0) }
            plains.append(UnsafeRawBufferPointer(p[k]))
            streams.append(UnsafeRawBufferPointer(rebasing: s[k][0..<corpus.streams[k].count]))
        }
        destinations = try make(64, cap)
    }

    func plain(_ k: Int) -> UnsafeRawBufferPointer { plains[k] }
    func stream(_ k: Int) -> UnsafeRawBufferPointer { streams[k] }
    func destination(_ slot: Int) -> UnsafeMutableRawBufferPointer { destinations[slot] }

    deinit {
        for b in heap { b.deallocate() }
        binding.unbind()
    }
}

/// Completions recorded by the session's handler (on the polling thread).
final class CompletionLog: @unchecked Sendable {
    private var items: [(Int, Result<Int, WarpDriveError>)] = []
    init(capacity: Int) { items.reserveCapacity(capacity) }
    func record(_ tag: UInt64, _ r: Result<Int, WarpDriveError>) { items.append((Int(tag), r)) }
    func drain() -> [(Int, Result<Int, WarpDriveError>)] {
        let out = items
        items.removeAll(keepingCapacity: true)
        return out
    }
}

/// zlib called directly: a reusable deflate and inflate stream (zlib format).
final class ZlibWorker {
    private var d = z_stream(), i = z_stream()
    private var out: [UInt8]

    init(level: Int, blockSize: Int) {
        precondition(wd_deflate_init2(&d, Int32(level), 15, 8, Z_DEFAULT_STRATEGY) == Z_OK)
        precondition(wd_inflate_init2(&i, 15) == Z_OK)
        out = [UInt8](repeating: 0, count: blockSize * 2 + 1024)
    }

    deinit { deflateEnd(&d); inflateEnd(&i) }

    @discardableResult
    func compress(_ src: [UInt8]) -> [UInt8] {
        deflateReset(&d)
        let n: Int = src.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { o in
                d.next_in = UnsafeMutablePointer(mutating: s.baseAddress!.assumingMemoryBound(to: UInt8.self))
                d.avail_in = UInt32(s.count)
                d.next_out = o.baseAddress!.assumingMemoryBound(to: UInt8.self)
                d.avail_out = UInt32(o.count)
                precondition(deflate(&d, Z_FINISH) == Z_STREAM_END)
                return o.count - Int(d.avail_out)
            }
        }
        return Array(out[0..<n])
    }

    func decompress(_ src: [UInt8]) {
        inflateReset(&i)
        src.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { o in
                i.next_in = UnsafeMutablePointer(mutating: s.baseAddress!.assumingMemoryBound(to: UInt8.self))
                i.avail_in = UInt32(s.count)
                i.next_out = o.baseAddress!.assumingMemoryBound(to: UInt8.self)
                i.avail_out = UInt32(o.count)
                precondition(inflate(&i, Z_FINISH) == Z_STREAM_END)
            }
        }
    }
}

/// Minimal JSON writer for the figures.
struct JSONReport {
    private var entries: [(String, [String: Double])] = []
    mutating func add(_ key: String, _ values: [String: Double]) { entries.append((key, values)) }
    func write(_ path: String) throws {
        var s = "{\n"
        for (i, (k, v)) in entries.enumerated() {
            let fields = v.sorted { $0.key < $1.key }.map { "\"\($0.key)\": \($0.value.isFinite ? "\($0.value)" : "null")" }
            s += "  \"\(k)\": {" + fields.joined(separator: ", ") + "}" + (i + 1 < entries.count ? ",\n" : "\n")
        }
        s += "}\n"
        guard let f = fopen(path, "w") else { throw ValidationError("cannot write \(path)") }
        fputs(s, f)
        fclose(f)
    }
}

// MARK: Helpers

func median(_ xs: [Double]) -> Double { percentile(xs, 0.5) }

func percentile(_ xs: [Double], _ p: Double) -> Double {
    guard !xs.isEmpty else { return 0 }
    let s = xs.sorted()
    let pos = p * Double(s.count - 1)
    let lo = Int(pos.rounded(.down)), hi = Int(pos.rounded(.up))
    return s[lo] + (s[hi] - s[lo]) * (pos - Double(lo))
}

func f(_ x: Double, _ digits: Int = 1) -> String {
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([x]) { vsnprintf(&buf, 64, "%.\(digits)f", $0) }
    return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }

func listFiles(_ dir: String) -> [String] {
    var out: [String] = []
    var stack = [dir]
    while let d = stack.popLast(), out.count < 20000 {
        guard let h = opendir(d) else { continue }
        var names: [(String, UInt8)] = []
        while let e = readdir(h) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if n != "." && n != ".." { names.append((n, e.pointee.d_type)) }
        }
        closedir(h)
        for (n, t) in names.sorted(by: { $0.0 > $1.0 }) {
            if t == UInt8(DT_DIR) { stack.append(d + "/" + n) } else if t == UInt8(DT_REG) { out.append(d + "/" + n) }
        }
    }
    return out.sorted()
}

func readFile(_ path: String, limit: Int) -> [UInt8]? {
    guard let fp = fopen(path, "rb") else { return nil }
    defer { fclose(fp) }
    var out = [UInt8](repeating: 0, count: limit)
    let n = fread(&out, 1, limit, fp)
    return Array(out[0..<n])
}

func runThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Box: @unchecked Sendable { let f: () -> Void; init(_ f: @escaping () -> Void) { self.f = f } }
    var ts: [pthread_t] = []
    for i in 0..<n {
        let box = Unmanaged.passRetained(Box { body(i) })
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().f()
            return nil
        }, box.toOpaque())
        ts.append(t)
    }
    for t in ts { pthread_join(t, nil) }
}
