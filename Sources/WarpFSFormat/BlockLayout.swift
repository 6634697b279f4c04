/// Where blocks live in a compressed backing file.
///
/// Each logical block has two slots; a new version of a block is written to
/// the slot that does not hold its last durable version, so a crash in the
/// middle of a write leaves the durable copy intact. Slots are grouped 16
/// blocks to a group: one 4 KiB page of 32 slot headers, then the 32 slots
/// of `blockSize` bytes each. Unused slot space is a hole (punched), so
/// the file's allocated size is the sum of the stored payloads (rounded to
/// pages) plus one header page per group and the file header page.
///
/// ```
/// 0        file header copy A (512 B), copy B at 512, rest of the page unused
/// 4096     group 0: slot header page (32 x 128 B), then slots (block 0 s0, block 0 s1, block 1 s0, ...)
/// 4096 + G group 1: ...           where G = 4096 + 32 * blockSize
/// ```
public struct BlockLayout: Sendable, Equatable {
    public static let dataStart = 4096
    public static let blocksPerGroup = 16
    public static let slotHeaderSize = 128
    public static let headerPageSize = 4096

    public let blockSize: Int

    public init(blockSize: Int) {
        precondition(FileHeader.blockSizeRange.contains(blockSize) && blockSize % 4096 == 0)
        self.blockSize = blockSize
    }

    public var groupSize: Int { BlockLayout.headerPageSize + 2 * BlockLayout.blocksPerGroup * blockSize }

    private func groupBase(_ block: Int) -> Int { BlockLayout.dataStart + (block / BlockLayout.blocksPerGroup) * groupSize }

    /// Offset of the header of slot `slot` (0 or 1) of `block`.
    public func slotHeaderOffset(block: Int, slot: Int) -> Int {
        groupBase(block) + ((block % BlockLayout.blocksPerGroup) * 2 + slot) * BlockLayout.slotHeaderSize
    }

    /// Offset of the payload of slot `slot` of `block`.
    public func slotPayloadOffset(block: Int, slot: Int) -> Int {
        groupBase(block) + BlockLayout.headerPageSize + ((block % BlockLayout.blocksPerGroup) * 2 + slot) * blockSize
    }

    /// Number of blocks covering `logicalSize` bytes.
    public func blockCount(logicalSize: UInt64) -> Int {
        Int((logicalSize + UInt64(blockSize) - 1) / UInt64(blockSize))
    }

    /// Largest logical size the layout addresses with 64-bit offsets, with margin.
    public var maxLogicalSize: UInt64 { UInt64(Int64.max / 4) / UInt64(groupSize) * UInt64(BlockLayout.blocksPerGroup * blockSize) }
}

/// The header of one slot: which block version it holds and how.
///
/// Layout (128 bytes, little endian): `0 magic "WBLK"`, `4 u8 encoding`,
/// `5 u8 reserved`, `6 u16 reserved`, `8 u64 block number`, `16 u64 generation`,
/// `24 u32 stored length` (a raw payload may be shorter than the block: the rest is zeros), `28 u32 payload CRC-32`, `32..123 zero`,
/// `124 u32 CRC-32 of bytes 0..<124`. An all-zero header is an empty slot.
public struct SlotHeader: Sendable, Equatable {
    public static let magic: [UInt8] = Array("WBLK".utf8)

    public var encoding: BlockEncoding
    public var block: UInt64
    public var generation: UInt64
    public var storedLength: Int
    public var payloadChecksum: UInt32

    public init(encoding: BlockEncoding, block: UInt64, generation: UInt64, storedLength: Int, payloadChecksum: UInt32) {
        self.encoding = encoding; self.block = block; self.generation = generation
        self.storedLength = storedLength; self.payloadChecksum = payloadChecksum
    }

    public func encode(into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= BlockLayout.slotHeaderSize)
        let b = out.baseAddress!
        b.initializeMemory(as: UInt8.self, repeating: 0, count: BlockLayout.slotHeaderSize)
        for (i, c) in SlotHeader.magic.enumerated() { b.storeBytes(of: c, toByteOffset: i, as: UInt8.self) }
        let w = LE(b)
        w.set(4, encoding.rawValue)
        w.set(8, block)
        w.set(16, generation)
        w.set(24, UInt32(storedLength))
        w.set(28, payloadChecksum)
        w.set(124, crc32Checksum(UnsafeRawBufferPointer(start: b, count: 124)))
    }

    /// Decodes a slot header; nil for an empty, damaged or foreign slot.
    /// `block` must match (a header copied to the wrong place is rejected)
    /// and the stored length must fit the block size.
    public static func decode(_ bytes: UnsafeRawBufferPointer, block: Int, blockSize: Int) -> SlotHeader? {
        guard bytes.count >= BlockLayout.slotHeaderSize,
              zip(bytes.prefix(4), magic).allSatisfy({ $0 == $1 }) else { return nil }
        let r = LE(UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
        guard r.u32(124) == crc32Checksum(UnsafeRawBufferPointer(start: bytes.baseAddress, count: 124)) else { return nil }
        guard let enc = BlockEncoding(rawValue: r.u8(4)), r.u64(8) == UInt64(block) else { return nil }
        let len = Int(r.u32(24))
        guard len <= blockSize, enc != .zero || len == 0 else { return nil }
        return SlotHeader(encoding: enc, block: UInt64(block), generation: r.u64(16), storedLength: len, payloadChecksum: r.u32(28))
    }
}
