#if canImport(Glibc)
import Glibc
#endif
import WarpFSCore
import CWarpSys

/// A name inside a directory as the kernel gave it: bytes, not necessarily
/// UTF-8, kept NUL-terminated for system calls (a `String` would replace
/// bytes that are not UTF-8 and then name another file, or none).
struct EntryName: Comparable, Hashable {
    /// The bytes followed by one NUL.
    let cString: [CChar]

    init<C: Collection>(bytes: C) where C.Element == UInt8 {
        cString = bytes.map { CChar(bitPattern: $0) } + [0]
    }

    init(_ s: String) { self.init(bytes: Array(s.utf8)) }

    var bytes: [UInt8] { cString.dropLast().map { UInt8(bitPattern: $0) } }

    /// The name for messages (see `displayName`).
    var display: String { displayName(bytes) }

    static func < (a: EntryName, b: EntryName) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
}

/// A path or name for a message on one line: control characters (a newline
/// would start a line of its own, which could pass for another message)
/// and bytes that are not UTF-8 are shown as escapes (`\n`, `\t`, `\r`,
/// `\xHH`, `\u{HH}` for C1 controls and line separators), and a backslash
/// as `\\`, so every name shows differently.
func displayName<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
    let b = Array(bytes)
    var out = ""
    func hex(_ v: UInt32, _ width: Int) -> String {
        let h = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - h.count)) + h
    }
    var i = 0
    while i < b.count {
        let c = b[i]
        if c < 0x80 {
            switch c {
            case 0x0A: out += "\\n"
            case 0x09: out += "\\t"
            case 0x0D: out += "\\r"
            case 0x5C: out += "\\\\"
            case 0..<0x20, 0x7F: out += "\\x" + hex(UInt32(c), 2)
            default: out.unicodeScalars.append(Unicode.Scalar(c))
            }
            i += 1
            continue
        }
        let len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1
        if len > 1, i + len <= b.count, let s = String(validating: b[i..<(i + len)], as: UTF8.self),
           s.unicodeScalars.count == 1, let scalar = s.unicodeScalars.first {
            if (0x80...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                out += "\\u{" + hex(scalar.value, 2) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
            i += len
        } else {
            out += "\\x" + hex(UInt32(c), 2)
            i += 1
        }
    }
    return out
}

func displayName(_ s: String) -> String { displayName(Array(s.utf8)) }

/// Walking a tree that others may write in, by directory descriptors: every
/// step is `openat(parent, name, O_NOFOLLOW | O_DIRECTORY)`, so a directory
/// swapped for a symbolic link while the walk is under way gives ELOOP or
/// ENOTDIR instead of leading out of the tree, and nothing found inside the
/// tree is followed. Paths in messages are for people; no path is ever
/// opened again by name.
enum TreeWalk {
    static let directoryFlags = O_RDONLY | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC
    /// Directories nested deeper than this below a command-line path are
    /// reported and not entered (each level holds a descriptor open).
    static let maxDepth = 4096

    /// The entries of the directory open at `dirfd` (without "." and ".."), sorted by bytes.
    static func names(_ dirfd: Int32) throws -> [EntryName] {
        let copy = dup(dirfd)
        guard copy >= 0 else { throw FSError.last("read directory") }
        guard let d = fdopendir(copy) else { let e = FSError.last("read directory"); close(copy); throw e }
        defer { closedir(d) }
        rewinddir(d)
        var names: [EntryName] = []
        while true {
            errno = 0
            guard let e = readdir(d) else {
                if errno != 0 { throw FSError.last("read directory") }
                break
            }
            let raw = wd_dirent_name(e)!
            let n = EntryName(bytes: UnsafeRawBufferPointer(start: raw, count: strlen(raw)))
            if n.cString != [46, 0] && n.cString != [46, 46, 0] { names.append(n) }
        }
        return names.sorted()
    }

    /// lstat of `name` in `dirfd`.
    static func lstatAt(_ dirfd: Int32, _ name: EntryName) throws -> stat {
        var st = stat()
        guard fstatat(dirfd, name.cString, &st, AT_SYMLINK_NOFOLLOW) == 0 else { throw FSError.last("stat") }
        return st
    }

    /// Opens the directory `name` of `dirfd` without following a symbolic
    /// link; the error says what the entry became when it is not a directory any more.
    static func openDirectory(_ dirfd: Int32, _ name: EntryName) throws -> Int32 {
        let fd = openat(dirfd, name.cString, directoryFlags)
        guard fd < 0 else { return fd }
        switch errno {
        case ELOOP: throw FSError(ELOOP, "it was replaced by a symbolic link during the walk; not followed")
        case ENOTDIR: throw FSError(ENOTDIR, "it was replaced by something other than a directory during the walk; not entered")
        case EMFILE, ENFILE: throw FSError.last("open directory (directories nested too deep for the open-file limit)")
        default: throw FSError.last("open directory")
        }
    }

    /// A path named on the command line, resolved once as the caller gave
    /// it (every symbolic link in it followed, the last one included), then
    /// opened from "/" one directory at a time without following anything,
    /// so a link swapped in after the resolution is not followed either.
    /// Returns the directory holding the target and the target's name in
    /// it (nil for "/" itself, then `parent` is "/").
    static func resolveArgument(_ path: String) throws -> (parent: Int32, leaf: EntryName?) {
        guard let p = realpath(path, nil) else { throw FSError.last("resolve") }
        let canonical = Array(String(cString: p).utf8)
        free(p)
        let parts = canonical.split(separator: UInt8(ascii: "/")).map { EntryName(bytes: $0) }
        var fd = open("/", directoryFlags)
        guard fd >= 0 else { throw FSError.last("open /") }
        for part in parts.dropLast() {
            let next: Int32
            do { next = try openDirectory(fd, part) } catch { close(fd); throw error }
            close(fd)
            fd = next
        }
        return (fd, parts.last)
    }

    /// Opens the directory `path` (resolved once, see `resolveArgument`).
    static func openArgumentDirectory(_ path: String) throws -> Int32 {
        let (parent, leaf) = try resolveArgument(path)
        guard let leaf else { return parent }
        defer { close(parent) }
        return try openDirectory(parent, leaf)
    }

    /// What a file type is called in messages.
    static func typeName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFLNK: return "symbolic link"
        case S_IFIFO: return "named pipe"
        case S_IFSOCK: return "socket"
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        case S_IFDIR: return "directory"
        case S_IFREG: return "regular file"
        default: return "file of unknown type"
        }
    }

    /// Raises the soft limit on open files toward the hard one: a walk holds
    /// one descriptor per directory level.
    static func raiseOpenFileLimit() {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return }
        let want = min(rl.rlim_max, rlim_t(maxDepth + 1024))
        if rl.rlim_cur < want {
            rl.rlim_cur = want
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        }
    }
}
