#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys
import WarpDrive
import WarpFSCore

/// `warpfs bench`: the same workloads on WarpFS and on its baselines, in
/// one run, with ratios, a JSON file and an SVG chart.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark WarpFS against the backing file system, WarpFS without compression and btrfs's compression.",
        discussion: """
        Without DIR, makes its targets in a temporary directory under --work: the backing file system \
        itself ("plain"), a WarpFS mount that does not compress ("warpfs-nocompress"), a compressing \
        WarpFS mount ("warpfs") and, as root with btrfs-progs, btrfs on a loop device mounted \
        compress-force=zstd:1 (and zlib at WarpFS's level when WarpFS's algorithm is deflate, zlib or \
        gzip), the kernel's transparent compression ("btrfs-zstd:1", "btrfs-zlib:1"). Every workload \
        runs on each target, interleaved, --runs times; medians are reported, with ratios to "plain", \
        to "warpfs-nocompress" and of warpfs to each btrfs target, and the compression each target \
        achieved (logical size over allocated space). With DIR, DIR is benchmarked as an extra target \
        (for example an existing mount) beside those baselines. Mounts, loop devices and images are \
        removed at the end, on an error and on SIGINT, SIGTERM or SIGHUP.
        """)

    @Argument(help: "An extra directory to benchmark (e.g. an existing WarpFS mount).") var dir: String?
    @Option(help: ArgumentHelp("Data: incompressible, 2:1, 4:1, zeros, system, or a path whose files are used.",
                               discussion: "system: a tar of /usr/share/doc, /usr/share/man and /usr/lib cut to --size MiB, built under --work once and reused."))
    var data = "2:1"
    @Option(name: .customLong("size"), help: "MiB written and read by the sequential workloads.") var sizeMiB = 256
    @Option(help: "Random 4 KiB operations per run.") var randomOps = 4000
    @Option(help: "Files in the small-file workload.") var files = 2000
    @Option(help: "Runs per target (medians are reported).") var runs = 3
    @Option(help: "Compression level of the warpfs target.") var level = 1
    @Option(name: [.customShort("o"), .long], help: "More mount options for the warpfs target (e.g. algorithm=zlib).") var options = ""
    @Option(help: ArgumentHelp("btrfs compress-force= settings to include as targets, comma separated.",
                               discussion: "Default: zstd:1, plus zlib at the warpfs target's level when its algorithm is deflate, zlib or gzip.",
                               valueName: "zstd:1,zlib:1"))
    var btrfs: String?
    @Flag(help: "Leave the btrfs targets out.") var noBtrfs = false
    @Option(help: "Where the temporary targets (and the system corpus) live.") var work = "/tmp"
    @Option(help: "Write the results as JSON here.") var json = "warpfs-bench.json"
    @Option(help: "Write an SVG chart here.") var svg = "warpfs-bench.svg"

    func validate() throws {
        guard sizeMiB >= 1, runs >= 1, randomOps >= 1, files >= 1 else {
            throw ValidationError("--size, --runs, --random-ops and --files must be at least 1")
        }
        if noBtrfs && btrfs != nil { throw ValidationError("--btrfs and --no-btrfs exclude each other") }
        _ = try warpfsOptions
        for s in btrfsSpecs { try BtrfsTarget.validate(s) }
    }

    /// The warpfs target's mount options, and its algorithm and level as the mount will read them.
    var warpfsOptions: (options: String, algorithm: String, level: Int) {
        get throws {
            let all = "level=\(level)" + (options.isEmpty ? "" : "," + options)
            var o = MountOptions()
            do {
                try o.apply(all.split(separator: ",").filter { !$0.hasPrefix("log=") }.joined(separator: ","))
                try o.check()
            } catch { throw ValidationError("-o '\(options)': \(error)") }
            return (all, o.algorithm.rawValue, o.level)
        }
    }

    /// The btrfs compress-force= settings to measure.
    var btrfsSpecs: [String] {
        if noBtrfs { return [] }
        if let btrfs { return btrfs.split(separator: ",").map(String.init) }
        guard let w = try? warpfsOptions else { return ["zstd:1"] }
        return ["zstd:1"] + (["deflate", "zlib", "gzip"].contains(w.algorithm) ? ["zlib:\(min(max(w.level, 1), 9))"] : [])
    }

    func run() throws {
        Cleanup.shared.handleSignals("warpfs bench: interrupted: unmounting and deleting its targets")
        do {
            try measure()
        } catch {
            // After Ctrl-C, a WarpFS mount that got the signal too may have
            // failed an operation first: either way it is the interruption.
            guard let sig = Cleanup.shared.signalReceived else { throw error }
            Cleanup.shared.runAll()
            _exit(128 + sig)
        }
    }

    func measure() throws {
        let warpfs = try warpfsOptions
        let pattern = try BenchData.make(data, sizeMiB: sizeMiB, work: work)
        let root = makeWorkDir(work)
        // Registered first, so it runs last: after every target is unmounted.
        Cleanup.shared.add { _ = runProgram("/bin/rm", ["-rf", root]) }
        defer { Cleanup.shared.runAll() }
        var targets: [BenchTarget] = [DirectoryTarget(name: "plain", dir: root + "/plain", removeDir: false)]
        targets.append(try WarpFSTarget(name: "warpfs-nocompress", root: root, options: "nocompress"))
        targets.append(try WarpFSTarget(name: "warpfs", root: root, options: warpfs.options))
        var skipped: [(target: String, reason: String)] = []
        let specs = btrfsSpecs
        if !specs.isEmpty, let why = BtrfsTarget.unavailable() {
            let names = specs.map { "btrfs-\($0)" }.joined(separator: ", ")
            print("warpfs bench: no \(names): \(why)")
            skipped += specs.map { ("btrfs-\($0)", why) }
        } else {
            // Room for everything the workloads write, twice, and 1 GiB: sparse, so only what is written takes space.
            let dataBytes = (sizeMiB << 20) + files * (16 << 10)
            for s in specs {
                do {
                    targets.append(try BtrfsTarget(spec: s, root: root, imageBytes: 2 * dataBytes + (1 << 30)))
                } catch {
                    print("warpfs bench: no btrfs-\(s): \(error)")
                    skipped.append(("btrfs-\(s)", "\(error)"))
                }
            }
        }
        if let dir {
            guard let d = canonical(dir), isDirectory(d) else { throw ValidationError("'\(dir)' is not a directory") }
            let sub = d + "/.warpfs-bench-\(getpid())"
            Cleanup.shared.add { _ = runProgram("/bin/rm", ["-rf", sub]) }
            targets.append(DirectoryTarget(name: d, dir: sub, removeDir: true))
        }
        print("warpfs bench: data \(data) (\(pattern.description)), \(sizeMiB) MiB sequential, \(randomOps) random 4 KiB ops, "
            + "\(files) small files, \(runs) runs, cores \(sysconf(Int32(_SC_NPROCESSORS_ONLN)))")
        print("targets: " + targets.map(\.name).joined(separator: ", ") + "; warpfs -o " + warpfs.options)
        if let w = targets.last(where: { $0.name == "warpfs" }) as? WarpFSTarget { print("warpfs mount: " + w.accelerator) }
        let workloads = Workload.allCases
        var results: [String: [Workload: [Measurement]]] = [:]
        var spaces: [String: [SpaceUse]] = [:]
        let steps = runs * targets.count * workloads.count
        var step = 0
        for run in 1...runs {
            for t in targets {
                t.prepare()
                for w in workloads {
                    try Cleanup.shared.checkInterrupted()
                    step += 1
                    progress("[\(step)/\(steps)] run \(run): \(t.name): \(w.title)")
                    if w == .seqWrite { t.beforeWrite() }
                    let m = try w.run(on: t, pattern: pattern, sizeMiB: sizeMiB, randomOps: randomOps, files: files)
                    results[t.name, default: [:]][w, default: []].append(m)
                    // Space used by the file just written (and fsynced), for the achieved ratio.
                    if w == .seqWrite, let s = t.space(of: "seq") { spaces[t.name, default: []].append(s) }
                }
                t.clean()
            }
            // The accelerator's work done by zlib directly on 2 threads, same
            // data, same block size: in every run, so its ratio pairs with
            // the targets' figures of the same run on this noisy machine.
            try Cleanup.shared.checkInterrupted()
            progress("run \(run): zlib directly")
            let (c, d) = ZlibBaseline.measure(pattern.bytes, sizeMiB: sizeMiB, level: level, threads: 2)
            results["zlib-2-threads", default: [:]][.seqWrite, default: []].append(Measurement(mbps: c))
            results["zlib-2-threads", default: [:]][.seqRead, default: []].append(Measurement(mbps: d))
        }
        progress("")
        let report = BenchReport(
            data: data, dataDescription: pattern.description, command: CommandLine.arguments.joined(separator: " "),
            targets: targets.map(\.name) + ["zlib-2-threads"], results: results, spaces: spaces,
            methods: Dictionary(uniqueKeysWithValues: targets.map { ($0.name, TargetMethods(cold: $0.coldMethod, cpu: $0.cpuMethod, space: $0.spaceMethod)) }),
            skipped: skipped)
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
