/// One mount option as the parser accepts it and as `warpfs mount --help`,
/// warpfs(1) and the parser's error messages describe it. The table below
/// is the only list of options: `MountOptions.apply` refuses any name it
/// does not hold, so the documentation cannot miss one.
public struct MountOptionSpec: Sendable {
    /// What the option does to the mount.
    public enum Kind: String, Sendable, CaseIterable {
        /// WarpFS's own options.
        case warpfs
        /// Generic mount options (mount(8), fstab) that the mount honours.
        case generic
        /// Generic options meant for mount(8), systemd or other programs:
        /// accepted so that an fstab line or a mount unit works, and ignored.
        case ignored
        /// Generic options WarpFS cannot honour: refused with the reason.
        case refused
    }

    /// Whether a name takes `=VALUE`.
    public enum Value: Sendable { case none, required, optional }

    /// How the documentation shows the option: "block_size=SIZE", "dev, nodev".
    public let label: String
    /// The keys (the part before `=`) this entry accepts; with `prefix`,
    /// every key that starts with one of them.
    public let names: [String]
    public let value: Value
    public let prefix: Bool
    public let kind: Kind
    /// One line: what it does.
    public let help: String
    /// The default, as a user would write it, if there is one worth saying.
    public let defaultValue: String?

    init(_ label: String, _ names: [String], value: Value = .none, prefix: Bool = false,
         _ kind: Kind, default defaultValue: String? = nil, _ help: String) {
        self.label = label
        self.names = names
        self.value = value
        self.prefix = prefix
        self.kind = kind
        self.help = help
        self.defaultValue = defaultValue
    }

    /// The help line with its kind and default, as --help and the manual show it.
    public var description: String {
        let lead: String
        switch kind {
        case .warpfs, .generic: lead = ""
        case .ignored: lead = "Accepted and ignored: "
        case .refused: lead = "Refused: "
        }
        return lead + help + (defaultValue.map { " (default: \($0))" } ?? "")
    }

    /// Whether this entry accepts `key`.
    public func matches(_ key: String) -> Bool {
        prefix ? names.contains { key.hasPrefix($0) && key.count > $0.count } : names.contains(key)
    }

    /// What a shell completes after `-o`: the names, with `=` where a value follows.
    public var completions: [String] {
        prefix ? [] : names.map { value == .required ? $0 + "=" : $0 }
    }
}

extension MountOptions {
    /// Every mount option, in the order the documentation lists them.
    public static let table: [MountOptionSpec] = [
        .init("block_size=SIZE", ["block_size", "blocksize"], value: .required, .warpfs, default: "64k",
              "logical block of new files, 4k..1m, a multiple of 4k; also spelled blocksize (a directory's properties may set another: warpfs property)"),
        .init("algorithm=NAME", ["algorithm", "compression"], value: .required, .warpfs, default: "deflate",
              "codec of new files: deflate, zlib, gzip, zstd or lz4; every mount reads every codec; also spelled compression (a directory's properties may set another)"),
        .init("level=N", ["level"], value: .required, .warpfs, default: "1",
              "compression level of new files: 0..9 for the deflate family, 1..19 for zstd, 1..12 for lz4 (3 and up: lz4 HC); a file keeps its level"),
        .init("engines=N", ["engines"], value: .required, .warpfs, default: "2", "engine threads of the emulated accelerator, 1..64 (given, it asks for the in-process accelerator)"),
        .init("format_version=3|2", ["format_version"], value: .required, .warpfs, default: "3",
              "container format of new files: 3 packs payloads byte by byte; 2 is the older page-per-payload layout, for trees older builds must read"),
        .init("deflate_engine=isal|zlib", ["deflate_engine"], value: .required, .warpfs, default: "isal",
              "what compresses deflate, zlib and gzip on the emulated accelerator: ISA-L at levels 1-3, or zlib, stock zlib's output byte for byte "
              + "(given, it asks for the in-process accelerator)"),
        .init("pack, nopack", ["pack", "nopack"], .warpfs, default: "pack",
              "pack: small files (one block, at most 3816 bytes stored) share pages of the backing directory's pack file instead of a page each; nopack: they stay in containers of their own (packed files are read either way)"),
        .init("pack_delay=S", ["pack_delay"], value: .required, .warpfs, default: "5",
              "seconds a small file stays closed before it is packed, 0..86400 (at unmount: at once)"),
        .init("shared", ["shared"], .warpfs, default: "off",
              "other hosts mount the same backing directory (on GlusterFS or another distributed file system): close-to-open consistency and one writer per file across hosts; implies no_writeback_cache, no_keep_cache and nopack"),
        .init("lock_timeout=S", ["lock_timeout"], value: .required, .warpfs, default: "30",
              "with shared: seconds a change waits while another host writes the file, 0..86400, then fails with EAGAIN"),
        .init("cache_blocks=N", ["cache_blocks"], value: .required, .warpfs, default: "64", "decompressed blocks cached per open file, 4..65536"),
        .init("nocompress, compress", ["nocompress", "compress"], .warpfs, default: "compress",
              "nocompress: new files stay plain (existing containers still decode); a directory's properties may say otherwise"),
        .init("memory=MiB", ["memory"], value: .required, .warpfs, default: "128",
              "budget for block buffers across files; caches shrink and writers wait beyond it"),
        .init("readahead=KiB", ["readahead"], value: .required, .warpfs, default: "1024",
              "the kernel's readahead for the mount (needs root; 0 keeps the kernel's)"),
        .init("no_writeback_cache, writeback_cache", ["no_writeback_cache", "writeback_cache"], .warpfs, default: "writeback_cache",
              "no_writeback_cache: every write goes through at once instead of through the kernel's writeback cache"),
        .init("no_keep_cache, keep_cache", ["no_keep_cache", "keep_cache"], .warpfs, default: "keep_cache",
              "no_keep_cache: drop a file's page cache at each open"),
        .init("engine_timeout=S", ["engine_timeout"], value: .required, .warpfs, default: "10",
              "seconds a request may wait for the accelerator before it fails (each request is tried 3 times)"),
        .init("queues=N", ["queues"], value: .required, .warpfs, default: "1024",
              "queues of the in-process accelerator for the mount, 2..1024 (files wait for one when all are busy; given, it asks for "
              + "the in-process accelerator)"),
        .init("device=DEVICE", ["device"], value: .required, .warpfs, default: "a kernel device that fits, else in-process",
              "the accelerator: a kernel uacce device by name (warpdrive_zip-0); emulated for the in-process one; a socket path for "
              + "a running warpdrived's, shared by many processes. Without it: a kernel uacce device this client speaks that offers "
              + "the algorithm and has a free queue (the in-process accelerator takes the algorithms it lacks), else the in-process one"),
        .init("acl, noacl", ["acl", "noacl"], .warpfs, default: "acl",
              "POSIX ACLs kept in the backing files' ACL attributes and enforced by the kernel; with noacl setting one fails with EOPNOTSUPP"),
        .init("allow_other", ["allow_other"], .warpfs, default: "off", "other users may use the mount"),
        .init("debug", ["debug"], .warpfs, default: "off", "libfuse request trace on standard error"),
        .init("log=FILE", ["log"], value: .required, .warpfs, default: "syslog in the background, standard error with -f",
              "a file the mount appends its messages to instead"),
        .init("fault_injection", ["fault_injection"], .warpfs, default: "off",
              "accept fault commands on the mount root (for tests; see docs/RELIABILITY.md)"),

        .init("ro, rw", ["ro", "rw"], .generic, default: "rw", "read-only or read-write"),
        .init("dev, nodev", ["dev", "nodev"], .generic, default: "nodev; dev through mount(8) unless nodev is given",
              "whether device files on the mount open their device (dev needs root)"),
        .init("suid, nosuid", ["suid", "nosuid"], .generic, default: "nosuid; suid through mount(8) unless nosuid is given",
              "whether set-user-ID and set-group-ID bits on the mount take effect (suid needs root)"),
        .init("exec, noexec", ["exec", "noexec"], .generic, default: "exec", "noexec: programs on the mount may not be executed"),
        .init("sync, async", ["sync", "async"], .generic, default: "async",
              "sync: the kernel asks for an fsync after every write, so each write is stored in the backing file before it returns"),
        .init("relatime, noatime, strictatime, atime", ["relatime", "noatime", "strictatime", "atime"], .generic, default: "relatime",
              "when reads update a file's access time: relatime when it is not after the modification or change time or is a day old, "
                  + "noatime never, strictatime on every read that reaches the file system; atime is relatime, the kernel's default"),

        .init("defaults", ["defaults"], .ignored, "mount(8)'s default set, which the defaults above already are"),
        .init("auto, noauto", ["auto", "noauto"], .ignored, "whether mount -a and the boot mount the line; mount(8) and systemd read it"),
        .init("nofail, _netdev", ["nofail", "_netdev"], .ignored, "how the boot orders and waits for the mount; mount(8) and systemd read them"),
        .init("user[=NAME], nouser, users, owner, group", ["user", "nouser", "users", "owner", "group"], value: .optional, .ignored,
              "who may mount the line; mount(8) checks it before it runs warpfs"),
        .init("x-*, X-*", ["x-", "X-"], value: .optional, prefix: true, .ignored, "options for systemd (x-systemd.*) and other programs"),
        .init("comment=TEXT", ["comment"], value: .optional, .ignored, "a note in fstab"),
        .init("default_permissions", ["default_permissions"], .ignored, "the kernel always checks permissions"),
        .init("diratime, nodiratime", ["diratime", "nodiratime"], .ignored,
              "directories' access times are the backing directories' own, kept by the backing file system's mount options"),
        .init("lazytime, nolazytime", ["lazytime", "nolazytime"], .ignored,
              "times are written to the backing file at once; lazytime only allows delaying that"),

        .init("dirsync", ["dirsync"], .refused,
              "directory changes are as durable as the backing file system makes them; WarpFS does not make them synchronous"),
    ]

    /// The entry that accepts `key`, if any.
    public static func spec(for key: String) -> MountOptionSpec? {
        table.first { $0.matches(key) }
    }

    /// The names of one kind, for messages.
    static func names(_ kind: MountOptionSpec.Kind) -> String {
        table.filter { $0.kind == kind }.flatMap { $0.prefix ? $0.names.map { $0 + "*" } : $0.names }.joined(separator: ", ")
    }

    /// The message for a key no entry accepts.
    static func unknownOption(_ key: String) -> String {
        "unknown mount option '\(key)' (WarpFS options: \(names(.warpfs)); generic options: \(names(.generic)), "
            + "and those for mount(8) and systemd: \(names(.ignored)); see warpfs mount --help)"
    }
}
