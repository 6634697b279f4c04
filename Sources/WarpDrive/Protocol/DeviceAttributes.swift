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
    /// Bytes of the MMIO region (`region_mmio_size`).
    public var regionMMIOSize: Int?
    /// Bytes of the DUS region (`region_dus_size`).
    public var regionDUSSize: Int?
    /// Whether the device is fenced off after too many errors (`isolate`).
    public var isolated: Bool
    /// Error threshold for isolation (`isolate_strategy`); 0 = never.
    public var isolateStrategy: Int
    /// NUMA node (`device/numa_node`); -1 when unknown.
    public var numaNode: Int

    /// SVA bit of `flags`.
    public static let flagSVA: UInt32 = 1
    /// The `api` of a HiSilicon QM v2 device, whose rings `RingLayout` describes.
    public static let apiQMv2 = "hisi_qm_v2"
    /// The `api` of this project's kernel module (`kernel/warpdrive_zip`):
    /// the emulated device's rings and fields, buffers as DUS offsets.
    public static let apiWarpDriveZip = "warpdrive_zip_v1"

    /// The attribute files under `/sys/class/uacce/<name>-<id>/`.
    enum File: String, CaseIterable {
        case api, flags, algorithms
        case availableInstances = "available_instances"
        case regionMMIOSize = "region_mmio_size"
        case regionDUSSize = "region_dus_size"
        case isolate
        case isolateStrategy = "isolate_strategy"
        case numaNode = "device/numa_node"
    }

    /// Whether requests carry process virtual addresses (SVA).
    public var supportsSVA: Bool { flags & DeviceAttributes.flagSVA != 0 }

    /// Attributes with every field given.
    public init(name: String, api: String, flags: UInt32, algorithms: [String], availableInstances: Int?,
                queueDepth: Int?, regionMMIOSize: Int?, regionDUSSize: Int?, isolated: Bool,
                isolateStrategy: Int, numaNode: Int) {
        self.name = name; self.api = api; self.flags = flags; self.algorithms = algorithms
        self.availableInstances = availableInstances; self.queueDepth = queueDepth
        self.regionMMIOSize = regionMMIOSize; self.regionDUSSize = regionDUSSize
        self.isolated = isolated; self.isolateStrategy = isolateStrategy; self.numaNode = numaNode
    }
}
