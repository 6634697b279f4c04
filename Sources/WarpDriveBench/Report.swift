// The run: what was measured on what, and the JSON report.
#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import CWarpSys

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
