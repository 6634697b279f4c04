#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive

/// `warpdrived`'s server: one emulated ZIP device shared by every client
/// process that connects to a Unix SOCK_SEQPACKET socket.
///
/// Each connection is served by its own thread. The client's process is
/// the one SO_PEERCRED names, held as a pidfd (`ClientProcess`), and every
/// queue it opens is bound to that process's address space (its PASID),
/// reached only as far as the client could reach it itself (`IOMMU.bind(client:)`):
/// a client names no other process's memory, not even when its pid is
/// reused or the process execs a set-user-ID program. A connection's
/// queues are its own (requests naming another client's queue number are
/// refused), and when the connection ends, for whatever reason, its queues
/// are released: engines finish the requests they hold, nothing more is
/// written into the client, the PASID is unbound.
///
/// Every field of a request is range-checked (a bad one is answered with an
/// error, never a trap), descriptors clients send are dropped unopened,
/// and `Limits` caps connections and queues per user.
public final class DaemonServer: @unchecked Sendable {
    /// What one user may take of the daemon, and who may connect.
    public struct Limits: Sendable, Equatable {
        /// Connections served at once, all users together (each is a thread).
        public var maxClients = 256
        /// Connections one uid may hold at once.
        public var maxClientsPerUser = 64
        /// Queues one uid may hold at once, all its connections together;
        /// nil: three quarters of the device's queues (at least one).
        public var maxQueuesPerUser: Int?
        /// Mode of the socket file (who may connect); default owner only.
        public var socketMode: UInt32 = 0o600
        /// Group given to the socket file, or nil to keep the daemon's.
        public var socketGroup: gid_t?

        /// The defaults (see the properties).
        public init() {}

        /// `maxQueuesPerUser` for a device of `queues` queues.
        public func queuesPerUser(device queues: Int) -> Int { maxQueuesPerUser ?? max(1, queues * 3 / 4) }
    }

    /// The socket path the server listens on (removed on `stop()`).
    public let socketPath: String
    /// The device the server shares.
    public let device: EmulatedZipDevice
    /// The limits in force.
    public let limits: Limits

    private let listenFD: Int32
    private let state = Mutex(State())
    private struct State {
        var stopping = false
        var clients: [Int32: pthread_t] = [:]
        /// What the status report shows of each connection, by its fd.
        var records: [Int32: ClientRecord] = [:]
        /// Connections and queues held per uid.
        var connectionsByUser: [uid_t: Int] = [:]
        var queuesByUser: [uid_t: Int] = [:]
        /// Connections refused for the connection caps; queue opens refused
        /// for the per-user queue cap; requests refused as malformed.
        var refusedConnections: UInt64 = 0
        var refusedQueues: UInt64 = 0
        var badRequests: UInt64 = 0
    }
    private struct ClientRecord {
        var pid: pid_t
        var uid: uid_t
        var queues: Set<Int> = []
        var pasid: UInt32?
        /// Counters of the queues it released, and its refused opens.
        var released = WorkCounters()
    }
    private let clientCount = Atomic<Int>(0)

    /// What the daemon refused since it started (shown by the report).
    public var refusals: (connections: UInt64, queues: UInt64, badRequests: UInt64) {
        state.withLock { ($0.refusedConnections, $0.refusedQueues, $0.badRequests) }
    }

    /// Creates the device and listens on `socketPath`. A stale socket file
    /// (nobody listening) is replaced; a live one is an error. The socket
    /// file gets `limits.socketMode` and `limits.socketGroup`, set before
    /// it listens (it is created 0600, so nobody else connects meanwhile).
    public init(socketPath: String, configuration: EmulatedDeviceConfiguration, limits: Limits = Limits()) throws {
        self.socketPath = socketPath
        self.limits = limits
        let probe = wd_seqpacket_connect(socketPath)
        if probe >= 0 {
            close(probe)
            throw WarpDriveError.system(call: "listen on \(socketPath): a warpdrived already serves it", errno: EADDRINUSE)
        }
        if -probe == ECONNREFUSED {
            // Only a stale socket is replaced: connect() also refuses on a
            // regular file, which a mistyped --socket must not delete.
            var st = stat()
            guard lstat(socketPath, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else {
                throw WarpDriveError.system(call: "listen on \(socketPath): not a socket", errno: EEXIST)
            }
            unlink(socketPath)
        }
        let fd = wd_seqpacket_listen_mode(socketPath, 64, limits.socketMode, limits.socketGroup ?? gid_t.max)
        guard fd >= 0 else { throw WarpDriveError.system(call: "listen on \(socketPath)", errno: -fd) }
        listenFD = fd
        device = EmulatedZipDevice(configuration: configuration, iommu: IOMMU())
    }

    /// Figures a client's `info` request returns.
    public var info: (total: Int, available: Int, pasids: Int, clients: Int) {
        (device.configuration.queues, device.attributes.availableInstances ?? 0,
         device.iommu.pasids.allocatedCount, clientCount.load(ordering: .relaxed))
    }

    /// The status report: attributes, totals, every open queue and every
    /// connected client with the sums of its queues' counters.
    public var report: DaemonReport { report(for: nil) }

    /// The report as user `uid` may see it: root and the daemon's own user
    /// see everything; any other user sees only its own queues and
    /// connections, and totals summed over those (other users' per-request
    /// byte counts would tell compressed sizes of their data).
    public func report(for uid: uid_t?) -> DaemonReport {
        var queues = device.queueStatus
        var records = state.withLock { s in s.records.sorted { $0.key < $1.key }.map(\.value) }
        let restricted = uid.map { $0 != 0 && $0 != geteuid() } ?? false
        if let uid, restricted {
            records = records.filter { $0.uid == uid }
            let mine = Set(records.flatMap(\.queues))
            queues = queues.filter { mine.contains($0.number) }
        }
        let byNumber = Dictionary(queues.map { ($0.number, $0) }, uniquingKeysWith: { a, _ in a })
        let clients = records.map { r -> ClientStatus in
            var c = r.released
            for n in r.queues {
                guard let q = byNumber[n]?.counters else { continue }
                c += q
            }
            return ClientStatus(pid: r.pid, uid: r.uid, pasid: r.queues.isEmpty ? nil : r.pasid, queues: r.queues.count, counters: c)
        }
        let totals = restricted ? clients.reduce(into: WorkCounters()) { $0 += $1.counters } : device.totals
        let r = refusals
        let limitsStatus = DaemonLimitsStatus(
            maxClients: limits.maxClients, maxClientsPerUser: limits.maxClientsPerUser,
            maxQueuesPerUser: limits.queuesPerUser(device: device.configuration.queues),
            refusedConnections: r.connections, refusedQueues: r.queues, badRequests: r.badRequests)
        return DaemonReport(attributes: device.attributes, totalQueues: device.configuration.queues,
                            engines: device.configuration.engines, daemonPID: getpid(), totals: totals,
                            queues: queues, clients: clients, limits: limitsStatus)
    }

    /// Accepts connections until `stop()`; each gets a thread, within the
    /// connection caps (beyond them the client gets a `busy` reply naming
    /// the cap, and the connection is closed).
    public func run() {
        while true {
            let c = wd_accept(listenFD)
            if c < 0 {
                if state.withLock({ $0.stopping }) { return }
                if -c == EMFILE || -c == ENFILE || -c == ECONNABORTED || -c == ENOMEM || -c == ENOBUFS { usleep(10_000); continue }
                return
            }
            let client: ClientProcess
            do {
                client = try ClientProcess(socket: c)
            } catch {
                refuse(c, DaemonMessage(error: error as? WarpDriveError ?? .system(call: "peer of connection", errno: EINVAL)))
                continue
            }
            enum Admission { case admitted, stopping, full(String), failed }
            let admission: Admission = state.withLock { s in
                guard !s.stopping else { return .stopping }
                if s.clients.count >= limits.maxClients {
                    s.refusedConnections += 1
                    return .full("warpdrived serves \(limits.maxClients) connections, the most it takes (--max-clients)")
                }
                if s.connectionsByUser[client.uid, default: 0] >= limits.maxClientsPerUser {
                    s.refusedConnections += 1
                    return .full("uid \(client.uid) holds \(limits.maxClientsPerUser) connections, the most one user may (--max-clients-per-user)")
                }
                let box = Unmanaged.passRetained(ClientBox(server: self, fd: c, client: client))
                var t = pthread_t()
                guard pthread_create(&t, nil, { arg in
                    let b = Unmanaged<ClientBox>.fromOpaque(arg!).takeRetainedValue()
                    b.server.serve(b.fd, b.client)
                    return nil
                }, box.toOpaque()) == 0 else {
                    box.release()
                    return .failed
                }
                s.clients[c] = t
                s.connectionsByUser[client.uid, default: 0] += 1
                s.records[c] = ClientRecord(pid: client.pid, uid: client.uid)
                return .admitted
            }
            switch admission {
            case .admitted: break
            case .stopping: close(c)
            case .full(let why): refuse(c, DaemonMessage(op: DaemonMessage.Status.busy.rawValue, text: why))
            case .failed: refuse(c, DaemonMessage(error: .system(call: "warpdrived: thread for a connection", errno: EAGAIN)))
            }
        }
    }

    /// Answers a connection that will not be served (its first request
    /// reads this reply) and closes it. Never blocks the acceptor.
    private func refuse(_ fd: Int32, _ reply: DaemonMessage) {
        var nonblocking = fcntl(fd, F_GETFL)
        if nonblocking >= 0 { nonblocking |= O_NONBLOCK; _ = fcntl(fd, F_SETFL, nonblocking) }
        _ = reply.send(fd)
        // Read what the client already sent: closing a socket with unread
        // messages makes the client's next receive fail with ECONNRESET
        // before it sees the reply.
        var buf = [UInt8](repeating: 0, count: 64)
        var truncated: Int32 = 0
        for _ in 0..<16 where wd_recv_message_nofds(fd, &buf, buf.count, &truncated) > 0 {}
        close(fd)
    }

    private final class ClientBox {
        let server: DaemonServer
        let fd: Int32
        let client: ClientProcess
        init(server: DaemonServer, fd: Int32, client: ClientProcess) { self.server = server; self.fd = fd; self.client = client }
    }

    /// Stops serving: the device is reset (clients waiting on a request see
    /// `deviceReset`), every connection is shut down and its queues freed,
    /// the engines stop and the socket file is removed. Idempotent.
    public func stop() {
        let first: Bool = state.withLock { s in
            defer { s.stopping = true }
            return !s.stopping
        }
        guard first else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
        device.reset()
        let threads: [(Int32, pthread_t)] = state.withLock { s in s.clients.map { ($0.key, $0.value) } }
        for (fd, _) in threads { shutdown(fd, Int32(SHUT_RDWR)) }
        for (_, t) in threads { pthread_join(t, nil) }
        device.shutdown()
        unlink(socketPath)
        close(listenFD)
    }

    // MARK: One client

    private func serve(_ fd: Int32, _ client: ClientProcess) {
        clientCount.add(1, ordering: .relaxed)
        var queues: [Int: any DeviceQueue] = [:]
        var reportLines: [String] = []
        let bad = DaemonMessage.Status.badRequest.rawValue
        loop: while true {
            switch DaemonMessage.receiveRequest(fd) {
            case .failure(let e) where e.errno == EBADMSG:
                // Shorter than a header: answered, so a client waiting for
                // a reply is not left hanging.
                state.withLock { $0.badRequests += 1 }
                _ = DaemonMessage(op: bad, text: "message shorter than the \(DaemonMessage.headerSize)-byte header").send(fd)
                continue
            case .failure:
                break loop
            case .success(let (m, _)):
                guard let op = DaemonMessage.Op(rawValue: m.op) else {
                    state.withLock { $0.badRequests += 1 }
                    _ = DaemonMessage(op: bad, queue: m.queue, text: "unknown request \(m.op)").send(fd)
                    continue
                }
                if op == .doorbell {
                    // One-way: a word for a queue this connection does not
                    // hold is dropped (the device checks the word itself).
                    queues[Int(m.queue)]?.doorbell(m[0])
                    continue
                }
                if op == .report {
                    if m[0] == 0 { reportLines = report(for: client.uid).lines }
                    guard m[0] <= UInt64(reportLines.count) else {
                        state.withLock { $0.badRequests += 1 }
                        _ = DaemonMessage(op: bad, text: "report line \(m[0]) past the \(reportLines.count) lines").send(fd)
                        continue
                    }
                    let page = DaemonReport.page(reportLines, from: Int(m[0]))
                    _ = DaemonMessage(op: DaemonMessage.Status.ok.rawValue,
                                      [UInt64(reportLines.count), UInt64(page.next)], text: page.text).send(fd)
                    continue
                }
                let (reply, out) = handle(op, m, fd: fd, client: client, queues: &queues)
                if reply.op == bad { state.withLock { $0.badRequests += 1 } }
                _ = reply.send(fd, fds: out)
            }
        }
        // The client is gone (or the daemon stops): free what it held.
        for q in queues.values { q.put() }
        let held = queues.count
        queues.removeAll()
        clientCount.subtract(1, ordering: .relaxed)
        let detach: Bool = state.withLock { s in
            s.records[fd] = nil
            s.queuesByUser[client.uid, default: 0] -= held
            if s.queuesByUser[client.uid] ?? 0 <= 0 { s.queuesByUser[client.uid] = nil }
            s.connectionsByUser[client.uid, default: 0] -= 1
            if s.connectionsByUser[client.uid] ?? 0 <= 0 { s.connectionsByUser[client.uid] = nil }
            if s.stopping { return false }
            s.clients[fd] = nil
            return true
        }
        close(fd)
        if detach { pthread_detach(pthread_self()) }
    }

    private func handle(_ op: DaemonMessage.Op, _ m: DaemonMessage, fd: Int32, client: ClientProcess,
                        queues: inout [Int: any DeviceQueue]) -> (DaemonMessage, [Int32]) {
        let ok = DaemonMessage.Status.ok.rawValue
        do {
            switch op {
            case .hello:
                let a = device.attributes
                return (DaemonMessage(op: ok, [UInt64(a.availableInstances ?? 0), UInt64(device.layout.depth)], text: device.name), [])
            case .info:
                let i = info
                let t = device.totals
                return (DaemonInfo.reply(total: i.total, available: i.available, pasids: i.pasids, clients: i.clients,
                                         requests: t.requests, errors: t.errors), [])
            case .open:
                let cap = limits.queuesPerUser(device: device.configuration.queues)
                let admitted: Bool = state.withLock { s in
                    guard s.queuesByUser[client.uid, default: 0] < cap else {
                        s.refusedQueues += 1
                        s.records[fd]?.released.busyRejections += 1
                        return false
                    }
                    s.queuesByUser[client.uid, default: 0] += 1
                    return true
                }
                guard admitted else {
                    throw WarpDriveError.busy(device: "uid \(client.uid) holds \(cap) queues, the most one user may (--max-queues-per-user)")
                }
                let q: any DeviceQueue
                do {
                    q = try device.openDeviceQueue(client: client)
                } catch {
                    state.withLock { s in
                        s.queuesByUser[client.uid, default: 0] -= 1
                        if case WarpDriveError.busy = error { s.records[fd]?.released.busyRejections += 1 }
                    }
                    throw error
                }
                queues[q.number] = q
                state.withLock { s in
                    s.records[fd]?.queues.insert(q.number)
                    s.records[fd]?.pasid = q.pasid
                }
                return (DaemonMessage(op: ok, queue: UInt32(q.number), [UInt64(q.pasid), UInt64(q.layout.depth)]), [q.notificationFD])
            default:
                break
            }
            guard let q = queues[Int(m.queue)] else {
                // Also every other op number the switch above does not take.
                return (DaemonMessage(op: DaemonMessage.Status.unknownQueue.rawValue, queue: m.queue), [])
            }
            switch op {
            case .map:
                guard m[0] <= 1, let region = QueueRegion(rawValue: Int(m[0])) else {
                    throw WarpDriveError.invalidState(operation: "mmap region \(m[0])", state: q.state.rawValue)
                }
                let f = try q.map(region)
                return (DaemonMessage(op: ok, queue: m.queue, [UInt64(f.size)]), [f.fd])
            case .setContext:
                guard let d = Direction(rawValue: UInt16(truncatingIfNeeded: m[0])), m[0] <= 1 else {
                    throw WarpDriveError.invalidState(operation: "SET_QP_CTX \(m[0])", state: q.state.rawValue)
                }
                try q.setContext(d)
            case .start:
                try q.start()
            case .put:
                q.put()
                queues[Int(m.queue)] = nil
                let c = q.counters
                state.withLock { s in
                    s.queuesByUser[client.uid, default: 0] -= 1
                    s.records[fd]?.queues.remove(q.number)
                    s.records[fd]?.released += c
                }
            case .counters:
                let c = q.counters
                return (DaemonMessage(op: ok, queue: m.queue, [c.requests, c.bytesIn, c.bytesOut, c.errors]), [])
            default:
                break
            }
            return (DaemonMessage(op: ok, queue: m.queue), [])
        } catch let e as WarpDriveError {
            return (DaemonMessage(error: e, queue: m.queue), [])
        } catch {
            return (DaemonMessage(op: DaemonMessage.Status.badRequest.rawValue, queue: m.queue, text: "\(error)"), [])
        }
    }
}
