#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// A uacce device of the kernel (`/sys/class/uacce/<name>`, `/dev/<name>`)
/// that speaks this project's ring protocol: `warpdrive_zip.ko`
/// (`kernel/warpdrive_zip`). Each queue is an open of the device node; its
/// MMIO and DUS regions are `mmap`s of that descriptor, its context and
/// lifecycle the uacce and QM ioctls, its doorbell a store to MMIO + 0x1000,
/// completion waits `poll()` on the descriptor.
///
/// The device has no SVA (`flags` 0): requests name buffers as byte offsets
/// into the queue's DUS region, inside the data area after the rings
/// (`DeviceAddressing.dusOffset`); `Queue` copies other buffers through it.
public final class UacceDevice: AcceleratorDevice, @unchecked Sendable {
    /// The `api` strings whose rings, SQE and status page this client speaks.
    /// Only this project's module: a HiSilicon `hisi_qm_v2` device has the
    /// same rings but not the emulation's fields (level, status page words),
    /// and takes process addresses.
    public static let supportedAPIs: Set<String> = [DeviceAttributes.apiWarpDriveZip]

    /// `<name>-<id>`, e.g. `warpdrive_zip-0`.
    public let name: String
    /// The device's sysfs directory.
    public let sysfsPath: String
    /// The device node queues are opened on.
    public let devicePath: String
    /// The attributes read when the device was opened (`currentAttributes` re-reads).
    public let attributes: DeviceAttributes

    /// The device whose sysfs directory is `sysfsPath`; its node is
    /// `<devRoot>/<name>`. Fails when the attributes cannot be read or the
    /// `api` is not one this client speaks.
    public init(sysfsPath: String, devRoot: String = "/dev") throws {
        guard let a = DeviceRegistry.readAttributes(sysfsPath: sysfsPath) else {
            throw WarpDriveError.noDevice("\(sysfsPath): no uacce attributes")
        }
        guard UacceDevice.supportedAPIs.contains(a.api) else {
            throw WarpDriveError.noDevice("\(a.name): api \(a.api) is not one this client speaks")
        }
        name = a.name
        self.sysfsPath = sysfsPath
        devicePath = devRoot + "/" + a.name
        attributes = a
    }

    /// The device named `name` under `<sysfsRoot>/class/uacce`.
    /// A name is one path component (`-o device=NAME` gives it): nothing
    /// that would lead out of the class directory or `/dev`.
    public convenience init(name: String, sysfsRoot: String = "/sys", devRoot: String = "/dev") throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/") else {
            throw WarpDriveError.noDevice("'\(name)' is not a uacce device name")
        }
        try self.init(sysfsPath: sysfsRoot + "/class/uacce/" + name, devRoot: devRoot)
    }

    /// The attributes as sysfs shows them now (free instances change).
    public var currentAttributes: DeviceAttributes { DeviceRegistry.readAttributes(sysfsPath: sysfsPath) ?? attributes }

    /// Opens `/dev/<name>`: one queue in INIT.
    public func openDeviceQueue() throws -> any DeviceQueue { try UacceDeviceQueue(device: self) }

    /// Whether the module's engine runs `algorithm` (its `algorithms` attribute).
    public func offers(_ algorithm: CompressionAlgorithm) -> Bool { attributes.algorithms.contains(algorithm.rawValue) }

    /// Name, api and free queues.
    public var statusSummary: String {
        let a = currentAttributes
        return "\(name): uacce \(devicePath), api=\(a.api), flags=\(a.flags), available_instances=\(a.availableInstances.map(String.init) ?? "?")"
    }
}

/// One open of a uacce device node.
final class UacceDeviceQueue: DeviceQueue, @unchecked Sendable {
    let device: UacceDevice
    let fd: Int32
    let number: Int
    let layout: RingLayout
    let mmioSize: Int
    let dusSize: Int
    private struct Mutable {
        var state = QueueState.initialized
        var mmio: SharedMapping?
        var dus: SharedMapping?
        /// The last SQ doorbell word, stored again after each CQ doorbell.
        var lastSQ: UInt64?
        var busy: UInt64 = 0
    }
    private let m = Mutex(Mutable())

    init(device: UacceDevice) throws {
        self.device = device
        let fd = open(device.devicePath, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            if e == EBUSY { throw WarpDriveError.busy(device: device.name) }
            // The node is gone, or a stale one has no device behind it.
            if e == ENOENT || e == ENXIO || e == ENODEV { throw WarpDriveError.deviceRemoved(device: device.name) }
            throw WarpDriveError.system(call: "open(\(device.devicePath))", errno: e)
        }
        func fail(_ call: String, _ r: Int32) -> WarpDriveError {
            close(fd)
            if r == -ENXIO { return .deviceRemoved(device: device.name) }
            return .system(call: "\(call) on \(device.devicePath)", errno: -r)
        }
        var sqeSize: UInt32 = 0, sqDepth: UInt16 = 0, cqDepth: UInt16 = 0
        var r = wd_uacce_qp_info(fd, &sqeSize, &sqDepth, &cqDepth)
        guard r == 0 else { throw fail("UACCE_CMD_QM_SET_QP_INFO", r) }
        // The depth comes from the driver: one out of range is refused here,
        // not trapped on by `RingLayout`.
        guard Int(sqeSize) == RingLayout.sqeSize, sqDepth == cqDepth, RingLayout.depths.contains(Int(sqDepth)) else {
            close(fd)
            throw WarpDriveError.noDevice("\(device.name): sqe \(sqeSize) B, depths \(sqDepth)/\(cqDepth): not this protocol's rings")
        }
        // The queue number comes from SET_QP_CTX, which may be issued again
        // in INIT: ask once now (compress) so the doorbell can carry it from
        // the start; `setContext` sets the real direction before START_Q.
        var qn: UInt16 = 0
        r = wd_uacce_set_qp_ctx(fd, Direction.compress.rawValue, &qn)
        guard r == 0 else { throw fail("UACCE_CMD_QM_SET_QP_CTX", r) }
        layout = RingLayout(depth: Int(sqDepth))
        // The sizes now: the module may have been loaded again since the
        // device was first opened, with other parameters.
        let attributes = device.currentAttributes
        mmioSize = attributes.regionMMIOSize ?? RingLayout.mmioSize
        dusSize = attributes.regionDUSSize ?? layout.dusSize
        guard mmioSize >= RingLayout.doorbellOffset + 8, dusSize >= layout.dusSize else {
            close(fd)
            throw WarpDriveError.noDevice("\(device.name): regions of \(mmioSize) and \(dusSize) bytes are too small for depth \(sqDepth)")
        }
        self.fd = fd
        number = Int(qn)
    }

    deinit {
        put()
        close(fd)
    }

    var pasid: UInt32 { 0 }
    var state: QueueState { m.withLock { $0.state } }
    var notificationFD: Int32 { fd }
    var counters: WorkCounters {
        var c = WorkCounters()
        c.busyRejections = m.withLock { $0.busy }
        return c
    }
    var addressing: DeviceAddressing { .dusOffset }
    var waitsWithPoll: Bool { true }
    /// `deviceRemoved` once the device has gone away under a started queue:
    /// uacce answers a removed device's queue calls with `ENXIO` (one
    /// `SET_QP_INFO`, asked only when a wait found nothing done).
    var lostError: WarpDriveError? {
        guard m.withLock({ $0.state }) == .started else { return nil }
        var sqeSize: UInt32 = 0, sqDepth: UInt16 = 0, cqDepth: UInt16 = 0
        return wd_uacce_qp_info(fd, &sqeSize, &sqDepth, &cqDepth) == -ENXIO ? .deviceRemoved(device: device.name) : nil
    }

    /// A kernel region cannot be handed on as a memfd (`warpdrived`).
    func map(_ region: QueueRegion) throws -> SharedMemoryFile {
        throw WarpDriveError.invalidState(operation: "share a region of \(device.devicePath)", state: state.rawValue)
    }

    /// `mmap` of region `region` at `region * PAGE_SIZE`, as uacce numbers them.
    ///
    /// Both mappings are revocable (`SharedMapping.makeRevocable`): when
    /// the device goes away, uacce zaps them and the next access would be a
    /// SIGBUS that kills the process. Instead the faulting mapping turns
    /// into zeroed memory, the DUS region with its stop words set, so the
    /// queue sees a reset, asks `lostError`, and fails its requests with
    /// `deviceRemoved`.
    func mapRegion(_ region: QueueRegion) throws -> SharedMapping {
        try m.withLock { s in
            let size = region == .mmio ? mmioSize : dusSize
            let mapping: SharedMapping
            do {
                mapping = try SharedMapping(fd: fd, size: size, offset: region.rawValue * Int(sysconf(Int32(_SC_PAGESIZE))))
            } catch WarpDriveError.system(_, let e) where e == EEXIST {
                throw WarpDriveError.alreadyMapped(region: region == .mmio ? "mmio" : "dus")
            } catch WarpDriveError.system(_, let e) where e == ENXIO {
                throw WarpDriveError.deviceRemoved(device: device.name)
            }
            try mapping.makeRevocable(stopWordsAt: region == .dus ? layout.rxStopOffset : nil)
            switch region {
            case .mmio: s.mmio = mapping
            case .dus: s.dus = mapping
            }
            return mapping
        }
    }

    func setContext(_ direction: Direction) throws {
        var qn: UInt16 = 0
        let r = wd_uacce_set_qp_ctx(fd, direction.rawValue, &qn)
        guard r == 0 else { throw error("SET_QP_CTX", r) }
    }

    func start() throws {
        let r = wd_uacce_start_q(fd)
        guard r == 0 else { throw error("START_Q", r) }
        m.withLock { $0.state = .started }
    }

    private func error(_ op: String, _ r: Int32) -> WarpDriveError {
        if r == -EINVAL { return .invalidState(operation: op, state: state.rawValue) }
        if r == -ENXIO { return .deviceRemoved(device: device.name) }
        return .system(call: "\(op) on \(device.devicePath)", errno: -r)
    }

    /// The client has stored `raw` at MMIO + 0x1000. The register is
    /// memory the device polls: a CQ doorbell would hide an SQ doorbell the
    /// device has not read yet, so the last SQ word is stored again after it.
    func doorbell(_ raw: UInt64) {
        m.withLock { s in
            if Doorbell(raw: raw).command == Doorbell.Command.sq.rawValue {
                s.lastSQ = raw
            } else if let sq = s.lastSQ, let mmio = s.mmio {
                wd_store_release_u64((mmio.base + RingLayout.doorbellOffset).assumingMemoryBound(to: UInt64.self), sq)
            }
        }
    }

    /// `PUT_Q`: the device stops the queue; its instance returns at close.
    func put() {
        let first: Bool = m.withLock { s in
            defer { s.state = .released }
            return s.state != .released
        }
        guard first else { return }
        _ = wd_uacce_put_q(fd)
    }

    func noteRingFull() { m.withLock { $0.busy += 1 } }
}
