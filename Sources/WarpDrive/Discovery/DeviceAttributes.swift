/// The uacce attributes of an accelerator device, as sysfs shows them under
/// `/sys/class/uacce/<name>-<id>/`.
public struct DeviceAttributes: Sendable, Equatable {
    /// `<name>-<id>`, e.g. `hisi_zip-0`.
    public var name: String
    /// Protocol version string (`api`), e.g. `hisi_qm_v2`.
    public var api: String
    /// `UACCE_DEV_*` bits (`flags`); bit 0 is SVA.
    public var flags: UInt32
    /// Algorithms the device offers (`algorithms`).
    public var algorithms: [String]
    /// Free queues (`available_instances`); nil when sysfs does not say.
    public var availableInstances: Int?
    /// Entries per SQ/CQ, when known.
    public var queueDepth: Int?
    /// Bytes of the MMIO and DUS regions.
    public var regionMMIOSize: Int?
    public var regionDUSSize: Int?
    /// Whether the device is fenced off after too many errors (`isolate`).
    public var isolated: Bool
    /// Error threshold for isolation (`isolate_strategy`); 0 = never.
    public var isolateStrategy: Int
    /// NUMA node (`device/numa_node`); -1 when unknown.
    public var numaNode: Int

    /// SVA bit of `flags`.
    public static let flagSVA: UInt32 = 1

    /// Whether requests carry process virtual addresses (SVA).
    public var supportsSVA: Bool { flags & DeviceAttributes.flagSVA != 0 }

    public init(name: String, api: String, flags: UInt32, algorithms: [String], availableInstances: Int?,
                queueDepth: Int?, regionMMIOSize: Int?, regionDUSSize: Int?, isolated: Bool,
                isolateStrategy: Int, numaNode: Int) {
        self.name = name; self.api = api; self.flags = flags; self.algorithms = algorithms
        self.availableInstances = availableInstances; self.queueDepth = queueDepth
        self.regionMMIOSize = regionMMIOSize; self.regionDUSSize = regionDUSSize
        self.isolated = isolated; self.isolateStrategy = isolateStrategy; self.numaNode = numaNode
    }
}

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
    case compress = 0
    case decompress = 1
}
