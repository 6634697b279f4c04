/// The status a request completes with: the byte in dword 3 bits 7:0 of
/// its SQE. Any byte decodes (a device may write codes this layer does not
/// know); the named ones are the hardware's and this emulation's.
public struct CompletionStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The status byte.
    public let rawValue: UInt8

    /// The status with code `rawValue`.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Done.
    public static let ok = CompletionStatus(rawValue: 0x00)
    /// Done; the output is larger than the input.
    public static let negativeCompression = CompletionStatus(rawValue: 0x0d)
    /// The destination cannot hold the output.
    public static let destinationTooSmall = CompletionStatus(rawValue: 0x0e)
    /// Decompression reached the end of the deflate stream.
    public static let endOfStream = CompletionStatus(rawValue: 0x13)
    // Emulation-defined (the hardware reports these through other paths:
    // AER, the QM error registers, the IOMMU fault queue).
    /// Malformed request: unknown type, window over 4, level over 9, input over 8 MiB.
    public static let badRequest = CompletionStatus(rawValue: 0x01)
    /// The deflate data is invalid.
    public static let corruptInput = CompletionStatus(rawValue: 0x02)
    /// Hardware (engine) error.
    public static let engineError = CompletionStatus(rawValue: 0x1e)
    /// I/O page fault; the faulting address is in dwords 24/25.
    public static let pageFault = CompletionStatus(rawValue: 0x1f)

    /// Whether the request's output is valid: `ok`, `negativeCompression`, `endOfStream`.
    public var isSuccess: Bool { self == .ok || self == .negativeCompression || self == .endOfStream }

    /// `0x` and the code in hex.
    public var description: String { "0x" + String(rawValue, radix: 16) }
}

/// The 16-byte completion queue entry:
/// `u32 rsvd0; u16 cmd_id; u16 rsvd1; u16 sq_head; u16 sq_num; u16 rsvd2; u16 w7`.
/// The phase bit is `w7 & 1`; the device publishes the last word with
/// release order, the client loads it with acquire before the SQE.
struct CQE {
    /// Where each field sits.
    enum Field {
        static let sqHead = BitField<UInt32>(word: 2, bits: 0...15)
        static let sqNumber = BitField<UInt32>(word: 2, bits: 16...31)
        /// Bit 0 of w7, the high half of word 3 (rsvd2 is the low half).
        static let phase = BitField<UInt32>(word: 3, bits: 16...16)
    }

    let w: Words
    init(_ base: UnsafeMutableRawPointer) { w = Words(base) }

    /// The phase bit, loaded with acquire.
    func phase() -> UInt32 { Field.phase.get(w.loadAcquire(Field.phase.word)) }
    /// The SQ slot that finished.
    var sqHead: UInt16 { UInt16(Field.sqHead.get(w[Field.sqHead.word])) }

    /// Writes the entry, its phase word last with release order.
    func publish(sqHead: UInt16, sqNumber: UInt16, phase: UInt32) {
        var w2: UInt32 = 0, w3: UInt32 = 0
        Field.sqHead.set(UInt32(sqHead), in: &w2)
        Field.sqNumber.set(UInt32(sqNumber), in: &w2)
        Field.phase.set(phase, in: &w3)
        w[0] = 0
        w[1] = 0
        w[Field.sqHead.word] = w2
        w.storeRelease(Field.phase.word, w3)
    }
}
