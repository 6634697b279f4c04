#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpDrive
import WarpFSCore
import WarpFSFormat

/// Per-directory properties (`warpfs property`, docs/FORMAT.md
/// "Per-directory properties") on real mounts: files created in a directory
/// take its codec, level, block size or plain storage; new subdirectories
/// inherit them; existing files keep how they are stored; the properties
/// survive remounts, refuse bad values whole, ignore a stored value that
/// does not parse (with a log line), and only the directory's owner or root
/// may change them.
@Suite struct PropertyTests {
    static func warpfs(_ args: String...) -> (status: Int32, output: String) { warpfs(args) }
    static func warpfs(_ args: [String]) -> (status: Int32, output: String) { runCommand([warpfsBinary] + args) }

    /// Writes a new file and fsyncs it: its blocks and size are in the backing file.
    static func writeSynced(_ path: String, _ data: [UInt8]) throws {
        try FileIO.write(path, data)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(errno, "open \(path)") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw Errno(errno, "fsync \(path)") }
    }

    /// Bytes 12...17 of a backing file (block size, encoding, level), nil
    /// when it is not a container.
    static func header(_ path: String) throws -> (blockSize: Int, encoding: UInt8, level: UInt8)? {
        let bytes = try FileIO.read(path)
        guard bytes.count >= 64, bytes.prefix(8).elementsEqual(FileHeader.magic) else { return nil }
        let blockSize = Int(bytes[12]) | Int(bytes[13]) << 8 | Int(bytes[14]) << 16 | Int(bytes[15]) << 24
        return (blockSize, bytes[16], bytes[17])
    }

    /// The stored value on a backing directory (nil: none).
    static func stored(_ dir: String) -> String? {
        var buf = [UInt8](repeating: 0, count: 1024)
        let n = getxattr(dir, DirectoryProperties.storedName, &buf, buf.count)
        return n < 0 ? nil : String(decoding: buf[0..<n], as: UTF8.self)
    }

    static func store(_ dir: String, _ value: [UInt8]) throws {
        guard setxattr(dir, DirectoryProperties.storedName, value, value.count, 0) == 0 else { throw Errno(errno, "setxattr \(dir)") }
    }

    static func text(_ seed: UInt64, _ count: Int) -> [UInt8] {
        var r = Rng(seed)
        return r.text(count)
    }

    /// The stored form, without a mount: every valid set round-trips
    /// through exactly its canonical bytes; anything else (random bytes, and
    /// every one-byte change of a valid value that is not itself canonical)
    /// is refused whole, without a crash.
    @Test func storedValuesParseStrictly() throws {
        var all: [DirectoryProperties] = []
        for a in [nil] + CompressionAlgorithm.allCases.map(Optional.some) {
            for l in [nil, a.map { $0.levels.upperBound }] {
                for c in [nil, true, false] {
                    for b in [nil, 4096, 1 << 20] { all.append(DirectoryProperties(algorithm: a, level: l, compress: c, blockSize: b)) }
                }
            }
        }
        var r = Rng(42)
        for p in all {
            #expect(try DirectoryProperties(stored: p.stored) == p, "\(p.text)")
            #expect(try DirectoryProperties().applying(p.items.isEmpty ? ["clear"] : p.items) == p, "\(p.text)")
            for _ in 0..<20 {
                var bytes = p.stored
                bytes[r.int(bytes.count)] = UInt8(truncatingIfNeeded: r.next())
                if let q = try? DirectoryProperties(stored: bytes) { #expect(q.stored == bytes) }
            }
        }
        for _ in 0..<2000 {
            let bytes = r.bytes(r.int(80))
            if let q = try? DirectoryProperties(stored: bytes) { #expect(q.stored == bytes) }
        }
        #expect(throws: (any Error).self) { try DirectoryProperties(stored: Array("v1 algorithm=zstd level=3 ".utf8)) }
        #expect(throws: (any Error).self) { try DirectoryProperties(stored: Array("v1 block_size=1024k".utf8)) }
        #expect(throws: (any Error).self) { try DirectoryProperties(stored: Array("v1 clear".utf8)) }
    }

    /// zstd level 3 on a directory: a new file there is a zstd container
    /// of level 3 whose block is what the engine writes at level 3 (not at
    /// the mount's level 1); a new subdirectory gets the same properties, and
    /// keeps them when moved; files elsewhere take the mount's options.
    @Test func aDirectorysPropertiesReachItsNewFilesAndSubdirectories() throws {
        try withMount { m in
            #expect(mkdir(m.path("d"), 0o755) == 0)
            let set = Self.warpfs("property", "set", m.path("d"), "algorithm=zstd", "level=3")
            #expect(set.status == 0 && set.output.isEmpty, "\(set.output)")
            #expect(Self.warpfs("property", "get", m.path("d")).output == "algorithm=zstd\nlevel=3\n")
            #expect(Self.warpfs("property", "get", "--json", m.path("d")).output
                    == "{\n  \"path\": \"\(m.path("d"))\",\n  \"properties\": {\n    \"algorithm\": \"zstd\",\n    \"level\": 3\n  }\n}\n")
            #expect(Self.stored(m.backingPath("d")) == "v1 algorithm=zstd level=3")

            let block = Self.text(1, 65536)
            try FileIO.write(m.path("d/f"), block)
            try FileIO.write(m.path("outside"), block)
            #expect(mkdir(m.path("d/sub"), 0o755) == 0)
            try FileIO.write(m.path("d/sub/g"), block)
            try m.remount()     // everything stored; read back cold
            for name in ["d/f", "d/sub/g", "outside"] { #expect(try FileIO.read(m.path(name)) == block, "\(name)") }

            let f = try #require(try Self.header(m.backingPath("d/f")))
            #expect(f.encoding == 5 && f.level == 3 && f.blockSize == 65536, "\(f)")
            #expect(try Self.header(m.backingPath("d/sub/g")).map { [$0.encoding, $0.level] } == [5, 3])
            #expect(try Self.header(m.backingPath("outside")).map { [$0.encoding, $0.level] } == [1, 1])
            #expect(Self.stored(m.backingPath("d/sub")) == "v1 algorithm=zstd level=3")
            #expect(Self.warpfs("property", "get", m.path("d/sub")).output == "algorithm=zstd\nlevel=3\n")

            // The level reached the engine: the payload is the device's level-3 output, not its level-1 output.
            let device = EmulatedZipDevice(configuration: EmulatedDeviceConfiguration(engines: 1))
            defer { device.shutdown() }
            func zstd(_ level: Int) throws -> [UInt8] {
                try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .zstd, direction: .compress, level: level))
                    .compress(block)
            }
            let (three, one) = (try zstd(3), try zstd(1))
            try #require(three != one, "this block compresses the same at levels 1 and 3: the test shows nothing")
            let slots = try liveSlots(m.backingPath("d/f"), blockSize: 65536)
            let (b, s, h) = try #require(slots.first)
            #expect(slots.count == 1 && h.encoding == .zstd)
            let fd = open(m.backingPath("d/f"), O_RDONLY)
            defer { close(fd) }
            let layout = try containerLayout(m.backingPath("d/f"))
            #expect(try FileIO.pread(fd, h.storedLength, layout.payloadOffset(block: b, slot: s, header: h)) == three)

            // Moved out of d, the subdirectory keeps its properties.
            #expect(rename(m.path("d/sub"), m.path("moved")) == 0)
            try FileIO.write(m.path("moved/h"), block)
            #expect(try Self.header(m.backingPath("moved/h")).map { [$0.encoding, $0.level] } == [5, 3])
            // Cleared, new files take the mount's options again; the subdirectory keeps its copy.
            #expect(Self.warpfs("property", "clear", m.path("d")).status == 0)
            #expect(Self.warpfs("property", "get", m.path("d")).output == "")
            #expect(Self.warpfs("property", "get", "--json", m.path("d")).output.contains("\"properties\": {}"))
            #expect(Self.stored(m.backingPath("d")) == nil)
            try FileIO.write(m.path("d/after"), block)
            #expect(try Self.header(m.backingPath("d/after")).map { [$0.encoding, $0.level] } == [1, 1])
            #expect(Self.stored(m.backingPath("moved")) == "v1 algorithm=zstd level=3")
        }
    }

    /// `nocompress` makes new files plain; `compress` with a block size
    /// makes containers of that block size, also on a `nocompress` mount;
    /// `set` changes only what it names, and another algorithm drops the
    /// level of the old one.
    @Test func nocompressAndBlockSizeShapeNewFiles() throws {
        let data = Self.text(2, 100_000)
        try withMount(options: "nocompress") { m in
            #expect(mkdir(m.path("plain"), 0o755) == 0 && mkdir(m.path("packed"), 0o755) == 0)
            try FileIO.write(m.path("default"), data)
            #expect(try Self.header(m.backingPath("default")) == nil, "a nocompress mount makes plain files")

            #expect(Self.warpfs("property", "set", m.path("packed"), "compress", "block_size=16k", "algorithm=lz4", "level=9").status == 0)
            try Self.writeSynced(m.path("packed/f"), data)
            let h = try #require(try Self.header(m.backingPath("packed/f")))
            #expect(h.blockSize == 16384 && h.encoding == 6 && h.level == 9, "\(h)")
            #expect(try liveSlots(m.backingPath("packed/f"), blockSize: 16384).count == 7)

            // Only what is named changes; another algorithm without a level drops the old level.
            #expect(Self.warpfs("property", "set", m.path("packed"), "algorithm=zstd").status == 0)
            #expect(Self.warpfs("property", "get", m.path("packed")).output == "algorithm=zstd\ncompress\nblock_size=16k\n")
            #expect(Self.warpfs("property", "set", m.path("packed"), "level=12").status == 0)
            #expect(Self.warpfs("property", "clear", m.path("packed"), "block_size").status == 0)
            #expect(Self.warpfs("property", "get", m.path("packed")).output == "algorithm=zstd\nlevel=12\ncompress\n")
            try FileIO.write(m.path("packed/g"), data)
            #expect(try Self.header(m.backingPath("packed/g")).map { [$0.blockSize, Int($0.encoding), Int($0.level)] } == [65536, 5, 12])
            // An algorithm without a level takes the mount's level (1 here).
            #expect(Self.warpfs("property", "clear", m.path("packed"), "level").status == 0)
            try FileIO.write(m.path("packed/h"), data)
            #expect(try Self.header(m.backingPath("packed/h")).map { [$0.encoding, $0.level] } == [5, 1])
            for name in ["packed/f", "packed/g", "packed/h"] { #expect(try FileIO.read(m.path(name)) == data, "\(name)") }
        }
        try withMount { m in
            #expect(mkdir(m.path("plain"), 0o755) == 0)
            #expect(Self.warpfs("property", "set", m.path("plain"), "nocompress").status == 0)
            try FileIO.write(m.path("plain/f"), data)
            #expect(try FileIO.read(m.backingPath("plain/f")) == data, "a nocompress directory makes plain files")
            #expect(mkdir(m.path("plain/sub"), 0o755) == 0)
            try FileIO.write(m.path("plain/sub/f"), data)
            #expect(try FileIO.read(m.backingPath("plain/sub/f")) == data)
            #expect(Self.stored(m.backingPath("plain/sub")) == "v1 nocompress")
        }
    }

    /// A file's existing blocks keep their codec and level when its
    /// directory gets other properties, and also under a mount of another
    /// algorithm and a level the file's codec does not have (zstd 19 over a
    /// deflate file, which once failed every write with EIO).
    @Test func existingFilesKeepTheirCodec() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        let backing = root + "/b"
        mkdir(backing, 0o755)
        var model = Self.text(3, 6 * 65536)
        do {
            let m = try TestMount(backing: backing)
            defer { m.close() }
            #expect(mkdir(m.path("d"), 0o755) == 0)
            try FileIO.write(m.path("d/old"), model)
            #expect(Self.warpfs("property", "set", m.path("d"), "algorithm=lz4", "level=12").status == 0)
            let fd = open(m.path("d/old"), O_RDWR | O_CLOEXEC)
            #expect(fd >= 0)
            let patch = Self.text(4, 2 * 65536)
            try FileIO.pwrite(fd, patch, 65536)
            model.replaceSubrange(65536..<(3 * 65536), with: patch)
            #expect(fsync(fd) == 0)
            close(fd)
            try FileIO.write(m.path("d/new"), model)
        }
        #expect(try Self.header(backing + "/d/old").map { [$0.encoding, $0.level] } == [1, 1])
        #expect(try liveSlots(backing + "/d/old", blockSize: 65536).allSatisfy { $0.header.encoding == .deflate })
        #expect(try Self.header(backing + "/d/new").map { [$0.encoding, $0.level] } == [6, 12])
        #expect(try liveSlots(backing + "/d/new", blockSize: 65536).allSatisfy { $0.header.encoding == .lz4 })

        let m = try TestMount(options: "algorithm=zstd,level=19", backing: backing)
        defer { m.close() }
        let fd = open(m.path("d/old"), O_RDWR | O_CLOEXEC)
        #expect(fd >= 0)
        let patch = Self.text(5, 65536)
        try FileIO.pwrite(fd, patch, 4 * 65536)
        model.replaceSubrange((4 * 65536)..<(5 * 65536), with: patch)
        #expect(fsync(fd) == 0, "writing a deflate file under a zstd level-19 mount: \(String(cString: strerror(errno)))")
        close(fd)
        try m.remount()
        #expect(try FileIO.read(m.path("d/old")) == model)
        m.unmount()
        #expect(try liveSlots(backing + "/d/old", blockSize: 65536).allSatisfy { $0.header.encoding == .deflate })
        let fsck = runCommand([warpfsBinary, "fsck", backing])
        #expect(fsck.status == 0, "\(fsck.output)")
    }

    /// Properties live in the backing directory: they survive a remount,
    /// `property get` reads them offline (root), an offline `set` is seen
    /// by the next mount, and an offline change while mounted is refused
    /// with the path to use instead.
    @Test func propertiesSurviveARemountAndWorkOffline() throws {
        let m = try TestMount()
        defer { m.close() }
        #expect(mkdir(m.path("d"), 0o755) == 0)
        #expect(Self.warpfs("property", "set", m.path("d"), "algorithm=gzip", "level=9").status == 0)
        let busy = Self.warpfs("property", "set", m.backingPath("d"), "nocompress")
        #expect(busy.status == 1 && busy.output.contains("in the backing directory of the WarpFS mount at \(m.mountpoint)")
                && busy.output.contains(m.path("d")), "\(busy.output)")
        try m.remount()
        #expect(Self.warpfs("property", "get", m.path("d")).output == "algorithm=gzip\nlevel=9\n")
        try FileIO.write(m.path("d/f"), Self.text(6, 10_000))
        #expect(try Self.header(m.backingPath("d/f")).map { [$0.encoding, $0.level] } == [3, 9])

        m.unmount()
        #expect(Self.warpfs("property", "get", m.backingPath("d")).output == "algorithm=gzip\nlevel=9\n")
        let offline = Self.warpfs("property", "set", m.backingPath("d"), "algorithm=lz4")
        #expect(offline.status == 0, "\(offline.output)")
        #expect(Self.stored(m.backingPath("d")) == "v1 algorithm=lz4")
        try m.start()
        try FileIO.write(m.path("d/g"), Self.text(7, 10_000))
        #expect(try Self.header(m.backingPath("d/g")).map { [$0.encoding, $0.level] } == [6, 1])
        #expect(try FileIO.read(m.path("d/f")) == Self.text(6, 10_000))
    }

    /// Bad values are refused with a message naming them, and nothing
    /// changes: not through the command, and not when sent to the mount
    /// directly (a list with one bad item applies none of it).
    @Test func invalidValuesAreRefusedAndChangeNothing() throws {
        try withMount { m in
            #expect(mkdir(m.path("d"), 0o755) == 0 && mkdir(m.path("e"), 0o755) == 0)
            try FileIO.write(m.path("file"), [1, 2, 3])
            #expect(Self.warpfs("property", "set", m.path("d"), "algorithm=zstd", "level=3").status == 0)
            for (args, message) in [(["algorithm=zstd", "level=25"], "level=25: zstd takes levels 1...19"),
                                    (["level=25"], "level=25: zstd takes levels 1...19"),
                                    (["algorithm=brotli"], "algorithm=brotli: expected one of deflate, zlib, gzip, zstd, lz4"),
                                    (["algorithm=lz4", "level=13"], "level=13: lz4 takes levels 1...12"),
                                    (["block_size=5000"], "block_size=5000: expected a size in 4k...1m"),
                                    (["block_size=2m"], "block_size=2m"), (["colour=blue"], "unknown property 'colour'"),
                                    (["compress", "nocompress"], "'compress' given twice"), (["level"], "'level' needs a value")] {
                let r = Self.warpfs(["property", "set", m.path("d")] + args)
                #expect(r.status == 1 && r.output.contains(message) && r.output.contains("nothing changed"), "\(args): \(r.output)")
                #expect(Self.stored(m.backingPath("d")) == "v1 algorithm=zstd level=3", "\(args)")
            }
            let bare = Self.warpfs("property", "set", m.path("e"), "level=3")
            #expect(bare.status == 1 && bare.output.contains("level=3 needs an algorithm"), "\(bare.output)")
            #expect(Self.stored(m.backingPath("e")) == nil)
            let file = Self.warpfs("property", "set", m.path("file"), "nocompress")
            #expect(file.status == 1 && file.output.contains("not a directory"), "\(file.output)")
            #expect(Self.warpfs("property", "set", m.path("d")).status != 0, "set needs a property")
            #expect(Self.warpfs("property", "set", m.path("d"), "clear").status != 0, "clearing is its own subcommand")
            #expect(Self.warpfs("property", "clear", m.path("d"), "colour").status == 1)

            // Straight to the mount's attribute: refused whole with EINVAL.
            for value in ["algorithm=lz4 level=25", "algorithm=lz4 colour=blue", "nocompress level=", "\u{1}"] {
                let bytes = Array(value.utf8)
                #expect(setxattr(m.path("d"), DirectoryProperties.interfaceName, bytes, bytes.count, 0) == -1 && errno == EINVAL, "\(value)")
            }
            #expect(Self.stored(m.backingPath("d")) == "v1 algorithm=zstd level=3")
            #expect(m.log.contains("properties 'algorithm=lz4 level=25' refused: level=25: lz4 takes levels 1...12"), "\(m.log)")
            try FileIO.write(m.path("d/f"), Self.text(8, 10_000))
            #expect(try Self.header(m.backingPath("d/f")).map { [$0.encoding, $0.level] } == [5, 3])
            // The stored attribute is the mount's own: not reachable through it.
            var buf = [UInt8](repeating: 0, count: 256)
            #expect(getxattr(m.path("d"), DirectoryProperties.storedName, &buf, buf.count) == -1 && errno == ENODATA)
            let value = Array("v1 nocompress".utf8)
            #expect(setxattr(m.path("d"), DirectoryProperties.storedName, value, value.count, 0) == -1 && errno == EPERM)
        }
    }

    /// A stored value that does not parse (written on the backing directory
    /// directly) is ignored as a whole: files fall back to the mount's
    /// options, the log says which directory and why, new subdirectories do
    /// not copy it, `get` reports it, and `set` or `clear` replaces it.
    @Test func aGarbageStoredValueIsIgnoredWithALogLine() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        let backing = root + "/b"
        mkdir(backing, 0o755)
        let garbage: [(String, [UInt8])] = [
            ("level", Array("v1 algorithm=zstd level=25".utf8)), ("version", Array("v2 algorithm=zstd".utf8)),
            ("spaces", Array("v1  algorithm=zstd".utf8)), ("order", Array("v1 level=3 algorithm=zstd".utf8)),
            ("alias", Array("v1 compression=zstd".utf8)), ("newline", Array("v1 algorithm=zstd\n".utf8)),
            ("binary", [0x76, 0x31, 0x20, 0x00, 0xFF, 0x80]), ("long", Array(("v1 " + String(repeating: "x", count: 300)).utf8)),
            ("empty", []), ("bare", Array("v1 level=3".utf8)),
        ]
        for (name, value) in garbage {
            mkdir(backing + "/" + name, 0o755)
            try Self.store(backing + "/" + name, value)
        }
        let m = try TestMount(backing: backing)
        defer { m.close() }
        for (name, _) in garbage {
            try FileIO.write(m.path(name + "/f"), Self.text(9, 10_000))
            #expect(try Self.header(m.backingPath(name + "/f")).map { [$0.encoding, $0.level, UInt8($0.blockSize >> 12)] } == [1, 1, 16], "\(name)")
            #expect(m.log.contains("\(m.backingPath(name)): \(DirectoryProperties.storedName) is "), "\(name): \(m.log)")
            #expect(mkdir(m.path(name + "/sub"), 0o755) == 0)
            #expect(Self.stored(m.backingPath(name + "/sub")) == nil, "\(name): the garbage was copied")
            let get = Self.warpfs("property", "get", m.path(name))
            #expect(get.status == 1 && get.output.contains("not valid and are ignored"), "\(name): \(get.output)")
        }
        #expect(m.log.contains("ignored: new files here take the mount's options"))
        // Replaced by a set, removed by a clear.
        #expect(Self.warpfs("property", "set", m.path("level"), "algorithm=zstd").status == 0)
        #expect(Self.stored(m.backingPath("level")) == "v1 algorithm=zstd")
        #expect(Self.warpfs("property", "clear", m.path("version")).status == 0)
        #expect(Self.stored(m.backingPath("version")) == nil)
        try FileIO.write(m.path("level/g"), Self.text(10, 10_000))
        #expect(try Self.header(m.backingPath("level/g")).map { $0.encoding } == 5)
    }

    /// On a mount shared with `allow_other`, a real unprivileged user may
    /// not change the properties of a directory it does not own, even one
    /// it may write; it may read them; on its own directory it may set
    /// them, and its new files there follow them. Root may change anyone's.
    @Test func onlyTheOwnerOrRootMayChangeProperties() throws {
        let user = try TestUser.ensure()
        try withMount(options: "allow_other") { m in
            openPathForOthers(m.mountpoint)
            #expect(mkdir(m.path("roots"), 0o777) == 0 && chmod(m.path("roots"), 0o777) == 0)
            #expect(Self.warpfs("property", "set", m.path("roots"), "algorithm=zstd").status == 0)
            let denied = user.run([warpfsBinary, "property", "set", m.path("roots"), "nocompress"])
            #expect(denied.status == 1 && denied.output.contains("only the directory's owner or root may change its properties"),
                    "\(denied.output)")
            let cleared = user.run([warpfsBinary, "property", "clear", m.path("roots")])
            #expect(cleared.status == 1, "\(cleared.output)")
            #expect(Self.stored(m.backingPath("roots")) == "v1 algorithm=zstd")
            #expect(m.log.contains("uid \(user.uid) may not set its properties"), "\(m.log)")
            let read = user.run([warpfsBinary, "property", "get", m.path("roots")])
            #expect(read.status == 0 && read.output == "algorithm=zstd\n", "\(read.output)")
            // The attribute directly, without the command: EPERM.
            let script = "import os, sys\ntry:\n    os.setxattr(sys.argv[1], 'user.warpfs.property', b'nocompress'); print('ok')\n"
                + "except OSError as e: print(e.errno)"
            #expect(user.run([PermissionTests.python, "-c", script, m.path("roots")]).output.trimmingNewlines == "\(EPERM)")
            #expect(user.run([PermissionTests.python, "-c", script.replacingSetWithRemove, m.path("roots")]).output.trimmingNewlines == "\(EPERM)")

            let made = user.run(["/bin/mkdir", m.path("roots/mine")])
            #expect(made.status == 0, "\(made.output)")
            #expect(Self.stored(m.backingPath("roots/mine")) == "v1 algorithm=zstd", "inherited by the user's new directory")
            let own = user.run([warpfsBinary, "property", "set", m.path("roots/mine"), "algorithm=lz4", "level=5"])
            #expect(own.status == 0, "\(own.output)")
            let wrote = user.shell("seq 30000 > \(m.path("roots/mine/f"))")
            #expect(wrote.status == 0, "\(wrote.output)")
            let st = try FileIO.stat(m.path("roots/mine/f"))
            #expect(st.st_uid == user.uid)
            #expect(try Self.header(m.backingPath("roots/mine/f")).map { [$0.encoding, $0.level] } == [6, 5])
            // Root may change the user's directory.
            #expect(Self.warpfs("property", "set", m.path("roots/mine"), "nocompress").status == 0)
            #expect(Self.stored(m.backingPath("roots/mine")) == "v1 algorithm=lz4 level=5 nocompress")
            // Offline, a user may neither read nor change a backing directory's properties.
            let offline = user.run([warpfsBinary, "property", "get", m.backingPath("roots")])
            #expect(offline.status == 1 && offline.output.contains("only root may read"), "\(offline.output)")
        }
    }
}

private extension String {
    /// The setxattr script of `onlyTheOwnerOrRootMayChangeProperties` as a removexattr.
    var replacingSetWithRemove: String {
        var s = self
        if let r = s.range(of: "os.setxattr(sys.argv[1], 'user.warpfs.property', b'nocompress')") {
            s.replaceSubrange(r, with: "os.removexattr(sys.argv[1], 'user.warpfs.property')")
        }
        return s
    }
}
