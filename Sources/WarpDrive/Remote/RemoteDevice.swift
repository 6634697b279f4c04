#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// The emulated accelerator served by `warpdrived`, reached over its Unix
/// socket. Queues opened here use the same rings and `Queue` code as the
/// in-process device: the daemon sends the ring memfds and the notification
/// eventfd; SQEs carry this process's virtual addresses, which the daemon's
/// engines reach with `process_vm_readv`/`writev` under the queue's PASID.
///
/// Connecting allows the daemon to read and write this process's memory
/// (`prctl(PR_SET_PTRACER)`, needed under Yama `ptrace_scope` 1).
public final class RemoteDevice: AcceleratorDevice, @unchecked Sendable {
    /// The daemon's socket path.
    public let socketPath: String
    /// The daemon's device name (`<name>-<id>`).
    public let name: String
    /// The daemon's process id (SO_PEERCRED of the connection).
    public let daemonPID: pid_t
    /// Ring depth of the daemon's queues.
    public let queueDepth: Int

    let fd: Int32
    private let control = Mutex(())
    private let lost = Atomic<Bool>(false)

    /// Connects to `warpdrived` at `socket`. Fails with `daemonUnavailable`
    /// naming the socket when it is missing or nobody listens on it.
    public init(socket: String) throws {
        socketPath = socket
        let fd = wd_seqpacket_connect(socket)
        guard fd >= 0 else {
            let e = -fd
            let why: String
            switch e {
            case ENOENT: why = "no such socket (is warpdrived running?)"
            case ECONNREFUSED: why = "connection refused (warpdrived is not running; stale socket)"
            case EACCES: why = "permission denied"
            default: why = "connect failed: \(String(cString: strerror(e)))"
            }
            throw WarpDriveError.daemonUnavailable(socket: socket, reason: why)
        }
        self.fd = fd
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        guard wd_peer_credentials(fd, &pid, &uid, &gid) == 0 else {
            close(fd)
            throw WarpDriveError.daemonUnavailable(socket: socket, reason: "no peer credentials")
        }
        daemonPID = pid
        // Let the daemon's engines reach our buffers (Yama ptrace_scope 1
        // asks for it; without Yama the call fails with EINVAL and nothing
        // is needed).
        _ = wd_allow_ptracer(pid)
        do {
            let (r, fds) = try RemoteDevice.exchange(fd, socket, DaemonMessage(op: DaemonMessage.Op.hello.rawValue))
            fds.forEach { close($0) }
            if let e = r.error(socket: socket) { throw e }
            name = r.text
            guard RemoteDevice.validDepth(r[1]) else {
                throw WarpDriveError.daemonUnavailable(socket: socket, reason: "hello reply with ring depth \(r[1])")
            }
            queueDepth = Int(r[1])
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    /// A ring depth a daemon may answer: a power of two in 2...32768.
    static func validDepth(_ d: UInt64) -> Bool { RingLayout.depths.contains(Int(clamping: d)) && d & (d - 1) == 0 }

    private static func exchange(_ fd: Int32, _ socket: String, _ m: DaemonMessage, fds: [Int32] = []) throws -> (DaemonMessage, [Int32]) {
        let s = m.send(fd, fds: fds)
        if s == -Int(EPIPE) || s == -Int(ECONNRESET) {
            // The daemon closed the connection; it may have said why first
            // (a refused connection: too many clients).
            if case .success(let r) = DaemonMessage.receive(fd), r.0.op != DaemonMessage.Status.ok.rawValue { return r }
        }
        if s < 0 {
            throw WarpDriveError.daemonUnavailable(socket: socket, reason: "send failed: \(String(cString: strerror(Int32(-s)))) (daemon gone?)")
        }
        switch DaemonMessage.receive(fd) {
        case .success(let r): return r
        case .failure(let e) where e.errno == ECONNRESET:
            // Closed with our request unread, perhaps after a last reply (a
            // refused connection): the error is reported first, then the reply.
            if case .success(let r) = DaemonMessage.receive(fd), r.0.op != DaemonMessage.Status.ok.rawValue { return r }
            throw WarpDriveError.daemonUnavailable(socket: socket, reason: "the daemon reset the connection")
        case .failure(let e):
            throw WarpDriveError.daemonUnavailable(
                socket: socket, reason: e.errno == 0 ? "the daemon closed the connection"
                    : e.errno == EAGAIN ? "no answer within 30 s" : "receive failed: errno \(e.errno)")
        }
    }

    /// One request and its reply (serialised; doorbells are not).
    func request(_ op: DaemonMessage.Op, queue: Int = 0, _ v: [UInt64] = []) throws -> (DaemonMessage, [Int32]) {
        if let e = lostError { throw e }
        let reply: (DaemonMessage, [Int32])
        do {
            reply = try control.withLock { _ in
                try RemoteDevice.exchange(fd, socketPath, DaemonMessage(op: op.rawValue, queue: UInt32(queue), v))
            }
        } catch {
            // Only the transport failing means the daemon is gone; a refused
            // request (below) leaves the connection and its other queues alone.
            lost.store(true, ordering: .releasing)
            throw error
        }
        if let e = reply.0.error(socket: socketPath) { reply.1.forEach { close($0) }; throw e }
        return reply
    }

    /// Sends a doorbell word (no reply). A failed send marks the daemon lost.
    func doorbell(queue: Int, _ raw: UInt64) {
        if DaemonMessage(op: DaemonMessage.Op.doorbell.rawValue, queue: UInt32(queue), [raw]).send(fd) < 0 {
            lost.store(true, ordering: .releasing)
        }
    }

    /// Set when the daemon has gone (connection closed or a send failed).
    var lostError: WarpDriveError? {
        if !lost.load(ordering: .acquiring) {
            guard wd_peer_gone(fd) != 0 else { return nil }
            lost.store(true, ordering: .releasing)
        }
        return .daemonUnavailable(socket: socketPath, reason: "warpdrived (pid \(daemonPID)) went away")
    }

    /// Opens a queue on the daemon's device, bound to this process.
    public func openDeviceQueue() throws -> any DeviceQueue {
        let (r, fds) = try request(.open)
        guard fds.count == 1, RemoteDevice.validDepth(r[1]) else {
            fds.forEach { close($0) }
            throw WarpDriveError.daemonUnavailable(socket: socketPath, reason: "open reply without its eventfd")
        }
        return RemoteDeviceQueue(device: self, number: Int(r.queue), pasid: UInt32(truncatingIfNeeded: r[0]),
                                 layout: RingLayout(depth: Int(r[1])), eventFD: fds[0])
    }

    /// Daemon-wide figures: free instances, bound PASIDs, clients, requests.
    public func info() throws -> DaemonInfo { DaemonInfo(try request(.info).0) }

    /// The daemon's status report: attributes, totals, and live counters
    /// per queue and per client (read page by page from one snapshot).
    public func report() throws -> DaemonReport {
        var lines: [String] = []
        var next = 0
        repeat {
            let r = try request(.report, [UInt64(next)]).0
            let page = r.text.split(separator: "\n").map(String.init)
            guard Int(clamping: r[1]) > next || r[0] == 0 else {
                throw WarpDriveError.daemonUnavailable(socket: socketPath, reason: "report page \(next) made no progress")
            }
            lines += page
            next = Int(clamping: r[1])
            if next >= Int(clamping: r[0]) { break }
        } while true
        guard let report = DaemonReport(lines: lines) else {
            throw WarpDriveError.daemonUnavailable(socket: socketPath, reason: "report without a device line")
        }
        return report
    }
}

/// A queue served by `warpdrived`: the uacce calls become requests on the
/// daemon's socket, the doorbell a one-way message after the store.
final class RemoteDeviceQueue: DeviceQueue, @unchecked Sendable {
    let device: RemoteDevice
    let number: Int
    let pasid: UInt32
    let layout: RingLayout
    let notificationFD: Int32
    private let localState = Mutex(QueueState.initialized)

    init(device: RemoteDevice, number: Int, pasid: UInt32, layout: RingLayout, eventFD: Int32) {
        self.device = device; self.number = number; self.pasid = pasid; self.layout = layout; notificationFD = eventFD
    }

    deinit { close(notificationFD) }

    var state: QueueState { localState.withLock { $0 } }

    var counters: WorkCounters {
        var c = WorkCounters()
        guard let r = try? device.request(.counters, queue: number).0 else { return c }
        c.requests = r[0]; c.bytesIn = r[1]; c.bytesOut = r[2]; c.errors = r[3]
        return c
    }

    func map(_ region: QueueRegion) throws -> SharedMemoryFile {
        let (r, fds) = try device.request(.map, queue: number, [UInt64(region.rawValue)])
        guard fds.count == 1, r[0] <= UInt64(Int.max) else {
            fds.forEach { close($0) }
            throw WarpDriveError.daemonUnavailable(socket: device.socketPath, reason: "map reply without its memfd")
        }
        // The caller maps it; the mapping outlives the descriptor, which closes with the file.
        return try SharedMemoryFile(adopting: fds[0], size: Int(r[0]))
    }

    func setContext(_ direction: Direction) throws {
        _ = try device.request(.setContext, queue: number, [UInt64(direction.rawValue)])
    }

    func start() throws {
        _ = try device.request(.start, queue: number)
        localState.withLock { $0 = .started }
    }

    func doorbell(_ raw: UInt64) { device.doorbell(queue: number, raw) }

    func put() {
        let first: Bool = localState.withLock { s in
            defer { s = .released }
            return s != .released
        }
        guard first else { return }
        _ = try? device.request(.put, queue: number)
    }

    func noteRingFull() {}

    var lostError: WarpDriveError? { device.lostError }
}

/// A `warpdrived` device that survives a daemon restart: while the current
/// connection works it is used; once the daemon has gone, requests in
/// flight fail (`daemonUnavailable`) and the next queue opened connects
/// again, so a restarted daemon is picked up without the client starting
/// over. Queues keep the connection they were opened on.
public final class ReconnectingDevice: AcceleratorDevice, @unchecked Sendable {
    /// The daemon's socket path.
    public let socketPath: String
    /// The device name the daemon gave at the first connection.
    public let name: String
    private let current: Mutex<RemoteDevice>

    /// Connects now (so a missing daemon is reported at once).
    public init(socket: String) throws {
        let first = try RemoteDevice(socket: socket)
        socketPath = socket
        name = first.name
        current = Mutex(first)
    }

    /// The live connection, connecting again when the last one was lost.
    public func connection() throws -> RemoteDevice {
        try current.withLock { (c: inout RemoteDevice) throws -> RemoteDevice in
            if c.lostError != nil { c = try RemoteDevice(socket: socketPath) }
            return c
        }
    }

    public func openDeviceQueue() throws -> any DeviceQueue { try connection().openDeviceQueue() }

    /// The device and where it is served, for status reports.
    public var statusSummary: String { "\(name) (served by warpdrived at \(socketPath))" }
}
