// Reading directories and writing result files.
#if canImport(Glibc)
import Glibc
import CWarpSys
#endif

/// The names in the directory at `path`, without "." and "..", in the
/// order readdir gives them; nil when it cannot be opened.
public func directoryNames(_ path: String) -> [String]? {
    guard let d = opendir(path) else { return nil }
    defer { closedir(d) }
    var names: [String] = []
    while let e = readdir(d) {
        let name = String(cString: wd_dirent_name(e))
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// Writes `text` to `path`, replacing the file (mode 0644 when created).
public func writeFile(_ path: String, _ text: String) throws(BenchFailure) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw BenchFailure("cannot write \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var t = text
    let failure: BenchFailure? = t.withUTF8 { b in
        var off = 0
        while off < b.count {
            let r = write(fd, b.baseAddress! + off, b.count - off)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { return BenchFailure("writing \(path): \(String(cString: strerror(errno)))") }
            off += r
        }
        return nil
    }
    if let failure { throw failure }
}
