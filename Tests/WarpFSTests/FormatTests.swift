import CWarpSys
import Testing
import WarpDrive
@testable import WarpFSCore
@testable import WarpFSFormat

/// The container format's encoders and decoders, and its read side (classification, slot tables, payload checks, page runs).
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

    @Test func headerRoundTripAndDamage() throws {
        var two = [UInt8](repeating: 0, count: 1024)
        let a = FileHeader(blockSize: 65536, encoding: .deflate, level: 1, generation: 7, logicalSize: 123_456)
        let b = FileHeader(blockSize: 65536, encoding: .deflate, level: 1, generation: 8, logicalSize: 999)
        two.withUnsafeMutableBytes { a.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<512])) }
        two.withUnsafeMutableBytes { b.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[512..<1024])) }
        #expect(try two.withUnsafeBytes { try FileHeader.decodeNewest($0) }.header == b)
        // A torn newer copy: the older one wins.
        two[600] ^= 1
        #expect(try two.withUnsafeBytes { try FileHeader.decodeNewest($0) }.header == a)
        // Both damaged: an error, not a plain file.
        two[40] ^= 1
        #expect(throws: FileHeader.DecodeError.badChecksum) { try two.withUnsafeBytes { try FileHeader.decodeNewest($0) } }
        #expect(throws: FileHeader.DecodeError.notAHeader) { try [UInt8](repeating: 7, count: 1024).withUnsafeBytes { try FileHeader.decodeNewest($0) } }
    }

    @Test func slotHeadersRejectForeignAndBadOnes() {
        var raw = [UInt8](repeating: 0, count: 32)
        let h = SlotHeader(encoding: .deflate, block: 5, generation: 42, storedLength: 1000, payloadChecksum: 0xDEADBEEF)
        raw.withUnsafeMutableBytes { h.encode(into: $0) }
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, blockSize: 65536) } == h)
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 6, blockSize: 65536) } == nil)   // wrong place
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, blockSize: 512) } == nil)     // too long
        raw[20] ^= 1
        #expect(raw.withUnsafeBytes { SlotHeader.decode($0, block: 5, blockSize: 65536) } == nil)   // checksum
        #expect([UInt8](repeating: 0, count: 32).withUnsafeBytes { SlotHeader.decode($0, block: 0, blockSize: 65536) } == nil)
        let inlineElsewhere = SlotHeader(encoding: .raw, isInline: true, block: 3, generation: 1, storedLength: 10, payloadChecksum: 0)
        var r2 = [UInt8](repeating: 0, count: 32)
        r2.withUnsafeMutableBytes { inlineElsewhere.encode(into: $0) }
        #expect(r2.withUnsafeBytes { SlotHeader.decode($0, block: 3, blockSize: 65536) } == nil)    // only block 0 is inline
    }

    @Test func layoutPlacesPayloadsInTheGroupRegion() {
        let l = BlockLayout(blockSize: 65536)
        #expect(l.regionPages == 1024)
        #expect(l.tableOffset(group: 1) == 4096 + 64 * 65536)
        #expect(l.regionOffset(group: 1) == l.tableOffset(group: 1) + 4096)
        for b in 0..<40 {
            for s in 0..<2 {
                let h = l.slotHeaderOffset(block: b, slot: s)
                #expect(h >= 1024 && (b >= 16 || h < 2048))
                // Headers never fall inside a payload region.
                let g = b / 16
                #expect(h < l.regionOffset(group: g) && (g == 0 || h >= l.tableOffset(group: g)))
            }
        }
        for g in 0..<4 {
            #expect(l.group(containing: l.tableOffset(group: g)) == g)
            #expect(l.group(containing: l.regionOffset(group: g) + 64 * 65536 - 1) == g)
        }
        let h = SlotHeader(encoding: .deflate, block: 17, generation: 9, storedLength: 4097, payloadChecksum: 1, page: 1000)
        #expect(h.pageRange == 1000..<1002)
        #expect(l.payloadOffset(block: 17, slot: 1, header: h) == l.regionOffset(group: 1) + 1000 * 4096)
    }

    @Test func slotHeaderKeepsItsPageAndRejectsOneOutsideTheRegion() {
        func roundTrip(_ h: SlotHeader) -> SlotHeader? {
            var raw = [UInt8](repeating: 0, count: 32)
            raw.withUnsafeMutableBytes { h.encode(into: $0) }
            return raw.withUnsafeBytes { SlotHeader.decode($0, block: Int(h.block), blockSize: 65536) }
        }
        let inside = SlotHeader(encoding: .raw, block: 2, generation: SlotHeader.maxGeneration, storedLength: 65536, payloadChecksum: 7, page: 1008)
        #expect(roundTrip(inside) == inside)
        let outside = SlotHeader(encoding: .raw, block: 2, generation: 3, storedLength: 65536, payloadChecksum: 7, page: 1009)
        #expect(roundTrip(outside) == nil)
        let inlineWithPage = SlotHeader(encoding: .raw, isInline: true, block: 0, generation: 3, storedLength: 10, payloadChecksum: 7, page: 1)
        #expect(roundTrip(inlineWithPage) == nil)
    }

    /// A container whose copy A lost a bit of its magic is still a container;
    /// a plain file that embeds a container at offset 512 (a tar archive of
    /// a backing file) stays plain.
    @Test func onlyANearMagicLetsCopyBVouchForAContainer() {
        var page = [UInt8](repeating: 0, count: 1024)
        let h = FileHeader(blockSize: 65536, encoding: .deflate, level: 1, generation: 3, logicalSize: 10)
        page.withUnsafeMutableBytes { h.encode(into: UnsafeMutableRawBufferPointer(rebasing: $0[512..<1024])) }
        var flipped = page
        for (i, m) in FileHeader.magic.enumerated() { flipped[i] = m }
        flipped[3] ^= 0x04
        #expect(flipped.withUnsafeBytes { HeaderCopies.secondCopyVouches($0) })
        var tar = page
        for (i, c) in "backing/some-file.txt".utf8.enumerated() { tar[i] = c }
        #expect(!tar.withUnsafeBytes { HeaderCopies.secondCopyVouches($0) })
        var damagedB = flipped
        damagedB[600] ^= 1
        #expect(!damagedB.withUnsafeBytes { HeaderCopies.secondCopyVouches($0) })
    }

    /// The one classification: plain, container (newest valid copy), or
    /// damaged; a copy never written is not damage.
    @Test func headerCopiesClassifyTheFile() {
        func page(_ a: FileHeader?, _ b: FileHeader?) -> [UInt8] {
            var p = [UInt8](repeating: 0, count: HeaderCopies.span)
            p.withUnsafeMutableBytes { raw in
                a?.encode(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<512]))
                b?.encode(into: UnsafeMutableRawBufferPointer(rebasing: raw[512..<1024]))
            }
            return p
        }
        let old = FileHeader(blockSize: 65536, encoding: .zlib, level: 1, generation: 4, logicalSize: 10)
        let new = FileHeader(blockSize: 65536, encoding: .zlib, level: 1, generation: 5, logicalSize: 20)
        func copies(_ p: [UInt8], _ n: Int? = nil) -> HeaderCopies { p.withUnsafeBytes { HeaderCopies(UnsafeRawBufferPointer(rebasing: $0[0..<(n ?? p.count)])) } }

        #expect(copies(Array("just some text\n".utf8)).kind == .plain)
        #expect(copies([]).kind == .plain)
        let once = copies(page(old, nil))
        #expect(once.kind == .container(old, copy: 0))
        #expect(once.copies == [.valid(old), .unwritten])
        #expect(copies(page(old, nil), 600).copies == [.valid(old), .unwritten])       // a short file
        #expect(copies(page(old, new)).kind == .container(new, copy: 1))
        var tornB = page(old, new)
        tornB[700] ^= 1
        #expect(copies(tornB).kind == .container(old, copy: 0))
        #expect(copies(tornB).copies[1] == .invalid(.badChecksum))
        // The magic with no valid copy: damaged, never plain.
        var both = tornB
        both[100] ^= 1
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
        let h = SlotHeader(encoding: .deflate, block: 17, generation: 3, storedLength: 5000, payloadChecksum: 9, page: 2)
        let wrongBlock = SlotHeader(encoding: .raw, block: 18, generation: 4, storedLength: 100, payloadChecksum: 1)
        table.withUnsafeMutableBytes { t in
            h.encode(into: UnsafeMutableRawBufferPointer(rebasing: t[(1 * 2 + 1) * 32..<(1 * 2 + 2) * 32]))       // block 17, slot 1
            wrongBlock.encode(into: UnsafeMutableRawBufferPointer(rebasing: t[(5 * 2) * 32..<(5 * 2 + 1) * 32])) // at block 21's slot 0
        }
        table[(9 * 2 + 1) * 32 + 3] = 0xAA                                                                    // block 25, slot 1
        let t = table.withUnsafeBytes { SlotTable($0, group: 1, blockSize: 65536) }
        #expect(t.blocks == 16..<32)
        #expect(t.slot(block: 17, 1) == .valid(h))
        #expect(t.header(block: 17, 1) == h)
        #expect(t.slot(block: 17, 0) == .empty)
        #expect(t.slot(block: 21, 0) == .damaged)         // a header for another block is no header here
        #expect(t.slot(block: 25, 1) == .damaged)
        #expect(t.slot(block: 16, 0) == .empty)
        let short = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<(2 * 2 * 32)]), group: 1, blockSize: 65536) }
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

    @Test func pageRunsSubtractCoveredPages() {
        #expect((0..<10).subtracting([]) == [0..<10])
        #expect((0..<10).subtracting([2..<4, 6..<7]) == [0..<2, 4..<6, 7..<10])
        #expect((0..<10).subtracting([6..<7, 2..<4]) == [0..<2, 4..<6, 7..<10])       // any order
        #expect((0..<10).subtracting([3..<5, 4..<8]) == [0..<3, 8..<10])              // overlapping covers
        #expect((5..<10).subtracting([0..<6, 9..<20]) == [6..<9])                     // covers past both ends
        #expect((5..<10).subtracting([0..<20]) == [])
        #expect((5..<10).subtracting([7..<7]) == [5..<10])                            // an empty cover is nothing
        #expect((5..<5).subtracting([0..<3]) == [])
    }

    @Test func everyEncodingHasOneAlgorithm() {
        for a in CompressionAlgorithm.allCases { #expect(BlockEncoding(a).algorithm == a) }
        #expect(BlockEncoding.raw.algorithm == nil)
        #expect(BlockEncoding.zero.algorithm == nil)
        #expect(BlockEncoding.allCases.filter { $0.algorithm != nil }.count == CompressionAlgorithm.allCases.count)
    }
}
