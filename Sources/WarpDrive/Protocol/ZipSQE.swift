/// The HiSilicon ZIP submission queue entry: 32 little-endian 32-bit words.
/// Only the fields this emulation uses have accessors; the word numbers are
/// the hardware's (see `docs/warpdrive.md`).
public struct ZipSQE {
    /// ZIP request types (dword 9, bits 7:0).
    public enum RequestType: UInt8, Sendable { case deflate = 0x1, zlib = 0x2, gzip = 0x3 }

    /// Completion status codes (dword 3, bits 7:0).
    public enum Status {
        public static let ok: UInt8 = 0x00
        public static let negativeCompression: UInt8 = 0x0d
        public static let destinationTooSmall: UInt8 = 0x0e
        public static let crcError: UInt8 = 0x10
        public static let endOfStream: UInt8 = 0x13
        // Emulation-defined codes (the hardware reports these through other paths).
        public static let badRequest: UInt8 = 0x01
        public static let corruptInput: UInt8 = 0x02
        public static let engineError: UInt8 = 0x1e
        public static let pageFault: UInt8 = 0x1f
    }

    /// Device limit on input and output bytes per request.
    public static let maxRequestBytes = 8 << 20

    let w: Words
    init(_ base: UnsafeMutableRawPointer) { w = Words(base) }

    func clear() { w.base.initializeMemory(as: UInt8.self, repeating: 0, count: RingLayout.sqeSize) }

    var consumed: UInt32 { get { w[0] } nonmutating set { w[0] = newValue } }
    var produced: UInt32 { get { w[1] } nonmutating set { w[1] = newValue } }
    /// Status byte and bit 8 (last block seen).
    var statusWord: UInt32 { get { w[3] } nonmutating set { w[3] = newValue } }
    var inputLength: UInt32 { get { w[4] } nonmutating set { w[4] = newValue } }
    /// Bits 25 (flush: finish), 26 (stateful), 27 (new stream), 31:28 (SQE type).
    var dw7: UInt32 { get { w[7] } nonmutating set { w[7] = newValue } }
    /// Bits 7:0 request type, 15:12 window (0..4 = 4K, 8K, 16K, 24K, 32K), 23:16 level (emulation extension).
    var dw9: UInt32 { get { w[9] } nonmutating set { w[9] = newValue } }
    var destinationCapacity: UInt32 { get { w[14] } nonmutating set { w[14] = newValue } }
    var sourceAddress: UInt64 {
        get { UInt64(w[18]) | UInt64(w[19]) << 32 }
        nonmutating set { w[18] = UInt32(truncatingIfNeeded: newValue); w[19] = UInt32(truncatingIfNeeded: newValue >> 32) }
    }
    var destinationAddress: UInt64 {
        get { UInt64(w[20]) | UInt64(w[21]) << 32 }
        nonmutating set { w[20] = UInt32(truncatingIfNeeded: newValue); w[21] = UInt32(truncatingIfNeeded: newValue >> 32) }
    }
    /// Emulation: the faulting address of a page-fault status (dwords 24/25).
    var faultAddressLow: UInt32 { get { w[24] } nonmutating set { w[24] = newValue } }
    var faultAddressHigh: UInt32 { get { w[25] } nonmutating set { w[25] = newValue } }
    var tag: UInt32 { get { w[26] } nonmutating set { w[26] = newValue } }
    var isize: UInt32 { get { w[30] } nonmutating set { w[30] = newValue } }
    var checksum: UInt32 { get { w[31] } nonmutating set { w[31] = newValue } }
}

/// The 16-byte completion queue entry:
/// `u32 rsvd0; u16 cmd_id; u16 rsvd1; u16 sq_head; u16 sq_num; u16 rsvd2; u16 w7`.
/// The phase bit is `w7 & 1`; the device publishes the last word with release order.
struct CQE {
    let w: Words
    init(_ base: UnsafeMutableRawPointer) { w = Words(base) }
    /// Word 3 holds rsvd2 (low half) and w7 (high half).
    func phase() -> UInt32 { (w.loadAcquire(3) >> 16) & 1 }
    var sqHead: UInt16 { UInt16(truncatingIfNeeded: w[2]) }
    var sqNumber: UInt16 { UInt16(truncatingIfNeeded: w[2] >> 16) }
    func publish(sqHead: UInt16, sqNumber: UInt16, phase: UInt32) {
        w[0] = 0
        w[1] = 0
        w[2] = UInt32(sqHead) | UInt32(sqNumber) << 16
        w.storeRelease(3, (phase & 1) << 16)
    }
}
