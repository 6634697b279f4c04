#if canImport(Glibc)
import Glibc
#endif
import BenchSupport

// MARK: - Helpers

/// Prints a line and flushes, so progress shows when stdout is a pipe.
func out(_ s: String) {
    print(s)
    fflush(nil)
}

func signed(_ x: Double) -> String { (x >= 0 ? "+" : "") + fmt(x, 2) }

func mib(_ bytes: Int) -> String { fmt(Double(bytes) / Double(1 << 20), 1) }

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
        guard let names = directoryNames(dir) else { continue }
        for name in names {
            let path = dir + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            if st.st_mode & 0o170000 == 0o040000 {
                if recursive { stack.append(path) }
                continue
            }
            if match(name) { found.append(path) }
        }
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
