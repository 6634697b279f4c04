/// The v2 doorbell word: `qn & 0x3ff | (cmd & 0xf) << 12 | index << 32 | priority << 48`.
public struct Doorbell: Sendable, Equatable {
    /// Doorbell commands.
    public enum Command: UInt8, Sendable { case sq = 0, cq = 1 }
    public var queueNumber: UInt16
    public var command: UInt8
    public var index: UInt16
    public var priority: UInt16

    public init(queueNumber: UInt16, command: Command, index: UInt16, priority: UInt16 = 0) {
        self.queueNumber = queueNumber; self.command = command.rawValue
        self.index = index; self.priority = priority
    }

    public init(raw: UInt64) {
        queueNumber = UInt16(raw & 0x3ff)
        command = UInt8((raw >> 12) & 0xf)
        index = UInt16(truncatingIfNeeded: raw >> 32)
        priority = UInt16(truncatingIfNeeded: raw >> 48)
    }

    public var raw: UInt64 {
        UInt64(queueNumber & 0x3ff) | UInt64(command & 0xf) << 12 | UInt64(index) << 32 | UInt64(priority) << 48
    }
}
