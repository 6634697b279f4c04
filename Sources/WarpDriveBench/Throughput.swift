#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import WarpDrive

// MARK: - (b) Throughput

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

    static let columns = Columns([.left(11), .right(7), .right(10), .right(8), .right(11), .right(12), .right(8),
                                  .right(15), .right(15), .right(16), .right(13)])

    static var header: String {
        columns.line(["direction", "engines", "in flight", "irq thr", "zlib MB/s", "queue MB/s", "ratio", "ratio min-max",
                      "zlib CPU s/GB", "queue CPU s/GB", "engine busy"])
    }

    var line: String {
        let r = trialRatios
        return Row.columns.line([
            directionName, "\(engines)", "\(inflight)", "\(irqThreshold)", fmt(directMBps, 1), fmt(queueMBps, 1), fmt(ratio, 3),
            "\(fmt(r.min()!, 3))-\(fmt(r.max()!, 3))", fmt(directCPU, 2), fmt(queueCPU, 2), fmt(engineUtilization * 100, 0) + "%",
        ]) + (registered ? "" : "  unregistered buffers")
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
            // zlib on both sides: this bench measures the queue against zlib called directly.
            dc.deflateEngine = .zlib
            dc.idleSpinMicroseconds = s.idleSpin
            let device = EmulatedZipDevice(configuration: dc)
            defer { device.shutdown() }
            let direct = ZlibThreads(threads: e, blocks: corpus.blocks)
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
        let direct = ZlibThreads(threads: e, blocks: corpus.blocks)
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
                   device: any AcceleratorDevice, buffers: QueueBuffers, direct: ZlibThreads) throws -> Row {
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
    let columns = Columns([.left(11), .right(10), .right(9), .right(9)])
    out(columns.line(["direction", "in flight", "queue", "zlib"]))
    var json: [JSON] = []
    for d in [Direction.compress, .decompress] {
        for n in s.inflight {
            let pick = { (e: Int) in rows.first { $0.direction == d && $0.engines == e && $0.inflight == n && $0.registered } }
            guard let ra = pick(a), let rb = pick(b) else { continue }
            let q = ra.queueMBps / rb.queueMBps, z = ra.directMBps / rb.directMBps
            out(columns.line([ra.directionName, "\(n)", fmt(q, 2) + "x", fmt(z, 2) + "x"]))
            json.append(.object([("direction", .string(ra.directionName)), ("inflight", .int(n)),
                                 ("engines", .array([.int(a), .int(b)])), ("queue", .number(q)), ("zlib", .number(z))]))
        }
    }
    return json
}
