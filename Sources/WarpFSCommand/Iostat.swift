#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys
import WarpFSCore

/// `warpfs iostat MNT [INTERVAL [COUNT]]`: a running mount's figures, one
/// line per interval, as `zpool iostat` shows a pool's. Reads the mount
/// root's `user.warpfs.stats` record (`IOStatistics.Snapshot`): the first
/// line covers the time since mount, each later one the interval before it.
struct Iostat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a running mount's I/O, codec, cache and error figures, one line per interval.",
        discussion: """
        The first line covers the time since the mount started, each later line the INTERVAL before it; \
        without INTERVAL one line is printed; without COUNT lines follow until interrupted. Columns: \
        read, write = bytes applications read and wrote through the file system (reads the kernel serves \
        from its page cache do not reach it); compress in, out and decompress in, out = bytes into and out \
        of the accelerator's engines; ratio = content stored by write-back over the payload bytes written \
        for it (raw blocks included, holes not); in flight = compression and decompression requests \
        submitted and not yet finished (c-fly, d-fly), at the end of the line's interval; busy = the engines' busy time \
        over engines times the interval (- when a warpdrived serves the mount); cache hit, miss = block \
        reads the mount's block cache served at once or had to wait for (read and decompressed); eio, nospc = EIO \
        and ENOSPC (or EDQUOT) \
        replies to applications; fail, retry = accelerator requests failed and sent again. \
        The figures come from the read-only attribute user.warpfs.stats of the mount's root, which anyone \
        who may read that directory can read (docs/SYSTEM.md).
        """)

    @Argument(help: ArgumentHelp("A WarpFS mount point (or a path on one).", valueName: "mountpoint")) var mountpoint: String
    @Argument(help: ArgumentHelp("Seconds between lines.", valueName: "interval")) var interval: Double?
    @Argument(help: ArgumentHelp("How many lines, the first included.", valueName: "count")) var count: Int?
    @Flag(help: "One JSON object per line, with every figure of the record.") var json = false
    @Flag(name: [.customShort("p"), .customLong("exact")], help: "Exact numbers instead of K, M, G.") var exact = false

    func validate() throws {
        if let interval, !(interval > 0 && interval < 1e6) { throw ValidationError("INTERVAL must be a positive number of seconds") }
        if let count, count < 1 { throw ValidationError("COUNT must be at least 1") }
    }

    func run() throws {
        let mnt = try Self.mountRoot(mountpoint)
        var previous = try Self.read(mnt)
        var lines = 0
        let report = IostatReport(mountpoint: mnt, json: json, exact: exact)
        if !json { emit(report.header) }
        emit(report.line(previous, first: true))
        lines += 1
        guard let interval else { return }
        let step = UInt64(interval * 1e9)
        var next = wd_now_ns() + step
        while count.map({ lines < $0 }) ?? true {
            Self.sleep(until: next)
            next += step
            let now = try Self.read(mnt)
            emit(report.line(now.delta(since: previous), first: false))
            previous = now
            lines += 1
        }
    }

    private func emit(_ line: String) {
        print(line)
        fflush(nil)
    }

    /// The mount point of the WarpFS mount `path` is on; a clear error when
    /// it is on none.
    static func mountRoot(_ path: String) throws -> String {
        guard let real = canonical(path) else {
            throw IostatFailure(description: "'\(path)' does not exist")
        }
        guard let m = StatsPlace.mountContaining(real) else {
            throw IostatFailure(description: "'\(real)' is not on a WarpFS mount (no fuse.warpfs mount holds it in /proc/self/mountinfo)")
        }
        return m.mountpoint
    }

    /// The mount's record now.
    static func read(_ mnt: String) throws -> IOStatistics.Snapshot {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = getxattr(mnt, WarpFileSystem.statsAttribute, &buf, buf.count)
        guard n >= 0 else {
            let e = errno
            switch e {
            case ENODATA, EOPNOTSUPP:
                throw IostatFailure(description: "the WarpFS mount at \(mnt) publishes no statistics (\(WarpFileSystem.statsAttribute)): "
                    + "it was mounted by a warpfs without them")
            case EACCES, EPERM:
                throw IostatFailure(description: "cannot read the statistics of the WarpFS mount at \(mnt): \(String(cString: strerror(e))) "
                    + "(reading them needs read permission on the mount's root directory, and a mount without allow_other "
                    + "admits only the user who mounted it)")
            default:
                throw IostatFailure(description: "cannot read the statistics of the WarpFS mount at \(mnt): \(String(cString: strerror(e)))")
            }
        }
        guard let s = IOStatistics.Snapshot(record: String(decoding: buf[0..<n], as: UTF8.self)) else {
            throw IostatFailure(description: "the WarpFS mount at \(mnt) publishes statistics in a format this warpfs does not read "
                + "(expected '\(IOStatistics.Snapshot.magic) \(IOStatistics.Snapshot.version)')")
        }
        return s
    }

    /// Sleeps until `deadline` on the monotonic clock (lines keep their pace).
    static func sleep(until deadline: UInt64) {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
}

/// Why `warpfs iostat` cannot show a mount (printed as "Error: ...", exit 1).
struct IostatFailure: Error, CustomStringConvertible {
    let description: String
}

/// The lines of `warpfs iostat`: a table or JSON objects.
struct IostatReport {
    let mountpoint: String
    let json: Bool
    let exact: Bool

    typealias Key = IOStatistics.Snapshot.Key

    /// The two header lines of the table (column groups, then columns).
    var header: String {
        func group(_ title: String, _ width: Int) -> String {
            let dashes = width - title.count - 2
            // Too narrow for dashes on both sides: the title alone, right-aligned.
            guard dashes >= 2 else { return String(repeating: " ", count: max(0, width - title.count)) + title }
            return String(repeating: "-", count: dashes / 2) + " " + title + " " + String(repeating: "-", count: dashes - dashes / 2)
        }
        let groups = [group("file system", 2 * w), group("compress", 3 * w), group("decompress", 2 * w), group("engines", 3 * w),
                      group("cache", 2 * w), group("errors", 4 * w)]
        let names = ["read", "write", "in", "out", "ratio", "in", "out", "c-fly", "d-fly", "busy", "hit", "miss",
                     "eio", "nospc", "fail", "retry"]
        return groups.joined(separator: " ") + "\n" + cells(names)
    }

    /// Column width.
    private var w: Int { exact ? 12 : 7 }

    private func cells(_ values: [String]) -> String {
        // Groups are separated by one more space, as in the header.
        let groupEnds: Set<Int> = [1, 4, 6, 9, 11]
        var out = ""
        for (i, v) in values.enumerated() {
            out += String(repeating: " ", count: max(0, w - v.count)) + v
            if groupEnds.contains(i) { out += " " }
        }
        return out
    }

    /// One line: `s` covers the time since mount (`first`) or one interval.
    func line(_ s: IOStatistics.Snapshot, first: Bool) -> String {
        if json { return jsonLine(s, first: first) }
        func n(_ k: Key) -> String { number(s[k] ?? 0) }
        let ratio = s.ratio.map { String(format2: $0) } ?? "-"
        let busy = s.engineBusyShare.map { "\(Int(($0 * 100).rounded()))%" } ?? "-"
        let nospc = (s[.enospc] ?? 0) + (s[.edquot] ?? 0)
        return cells([n(.readBytes), n(.writeBytes), n(.compressIn), n(.compressOut), ratio, n(.decompressIn), n(.decompressOut),
                      n(.compressInFlight), n(.decompressInFlight), busy, n(.cacheHits), n(.cacheMisses),
                      n(.eio), number(nospc), n(.acceleratorFailures), n(.acceleratorRetries)])
    }

    /// One JSON object: the mount, what the line covers, every figure of the
    /// record by its key, and the ratio and busy share (null when unknown).
    private func jsonLine(_ s: IOStatistics.Snapshot, first: Bool) -> String {
        var fields: [(String, JSON)] = [
            ("mountpoint", .string(mountpoint)),
            ("covers", .string(first ? "since_mount" : "interval")),
            ("seconds", .number(Double(s.uptimeNanoseconds) / 1e9)),
        ]
        for k in s.keys where k != .uptime { fields.append((k.name, .int(Int(clamping: s[k]!)))) }
        fields.append(("ratio", .number(s.ratio ?? .nan)))
        fields.append(("engine_busy", .number(s.engineBusyShare ?? .nan)))
        return JSON.line(.object(fields)).render()
    }

    /// `n` exactly, or in at most about four characters: 512, 4.5K, 45K, 1.2M.
    func number(_ n: UInt64) -> String {
        if exact || n < 1024 { return "\(n)" }
        var v = Double(n)
        var unit = 0
        let units = ["", "K", "M", "G", "T", "P", "E"]
        while v >= 1024 && unit < units.count - 1 { v /= 1024; unit += 1 }
        return (v < 10 ? String(format1: v) : "\(Int(v.rounded(.down)))") + units[unit]
    }
}

extension String {
    /// `x` with one decimal.
    init(format1 x: Double) {
        let tenths = Int((x * 10).rounded(.down))
        self = "\(tenths / 10).\(tenths % 10)"
    }

    /// `x` with two decimals.
    init(format2 x: Double) {
        let hundredths = Int((x * 100).rounded())
        self = "\(hundredths / 100)." + (hundredths % 100 < 10 ? "0" : "") + "\(hundredths % 100)"
    }
}
