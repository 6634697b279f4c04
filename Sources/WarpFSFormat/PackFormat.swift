/// A small file packed into the backing directory's pack file: what its
/// (then empty) backing file says, in the extended attribute
/// `user.warpfs.packed`, about where its one block is and how to read it.
///
/// A one-block file whose payload is small takes a whole 4 KiB page of the
/// backing file system as a container of its own. Packed, its payload sits
/// beside others' in a page of the pack file (`PackPage`), and the backing
/// file takes no data block at all: the reference fits in the inode's own
/// extended-attribute space (ext4 holds 96 bytes of them in a 256-byte
/// inode; this attribute takes all 96, with its entry and the area's header). See docs/FORMAT.md, "Packed small files".
///
/// Layout (little endian, 56 bytes): `0 u8 version (1)`, `1 u8 log2 block size`,
/// `2 u8 encoding of the file's compressed blocks`, `3 u8 level`,
/// `4 u8 encoding of the payload`, `5 u8 flags (0)`, `6 u16 payload length`,
/// `8 u32 logical size`, `12 u32 payload CRC-32C`, `16 u64 pack id`,
/// `24 u32 page`, `28 u16 offset in the page`, `30 u16 reserved (0)`,
/// `32 u64 record key`, `40 i64 seconds and 48 u32 nanoseconds of the
/// change time the mount shows (0 and 0: the backing file's own)`,
/// `52 u32 CRC-32C of bytes 0..<52`.
///
/// A payload of length 0 (an empty file, or one that reads as zeros) has no
/// record: page, offset and key are 0.
public struct PackReference: Sendable, Equatable {
    /// The extended attribute that holds it on the backing file.
    public static let attributeName = "user.warpfs.packed"
    public static let size = 56
    public static let version: UInt8 = 1

    /// Block size of the file (a power of two in `FileHeader.blockSizeRange`).
    public var blockSize: Int
    /// Encoding the file's blocks get when it is written again.
    public var fileEncoding: BlockEncoding
    public var level: UInt8
    /// How the payload is stored (`.zero` with length 0: all zeros).
    public var payloadEncoding: BlockEncoding
    public var payloadLength: Int
    /// The file's size (at most `blockSize`).
    public var logicalSize: UInt64
    public var payloadChecksum: UInt32
    /// The pack the record is in (`PackPage`'s pack; its `id` file).
    public var packID: UInt64
    public var page: UInt32
    public var offset: Int
    /// The random key the record starts with: a reference names its own
    /// record only (another file's record, or a freed and reused place,
    /// has another key).
    public var key: UInt64
    /// The change time the mount shows for the file (seconds, nanoseconds):
    /// packing changes the backing file's own, not the file's. Nil: the
    /// backing file's (cleared when the file's metadata changes).
    public var changeTime: (seconds: Int64, nanoseconds: UInt32)?

    public init(blockSize: Int, fileEncoding: BlockEncoding, level: UInt8, payloadEncoding: BlockEncoding, payloadLength: Int,
                logicalSize: UInt64, payloadChecksum: UInt32, packID: UInt64, page: UInt32, offset: Int, key: UInt64) {
        self.blockSize = blockSize; self.fileEncoding = fileEncoding; self.level = level; self.payloadEncoding = payloadEncoding
        self.payloadLength = payloadLength; self.logicalSize = logicalSize; self.payloadChecksum = payloadChecksum
        self.packID = packID; self.page = page; self.offset = offset; self.key = key
    }

    public static func == (a: PackReference, b: PackReference) -> Bool {
        a.blockSize == b.blockSize && a.fileEncoding == b.fileEncoding && a.level == b.level && a.payloadEncoding == b.payloadEncoding
            && a.payloadLength == b.payloadLength && a.logicalSize == b.logicalSize && a.payloadChecksum == b.payloadChecksum
            && a.packID == b.packID && a.page == b.page && a.offset == b.offset && a.key == b.key
            && a.changeTime?.seconds == b.changeTime?.seconds && a.changeTime?.nanoseconds == b.changeTime?.nanoseconds
    }

    /// Whether the file has a record in the pack (a non-empty payload).
    public var hasRecord: Bool { payloadLength > 0 }

    /// Bytes the record takes in its pack page (key and payload); 0 without one.
    public var recordLength: Int { hasRecord ? PackPage.keySize + payloadLength : 0 }

    /// The container header the file has when it is unpacked.
    public var header: FileHeader {
        FileHeader(version: 3, blockSize: blockSize, encoding: fileEncoding, level: level, generation: 1, logicalSize: logicalSize)
    }

    public func encoded() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: PackReference.size)
        out.withUnsafeMutableBytes { b in
            let w = LE(b.baseAddress!)
            w.set(0, PackReference.version)
            w.set(1, UInt8(blockSize.trailingZeroBitCount))
            w.set(2, fileEncoding.rawValue)
            w.set(3, level)
            w.set(4, payloadEncoding.rawValue)
            w.set(6, UInt16(payloadLength))
            w.set(8, UInt32(logicalSize))
            w.set(12, payloadChecksum)
            w.set(16, packID)
            w.set(24, page)
            w.set(28, UInt16(offset))
            w.set(32, key)
            if let t = changeTime {
                w.set(40, UInt64(bitPattern: t.seconds))
                w.set(48, t.nanoseconds)
            }
            w.set(52, crc32Checksum(UnsafeRawBufferPointer(rebasing: b[0..<52])))
        }
        return out
    }

    /// Decodes and checks a reference: its checksum, and every field in
    /// range (a block size the format has, a file encoding that compresses,
    /// a payload that fits a pack page and holds at most one block, a
    /// logical size of at most one block, a record inside its page).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(FileHeader.DecodeError) -> PackReference {
        guard bytes.count == size else { throw .unsupported("packed-file reference of \(bytes.count) bytes, not \(size)") }
        let r = LE(UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
        guard r.u32(52) == crc32Checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<52])) else { throw .badChecksum }
        guard r.u8(0) == version else { throw .unsupported("packed-file reference version \(r.u8(0))") }
        let shift = Int(r.u8(1))
        guard shift >= 12, shift <= 20 else { throw .unsupported("block size 2^\(shift)") }
        let bs = 1 << shift
        guard let fileEnc = BlockEncoding(rawValue: r.u8(2)), fileEnc != .raw, fileEnc != .zero else {
            throw .unsupported("file encoding \(r.u8(2))")
        }
        guard let enc = BlockEncoding(rawValue: r.u8(4)) else { throw .unsupported("payload encoding \(r.u8(4))") }
        guard r.u8(5) == 0, r.u16(30) == 0 else { throw .unsupported("flags or reserved fields set") }
        let seconds = Int64(bitPattern: r.u64(40)), nanoseconds = r.u32(48)
        guard nanoseconds < 1_000_000_000 else { throw .unsupported("change time with \(nanoseconds) nanoseconds") }
        let length = Int(r.u16(6)), logical = UInt64(r.u32(8))
        guard logical <= UInt64(bs) else { throw .unsupported("logical size \(logical) over one block of \(bs)") }
        guard length <= PackPage.maxPayload, length <= bs else { throw .unsupported("payload of \(length) bytes") }
        guard (length == 0) == (enc == .zero) else { throw .unsupported("payload of \(length) bytes in encoding \(enc)") }
        let offset = Int(r.u16(28))
        if length > 0 {
            guard offset >= PackPage.recordAreaStart, offset + PackPage.keySize + length <= PackPage.size else {
                throw .unsupported("record at \(offset) of \(PackPage.keySize + length) bytes outside its page")
            }
        } else {
            guard offset == 0, r.u32(24) == 0, r.u64(32) == 0 else { throw .unsupported("a record for an empty payload") }
        }
        var ref = PackReference(blockSize: bs, fileEncoding: fileEnc, level: r.u8(3), payloadEncoding: enc, payloadLength: length,
                                logicalSize: logical, payloadChecksum: r.u32(12), packID: r.u64(16), page: r.u32(24), offset: offset,
                                key: r.u64(32))
        if seconds != 0 || nanoseconds != 0 { ref.changeTime = (seconds, nanoseconds) }
        return ref
    }

    public static func decode(_ bytes: [UInt8]) throws(FileHeader.DecodeError) -> PackReference {
        var result: Result<PackReference, FileHeader.DecodeError> = .failure(.notAHeader)
        bytes.withUnsafeBytes { b in
            do throws(FileHeader.DecodeError) { result = .success(try decode(b)) } catch { result = .failure(error) }
        }
        return try result.get()
    }
}

/// One 4 KiB page of a pack file: a slotted page of small files' records.
///
/// ```
/// 0     u32 magic "WFPK", u16 version (1), u16 directory length n (<= 64)
/// 8     u64 reserved (0)
/// 16    directory: 64 entries of (u16 offset, u16 length); length 0 = free
/// 272   records: u64 key, then the payload; anywhere in 272..<4096,
///       never overlapping; an entry's length counts key and payload
/// ```
///
/// A record is written into bytes no live entry covers, then the directory
/// (its first sector) is rewritten with the new entry: a record is never
/// written over another's bytes. A page whose every entry is freed is
/// punched: a hole reads as zeros, an unformatted (free) page.
public struct PackPage: Sendable, Equatable {
    public static let size = 4096
    public static let magic: UInt32 = 0x4B50_4657       // "WFPK"
    public static let version: UInt16 = 1
    public static let maxEntries = 64
    public static let directoryOffset = 16
    public static let recordAreaStart = directoryOffset + 4 * maxEntries
    public static let keySize = 8
    /// The largest payload a page holds.
    public static let maxPayload = size - recordAreaStart - keySize

    /// A live record's place: bytes `offset..<offset + length` of the page.
    public struct Entry: Sendable, Equatable {
        public var offset: Int
        public var length: Int
        public init(offset: Int, length: Int) { self.offset = offset; self.length = length }
        public var range: Range<Int> { offset..<(offset + length) }
    }

    /// The directory: index = entry number, nil = free.
    public var entries: [Entry?]

    /// An empty, formatted page.
    public init() { entries = [] }

    /// What a page's bytes hold.
    public enum Decoded: Sendable, Equatable {
        /// All zeros (a hole, or never written): free.
        case unformatted
        case page(PackPage)
        /// Neither: nothing in it may be reused or freed.
        case damaged(String)
    }

    /// Decodes the directory in the first `recordAreaStart` bytes of `bytes`.
    /// Entries must lie in the record area, hold a key and at least one
    /// byte, and not overlap.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> Decoded {
        guard bytes.count >= recordAreaStart else { return .damaged("short page (\(bytes.count) bytes)") }
        let r = LE(UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
        if r.u32(0) == 0 && (0..<recordAreaStart).allSatisfy({ bytes[$0] == 0 }) { return .unformatted }
        guard r.u32(0) == magic else { return .damaged("no pack-page magic") }
        guard r.u16(4) == version else { return .damaged("pack-page version \(r.u16(4))") }
        let n = Int(r.u16(6))
        guard n <= maxEntries else { return .damaged("directory of \(n) entries") }
        var page = PackPage()
        var taken: [Range<Int>] = []
        for i in 0..<n {
            let off = Int(r.u16(directoryOffset + 4 * i)), len = Int(r.u16(directoryOffset + 4 * i + 2))
            if len == 0 { page.entries.append(nil); continue }
            guard len > keySize, off >= recordAreaStart, off + len <= size else { return .damaged("entry \(i) at \(off) of \(len) bytes") }
            let range = off..<(off + len)
            guard !taken.contains(where: { $0.overlaps(range) }) else { return .damaged("entry \(i) overlaps another") }
            taken.append(range)
            page.entries.append(Entry(offset: off, length: len))
        }
        return .page(page)
    }

    public static func decode(_ bytes: [UInt8]) -> Decoded { bytes.withUnsafeBytes { decode($0) } }

    /// The header and directory (the page's first `recordAreaStart` bytes).
    public func encodedDirectory() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: PackPage.recordAreaStart)
        out.withUnsafeMutableBytes { b in
            let w = LE(b.baseAddress!)
            w.set(0, PackPage.magic)
            w.set(4, PackPage.version)
            w.set(6, UInt16(entries.count))
            for (i, e) in entries.enumerated() {
                guard let e else { continue }
                w.set(PackPage.directoryOffset + 4 * i, UInt16(e.offset))
                w.set(PackPage.directoryOffset + 4 * i + 2, UInt16(e.length))
            }
        }
        return out
    }

    /// No live record.
    public var isEmpty: Bool { !entries.contains { $0 != nil } }

    /// Live records' bytes.
    public var usedBytes: Int { entries.reduce(0) { $0 + ($1?.length ?? 0) } }

    /// Where a record of `length` bytes (key included) goes: the lowest
    /// free run of the record area that holds it, and a free directory
    /// entry (the lowest); nil when the page cannot take it.
    public func place(length: Int) -> (entry: Int, offset: Int)? {
        guard length > PackPage.keySize, length <= PackPage.size - PackPage.recordAreaStart else { return nil }
        let entry = entries.firstIndex(where: { $0 == nil }) ?? entries.count
        guard entry < PackPage.maxEntries else { return nil }
        var at = PackPage.recordAreaStart
        for r in entries.compactMap({ $0?.range }).sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if r.lowerBound - at >= length { break }
            at = max(at, r.upperBound)
        }
        guard at + length <= PackPage.size else { return nil }
        return (entry, at)
    }

    /// Adds a record at the place `place` gave.
    public mutating func add(entry: Int, offset: Int, length: Int) {
        if entry == entries.count { entries.append(nil) }
        entries[entry] = Entry(offset: offset, length: length)
    }

    /// The entry of the record at `offset`, if one is live there.
    public func entry(at offset: Int) -> Int? { entries.firstIndex { $0?.offset == offset } }

    /// Frees entry `i`; trailing free entries are dropped from the directory.
    public mutating func remove(entry i: Int) {
        guard i < entries.count else { return }
        entries[i] = nil
        while let last = entries.last, last == nil { entries.removeLast() }
    }
}
