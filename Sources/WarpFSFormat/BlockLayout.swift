/// Where blocks live in a compressed backing file.
///
/// Each logical block has two slots; a new version of a block is written to
/// the slot that does not hold its last durable version, so a crash in the
/// middle of a write leaves the durable copy intact. Blocks are grouped 16
/// to a group; a group has a table of its 32 slot headers (32 bytes each)
/// and a payload region of `64 x blockSize` bytes in 4 KiB pages. A slot's
/// header names the first page of its payload in the region, so the writer
/// packs consecutive payloads next to each other (a sequential reader then
/// reads the backing file sequentially). Unused space is a hole, so the
/// allocated size of the file is the sum of its payloads (rounded to
/// pages) plus the table pages.
///
/// The region is twice what 32 full-size payloads need: with at most 31
/// other payloads in it, some free run of `blockSize` bytes always exists
/// (see `regionPages`), so a store never fails for lack of a place.
///
/// The first page holds the two file header copies, group 0's table, and
/// two 1 KiB inline payload areas for block 0, so a small file (block 0
/// compressing to 1 KiB or less) occupies a single page, like a plain file.
///
/// ```
/// 0      file header copy A (512 B)
/// 512    file header copy B (512 B)
/// 1024   group 0 slot header table (32 x 32 B)
/// 2048   block 0 inline payload, slot 0 (1 KiB)
/// 3072   block 0 inline payload, slot 1 (1 KiB)
/// 4096   group 0 payload region (64 x blockSize)
/// G1     group 1: table page (4 KiB, 1 KiB used), then its payload region; G1 = 4096 + 64 x blockSize
/// ...    group g >= 1 at G1 + (g - 1) x (4096 + 64 x blockSize)
/// ```
public struct BlockLayout: Sendable, Equatable {
    public static let blocksPerGroup = 16
    public static let slotHeaderSize = 32
    public static let tableSize = 2 * blocksPerGroup * slotHeaderSize
    public static let tablePageSize = 4096
    public static let firstTableOffset = 1024
    public static let inlineOffset = 2048
    /// Largest block-0 payload stored inline in the first page.
    public static let inlineCapacity = 1024
    /// Unit of payload placement in a group's region.
    public static let pageSize = 4096

    public let blockSize: Int

    public init(blockSize: Int) {
        precondition(FileHeader.blockSizeRange.contains(blockSize) && blockSize % 4096 == 0)
        self.blockSize = blockSize
    }

    /// Pages in one group's payload region: 64 blocks' worth. With P pages
    /// per block, the 31 other slots of a group hold at most 31P pages in at
    /// most 31 runs, leaving at least 33P free pages in at most 32 gaps, so
    /// one gap has at least P + 1 pages: a payload always fits.
    public var regionPages: Int { 64 * blockSize / BlockLayout.pageSize }

    private var regionSize: Int { regionPages * BlockLayout.pageSize }

    /// Pages a payload of `length` bytes occupies (0 for inline or empty ones).
    public static func pages(_ length: Int) -> Int { (length + pageSize - 1) / pageSize }

    /// Offset of group `g`'s slot header table.
    public func tableOffset(group g: Int) -> Int {
        g == 0 ? BlockLayout.firstTableOffset : 4096 + regionSize + (g - 1) * (BlockLayout.tablePageSize + regionSize)
    }

    /// Offset of group `g`'s payload region.
    public func regionOffset(group g: Int) -> Int {
        g == 0 ? 4096 : tableOffset(group: g) + BlockLayout.tablePageSize
    }

    /// The group whose table or region holds byte `offset` of the file.
    public func group(containing offset: Int) -> Int {
        let firstEnd = 4096 + regionSize
        return offset < firstEnd ? 0 : 1 + (offset - firstEnd) / (BlockLayout.tablePageSize + regionSize)
    }

    /// Offset of the header of slot `slot` (0 or 1) of `block`.
    public func slotHeaderOffset(block: Int, slot: Int) -> Int {
        tableOffset(group: block / BlockLayout.blocksPerGroup) + ((block % BlockLayout.blocksPerGroup) * 2 + slot) * BlockLayout.slotHeaderSize
    }

    /// Offset of block 0's inline payload area of `slot`.
    public func inlinePayloadOffset(slot: Int) -> Int { BlockLayout.inlineOffset + slot * BlockLayout.inlineCapacity }

    /// Where a slot's payload is, given its header.
    public func payloadOffset(block: Int, slot: Int, header: SlotHeader) -> Int {
        header.isInline ? inlinePayloadOffset(slot: slot)
            : regionOffset(group: block / BlockLayout.blocksPerGroup) + header.page * BlockLayout.pageSize
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
        // Group g's region ends at 4096 + regionSize + g * span.
        let firstEnd = 4096 + regionSize
        guard backingLimit >= firstEnd else { return 0 }
        let groups = UInt64((backingLimit - firstEnd) / span) + 1
        let (bytes, overflow) = groups.multipliedReportingOverflow(by: UInt64(BlockLayout.blocksPerGroup * blockSize))
        return overflow ? maxLogicalSize : min(bytes, maxLogicalSize)
    }
}

/// The header of one slot: which block version it holds and how.
///
/// Layout (32 bytes, little endian): `0 u16 magic 0x4B57 ("WK")`,
/// `2 u8 encoding`, `3 u8 flags (bit 0: payload inline in the first page)`,
/// `4 u32 stored length`, `8 u64 block number`, `16 u48 generation`,
/// `22 u16 first page of the payload in the group's region`,
/// `24 u32 payload CRC-32C`, `28 u32 CRC-32C of bytes 0..<28`.
/// An all-zero header is an empty slot.
public struct SlotHeader: Sendable, Equatable {
    public static let magic: UInt16 = 0x4B57

    public var encoding: BlockEncoding
    public var isInline: Bool
    public var block: UInt64
    public var generation: UInt64
    public var storedLength: Int
    public var payloadChecksum: UInt32
    /// First page of the payload in the group's region (0 when inline or empty).
    public var page: Int
    /// Generations are 48 bits on disk.
    public static let maxGeneration: UInt64 = (1 << 48) - 1

    public init(encoding: BlockEncoding, isInline: Bool = false, block: UInt64, generation: UInt64, storedLength: Int,
                payloadChecksum: UInt32, page: Int = 0) {
        self.encoding = encoding; self.isInline = isInline; self.block = block; self.generation = generation
        self.storedLength = storedLength; self.payloadChecksum = payloadChecksum; self.page = page
    }

    /// Pages of the region the payload occupies.
    public var pageRange: Range<Int> {
        isInline || storedLength == 0 ? page..<page : page..<(page + BlockLayout.pages(storedLength))
    }

    public func encode(into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= BlockLayout.slotHeaderSize)
        let b = out.baseAddress!
        b.initializeMemory(as: UInt8.self, repeating: 0, count: BlockLayout.slotHeaderSize)
        let w = LE(b)
        w.set(0, SlotHeader.magic)
        w.set(2, encoding.rawValue)
        w.set(3, UInt8(isInline ? 1 : 0))
        w.set(4, UInt32(storedLength))
        w.set(8, block)
        precondition(generation <= SlotHeader.maxGeneration && page <= Int(UInt16.max))
        w.set(16, generation | UInt64(page) << 48)
        w.set(24, payloadChecksum)
        w.set(28, crc32Checksum(UnsafeRawBufferPointer(start: b, count: 28)))
    }

    /// Decodes a slot header; nil for an empty, damaged or foreign slot.
    /// `block` must match (a header copied to the wrong place is rejected),
    /// the stored length must fit, the payload must lie inside the group's
    /// region (page 0 when it is empty), and only block 0 may be inline.
    public static func decode(_ bytes: UnsafeRawBufferPointer, block: Int, blockSize: Int) -> SlotHeader? {
        guard bytes.count >= BlockLayout.slotHeaderSize else { return nil }
        let r = LE(UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
        guard r.u16(0) == magic,
              r.u32(28) == crc32Checksum(UnsafeRawBufferPointer(start: bytes.baseAddress, count: 28)),
              let enc = BlockEncoding(rawValue: r.u8(2)), r.u64(8) == UInt64(block) else { return nil }
        let flags = r.u8(3)
        guard flags & ~1 == 0 else { return nil }
        let inline = flags & 1 != 0
        let len = Int(r.u32(4))
        guard len <= blockSize, enc != .zero || len == 0 else { return nil }
        let word = r.u64(16)
        let page = Int(word >> 48)
        if inline { guard block == 0, len <= BlockLayout.inlineCapacity, page == 0 else { return nil } }
        else { guard len > 0 || page == 0, page + BlockLayout.pages(len) <= 64 * blockSize / BlockLayout.pageSize else { return nil } }
        return SlotHeader(encoding: enc, isInline: inline, block: UInt64(block), generation: word & maxGeneration, storedLength: len,
                          payloadChecksum: r.u32(24), page: page)
    }
}
