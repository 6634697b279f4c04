import Testing
import WarpFSFormat

/// The pack's on-disk pieces, pure: a packed file's reference and a pack
/// page's directory (docs/FORMAT.md, "Packed small files").
@Suite struct PackFormatTests {
    static let sample = PackReference(blockSize: 65536, fileEncoding: .deflate, level: 1, payloadEncoding: .deflate, payloadLength: 1234,
                                      logicalSize: 5000, payloadChecksum: 0xDEAD_BEEF, packID: 0x0123_4567_89AB_CDEF, page: 77,
                                      offset: 300, key: 0xFEED_FACE_CAFE_BEEF)

    @Test func aReferenceRoundTripsWithAndWithoutAChangeTime() throws {
        var r = PackFormatTests.sample
        #expect(try PackReference.decode(r.encoded()) == r)
        r.changeTime = (1_796_000_000, 123_456_789)
        let back = try PackReference.decode(r.encoded())
        #expect(back == r && back.changeTime?.seconds == 1_796_000_000 && back.changeTime?.nanoseconds == 123_456_789)
        #expect(r.encoded().count == PackReference.size)
        // An empty file: no record.
        let empty = PackReference(blockSize: 4096, fileEncoding: .zstd, level: 3, payloadEncoding: .zero, payloadLength: 0,
                                  logicalSize: 0, payloadChecksum: 0, packID: 9, page: 0, offset: 0, key: 0)
        #expect(try PackReference.decode(empty.encoded()) == empty)
        #expect(!empty.hasRecord && empty.recordLength == 0 && PackFormatTests.sample.recordLength == 1234 + PackPage.keySize)
    }

    /// Every byte flipped is refused (the checksum, or a field's range):
    /// a damaged reference never names a record.
    @Test func everyFlippedByteIsRefused() {
        let good = PackFormatTests.sample.encoded()
        for i in 0..<good.count {
            var bad = good
            bad[i] ^= 0x01
            #expect(throws: (any Error).self, "byte \(i)") { try PackReference.decode(bad) }
        }
        #expect(throws: (any Error).self) { try PackReference.decode(Array(good.prefix(40))) }
    }

    /// Fields out of range are refused even with a valid checksum.
    @Test(arguments: ["logical", "length", "offset", "encoding", "zero", "nanoseconds"])
    func fieldsOutOfRangeAreRefused(_ field: String) {
        var r = PackFormatTests.sample
        switch field {
        case "logical": r.logicalSize = 65537                   // more than one block
        case "length": r.payloadLength = PackPage.maxPayload + 1
        case "offset": r.offset = PackPage.size - 100            // the record would leave its page
        case "encoding": r.fileEncoding = .raw                   // a file's own encoding compresses
        case "zero": r.payloadEncoding = .zero                   // zeros have no payload
        default: r.changeTime = (1, 1_000_000_000)
        }
        #expect(throws: (any Error).self, "\(field)") { try PackReference.decode(r.encoded()) }
    }

    @Test func pagesPlaceRecordsInFreeBytesAndFreeThemAgain() {
        var page = PackPage()
        #expect(page.isEmpty)
        var placed: [(Int, Int, Int)] = []
        for length in [100, 2000, 1000] {
            guard let (entry, offset) = page.place(length: length) else { Issue.record("no place for \(length)"); return }
            page.add(entry: entry, offset: offset, length: length)
            placed.append((entry, offset, length))
        }
        #expect(placed.map(\.1) == [PackPage.recordAreaStart, PackPage.recordAreaStart + 100, PackPage.recordAreaStart + 2100])
        // 3824 - 3100 bytes left: 800 does not fit, 700 does.
        #expect(page.place(length: 800) == nil)
        #expect(page.place(length: 700) != nil)
        // Freed, the middle record's bytes and entry are reused, lowest first.
        page.remove(entry: placed[1].0)
        let reused = page.place(length: 1500)
        #expect(reused?.entry == placed[1].0 && reused?.offset == PackPage.recordAreaStart + 100)
        #expect(page.entry(at: PackPage.recordAreaStart + 2100) == placed[2].0)
        // The directory round-trips through its bytes.
        var bytes = page.encodedDirectory() + [UInt8](repeating: 0, count: PackPage.size - PackPage.recordAreaStart)
        #expect(PackPage.decode(bytes) == .page(page))
        page.remove(entry: placed[0].0)
        page.remove(entry: placed[2].0)
        #expect(page.isEmpty && page.entries.isEmpty)
        // A punched page reads as zeros: free.
        bytes = [UInt8](repeating: 0, count: PackPage.size)
        #expect(PackPage.decode(bytes) == .unformatted)
    }

    /// A directory that lies (overlapping records, a record outside the
    /// page, too many entries, no magic) is damaged: nothing in it is
    /// reused or freed.
    @Test func lyingDirectoriesAreDamaged() {
        func page(_ entries: [(Int, Int)], count: Int? = nil, magic: UInt32 = PackPage.magic) -> [UInt8] {
            var b = [UInt8](repeating: 0, count: PackPage.size)
            func put16(_ at: Int, _ v: Int) { b[at] = UInt8(v & 0xFF); b[at + 1] = UInt8(v >> 8) }
            for k in 0..<4 { b[k] = UInt8((magic >> (8 * UInt32(k))) & 0xFF) }
            put16(4, 1)
            put16(6, count ?? entries.count)
            for (i, (o, l)) in entries.enumerated() { put16(16 + 4 * i, o); put16(18 + 4 * i, l) }
            return b
        }
        let cases: [(String, [UInt8])] = [
            ("overlap", page([(300, 100), (350, 100)])),
            ("outside", page([(4000, 200)])),
            ("before the record area", page([(100, 50)])),
            ("key only", page([(300, 8)])),
            ("too many", page([], count: 65)),
            ("no magic", page([(300, 100)], magic: 0x1234_5678)),
        ]
        for (what, bytes) in cases {
            guard case .damaged = PackPage.decode(bytes) else { Issue.record("\(what): not seen as damaged"); continue }
        }
        guard case .page(let p) = PackPage.decode(page([(300, 100), (400, 50)])) else { Issue.record("a good page"); return }
        #expect(p.usedBytes == 150)
    }
}
