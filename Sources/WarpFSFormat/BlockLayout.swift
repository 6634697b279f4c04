/// Where blocks live in a compressed backing file.
///
/// Each logical block has two slots; a new version of a block is written to
/// the slot that does not hold its last durable version, so a crash in the
/// middle of a write leaves the durable copy intact. Blocks are grouped 16
/// to a group; a group has a table of its 32 slot headers (32 bytes each)
/// and 32 payload areas of `blockSize` bytes. Unused payload space is a
/// hole, so the allocated size of the file is the sum of its payloads
/// (rounded to pages) plus the table pages.
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
/// 4096   group 0 payloads: block 0 slot 0, block 0 slot 1, block 1 slot 0, ... (32 x blockSize)
/// G0     group 1: table page (4 KiB, 1 KiB used), then 32 payloads; G0 = 4096 + 32 x blockSize
/// ...    group g >= 1 at G0 + (g - 1) x (4096 + 32 x blockSize)
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

    public let blockSize: Int

    public init(blockSize: Int) {
        precondition(FileHeader.blockSizeRange.contains(blockSize) && blockSize % 4096 == 0)
        self.blockSize = blockSize
    }

    private var payloadsPerGroup: Int { 2 * BlockLayout.blocksPerGroup * blockSize }

    /// Offset of group `g`'s slot header table.
    public func tableOffset(group g: Int) -> Int {
        g == 0 ? BlockLayout.firstTableOffset : 4096 + payloadsPerGroup + (g - 1) * (BlockLayout.tablePageSize + payloadsPerGroup)
    }

    private func payloadBase(group g: Int) -> Int {
        g == 0 ? 4096 : tableOffset(group: g) + BlockLayout.tablePageSize
    }

    /// Offset of the header of slot `slot` (0 or 1) of `block`.
    public func slotHeaderOffset(block: Int, slot: Int) -> Int {
        tableOffset(group: block / BlockLayout.blocksPerGroup) + ((block % BlockLayout.blocksPerGroup) * 2 + slot) * BlockLayout.slotHeaderSize
    }

    /// Offset of the payload area of slot `slot` of `block`.
    public func slotPayloadOffset(block: Int, slot: Int) -> Int {
        payloadBase(group: block / BlockLayout.blocksPerGroup) + ((block % BlockLayout.blocksPerGroup) * 2 + slot) * blockSize
    }

    /// Offset of block 0's inline payload area of `slot`.
    public func inlinePayloadOffset(slot: Int) -> Int { BlockLayout.inlineOffset + slot * BlockLayout.inlineCapacity }

    /// Where a slot's payload is, given its header.
    public func payloadOffset(block: Int, slot: Int, header: SlotHeader) -> Int {
        header.isInline ? inlinePayloadOffset(slot: slot) : slotPayloadOffset(block: block, slot: slot)
    }

    /// Number of blocks covering `logicalSize` bytes.
    public func blockCount(logicalSize: UInt64) -> Int {
        Int((logicalSize + UInt64(blockSize) - 1) / UInt64(blockSize))
    }

    /// Largest logical size the layout addresses with 64-bit offsets, with margin.
    public var maxLogicalSize: UInt64 {
        UInt64(Int64.max / 4) / UInt64(BlockLayout.tablePageSize + payloadsPerGroup) * UInt64(BlockLayout.blocksPerGroup * blockSize)
    }
}

/// The header of one slot: which block version it holds and how.
///
/// Layout (32 bytes, little endian): `0 u16 magic 0x4B57 ("WK")`,
/// `2 u8 encoding`, `3 u8 flags (bit 0: payload inline in the first page)`,
/// `4 u32 stored length`, `8 u64 block number`, `16 u64 generation`,
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

    public init(encoding: BlockEncoding, isInline: Bool = false, block: UInt64, generation: UInt64, storedLength: Int, payloadChecksum: UInt32) {
        self.encoding = encoding; self.isInline = isInline; self.block = block; self.generation = generation
        self.storedLength = storedLength; self.payloadChecksum = payloadChecksum
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
        w.set(16, generation)
        w.set(24, payloadChecksum)
        w.set(28, crc32Checksum(UnsafeRawBufferPointer(start: b, count: 28)))
    }

    /// Decodes a slot header; nil for an empty, damaged or foreign slot.
    /// `block` must match (a header copied to the wrong place is rejected),
    /// the stored length must fit, and only block 0 may be inline.
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
        if inline { guard block == 0, len <= BlockLayout.inlineCapacity else { return nil } }
        return SlotHeader(encoding: enc, isInline: inline, block: UInt64(block), generation: r.u64(16), storedLength: len,
                          payloadChecksum: r.u32(24))
    }
}
