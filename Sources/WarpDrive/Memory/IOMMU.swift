#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// The emulated IOMMU: PASID-tagged address translation for the device.
///
/// Binding a process's address space (SVA) yields a PASID; the device then
/// touches memory only through `IOMMU.read`/`IOMMU.write` with that PASID.
/// Addresses inside a buffer region registered for the address space are
/// reached directly through the device's own mapping of the region's memfd
/// (zero copy). Any other address is read or written in the bound process
/// (`ProcessMemory`: `process_vm_readv`/`writev`, or for a client of other
/// credentials its `/proc/PID/mem` opened as that client), which fails for
/// an unmapped address: the device reports an I/O page fault, never crashes
/// and never reads another address space's memory.
public final class IOMMU: Sendable {
    /// The system IOMMU (one PASID space per host, as in the kernel).
    public static let shared = IOMMU()

    /// The PASID space.
    public let pasids: PASIDAllocator

    private struct Space {
        let pid: pid_t
        let key: SpaceKey
        /// How addresses outside registered regions are reached.
        let memory: ProcessMemory
        var references: Int
        var regions: [RegisteredRegion]
    }
    /// What makes two bindings the same address space: the pid, and for a
    /// client of another process the ids it connected with and its pidfd's
    /// identity, so a reused pid or a client of other credentials never
    /// shares a PASID (and its reach) with an earlier one.
    private struct SpaceKey: Hashable {
        let pid: pid_t
        let uid: uid_t?
        let gid: gid_t?
        let identity: UInt64
    }
    private let spaces = Mutex<[UInt32: Space]>([:])
    private let pidToPASID = Mutex<[SpaceKey: UInt32]>([:])

    /// An IOMMU that draws PASIDs from `pasids`.
    public init(pasids: PASIDAllocator = PASIDAllocator()) { self.pasids = pasids }

    /// Binds the address space of process `pid` (default: this process).
    /// One process has one PASID however many queues bind it (as the kernel
    /// keeps one PASID per mm); each binding holds a reference. Used for
    /// processes the caller vouches for (the in-process device's own).
    public func bind(pid: pid_t = getpid()) throws -> SVABinding {
        try bind(key: SpaceKey(pid: pid, uid: nil, gid: nil, identity: 0), pid: pid) {
            guard kill(pid, 0) == 0 || errno == EPERM else {
                throw WarpDriveError.system(call: "bind address space of pid \(pid)", errno: ESRCH)
            }
            return ProcessMemory(local: pid)
        }
    }

    /// Binds the address space of a client process (a `warpdrived` client):
    /// addresses outside registered regions are reached only as far as the
    /// client could reach them itself (`ProcessMemory`), and never in
    /// another process that later takes its pid. Throws when its memory
    /// cannot be opened with its own credentials.
    public func bind(client: ClientProcess) throws -> SVABinding {
        try bind(key: SpaceKey(pid: client.pid, uid: client.uid, gid: client.gid, identity: client.identity),
                 pid: client.pid) { try ProcessMemory(client: client) }
    }

    private func bind(key: SpaceKey, pid: pid_t, _ open: () throws -> ProcessMemory) throws -> SVABinding {
        let pasid: UInt32 = try pidToPASID.withLock { map in
            if let p = map[key] {
                let shared: Bool = spaces.withLock { s in
                    guard s[p] != nil, s[p]!.memory.isCurrent else { return false }
                    s[p]!.references += 1
                    return true
                }
                if shared { return p }
                map[key] = nil   // that process (or its address space) is gone: a new space
            }
            let memory = try open()
            guard let p = pasids.allocate() else { throw WarpDriveError.system(call: "PASID allocation", errno: ENOSPC) }
            map[key] = p
            spaces.withLock { $0[p] = Space(pid: pid, key: key, memory: memory, references: 1, regions: []) }
            return p
        }
        return SVABinding(iommu: self, pasid: pasid, pid: pid)
    }

    fileprivate func release(pasid: UInt32) {
        pidToPASID.withLock { map in
            let gone: SpaceKey? = spaces.withLock { s in
                guard var space = s[pasid] else { return nil }
                space.references -= 1
                if space.references > 0 { s[pasid] = space; return nil }
                s[pasid] = nil
                return space.key
            }
            if let key = gone {
                if map[key] == pasid { map[key] = nil }
                pasids.free(pasid)
            }
        }
    }

    /// The process bound to `pasid`, or nil if none.
    public func boundProcess(pasid: UInt32) -> pid_t? { spaces.withLock { $0[pasid]?.pid } }

    func register(_ region: RegisteredRegion, pasid: UInt32) {
        spaces.withLock { $0[pasid]?.regions.append(region) }
    }

    func unregister(_ region: RegisteredRegion, pasid: UInt32) {
        spaces.withLock { s in s[pasid]?.regions.removeAll { $0 === region } }
    }

    /// How the device reaches a range of a bound address space.
    enum Route {
        /// Direct pointer through the device's mapping of a registered region
        /// (the region object keeps the mapping alive while used).
        case direct(UnsafeMutableRawPointer, RegisteredRegion)
        /// Copy through the bound process.
        case process(ProcessMemory)
        /// No address space is bound to the PASID.
        case unbound
    }

    func route(pasid: UInt32, address: UInt64, length: Int) -> Route {
        spaces.withLock { s in
            guard let space = s[pasid] else { return .unbound }
            for r in space.regions where r.contains(address: address, length: length) {
                return .direct(r.deviceBase + Int(address - r.clientAddress), r)
            }
            return .process(space.memory)
        }
    }
}

/// A bound address space: a PASID and the process it names. Unbinds on
/// `unbind()` or deinit; the PASID is freed when the last binding of the
/// process goes.
public final class SVABinding: @unchecked Sendable {
    /// The PASID requests from this address space carry.
    public let pasid: UInt32
    /// The bound process.
    public let pid: pid_t
    /// The IOMMU holding the binding.
    public let iommu: IOMMU
    private let bound = Atomic<Bool>(true)

    init(iommu: IOMMU, pasid: UInt32, pid: pid_t) {
        self.iommu = iommu; self.pasid = pasid; self.pid = pid
    }

    /// Drops this binding's reference (idempotent).
    public func unbind() {
        if bound.exchange(false, ordering: .acquiringAndReleasing) { iommu.release(pasid: pasid) }
    }

    deinit { unbind() }
}

/// A memfd-backed buffer region registered with an address space: the client
/// uses it at `clientAddress`, the device reaches it through its own mapping.
final class RegisteredRegion: @unchecked Sendable {
    let clientAddress: UInt64
    let length: Int
    let deviceMapping: SharedMapping
    var deviceBase: UnsafeMutableRawPointer { deviceMapping.base }

    init(clientAddress: UInt64, length: Int, deviceMapping: SharedMapping) {
        self.clientAddress = clientAddress; self.length = length; self.deviceMapping = deviceMapping
    }

    func contains(address: UInt64, length n: Int) -> Bool {
        address >= clientAddress && n >= 0 && address - clientAddress <= UInt64(length)
            && UInt64(n) <= UInt64(length) - (address - clientAddress)
    }
}
