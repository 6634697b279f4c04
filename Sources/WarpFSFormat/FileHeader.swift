/// How a block's payload is stored.
public enum BlockEncoding: UInt8, Sendable, CaseIterable {
    /// Stored as is (compression saved less than 6.25%).
    case raw = 0
    /// Raw deflate (RFC 1951).
    case deflate = 1
    /// zlib stream (RFC 1950).
    case zlib = 2
    /// gzip stream (RFC 1952).
    case gzip = 3
    /// All zeros: no payload (a hole).
    case zero = 4
    /// One zstd frame (RFC 8878).
    case zstd = 5
    /// One lz4 block (no frame; the block's logical size is the uncompressed size).
    case lz4 = 6
}

/// The container header of a compressed backing file. Two copies live at
/// the start of the file (`copyOffsets(version:)`: 0 and 64 in version 3,
/// 0 and 512 in version 2); the valid copy with the higher generation wins,
/// so a torn header write never loses the file.
///
/// Layout (little endian; version 3 is 64 bytes, version 2 512):
/// `0 magic "WARPFS\r\n"`, `8 u16 version`, `10 u16 header size (64 or 512)`,
/// `12 u32 block size`, `16 u8 encoding of compressed blocks`, `17 u8 level`,
/// `18 u16 flags`, `20 u32 reserved`, `24 u64 generation`, `32 u64 logical size`,
/// zeros up to the last 4 bytes, then the CRC-32C of all bytes before them.
public struct FileHeader: Sendable, Equatable {
    public static let magic: [UInt8] = Array("WARPFS\r\n".utf8)
    /// The version new containers get. Version 3 packs payloads byte by byte
    /// after a 64-byte header; version 2 (still read and written) packs them
    /// in 4 KiB pages after a 512-byte header; version 1 had fixed slot areas.
    public static let version: UInt16 = 3
    /// Versions this build reads and writes.
    public static let versions: ClosedRange<UInt16> = 2...3
    /// Size of one header copy in `version`.
    public static func size(version: UInt16) -> Int { version == 2 ? 512 : 64 }
    /// Byte offsets of the two header copies in `version`.
    public static func copyOffsets(version: UInt16) -> [Int] { [0, size(version: version)] }
    /// Smallest and largest block sizes the format accepts.
    public static let blockSizeRange = 4096...(1 << 20)

    /// Format version of the container (2 or 3): its layout (`BlockLayout`).
    public var version: UInt16
    public var blockSize: Int
    /// Encoding new compressed blocks use (informational; each block says its own).
    public var encoding: BlockEncoding
    public var level: UInt8
    public var generation: UInt64
    public var logicalSize: UInt64

    public init(version: UInt16 = FileHeader.version, blockSize: Int, encoding: BlockEncoding, level: UInt8, generation: UInt64,
                logicalSize: UInt64) {
        precondition(FileHeader.versions.contains(version))
        self.version = version; self.blockSize = blockSize; self.encoding = encoding; self.level = level
        self.generation = generation; self.logicalSize = logicalSize
    }

    /// Size of one copy of this header.
    public var size: Int { FileHeader.size(version: version) }

    /// Encodes into `out` (at least `size` bytes).
    public func encode(into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= size)
        let b = out.baseAddress!
        b.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        for (i, c) in FileHeader.magic.enumerated() { b.storeBytes(of: c, toByteOffset: i, as: UInt8.self) }
        let w = LE(b)
        w.set(8, version)
        w.set(10, UInt16(size))
        w.set(12, UInt32(blockSize))
        w.set(16, encoding.rawValue)
        w.set(17, level)
        w.set(24, generation)
        w.set(32, logicalSize)
        w.set(size - 4, crc32Checksum(UnsafeRawBufferPointer(start: b, count: size - 4)))
    }

    /// Why a header copy was rejected.
    public enum DecodeError: Error, Equatable, Sendable {
        /// Not a WarpFS header at all (a plain file).
        case notAHeader
        /// Magic matches but the checksum does not: a damaged copy.
        case badChecksum
        /// Checksummed, but a field is out of range.
        case unsupported(String)
    }

    /// Whether `bytes` starts with the magic (a WarpFS container, maybe damaged).
    public static func hasMagic(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= magic.count && zip(bytes.prefix(magic.count), magic).allSatisfy { $0 == $1 }
    }

    /// Decodes one copy from `bytes` (at least its size, which depends on
    /// the version it states). Besides the checksum, every field must be in
    /// range: version 2 or 3, the header size of that version, block size a
    /// multiple of 4096 in `blockSizeRange`, a compressed encoding, flags 0,
    /// a 48-bit generation and a logical size the layout addresses
    /// (`BlockLayout.maxLogicalSize`).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> FileHeader {
        guard bytes.count >= 12, hasMagic(bytes) else { throw .notAHeader }
        let r = LE(UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
        let stated = r.u16(8)
        // The checksum's place depends on the version: a copy whose version
        // field is damaged fails the checksum of either size.
        let size = FileHeader.size(version: stated)
        guard bytes.count >= size,
              r.u32(size - 4) == crc32Checksum(UnsafeRawBufferPointer(start: bytes.baseAddress, count: size - 4)) else { throw .badChecksum }
        guard versions.contains(stated) else {
            throw .unsupported("format version \(stated); this build reads versions \(versions.lowerBound)-\(versions.upperBound)")
        }
        guard r.u16(10) == UInt16(size) else { throw .unsupported("header size \(r.u16(10))") }
        let bs = Int(r.u32(12))
        guard blockSizeRange.contains(bs), bs % 4096 == 0 else { throw .unsupported("block size \(bs)") }
        // New blocks are compressed in this encoding: raw or zero would label compressed payloads wrongly.
        guard let enc = BlockEncoding(rawValue: r.u8(16)), enc != .raw, enc != .zero else { throw .unsupported("encoding \(r.u8(16))") }
        guard r.u16(18) == 0 else { throw .unsupported("flags 0x\(String(r.u16(18), radix: 16))") }
        // Header and slots share one 48-bit generation counter (the next one is computed by adding 1).
        let generation = r.u64(24)
        guard generation <= SlotHeader.maxGeneration else { throw .unsupported("generation \(generation)") }
        // Every block of the file must have offsets that fit in 64 bits.
        let logical = r.u64(32)
        guard logical <= BlockLayout(blockSize: bs, version: stated).maxLogicalSize else {
            throw .unsupported("logical size \(logical) at block size \(bs)")
        }
        return FileHeader(version: stated, blockSize: bs, encoding: enc, level: r.u8(17), generation: generation, logicalSize: logical)
    }

    /// Picks the valid copy with the higher generation from the first 1024
    /// bytes of a file (`HeaderCopies`, without its magic test). Throws
    /// `notAHeader` when neither copy has the magic.
    public static func decodeNewest(_ bytes: UnsafeRawBufferPointer) throws(DecodeError) -> (header: FileHeader, copy: Int) {
        let copies = HeaderCopies(bytes)
        if let newest = copies.newest { return newest }
        throw copies.firstError
    }
}
