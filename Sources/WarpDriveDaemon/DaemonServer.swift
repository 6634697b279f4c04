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
/// the one SO_PEERCRED names, and every queue it opens is bound to that
/// process's address space (its PASID): a client names no other process's
/// memory. A connection's queues are its own (requests naming another
/// client's queue number are refused), and when the connection ends, for
/// whatever reason, its queues are released: engines finish the requests
/// they hold, nothing more is written into the client, the PASID is unbound.
public final class DaemonServer: @unchecked Sendable {
    /// The socket path the server listens on (removed on `stop()`).
    public let socketPath: String
    /// The device the server shares.
    public let device: EmulatedZipDevice

    private let listenFD: Int32
    private let state = Mutex(State())
    private struct State {
        var stopping = false
        var clients: [Int32: pthread_t] = [:]
        /// What the status report shows of each connection, by its fd.
        var records: [Int32: ClientRecord] = [:]
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

    /// Creates the device and listens on `socketPath`. A stale socket file
    /// (nobody listening) is replaced; a live one is an error.
    public init(socketPath: String, configuration: EmulatedDeviceConfiguration) throws {
        self.socketPath = socketPath
        let probe = wd_seqpacket_connect(socketPath)
        if probe >= 0 {
            close(probe)
            throw WarpDriveError.system(call: "listen on \(socketPath): a warpdrived already serves it", errno: EADDRINUSE)
        }
        if -probe == ECONNREFUSED { unlink(socketPath) }
        let fd = wd_seqpacket_listen(socketPath, 64)
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
    public var report: DaemonReport {
        let queues = device.queueStatus
        let byNumber = Dictionary(queues.map { ($0.number, $0) }, uniquingKeysWith: { a, _ in a })
        let records = state.withLock { s in s.records.sorted { $0.key < $1.key }.map(\.value) }
        let clients = records.map { r -> ClientStatus in
            var c = r.released
            for n in r.queues {
                guard let q = byNumber[n]?.counters else { continue }
                c += q
            }
            return ClientStatus(pid: r.pid, uid: r.uid, pasid: r.queues.isEmpty ? nil : r.pasid, queues: r.queues.count, counters: c)
        }
        return DaemonReport(attributes: device.attributes, totalQueues: device.configuration.queues,
                            engines: device.configuration.engines, daemonPID: getpid(), totals: device.totals,
                            queues: queues, clients: clients)
    }

    /// Accepts connections until `stop()`; each gets a thread.
    public func run() {
        while true {
            let c = wd_accept(listenFD)
            if c < 0 {
                if state.withLock({ $0.stopping }) { return }
                if -c == EMFILE || -c == ENFILE || -c == ECONNABORTED { usleep(10_000); continue }
                return
            }
            let admitted: Bool = state.withLock { s in
                guard !s.stopping else { return false }
                let box = Unmanaged.passRetained(ClientBox(server: self, fd: c))
                var t = pthread_t()
                guard pthread_create(&t, nil, { arg in
                    let b = Unmanaged<ClientBox>.fromOpaque(arg!).takeRetainedValue()
                    b.server.serve(b.fd)
                    return nil
                }, box.toOpaque()) == 0 else {
                    box.release()
                    return false
                }
                s.clients[c] = t
                return true
            }
            if !admitted { close(c) }
        }
    }

    private final class ClientBox {
        let server: DaemonServer
        let fd: Int32
        init(server: DaemonServer, fd: Int32) { self.server = server; self.fd = fd }
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

    private func serve(_ fd: Int32) {
        clientCount.add(1, ordering: .relaxed)
        var queues: [Int: any DeviceQueue] = [:]
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        var reportLines: [String] = []
        if wd_peer_credentials(fd, &pid, &uid, &gid) == 0 {
            state.withLock { $0.records[fd] = ClientRecord(pid: pid, uid: uid) }
            loop: while true {
                switch DaemonMessage.receive(fd) {
                case .failure(let e) where e.errno == EBADMSG: continue
                case .failure: break loop
                case .success(let (m, fds)):
                    fds.forEach { close($0) }   // clients send no descriptors
                    guard let op = DaemonMessage.Op(rawValue: m.op) else {
                        _ = DaemonMessage(op: DaemonMessage.Status.badRequest.rawValue, text: "unknown request \(m.op)").send(fd)
                        continue
                    }
                    if op == .doorbell {
                        queues[Int(m.queue)]?.doorbell(m[0])
                        continue
                    }
                    if op == .report {
                        if m[0] == 0 { reportLines = report.lines }
                        let page = DaemonReport.page(reportLines, from: Int(m[0]))
                        _ = DaemonMessage(op: DaemonMessage.Status.ok.rawValue,
                                          [UInt64(reportLines.count), UInt64(page.next)], text: page.text).send(fd)
                        continue
                    }
                    let (reply, out) = handle(op, m, fd: fd, pid: pid, queues: &queues)
                    _ = reply.send(fd, fds: out)
                }
            }
        }
        // The client is gone (or the daemon stops): free what it held.
        for q in queues.values { q.put() }
        queues.removeAll()
        clientCount.subtract(1, ordering: .relaxed)
        let detach: Bool = state.withLock { s in
            s.records[fd] = nil
            if s.stopping { return false }
            s.clients[fd] = nil
            return true
        }
        close(fd)
        if detach { pthread_detach(pthread_self()) }
    }

    private func handle(_ op: DaemonMessage.Op, _ m: DaemonMessage, fd: Int32, pid: pid_t,
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
                let q: any DeviceQueue
                do {
                    q = try device.openDeviceQueue(pid: pid)
                } catch WarpDriveError.busy(let d) {
                    state.withLock { $0.records[fd]?.released.busyRejections += 1 }
                    throw WarpDriveError.busy(device: d)
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
                return (DaemonMessage(op: DaemonMessage.Status.unknownQueue.rawValue, queue: m.queue), [])
            }
            switch op {
            case .map:
                guard let region = QueueRegion(rawValue: Int(m[0])) else {
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
