/// The HiSilicon ZIP submission queue entry: 128 bytes, 32 little-endian
/// 32-bit words (dwords), held as a value with typed fields.
///
/// The client builds one and stores it whole into its SQ slot
/// (`store(to:)`); the engine loads the slot once (`init(loading:)`), so it
/// reads each field exactly once from memory the client shares, and stores
/// back only the words the device writes (`storeResults(to:)`); the client
/// loads the slot again to read them. Where each field sits is written once,
/// in `Field`; the dword numbers are the hardware's (`docs/warpdrive.md`,
/// section 2). Only the fields this emulation uses are described.
public struct ZipSQE: Sendable, Equatable {
    /// Bytes of one entry.
    public static let size = 128
    /// Device limit on input and output bytes per request.
    public static let maxRequestBytes = 8 << 20
    /// Compression levels the emulated device takes for deflate, zlib and
    /// gzip (the level field holds 0...255; each request type has its own
    /// range, `RequestType.levels`).
    public static let levels = 0...9
    /// The SQE type the client writes (dword 7 bits 31:28): the v3 format.
    static let typeV3: UInt32 = 3

    /// ZIP request types (dword 9, bits 7:0).
    public enum RequestType: UInt8, Sendable, CaseIterable {
        /// Raw deflate.
        case deflate = 0x1
        /// Deflate with a zlib checksum (Adler-32) in dword 31.
        case zlib = 0x2
        /// Deflate with a gzip checksum (CRC-32) in dword 31.
        case gzip = 0x3
        /// A whole zstd frame (RFC 8878), levels 1...19. Emulation-defined
        /// code: the hardware's zstd support is LZ77 only (`lz77_zstd`), its
        /// entropy stage left to software.
        case zstd = 0x10
        /// One lz4 block (the lz4 block format, no frame), levels 1...12.
        /// Emulation-defined code.
        case lz4 = 0x11

        /// Compression levels the device takes for this type: 0...9 for the
        /// deflate family (0: stored blocks), zstd 1...19, lz4 1...12 (1 and
        /// 2: lz4's fast compressor, 3...12: lz4 HC at that level).
        public var levels: ClosedRange<Int> {
            switch self {
            case .deflate, .zlib, .gzip: ZipSQE.levels
            case .zstd: 1...19
            case .lz4: 1...12
            }
        }

        /// Whether the type is raw deflate inside (deflate, zlib, gzip).
        public var isDeflate: Bool { self == .deflate || self == .zlib || self == .gzip }
    }

    /// History window of a request (dword 9, bits 15:12), UADK's `wd_comp_winsz_type`.
    public enum Window: UInt8, Sendable, CaseIterable {
        /// 4 KiB (code 0).
        case size4K = 0
        /// 8 KiB (code 1).
        case size8K = 1
        /// 16 KiB (code 2).
        case size16K = 2
        /// 24 KiB (code 3).
        case size24K = 3
        /// 32 KiB (code 4).
        case size32K = 4

        /// The window of zlib's `windowBits` 12...15 (4K...32K); nil otherwise.
        public init?(windowBits: Int) {
            switch windowBits {
            case 12: self = .size4K
            case 13: self = .size8K
            case 14: self = .size16K
            case 15: self = .size32K
            default: return nil
            }
        }

        /// The zlib `windowBits` the engine compresses with. zlib has no 24K
        /// window, so 24K compresses with 16K (never more than asked).
        public var zlibWindowBits: Int {
            switch self {
            case .size4K: 12
            case .size8K: 13
            case .size16K, .size24K: 14
            case .size32K: 15
            }
        }
    }

    /// Flush type (dword 7, bit 25), UADK's `hw_flush`.
    public enum Flush: UInt8, Sendable, CaseIterable {
        /// Sync flush: more input of the stream follows (stream mode; not emulated).
        case sync = 0
        /// Finish: the request is a whole stream.
        case finish = 1
    }

    /// Where every field the emulation uses sits: the SQE's field table.
    enum Field {
        // Written by the device.
        static let consumed = BitField<UInt32>(word: 0, bits: 0...31)
        static let produced = BitField<UInt32>(word: 1, bits: 0...31)
        static let status = BitField<UInt32>(word: 3, bits: 0...7)
        static let endOfStream = BitField<UInt32>(word: 3, bits: 8...8)
        /// Emulation: the faulting address of a page-fault status.
        static let faultAddressLow = BitField<UInt32>(word: 24, bits: 0...31)
        static let faultAddressHigh = BitField<UInt32>(word: 25, bits: 0...31)
        static let isize = BitField<UInt32>(word: 30, bits: 0...31)
        static let checksum = BitField<UInt32>(word: 31, bits: 0...31)
        // Written by the client.
        static let inputLength = BitField<UInt32>(word: 4, bits: 0...31)
        static let flush = BitField<UInt32>(word: 7, bits: 25...25)
        static let sqeType = BitField<UInt32>(word: 7, bits: 28...31)
        static let requestType = BitField<UInt32>(word: 9, bits: 0...7)
        static let window = BitField<UInt32>(word: 9, bits: 12...15)
        /// Emulation: the compression level (the hardware's is fixed).
        static let level = BitField<UInt32>(word: 9, bits: 16...23)
        static let destinationCapacity = BitField<UInt32>(word: 14, bits: 0...31)
        static let sourceAddressLow = BitField<UInt32>(word: 18, bits: 0...31)
        static let sourceAddressHigh = BitField<UInt32>(word: 19, bits: 0...31)
        static let destinationAddressLow = BitField<UInt32>(word: 20, bits: 0...31)
        static let destinationAddressHigh = BitField<UInt32>(word: 21, bits: 0...31)
        static let tag = BitField<UInt32>(word: 26, bits: 0...31)

        /// The words the device writes back (`storeResults(to:)`).
        static let resultWords = [consumed.word, produced.word, status.word, faultAddressLow.word,
                                  faultAddressHigh.word, isize.word, checksum.word]
    }

    /// The 32 dwords in host byte order.
    private var words = SIMD32<UInt32>()

    /// An all-zero entry.
    public init() {}

    /// A request the client fills in: type, window and level in dword 9,
    /// flush `finish` and the v3 SQE type in dword 7 (stateless).
    init(type: RequestType, window: Window, level: Int) {
        self[Field.requestType] = UInt32(type.rawValue)
        self[Field.window] = UInt32(window.rawValue)
        self.level = level
        flush = .finish
        self[Field.sqeType] = ZipSQE.typeV3
    }

    /// The entry in ring memory at `p`, read once.
    init(loading p: UnsafeRawPointer) {
        words = p.loadUnaligned(as: SIMD32<UInt32>.self)
        #if _endian(big)
        for i in 0..<32 { words[i] = UInt32(littleEndian: words[i]) }
        #endif
    }

    /// Writes the whole entry to ring memory at `p` (the client's submission).
    func store(to p: UnsafeMutableRawPointer) {
        var w = words
        #if _endian(big)
        for i in 0..<32 { w[i] = w[i].littleEndian }
        #endif
        p.storeBytes(of: w, as: SIMD32<UInt32>.self)
    }

    /// Writes only the words the device owns (results) to ring memory at `p`.
    func storeResults(to p: UnsafeMutableRawPointer) {
        withUnsafeBytes(of: words) { w in
            for i in Field.resultWords {
                p.storeBytes(of: w.load(fromByteOffset: i * 4, as: UInt32.self).littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        }
    }

    /// The value of a field.
    subscript(field: BitField<UInt32>) -> UInt32 {
        // Through the bytes rather than `words[i]`: a SIMD lane picked at run
        // time is an outlined copy of the whole vector; this is one load or store.
        @inline(__always) get {
            precondition(field.word < 32)
            return field.get(withUnsafeBytes(of: words) { $0.load(fromByteOffset: field.word * 4, as: UInt32.self) })
        }
        @inline(__always) set {
            precondition(field.word < 32)
            withUnsafeMutableBytes(of: &words) { b in
                var w = b.load(fromByteOffset: field.word * 4, as: UInt32.self)
                field.set(newValue, in: &w)
                b.storeBytes(of: w, toByteOffset: field.word * 4, as: UInt32.self)
            }
        }
    }

    @inline(__always) private func address(_ low: BitField<UInt32>, _ high: BitField<UInt32>) -> UInt64 {
        UInt64(self[low]) | UInt64(self[high]) << 32
    }

    @inline(__always) private mutating func setAddress(_ low: BitField<UInt32>, _ high: BitField<UInt32>, _ a: UInt64) {
        self[low] = UInt32(truncatingIfNeeded: a)
        self[high] = UInt32(truncatingIfNeeded: a >> 32)
    }

    // MARK: Client-written fields

    /// Request type; nil when the field holds a code no type has.
    var requestType: RequestType? { @inline(__always) get { RequestType(rawValue: UInt8(self[Field.requestType])) } }
    /// Window; nil when the field holds a code above 4.
    var window: Window? { @inline(__always) get { Window(rawValue: UInt8(self[Field.window])) } }
    /// Compression level, 0...255 (the device takes `levels`).
    var level: Int {
        get { Int(self[Field.level]) }
        set { self[Field.level] = UInt32(truncatingIfNeeded: newValue) }
    }
    /// Flush type.
    var flush: Flush {
        get { self[Field.flush] == 0 ? .sync : .finish }
        set { self[Field.flush] = UInt32(newValue.rawValue) }
    }
    /// SQE format (3: v3).
    var sqeType: UInt32 { self[Field.sqeType] }
    var inputLength: UInt32 {
        get { self[Field.inputLength] }
        set { self[Field.inputLength] = newValue }
    }
    var destinationCapacity: UInt32 {
        get { self[Field.destinationCapacity] }
        set { self[Field.destinationCapacity] = newValue }
    }
    var sourceAddress: UInt64 {
        get { address(Field.sourceAddressLow, Field.sourceAddressHigh) }
        set { setAddress(Field.sourceAddressLow, Field.sourceAddressHigh, newValue) }
    }
    var destinationAddress: UInt64 {
        get { address(Field.destinationAddressLow, Field.destinationAddressHigh) }
        set { setAddress(Field.destinationAddressLow, Field.destinationAddressHigh, newValue) }
    }
    /// The client's tag (this emulation: the SQ slot).
    var tag: UInt32 {
        get { self[Field.tag] }
        set { self[Field.tag] = newValue }
    }

    // MARK: Device-written fields

    /// Input bytes used.
    var consumed: UInt32 {
        get { self[Field.consumed] }
        set { self[Field.consumed] = newValue }
    }
    /// Output bytes written.
    var produced: UInt32 {
        get { self[Field.produced] }
        set { self[Field.produced] = newValue }
    }
    /// Completion status.
    var status: CompletionStatus {
        get { CompletionStatus(rawValue: UInt8(self[Field.status])) }
        set { self[Field.status] = UInt32(newValue.rawValue) }
    }
    /// Decompression reached the end of the deflate stream (its last block).
    var endOfStream: Bool {
        get { self[Field.endOfStream] != 0 }
        set { self[Field.endOfStream] = newValue ? 1 : 0 }
    }
    /// The faulting address of a `pageFault` status.
    var faultAddress: UInt64 {
        get { address(Field.faultAddressLow, Field.faultAddressHigh) }
        set { setAddress(Field.faultAddressLow, Field.faultAddressHigh, newValue) }
    }
    /// Uncompressed bytes (for a gzip trailer).
    var isize: UInt32 {
        get { self[Field.isize] }
        set { self[Field.isize] = newValue }
    }
    /// Adler-32 (zlib) or CRC-32 (gzip) of the uncompressed data.
    var checksum: UInt32 {
        get { self[Field.checksum] }
        set { self[Field.checksum] = newValue }
    }
}
