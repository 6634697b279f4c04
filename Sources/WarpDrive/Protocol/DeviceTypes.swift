import CWarpCodecs
import CWarpSys

/// The names the device and its users agree on: algorithms, queue
/// directions, ring regions and queue states (uacce's and the HiSilicon
/// QM's). The bytes of the rings are in `RingLayout`, `ZipSQE`, `CQE` and
/// `Doorbell`; the sysfs attributes in `DeviceAttributes`.

/// Compression algorithms of the ZIP device, named as uacce's `algorithms` attribute names them.
public enum CompressionAlgorithm: String, Sendable, CaseIterable {
    /// Raw deflate (RFC 1951), no header or trailer.
    case deflate
    /// zlib (RFC 1950): 2-byte header, Adler-32 trailer.
    case zlib
    /// gzip (RFC 1952): 10-byte header, CRC-32 and size trailer.
    case gzip
    /// zstd (RFC 8878): one zstd frame per request, with the content size.
    case zstd
    /// lz4: one lz4 block per request (the block format, no frame header;
    /// the caller knows the uncompressed size, as for a file system block).
    case lz4

    var requestType: ZipSQE.RequestType {
        switch self {
        case .deflate: return .deflate
        case .zlib: return .zlib
        case .gzip: return .gzip
        case .zstd: return .zstd
        case .lz4: return .lz4
        }
    }

    /// Compression levels the device takes for the algorithm: deflate, zlib
    /// and gzip 0...9 (0 stores), zstd 1...19, lz4 1...12 (3...12 are lz4 HC).
    public var levels: ClosedRange<Int> { requestType.levels }

    /// The level a caller that does not choose one gets: zlib's default 6,
    /// zstd's default 3, lz4's fast compressor 1.
    public var defaultLevel: Int {
        switch self {
        case .deflate, .zlib, .gzip: 6
        case .zstd: 3
        case .lz4: 1
        }
    }

    /// The most bytes a compressed stream of `n` input bytes can take,
    /// framing included: the destination size that never fails with
    /// `destinationTooSmall` (zlib's `compressBound`, `ZSTD_compressBound`,
    /// `LZ4_compressBound`, plus header and trailer).
    public func compressBound(_ n: Int) -> Int {
        switch self {
        case .deflate, .zlib, .gzip:
            // zlib's bound covers ISA-L's and libdeflate's stored-block
            // fallbacks (5 bytes per 64 KiB block and then some).
            return Int(CWarpSys.compressBound(UInt(n))) + StreamFraming.headerLength(self) + StreamFraming.trailerLength(self)
        case .zstd:
            return Int(ZSTD_compressBound(n))
        case .lz4:
            return Int(wd_lz4_compress_bound(Int32(min(n, Int(LZ4_MAX_INPUT_SIZE)))))
        }
    }
}

/// Direction of a queue (HiSilicon `qc_type`): 0 compress, 1 decompress.
public enum Direction: UInt16, Sendable {
    /// The queue compresses (`qc_type` 0).
    case compress = 0
    /// The queue decompresses (`qc_type` 1).
    case decompress = 1
}

/// Lifecycle of a queue, as uacce names it.
public enum QueueState: String, Sendable {
    /// Opened; regions may be mapped and the context set.
    case initialized = "INIT"
    /// Started: the device serves its SQ.
    case started = "STARTED"
    /// Released (uacce ZOMBIE): nothing is legal any more.
    case released = "ZOMBIE"
}

/// Ring regions of a queue (uacce region numbers).
public enum QueueRegion: Int, Sendable {
    /// Region 0: the doorbell page.
    case mmio = 0
    /// Region 1: device-user share (SQ, CQ, status page).
    case dus = 1
}
