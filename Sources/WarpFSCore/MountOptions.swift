#if canImport(Glibc)
import Glibc
#endif
import WarpDrive
import WarpFSFormat

/// Settings of a mounted WarpFS.
public struct MountOptions: Sendable, Equatable {
    /// Logical block size of new compressed files.
    public var blockSize = 64 << 10
    /// Encoding of compressed blocks (deflate, zlib or gzip through the accelerator).
    public var algorithm: CompressionAlgorithm = .deflate
    /// Compression level, within the algorithm's levels (deflate family 0...9, zstd 1...19, lz4 1...12).
    public var level = 1
    /// Engine threads of the emulated accelerator.
    public var engines = 2
    /// Format version of new containers (`docs/FORMAT.md`): 3, or 2 to make
    /// containers older builds read.
    public var formatVersion: UInt16 = FileHeader.version
    /// What compresses the deflate family on the emulated accelerator:
    /// ISA-L where it has the level (the default), or zlib, the reference
    /// whose output equals stock zlib's byte for byte.
    public var deflateEngine: DeflateEngine = .isal
    /// Pack small files (one block, payload at most `PackPage.maxPayload`
    /// bytes) into the backing directory's pack file once they have been
    /// closed `packDelaySeconds` (docs/FORMAT.md, "Packed small files").
    public var packSmallFiles = true
    /// Seconds a small file stays closed before it is packed (at unmount: at once).
    public var packDelaySeconds = 5
    /// `shared`: other hosts mount the same backing directory (through a
    /// distributed file system): close-to-open consistency, one writer per
    /// file across hosts (docs/ARCHITECTURE.md, "Deployment across hosts").
    /// Implies no writeback cache, no kept page cache, no packing.
    public var shared = false
    /// Seconds a change waits for a file's cross-host writer lock (`shared`).
    public var lockTimeoutSeconds = 30
    /// Decompressed blocks cached per open file.
    public var cacheBlocksPerFile = 64
    /// Compress new files (false: new files are plain, only existing containers are decoded).
    public var compressNewFiles = true
    /// Refuse every change.
    public var readOnly = false
    /// Let other users see the mount (FUSE allow_other).
    public var allowOther = false
    /// Honour device files on the mount (mount flag: no MS_NODEV). Root only.
    public var devices = false
    /// Honour set-user-ID and set-group-ID bits on the mount (no MS_NOSUID). Root only.
    public var setID = false
    /// Log every request to stderr.
    public var debug = false
    /// Let the kernel buffer writes and send them in large requests (FUSE writeback cache).
    public var writebackCache = true
    /// Keep a file's page cache across opens (invalidated when its size or mtime changes).
    public var keepCache = true
    /// Registered shared memory for block buffers, in MiB (cache and blocks
    /// in flight; past it, buffers come from the heap and are copied).
    public var memoryBudgetMiB = 128
    /// Kernel readahead for the mount in KiB (needs root; 0 leaves the kernel default).
    public var readaheadKiB = 1024
    /// Seconds a request may wait for the accelerator before it fails (and is retried).
    public var engineTimeoutSeconds = 10
    /// Accelerator queues the emulated device offers the mount.
    public var queues = 1024
    /// Accept fault-injection commands on the mount root's `user.warpfs.fault`
    /// extended attribute (for testing error paths; see docs/RELIABILITY.md).
    public var faultInjection = false
    /// `device=`: a `warpdrived` socket, a kernel uacce device's name, or
    /// `emulated`; nil: a kernel device when one fits, else the in-process
    /// emulated device (`Accelerator.choose`).
    public var deviceSocket: String?
    /// The `device=` value that asks for the in-process emulated device.
    public static let emulatedDevice = "emulated"
    /// The options given that set up the in-process device (`engines`,
    /// `deflate_engine`, `queues`): a kernel device has none of them, so
    /// they ask for the in-process device as `device=emulated` does.
    public var inProcessSettings: Set<String> = []
    /// POSIX ACLs: stored in the backing objects' ACL attributes and
    /// enforced by the kernel (`noacl`: neither, as ext4 mounted noacl).
    public var posixACL = true
    /// When reads update access times (noatime, relatime, strictatime).
    public var accessTimes: AccessTimePolicy = .relatime
    /// Programs on the mount may be executed (`noexec`: the kernel refuses).
    public var executables = true
    /// `sync`: the kernel asks for an fsync after every write (MS_SYNCHRONOUS).
    public var synchronous = false
    /// Where a background mount writes its messages (`log=FILE`).
    public var logPath: String?

    public init() {}

    /// The encoding the format records for the algorithm.
    public var encoding: BlockEncoding {
        BlockEncoding(algorithm)
    }

    /// Parses `-o` options (comma separated `key=value` or flags). A key
    /// must be one of `MountOptions.table`: any other, a value where none
    /// belongs, a missing or bad value, or a refused option is an error that
    /// names the option. Options for mount(8) and systemd are accepted and
    /// ignored (the table says which and why).
    public mutating func apply(_ list: String) throws {
        for item in list.split(separator: ",", omittingEmptySubsequences: true) {
            let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let key = parts[0], value = parts.count > 1 ? parts[1] : nil
            guard let spec = MountOptions.spec(for: key) else { throw FSError(EINVAL, MountOptions.unknownOption(key)) }
            if spec.value == .none, let value {
                throw FSError(EINVAL, "option '\(key)=\(value)': '\(key)' takes no value")
            }
            switch spec.kind {
            case .ignored: continue
            case .refused: throw FSError(EINVAL, "option '\(key)' is not supported: \(spec.help)")
            case .warpfs, .generic: try set(key, value)
            }
        }
    }

    /// Applies one option of the table.
    private mutating func set(_ key: String, _ value: String?) throws {
        func need() throws -> String {
            guard let value, !value.isEmpty else { throw FSError(EINVAL, "option '\(key)' needs a value (\(key)=...)") }
            return value
        }
        func number(_ range: ClosedRange<Int>) throws -> Int {
            let v = try need()
            guard let n = MountOptions.parseSize(v), range.contains(n) else {
                throw FSError(EINVAL, "option '\(key)=\(v)': expected a number in \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
        /// One of the named values of `E`.
        func choice<E: RawRepresentable & CaseIterable>(_: E.Type) throws -> E where E.RawValue == String {
            let v = try need()
            guard let e = E(rawValue: v) else {
                throw FSError(EINVAL, "option '\(key)=\(v)': expected one of " + E.allCases.map(\.rawValue).joined(separator: ", "))
            }
            return e
        }
        switch key {
        case "block_size", "blocksize":
            let n = try number(4096...(1 << 20))
            guard n % 4096 == 0 else { throw FSError(EINVAL, "option '\(key)=\(value!)': must be a multiple of 4096") }
            blockSize = n
        case "algorithm", "compression": algorithm = try choice(CompressionAlgorithm.self)
        case "level": level = try number(0...19)
        case "engines": engines = try number(1...64); inProcessSettings.insert(key)
        case "format_version": formatVersion = UInt16(try number(Int(FileHeader.versions.lowerBound)...Int(FileHeader.versions.upperBound)))
        case "deflate_engine": deflateEngine = try choice(DeflateEngine.self); inProcessSettings.insert(key)
        case "cache_blocks": cacheBlocksPerFile = try number(4...65536)
        case "pack": packSmallFiles = true
        case "nopack": packSmallFiles = false
        case "pack_delay": packDelaySeconds = try number(0...86400)
        case "shared": shared = true
        case "lock_timeout": lockTimeoutSeconds = try number(0...86400)
        case "compress": compressNewFiles = true
        case "nocompress": compressNewFiles = false
        case "ro": readOnly = true
        case "rw": readOnly = false
        case "allow_other": allowOther = true
        case "dev": devices = true
        case "nodev": devices = false
        case "suid": setID = true
        case "nosuid": setID = false
        case "exec": executables = true
        case "noexec": executables = false
        case "sync": synchronous = true
        case "async": synchronous = false
        case "debug": debug = true
        case "log": logPath = try need()
        case "writeback_cache": writebackCache = true
        case "no_writeback_cache": writebackCache = false
        case "keep_cache": keepCache = true
        case "no_keep_cache": keepCache = false
        case "readahead": readaheadKiB = try number(0...65536)
        case "memory": memoryBudgetMiB = try number(8...65536)
        case "engine_timeout": engineTimeoutSeconds = try number(1...3600)
        case "queues": queues = try number(2...1024); inProcessSettings.insert(key)
        case "fault_injection": faultInjection = true
        case "device": deviceSocket = try need()
        case "acl": posixACL = true
        case "noacl": posixACL = false
        case "atime", "relatime": accessTimes = .relatime
        case "noatime", "strictatime": accessTimes = AccessTimePolicy(rawValue: key)!
        default:
            // A table entry without a case here: caught by MountOptionTableTests.
            throw FSError(EINVAL, "option '\(key)' is in the option table but not handled")
        }
    }

    /// The options of every `-o` list, in order, checked as a whole.
    public init(lists: [String]) throws {
        self.init()
        for list in lists { try apply(list) }
        if shared {
            // What another host changes must be read again at every open:
            // the kernel may not keep pages or a size of its own, and the
            // pack is one host's.
            writebackCache = false
            keepCache = false
            packSmallFiles = false
        }
        try check()
    }

    /// Checks what depends on several options, once all are applied (they
    /// may come in any order and in several `-o` lists): the level must be
    /// one the algorithm has.
    public func check() throws {
        guard algorithm.levels.contains(level) else {
            throw FSError(EINVAL, "option 'level=\(level)': \(algorithm.rawValue) takes levels "
                + "\(algorithm.levels.lowerBound)...\(algorithm.levels.upperBound)")
        }
    }

    /// "64k", "1m", "4096" → bytes.
    static func parseSize(_ s: String) -> Int? {
        let lower = s.lowercased()
        var mult = 1
        var digits = Substring(lower)
        if let last = lower.last, "kmg".contains(last) {
            mult = last == "k" ? 1 << 10 : last == "m" ? 1 << 20 : 1 << 30
            digits = digits.dropLast()
        }
        guard let n = Int(digits), n >= 0, n <= Int.max / mult else { return nil }
        return n * mult
    }
}
