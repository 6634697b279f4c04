#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys

/// How a target's cold reads, CPU time and allocated space are measured.
struct TargetMethods {
    var cold: String
    var cpu: String
    var space: String
}

/// The medians, the ratios, and the files a person can open.
struct BenchReport {
    let data: String
    let dataDescription: String
    let command: String
    let targets: [String]
    let results: [String: [Workload: [Measurement]]]
    /// Space taken by each run's sequential file, per target.
    let spaces: [String: [SpaceUse]]
    let methods: [String: TargetMethods]
    /// Targets asked for that could not run here, and why.
    let skipped: [(target: String, reason: String)]

    /// The btrfs targets that ran.
    var btrfsTargets: [String] { targets.filter { $0.hasPrefix("btrfs-") && results[$0] != nil } }

    /// The median over the runs; 0 when there are none.
    func median(_ t: String, _ w: Workload, _ key: (Measurement) -> Double) -> Double {
        let xs = (results[t]?[w] ?? []).map(key)
        return xs.isEmpty ? 0 : BenchSupport.median(xs)
    }

    func value(_ t: String, _ w: Workload) -> Double { median(t, w) { w.figure($0) } }

    /// Median over the runs of the target's logical size over allocated space; nil when not measured.
    func compression(_ t: String) -> (ratio: Double, logical: Double, allocated: Double, dataOnly: Double?)? {
        guard let s = spaces[t], !s.isEmpty else { return nil }
        let dataOnly = s.compactMap(\.dataOnlyRatio)
        return (BenchSupport.median(s.map(\.ratio)), BenchSupport.median(s.map { Double($0.logical) }),
                BenchSupport.median(s.map { Double($0.allocated) }), dataOnly.isEmpty ? nil : BenchSupport.median(dataOnly))
    }

    /// The warpfs target's compression ratio.
    var compressionRatio: Double? { compression("warpfs")?.ratio }

    /// Median over runs of `a`'s figure divided by `b`'s in the same run:
    /// the pairs are taken in the same round, which cancels much of this
    /// machine's drift.
    func pairedRatio(_ a: String, _ b: String, _ w: Workload) -> Double? {
        guard let x = results[a]?[w], let y = results[b]?[w], !x.isEmpty, x.count == y.count else { return nil }
        return BenchSupport.median(zip(x, y).map { w.figure($0) / max(w.figure($1), 1e-9) })
    }

    static let columns = Columns([.left(30), .left(20), .left(17), .left(10), .left(10), .left(8), .left(8), .left(12)])

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
        let btrfs = btrfsTargets
        if !btrfs.isEmpty && results["warpfs"] != nil {
            s += "\nwarpfs / btrfs (median of the runs' ratios, each run's pair measured in the same round):\n"
            let cols = Columns([.left(30)] + btrfs.map { _ in .left(16) })
            s += cols.line(["workload"] + btrfs.map { "/" + $0 }) + "\n"
            for w in Workload.allCases {
                s += cols.line([w.title] + btrfs.map { b in pairedRatio("warpfs", b, w).map { fmt($0, 3) } ?? "-" }) + "\n"
            }
        }
        let measured = targets.filter { compression($0) != nil }
        if !measured.isEmpty {
            s += "\ncompression of the sequential file (logical size / allocated space, median of the runs):\n"
            let cols = Columns([.left(20), .left(10), .left(13), .left(15), .left(30)])
            s += cols.line(["target", "ratio", "logical MiB", "allocated MiB", "data only (compsize)"]) + "\n"
            for t in measured {
                guard let c = compression(t) else { continue }
                s += cols.line([t.count > 19 ? String(t.suffix(19)) : t, fmt(c.ratio, 3), fmt(c.logical / 1048576, 1),
                                fmt(c.allocated / 1048576, 1), c.dataOnly.map { fmt($0, 3) } ?? ""]) + "\n"
            }
        }
        for w in [Workload.seqWrite, .seqRead] {
            if let r = pairedRatio("warpfs", "zlib-2-threads", w) { s += "warpfs / zlib-2-threads, \(w.title): \(fmt(r, 3)) (median of the runs' ratios)\n" }
        }
        s += "\nhow each target is measured:\n"
        for t in targets {
            guard let m = methods[t] else { continue }
            s += "  \(t): cold reads: \(m.cold); CPU s: \(m.cpu); space: \(m.space)\n"
        }
        for k in skipped { s += "  \(k.target): not measured: \(k.reason)\n" }
        return s
    }

    func writeJSON(_ path: String) throws {
        var fields: [(String, JSON)] = [("data", .string(data)), ("data_description", .string(dataDescription)), ("command", .string(command))]
        if let r = compressionRatio { fields.append(("compression_ratio", .number(r))) }
        if let w = pairedRatio("warpfs", "zlib-2-threads", .seqWrite), let r = pairedRatio("warpfs", "zlib-2-threads", .seqRead) {
            fields.append(("warpfs_over_zlib", .line(.object([("sequential_write", .number(w)), ("sequential_read_cold", .number(r))]))))
        }
        let btrfs = btrfsTargets
        if !btrfs.isEmpty && results["warpfs"] != nil {
            fields.append(("warpfs_over_btrfs", .object(btrfs.map { b in
                (b, .line(.object(Workload.allCases.map { w in (w.rawValue, pairedRatio("warpfs", b, w).map(JSON.number) ?? .number(.nan)) })))
            })))
        }
        var described: [JSON] = []
        for t in targets {
            var o: [(String, JSON)] = [("name", .string(t))]
            if let m = methods[t] { o += [("cold_reads", .string(m.cold)), ("cpu", .string(m.cpu)), ("space", .string(m.space))] }
            if let c = compression(t) {
                o += [("compression_ratio", .number(c.ratio)), ("logical_bytes", .number(c.logical)), ("allocated_bytes", .number(c.allocated))]
                if let d = c.dataOnly { o.append(("data_only_compression_ratio", .number(d))) }
            }
            described.append(.line(.object(o)))
        }
        fields.append(("targets", .array(described)))
        fields.append(("skipped", .array(skipped.map { .line(.object([("target", .string($0.target)), ("reason", .string($0.reason))])) })))
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

    /// A bar per target and workload, each target's median as a ratio to
    /// "plain"; then a bar per target for the compression it achieved.
    func writeSVG(_ path: String) throws {
        let colors = ["#888888", "#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"]
        let rowH = 26, barH = 18, left = 230, width = 760
        let compressed = targets.filter { compression($0) != nil }
        let rows = Workload.allCases.reduce(0) { n, w in n + targets.filter { results[$0]?[w] != nil }.count } + compressed.count
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(left + width + 160)\" height=\"\(rows * rowH + 150)\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<text x=\"10\" y=\"20\" font-size=\"15\">warpfs bench (\(xmlEscape(data))): median of each target relative to the backing file system</text>\n"
        var y = 40
        let maxRatio = Workload.allCases.flatMap { w in targets.map { value($0, w) / max(value("plain", w), 1e-9) } }.filter(\.isFinite).max() ?? 1
        let scale = Double(width) / max(maxRatio, 1)
        func bar(_ i: Int, _ label: String, _ length: Double, _ text: String) {
            let bw = max(1, Int(length))
            s += "<text x=\"20\" y=\"\(y + 32)\">\(xmlEscape(label.count > 30 ? String(label.suffix(30)) : label))</text>"
            s += "<rect x=\"\(left)\" y=\"\(y + 20)\" width=\"\(bw)\" height=\"\(barH)\" fill=\"\(colors[i % colors.count])\"/>"
            s += "<text x=\"\(left + bw + 6)\" y=\"\(y + 33)\">\(xmlEscape(text))</text>\n"
            y += rowH
        }
        for w in Workload.allCases {
            s += "<text x=\"10\" y=\"\(y + 14)\" font-weight=\"bold\">\(w.title)</text>\n"
            for (i, t) in targets.enumerated() where results[t]?[w] != nil {
                let v = value(t, w), r = v / max(value("plain", w), 1e-9)
                bar(i, t, r.isFinite ? r * scale : 0, "\(fmt(v, 1)) \(w.unit) (\(fmt(r, 2))x)")
            }
            y += 8
        }
        s += "<line x1=\"\(left + Int(scale))\" y1=\"35\" x2=\"\(left + Int(scale))\" y2=\"\(y)\" stroke=\"#000\" stroke-dasharray=\"4 3\"/>"
        s += "<text x=\"\(left + Int(scale) + 4)\" y=\"\(y + 14)\">= plain</text>\n"
        if !compressed.isEmpty {
            y += 24
            s += "<text x=\"10\" y=\"\(y + 14)\" font-weight=\"bold\">compression achieved: logical size / allocated space</text>\n"
            let maxC = compressed.compactMap { compression($0)?.ratio }.filter(\.isFinite).max() ?? 1
            for (i, t) in targets.enumerated() {
                guard let c = compression(t) else { continue }
                bar(i, t, c.ratio.isFinite ? c.ratio / max(maxC, 1) * Double(width) : 0, "\(fmt(c.ratio, 2)):1")
            }
        }
        s += "</svg>\n"
        try writeText(path, s)
    }
}

/// `s` with XML's special characters escaped.
func xmlEscape(_ s: String) -> String {
    var out = ""
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        default: out.append(c)
        }
    }
    return out
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
