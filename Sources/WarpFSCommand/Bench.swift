#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CWarpSys

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
        guard let d = opendir(dir) else { return nil }
        defer { closedir(d) }
        while let e = readdir(d) {
            let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard n == "seq" else { continue }
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
        var rng: UInt64 = 0x9E3779B97F4A7C15
        func next() -> UInt64 { rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27; return rng &* 0x2545F4914F6CDD1D }
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
                    guard let d = opendir(p) else { continue }
                    var names: [String] = []
                    while let e = readdir(d) {
                        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                        if name != "." && name != ".." { names.append(p + "/" + name) }
                    }
                    closedir(d)
                    stack += names.sorted(by: >)
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
            var x: UInt64 = 12345
            let blocks = UInt64(max(1, size / 4096))
            let r0 = wd_now_ns()
            for i in 0..<randomOps {
                x ^= x >> 12; x ^= x << 25; x ^= x >> 27
                let off = off_t(((x &* 0x2545F4914F6CDD1D) % blocks) * 4096)
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
            m.p50us = sorted[sorted.count / 2]
            m.p99us = sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]
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

    func median(_ t: String, _ w: Workload, _ key: (Measurement) -> Double) -> Double {
        let xs = (results[t]?[w] ?? []).map(key).sorted()
        guard !xs.isEmpty else { return 0 }
        return xs.count % 2 == 1 ? xs[xs.count / 2] : (xs[xs.count / 2 - 1] + xs[xs.count / 2]) / 2
    }

    func value(_ t: String, _ w: Workload) -> Double { median(t, w) { w.unit == "MB/s" ? $0.mbps : $0.iops } }

    func table() -> String {
        var s = "\n" + col("workload", 30) + col("target", 20) + col("value", 14) + col("p50 µs", 10) + col("p99 µs", 10)
            + col("CPU s", 8) + col("/plain", 8) + col("/nocompress", 12) + "\n"
        for w in Workload.allCases {
            for t in targets where results[t]?[w] != nil {
                let v = value(t, w)
                let plain = value("plain", w), nc = value("warpfs-nocompress", w)
                s += col(w.title, 30) + col(t.count > 19 ? String(t.suffix(19)) : t, 20) + col(num(v) + " " + w.unit, 14)
                    + col(num(median(t, w) { $0.p50us }), 10) + col(num(median(t, w) { $0.p99us }), 10)
                    + col(num(median(t, w) { $0.cpuSeconds }, 2), 8)
                    + col(plain > 0 ? num(v / plain, 3) : "-", 8) + col(nc > 0 ? num(v / nc, 3) : "-", 12) + "\n"
            }
        }
        if let r = compressionRatio { s += "\ncompression ratio achieved by warpfs on the sequential file: \(num(r, 2)):1 (logical / allocated)\n" }
        for w in [Workload.seqWrite, .seqRead] {
            if let r = zlibRatio(w) { s += "warpfs / zlib-2-threads, \(w.title): \(num(r, 3)) (median of the runs' ratios)\n" }
        }
        return s
    }

    /// Median over runs of warpfs's figure divided by zlib's in the same run.
    func zlibRatio(_ w: Workload) -> Double? {
        guard let a = results["warpfs"]?[w], let z = results["zlib-2-threads"]?[w], !a.isEmpty, a.count == z.count else { return nil }
        let r = zip(a, z).map { $0.mbps / max($1.mbps, 1e-9) }.sorted()
        return r.count % 2 == 1 ? r[r.count / 2] : (r[r.count / 2 - 1] + r[r.count / 2]) / 2
    }

    func writeJSON(_ path: String) throws {
        var s = "{\n  \"data\": \"\(data)\",\n"
        if let r = compressionRatio { s += "  \"compression_ratio\": \(r),\n" }
        if let w = zlibRatio(.seqWrite), let r = zlibRatio(.seqRead) {
            s += "  \"warpfs_over_zlib\": {\"sequential_write\": \(w), \"sequential_read_cold\": \(r)},\n"
        }
        s += "  \"results\": [\n"
        var rows: [String] = []
        for w in Workload.allCases {
            for t in targets where results[t]?[w] != nil {
                let runs = (results[t]?[w] ?? []).map { "{\"mbps\": \($0.mbps), \"iops\": \($0.iops), \"p50_us\": \($0.p50us), \"p99_us\": \($0.p99us), \"cpu_s\": \($0.cpuSeconds)}" }
                rows.append("    {\"workload\": \"\(w.rawValue)\", \"target\": \"\(t)\", \"unit\": \"\(w.unit)\", \"median\": \(value(t, w)), "
                    + "\"runs\": [\(runs.joined(separator: ", "))]}")
            }
        }
        s += rows.joined(separator: ",\n") + "\n  ]\n}\n"
        try writeText(path, s)
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
                s += "<text x=\"\(left + bw + 6)\" y=\"\(y + 33)\">\(num(v)) \(w.unit) (\(num(r, 2))x)</text>\n"
                y += rowH
            }
            y += 8
        }
        s += "<line x1=\"\(left + Int(scale))\" y1=\"35\" x2=\"\(left + Int(scale))\" y2=\"\(y)\" stroke=\"#000\" stroke-dasharray=\"4 3\"/>"
        s += "<text x=\"\(left + Int(scale) + 4)\" y=\"\(y + 14)\">= plain</text>\n</svg>\n"
        try writeText(path, s)
    }
}

func writeText(_ path: String, _ s: String) throws {
    guard let f = fopen(path, "w") else { throw ValidationError("cannot write \(path)") }
    fputs(s, f)
    fclose(f)
}

func col(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }

func num(_ x: Double, _ digits: Int = 1) -> String {
    guard x.isFinite else { return "-" }
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([x]) { vsnprintf(&buf, 64, "%.\(digits)f", $0) }
    return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
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
        final class Shared: @unchecked Sendable {
            let pattern: [UInt8]
            var streams: [[UInt8]] = []
            init(_ p: [UInt8]) { pattern = p }
        }
        let shared = Shared(pattern)
        let setup = ZlibCoder(level: level, blockSize: block)
        shared.streams = (0..<count).map { k in
            pattern.withUnsafeBytes { p in
                let n = setup.compress(UnsafeRawBufferPointer(rebasing: p[(k * block)..<((k + 1) * block)]))
                return Array(setup.output[0..<n])
            }
        }
        func timed(_ work: @escaping @Sendable (Int) -> Void) -> Double {
            let t0 = wd_now_ns()
            var ts: [pthread_t] = []
            final class W: @unchecked Sendable { let f: () -> Void; init(_ f: @escaping () -> Void) { self.f = f } }
            for t in 0..<threads {
                let w = Unmanaged.passRetained(W { work(t) })
                var th = pthread_t()
                pthread_create(&th, nil, { a in Unmanaged<W>.fromOpaque(a!).takeRetainedValue().f(); return nil }, w.toOpaque())
                ts.append(th)
            }
            for th in ts { pthread_join(th, nil) }
            return Double(blocks * block) / (Double(wd_now_ns() - t0) / 1e9) / 1e6
        }
        let c = timed { t in
            let coder = ZlibCoder(level: level, blockSize: block)
            shared.pattern.withUnsafeBytes { p in
                for k in stride(from: t, to: blocks, by: threads) {
                    let i = k % count
                    _ = coder.compress(UnsafeRawBufferPointer(rebasing: p[(i * block)..<((i + 1) * block)]))
                }
            }
        }
        let d = timed { t in
            let coder = ZlibCoder(level: level, blockSize: block)
            for k in stride(from: t, to: blocks, by: threads) {
                shared.streams[k % count].withUnsafeBytes { _ = coder.decompress($0) }
            }
        }
        return (c, d)
    }
}

/// Raw deflate and inflate streams reused across blocks (reset, not re-created).
final class ZlibCoder {
    private var d = z_stream(), i = z_stream()
    let output: UnsafeMutableRawBufferPointer

    init(level: Int, blockSize: Int) {
        _ = wd_deflate_init2(&d, Int32(level), -15, 8, Z_DEFAULT_STRATEGY)
        _ = wd_inflate_init2(&i, -15)
        output = .allocate(byteCount: blockSize + 1024, alignment: 64)
    }

    deinit { deflateEnd(&d); inflateEnd(&i); output.deallocate() }

    /// Compresses `src` into `output`; returns the length.
    func compress(_ src: UnsafeRawBufferPointer) -> Int {
        deflateReset(&d)
        return run(&d, src) { deflate(&$0, Z_FINISH) }
    }

    /// Inflates `src` into `output`; returns the length.
    func decompress(_ src: UnsafeRawBufferPointer) -> Int {
        inflateReset(&i)
        return run(&i, src) { inflate(&$0, Z_FINISH) }
    }

    private func run(_ s: inout z_stream, _ src: UnsafeRawBufferPointer, _ step: (inout z_stream) -> Int32) -> Int {
        s.next_in = UnsafeMutablePointer(mutating: src.baseAddress?.assumingMemoryBound(to: UInt8.self))
        s.avail_in = UInt32(src.count)
        s.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        s.avail_out = UInt32(output.count)
        _ = step(&s)
        return output.count - Int(s.avail_out)
    }
}
