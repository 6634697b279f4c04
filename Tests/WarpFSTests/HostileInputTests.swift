#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
import WarpFSFormat

/// Damaged backing files on real mounts: flipped bits, truncation, and
/// crafted headers and slot headers with correct checksums. Files are made
/// through a mount (block_size=16k), in containers of each format version
/// (a fixture per version), damaged while unmounted, and read through a
/// fresh mount; offsets and fields follow the container's layout. For every case: each read returns data or EIO
/// (an open may fail with EIO) within a deadline, the file-system process
/// survives and still serves an undamaged file intact, its peak memory
/// stays bounded, and an EIO is logged with the file's name.
@Suite(.serialized) struct HostileInputTests {
    static let blockSize = Fixture.blockSize

    // MARK: Random damage

    /// Bits flipped at random offsets of the allocated parts of each file
    /// (the first page, the slot tables, the payloads). Checksums catch every
    /// flip: a block reads back as its data, as zeros (its slot header is
    /// lost) or as EIO, never as other bytes. The magic (bytes 0..<8) is
    /// left alone: `aFlippedMagicIsNotShownAsAPlainFile` covers it.
    @Test(arguments: 1...6 as ClosedRange<UInt64>, FileHeader.versions)
    func randomBitFlips(seed: UInt64, version: UInt16) throws {
        let f = try Fixture.shared(version)
        try withDamaged(version) { backing in
            var r = Rng(seed &* 7919)
            let magic = FileHeader.magic.count
            for name in Fixture.damageable {
                let extents = try dataExtents(backing + "/" + name)
                for _ in 0..<(1 + r.int(6)) {
                    let offset: Int
                    if r.int(5) < 2 { offset = magic + r.int(BlockLayout.pageSize - magic) } else {
                        let e = extents[r.int(extents.count)]
                        offset = max(magic, e.lowerBound + r.int(e.count))
                    }
                    try flipBit(backing + "/" + name, offset: offset, bit: r.int(8))
                }
            }
        } check: { m in
            for name in Fixture.damageable { try readBack(m, name, expect: .dataOrZeros(f.contents[name]!)) }
        }
    }

    /// Truncated inside the header page, inside a slot table and inside a payload.
    @Test(arguments: 1...3 as ClosedRange<UInt64>, FileHeader.versions)
    func truncation(seed: UInt64, version: UInt16) throws {
        let f = try Fixture.shared(version)
        var names: [(String, String)] = []   // (damaged copy, original)
        try withDamaged(version) { backing in
            var r = Rng(seed &* 104_729)
            let magic = FileHeader.magic.count
            for name in Fixture.damageable {
                let layout = try containerLayout(backing + "/" + name)
                let slots = try liveSlots(backing + "/" + name, blockSize: Self.blockSize).filter { $0.header.storedLength > 0 }
                let groups = (slots.map { $0.block }.max() ?? 0) / BlockLayout.blocksPerGroup
                let payload = slots[r.int(slots.count)]
                let points: [(String, Int)] = [
                    ("header", magic + r.int(BlockLayout.pageSize - magic)),
                    ("table", layout.tableOffset(group: groups == 0 ? 0 : 1 + r.int(groups)) + r.int(BlockLayout.tableSize)),
                    ("payload", layout.payloadOffset(block: payload.block, slot: payload.slot, header: payload.header) + r.int(payload.header.storedLength)),
                ]
                for (what, length) in points {
                    let copy = "\(name).cut-\(what)"
                    _ = runCommand(["/bin/cp", "--sparse=always", backing + "/" + name, backing + "/" + copy])
                    #expect(truncate(backing + "/" + copy, off_t(length)) == 0)
                    names.append((copy, name))
                }
            }
        } check: { m in
            for (copy, original) in names { try readBack(m, copy, expect: .dataOrZeros(f.contents[original]!)) }
        }
    }

    // MARK: Crafted file headers (correct checksums)

    /// Header fields out of range: opening the file is EIO with the reason
    /// logged. (The other version's number in a copy: the header size no
    /// longer matches the version.)
    @Test(arguments: [
        Edit("logical size 2^60", reason: "logical size") { w in w.u64(32, 1 << 60) },
        Edit("logical size Int64.max / 4", reason: "logical size") { w in w.u64(32, UInt64(Int64.max) / 4) },
        Edit("logical size 2^64 - 1", reason: "logical size") { w in w.u64(32, .max) },
        Edit("block size 0", reason: "block size") { w in w.u32(12, 0) },
        Edit("block size 4097", reason: "block size") { w in w.u32(12, 4097) },
        Edit("block size 2 MiB", reason: "block size") { w in w.u32(12, 2 << 20) },
        Edit("block size 2^32 - 1", reason: "block size") { w in w.u32(12, .max) },
        Edit("version 1", reason: "format version 1") { w in w.u16(8, 1) },
        Edit("version 4", reason: "format version 4") { w in w.u16(8, 4) },
        Edit("the other version's number", reason: "header size") { w in w.u16(8, w.bytes[8] == 2 ? 3 : 2) },
        Edit("version 0xFFFF", reason: "format version 65535") { w in w.u16(8, 0xFFFF) },
        Edit("header size 4096", reason: "header size") { w in w.u16(10, 4096) },
        Edit("encoding 9", reason: "encoding") { w in w.u8(16, 9) },
        Edit("encoding raw", reason: "encoding") { w in w.u8(16, 0) },
        Edit("flags 1", reason: "flags") { w in w.u16(18, 1) },
        Edit("generation 2^64 - 1", reason: "generation") { w in w.u64(24, .max) },
    ], FileHeader.versions)
    func headerFieldOutOfRange(_ e: Edit, version: UInt16) throws {
        for file in ["multi", "small"] {
            try withDamaged(version) { backing in
                try editHeader(backing + "/" + file, e.edit)
            } check: { m in
                try readBack(m, file, expect: .openFails)
                #expect(m.log.contains(e.reason), "\(e.name): log: \(m.log)")
            }
        }
    }

    /// A header saying new blocks are stored raw: writing through the mount
    /// must not store compressed payloads labelled raw (they would read back
    /// as compressed bytes). The header is refused, so open is EIO.
    @Test(arguments: FileHeader.versions)
    func writesUnderAHeaderSayingRawReadBackAsWritten(version: UInt16) throws {
        var r = Rng(8)
        let data = r.text(64 << 10)
        try withDamaged(version) { backing in
            try editHeader(backing + "/multi") { $0.u8(16, 0) }
        } check: { m in
            let fd = open(m.path("multi"), O_RDWR)
            if fd < 0 { #expect(errno == EIO); return }
            try FileIO.pwrite(fd, data, 0)
            #expect(fsync(fd) == 0)
            close(fd)
            try m.remount()
            let back = open(m.path("multi"), O_RDONLY)
            defer { close(back) }
            var buf = [UInt8](repeating: 0, count: data.count)
            let n = pread(back, &buf, buf.count, 0)
            #expect(n == -1 && errno == EIO || buf == data, "read \(n) bytes: \(n == data.count ? "other bytes than written" : "")")
        }
    }

    /// A block size in range that does not match the payloads (larger and
    /// smaller than the real one): reads give data or EIO.
    @Test(arguments: [4096, 64 << 10, 1 << 20], FileHeader.versions)
    func blockSizeNotMatchingThePayloads(blockSize: Int, version: UInt16) throws {
        try withDamaged(version) { backing in
            for file in Fixture.damageable { try editHeader(backing + "/" + file) { $0.u32(12, UInt32(blockSize)) } }
        } check: { m in
            for file in Fixture.damageable { try readBack(m, file, expect: .dataOrEIO) }
        }
    }

    /// One copy out of range (with a good checksum), the other valid: the valid one is used.
    @Test(arguments: FileHeader.versions)
    func oneAbsurdCopyAndOneValid(version: UInt16) throws {
        let f = try Fixture.shared(version)
        try withDamaged(version) { backing in
            for file in Fixture.damageable {
                let raw = try readBytes(backing + "/" + file, HeaderCopies.span, at: 0)
                let newest = try raw.withUnsafeBytes { try FileHeader.decodeNewest($0) }.copy
                try editHeader(backing + "/" + file, copies: [1 - newest]) { $0.u64(32, 1 << 62); $0.u64(24, .max) }
                // The edited copy passes its checksum and is refused for its fields.
                let edited = try readBytes(backing + "/" + file, HeaderCopies.span, at: 0).withUnsafeBytes { HeaderCopies($0) }
                guard case .invalid(.unsupported) = edited.copies[1 - newest] else {
                    Issue.record("\(file): the edited copy is \(edited.copies[1 - newest])")
                    continue
                }
            }
        } check: { m in
            for file in Fixture.damageable { try readBack(m, file, expect: .exactly(f.contents[file]!)) }
        }
    }

    /// The first page overwritten whole: without the magic the file is a
    /// plain file (its container bytes are shown as they are).
    @Test(arguments: [UInt8(0x00), 0xFF], FileHeader.versions)
    func firstPageOverwritten(byte: UInt8, version: UInt16) throws {
        try withDamaged(version) { backing in
            for file in Fixture.damageable {
                let fd = open(backing + "/" + file, O_WRONLY)
                defer { close(fd) }
                try FileIO.pwrite(fd, [UInt8](repeating: byte, count: BlockLayout.pageSize), 0)
            }
        } check: { m in
            for file in Fixture.damageable { try readBack(m, file, expect: .dataOrEIO) }
        }
    }

    // MARK: Crafted slot headers and payloads (correct checksums)

    /// Slot headers the decoder refuses: the block reads as never written
    /// (zeros), the others as their data. (The inline flag is version 2's
    /// alone: any flag is refused in version 3.)
    @Test(arguments: [
        SlotEdit("payload outside the region", block: 17) { w in w.offset(w.layout.regionSize - w.layout.placementUnit); w.length(16 << 10) },
        SlotEdit("stored length above the block size", block: 17) { w in w.length((16 << 10) + 1) },
        SlotEdit("stored length 2^32 - 1", block: 20) { w in w.length(.max) },
        SlotEdit("inline outside block 0", block: 1) { w in w.flags(1); w.offset(0); w.length(100) },
        SlotEdit("inline payload above 1 KiB", block: 0) { w in w.flags(1); w.offset(0); w.length(2000) },
        SlotEdit("unknown flags", block: 33) { w in w.flags(0x80) },
        SlotEdit("unknown encoding", block: 2) { w in w.encoding(77) },
        SlotEdit("a hole with a payload", block: 3) { w in w.encoding(BlockEncoding.zero.rawValue) },
        SlotEdit("another block's number", block: 18) { w in w.block(19) },
    ], FileHeader.versions)
    func refusedSlotHeader(_ e: SlotEdit, version: UInt16) throws {
        let f = try Fixture.shared(version)
        let block = e.block
        try withDamaged(version) { backing in
            try editSlot(backing + "/multi", block: block, e.edit)
        } check: { m in
            var want = f.contents["multi"]!
            let range = (block * Self.blockSize)..<min(want.count, (block + 1) * Self.blockSize)
            want.replaceSubrange(range, with: [UInt8](repeating: 0, count: range.count))
            try readBack(m, "multi", expect: .exactly(want))
        }
    }

    /// The largest generation a slot can hold: the file reads as it is.
    @Test(arguments: FileHeader.versions)
    func aSlotWithTheLargestGeneration(version: UInt16) throws {
        let f = try Fixture.shared(version)
        try withDamaged(version) { backing in
            try editSlot(backing + "/multi", block: 17) { $0.generation(SlotHeader.maxGeneration) }
            try editSlot(backing + "/small", block: 0) { $0.generation(SlotHeader.maxGeneration) }
        } check: { m in
            try readBack(m, "multi", expect: .exactly(f.contents["multi"]!))
            try readBack(m, "small", expect: .exactly(f.contents["small"]!))
        }
    }

    /// Two blocks whose slot headers name the same bytes. With block 17's
    /// checksum, block 18 reads as block 17's bytes (the payload checksum
    /// does not cover the block number, so this is undetectable); with its
    /// own checksum, block 18 is EIO.
    @Test(arguments: FileHeader.versions)
    func overlappingPayloads(version: UInt16) throws {
        let f = try Fixture.shared(version)
        let bs = Self.blockSize
        for copyChecksum in [true, false] {
            try withDamaged(version) { backing in
                let p = backing + "/multi"
                let s17 = try #require(try liveSlots(p, blockSize: bs).first { $0.block == 17 })
                try editSlot(p, block: 18) { w in
                    w.encoding(s17.header.encoding.rawValue)
                    w.length(UInt32(s17.header.storedLength))
                    w.offset(s17.header.offset)
                    if copyChecksum { w.checksum(s17.header.payloadChecksum) }
                }
            } check: { m in
                let data = f.contents["multi"]!
                try readBack(m, "multi", expect: .dataOrEIO)
                let fd = open(m.path("multi"), O_RDONLY)
                defer { close(fd) }
                var buf = [UInt8](repeating: 0, count: bs)
                let n = pread(fd, &buf, bs, off_t(18 * bs))
                if copyChecksum { #expect(n == bs && buf == Array(data[(17 * bs)..<(18 * bs)])) } else { #expect(n == -1 && errno == EIO) }
                #expect(try FileIO.pread(fd, bs, 17 * bs) == Array(data[(17 * bs)..<(18 * bs)]))
            }
        }
    }

    /// Payloads with a correct checksum that do not decompress to a block:
    /// garbage, a stream that expands past the block (a bomb), a short
    /// stream, and garbage in another encoding than the file's (each written
    /// at the end of the group's region, clear of the other payloads); and
    /// a raw block whose place at the end of the last group's region lies
    /// past the end of the backing file. Each is EIO for its block only.
    @Test(arguments: ["garbage", "bomb", "short", "garbage gzip", "raw past the end of the backing file"], FileHeader.versions)
    func payloadsThatDoNotDecompressToABlock(kind: String, version: UInt16) throws {
        let f = try Fixture.shared(version)
        let bs = Self.blockSize
        let pastTheEnd = kind.hasSuffix("backing file")
        let block = pastTheEnd ? 39 : 17
        try withDamaged(version) { backing in
            let p = backing + "/multi"
            let layout = try containerLayout(p)
            var r = Rng(3)
            let s = try #require(try liveSlots(p, blockSize: bs).first { $0.block == block })
            var payload: [UInt8]
            var encoding = s.header.encoding
            switch kind {
            case "garbage": payload = r.bytes(3000)
            case "bomb": payload = try deflate([UInt8](repeating: 0x41, count: 1 << 20))
            case "short": payload = try deflate(Array(repeating: 0x42, count: 100))
            case "garbage gzip": payload = [0x1F, 0x8B, 8, 0] + r.bytes(2000); encoding = .gzip
            default: payload = r.bytes(bs); encoding = .raw
            }
            #expect(payload.count <= bs)
            var h = s.header
            h.encoding = encoding
            h.storedLength = payload.count
            h.payloadChecksum = payload.withUnsafeBytes { crc32Checksum($0) }
            h.offset = layout.regionSize - layout.footprintLength(payload.count)
            let at = layout.payloadOffset(block: block, slot: s.slot, header: h)
            let fd = open(p, O_RDWR)
            defer { close(fd) }
            var st = stat()
            #expect(fstat(fd, &st) == 0 && (Int(st.st_size) <= at) == pastTheEnd, "payload at \(at), backing file of \(st.st_size) bytes")
            if !pastTheEnd { try FileIO.pwrite(fd, payload, at) }
            try editSlot(p, block: block) { w in
                w.encoding(h.encoding.rawValue); w.length(UInt32(h.storedLength)); w.offset(h.offset); w.checksum(h.payloadChecksum)
            }
        } check: { m in
            let data = f.contents["multi"]!
            try readBack(m, "multi", expect: .dataOrEIO)
            let fd = open(m.path("multi"), O_RDONLY)
            defer { close(fd) }
            var buf = [UInt8](repeating: 0, count: 100)
            #expect(pread(fd, &buf, 100, off_t(block * bs + 5)) == -1 && errno == EIO, "\(kind)")
            #expect(try FileIO.pread(fd, 100, (block - 1) * bs) == Array(data[((block - 1) * bs)..<((block - 1) * bs + 100)]))
            #expect(m.log.contains("multi: block \(block)"), "log: \(m.log)")
        }
    }

    // MARK: Damage the format cannot refuse alone (the file system's own checks)

    /// A header whose logical size the layout addresses but no backing file
    /// holds: opening it must not allocate per block of the claimed size.
    @Test(arguments: FileHeader.versions)
    func aHugeLogicalSizeDoesNotAllocatePerBlock(version: UInt16) throws {
        let max = BlockLayout(blockSize: Self.blockSize, version: version).maxLogicalSize
        for size in [max, 1 << 50, 1 << 36] {
            try withDamaged(version) { backing in
                try editHeader(backing + "/multi") { $0.u64(32, size) }
            } check: { m in
                try readBack(m, "multi", expect: .dataOrEIO)
            }
        }
    }

    /// The same through the mount, legitimately: a sparse 1 TiB file.
    @Test(arguments: FileHeader.versions)
    func truncatingToATebibyteDoesNotAllocatePerBlock(version: UInt16) throws {
        try withMount(options: formatOption(version)) { m in
            try FileIO.write(m.path("big"), Array("head".utf8))
            #expect(truncate(m.path("big"), 1 << 40) == 0)
            #expect(try FileIO.stat(m.path("big")).st_size == 1 << 40)
            #expect(peakResidentKiB(m.pid) < 300 * 1024, "after truncate: \(peakResidentKiB(m.pid)) KiB")
            try m.remount()
            let fd = open(m.path("big"), O_RDONLY)
            defer { close(fd) }
            #expect(try FileIO.pread(fd, 8, 0) == Array("head".utf8) + [0, 0, 0, 0])
            #expect(peakResidentKiB(m.pid) < 300 * 1024, "after reopening: \(peakResidentKiB(m.pid)) KiB")
        }
    }

    /// A write to a file whose newest slot holds the largest generation:
    /// the next generation does not fit in 48 bits. The write must fail
    /// (or succeed), not stop the file system.
    @Test(arguments: FileHeader.versions)
    func writingAfterTheLargestGenerationDoesNotStopTheFileSystem(version: UInt16) throws {
        try withDamaged(version) { backing in
            try editSlot(backing + "/multi", block: 17) { $0.generation(SlotHeader.maxGeneration) }
        } check: { m in
            let fd = open(m.path("multi"), O_RDWR)
            _ = pwrite(fd, "x", 1, 5)
            _ = fsync(fd)
            close(fd)
        }
    }

    /// Block 18's slot header names block 17's bytes (crafted, with a
    /// correct checksum). Rewriting block 18 and syncing drops its old
    /// version, and that must not punch the pages block 17 still uses.
    @Test(arguments: FileHeader.versions)
    func rewritingABlockWithAnOverlappingPayloadKeepsTheOtherBlock(version: UInt16) throws {
        let f = try Fixture.shared(version)
        let bs = Self.blockSize
        var r = Rng(18)
        let new = r.text(bs)
        try withDamaged(version) { backing in
            let p = backing + "/multi"
            let s17 = try #require(try liveSlots(p, blockSize: bs).first { $0.block == 17 })
            try editSlot(p, block: 18) { w in
                w.encoding(s17.header.encoding.rawValue); w.length(UInt32(s17.header.storedLength))
                w.offset(s17.header.offset); w.checksum(s17.header.payloadChecksum)
            }
        } check: { m in
            let fd = open(m.path("multi"), O_RDWR)
            try FileIO.pwrite(fd, new, 18 * bs)
            #expect(fsync(fd) == 0)
            close(fd)
            try m.remount()
            var want = f.contents["multi"]!
            want.replaceSubrange((18 * bs)..<(19 * bs), with: new)
            try readBack(m, "multi", expect: .exactly(want))
        }
    }

    /// A flipped bit in the magic of copy A, with copy B intact: the file
    /// must not be shown as a plain file of its container bytes.
    @Test(arguments: FileHeader.versions)
    func aFlippedMagicIsNotShownAsAPlainFile(version: UInt16) throws {
        let f = try Fixture.shared(version)
        try withDamaged(version) { backing in
            try flipBit(backing + "/multi", offset: 3, bit: 2)
        } check: { m in
            try readBack(m, "multi", expect: .dataOrZeros(f.contents["multi"]!))
        }
    }
}

/// A named edit of a file header copy, for parameterized cases.
struct Edit: Sendable, CustomTestStringConvertible {
    let name: String
    /// What the log must say.
    let reason: String
    let edit: @Sendable (inout Poke) -> Void
    init(_ name: String, reason: String, _ edit: @escaping @Sendable (inout Poke) -> Void) {
        self.name = name; self.reason = reason; self.edit = edit
    }
    var testDescription: String { name }
}

/// A named edit of the live slot header of `block`, for parameterized cases.
struct SlotEdit: Sendable, CustomTestStringConvertible {
    let name: String
    let block: Int
    let edit: @Sendable (inout SlotPoke) -> Void
    init(_ name: String, block: Int, _ edit: @escaping @Sendable (inout SlotPoke) -> Void) {
        self.name = name; self.block = block; self.edit = edit
    }
    var testDescription: String { name }
}

/// Writes of a slot header's fields where the container's format version
/// keeps them (`SlotHeader`), any value the field holds.
struct SlotPoke {
    var poke: Poke
    let layout: BlockLayout
    var v2: Bool { layout.version == 2 }
    mutating func encoding(_ e: UInt8) { poke.u8(2, e) }
    mutating func flags(_ f: UInt8) { poke.u8(3, f) }
    mutating func length(_ n: UInt32) { poke.u32(4, n) }
    /// Where the payload starts in the region, in bytes (a page number in version 2).
    mutating func offset(_ bytes: Int) {
        if v2 { poke.u16(22, UInt16(bytes / BlockLayout.pageSize)) } else { poke.u32(8, UInt32(bytes)) }
    }
    mutating func block(_ b: UInt64) { if v2 { poke.u64(8, b) } else { poke.put(16, b, 6) } }
    mutating func generation(_ g: UInt64) { poke.put(v2 ? 16 : 22, g, 6) }
    mutating func checksum(_ c: UInt32) { poke.u32(v2 ? 24 : 12, c) }
}

// MARK: - The fixture

/// Files made through a real mount with 16 KiB blocks in containers of
/// format `version`, kept in a directory and copied for each case: `small`
/// (block 0 in the first page: inline in version 2, at the start of group
/// 0's region in version 3), `multi` (40 blocks in 3 groups, some raw, one
/// a hole), `sparse` (two blocks 3 MiB apart) and `intact` (never damaged).
final class Fixture: Sendable {
    static let blockSize = 16 << 10
    static let damageable = ["small", "multi", "sparse"]
    let version: UInt16
    let dir: String
    let contents: [String: [UInt8]]

    private static let made = Mutex<[UInt16: Result<Fixture, Errno>]>([:])

    /// The fixture of format `version`, made on first use.
    static func shared(_ version: UInt16) throws -> Fixture {
        try made.withLock { made in
            if made[version] == nil { made[version] = Result { () throws(Errno) in try Fixture(version: version) } }
            return try made[version]!.get()
        }
    }

    private init(version: UInt16) throws(Errno) {
        self.version = version
        dir = makeTempDir("warpfs-fixture")
        Fixture.removeAtExit(dir)
        let bs = Fixture.blockSize
        var r = Rng(2024)
        var multi = r.text(40 * bs)
        multi.replaceSubrange((5 * bs)..<(6 * bs), with: r.bytes(bs))          // raw
        multi.replaceSubrange((21 * bs)..<(22 * bs), with: r.bytes(bs))        // raw, group 1
        multi.replaceSubrange((9 * bs)..<(10 * bs), with: [UInt8](repeating: 0, count: bs))   // a hole
        var sparse = r.text(5000) + [UInt8](repeating: 0, count: (3 << 20) + 123 - 5000)
        sparse += r.text(3000)
        let files = ["small": r.text(700), "multi": multi, "sparse": sparse, "intact": r.text(100_000)]
        contents = files
        do {
            try withMount(options: "block_size=16k,\(formatOption(version))") { m in
                for (name, data) in files {
                    if name == "sparse" {
                        let fd = open(m.path(name), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
                        try FileIO.pwrite(fd, Array(data[0..<5000]), 0)
                        try FileIO.pwrite(fd, Array(data[(data.count - 3000)...]), data.count - 3000)
                        close(fd)
                    } else {
                        try FileIO.write(m.path(name), data)
                    }
                }
                m.unmount()
                let cp = runCommand(["/bin/cp", "-a", "--sparse=always", m.backing + "/.", dir])
                guard cp.status == 0 else { throw Errno(EIO, "cp: \(cp.output)") }
            }
            // The shapes the cases rely on.
            for name in files.keys {
                let v = try containerVersion(dir + "/" + name)
                guard v == version else { throw Errno(EINVAL, "\(name) is a version-\(v) container, not \(version)") }
            }
            let layout = try containerLayout(dir + "/small")
            let small = try liveSlots(dir + "/small", blockSize: bs)
            guard small.count == 1, small[0].header.isInline == (version == 2),
                  layout.payloadOffset(block: 0, slot: small[0].slot, header: small[0].header) + small[0].header.storedLength <= BlockLayout.pageSize
            else { throw Errno(EINVAL, "small's block 0 is not in the first page: \(small)") }
            let multiSlots = try liveSlots(dir + "/multi", blockSize: bs)
            guard multiSlots.count == 40, multiSlots.contains(where: { $0.header.encoding == .raw && $0.block == 21 }),
                  multiSlots.contains(where: { $0.header.encoding == .zero && $0.block == 9 }) else { throw Errno(EINVAL, "multi: \(multiSlots)") }
        } catch let e as Errno { throw e } catch { throw Errno(EIO, "\(error)") }
    }

    nonisolated(unsafe) private static var toRemove: [String] = []
    private static func removeAtExit(_ dir: String) {
        if toRemove.isEmpty { atexit { for d in Fixture.toRemove { removeTree(d) } } }
        toRemove.append(dir)
    }
}

// MARK: - Damage, mount, read back

/// Copies the fixture of format `version` to a new backing directory,
/// damages it with `damage`, mounts it and runs `check`, then checks that
/// the process survived, still serves the undamaged file intact, and
/// stayed within 300 MiB of peak memory.
func withDamaged(_ version: UInt16, _ damage: (String) throws -> Void, check: (TestMount) throws -> Void,
                 sourceLocation: SourceLocation = #_sourceLocation) throws {
    let f = try Fixture.shared(version)
    let root = makeTempDir("warpfs-hostile")
    defer { removeTree(root) }
    let backing = root + "/backing"
    let cp = runCommand(["/bin/cp", "-a", "--sparse=always", f.dir, backing])
    guard cp.status == 0 else { throw Errno(EIO, "cp: \(cp.output)") }
    try damage(backing)
    let m = try TestMount(backing: backing)
    defer { m.close() }
    try check(m)
    var status: Int32 = 0
    let alive = m.pid > 0 && waitpid(m.pid, &status, WNOHANG) == 0
    #expect(alive, "the file-system process died (status \(status)); log: \(m.log)", sourceLocation: sourceLocation)
    guard alive else { return }
    #expect((try? FileIO.stat(m.path("intact")).st_size) == f.contents["intact"]!.count, sourceLocation: sourceLocation)
    #expect((try? FileIO.read(m.path("intact"))) == f.contents["intact"]!, "the undamaged file", sourceLocation: sourceLocation)
    let peak = peakResidentKiB(m.pid)
    #expect(peak > 0 && peak < 300 * 1024, "peak resident \(peak) KiB", sourceLocation: sourceLocation)
}

/// What reading a damaged file may give.
enum Expectation {
    /// Opening fails with EIO.
    case openFails
    /// Any data, or EIO.
    case dataOrEIO
    /// Each block either as `original` or all zeros, or EIO.
    case dataOrZeros([UInt8])
    /// Exactly these bytes, without errors.
    case exactly([UInt8])
}

/// Reads `name` through the mount (the first 8 MiB and the last 64 KiB, in
/// 64 KiB reads, plus SEEK_DATA) on its own thread with a 30-second
/// deadline, and checks the outcome against `expect`. A hang kills the
/// file-system process (which ends the stuck reads) and fails the test.
func readBack(_ m: TestMount, _ name: String, expect: Expectation, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let path = m.path(name)
    let outcome = runWithDeadline(seconds: 30) { () -> ReadOutcome in
        var o = ReadOutcome()
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { o.openErrno = errno; return o }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { o.openErrno = errno; return o }
        o.size = Int(st.st_size)
        let chunk = 64 << 10
        var offsets = Array(stride(from: 0, to: min(o.size, 8 << 20), by: chunk))
        if o.size > 8 << 20 { offsets.append(o.size - chunk) }
        var buf = [UInt8](repeating: 0, count: chunk)
        for off in offsets {
            let n = pread(fd, &buf, chunk, off_t(off))
            o.reads.append(n < 0 ? (off, .failure(Errno(errno, "read at \(off)"))) : (off, .success(Array(buf[0..<n]))))
        }
        _ = lseek(fd, 0, Int32(WD_SEEK_DATA))
        return o
    }
    guard let outcome else {
        Issue.record("\(name): reading did not finish within 30 s (the file-system process was killed)", sourceLocation: sourceLocation)
        kill(m.pid, SIGKILL)
        return
    }
    let bs = Fixture.blockSize
    var sawEIO = false
    switch expect {
    case .openFails:
        #expect(outcome.openErrno == EIO, "\(name): open gave errno \(outcome.openErrno.map { "\($0)" } ?? "none")", sourceLocation: sourceLocation)
        sawEIO = outcome.openErrno == EIO
    default:
        if let e = outcome.openErrno {
            #expect(e == EIO, "\(name): open failed with errno \(e)", sourceLocation: sourceLocation)
            if case .exactly = expect { Issue.record("\(name): open failed", sourceLocation: sourceLocation) }
            sawEIO = true
        }
        for (off, result) in outcome.reads {
            switch result {
            case .failure(let e):
                #expect(e.code == EIO, "\(name): \(e)", sourceLocation: sourceLocation)
                if case .exactly = expect { Issue.record("\(name): \(e)", sourceLocation: sourceLocation) }
                sawEIO = true
            case .success(let got):
                switch expect {
                case .exactly(let want):
                    let w = off < want.count ? Array(want[off..<min(want.count, off + got.count)]) : []
                    #expect(got == w, "\(name): read at \(off)", sourceLocation: sourceLocation)
                    #expect(outcome.size == want.count, "\(name): size", sourceLocation: sourceLocation)
                case .dataOrZeros(let want):
                    // Block by block: the original bytes (zeros past its end) or all zeros.
                    var at = 0
                    while at < got.count {
                        let pos = off + at, n = min(got.count - at, bs - pos % bs)
                        let piece = got[at..<(at + n)]
                        let original = (pos..<(pos + n)).map { $0 < want.count ? want[$0] : 0 }
                        #expect(piece.elementsEqual(original) || piece.allSatisfy { $0 == 0 },
                                "\(name): bytes at \(pos)..<\(pos + n) are neither the data nor zeros", sourceLocation: sourceLocation)
                        at += n
                    }
                default: break
                }
            }
        }
    }
    if sawEIO {
        #expect(m.log.contains(name), "\(name): EIO without a log line naming the file; log: \(m.log)", sourceLocation: sourceLocation)
    }
}

struct ReadOutcome: Sendable {
    var openErrno: Int32?
    var size = 0
    var reads: [(Int, Result<[UInt8], Errno>)] = []
}

/// Runs `body` on a thread of its own; nil when it has not finished after
/// `seconds` (the thread is left to finish on its own).
func runWithDeadline<T: Sendable>(seconds: Double, _ body: @escaping @Sendable () -> T) -> T? {
    let result = Mutex<T?>(nil)
    let box = DeadlineBox()
    pthread_detach(startThread {
        let r = body()
        result.withLock { $0 = r }
        box.done.store(true, ordering: .releasing)
    })
    let deadline = wd_now_ns() + UInt64(seconds * 1e9)
    while !box.done.load(ordering: .acquiring) {
        if wd_now_ns() > deadline { return nil }
        usleep(2000)
    }
    return result.withLock { $0 }
}

private final class DeadlineBox: Sendable {
    let done = Atomic<Bool>(false)
}

/// Allocated ranges of a (sparse) file.
func dataExtents(_ path: String) throws -> [Range<Int>] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw Errno(errno, path) }
    defer { close(fd) }
    var out: [Range<Int>] = []
    var at: off_t = 0
    while true {
        let start = lseek(fd, at, Int32(WD_SEEK_DATA))
        if start < 0 { break }
        let end = lseek(fd, start, Int32(WD_SEEK_HOLE))
        out.append(Int(start)..<Int(end))
        at = end
    }
    return out
}

func readBytes(_ path: String, _ count: Int, at offset: Int) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw Errno(errno, path) }
    defer { close(fd) }
    return try FileIO.pread(fd, count, offset)
}

func flipBit(_ path: String, offset: Int, bit: Int) throws {
    let fd = open(path, O_RDWR)
    guard fd >= 0 else { throw Errno(errno, path) }
    defer { close(fd) }
    var b = try FileIO.pread(fd, 1, offset)
    if b.isEmpty { b = [0] }
    b[0] ^= UInt8(1 << bit)
    try FileIO.pwrite(fd, b, offset)
}

/// Edits header copies of a container in place (where its format version
/// keeps them, each copy's size) and fixes their checksums where the
/// version each copy then states puts them (copy A last: its checksum
/// covers whatever copy B's touched).
func editHeader(_ path: String, copies: [Int] = [0, 1], _ edit: (inout Poke) -> Void) throws {
    let fd = open(path, O_RDWR)
    guard fd >= 0 else { throw Errno(errno, path) }
    defer { close(fd) }
    var raw = try FileIO.pread(fd, HeaderCopies.span, 0)
    let offsets = raw.withUnsafeBytes { HeaderCopies($0) }.copyOffsets
    let size = offsets[1]   // copy B follows copy A
    for c in copies.sorted(by: >) {
        let off = offsets[c]
        var p = Poke(bytes: Array(raw[off..<(off + size)]))
        edit(&p)
        raw.replaceSubrange(off..<(off + size), with: p.bytes)
        FuzzTests.fixHeaderChecksum(&raw, at: off)
    }
    try FileIO.pwrite(fd, raw, 0)
}

/// Edits the live slot header of `block` in place (its fields where the
/// container's version keeps them) and fixes its checksum.
func editSlot(_ path: String, block: Int, _ edit: (inout SlotPoke) -> Void) throws {
    let bs = Fixture.blockSize
    guard let s = try liveSlots(path, blockSize: bs).first(where: { $0.block == block }) else { throw Errno(ENOENT, "no slot for block \(block)") }
    let layout = BlockLayout(blockSize: bs, version: try containerLayout(path).version)
    let at = layout.slotHeaderOffset(block: block, slot: s.slot)
    let fd = open(path, O_RDWR)
    guard fd >= 0 else { throw Errno(errno, path) }
    defer { close(fd) }
    var p = SlotPoke(poke: Poke(bytes: try FileIO.pread(fd, BlockLayout.slotHeaderSize, at)), layout: layout)
    edit(&p)
    var raw = p.poke.bytes
    FuzzTests.fixSlotChecksum(&raw)
    try FileIO.pwrite(fd, raw, at)
}

/// Raw deflate (RFC 1951) of `data`, the encoding the fixture's blocks use.
func deflate(_ data: [UInt8]) throws -> [UInt8] {
    var out = [UInt8](repeating: 0, count: data.count + 1024)
    var z = z_stream()
    guard wd_deflate_init2(&z, 9, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK else { throw Errno(EIO, "deflateInit2") }
    defer { deflateEnd(&z) }
    var input = data
    let rc = input.withUnsafeMutableBytes { src in
        out.withUnsafeMutableBytes { dst in
            z.next_in = src.baseAddress!.assumingMemoryBound(to: Bytef.self)
            z.avail_in = uInt(src.count)
            z.next_out = dst.baseAddress!.assumingMemoryBound(to: Bytef.self)
            z.avail_out = uInt(dst.count)
            return CWarpSys.deflate(&z, Z_FINISH)
        }
    }
    guard rc == Z_STREAM_END else { throw Errno(EIO, "deflate: \(rc)") }
    return Array(out[0..<Int(z.total_out)])
}
