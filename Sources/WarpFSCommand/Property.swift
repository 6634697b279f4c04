#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport
import CWarpSys
import WarpFSCore

/// `warpfs property set|get|clear DIRECTORY`: a directory's compression
/// properties (`DirectoryProperties`). Through a live mount the command
/// talks to the mount with the caller's own credentials, by the directory's
/// virtual attribute `user.warpfs.property`; on a backing directory that is
/// not mounted it reads and writes `trusted.warpfs.props` itself (root).
struct Property: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set, show or clear a directory's compression properties: what files created in it get.",
        discussion: """
        A directory's properties replace the mount's options for the regular files created in it: \
        algorithm=NAME (deflate, zlib, gzip, zstd, lz4), level=N (only with an algorithm, and one of its \
        levels: 0..9 for the deflate family, 1..19 for zstd, 1..12 for lz4), compress or nocompress (new \
        files are containers, or stay plain), block_size=SIZE (4k..1m, a multiple of 4k). A property not set \
        is the mount's option. A new subdirectory gets a copy of its parent's properties when it is made, \
        and keeps them wherever it is moved. Existing files keep how they are stored: each block records \
        its codec, and a container keeps its level and block size.

        DIRECTORY is a directory on a live WarpFS mount (the mount applies the change at once; only the \
        directory's owner or root may change its properties, and the caller needs write permission), or a \
        backing directory that is not mounted (root only: the properties are kept in its extended \
        attribute trusted.warpfs.props, which the mount hides).
        """,
        subcommands: [PropertySet.self, PropertyGet.self, PropertyClear.self])
}

struct PropertySet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Set properties of a directory; the others stay as they are.",
        discussion: """
        PROPERTY is algorithm=NAME, level=N, block_size=SIZE, compress or nocompress (compression= and \
        blocksize= are also accepted, as for mount options). Setting another algorithm without a level drops \
        the level set before. The result is checked as a whole (a level must be one of its algorithm's) and \
        stored whole, or not at all.
        """)

    @Argument(help: "The directory.") var directory: String
    @Argument(help: ArgumentHelp("What to set: algorithm=NAME, level=N, block_size=SIZE, compress, nocompress.", valueName: "property"))
    var properties: [String] = []

    func validate() throws {
        guard !properties.isEmpty else { throw ValidationError("give at least one property (algorithm=NAME, level=N, block_size=SIZE, compress, nocompress)") }
        if let clear = properties.first(where: { $0 == "clear" || $0.hasPrefix("clear=") }) {
            throw ValidationError("'\(clear)': use warpfs property clear DIRECTORY [NAME...]")
        }
    }

    func run() throws { try PropertyPlace.locate(directory, changing: true).change(properties) }
}

struct PropertyGet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Show the properties set on a directory.",
        discussion: """
        Prints one property a line (algorithm=zstd, level=3, nocompress, block_size=16k); nothing when \
        none is set (new files take the mount's options). A stored value that does not parse is ignored by \
        the mount: it is reported, with exit status 1.
        """)

    @Argument(help: "The directory.") var directory: String
    @Flag(help: "Print one JSON object: {\"path\": ..., \"properties\": {\"algorithm\": \"zstd\", \"level\": 3}}.") var json = false

    func run() throws {
        let place = try PropertyPlace.locate(directory, changing: false)
        let p: DirectoryProperties
        switch try place.read() {
        case .properties(let set): p = set
        case .invalid(let why):
            throw PropertyPlace.failure("\(displayName(place.path)): the stored properties are not valid and are ignored (\(why)); "
                + "new files here take the mount's options; warpfs property clear \(displayName(place.path)) removes them")
        }
        guard json else {
            for item in p.items { print(item) }
            return
        }
        var fields: [(String, JSON)] = []
        if let a = p.algorithm { fields.append(("algorithm", .string(a.rawValue))) }
        if let l = p.level { fields.append(("level", .int(l))) }
        if let c = p.compress { fields.append(("compress", .bool(c))) }
        if let b = p.blockSize { fields.append(("block_size", .int(b))) }
        let properties: JSON = fields.isEmpty ? .line(.object([])) : .object(fields)
        print(JSON.object([("path", .string(place.path)), ("properties", properties)]).render())
    }
}

struct PropertyClear: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clear",
        abstract: "Clear properties of a directory (all, or the ones named): the mount's options apply again.",
        discussion: "NAME is algorithm (which clears level too), level, compress or block_size. Subdirectories keep their own copies.")

    @Argument(help: "The directory.") var directory: String
    @Argument(help: ArgumentHelp("Properties to clear (default: all).", valueName: "name")) var names: [String] = []

    func run() throws {
        try PropertyPlace.locate(directory, changing: true).change(names.isEmpty ? ["clear"] : names.map { "clear=" + $0 })
    }
}

/// Where a directory's properties are read and changed: through the mount
/// it is on, or in a backing directory offline.
struct PropertyPlace {
    /// The directory (absolute, symbolic links resolved).
    let path: String
    /// The mountpoint when `path` is on a live WarpFS mount.
    let mount: String?

    /// Resolves `argument` (following symbolic links as given). Offline,
    /// a change is refused in the backing tree of a live mount (the mount
    /// would not see it) and both reading and changing need root.
    static func locate(_ argument: String, changing: Bool) throws -> PropertyPlace {
        let shown = displayName(argument)
        guard let real = canonical(argument) else { throw failure("\(shown): \(String(cString: strerror(errno)))") }
        guard isDirectory(real) else { throw failure("\(shown): not a directory (properties belong to directories)") }
        if let m = StatsPlace.mountContaining(real) { return PropertyPlace(path: real, mount: m.mountpoint) }
        if changing, let (mnt, backing) = mountServing(real) {
            let rest = String(real.dropFirst(backing.count))
            throw failure("\(shown) is in the backing directory of the WarpFS mount at \(displayName(mnt)): "
                + "change it through the mount (\(displayName(mnt + rest)))")
        }
        guard geteuid() == 0 else {
            throw failure("\(shown) is not on a WarpFS mount; the properties of a backing directory are kept in "
                + "\(DirectoryProperties.storedName), which only root may \(changing ? "change" : "read") (or use a path through the mount)")
        }
        return PropertyPlace(path: real, mount: nil)
    }

    /// What the directory holds.
    enum Stored {
        case properties(DirectoryProperties)
        /// A stored value that does not parse (the mount ignores it), and why.
        case invalid(String)
    }

    /// The directory's properties (empty when none are set).
    func read() throws -> Stored {
        let name = mount == nil ? DirectoryProperties.storedName : DirectoryProperties.interfaceName
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = getxattr(path, name, &buf, buf.count)
        if n < 0 {
            switch errno {
            case ENODATA, EOPNOTSUPP: return .properties(DirectoryProperties())
            case EBADMSG: return .invalid("the mount's log says why")
            case ERANGE where mount == nil: return .invalid("longer than \(DirectoryProperties.maxStoredLength) bytes")
            default: throw PropertyPlace.failure("\(displayName(path)): reading its properties: \(String(cString: strerror(errno)))")
            }
        }
        do {
            // The mount answers with the items (it has checked them); offline the stored bytes are parsed as the mount does.
            if mount != nil {
                return .properties(try DirectoryProperties().applying(String(decoding: buf[0..<n], as: UTF8.self).split(separator: " ").map(String.init)))
            }
            return .properties(try DirectoryProperties(stored: buf[0..<n]))
        } catch {
            return .invalid("\(error)")
        }
    }

    /// Applies `changes` (the words `DirectoryProperties.applying` takes),
    /// checked here first for a clear message; the mount checks again. An
    /// invalid stored value is replaced, as the mount does.
    func change(_ changes: [String]) throws {
        let shown = displayName(path)
        var current = DirectoryProperties()
        switch try read() {
        case .properties(let p): current = p
        case .invalid(let why): eprint("warpfs property: \(shown): replacing stored properties that are not valid (\(why))")
        }
        let new: DirectoryProperties
        do { new = try current.applying(changes) } catch {
            throw PropertyPlace.failure("\(shown): \(error); nothing changed")
        }
        if let mnt = mount {
            let text = Array(changes.joined(separator: " ").utf8)
            guard setxattr(path, DirectoryProperties.interfaceName, text, text.count, 0) == 0 else {
                throw PropertyPlace.failure("\(shown): \(PropertyPlace.explain(errno, mount: mnt)); nothing changed")
            }
            return
        }
        let r: Int32
        if new.isEmpty {
            r = removexattr(path, DirectoryProperties.storedName)
            if r != 0 && errno == ENODATA { return }
        } else {
            let bytes = new.stored
            r = setxattr(path, DirectoryProperties.storedName, bytes, bytes.count, 0)
        }
        guard r == 0 else { throw PropertyPlace.failure("\(shown): \(String(cString: strerror(errno))); nothing changed") }
    }

    /// What an errno from the mount means for a change.
    static func explain(_ e: Int32, mount: String) -> String {
        switch e {
        case EPERM: return "only the directory's owner or root may change its properties"
        case EACCES: return "no write permission on the directory (changing its properties needs it)"
        case EROFS: return "the mount at \(displayName(mount)) is read-only"
        case EOPNOTSUPP: return "the mount at \(displayName(mount)) does not run as root, and properties need the trusted namespace"
        case EINVAL: return "the mount refused the change (its log says why)"
        default: return String(cString: strerror(e))
        }
    }

    static func failure(_ message: String) -> Error {
        eprint("warpfs property: " + message)
        return ExitCode(1)
    }

    /// The live WarpFS mount whose backing directory is `path` or holds it,
    /// with that backing directory (per /proc/self/mountinfo).
    static func mountServing(_ path: String) -> (mountpoint: String, backing: String)? {
        guard let mnt = liveMount(of: path), let m = StatsPlace.mountContaining(mnt),
              path == m.backing || path.hasPrefix(m.backing == "/" ? "/" : m.backing + "/") else { return nil }
        return (mnt, m.backing)
    }
}
