/// The v2 doorbell word the client stores at MMIO + 0x1000:
/// `qn & 0x3ff | (cmd & 0xf) << 12 | index << 32 | priority << 48`.
public struct Doorbell: Sendable, Equatable {
    /// Doorbell commands.
    public enum Command: UInt8, Sendable {
        /// `index` is the new SQ tail: requests were submitted.
        case sq = 0
        /// `index` is the new CQ head: completions were consumed.
        case cq = 1
    }

    /// Where each field sits in the 64-bit word.
    enum Field {
        static let queueNumber = BitField<UInt64>(bits: 0...9)
        static let command = BitField<UInt64>(bits: 12...15)
        static let index = BitField<UInt64>(bits: 32...47)
        static let priority = BitField<UInt64>(bits: 48...63)
    }

    /// Queue number (`qn`, 10 bits).
    public var queueNumber: UInt16
    /// Command code (4 bits): a `Command`, or another code a device ignores.
    public var command: UInt8
    /// New SQ tail or CQ head.
    public var index: UInt16
    /// Priority (unused by the emulation).
    public var priority: UInt16

    /// A doorbell with `command`.
    public init(queueNumber: UInt16, command: Command, index: UInt16, priority: UInt16 = 0) {
        self.queueNumber = queueNumber; self.command = command.rawValue
        self.index = index; self.priority = priority
    }

    /// Decodes a doorbell word.
    public init(raw: UInt64) {
        queueNumber = UInt16(Field.queueNumber.get(raw))
        command = UInt8(Field.command.get(raw))
        index = UInt16(Field.index.get(raw))
        priority = UInt16(Field.priority.get(raw))
    }

    /// The doorbell word (queue number and command cut to their widths).
    public var raw: UInt64 {
        var r: UInt64 = 0
        Field.queueNumber.set(UInt64(queueNumber), in: &r)
        Field.command.set(UInt64(command), in: &r)
        Field.index.set(UInt64(index), in: &r)
        Field.priority.set(UInt64(priority), in: &r)
        return r
    }
}
