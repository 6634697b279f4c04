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

    var requestType: ZipSQE.RequestType {
        switch self {
        case .deflate: return .deflate
        case .zlib: return .zlib
        case .gzip: return .gzip
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
