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

/// One place the workloads run, with how to make its caches cold and
/// where its CPU time is counted.
final class BenchTarget {
    let name: String
    let dir: String
    var backing: String?
    var mountpoint: String?
    var options = ""
    var pid: pid_t = 0
    let cleanup: Bool
    var lastRatio: Double?

    init(name: String, dir: String, cleanup: Bool = true) {
        self.name = name
        self.dir = dir
        self.cleanup = cleanup
        mkdir(dir, 0o755)
    }

    static func mount(name: String, root: String, options: String) throws -> BenchTarget {
        let back = root + "/\(name)-backing", mnt = root + "/\(name)"
        mkdir(back, 0o755)
        mkdir(mnt, 0o755)
        let t = BenchTarget(name: name, dir: mnt)
        t.backing = back
        t.mountpoint = mnt
        t.options = options
        try t.start()
        return t
    }

    func start() throws {
        guard let backing, let mountpoint else { return }
        let exe = canonical("/proc/self/exe") ?? CommandLine.arguments[0]
        let args = [exe, "mount", backing, mountpoint, "-f", "-o", options + ",log=" + backing + ".log"]
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        defer { posix_spawnattr_destroy(&attr) }
        guard posix_spawn(&pid, exe, nil, &attr, cargs, environ) == 0 else { throw ValidationError("cannot start \(name)") }
        let deadline = wd_now_ns() + 20_000_000_000
        while !isMountpoint(mountpoint) {
            if wd_now_ns() > deadline { throw ValidationError("\(name) did not mount") }
            usleep(5000)
        }
    }

    func stop() {
        if let mountpoint, isMountpoint(mountpoint) { _ = runProgram("/bin/fusermount3", ["-u", mountpoint]) }
        if pid > 0 { var st: Int32 = 0; waitpid(pid, &st, 0); pid = 0 }
    }

    /// Cold caches: WarpFS targets are remounted (dropping their block
    /// caches); the kernel's page cache is dropped when we are root.
    func makeCold() throws {
        if mountpoint != nil { stop(); try start() }
        sync()
        if let f = fopen("/proc/sys/vm/drop_caches", "w") { fputs("3\n", f); fclose(f) }
    }

    /// CPU seconds used so far by this target's file-system process (0 for plain).
    var cpuSeconds: Double {
        guard pid > 0, let f = fopen("/proc/\(pid)/stat", "r") else { return 0 }
        defer { fclose(f) }
        var buf = [CChar](repeating: 0, count: 4096)
        guard fgets(&buf, 4096, f) != nil else { return 0 }
        let s = String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let close = s.lastIndex(of: ")") else { return 0 }
        let fields = s[s.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let u = Double(fields[11]), let k = Double(fields[12]) else { return 0 }
        return (u + k) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func prepare() { mkdir(dir, 0o755) }

    func clean() {
        if let backing {
            // Space used by the data just written, for the achieved ratio.
            lastRatio = ratio(of: backing)
        }
        _ = runProgram("/bin/sh", ["-c", "rm -rf '\(dir)'/* '\(dir)'/.[!.]* 2>/dev/null; true"])
        if cleanup && mountpoint == nil && backing == nil && name != "plain" { rmdir(dir) }
    }

    private func ratio(of dir: String) -> Double? {
        var logical = 0, used = 0
        guard let names = directoryNames(dir) else { return nil }
        for n in names where n == "seq" {
            var st = stat()
            if lstat(dir + "/" + n, &st) == 0 { used += Int(st.st_blocks) * 512 }
            var ms = stat()
            if let mnt = mountpoint, lstat(mnt + "/" + n, &ms) == 0 { logical += Int(ms.st_size) }
        }
        return used > 0 && logical > 0 ? Double(logical) / Double(used) : nil
    }
}

/// The data the workloads write: a pattern of 8 MiB, repeated.
struct BenchData {
    let bytes: [UInt8]
    let description: String

    static func make(_ spec: String) throws -> BenchData {
        let n = 8 << 20
        var rng = XorShift(seed: 0x9E3779B97F4A7C15)
        func next() -> UInt64 { rng.next() }
        func randomFraction(_ r: Double) -> [UInt8] {
            // Runs of random bytes and zeros in 512-byte pieces (like fio's buffer_compress_percentage).
            var out = [UInt8](repeating: 0, count: n)
            var i = 0
            while i < n {
                let random = Double(next() % 1000) / 1000 < r
                if random { for k in stride(from: i, to: min(i + 512, n), by: 8) { let v = next(); for j in 0..<min(8, n - k) { out[k + j] = UInt8(truncatingIfNeeded: v >> (8 * j)) } } }
                i += 512
            }
            return out
        }
        switch spec {
        case "zeros": return BenchData(bytes: [UInt8](repeating: 0, count: n), description: "all zeros")
        case "incompressible": return BenchData(bytes: randomFraction(1.0), description: "random bytes")
        case "2:1": return BenchData(bytes: randomFraction(0.5), description: "half random 512-byte runs, half zeros")
        case "4:1": return BenchData(bytes: randomFraction(0.25), description: "a quarter random 512-byte runs, the rest zeros")
        default:
            guard isDirectory(spec) || access(spec, R_OK) == 0 else {
                throw ValidationError("--data '\(spec)': expected incompressible, 2:1, 4:1, zeros or a readable path")
            }
            var out: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            var stack = [spec]
            while let p = stack.popLast(), out.count < n {
                var st = stat()
                guard stat(p, &st) == 0 else { continue }
                if st.st_mode & S_IFMT == S_IFDIR {
                    guard let names = directoryNames(p) else { continue }
                    stack += names.map { p + "/" + $0 }.sorted(by: >)
                } else if st.st_mode & S_IFMT == S_IFREG {
                    let fd = open(p, O_RDONLY)
                    guard fd >= 0 else { continue }
                    while out.count < n {
                        let r = read(fd, &buf, min(buf.count, n - out.count))
                        if r <= 0 { break }
                        out += buf[0..<r]
                    }
                    close(fd)
                }
            }
            guard !out.isEmpty else { throw ValidationError("--data '\(spec)': no readable data") }
            return BenchData(bytes: out, description: "files of \(spec), \(out.count >> 20) MiB pattern")
        }
    }
}

/// One measured workload run.
struct Measurement {
    var mbps: Double = 0
    var iops: Double = 0
    var p50us: Double = 0
    var p99us: Double = 0
    var cpuSeconds: Double = 0
}

enum Workload: String, CaseIterable {
    case seqWrite = "sequential write 1 MiB"
    case seqRead = "sequential read 1 MiB, cold"
    case randRead = "random read 4 KiB, warm"
    case randWrite = "random write 4 KiB"
    case smallFiles = "small files"

    var title: String { rawValue }
    var unit: String { self == .seqWrite || self == .seqRead ? "MB/s" : self == .smallFiles ? "files/s" : "IOPS" }

    func run(on t: BenchTarget, pattern: BenchData, sizeMiB: Int, randomOps: Int, files: Int) throws -> Measurement {
        let path = t.dir + "/seq"
        let size = sizeMiB << 20
        var m = Measurement()
        var lat: [Double] = []
        let cpu0 = t.cpuSeconds
        let t0 = wd_now_ns()
        switch self {
        case .seqWrite:
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { throw ValidationError("\(t.name): cannot create \(path)") }
            var off = 0
            while off < size {
                let s = wd_now_ns()
                let n = pattern.bytes.withUnsafeBytes { b in pwrite(fd, b.baseAddress! + (off % b.count), min(1 << 20, b.count - off % b.count), off_t(off)) }
                guard n > 0 else { close(fd); throw ValidationError("\(t.name): write failed: errno \(errno)") }
                lat.append(Double(wd_now_ns() - s) / 1000)
                off += n
            }
            fsync(fd)
            close(fd)
            m.mbps = Double(size) / (Double(wd_now_ns() - t0) / 1e9) / 1e6
        case .seqRead:
            try t.makeCold()
            let c0 = t.cpuSeconds, r0 = wd_now_ns()
            let fd = open(path, O_RDONLY)
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            var total = 0
            while true {
                let s = wd_now_ns()
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                lat.append(Double(wd_now_ns() - s) / 1000)
                total += n
            }
            close(fd)
            m.mbps = Double(total) / (Double(wd_now_ns() - r0) / 1e9) / 1e6
            m.cpuSeconds = t.cpuSeconds - c0
        case .randRead, .randWrite:
            let fd = open(path, self == .randRead ? O_RDONLY : O_RDWR)
            var buf = [UInt8](repeating: 0, count: 4096)
            if self == .randRead { while read(fd, &buf, 4096) > 0 {} }   // warm
            var x = XorShift(seed: 12345)
            let blocks = UInt64(max(1, size / 4096))
            let r0 = wd_now_ns()
            for i in 0..<randomOps {
                let off = off_t((x.next() % blocks) * 4096)
                let s = wd_now_ns()
                if self == .randRead {
                    _ = pread(fd, &buf, 4096, off)
                } else {
                    _ = pattern.bytes.withUnsafeBytes { b in pwrite(fd, b.baseAddress! + (i * 4096) % (b.count - 4096), 4096, off) }
                }
                lat.append(Double(wd_now_ns() - s) / 1000)
            }
            if self == .randWrite { fsync(fd) }
            close(fd)
            m.iops = Double(randomOps) / (Double(wd_now_ns() - r0) / 1e9)
        case .smallFiles:
            let d = t.dir + "/small"
            mkdir(d, 0o755)
            var buf = [UInt8](repeating: 0, count: 16384)
            for i in 0..<files {
                let s = wd_now_ns()
                let p = d + "/f\(i)"
                let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                let len = 4096 + (i * 1237) % 12288
                _ = pattern.bytes.withUnsafeBytes { b in write(fd, b.baseAddress! + (i * 4096) % (b.count - 16384), len) }
                close(fd)
                var st = stat()
                _ = stat(p, &st)
                let r = open(p, O_RDONLY)
                _ = read(r, &buf, buf.count)
                close(r)
                lat.append(Double(wd_now_ns() - s) / 1000)
            }
            for i in 0..<files { unlink(d + "/f\(i)") }
            rmdir(d)
            m.iops = Double(files) / (Double(wd_now_ns() - t0) / 1e9)
        }
        if self != .seqRead { m.cpuSeconds = t.cpuSeconds - cpu0 }
        let sorted = lat.sorted()
        if !sorted.isEmpty {
            m.p50us = percentileSorted(sorted, 0.5, rule: .indexFloor)
            m.p99us = percentileSorted(sorted, 0.99, rule: .indexFloor)
        }
        return m
    }
}

/// The medians, the ratios, and the files a person can open.
struct BenchReport {
    let data: String
    let targets: [String]
    let results: [String: [Workload: [Measurement]]]
    var compressionRatio: Double?

    /// The median over the runs; 0 when there are none.
    func median(_ t: String, _ w: Workload, _ key: (Measurement) -> Double) -> Double {
        let xs = (results[t]?[w] ?? []).map(key)
        return xs.isEmpty ? 0 : BenchSupport.median(xs)
    }

    func value(_ t: String, _ w: Workload) -> Double { median(t, w) { w.unit == "MB/s" ? $0.mbps : $0.iops } }

    static let columns = Columns([.left(30), .left(20), .left(14), .left(10), .left(10), .left(8), .left(8), .left(12)])

    func table() -> String {
        let columns = BenchReport.columns
        var s = "\n" + columns.line(["workload", "target", "value", "p50 µs", "p99 µs", "CPU s", "/plain", "/nocompress"]) + "\n"
        for w in Workload.allCases {
            for t in targets where results[t]?[w] != nil {
                let v = value(t, w)
                let plain = value("plain", w), nc = value("warpfs-nocompress", w)
                s += columns.line([
                    w.title, t.count > 19 ? String(t.suffix(19)) : t, fmt(v, 1) + " " + w.unit,
                    fmt(median(t, w) { $0.p50us }, 1), fmt(median(t, w) { $0.p99us }, 1), fmt(median(t, w) { $0.cpuSeconds }, 2),
                    plain > 0 ? fmt(v / plain, 3) : "-", nc > 0 ? fmt(v / nc, 3) : "-",
                ]) + "\n"
            }
        }
        if let r = compressionRatio { s += "\ncompression ratio achieved by warpfs on the sequential file: \(fmt(r, 2)):1 (logical / allocated)\n" }
        for w in [Workload.seqWrite, .seqRead] {
            if let r = zlibRatio(w) { s += "warpfs / zlib-2-threads, \(w.title): \(fmt(r, 3)) (median of the runs' ratios)\n" }
        }
        return s
    }

    /// Median over runs of warpfs's figure divided by zlib's in the same run.
    func zlibRatio(_ w: Workload) -> Double? {
        guard let a = results["warpfs"]?[w], let z = results["zlib-2-threads"]?[w], !a.isEmpty, a.count == z.count else { return nil }
        return BenchSupport.median(zip(a, z).map { $0.mbps / max($1.mbps, 1e-9) })
    }

    func writeJSON(_ path: String) throws {
        var fields: [(String, JSON)] = [("data", .string(data))]
        if let r = compressionRatio { fields.append(("compression_ratio", .number(r))) }
        if let w = zlibRatio(.seqWrite), let r = zlibRatio(.seqRead) {
            fields.append(("warpfs_over_zlib", .line(.object([("sequential_write", .number(w)), ("sequential_read_cold", .number(r))]))))
        }
        var rows: [JSON] = []
        for w in Workload.allCases {
            for t in targets where results[t]?[w] != nil {
                let runs = (results[t]?[w] ?? []).map { m in
                    JSON.object([("mbps", .number(m.mbps)), ("iops", .number(m.iops)), ("p50_us", .number(m.p50us)),
                                 ("p99_us", .number(m.p99us)), ("cpu_s", .number(m.cpuSeconds))])
                }
                rows.append(.line(.object([("workload", .string(w.rawValue)), ("target", .string(t)), ("unit", .string(w.unit)),
                                           ("median", .number(value(t, w))), ("runs", .array(runs))])))
            }
        }
        fields.append(("results", .array(rows)))
        try writeText(path, JSON.object(fields).render() + "\n")
    }

    /// Bars per workload, each target's median as a ratio to "plain".
    func writeSVG(_ path: String) throws {
        let colors = ["#888888", "#4e79a7", "#e15759", "#59a14f", "#f28e2b"]
        let rowH = 26, barH = 18, left = 230, width = 760
        let rows = Workload.allCases.reduce(0) { n, w in n + targets.filter { results[$0]?[w] != nil }.count }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(left + width + 140)\" height=\"\(rows * rowH + 90)\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<text x=\"10\" y=\"20\" font-size=\"15\">warpfs bench (\(data)): median of each target relative to the backing file system</text>\n"
        var y = 40
        let maxRatio = Workload.allCases.flatMap { w in targets.map { value($0, w) / max(value("plain", w), 1e-9) } }.max() ?? 1
        let scale = Double(width) / max(maxRatio, 1)
        for w in Workload.allCases {
            s += "<text x=\"10\" y=\"\(y + 14)\" font-weight=\"bold\">\(w.title)</text>\n"
            for (i, t) in targets.enumerated() where results[t]?[w] != nil {
                let v = value(t, w), r = v / max(value("plain", w), 1e-9)
                let bw = max(1, Int(r * scale))
                s += "<text x=\"20\" y=\"\(y + 32)\">\(t.count > 30 ? String(t.suffix(30)) : t)</text>"
                s += "<rect x=\"\(left)\" y=\"\(y + 20)\" width=\"\(bw)\" height=\"\(barH)\" fill=\"\(colors[i % colors.count])\"/>"
                s += "<text x=\"\(left + bw + 6)\" y=\"\(y + 33)\">\(fmt(v, 1)) \(w.unit) (\(fmt(r, 2))x)</text>\n"
                y += rowH
            }
            y += 8
        }
        s += "<line x1=\"\(left + Int(scale))\" y1=\"35\" x2=\"\(left + Int(scale))\" y2=\"\(y)\" stroke=\"#000\" stroke-dasharray=\"4 3\"/>"
        s += "<text x=\"\(left + Int(scale) + 4)\" y=\"\(y + 14)\">= plain</text>\n</svg>\n"
        try writeText(path, s)
    }
}

/// Writes a result file; a failure is a usage error, as for the other options.
func writeText(_ path: String, _ s: String) throws {
    do { try writeFile(path, s) } catch { throw ValidationError(error.description) }
}

/// zlib called directly on the bench's data in 64 KiB blocks, on N threads:
/// the compression work the file system hands to the accelerator, without
/// the file system (the denominators of the throughput targets). Each thread
/// reuses its zlib streams and reads blocks in place, as the engines do, so
/// the baseline is not slowed by allocation.
enum ZlibBaseline {
    static func measure(_ pattern: [UInt8], sizeMiB: Int, level: Int, threads: Int) -> (compress: Double, decompress: Double) {
        let block = 64 << 10
        let blocks = max(1, (sizeMiB << 20) / block)
        let count = max(1, min(blocks, pattern.count / block))
        let data = ZlibBlocks(cycling: pattern, count: count, blockSize: block, level: level, windowBits: -15)   // raw deflate
        let zlib = ZlibThreads(threads: threads, blocks: data)
        return (zlib.run(.compress, blocks: blocks).mbps, zlib.run(.decompress, blocks: blocks).mbps)
    }
}
