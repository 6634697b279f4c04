import CWarpSys
import Testing
import WarpDrive
@testable import WarpFSCore
@testable import WarpFSFormat

/// The container format's encoders and decoders (both versions), and its read side (classification, slot tables, payload checks, punchable pages).
@Suite struct FormatTests {
    @Test func checksumIsCRC32C() {
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { crc32Checksum($0) } == 0xE306_9283)       // the CRC-32C check value
        #expect(check.withUnsafeBytes { wd_crc32c_table(0, $0.baseAddress, $0.count) } == 0xE306_9283)
        var x: UInt64 = 5
        let data = (0..<100_003).map { _ -> UInt8 in x ^= x >> 12; x ^= x << 25; x ^= x >> 27; return UInt8(truncatingIfNeeded: x) }
        data.withUnsafeBytes { b in
            let whole = crc32Checksum(b)
            #expect(whole == wd_crc32c_table(0, b.baseAddress, b.count))
            // Unaligned starts and chaining agree too.
            let head = crc32Checksum(UnsafeRawBufferPointer(rebasing: b[0..<333]))
            #expect(crc32Checksum(UnsafeRawBufferPointer(rebasing: b[333...]), seed: head) == whole)
        }
    }

    /// Both versions: two copies at the version's offsets, the newer valid
    /// one wins, a torn newer copy loses to the older, two damaged copies
    /// are an error.
    @Test(arguments: [UInt16(2), 3])
    func headerRoundTripAndDamage(version: UInt16) throws {
        let size = FileHeader.size(version: version)
        #expect(size == (version == 2 ? 512 : 64))
        var two = [UInt8](repeating: 0, count: 1024)
        let a = FileHeader(version: version, blockSize: 65536, encoding: .deflate, level: 1, generation: 7, logicalSize: 123_456)
        let b = FileHeader(version: version, blockSize: 65536, encoding: .deflate, level: 1, generation: 8, logicalSize: 999)
        two.withUnsafeMutableBytes { a.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
        two.withUnsafeMutableBytes { b.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[size..<(2 * size)])) }
        #expect(try two.withUnsafeBytes { try FileHeader.decodeNewest($0) }.header == b)
        #expect(two.withUnsafeBytes { HeaderCopies($0).copyOffsets } == [0, size])
        // A torn newer copy: the older one wins.
        two[size + 40] ^= 1
        #expect(try two.withUnsafeBytes { try FileHeader.decodeNewest($0) }.header == a)
        // Both damaged: an error, not a plain file.
        two[40] ^= 1
        #expect(throws: FileHeader.DecodeError.badChecksum) { try two.withUnsafeBytes { try FileHeader.decodeNewest($0) } }
        #expect(throws: FileHeader.DecodeError.notAHeader) { try [UInt8](repeating: 7, count: 1024).withUnsafeBytes { try FileHeader.decodeNewest($0) } }
    }

    /// A copy stating a version this build does not know is refused with
    /// the version in the message; one whose size field lies fails.
    @Test func otherVersionsAreRefused() {
        var raw = [UInt8](repeating: 0, count: 512)
        FileHeader(blockSize: 65536, encoding: .zstd, level: 1, generation: 1, logicalSize: 0).encode(into: UnsafeMutableRawBufferPointer(start: &raw, count: 512))
        func reseal(_ version: UInt16, size: Int) {
            raw[8] = UInt8(version & 0xff); raw[9] = UInt8(version >> 8)
            let crc = raw.withUnsafeBytes { crc32Checksum(UnsafeRawBufferPointer(rebasing: $0[0..<(size - 4)])) }
            for i in 0..<4 { raw[size - 4 + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        }
        reseal(4, size: 64)
        #expect(throws: FileHeader.DecodeError.unsupported("format version 4; this build reads versions 2-3")) {
            try raw.withUnsafeBytes { try FileHeader.decode($0) }
        }
        reseal(2, size: 512)     // a version-2 checksum over a version-3 header (size field 64)
        #expect(throws: FileHeader.DecodeError.unsupported("header size 64")) { try raw.withUnsafeBytes { try FileHeader.decode($0) } }
    }

    @Test(arguments: [UInt16(2), 3])
    func slotHeadersRejectForeignAndBadOnes(version: UInt16) {
        let l = BlockLayout(blockSize: 65536, version: version)
        var raw = [UInt8](repeating: 0, count: 32)
        let h = SlotHeader(encoding: .deflate, block: 5, generation: 42, storedLength: 1000, payloadChecksum: 0xDEADBEEF)
        raw.withUnsafeMutableBytes { h.encode(into: $0, layout: l) }
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, layout: l) } == h)
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 6, layout: l) } == nil)   // wrong place
        // A header of one version is no header in a container of the other
        // (the block number and generation move).
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, layout: BlockLayout(blockSize: 65536, version: 5 - version)) } == nil)
        var short = h
        short.storedLength = 4097
        raw.withUnsafeMutableBytes { short.encode(into: $0, layout: l) }
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, layout: BlockLayout(blockSize: 4096, version: version)) } == nil)  // too long
        raw.withUnsafeMutableBytes { h.encode(into: $0, layout: l) }
        raw[20] ^= 1
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, layout: l) } == nil)   // checksum
        #expect([UInt8](repeating: 0, count: 32).withUnsafeBytes { SlotHeader.decode($0, block: 0, layout: l) } == nil)
        if version == 2 {
            let inlineElsewhere = SlotHeader(encoding: .raw, isInline: true, block: 3, generation: 1, storedLength: 10, payloadChecksum: 0)
            var r2 = [UInt8](repeating: 0, count: 32)
            r2.withUnsafeMutableBytes { inlineElsewhere.encode(into: $0, layout: l) }
            #expect(r2.withUnsafeBytes { SlotHeader.decode($0, block: 3, layout: l) } == nil)    // only block 0 is inline
        }
    }

    /// Version 3 keeps a 48-bit block number and generation and a byte offset.
    @Test func versionThreeSlotHeadersKeepWideFields() {
        let l = BlockLayout(blockSize: 4096)
        let h = SlotHeader(encoding: .zstd, block: SlotHeader.maxBlock, generation: SlotHeader.maxGeneration - 1, storedLength: 3,
                           payloadChecksum: 0x0102_0304, offset: l.regionSize - 3)
        var raw = [UInt8](repeating: 0, count: 32)
        raw.withUnsafeMutableBytes { h.encode(into: $0, layout: l) }
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: Int(SlotHeader.maxBlock), layout: l) } == h)
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: Int(SlotHeader.maxBlock) - 1, layout: l) } == nil)
    }

    @Test(arguments: [UInt16(2), 3])
    func layoutPlacesPayloadsInTheGroupRegion(version: UInt16) {
        let l = BlockLayout(blockSize: 65536, version: version)
        #expect(l.regionSize == 64 * 65536)
        #expect(l.tableOffset(group: 0) == (version == 2 ? 1024 : 128))
        #expect(l.regionOffset(group: 0) == (version == 2 ? 4096 : 1152))
        #expect(l.tableOffset(group: 1) == 4096 + 64 * 65536)
        #expect(l.regionOffset(group: 1) == l.tableOffset(group: 1) + (version == 2 ? 4096 : 1024))
        for b in 0..<40 {
            for s in 0..<2 {
                let h = l.slotHeaderOffset(block: b, slot: s)
                #expect(h >= l.tableOffset(group: 0) && (b >= 16 || h + 32 <= l.tableOffset(group: 0) + BlockLayout.tableSize))
                // Headers never fall inside a payload region, nor past the header copies.
                let g = b / 16
                #expect(h + 32 <= l.regionOffset(group: g) && (g == 0 || h >= l.tableOffset(group: g)))
                #expect(h >= l.headerCopyOffsets[1] + FileHeader.size(version: version))
            }
        }
        for g in 0..<4 {
            #expect(l.group(containing: l.tableOffset(group: g)) == g)
            #expect(l.group(containing: l.regionOffset(group: g) + l.regionSize - 1) == g)
            // A region ends before the next group's table.
            #expect(l.regionOffset(group: g) + l.regionSize <= l.tableOffset(group: g + 1))
        }
        let h = SlotHeader(encoding: .deflate, block: 17, generation: 9, storedLength: 4097, payloadChecksum: 1, offset: 1000 * 4096)
        #expect(l.footprint(h) == (1000 * 4096)..<(1000 * 4096 + (version == 2 ? 8192 : 4097)))
        #expect(l.payloadOffset(block: 17, slot: 1, header: h) == l.regionOffset(group: 1) + 1000 * 4096)
    }

    /// What a dropped payload frees: whole pages inside the region that no
    /// remaining payload touches. In version 3 a page shared with another
    /// payload, the table or the header stays.
    @Test func punchablePagesAreWholeAndUntouched() {
        let l = BlockLayout(blockSize: 65536)                  // version 3: group 0's region starts at 1152
        // A payload in the first page only: nothing (the page holds the header and the table).
        #expect(l.punchablePages(of: 0..<2000, used: [], group: 0) == [])
        // 0..<10000 of group 0's region = file bytes 1152..<11152: pages 4096..<12288 (the rest of the last one is free too).
        #expect(l.punchablePages(of: 0..<10000, used: [], group: 0) == [4096..<12288])
        #expect(l.punchablePages(of: 0..<(3 * 4096 - 1152), used: [], group: 0) == [4096..<12288])
        // Another payload touching the second page keeps it.
        #expect(l.punchablePages(of: 0..<(3 * 4096 - 1152), used: [(3 * 4096 - 1152)..<(3 * 4096 - 1151)], group: 0) == [4096..<12288])
        #expect(l.punchablePages(of: 0..<(3 * 4096 - 1152), used: [(2 * 4096 - 1152)..<(2 * 4096 - 1151)], group: 0) == [4096..<8192])
        // Group 1: its region starts 1 KiB into its table's page.
        let base = l.regionOffset(group: 1)
        #expect(l.punchablePages(of: 0..<(2 * 4096), used: [], group: 1) == [(base - 1024 + 4096)..<(base - 1024 + 12288)])
        #expect(l.punchablePages(of: 0..<(2 * 4096), used: [(2 * 4096)..<(2 * 4096 + 1)], group: 1) == [(base - 1024 + 4096)..<(base - 1024 + 8192)])
        // The end of the region: the page the next table starts is never reached.
        let end = l.regionSize
        let tail = l.punchablePages(of: (end - 5000)..<end, used: [], group: 0)
        #expect(tail.allSatisfy { $0.upperBound <= l.regionOffset(group: 0) + end && $0.lowerBound % 4096 == 0 })
        // Version 2: the released pages less those others name (the old behaviour).
        let v2 = BlockLayout(blockSize: 65536, version: 2)
        #expect(v2.punchablePages(of: (10 * 4096)..<(16 * 4096), used: [(12 * 4096)..<(14 * 4096), (15 * 4096)..<(16 * 4096)], group: 0)
                == [(4096 + 10 * 4096)..<(4096 + 12 * 4096), (4096 + 14 * 4096)..<(4096 + 15 * 4096)])
    }

    @Test(arguments: [UInt16(2), 3])
    func slotHeaderKeepsItsOffsetAndRejectsOneOutsideTheRegion(version: UInt16) {
        let l = BlockLayout(blockSize: 65536, version: version)
        func roundTrip(_ h: SlotHeader) -> SlotHeader? {
            var raw = [UInt8](repeating: 0, count: 32)
            raw.withUnsafeMutableBytes { h.encode(into: $0, layout: l) }
            return raw.withUnsafeBytes { SlotHeader.decode($0, block: Int(h.block), layout: l) }
        }
        let last = l.regionSize - 65536
        let inside = SlotHeader(encoding: .raw, block: 2, generation: SlotHeader.maxGeneration, storedLength: 65536, payloadChecksum: 7, offset: last)
        #expect(roundTrip(inside) == inside)
        let outside = SlotHeader(encoding: .raw, block: 2, generation: 3, storedLength: 65536, payloadChecksum: 7, offset: last + 4096)
        #expect(roundTrip(outside) == nil)
        if version == 2 {
            let inlineWithPage = SlotHeader(encoding: .raw, isInline: true, block: 0, generation: 3, storedLength: 10, payloadChecksum: 7, offset: 4096)
            #expect(roundTrip(inlineWithPage) == nil)
        } else {
            // Any byte: a payload may end exactly at the region's end.
            let odd = SlotHeader(encoding: .deflate, block: 2, generation: 3, storedLength: 77, payloadChecksum: 7, offset: l.regionSize - 77)
            #expect(roundTrip(odd) == odd)
            var past = odd
            past.offset += 1
            #expect(roundTrip(past) == nil)
        }
    }

    /// A container whose copy A lost a bit of its magic is still a container;
    /// a plain file that embeds a container at offset 512 (a tar archive of
    /// a backing file) stays plain.
    @Test(arguments: [UInt16(2), 3])
    func onlyANearMagicLetsCopyBVouchForAContainer(version: UInt16) {
        let size = FileHeader.size(version: version)
        var page = [UInt8](repeating: 0, count: 1024)
        let h = FileHeader(version: version, blockSize: 65536, encoding: .deflate, level: 1, generation: 3, logicalSize: 10)
        page.withUnsafeMutableBytes { h.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[size..<(2 * size)])) }
        var flipped = page
        for (i, m) in FileHeader.magic.enumerated() { flipped[i] = m }
        flipped[3] ^= 0x04
        #expect(flipped.withUnsafeBytes { HeaderCopies.secondCopyVouches($0) })
        var tar = page
        for (i, c) in "backing/some-file.txt".utf8.enumerated() { tar[i] = c }
        #expect(!tar.withUnsafeBytes { HeaderCopies.secondCopyVouches($0) })
        var damagedB = flipped
        damagedB[size + 20] ^= 1
        #expect(!damagedB.withUnsafeBytes { HeaderCopies.secondCopyVouches($0) })
    }

    /// The one classification: plain, container (newest valid copy), or
    /// damaged; a copy never written is not damage.
    @Test(arguments: [UInt16(2), 3])
    func headerCopiesClassifyTheFile(version: UInt16) {
        let size = FileHeader.size(version: version)
        func page(_ a: FileHeader?, _ b: FileHeader?) -> [UInt8] {
            var p = [UInt8](repeating: 0, count: HeaderCopies.span)
            p.withUnsafeMutableBytes { raw in
                a?.encode(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<size]))
                b?.encode(into: UnsafeMutableRawBufferPointer(rebasing: raw[size..<(2 * size)]))
            }
            if version == 3 { for i in (2 * size)..<p.count { p[i] = UInt8(truncatingIfNeeded: i) } }   // slot headers and payloads follow
            return p
        }
        let old = FileHeader(version: version, blockSize: 65536, encoding: .zlib, level: 1, generation: 4, logicalSize: 10)
        let new = FileHeader(version: version, blockSize: 65536, encoding: .zlib, level: 1, generation: 5, logicalSize: 20)
        func copies(_ p: [UInt8], _ n: Int? = nil) -> HeaderCopies { p.withUnsafeBytes { HeaderCopies(UnsafeRawBufferPointer(rebasing: $0[0..<(n ?? p.count)])) } }

        #expect(copies(Array("just some text\n".utf8)).kind == .plain)
        #expect(copies([]).kind == .plain)
        let once = copies(page(old, nil))
        #expect(once.kind == .container(old, copy: 0))
        #expect(once.copies == [.valid(old), .unwritten])
        #expect(copies(page(old, nil), size + 30).copies == [.valid(old), .unwritten])       // a short file
        #expect(copies(page(old, new)).kind == .container(new, copy: 1))
        var tornB = page(old, new)
        tornB[size + 40] ^= 1
        #expect(copies(tornB).kind == .container(old, copy: 0))
        #expect(copies(tornB).copies[1] == .invalid(.badChecksum))
        // The magic with no valid copy: damaged, never plain.
        var both = tornB
        both[30] ^= 1
        #expect(copies(both).kind == .damaged(.badChecksum))
        #expect(FileHeader.DecodeError.badChecksum.reason == "bad checksum")
        // Copy A's magic lost a bit, copy B is valid: still a container.
        var flipped = page(old, new)
        flipped[1] ^= 0x10
        #expect(copies(flipped).kind == .container(new, copy: 1))
        #expect(copies(flipped).copies[0] == .invalid(.notAHeader))
    }

    /// One group's table: empty, valid and damaged slots, and a table cut short.
    @Test func slotTableDecodesAGroup() {
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        let l = BlockLayout(blockSize: 65536)
        let h = SlotHeader(encoding: .deflate, block: 17, generation: 3, storedLength: 5000, payloadChecksum: 9, offset: 8191)
        let wrongBlock = SlotHeader(encoding: .raw, block: 18, generation: 4, storedLength: 100, payloadChecksum: 1)
        table.withUnsafeMutableBytes { t in
            h.encode(into: UnsafeMutableRawBufferPointer(rebasing: t[(1 * 2 + 1) * 32..<(1 * 2 + 2) * 32]), layout: l)       // block 17, slot 1
            wrongBlock.encode(into: UnsafeMutableRawBufferPointer(rebasing: t[(5 * 2) * 32..<(5 * 2 + 1) * 32]), layout: l) // at block 21's slot 0
        }
        table[(9 * 2 + 1) * 32 + 3] = 0xAA                                                                    // block 25, slot 1
        let t = table.withUnsafeBytes { SlotTable($0, group: 1, layout: l) }
        #expect(t.blocks == 16..<32)
        #expect(t.slot(block: 17, 1) == .valid(h))
        #expect(t.header(block: 17, 1) == h)
        #expect(t.slot(block: 17, 0) == .empty)
        #expect(t.slot(block: 21, 0) == .damaged)         // a header for another block is no header here
        #expect(t.slot(block: 25, 1) == .damaged)
        #expect(t.slot(block: 16, 0) == .empty)
        let short = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<(2 * 2 * 32)]), group: 1, layout: l) }
        #expect(short.header(block: 17, 1) == h)
        #expect(short.slot(block: 25, 1) == .empty)       // past the end of what was read
    }

    @Test func payloadDamageIsTruncationOrChecksum() {
        let payload: [UInt8] = Array(repeating: 7, count: 100)
        let crc = payload.withUnsafeBytes { crc32Checksum($0) }
        let h = SlotHeader(encoding: .raw, block: 1, generation: 1, storedLength: 100, payloadChecksum: crc)
        payload.withUnsafeBytes { b in
            #expect(h.damage(ofPayload: b, read: 100) == nil)
            #expect(h.damage(ofPayload: b, read: 60) == .truncated(read: 60))
        }
        var bad = payload
        bad[50] = 8
        let badCRC = bad.withUnsafeBytes { crc32Checksum($0) }
        #expect(bad.withUnsafeBytes { h.damage(ofPayload: $0, read: 100) } == .checksum(stored: crc, read: badCRC))
    }

    @Test func everyEncodingHasOneAlgorithm() {
        for a in CompressionAlgorithm.allCases { #expect(BlockEncoding(a).algorithm == a) }
        #expect(BlockEncoding.raw.algorithm == nil)
        #expect(BlockEncoding.zero.algorithm == nil)
        #expect(BlockEncoding.allCases.filter { $0.algorithm != nil }.count == CompressionAlgorithm.allCases.count)
    }
}
