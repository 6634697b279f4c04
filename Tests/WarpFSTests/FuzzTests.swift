#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpFSFormat

/// Seeded fuzzing of the header and slot-header decoders of both format
/// versions (2 and 3; the corpus holds valid encodings of each, and a slot
/// is sometimes decoded as the other version's): mutated valid encodings
/// (with the checksum fixed up half of the time, so mutations reach the
/// field checks) must never trap, every accepted value must obey the
/// format's invariants, and re-encoding it must decode to the same value. Inputs that ever failed are kept in `regressions` and checked on
/// every run.
///
/// The budget is a fixed number of inputs per decoder (`budget`; set
/// `WARPFS_FUZZ_ITERATIONS` and `WARPFS_FUZZ_SEED` for a longer or other
/// run). A property failure prints the seed, the iteration and the input as
/// a byte array ready for `regressions`; a trap prints them from a signal
/// handler before the process dies.
@Suite(.serialized) struct FuzzTests {
    /// Inputs per decoder: about 6 s for headers and 1 s for slots in a debug build.
    static func budget(_ normal: Int) -> Int { Int(env("WARPFS_FUZZ_ITERATIONS") ?? "") ?? normal }
    static let seed = UInt64(env("WARPFS_FUZZ_SEED") ?? "") ?? 0x5EED_2024

    /// What an input is decoded as.
    enum Target: Equatable, CustomStringConvertible {
        /// `FileHeader.decodeNewest` on (up to) the first 1024 bytes of a file.
        case fileHeader
        /// `SlotHeader.decode` at `block` of a file with `blockSize` and format `version`.
        case slot(block: Int, blockSize: Int, version: UInt16)
        var description: String {
            switch self {
            case .fileHeader: ".fileHeader"
            case .slot(let b, let bs, let v): ".slot(block: \(b), blockSize: \(bs), version: \(v))"
            }
        }
    }

    /// Inputs that once failed a property: each is checked on every run.
    static let regressions: [(name: String, target: Target, bytes: [UInt8])] = [
        ("fuzz seed 0x5EED2024 #48: generation beyond 48 bits (opening computes generation + 1)", .fileHeader, [0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0xb0, 0xe, 0x0, 0x3, 0x8, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x5f, 0x80, 0xfa, 0x5d, 0x79, 0x1, 0x80] + [UInt8](repeating: 0x0, count: 278) + [0x25] + [UInt8](repeating: 0x0, count: 112) + [0x1] + [UInt8](repeating: 0x0, count: 85) + [0x44, 0xa8, 0x2, 0xd1] + [UInt8](repeating: 0x0, count: 508) + [0xc3, 0xa9, 0x57, 0xec]),
        ("fuzz seed 0x5EED2024 #268: logical size beyond what the layout addresses", .fileHeader, [0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0x40, 0x3, 0x0, 0x2, 0x7, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x5a, 0x4, 0x97, 0xd0, 0x1a, 0xe, 0x0, 0x0, 0x0, 0x0, 0x0, 0x1, 0xc0, 0xdf, 0xff, 0x7] + [UInt8](repeating: 0x0, count: 468) + [0x4a, 0x40, 0x58, 0x5f] + [UInt8](repeating: 0x0, count: 508) + [0xc3, 0xa9, 0x57, 0xec]),
        ("fuzz seed 0x5EED2024 #635: nonzero header flags", .fileHeader, [0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0xf0, 0x3, 0x0, 0x3, 0x5, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0xd5, 0xef, 0x28, 0x47, 0x3f, 0xed, 0x0, 0x0, 0x7b, 0xe5, 0xc] + [UInt8](repeating: 0x0, count: 473) + [0x32, 0xa8, 0xa0, 0x10, 0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0xf0, 0x3, 0x0, 0x3, 0x5, 0x0, 0x4a, 0x0, 0x0, 0x0, 0x0, 0xd6, 0xef, 0x28, 0x47, 0x3f, 0xed, 0x0, 0x0, 0xbd, 0x72, 0x6] + [UInt8](repeating: 0x0, count: 268) + [0x6c] + [UInt8](repeating: 0x0, count: 21) + [0x75] + [UInt8](repeating: 0x0, count: 182) + [0x30, 0x3a, 0xf3, 0xde, 0xf0]),
        ("fuzz seed 0x5EED2024 #754: header flags 0xff", .fileHeader, [0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0xf0, 0xb, 0x0, 0x3, 0x8, 0xff, 0x0, 0x0, 0x0, 0x0, 0x0, 0x3, 0x34, 0x55, 0x91, 0xe6, 0x40] + [UInt8](repeating: 0x0, count: 321) + [0x80] + [UInt8](repeating: 0x0, count: 156) + [0xc7, 0xa0, 0x50, 0xe8] + [UInt8](repeating: 0x0, count: 508) + [0xc3, 0xa9, 0x57, 0xec]),
        ("fuzz seed 0x5EED2024 #828: file encoding raw (new blocks would be compressed but labelled raw)", .fileHeader, [0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0x0, 0x2, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0xb6, 0x16, 0xe5, 0x18, 0x6c, 0xb5, 0x0, 0x0, 0x1a, 0x3f, 0xd] + [UInt8](repeating: 0x0, count: 215) + [0x7f] + [UInt8](repeating: 0x0, count: 257) + [0xc3, 0xe9, 0xaf, 0x79, 0x8f, 0x4a, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0xe0, 0x5, 0x0, 0x2, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0xb7, 0x16, 0xe5, 0x18, 0x6c, 0xb5, 0x0, 0x0, 0x1a, 0x3f, 0xd] + [UInt8](repeating: 0x0, count: 473) + [0xae, 0xe0, 0x0, 0x1a]),
        ("fuzz seed 0x5EED2024 #1088: copy A's magic damaged, copy B chosen (the property was wrong, the input stays)", .fileHeader, [0x17, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0x70, 0xb, 0x0, 0x1, 0x2, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x90, 0xbc, 0x7b, 0x9e, 0xd3, 0x0, 0x0, 0x0, 0x25, 0xb7, 0x1] + [UInt8](repeating: 0x0, count: 333) + [0xe1] + [UInt8](repeating: 0x0, count: 139) + [0x74, 0x16, 0x7e, 0x3d, 0x57, 0x41, 0x52, 0x50, 0x46, 0x53, 0xd, 0xa, 0x2, 0x0, 0x0, 0x2, 0x0, 0x70, 0xb, 0x0, 0x1, 0x2, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x91, 0xbc, 0x7b, 0x9e, 0xd3, 0x0, 0x0, 0x0, 0x92, 0xdb] + [UInt8](repeating: 0x0, count: 398) + [0xff, 0xff, 0xff, 0xff] + [UInt8](repeating: 0x0, count: 72) + [0xe6, 0xb8, 0x70, 0xdf]),
        ("fuzz seed 0x5EED2024 #220: an empty payload with a nonzero page", .slot(block: 0, blockSize: 32768, version: 2), [0x57, 0x4b, 0x4] + [UInt8](repeating: 0x0, count: 13) + [0xda, 0x78, 0x75, 0xf5, 0xec, 0x66, 0xb6, 0x0, 0xc8, 0x5f, 0x5c, 0xc7, 0x40, 0xd0, 0x60, 0xb4]),
        // Crafted: the largest logical size the decoder allowed (Int64.max / 4)
        // at 1 MiB blocks; the last group's offset overflows 64 bits.
        ("logical size Int64.max / 4 at 1 MiB blocks", .fileHeader, headerBytes(version: 2) { w in w.u32(12, 1 << 20); w.u64(32, UInt64(Int64.max) / 4) }),
        ("version 3: logical size Int64.max / 4 at 1 MiB blocks", .fileHeader,
         headerBytes(version: 3) { w in w.u32(12, 1 << 20); w.u64(32, UInt64(Int64.max) / 4) }),
        // Crafted: each version's number in a copy of the other's size.
        ("version 3 stated in a 512-byte copy", .fileHeader, headerBytes(version: 2) { w in w.u16(8, 3) }),
        ("version 2 stated in a 64-byte copy", .fileHeader, headerBytes(version: 3) { w in w.u16(8, 2) }),
        // Crafted: a valid version-2 copy A and, where version 2 puts copy B
        // (512), a valid newer version-3 copy: a copy B of another version
        // than its place belongs to.
        ("version-3 copy B at version 2's place", .fileHeader, mixedVersionCopies()),
        // Crafted version-3 slots: an empty payload at a nonzero offset; a
        // payload ending at the last byte of the region; one byte past it;
        // the version-2 inline flag.
        ("version 3: an empty payload at offset 4095", .slot(block: 3, blockSize: 65536, version: 3),
         slotBytes(version: 3) { w in w.u32(4, 0); w.u32(8, 4095) }),
        ("version 3: a payload ending at the region's end", .slot(block: 3, blockSize: 65536, version: 3),
         slotBytes(version: 3) { w in w.u32(8, UInt32(64 * 65536 - 5000)) }),
        ("version 3: a payload one byte past the region's end", .slot(block: 3, blockSize: 65536, version: 3),
         slotBytes(version: 3) { w in w.u32(8, UInt32(64 * 65536 - 4999)) }),
        ("version 3: the inline flag on block 0", .slot(block: 0, blockSize: 65536, version: 3),
         slotBytes(version: 3, block: 0) { w in w.u8(3, 1); w.u32(8, 0); w.u32(4, 100) }),
    ]

    @Test func regressionInputsStayFixed() {
        for r in FuzzTests.regressions {
            let failure = r.bytes.withUnsafeBytes { FuzzTests.check(r.target, $0) }
            #expect(failure == nil, "regression '\(r.name)': \(failure ?? "")")
        }
    }

    @Test func fileHeaderDecoderSurvivesMutations() {
        var r = Rng(FuzzTests.seed)
        // Both versions' header pairs, and the first bytes of an unwritten file.
        var corpus: [[UInt8]] = (0..<64).map { i in FuzzTests.validHeaderPair(&r, version: i % 2 == 0 ? 2 : 3) }
        corpus.append([UInt8](repeating: 0, count: HeaderCopies.span))
        // Mutations go to the fields (the first 40 bytes of a copy, where
        // either version puts one) half of the time.
        let hot = Set(FileHeader.versions.flatMap { FileHeader.copyOffsets(version: $0) }).sorted().map { $0..<($0 + 40) }
        run("fileHeader", budget: FuzzTests.budget(80_000), corpus: corpus, hot: hot, rng: &r,
            fixup: FuzzTests.fixHeaderChecksums) { _, _ in .fileHeader }
    }

    @Test func slotHeaderDecoderSurvivesMutations() {
        var r = Rng(FuzzTests.seed ^ 0xA5A5)
        var corpus: [(bytes: [UInt8], block: Int, blockSize: Int, version: UInt16)] = (0..<64).map { i in
            FuzzTests.validSlot(&r, version: i % 2 == 0 ? 2 : 3)
        }
        corpus.append(([UInt8](repeating: 0, count: 32), 0, 65536, 2))
        corpus.append(([UInt8](repeating: 0, count: 32), 0, 65536, 3))
        let places = corpus.map { ($0.block, $0.blockSize, $0.version) }
        run("slot", budget: FuzzTests.budget(400_000), corpus: corpus.map { $0.bytes }, hot: [0..<32], rng: &r,
            fixup: FuzzTests.fixSlotChecksum) { r, i in
            // Mostly the place the input was made for; sometimes another
            // block, block size or format version.
            var (b, bs, v) = places[i]
            switch r.int(8) {
            case 0: b = [0, 1, 15, 16, 17, b + 1, max(0, b - 1), 1 << 40][r.int(8)]
            case 1: bs = 4096 << r.int(9)
            case 2: v = v == 2 ? 3 : 2
            default: break
            }
            return .slot(block: b, blockSize: bs, version: v)
        }
    }

    // MARK: The fuzz loop

    /// Mutates inputs of `corpus` for `budget` iterations and checks each
    /// against its target; prints the input of the first failures.
    private func run(_ what: String, budget: Int, corpus: [[UInt8]], hot: [Range<Int>], rng r: inout Rng, fixup: (inout [UInt8]) -> Void,
                     target: (inout Rng, Int) -> Target) {
        CrashReport.arm()
        defer { CrashReport.disarm() }
        var failures = 0, accepted = 0
        var kinds = Set<String>()
        let start = wd_now_ns()
        for i in 0..<budget {
            let from = r.int(corpus.count)
            let t = target(&r, from)
            var input = Mutator.mutate(corpus[from], corpus: corpus, hot: hot, rng: &r)
            if r.int(2) == 0 { fixup(&input) }
            CrashReport.note(seed: FuzzTests.seed, iteration: i, target: t, input)
            let failure = input.withUnsafeBytes { FuzzTests.check(t, $0) }
            if failure == nil, input.withUnsafeBytes({ FuzzTests.accepts(t, $0) }) { accepted += 1 }
            if let failure {
                failures += 1
                // The first input of each kind of failure (the message without its numbers).
                if kinds.insert(String(failure.filter { !$0.isNumber })).inserted, kinds.count <= 10 {
                    let message = "\(what) fuzz, seed 0x\(String(FuzzTests.seed, radix: 16)), iteration \(i): \(failure)\n"
                        + "regression: (\"name\", \(t), \(FuzzTests.literal(input))),"
                    Issue.record(Comment(rawValue: message))
                }
            }
        }
        let seconds = Double(wd_now_ns() - start) / 1e9
        print("\(what) fuzz: \(budget) inputs in \(String(format1: seconds)) s "
            + "(\(Int(Double(budget) / seconds)) per second), \(accepted) accepted, \(failures) failures")
        #expect(failures == 0)
        #expect(accepted > budget / 100, "the mutator must get past the checksums")
    }

    /// Whether the decoder accepts the input.
    static func accepts(_ t: Target, _ b: UnsafeRawBufferPointer) -> Bool {
        switch t {
        case .fileHeader: (try? FileHeader.decodeNewest(b)) != nil
        case .slot(let block, let bs, let v): SlotHeader.decode(b, block: block, layout: BlockLayout(blockSize: bs, version: v)) != nil
        }
    }

    /// Decodes `b` as `t` and checks every property; nil when all hold.
    static func check(_ t: Target, _ b: UnsafeRawBufferPointer) -> String? {
        switch t {
        case .fileHeader: checkFileHeader(b)
        case .slot(let block, let bs, let v): checkSlot(b, block: block, blockSize: bs, version: v)
        }
    }

    static func checkFileHeader(_ b: UnsafeRawBufferPointer) -> String? {
        let decoded: (header: FileHeader, copy: Int)
        do { decoded = try FileHeader.decodeNewest(b) } catch {
            // Refused: with the magic and room for the smallest copy it must not say "not a header".
            let smallest = FileHeader.versions.map { FileHeader.size(version: $0) }.min()!
            if FileHeader.hasMagic(b) && b.count >= smallest && error == .notAHeader { return "a copy with the magic is called not a header" }
            return nil
        }
        let h = decoded.header
        guard FileHeader.versions.contains(h.version) else { return "version \(h.version)" }
        // Both copies are where the chosen copy's version puts them.
        let copies = HeaderCopies(b)
        let offsets = FileHeader.copyOffsets(version: h.version), size = FileHeader.size(version: h.version)
        guard copies.copyOffsets == offsets else { return "a version-\(h.version) copy chosen from copies at \(copies.copyOffsets)" }
        guard FileHeader.blockSizeRange.contains(h.blockSize), h.blockSize % 4096 == 0 else { return "block size \(h.blockSize)" }
        guard h.encoding != .raw, h.encoding != .zero else { return "file encoding \(h.encoding)" }
        guard h.generation <= SlotHeader.maxGeneration else { return "generation \(h.generation) beyond 48 bits" }
        let layout = BlockLayout(h)
        guard h.logicalSize <= layout.maxLogicalSize else { return "logical size \(h.logicalSize) beyond \(layout.maxLogicalSize)" }
        guard let end = layoutEnd(h) else { return "logical size \(h.logicalSize) at block size \(h.blockSize) overflows the offsets" }
        if h.logicalSize > 0 {
            // The last block's table and region offsets compute without
            // trapping, and agree with the layout as documented: group g
            // spans g x span ..< (g + 1) x span; in version 2 its region
            // ends the span, in version 3 it starts right after its table
            // (group 0's after both header copies and the table).
            let g = (layout.blockCount(logicalSize: h.logicalSize) - 1) / BlockLayout.blocksPerGroup
            let span = BlockLayout.tablePageSize + layout.regionSize
            let start = end - span
            let table = g == 0 ? (h.version == 2 ? 1024 : 2 * size) : start
            let region = h.version == 2 ? (g == 0 ? 4096 : start + BlockLayout.tablePageSize) : table + BlockLayout.tableSize
            guard layout.tableOffset(group: g) == table else { return "table of group \(g) at \(layout.tableOffset(group: g)), not \(table)" }
            guard layout.regionOffset(group: g) == region, region + layout.regionSize <= end else {
                return "region of group \(g) at \(layout.regionOffset(group: g)), not \(region)"
            }
        }
        // The chosen copy: well formed, and the newest valid one.
        let at = offsets[decoded.copy]
        guard b.count >= at + size else { return "the chosen copy is cut short" }
        let copy = UnsafeRawBufferPointer(rebasing: b[at..<(at + size)])
        let r = copy.baseAddress!
        func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: r.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
        guard FileHeader.hasMagic(copy) else { return "the chosen copy has no magic" }
        guard u16(8) == h.version, u16(10) == UInt16(size) else { return "version \(u16(8)) or size \(u16(10))" }
        guard u16(18) == 0 else { return "flags 0x\(String(u16(18), radix: 16))" }
        guard (try? FileHeader.decode(copy)) == h else { return "the chosen copy alone decodes differently" }
        // (A valid header of the other version in the other copy's place is no copy.)
        let other = offsets[1 - decoded.copy]
        if b.count >= other + size, let o = try? FileHeader.decode(UnsafeRawBufferPointer(rebasing: b[other..<(other + size)])),
           o.version == h.version {
            guard o.generation < h.generation || (o.generation == h.generation && decoded.copy == 0) else { return "an older copy won" }
        }
        // Re-encoding gives the same value, alone and as both copies.
        var again = [UInt8](repeating: 0, count: HeaderCopies.span)
        again.withUnsafeMutableBytes {
            for off in offsets { h.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[off..<(off + size)])) }
        }
        guard (try? again.withUnsafeBytes { try FileHeader.decodeNewest($0) })?.header == h else { return "re-encoded header decodes differently" }
        return nil
    }

    static func checkSlot(_ b: UnsafeRawBufferPointer, block: Int, blockSize: Int, version: UInt16) -> String? {
        let layout = BlockLayout(blockSize: blockSize, version: version)
        guard let h = SlotHeader.decode(b, block: block, layout: layout) else { return nil }
        guard h.block == UInt64(block) else { return "block \(h.block) accepted at \(block)" }
        guard h.storedLength >= 0, h.storedLength <= blockSize else { return "stored length \(h.storedLength)" }
        guard h.encoding != .zero || h.storedLength == 0 else { return "a hole with \(h.storedLength) bytes" }
        guard h.generation <= SlotHeader.maxGeneration else { return "generation \(h.generation)" }
        // What the version's field holds: a page number of 16 bits, or a byte offset of 32.
        guard h.offset >= 0, h.offset % layout.placementUnit == 0 else { return "offset \(h.offset) in version \(version)" }
        if version == 2 {
            guard h.offset / BlockLayout.pageSize <= Int(UInt16.max) else { return "page \(h.offset / BlockLayout.pageSize)" }
        } else {
            guard h.offset <= Int(UInt32.max), h.block <= SlotHeader.maxBlock else { return "offset \(h.offset) or block \(h.block)" }
        }
        if h.isInline {
            guard version == 2 else { return "inline in version \(version)" }
            guard block == 0, h.storedLength <= BlockLayout.inlineCapacity, h.offset == 0 else {
                return "inline at block \(block), \(h.storedLength) bytes, offset \(h.offset)"
            }
            let at = layout.payloadOffset(block: block, slot: 1, header: h)
            guard at + h.storedLength <= BlockLayout.pageSize else { return "inline payload leaves the first page" }
        } else {
            guard h.storedLength > 0 || h.offset == 0 else { return "empty payload at offset \(h.offset)" }
            let footprint = layout.footprint(h)
            guard footprint.upperBound <= layout.regionSize, footprint.count >= h.storedLength else {
                return "bytes \(footprint) outside the region of \(layout.regionSize)"
            }
            let g = block / BlockLayout.blocksPerGroup
            let at = layout.payloadOffset(block: block, slot: 0, header: h)
            let regionEnd = layout.regionOffset(group: g) + layout.regionSize
            guard at >= layout.regionOffset(group: g), at + h.storedLength <= regionEnd else { return "payload outside the group's region" }
            // The region lies after the group's table (and group 0's after the header copies).
            guard layout.regionOffset(group: g) >= layout.tableOffset(group: g) + BlockLayout.tableSize,
                  layout.tableOffset(group: g) >= (g == 0 ? 2 * FileHeader.size(version: version) : 1) else { return "region over the table" }
        }
        // Rejected anywhere else (a header in the wrong place).
        for other in [block + 1, block == 0 ? 16 : block - 1] where SlotHeader.decode(b, block: other, layout: layout) != nil {
            return "also accepted at block \(other)"
        }
        let again = encodedSlot(h, layout)
        guard again.withUnsafeBytes({ SlotHeader.decode($0, block: block, layout: layout) }) == h else { return "re-encoded slot decodes differently" }
        return nil
    }

    /// Where the span of the last group of `h` ends (`g x (4096 + 64 x
    /// blockSize)` for g groups, in both versions), or nil when that
    /// overflows a 64-bit offset.
    static func layoutEnd(_ h: FileHeader) -> Int? {
        guard h.logicalSize > 0 else { return 0 }
        let blocks = (h.logicalSize - 1) / UInt64(h.blockSize) + 1
        let groups = (blocks - 1) / UInt64(BlockLayout.blocksPerGroup) + 1
        let span = UInt64(BlockLayout.tablePageSize + 64 * h.blockSize)
        let (m, o1) = (groups - 1).multipliedReportingOverflow(by: span)
        let (end, o2) = m.addingReportingOverflow(span)
        guard !o1, !o2, end <= UInt64(Int.max) else { return nil }
        return Int(end)
    }

    // MARK: Inputs

    /// The first bytes of a container of `version`: copy A, mostly copy B
    /// (newer or older), and after them zeros or, half of the time, other
    /// bytes (group 0's table in version 3).
    static func validHeaderPair(_ r: inout Rng, version: UInt16) -> [UInt8] {
        func one(_ r: inout Rng) -> FileHeader {
            let bs = 4096 * (1 + r.int(256))
            let max = BlockLayout(blockSize: bs, version: version).maxLogicalSize
            let size: UInt64 = [0, UInt64(r.int(1 << 20)), r.next() % max, max][r.int(4)]
            return FileHeader(version: version, blockSize: bs, encoding: [.deflate, .zlib, .gzip][r.int(3)], level: UInt8(r.int(10)),
                              generation: r.next() & SlotHeader.maxGeneration, logicalSize: size)
        }
        let offsets = FileHeader.copyOffsets(version: version), size = FileHeader.size(version: version)
        var out = [UInt8](repeating: 0, count: HeaderCopies.span)
        if r.int(2) == 0 { out.replaceSubrange((2 * size)..., with: r.bytes(HeaderCopies.span - 2 * size)) }
        let a = one(&r)
        var b = a
        b.generation = r.int(2) == 0 ? a.generation &+ 1 & SlotHeader.maxGeneration : UInt64(r.int(100))
        b.logicalSize = r.int(2) == 0 ? a.logicalSize : a.logicalSize / 2
        let withB = r.int(4) != 0
        out.withUnsafeMutableBytes {
            a.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[offsets[0]..<(offsets[0] + size)]))
            if withB { b.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[offsets[1]..<(offsets[1] + size)])) }
        }
        return out
    }

    static func validSlot(_ r: inout Rng, version: UInt16) -> (bytes: [UInt8], block: Int, blockSize: Int, version: UInt16) {
        let bs = 4096 << r.int(9)
        let layout = BlockLayout(blockSize: bs, version: version)
        let block = [0, 0, 1, 15, 16, 17, r.int(1000), r.int(1 << 30)][r.int(8)]
        let enc = BlockEncoding.allCases[r.int(BlockEncoding.allCases.count)]
        let inline = version == 2 && block == 0 && enc != .zero && r.int(2) == 0
        let len = enc == .zero ? 0 : inline ? 1 + r.int(BlockLayout.inlineCapacity) : 1 + r.int(bs)
        // A place in the region in the version's units; in version 3 sometimes page aligned.
        let unit = version == 3 && r.int(4) == 0 ? BlockLayout.pageSize : layout.placementUnit
        let offset = inline || len == 0 ? 0 : r.int((layout.regionSize - layout.footprintLength(len)) / unit + 1) * unit
        let h = SlotHeader(encoding: enc, isInline: inline, block: UInt64(block), generation: r.next() & SlotHeader.maxGeneration,
                           storedLength: len, payloadChecksum: UInt32(truncatingIfNeeded: r.next()), offset: offset)
        return (encodedSlot(h, layout), block, bs, version)
    }

    /// Recomputes the CRC of both header copies in `b` where the version
    /// each states puts it: copy B (where copy A's stated version puts it)
    /// first, then copy A, which copy B's checksum never overlaps.
    static func fixHeaderChecksums(_ b: inout [UInt8]) {
        guard b.count >= 10 else { return }
        fixHeaderChecksum(&b, at: FileHeader.size(version: UInt16(b[8]) | UInt16(b[9]) << 8))
        fixHeaderChecksum(&b, at: 0)
    }

    /// Recomputes the CRC of the header copy at `off` of `b`: the last 4 bytes
    /// of the size its stated version has, over the bytes before them.
    static func fixHeaderChecksum(_ b: inout [UInt8], at off: Int) {
        guard b.count >= off + 10 else { return }
        let size = FileHeader.size(version: UInt16(b[off + 8]) | UInt16(b[off + 9]) << 8)
        guard b.count >= off + size else { return }
        let crc = b.withUnsafeBytes { crc32Checksum(UnsafeRawBufferPointer(rebasing: $0[off..<(off + size - 4)])) }
        withUnsafeBytes(of: crc.littleEndian) { b.replaceSubrange((off + size - 4)..<(off + size), with: $0) }
    }

    /// Recomputes a slot header's CRC (bytes 28..<32 over 0..<28).
    static func fixSlotChecksum(_ b: inout [UInt8]) {
        guard b.count >= 32 else { return }
        let crc = b.withUnsafeBytes { crc32Checksum(UnsafeRawBufferPointer(rebasing: $0[0..<28])) }
        withUnsafeBytes(of: crc.littleEndian) { b.replaceSubrange(28..<32, with: $0) }
    }

    /// A valid header of `version` (both copies, in the first
    /// `HeaderCopies.span` bytes) with fields changed by `edit`, checksums fixed.
    static func headerBytes(version: UInt16, _ edit: (inout Poke) -> Void) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: HeaderCopies.span)
        let h = FileHeader(version: version, blockSize: 65536, encoding: .deflate, level: 1, generation: 5, logicalSize: 300_000)
        let size = h.size
        for off in FileHeader.copyOffsets(version: version) {
            var p = Poke(bytes: [UInt8](repeating: 0, count: size))
            p.bytes.withUnsafeMutableBytes { h.encode(into: $0) }
            edit(&p)
            b.replaceSubrange(off..<(off + size), with: p.bytes)
        }
        fixHeaderChecksum(&b, at: FileHeader.copyOffsets(version: version)[1])
        fixHeaderChecksum(&b, at: 0)
        return b
    }

    /// A valid version-2 copy A (generation 5) and, at 512 where version 2
    /// keeps copy B, a valid version-3 copy of generation 6.
    static func mixedVersionCopies() -> [UInt8] {
        var b = headerBytes(version: 2) { _ in }
        b.replaceSubrange(512..<1024, with: [UInt8](repeating: 0, count: 512))
        let newer = FileHeader(version: 3, blockSize: 65536, encoding: .deflate, level: 1, generation: 6, logicalSize: 300_000)
        b.withUnsafeMutableBytes { newer.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[512..<(512 + newer.size)])) }
        return b
    }

    /// A valid slot header of `block` (3 unless told) in a container of
    /// `version` with 64 KiB blocks, with fields changed by `edit`, checksum fixed.
    static func slotBytes(version: UInt16, block: Int = 3, _ edit: (inout Poke) -> Void) -> [UInt8] {
        let h = SlotHeader(encoding: .deflate, block: UInt64(block), generation: 9, storedLength: 5000, payloadChecksum: 0x1234_5678,
                           offset: 10 * BlockLayout.pageSize)
        var p = Poke(bytes: encodedSlot(h, BlockLayout(blockSize: 65536, version: version)))
        edit(&p)
        var b = p.bytes
        fixSlotChecksum(&b)
        return b
    }

    static func literal(_ b: [UInt8]) -> String {
        // Long runs of one byte are common (zeros): print them compactly.
        var parts: [String] = []
        var i = 0
        while i < b.count {
            var j = i
            while j < b.count && b[j] == b[i] { j += 1 }
            parts.append(j - i >= 8 ? "] + [UInt8](repeating: 0x\(String(b[i], radix: 16)), count: \(j - i)) + [" : (i..<j).map { "0x" + String(b[$0], radix: 16) }.joined(separator: ", "))
            i = j
        }
        return ("[" + parts.joined(separator: ", ") + "]").replacingAll(", ]", with: "]").replacingAll("[, ", with: "[")
    }
}

/// Little-endian field writes for building inputs.
struct Poke {
    var bytes: [UInt8]
    mutating func u8(_ o: Int, _ v: UInt8) { bytes[o] = v }
    mutating func u16(_ o: Int, _ v: UInt16) { put(o, UInt64(v), 2) }
    mutating func u32(_ o: Int, _ v: UInt32) { put(o, UInt64(v), 4) }
    mutating func u64(_ o: Int, _ v: UInt64) { put(o, v, 8) }
    mutating func put(_ o: Int, _ v: UInt64, _ n: Int) {
        for i in 0..<n where o + i < bytes.count { bytes[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
}

/// A seeded byte-level mutator: bit flips, interesting bytes and field
/// values, inserted and deleted bytes, truncation, and splicing two inputs.
enum Mutator {
    static let interestingBytes: [UInt8] = [0x00, 0xFF, 0x7F, 0x80]
    static let interestingValues: [UInt64] = [
        0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x1_0000, 4095, 4096, 4097, 8192, 1 << 20, (1 << 20) + 4096,
        0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, SlotHeader.maxGeneration, 1 << 48, 1 << 60, UInt64(Int64.max) / 4,
        UInt64(Int64.max), 1 << 63, .max, .max - 1,
    ]

    /// 1 to 4 mutations of `input`; half of the positions are drawn from `hot` (the fields).
    static func mutate(_ input: [UInt8], corpus: [[UInt8]], hot: [Range<Int>] = [], rng r: inout Rng) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + r.int(4)) {
            func at() -> Int {
                if !hot.isEmpty, r.int(2) == 0 {
                    let h = hot[r.int(hot.count)]
                    if h.lowerBound < b.count { return h.lowerBound + r.int(min(h.count, b.count - h.lowerBound)) }
                }
                return r.int(b.count)
            }
            switch r.int(b.isEmpty ? 1 : 10) {
            case 0:   // splice: a prefix of this one, the rest from another
                let other = corpus[r.int(corpus.count)]
                let cut = r.int(min(b.count, other.count) + 1)
                b = Array(b.prefix(cut)) + Array(other.dropFirst(cut))
            case 1, 2:   // flip a bit
                b[at()] ^= 1 << UInt8(r.int(8))
            case 3:   // an interesting byte
                b[at()] = interestingBytes[r.int(interestingBytes.count)]
            case 4, 5:   // an interesting 1, 2, 4 or 8-byte value, mostly at an aligned offset
                let width = [1, 2, 4, 8][r.int(4)]
                var pos = at()
                if r.int(4) != 0 { pos -= pos % width }
                var v = interestingValues[r.int(interestingValues.count)]
                if r.int(3) == 0 { v = v &+ UInt64(bitPattern: Int64(r.int(9) - 4)) }
                for i in 0..<width where pos + i < b.count { b[pos + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
            case 6:   // insert bytes
                let n = 1 + r.int(4)
                b.insert(contentsOf: (0..<n).map { _ in r.int(2) == 0 ? interestingBytes[r.int(4)] : UInt8(truncatingIfNeeded: r.next()) },
                         at: r.int(b.count + 1))
            case 7:   // delete bytes
                let at = r.int(b.count)
                b.removeSubrange(at..<min(b.count, at + 1 + r.int(4)))
            case 8:   // truncate
                b.removeSubrange(r.int(b.count)...)
            default:   // a random byte
                b[at()] = UInt8(truncatingIfNeeded: r.next())
            }
        }
        return b
    }
}

/// Prints the input being decoded when the process dies of a signal (a
/// trap), so a crash found by fuzzing can be kept as a regression input.
/// Each input is copied into a fixed buffer before it is decoded; the
/// handler formats that buffer, writes it to standard error and gives the
/// signal back to the previous handler.
enum CrashReport {
    nonisolated(unsafe) static let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: 8192)
    nonisolated(unsafe) static var length = 0
    nonisolated(unsafe) static var iteration = 0
    nonisolated(unsafe) static var seed: UInt64 = 0
    nonisolated(unsafe) static var target = FuzzTests.Target.fileHeader
    nonisolated(unsafe) static var previous: [Int32: __sighandler_t] = [:]
    /// Not SIGBUS: decoding in-memory bytes cannot raise it, and its
    /// handler belongs to the revocable device mappings (`RevocableMappingTests`
    /// runs in this process at the same time; replacing the handler and
    /// putting back an older one would take theirs away).
    static let signals: [Int32] = [SIGILL, SIGTRAP, SIGSEGV, SIGABRT, SIGFPE]

    static func arm() {
        for s in signals {
            previous[s] = signal(s) { sig in
                let bytes = UnsafeBufferPointer(start: CrashReport.buffer, count: CrashReport.length)
                let text = "\nfuzz input being decoded at signal \(sig): seed 0x\(String(CrashReport.seed, radix: 16)), "
                    + "iteration \(CrashReport.iteration): (\"name\", \(CrashReport.target), \(FuzzTests.literal(Array(bytes)))),\n"
                var t = text
                t.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
                // The previous handler runs when the trap repeats (or abort re-raises).
                _ = signal(sig, CrashReport.previous[sig])
            }
        }
    }

    static func disarm() {
        for s in signals { _ = signal(s, previous[s]) }
        previous = [:]
    }

    static func note(seed: UInt64, iteration: Int, target: FuzzTests.Target, _ input: [UInt8]) {
        CrashReport.seed = seed
        CrashReport.iteration = iteration
        CrashReport.target = target
        length = min(input.count, 8192)
        input.withUnsafeBufferPointer { if let p = $0.baseAddress { buffer.update(from: p, count: length) } }
    }
}

private func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

extension String {
    init(format1 v: Double) {
        let tenths = Int((v * 10).rounded())
        self = "\(tenths / 10).\(tenths % 10)"
    }

    func replacingAll(_ a: String, with b: String) -> String {
        var out = ""
        var rest = Substring(self)
        while let r = rest.firstRange(of: a) {
            out += rest[..<r.lowerBound] + b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
