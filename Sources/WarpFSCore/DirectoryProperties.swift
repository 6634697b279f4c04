#if canImport(Glibc)
import Glibc
#endif
import WarpDrive
import WarpFSFormat

/// The compression properties of one directory (`warpfs property`,
/// docs/FORMAT.md "Per-directory properties"): what files created in it get
/// instead of the mount's options. Each is optional; one left unset is the
/// mount's. New subdirectories get a copy at mkdir, so a directory keeps its
/// properties wherever it is moved later.
///
/// - `algorithm`: codec of new containers (deflate, zlib, gzip, zstd, lz4)
/// - `level`: their level; only with an `algorithm` (a level is its
///   algorithm's), checked against its levels as `level=` is
/// - `compress`: new files are containers (true) or plain (false, `nocompress`)
/// - `blockSize`: block size of new containers (4k..1m, a multiple of 4k)
///
/// Stored in the backing directory's `trusted.warpfs.props` as one line of
/// ASCII: `v1` and the set properties in a fixed order, each once, separated
/// by one space (`v1 algorithm=zstd level=3`). A stored value is accepted
/// only if it is exactly what `stored` would write for what it says: any
/// other byte sequence (another version, order, spelling, a value out of
/// range) is refused as a whole, and the mount then uses its options.
public struct DirectoryProperties: Sendable, Equatable {
    public var algorithm: CompressionAlgorithm?
    public var level: Int?
    public var compress: Bool?
    public var blockSize: Int?

    public init(algorithm: CompressionAlgorithm? = nil, level: Int? = nil, compress: Bool? = nil, blockSize: Int? = nil) {
        self.algorithm = algorithm; self.level = level; self.compress = compress; self.blockSize = blockSize
    }

    /// The backing directory's attribute that holds them (the `trusted`
    /// namespace: only root reads or writes it; hidden through the mount).
    public static let storedName = "trusted.warpfs.props"
    /// The attribute through which a mount's directories show and take them
    /// (virtual: intercepted by the mount, never stored under this name).
    public static let interfaceName = "user.warpfs.property"
    /// The first word of a stored value: the version of its format.
    public static let storedVersion = "v1"
    /// The longest stored value accepted (the canonical form of every
    /// property set takes under 64 bytes).
    public static let maxStoredLength = 256
    /// The longest change list the mount takes through `interfaceName`.
    public static let maxChangeLength = 1024
    /// The property names, in the order values list them (`clear=NAME` takes these).
    public static let names = ["algorithm", "level", "compress", "block_size"]

    /// No property is set.
    public var isEmpty: Bool { self == DirectoryProperties() }

    /// The set properties, in order: `algorithm=zstd`, `level=3`,
    /// `compress` or `nocompress`, `block_size=16k`.
    public var items: [String] {
        var out: [String] = []
        if let algorithm { out.append("algorithm=\(algorithm.rawValue)") }
        if let level { out.append("level=\(level)") }
        if let compress { out.append(compress ? "compress" : "nocompress") }
        if let blockSize { out.append("block_size=\(DirectoryProperties.sizeText(blockSize))") }
        return out
    }

    /// The items separated by spaces (what `user.warpfs.property` reads).
    public var text: String { items.joined(separator: " ") }

    /// The bytes stored in `storedName`.
    public var stored: [UInt8] { Array(([DirectoryProperties.storedVersion] + items).joined(separator: " ").utf8) }

    /// "16k", "1m": a block size as the values spell it.
    static func sizeText(_ n: Int) -> String { n % (1 << 20) == 0 ? "\(n >> 20)m" : "\(n >> 10)k" }

    // MARK: Parsing

    /// Decodes a stored value strictly: exactly the canonical bytes of a
    /// valid property set (see the type's comment). Throws with the reason.
    public init<C: Collection>(stored bytes: C) throws where C.Element == UInt8 {
        guard bytes.count <= DirectoryProperties.maxStoredLength else {
            throw FSError(EINVAL, "\(bytes.count) bytes, more than the \(DirectoryProperties.maxStoredLength) a value may take")
        }
        guard bytes.allSatisfy({ (0x21...0x7E).contains($0) || $0 == 0x20 }) else {
            throw FSError(EINVAL, "not one line of printable ASCII")
        }
        let words = String(decoding: bytes, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard words.first == DirectoryProperties.storedVersion else {
            throw FSError(EINVAL, "it does not start with '\(DirectoryProperties.storedVersion)' (a version this build does not know, or not a WarpFS value)")
        }
        var p = DirectoryProperties()
        for word in words.dropFirst() {
            guard !word.isEmpty else { throw FSError(EINVAL, "an empty item (two spaces, or one at an end)") }
            let change = try Change(word)
            guard case .set = change.kind else { throw FSError(EINVAL, "'\(word)' is a change, not a property") }
            try change.apply(to: &p)
        }
        try p.check()
        guard p.stored.elementsEqual(bytes) else {
            throw FSError(EINVAL, "not in the canonical form '\(String(decoding: p.stored, as: UTF8.self))' (order, spelling, each property once)")
        }
        self = p
    }

    /// The properties after `changes` (words as `warpfs property set` and
    /// `clear` send them: `algorithm=NAME`, `level=N`, `block_size=SIZE`,
    /// `compress`, `nocompress`, `clear` (all), `clear=NAME` (one; clearing
    /// `algorithm` clears `level` too); `compression=` and `blocksize=` as
    /// for mount options). All or nothing: a bad word, a property given
    /// twice, or a result that `check` refuses throws and changes nothing.
    /// Changing the algorithm without giving a level drops the level set
    /// before (a level is its algorithm's).
    public func applying(_ changes: [String]) throws -> DirectoryProperties {
        guard !changes.isEmpty else { throw FSError(EINVAL, "no property given") }
        let parsed = try changes.map(Change.init)
        var seen: Set<String> = []
        for c in parsed where c.name != "*" {
            guard seen.insert(c.name).inserted else { throw FSError(EINVAL, "'\(c.name)' given twice") }
        }
        var p = self
        // Clears first, then what is set, whatever their order on the line.
        for c in parsed where c.kind == .clear { try c.apply(to: &p) }
        for c in parsed where c.kind == .set { try c.apply(to: &p) }
        if let a = p.algorithm, a != algorithm, !seen.contains("level") { p.level = nil }
        try p.check()
        return p
    }

    /// Checks what depends on several properties: a level needs an
    /// algorithm, and must be one of its levels.
    public func check() throws {
        guard let level else { return }
        guard let algorithm else {
            throw FSError(EINVAL, "level=\(level) needs an algorithm: a level is its algorithm's (give algorithm=NAME with it)")
        }
        guard algorithm.levels.contains(level) else {
            throw FSError(EINVAL, "level=\(level): \(algorithm.rawValue) takes levels \(algorithm.levels.lowerBound)...\(algorithm.levels.upperBound)")
        }
    }

    /// One word of a change list.
    struct Change {
        enum Kind { case set, clear }
        let kind: Kind
        /// The canonical property name ("*" for `clear` alone).
        let name: String
        private let value: String?

        /// Spellings the mount options also accept, and `nocompress`, to the property's name.
        private static let aliases = ["compression": "algorithm", "blocksize": "block_size", "nocompress": "compress"]

        init(_ word: String) throws {
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let key = parts[0], given = parts.count > 1 ? parts[1] : nil
            let canonical = Change.aliases[key] ?? key
            switch (canonical, given) {
            case ("clear", nil):
                kind = .clear; name = "*"; value = nil
            case ("clear", let v?):
                let n = Change.aliases[v] ?? v
                guard DirectoryProperties.names.contains(n) else {
                    throw FSError(EINVAL, "clear=\(v): no such property (\(DirectoryProperties.names.joined(separator: ", ")))")
                }
                kind = .clear; name = n; value = nil
            case ("compress", nil):
                kind = .set; name = "compress"; value = key
            case ("algorithm", _?), ("level", _?), ("block_size", _?):
                kind = .set; name = canonical; value = given
            case ("algorithm", nil), ("level", nil), ("block_size", nil):
                throw FSError(EINVAL, "'\(key)' needs a value (\(key)=...)")
            case ("compress", _?):
                throw FSError(EINVAL, "'\(key)' takes no value")
            default:
                throw FSError(EINVAL, "unknown property '\(key)' (algorithm=NAME, level=N, block_size=SIZE, compress, nocompress)")
            }
        }

        func apply(to p: inout DirectoryProperties) throws {
            switch (kind, name) {
            case (.clear, "*"): p = DirectoryProperties()
            case (.clear, "algorithm"): p.algorithm = nil; p.level = nil
            case (.clear, "level"): p.level = nil
            case (.clear, "compress"): p.compress = nil
            case (.clear, _): p.blockSize = nil
            case (.set, "algorithm"):
                guard let a = CompressionAlgorithm(rawValue: value!) else {
                    throw FSError(EINVAL, "algorithm=\(value!): expected one of " + CompressionAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))
                }
                p.algorithm = a
            case (.set, "level"):
                guard let n = Int(value!), n >= 0, String(n) == value else {
                    throw FSError(EINVAL, "level=\(value!): expected a number")
                }
                p.level = n
            case (.set, "compress"): p.compress = value == "compress"
            default:
                let v = value!
                guard let n = MountOptions.parseSize(v), FileHeader.blockSizeRange.contains(n), n % 4096 == 0 else {
                    throw FSError(EINVAL, "block_size=\(v): expected a size in 4k...1m, a multiple of 4k")
                }
                p.blockSize = n
            }
        }
    }

    // MARK: What new files get

    /// What a file created in a directory with these properties gets, the
    /// mount's `options` filling in what is not set. An algorithm without
    /// a level takes the mount's level, brought within the algorithm's
    /// levels (a deflate `level=0` mount gives zstd level 1).
    public func settings(over options: MountOptions) -> NewFileSettings {
        let a = algorithm ?? options.algorithm
        let l = level ?? (algorithm == nil ? options.level : min(max(options.level, a.levels.lowerBound), a.levels.upperBound))
        return NewFileSettings(compress: compress ?? options.compressNewFiles, algorithm: a, level: l,
                               blockSize: blockSize ?? options.blockSize)
    }
}

/// What one new regular file is made as: a container (with its codec,
/// level and block size) or a plain file.
public struct NewFileSettings: Sendable, Equatable {
    public var compress: Bool
    public var algorithm: CompressionAlgorithm
    public var level: Int
    public var blockSize: Int

    /// The encoding the container's header records.
    public var encoding: BlockEncoding { BlockEncoding(algorithm) }
}
