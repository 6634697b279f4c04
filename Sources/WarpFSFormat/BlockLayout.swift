/// Where blocks live in a compressed backing file, in format version 3
/// (new containers) or 2 (older ones, still read and written).
///
/// Each logical block has two slots; a new version of a block is written to
/// the slot that does not hold its last durable version, so a crash in the
/// middle of a write leaves the durable copy intact. Blocks are grouped 16
/// to a group; a group has a table of its 32 slot headers (32 bytes each)
/// and a payload region of `64 x blockSize` bytes. A slot's header names
/// where its payload starts in the region: in version 3 any byte (payloads
/// are packed byte by byte), in version 2 a 4 KiB page (each payload takes
/// whole pages). The writer packs payloads next to each other, so the
/// allocated size of the file is the sum of its payloads plus the tables;
/// space no payload uses is a hole (pages wholly free are punched).
///
/// The region is twice what 32 full-size payloads need: with at most 31
/// other payloads in it, some free run of `blockSize` bytes always exists
/// (see `regionSize`), so a store never fails for lack of a place.
///
/// Version 3: the first page holds both header copies, group 0's table and
/// the start of group 0's region, so a small file whose payload is at most
/// 2944 bytes occupies one page.
///
/// ```
/// 0      file header copy A (64 B)
/// 64     file header copy B (64 B)
/// 128    group 0 slot header table (32 x 32 B)
/// 1152   group 0 payload region (64 x blockSize)
/// G1     group 1: table (1 KiB), then its region; G1 = 4096 + 64 x blockSize
/// ...    group g >= 1 at g x (4096 + 64 x blockSize), its region 1 KiB after
/// ```
///
/// Version 2: header copies of 512 B at 0 and 512, group 0's table at 1024,
/// two 1 KiB inline payload areas for block 0 at 2048 and 3072, group 0's
/// region at 4096; group g >= 1's table page at the same place as in
/// version 3 and its region one page after it.
public struct BlockLayout: Sendable, Equatable {
    public static let blocksPerGroup = 16
    public static let slotHeaderSize = 32
    public static let tableSize = 2 * blocksPerGroup * slotHeaderSize
    /// Address space between the starts of groups g >= 1 and their regions in version 2.
    public static let tablePageSize = 4096
    /// Version 2: block 0's inline payload areas in the first page.
    public static let inlineOffset = 2048
    /// Version 2: largest block-0 payload stored inline in the first page.
    public static let inlineCapacity = 1024
    /// The page of the backing file system: what a punch frees.
    public static let pageSize = 4096

    public let blockSize: Int
    /// Format version (2 or 3).
    public let version: UInt16

    public init(blockSize: Int, version: UInt16 = FileHeader.version) {
        precondition(FileHeader.blockSizeRange.contains(blockSize) && blockSize % 4096 == 0)
        precondition(FileHeader.versions.contains(version))
        self.blockSize = blockSize
        self.version = version
    }

    /// The layout of the container `header` describes.
    public init(_ header: FileHeader) { self.init(blockSize: header.blockSize, version: header.version) }

    /// Bytes in one group's payload region: 64 blocks' worth. The 31 other
    /// slots of a group hold at most 31 blocks' worth (rounded up to pages
    /// in version 2) in at most 31 runs, leaving at least 33 blocks' worth
    /// free in at most 32 gaps, so one gap holds a block: a payload always fits.
    public var regionSize: Int { 64 * blockSize }

    /// Granularity of placement in a region: payloads start at multiples of
    /// it and take their length rounded up to it (1 byte in version 3, a
    /// page in version 2).
    public var placementUnit: Int { version == 2 ? BlockLayout.pageSize : 1 }

    /// Bytes of the region a payload of `length` bytes takes.
    public func footprintLength(_ length: Int) -> Int {
        (length + placementUnit - 1) / placementUnit * placementUnit
    }

    /// The bytes of the region (relative to its start) the slot's payload
    /// takes; empty for an inline or empty payload.
    public func footprint(_ h: SlotHeader) -> Range<Int> {
        h.isInline || h.storedLength == 0 ? h.offset..<h.offset : h.offset..<(h.offset + footprintLength(h.storedLength))
    }

    /// Offsets of the two header copies.
    public var headerCopyOffsets: [Int] { FileHeader.copyOffsets(version: version) }

    /// Offset of group `g`'s slot header table.
    public func tableOffset(group g: Int) -> Int {
        g == 0 ? (version == 2 ? 1024 : 2 * FileHeader.size(version: version)) : g * (BlockLayout.tablePageSize + regionSize)
    }

    /// Offset of group `g`'s payload region.
    public func regionOffset(group g: Int) -> Int {
        if version == 2 { return g == 0 ? 4096 : tableOffset(group: g) + BlockLayout.tablePageSize }
        return tableOffset(group: g) + BlockLayout.tableSize
    }

    /// The group whose table or region holds byte `offset` of the file.
    public func group(containing offset: Int) -> Int {
        offset / (BlockLayout.tablePageSize + regionSize)
    }

    /// Offset of the header of slot `slot` (0 or 1) of `block`.
    public func slotHeaderOffset(block: Int, slot: Int) -> Int {
        tableOffset(group: block / BlockLayout.blocksPerGroup) + ((block % BlockLayout.blocksPerGroup) * 2 + slot) * BlockLayout.slotHeaderSize
    }

    /// Version 2: offset of block 0's inline payload area of `slot`.
    public func inlinePayloadOffset(slot: Int) -> Int { BlockLayout.inlineOffset + slot * BlockLayout.inlineCapacity }

    /// Where a slot's payload is, given its header.
    public func payloadOffset(block: Int, slot: Int, header: SlotHeader) -> Int {
        header.isInline ? inlinePayloadOffset(slot: slot) : regionOffset(group: block / BlockLayout.blocksPerGroup) + header.offset
    }

    /// The whole pages of the backing file (absolute byte ranges, page
    /// aligned) among those `released` touches (region-relative bytes of
    /// group `g`) that no byte of `used` (region-relative, the footprints
    /// that stay) touches and that lie wholly inside the region: what may be
    /// punched once `released` is no longer needed. In version 2 these are
    /// the released pages themselves less those `used` names; in version 3
    /// a page a remaining payload shares is kept.
    public func punchablePages(of released: Range<Int>, used: [Range<Int>], group g: Int) -> [Range<Int>] {
        guard !released.isEmpty else { return [] }
        let base = regionOffset(group: g)
        let page = BlockLayout.pageSize
        let regionStart = (base + page - 1) / page * page, regionEnd = (base + regionSize) / page * page
        let first = max((base + released.lowerBound) / page * page, regionStart)
        let last = min((base + released.upperBound + page - 1) / page * page, regionEnd)
        guard first < last else { return [] }
        let taken = used.filter { !$0.isEmpty }.map { (base + $0.lowerBound)..<(base + $0.upperBound) }
        var out: [Range<Int>] = []
        var p = first
        while p < last {
            let pageRange = p..<(p + page)
            if !taken.contains(where: { $0.overlaps(pageRange) }) {
                if let l = out.last, l.upperBound == p { out[out.count - 1] = l.lowerBound..<(p + page) } else { out.append(pageRange) }
            }
            p += page
        }
        return out
    }

    /// Number of blocks covering `logicalSize` bytes.
    public func blockCount(logicalSize: UInt64) -> Int {
        Int((logicalSize + UInt64(blockSize) - 1) / UInt64(blockSize))
    }

    /// Largest logical size the layout addresses with 64-bit offsets, with margin.
    public var maxLogicalSize: UInt64 {
        UInt64(Int64.max / 4) / UInt64(BlockLayout.tablePageSize + regionSize) * UInt64(BlockLayout.blocksPerGroup * blockSize)
    }

    /// Largest logical size whose blocks can all be stored in a backing file
    /// of at most `backingLimit` bytes: whole groups whose table and payload
    /// region end at or before the limit (a payload may be placed anywhere in
    /// its group's region). At most `maxLogicalSize`.
    public func maxLogicalSize(backingLimit: Int) -> UInt64 {
        let span = BlockLayout.tablePageSize + regionSize
        // Group g's region ends at or before (g + 1) * span in both versions.
        guard backingLimit >= span else { return 0 }
        let groups = UInt64(backingLimit / span)
        let (bytes, overflow) = groups.multipliedReportingOverflow(by: UInt64(BlockLayout.blocksPerGroup * blockSize))
        return overflow ? maxLogicalSize : min(bytes, maxLogicalSize)
    }
}

/// The header of one slot: which block version it holds and how.
///
/// Layout (32 bytes, little endian), version 3: `0 u16 magic 0x4B57 ("WK")`,
/// `2 u8 encoding`, `3 u8 flags (0)`, `4 u32 stored length`,
/// `8 u32 first byte of the payload in the group's region`,
/// `12 u32 payload CRC-32C`, `16 u48 block number`, `22 u48 generation`,
/// `28 u32 CRC-32C of bytes 0..<28`.
///
/// Version 2: `0 u16 magic`, `2 u8 encoding`, `3 u8 flags (bit 0: payload
/// inline in the first page)`, `4 u32 stored length`, `8 u64 block number`,
/// `16 u48 generation`, `22 u16 first page of the payload in the group's
/// region`, `24 u32 payload CRC-32C`, `28 u32 CRC-32C of bytes 0..<28`.
/// An all-zero header is an empty slot.
public struct SlotHeader: Sendable, Equatable {
    public static let magic: UInt16 = 0x4B57

    public var encoding: BlockEncoding
    /// Version 2 only: block 0's payload in its slot's inline area.
    public var isInline: Bool
    public var block: UInt64
    public var generation: UInt64
    public var storedLength: Int
    public var payloadChecksum: UInt32
    /// Where the payload starts in the group's region, in bytes (0 when
    /// inline or empty; a multiple of 4096 in version 2).
    public var offset: Int
    /// Generations are 48 bits on disk.
    public static let maxGeneration: UInt64 = (1 << 48) - 1
    /// Block numbers are 48 bits on disk in version 3.
    public static let maxBlock: UInt64 = (1 << 48) - 1

    public init(encoding: BlockEncoding, isInline: Bool = false, block: UInt64, generation: UInt64, storedLength: Int,
                payloadChecksum: UInt32, offset: Int = 0) {
        self.encoding = encoding; self.isInline = isInline; self.block = block; self.generation = generation
        self.storedLength = storedLength; self.payloadChecksum = payloadChecksum; self.offset = offset
    }

    /// Encodes for a container of `layout`'s version.
    public func encode(into out: UnsafeMutableRawBufferPointer, layout: BlockLayout) {
        precondition(out.count >= BlockLayout.slotHeaderSize)
        let b = out.baseAddress!
        b.initializeMemory(as: UInt8.self, repeating: 0, count: BlockLayout.slotHeaderSize)
        let w = LE(b)
        w.set(0, SlotHeader.magic)
        w.set(2, encoding.rawValue)
        w.set(4, UInt32(storedLength))
        precondition(generation <= SlotHeader.maxGeneration)
        if layout.version == 2 {
            precondition(offset % BlockLayout.pageSize == 0 && offset / BlockLayout.pageSize <= Int(UInt16.max))
            w.set(3, UInt8(isInline ? 1 : 0))
            w.set(8, block)
            w.set(16, generation | UInt64(offset / BlockLayout.pageSize) << 48)
            w.set(24, payloadChecksum)
        } else {
            precondition(!isInline && block <= SlotHeader.maxBlock && offset <= Int(UInt32.max))
            w.set(8, UInt32(offset))
            w.set(12, payloadChecksum)
            w.set(16, UInt32(truncatingIfNeeded: block))
            w.set(20, UInt16(truncatingIfNeeded: block >> 32))
            w.set(22, UInt16(truncatingIfNeeded: generation))
            w.set(24, UInt32(truncatingIfNeeded: generation >> 16))
        }
        w.set(28, crc32Checksum(UnsafeRawBufferPointer(start: b, count: 28)))
    }

    /// Decodes a slot header of a container of `layout`; nil for an empty,
    /// damaged or foreign slot. `block` must match (a header copied to the
    /// wrong place is rejected), the stored length must fit, the payload
    /// must lie inside the group's region (offset 0 when it is empty), and
    /// (version 2) only block 0 may be inline.
    public static func decode(_ bytes: UnsafeRawBufferPointer, block: Int, layout: BlockLayout) -> SlotHeader? {
        guard bytes.count >= BlockLayout.slotHeaderSize else { return nil }
        let r = LE(UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
        guard r.u16(0) == magic,
              r.u32(28) == crc32Checksum(UnsafeRawBufferPointer(start: bytes.baseAddress, count: 28)),
              let enc = BlockEncoding(rawValue: r.u8(2)) else { return nil }
        let len = Int(r.u32(4))
        guard len <= layout.blockSize, enc != .zero || len == 0 else { return nil }
        let flags = r.u8(3)
        let stated: UInt64, generation: UInt64, offset: Int, checksum: UInt32
        if layout.version == 2 {
            guard flags & ~1 == 0 else { return nil }
            let word = r.u64(16)
            stated = r.u64(8); generation = word & maxGeneration; offset = Int(word >> 48) * BlockLayout.pageSize; checksum = r.u32(24)
        } else {
            guard flags == 0 else { return nil }
            stated = UInt64(r.u32(16)) | UInt64(r.u16(20)) << 32
            generation = UInt64(r.u16(22)) | UInt64(r.u32(24)) << 16
            offset = Int(r.u32(8)); checksum = r.u32(12)
        }
        guard stated == UInt64(block) else { return nil }
        let inline = flags & 1 != 0
        if inline { guard block == 0, len <= BlockLayout.inlineCapacity, offset == 0 else { return nil } }
        else { guard len > 0 || offset == 0, offset + layout.footprintLength(len) <= layout.regionSize else { return nil } }
        return SlotHeader(encoding: enc, isInline: inline, block: UInt64(block), generation: generation, storedLength: len,
                          payloadChecksum: checksum, offset: offset)
    }
}
