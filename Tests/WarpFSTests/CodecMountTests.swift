#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpFSCore
import WarpFSFormat

/// Every codec of the accelerator through real mounts: each block records
/// its encoding, so one file may hold blocks of several codecs and every
/// mount reads them all whatever its own `algorithm=`; `fsck`, `compress`
/// and `decompress` know them too.
@Suite struct CodecMountTests {
    /// Mixed data: text that compresses, noise that does not, zero runs.
    static func data(_ seed: UInt64, blocks: Int) -> [UInt8] {
        var r = Rng(seed)
        var out: [UInt8] = []
        for b in 0..<blocks {
            switch b % 4 {
            case 0, 1: out += r.text(65536)
            case 2: out += r.bytes(32768) + r.text(32768)
            default: out += [UInt8](repeating: 0, count: 65536)
            }
        }
        return out
    }

    /// A mount with each algorithm writes containers that say so (the
    /// header's byte 16 is the encoding of new blocks, docs/FORMAT.md),
    /// compress, and read back before and after a remount.
    @Test(arguments: ["zstd", "lz4", "deflate", "zlib", "gzip"])
    func aMountWithEachAlgorithmRoundTrips(algorithm: String) throws {
        let content = Self.data(11, blocks: 24)
        try withMount(options: "algorithm=\(algorithm)") { m in
            try FileIO.write(m.path("f"), content)
            #expect(try FileIO.read(m.path("f")) == content)
            try m.remount()
            #expect(try FileIO.read(m.path("f")) == content)
            // Compression happened: the backing file is smaller than the data.
            let st = try FileIO.stat(m.backingPath("f"))
            #expect(Int(st.st_blocks) * 512 < content.count, "\(algorithm): \(st.st_blocks * 512) bytes for \(content.count)")
            let encodings = ["deflate": 1, "zlib": 2, "gzip": 3, "zstd": 5, "lz4": 6]
            let header = try FileIO.read(m.backingPath("f"))
            #expect(header.count > 16 && Int(header[16]) == encodings[algorithm], "\(algorithm): header encoding \(header.count > 16 ? header[16] : 0)")
        }
    }

    /// `deflate_engine=zlib` (and `warpdrived --deflate-engine zlib` for a
    /// mount on the daemon) makes the blocks stock zlib's output byte for
    /// byte (`compress2` at the same level); the default engine, ISA-L,
    /// writes other bytes that stock zlib inflates to the same block.
    @Test func theZlibEngineWritesStockZlibsBytes() throws {
        var r = Rng(5)
        let content = r.text(65536)
        var expected = [UInt8](repeating: 0, count: Int(compressBound(65536)))
        var n = UInt(expected.count)
        #expect(compress2(&expected, &n, content, UInt(content.count), 1) == Z_OK)
        expected.removeSubrange(Int(n)...)
        let cases: [(engine: String, daemon: Bool)] = [("zlib", false), ("isal", false), ("zlib", true), ("isal", true)]
        for (engine, onDaemon) in cases {
            let label = onDaemon ? "warpdrived --deflate-engine \(engine)" : "deflate_engine=\(engine)"
            let daemon = onDaemon ? try SharedDeviceTests.Daemon(arguments: ["--deflate-engine", engine]) : nil
            defer { daemon?.close() }
            let options = "algorithm=zlib,level=1," + (daemon.map { "device=\($0.socket)" } ?? "deflate_engine=\(engine)")
            try withMount(options: options) { m in
                try FileIO.write(m.path("f"), content)
                try m.remount()
                let slots = try liveSlots(m.backingPath("f"), blockSize: 65536)
                #expect(slots.count == 1 && slots[0].header.encoding == .zlib, "\(label): \(slots)")
                guard let (b, s, h) = slots.first else { return }
                let fd = open(m.backingPath("f"), O_RDONLY)
                defer { close(fd) }
                let payload = try FileIO.pread(fd, h.storedLength, BlockLayout(blockSize: 65536).payloadOffset(block: b, slot: s, header: h))
                if engine == "zlib" {
                    #expect(payload == expected, "\(label): \(payload.count) bytes against stock zlib's \(expected.count)")
                } else {
                    #expect(payload != expected, "\(label) wrote zlib's bytes: the engine choice changed nothing")
                    var out = [UInt8](repeating: 0, count: 65536)
                    var outLen = UInt(out.count)
                    #expect(uncompress(&out, &outLen, payload, UInt(payload.count)) == Z_OK && out == content, "\(label)")
                }
                #expect(try FileIO.read(m.path("f")) == content)
            }
        }
        #expect(throws: (any Error).self) { try MountOptions(lists: ["deflate_engine=qat"]) }
        let bad = runCommand([String(warpfsBinary.dropLast("warpfs".count)) + "warpdrived", "--socket", "/nonexistent/s", "--deflate-engine", "qat"])
        #expect(bad.status != 0 && bad.output.contains("--deflate-engine must be one of zlib, isal"), "\(bad.output)")
    }

    /// One file written under three algorithms in turn (deflate, then zstd
    /// over some blocks, then lz4 over others) reads back whole under each
    /// of the three mounts, and `fsck` finds nothing wrong.
    @Test func oneFileHoldsBlocksOfSeveralCodecs() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        let backing = root + "/b"
        mkdir(backing, 0o755)
        var model = Self.data(21, blocks: 32)
        for (algorithm, range) in [("deflate", 0..<32), ("zstd", 8..<20), ("lz4", 16..<28)] {
            let m = try TestMount(options: "algorithm=\(algorithm)", backing: backing)
            defer { m.close() }
            let fd = open(m.path("f"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            #expect(fd >= 0)
            var r = Rng(UInt64(range.lowerBound + 100))
            let fresh = r.text(range.count * 65536)
            try FileIO.pwrite(fd, fresh, range.lowerBound * 65536)
            model.replaceSubrange(range.lowerBound * 65536..<range.upperBound * 65536, with: fresh)
            #expect(fsync(fd) == 0)
            close(fd)
            #expect(try FileIO.read(m.path("f")) == model, "after the \(algorithm) writes")
        }
        for algorithm in ["deflate", "zstd", "lz4"] {
            let m = try TestMount(options: "algorithm=\(algorithm)", backing: backing)
            defer { m.close() }
            #expect(try FileIO.read(m.path("f")) == model, "read under algorithm=\(algorithm)")
        }
        let f = runCommand([warpfsBinary, "fsck", backing])
        #expect(f.status == 0, "\(f.output)")
    }

    /// `compress` and `decompress` with `-o algorithm=zstd` and `lz4`: the
    /// file is a container after compressing and byte for byte the same
    /// after decompressing.
    @Test(arguments: ["zstd", "lz4"])
    func offlineConversionWithEachNewCodec(algorithm: String) throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let content = Self.data(31, blocks: 10)
        try FileIO.write(dir + "/f", content)
        let c = runCommand([warpfsBinary, "compress", "-o", "algorithm=\(algorithm)", dir + "/f"])
        #expect(c.status == 0, "\(c.output)")
        #expect(try FileIO.read(dir + "/f") != content)
        #expect(runCommand([warpfsBinary, "fsck", dir]).status == 0)
        let d = runCommand([warpfsBinary, "decompress", dir + "/f"])
        #expect(d.status == 0, "\(d.output)")
        #expect(try FileIO.read(dir + "/f") == content)
    }

    /// Levels are checked against the algorithm, whatever the order of the
    /// options: zstd takes 1...19, lz4 1...12, the deflate family 0...9.
    @Test func levelsAreTheAlgorithms() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        try FileIO.write(dir + "/f", Self.data(41, blocks: 2))
        for (options, ok) in [("algorithm=zstd,level=19", true), ("level=19,algorithm=zstd", true), ("algorithm=zstd,level=20", false),
                              ("algorithm=lz4,level=12", true), ("algorithm=lz4,level=13", false), ("algorithm=deflate,level=10", false),
                              ("algorithm=zstd,level=0", false), ("algorithm=brotli", false)] {
            let r = runCommand([warpfsBinary, "compress", "-o", options, dir + "/f"])
            #expect((r.status == 0) == ok, "\(options): \(r.output)")
            if ok { #expect(runCommand([warpfsBinary, "decompress", dir + "/f"]).status == 0) }
        }
        let split = runCommand([warpfsBinary, "compress", "-o", "level=15", "-o", "algorithm=zstd", dir + "/f"])
        #expect(split.status == 0, "level and algorithm in separate -o lists: \(split.output)")
    }
}
