#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys

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
