/// One open queue of a device as a status report shows it.
public struct QueueStatus: Sendable, Equatable {
    /// Queue number on the device.
    public var number: Int
    /// The process whose address space the queue is bound to.
    public var pid: Int32
    /// The PASID its requests are translated with.
    public var pasid: UInt32
    /// Direction set with `SET_QP_CTX` (compress until set).
    public var direction: Direction
    /// Lifecycle state (`INIT`, `STARTED`, `ZOMBIE`).
    public var state: QueueState
    /// The queue's counters.
    public var counters: WorkCounters

    /// Every field given.
    public init(number: Int, pid: Int32, pasid: UInt32, direction: Direction, state: QueueState, counters: WorkCounters) {
        self.number = number; self.pid = pid; self.pasid = pasid; self.direction = direction
        self.state = state; self.counters = counters
    }
}

/// One client connection of `warpdrived` as a status report shows it.
public struct ClientStatus: Sendable, Equatable {
    /// The client's process and user (SO_PEERCRED).
    public var pid: Int32
    public var uid: UInt32
    /// The PASID its queues carry; nil while it holds no queue.
    public var pasid: UInt32?
    /// Queues it holds now.
    public var queues: Int
    /// Its queues' counters summed since it connected (released queues
    /// included); `busyRejections` also counts its refused queue opens.
    public var counters: WorkCounters

    /// Every field given.
    public init(pid: Int32, uid: UInt32, pasid: UInt32?, queues: Int, counters: WorkCounters) {
        self.pid = pid; self.uid = uid; self.pasid = pasid; self.queues = queues; self.counters = counters
    }
}

/// `warpdrived`'s limits and what it refused since it started (the
/// report's `limits` line).
public struct DaemonLimitsStatus: Sendable, Equatable {
    /// Connections served at once; per uid; queues one uid may hold.
    public var maxClients: Int
    public var maxClientsPerUser: Int
    public var maxQueuesPerUser: Int
    /// Connections refused for the caps; queue opens refused for the
    /// per-user cap; requests refused as malformed.
    public var refusedConnections: UInt64
    public var refusedQueues: UInt64
    public var badRequests: UInt64

    /// Every figure given.
    public init(maxClients: Int, maxClientsPerUser: Int, maxQueuesPerUser: Int,
                refusedConnections: UInt64, refusedQueues: UInt64, badRequests: UInt64) {
        self.maxClients = maxClients; self.maxClientsPerUser = maxClientsPerUser; self.maxQueuesPerUser = maxQueuesPerUser
        self.refusedConnections = refusedConnections; self.refusedQueues = refusedQueues; self.badRequests = badRequests
    }
}

/// What `warpdrived` reports about its device (the `report` request):
/// attributes, device-wide counters, and live counters per queue and per
/// client.
///
/// On the wire it is text, one record per line, each a kind followed by
/// space-separated `key=value` fields (values have no spaces):
///
///     device name=hisi_zip-0 api=hisi_qm_v2 flags=1 algorithms=deflate,zlib,gzip available_instances=62 queues=64 engines=2 depth=1024 isolated=0 isolate_strategy=0 numa_node=-1 daemon_pid=812
///     totals requests=10 bytes_in=655360 bytes_out=1234 errors=0 busy=0
///     queue number=0 pid=900 pasid=1 direction=compress state=STARTED requests=5 bytes_in=327680 bytes_out=600 errors=0 busy=0
///     client pid=900 uid=1000 pasid=1 queues=1 requests=5 bytes_in=327680 bytes_out=600 errors=0 busy=0
///
/// The lines travel in pages of whole lines that fit one message (see
/// `DaemonMessage.Op.report`); unknown kinds and keys are ignored, so
/// fields can be added.
public struct DaemonReport: Sendable, Equatable {
    /// The device's attributes.
    public var attributes: DeviceAttributes
    /// Queue pairs in all, and engine threads.
    public var totalQueues: Int
    public var engines: Int
    /// The daemon's process id.
    public var daemonPID: Int32
    /// Device-wide counters since the daemon started.
    public var totals: WorkCounters
    /// Open queues, by number.
    public var queues: [QueueStatus]
    /// Connected clients (the one asking included).
    public var clients: [ClientStatus]
    /// Limits and refusals (nil from a daemon that does not send them).
    public var limits: DaemonLimitsStatus?

    /// A report of these parts.
    public init(attributes: DeviceAttributes, totalQueues: Int, engines: Int, daemonPID: Int32, totals: WorkCounters,
                queues: [QueueStatus], clients: [ClientStatus], limits: DaemonLimitsStatus? = nil) {
        self.attributes = attributes; self.totalQueues = totalQueues; self.engines = engines
        self.daemonPID = daemonPID; self.totals = totals; self.queues = queues; self.clients = clients
        self.limits = limits
    }

    // MARK: Wire text

    private static func fields(_ c: WorkCounters) -> String {
        "requests=\(c.requests) bytes_in=\(c.bytesIn) bytes_out=\(c.bytesOut) errors=\(c.errors) busy=\(c.busyRejections)"
    }

    private static func word(_ s: String) -> String {
        s.isEmpty ? "-" : String(s.map { $0 == " " || $0 == "\n" || $0 == "=" ? "_" : $0 })
    }

    /// The report as wire lines.
    public var lines: [String] {
        let a = attributes
        var r = ["device name=\(DaemonReport.word(a.name)) api=\(DaemonReport.word(a.api)) flags=\(a.flags) "
            + "algorithms=\(DaemonReport.word(a.algorithms.joined(separator: ","))) "
            + "available_instances=\(a.availableInstances ?? 0) queues=\(totalQueues) engines=\(engines) "
            + "depth=\(a.queueDepth ?? 0) isolated=\(a.isolated ? 1 : 0) isolate_strategy=\(a.isolateStrategy) "
            + "numa_node=\(a.numaNode) daemon_pid=\(daemonPID)",
            "totals " + DaemonReport.fields(totals)]
        if let l = limits {
            r.append("limits max_clients=\(l.maxClients) max_clients_per_user=\(l.maxClientsPerUser) "
                + "max_queues_per_user=\(l.maxQueuesPerUser) refused_connections=\(l.refusedConnections) "
                + "refused_queues=\(l.refusedQueues) bad_requests=\(l.badRequests)")
        }
        for q in queues {
            r.append("queue number=\(q.number) pid=\(q.pid) pasid=\(q.pasid) direction=\(q.direction) "
                + "state=\(q.state.rawValue) " + DaemonReport.fields(q.counters))
        }
        for c in clients {
            r.append("client pid=\(c.pid) uid=\(c.uid) pasid=\(c.pasid.map { String($0) } ?? "-") queues=\(c.queues) "
                + DaemonReport.fields(c.counters))
        }
        return r
    }

    /// Parses wire lines; nil without a `device` line.
    public init?(lines: [String]) {
        var attributes: DeviceAttributes?
        var totalQueues = 0, engines = 0
        var daemonPID: Int32 = 0
        var totals = WorkCounters()
        var queues: [QueueStatus] = []
        var clients: [ClientStatus] = []
        var limits: DaemonLimitsStatus?
        func counters(_ f: [String: String]) -> WorkCounters {
            var c = WorkCounters()
            c.requests = f["requests"].flatMap { UInt64($0) } ?? 0
            c.bytesIn = f["bytes_in"].flatMap { UInt64($0) } ?? 0
            c.bytesOut = f["bytes_out"].flatMap { UInt64($0) } ?? 0
            c.errors = f["errors"].flatMap { UInt64($0) } ?? 0
            c.busyRejections = f["busy"].flatMap { UInt64($0) } ?? 0
            return c
        }
        for line in lines {
            let parts = line.split(separator: " ")
            guard let kind = parts.first else { continue }
            var f: [String: String] = [:]
            for p in parts.dropFirst() {
                let kv = p.split(separator: "=", maxSplits: 1)
                if kv.count == 2 { f[String(kv[0])] = String(kv[1]) }
            }
            func int(_ k: String) -> Int { f[k].flatMap { Int($0) } ?? 0 }
            switch kind {
            case "device":
                attributes = DeviceAttributes(
                    name: f["name"] ?? "", api: f["api"] ?? "", flags: f["flags"].flatMap { UInt32($0) } ?? 0,
                    algorithms: (f["algorithms"] ?? "").split(separator: ",").map(String.init).filter { $0 != "-" },
                    availableInstances: int("available_instances"), queueDepth: int("depth"),
                    regionMMIOSize: nil, regionDUSSize: nil, isolated: f["isolated"] == "1",
                    isolateStrategy: int("isolate_strategy"), numaNode: f["numa_node"].flatMap { Int($0) } ?? -1)
                totalQueues = int("queues"); engines = int("engines"); daemonPID = Int32(truncatingIfNeeded: int("daemon_pid"))
            case "totals":
                totals = counters(f)
            case "limits":
                func u64(_ k: String) -> UInt64 { f[k].flatMap { UInt64($0) } ?? 0 }
                limits = DaemonLimitsStatus(
                    maxClients: int("max_clients"), maxClientsPerUser: int("max_clients_per_user"),
                    maxQueuesPerUser: int("max_queues_per_user"), refusedConnections: u64("refused_connections"),
                    refusedQueues: u64("refused_queues"), badRequests: u64("bad_requests"))
            case "queue":
                queues.append(QueueStatus(
                    number: int("number"), pid: Int32(truncatingIfNeeded: int("pid")),
                    pasid: UInt32(truncatingIfNeeded: int("pasid")),
                    direction: f["direction"] == "decompress" ? .decompress : .compress,
                    state: f["state"].flatMap { QueueState(rawValue: $0) } ?? .initialized, counters: counters(f)))
            case "client":
                clients.append(ClientStatus(
                    pid: Int32(truncatingIfNeeded: int("pid")), uid: UInt32(truncatingIfNeeded: int("uid")),
                    pasid: f["pasid"].flatMap { UInt32($0) }, queues: int("queues"), counters: counters(f)))
            default:
                continue
            }
        }
        guard let a = attributes else { return nil }
        self.init(attributes: a, totalQueues: totalQueues, engines: engines, daemonPID: daemonPID, totals: totals,
                  queues: queues, clients: clients, limits: limits)
    }

    /// Splits `lines` from `first` into one page of whole lines that fits a
    /// message: the page's text and the index of the next line (a single
    /// line too long for a message is cut).
    public static func page(_ lines: [String], from first: Int) -> (text: String, next: Int) {
        let room = DaemonMessage.maxSize - DaemonMessage.headerSize
        var text = ""
        var i = max(0, first)
        while i < lines.count {
            let add = (text.isEmpty ? "" : "\n") + lines[i]
            if text.utf8.count + add.utf8.count > room {
                if text.isEmpty { text = String(decoding: Array(lines[i].utf8.prefix(room)), as: UTF8.self); i += 1 }
                break
            }
            text += add
            i += 1
        }
        return (text, i)
    }
}
