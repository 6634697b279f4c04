#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys
import WarpDrive

/// `warpfs bench`: the same workloads on WarpFS and on its baselines, in
/// one run, with ratios, a JSON file and an SVG chart.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark WarpFS against the backing file system and WarpFS without compression.",
        discussion: """
        Without DIR, makes three targets in a temporary directory under --work: the backing file system \
        itself ("plain"), a WarpFS mount that does not compress ("warpfs-nocompress") and a compressing \
        WarpFS mount ("warpfs"), and runs every workload on each, interleaved, --runs times; medians are \
        reported, with ratios to "plain" and to "warpfs-nocompress". With DIR, DIR is benchmarked as an \
        extra target (for example an existing mount) beside those baselines.
        """)

    @Argument(help: "An extra directory to benchmark (e.g. an existing WarpFS mount).") var dir: String?
    @Option(help: "Data: incompressible, 2:1, 4:1, zeros, or a path whose files are used.") var data = "2:1"
    @Option(name: .customLong("size"), help: "MiB written and read by the sequential workloads.") var sizeMiB = 256
    @Option(help: "Random 4 KiB operations per run.") var randomOps = 4000
    @Option(help: "Files in the small-file workload.") var files = 2000
    @Option(help: "Runs per target (medians are reported).") var runs = 3
    @Option(help: "Compression level of the warpfs target.") var level = 1
    @Option(help: "Where the temporary targets live.") var work = "/tmp"
    @Option(help: "Write the results as JSON here.") var json = "warpfs-bench.json"
    @Option(help: "Write an SVG chart here.") var svg = "warpfs-bench.svg"

    func run() throws {
        let pattern = try BenchData.make(data)
        let root = makeWorkDir(work)
        var targets: [BenchTarget] = []
        defer {
            for t in targets { t.stop() }
            _ = runProgram("/bin/rm", ["-rf", root])
        }
        targets.append(BenchTarget(name: "plain", dir: root + "/plain"))
        targets.append(try BenchTarget.mount(name: "warpfs-nocompress", root: root, options: "nocompress"))
        targets.append(try BenchTarget.mount(name: "warpfs", root: root, options: "level=\(level)"))
        if let dir {
            guard let d = canonical(dir), isDirectory(d) else { throw ValidationError("'\(dir)' is not a directory") }
            targets.append(BenchTarget(name: d, dir: d + "/.warpfs-bench-\(getpid())", cleanup: true))
        }
        print("warpfs bench: data \(data) (\(pattern.description)), \(sizeMiB) MiB sequential, \(randomOps) random 4 KiB ops, "
            + "\(files) small files, \(runs) runs, cores \(sysconf(Int32(_SC_NPROCESSORS_ONLN)))")
        let workloads = Workload.allCases
        var results: [String: [Workload: [Measurement]]] = [:]
        let steps = runs * targets.count * workloads.count
        var step = 0
        for run in 1...runs {
            for t in targets {
                t.prepare()
                for w in workloads {
                    step += 1
                    progress("[\(step)/\(steps)] run \(run): \(t.name): \(w.title)")
                    let m = try w.run(on: t, pattern: pattern, sizeMiB: sizeMiB, randomOps: randomOps, files: files)
                    results[t.name, default: [:]][w, default: []].append(m)
                }
                t.clean()
            }
            // The accelerator's work done by zlib directly on 2 threads, same
            // data, same block size: in every run, so its ratio pairs with
            // the targets' figures of the same run on this noisy machine.
            progress("run \(run): zlib directly")
            let (c, d) = ZlibBaseline.measure(pattern.bytes, sizeMiB: sizeMiB, level: level, threads: 2)
            results["zlib-2-threads", default: [:]][.seqWrite, default: []].append(Measurement(mbps: c))
            results["zlib-2-threads", default: [:]][.seqRead, default: []].append(Measurement(mbps: d))
        }
        progress("")
        var report = BenchReport(data: data, targets: targets.map(\.name) + ["zlib-2-threads"], results: results)
        report.compressionRatio = targets.first { $0.name == "warpfs" }.flatMap { $0.lastRatio }
        print(report.table())
        try report.writeJSON(json)
        try report.writeSVG(svg)
        print("\nwrote \(json) and \(svg)")
    }
}

func progress(_ s: String) {
    var line = "\r\u{1B}[K" + s
    if s.isEmpty { line = "\r\u{1B}[K" }
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func makeWorkDir(_ base: String) -> String {
    var t = Array("\(base)/warpfs-bench-XXXXXX".utf8CString)
    guard let p = mkdtemp(&t) else { return base + "/warpfs-bench" }
    return String(cString: p)
}
