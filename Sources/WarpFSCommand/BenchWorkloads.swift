#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys

/// The data the workloads write, repeated when shorter than the
/// sequential file: an 8 MiB synthetic pattern, or up to --size MiB of a
/// file, of a directory's files, or of the system corpus.
struct BenchData {
    let bytes: [UInt8]
    let description: String

    /// The directories of the system corpus, in this order, each sorted by name.
    static let systemTrees = ["usr/share/doc", "usr/share/man", "usr/lib"]

    static func make(_ spec: String, sizeMiB: Int, work: String) throws -> BenchData {
        let n = 8 << 20, limit = max(1, sizeMiB) << 20
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
        case "system":
            let (path, note) = try systemCorpus(bytes: limit, work: work)
            let out = try read(path, limit: limit)
            return BenchData(bytes: out, description: "tar of /\(systemTrees.joined(separator: ", /")) cut to \(fmt(Double(out.count) / 1048576, 1)) MiB, \(note) \(path)")
        default:
            guard isDirectory(spec) || access(spec, R_OK) == 0 else {
                throw ValidationError("--data '\(spec)': expected incompressible, 2:1, 4:1, zeros, system or a readable path")
            }
            let out = try read(spec, limit: limit)
            return BenchData(bytes: out, description: "files of \(spec), \(fmt(Double(out.count) / 1048576, 1)) MiB pattern")
        }
    }

    /// Up to `limit` bytes of the file at `path`, or of the regular files
    /// under it (depth first, names sorted).
    static func read(_ path: String, limit: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 20)
        var stack = [path]
        while let p = stack.popLast(), out.count < limit {
            var st = stat()
            guard stat(p, &st) == 0 else { continue }
            if st.st_mode & S_IFMT == S_IFDIR {
                guard let names = directoryNames(p) else { continue }
                stack += names.map { p + "/" + $0 }.sorted(by: >)
            } else if st.st_mode & S_IFMT == S_IFREG {
                let fd = open(p, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { continue }
                if out.isEmpty { out.reserveCapacity(min(limit, Int(st.st_size))) }
                while out.count < limit {
                    let r = Glibc.read(fd, &buf, min(buf.count, limit - out.count))
                    if r <= 0 { break }
                    out += buf[0..<r]
                }
                close(fd)
            }
        }
        guard !out.isEmpty else { throw ValidationError("--data '\(path)': no readable data") }
        return out
    }

    /// The system corpus: `tar` of `systemTrees` (names sorted, owners and
    /// times zeroed, so the same installed files give the same bytes) cut
    /// to `bytes`, built once under `work` and reused. Returns its path
    /// and whether it was built or reused.
    static func systemCorpus(bytes: Int, work: String) throws -> (String, String) {
        let path = work + "/warpfs-bench-system-\(bytes >> 20)MiB.tar"
        if access(path, R_OK) == 0 { return (path, "reused") }
        guard let tar = findProgram("tar") else { throw ValidationError("--data system: tar not found (Debian package tar)") }
        let part = path + ".part-\(getpid())"
        let id = Cleanup.shared.add { unlink(part) }
        defer { Cleanup.shared.run(id) }
        progress("building \(path) (tar of /\(systemTrees.joined(separator: ", /")), first \(bytes >> 20) MiB)")
        let quoted = { (s: String) in "'" + s.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'" }
        let script = "\(quoted(tar)) --sort=name --format=gnu --owner=0 --group=0 --numeric-owner --mtime=@0 "
            + "--ignore-failed-read --warning=none -cf - -C / \(systemTrees.joined(separator: " ")) 2>/dev/null "
            + "| head -c \(bytes) > \(quoted(part))"
        let r = runCapturing("/bin/sh", ["-c", script])
        progress("")
        var st = stat()
        guard r.succeeded, stat(part, &st) == 0, st.st_size > 0 else {
            throw ValidationError("--data system: building \(path) failed: \(r.lastLine)")
        }
        guard rename(part, path) == 0 else {
            throw ValidationError("--data system: cannot rename to \(path): \(String(cString: strerror(errno)))")
        }
        return (path, "built")
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
    /// The figure of a run this workload is judged by (MB/s, IOPS or files/s).
    func figure(_ m: Measurement) -> Double { unit == "MB/s" ? m.mbps : m.iops }

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
            defer { close(fd) }
            var off = 0
            while off < size {
                try Cleanup.shared.checkInterrupted()
                let s = wd_now_ns()
                let n = pattern.bytes.withUnsafeBytes { b in pwrite(fd, b.baseAddress! + (off % b.count), min(1 << 20, b.count - off % b.count), off_t(off)) }
                guard n > 0 else { throw ValidationError("\(t.name): write failed: \(String(cString: strerror(errno)))") }
                lat.append(Double(wd_now_ns() - s) / 1000)
                off += n
            }
            fsync(fd)
            m.mbps = Double(size) / (Double(wd_now_ns() - t0) / 1e9) / 1e6
        case .seqRead:
            try t.makeCold()
            let c0 = t.cpuSeconds, r0 = wd_now_ns()
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw ValidationError("\(t.name): cannot open \(path)") }
            defer { close(fd) }
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            var total = 0
            while true {
                try Cleanup.shared.checkInterrupted()
                let s = wd_now_ns()
                let n = read(fd, &buf, buf.count)
                if n <= 0 { break }
                lat.append(Double(wd_now_ns() - s) / 1000)
                total += n
            }
            m.mbps = Double(total) / (Double(wd_now_ns() - r0) / 1e9) / 1e6
            m.cpuSeconds = t.cpuSeconds - c0
        case .randRead, .randWrite:
            let fd = open(path, self == .randRead ? O_RDONLY : O_RDWR)
            guard fd >= 0 else { throw ValidationError("\(t.name): cannot open \(path)") }
            defer { close(fd) }
            var buf = [UInt8](repeating: 0, count: 4096)
            if self == .randRead { while read(fd, &buf, 4096) > 0 { try Cleanup.shared.checkInterrupted() } }   // warm
            var x = XorShift(seed: 12345)
            let blocks = UInt64(max(1, size / 4096))
            let r0 = wd_now_ns()
            for i in 0..<randomOps {
                try Cleanup.shared.checkInterrupted()
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
            m.iops = Double(randomOps) / (Double(wd_now_ns() - r0) / 1e9)
        case .smallFiles:
            let d = t.dir + "/small"
            mkdir(d, 0o755)
            var buf = [UInt8](repeating: 0, count: 16384)
            for i in 0..<files {
                try Cleanup.shared.checkInterrupted()
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
