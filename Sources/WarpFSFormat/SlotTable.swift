/// One group's table of slot headers, decoded: for each of its blocks and
/// both slots, an empty slot, a valid header, or damage (bytes that are
/// neither). The one slot-table decoder the file system (opening and
/// recovery) and `fsck` use.
public struct SlotTable: Sendable {
    /// What one slot holds.
    public enum Slot: Sendable, Equatable {
        case empty
        case valid(SlotHeader)
        /// Neither empty nor a valid header for this block.
        case damaged

        public var header: SlotHeader? { if case .valid(let h) = self { return h } else { return nil } }
    }

    public let group: Int
    /// By `(block % blocksPerGroup) * 2 + slot`.
    private let slots: [Slot]

    /// Decodes group `group`'s table from `bytes` as read: at most
    /// `BlockLayout.tableSize` bytes; a table cut short (a short file) has
    /// empty slots past its end.
    public init(_ bytes: UnsafeRawBufferPointer, group: Int, layout: BlockLayout) {
        self.group = group
        let first = group * BlockLayout.blocksPerGroup
        slots = (0..<(2 * BlockLayout.blocksPerGroup)).map { i in
            let at = i * BlockLayout.slotHeaderSize
            guard at + BlockLayout.slotHeaderSize <= bytes.count else { return .empty }
            let raw = UnsafeRawBufferPointer(rebasing: bytes[at..<(at + BlockLayout.slotHeaderSize)])
            if let h = SlotHeader.decode(raw, block: first + i / 2, layout: layout) { return .valid(h) }
            return raw.contains(where: { $0 != 0 }) ? .damaged : .empty
        }
    }

    /// The blocks the table describes.
    public var blocks: Range<Int> { (group * BlockLayout.blocksPerGroup)..<((group + 1) * BlockLayout.blocksPerGroup) }

    /// Slot `slot` (0 or 1) of `block` (one of `blocks`).
    public func slot(block: Int, _ slot: Int) -> Slot {
        precondition(blocks.contains(block) && (0...1).contains(slot))
        return slots[(block - blocks.lowerBound) * 2 + slot]
    }

    /// The valid header of slot `slot` of `block`, if it has one.
    public func header(block: Int, _ slot: Int) -> SlotHeader? { self.slot(block: block, slot).header }
}

/// What is wrong with a payload read for a slot header.
public enum PayloadDamage: Sendable, Equatable {
    /// The backing file ended after `read` of the header's `storedLength` bytes.
    case truncated(read: Int)
    /// The bytes read fail the header's checksum.
    case checksum(stored: UInt32, read: UInt32)
}

extension SlotHeader {
    /// Checks the payload read for this header (`read` bytes, the first of
    /// `bytes`): nil when it is whole and passes its CRC-32C.
    public func damage(ofPayload bytes: UnsafeRawBufferPointer, read: Int) -> PayloadDamage? {
        guard read == storedLength else { return .truncated(read: read) }
        let crc = crc32Checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<read]))
        return crc == payloadChecksum ? nil : .checksum(stored: payloadChecksum, read: crc)
    }
}
