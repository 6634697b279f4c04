#if canImport(Glibc)
import Glibc
#endif
import WarpDrive

// MARK: - Helpers

struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func eprint(_ message: String) {
    var m = message + "\n"
    m.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func die(_ message: String) -> Never {
    eprint("warpdrive-bench: FAILED: " + message)
    exit(2)
}

/// Prints a line and flushes, so progress shows when stdout is a pipe.
func out(_ s: String) {
    print(s)
    fflush(nil)
}

final class ThreadBody: @unchecked Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

func spawn(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var t = pthread_t()
    let rc = pthread_create(&t, nil, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
    }, box)
    if rc != 0 { die("pthread_create failed: \(rc)") }
    return t
}

func sleepSeconds(_ s: Double) {
    var ts = timespec(tv_sec: Int(s), tv_nsec: Int((s - Double(Int(s))) * 1e9))
    var rem = timespec()
    while nanosleep(&ts, &rem) != 0 && errno == EINTR { ts = rem }
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    let m = s.count / 2
    return s.count % 2 == 1 ? s[m] : (s[m - 1] + s[m]) / 2
}

/// Nearest-rank percentile of sorted values.
func percentileSorted(_ s: [Double], _ p: Double) -> Double {
    guard !s.isEmpty else { return .nan }
    let rank = Int((p * Double(s.count)).rounded(.up))
    return s[min(max(rank, 1), s.count) - 1]
}

func fmt(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "-" }
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([Int32(digits), x]) { vsnprintf(&buf, 64, "%.*f", $0) }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func signed(_ x: Double) -> String { (x >= 0 ? "+" : "") + fmt(x, 2) }

func mib(_ bytes: Int) -> String { fmt(Double(bytes) / Double(1 << 20), 1) }

func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }

func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? " " + s : String(repeating: " ", count: w - s.count) + s }

func shellQuote(_ a: String) -> String {
    let safe = a.utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || "_./=,:-+@%".utf8.contains(c)
    }
    if safe && !a.isEmpty { return a }
    return "'" + a.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "'\\''") + "'"
}

/// Files (by lstat: symbolic links to files are included, symbolic links to
/// directories are not followed) whose name matches, sorted.
func listFiles(_ root: String, recursive: Bool, _ match: (String) -> Bool) -> [String] {
    var found: [String] = []
    var stack = [root]
    while let dir = stack.popLast() {
        guard let h = opendir(dir) else { continue }
        while let e = readdir(h) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            let path = dir + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            if st.st_mode & 0o170000 == 0o040000 {
                if recursive { stack.append(path) }
                continue
            }
            if match(name) { found.append(path) }
        }
        closedir(h)
    }
    return found.sorted()
}

/// Reads up to `limit` bytes of the file at `path` into `dst`; 0 when unreadable.
func readFile(_ path: String, into dst: UnsafeMutableRawPointer, limit: Int) -> Int {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { close(fd) }
    var n = 0
    while n < limit {
        let r = read(fd, dst + n, limit - n)
        if r < 0 && errno == EINTR { continue }
        if r < 0 { return 0 }   // unreadable: skip the file entirely
        if r == 0 { break }
        n += r
    }
    return n
}

func cpuModel() -> String {
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    let n = buf.withUnsafeMutableBytes { readFile("/proc/cpuinfo", into: $0.baseAddress!, limit: $0.count) }
    let text = String(decoding: buf[0..<n], as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        if let colon = line.firstIndex(of: ":") { return String(line[line.index(after: colon)...].trimmingSpaces) }
    }
    return "unknown CPU"
}

func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw BenchFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var t = text
    try t.withUTF8 { b in
        var off = 0
        while off < b.count {
            let r = write(fd, b.baseAddress! + off, b.count - off)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw BenchFailure("writing \(path): \(String(cString: strerror(errno)))") }
            off += r
        }
    }
}

/// A minimal JSON value and writer.
indirect enum JSON {
    case number(Double), int(Int), string(String), bool(Bool), array([JSON]), object([(String, JSON)])

    func render(_ indent: String = "") -> String {
        switch self {
        case .number(let x): return x.isFinite ? "\(x)" : "null"
        case .int(let i): return "\(i)"
        case .bool(let b): return b ? "true" : "false"
        case .string(let s): return JSON.quote(s)
        case .array(let xs):
            if xs.allSatisfy({ if case .number = $0 { return true }; if case .int = $0 { return true }; return false }) {
                return "[" + xs.map { $0.render() }.joined(separator: ", ") + "]"
            }
            let inner = indent + "  "
            return "[\n" + xs.map { inner + $0.render(inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let fields):
            let inner = indent + "  "
            return "{\n" + fields.map { inner + JSON.quote($0.0) + ": " + $0.1.render(inner) }.joined(separator: ",\n")
                + "\n" + indent + "}"
        }
    }

    /// A JSON string literal (the same quoting as `warpfs devices --json`).
    static func quote(_ s: String) -> String { DeviceReportFormat.string(s) }
}
