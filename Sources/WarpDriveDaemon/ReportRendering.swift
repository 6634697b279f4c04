import WarpDrive

/// Device attributes and `warpdrived`'s status report for people: text
/// blocks and tables, and JSON, as `warpfs devices` and `warpdrived --info`
/// print them. The report's data and its wire lines are `DaemonReport` in
/// WarpDrive; only the rendering is here.
public enum ReportRendering {
    /// A device's attributes as an indented block under its name.
    public static func attributes(_ a: DeviceAttributes, kind: String, totalQueues: Int?, engines: Int?) -> String {
        var rows: [(String, String)] = [
            ("api", a.api), ("flags", "\(a.flags)\(a.supportsSVA ? " (SVA)" : "")"),
            ("algorithms", a.algorithms.joined(separator: " ")),
            ("available_instances", a.availableInstances.map { "\($0)" } ?? "?"),
        ]
        if let totalQueues { rows.append(("queues", "\(totalQueues)")) }
        if let engines { rows.append(("engines", "\(engines)")) }
        rows.append(("depth", a.queueDepth.map { "\($0)" } ?? "?"))
        rows.append(("isolated", a.isolated ? "1" : "0"))
        rows.append(("isolate_strategy", "\(a.isolateStrategy)"))
        rows.append(("numa_node", "\(a.numaNode)"))
        var out = "\(a.name) (\(kind))\n"
        for (k, v) in rows { out += "  " + k + String(repeating: " ", count: max(1, 21 - k.count)) + v + "\n" }
        return out
    }

    /// A device's attributes as a JSON object.
    public static func attributesJSON(_ a: DeviceAttributes, kind: String, totalQueues: Int?, engines: Int?,
                                      extra: [(String, String)] = []) -> String {
        func opt(_ v: Int?) -> String { v.map { "\($0)" } ?? "null" }
        var f = [
            ("name", string(a.name)), ("kind", string(kind)), ("api", string(a.api)), ("flags", "\(a.flags)"),
            ("algorithms", "[" + a.algorithms.map(string).joined(separator: ",") + "]"),
            ("available_instances", opt(a.availableInstances)), ("queues", opt(totalQueues)), ("engines", opt(engines)),
            ("depth", opt(a.queueDepth)), ("isolated", a.isolated ? "true" : "false"),
            ("isolate_strategy", "\(a.isolateStrategy)"), ("numa_node", "\(a.numaNode)"),
        ]
        f += extra
        return "{" + f.map { string($0.0) + ":" + $0.1 }.joined(separator: ",") + "}"
    }

    /// A JSON string literal.
    public static func string(_ s: String) -> String { JSONLiteral.string(s) }

    /// Left-aligned columns under a header row; "(none)" when empty.
    public static func table(_ head: [String], _ rows: [[String]]) -> String {
        guard !rows.isEmpty else { return "  (none)\n" }
        var widths = head.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ r: [String]) -> String {
            "  " + r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] - c.count + 2) }
                .joined() + "\n"
        }
        return line(head) + rows.map(line).joined()
    }
}

extension DaemonReport {
    /// Attributes, then a table of queues and a table of clients, for people.
    public func render(socket: String) -> String {
        var out = ReportRendering.attributes(attributes, kind: "warpdrived pid \(daemonPID) at \(socket)",
                                             totalQueues: totalQueues, engines: engines)
        out += "  totals               \(totals)\n"
        if let l = limits {
            out += "  limits               \(l.maxClients) connections, \(l.maxClientsPerUser) per user, "
                + "\(l.maxQueuesPerUser) queues per user\n"
            out += "  refused              \(l.refusedConnections) connections, \(l.refusedQueues) queue opens, "
                + "\(l.badRequests) bad requests\n"
        }
        out += "\n"
        func row(_ c: WorkCounters) -> [String] {
            ["\(c.requests)", "\(c.bytesIn)", "\(c.bytesOut)", "\(c.errors)", "\(c.busyRejections)"]
        }
        let counterHeads = ["REQUESTS", "BYTES_IN", "BYTES_OUT", "ERRORS", "BUSY"]
        out += "queues (\(queues.count) open):\n"
        out += ReportRendering.table(
            ["QUEUE", "PID", "PASID", "DIRECTION", "STATE"] + counterHeads,
            queues.map { ["\($0.number)", "\($0.pid)", "\($0.pasid)", "\($0.direction)", $0.state.rawValue] + row($0.counters) })
        out += "\nclients (\(clients.count) connected):\n"
        out += ReportRendering.table(
            ["PID", "UID", "PASID", "QUEUES"] + counterHeads,
            clients.map { ["\($0.pid)", "\($0.uid)", $0.pasid.map { "\($0)" } ?? "-", "\($0.queues)"] + row($0.counters) })
        return out
    }

    /// The same as one JSON object.
    public func json(socket: String) -> String {
        typealias J = ReportRendering
        func counters(_ c: WorkCounters) -> String {
            "\"requests\":\(c.requests),\"bytes_in\":\(c.bytesIn),\"bytes_out\":\(c.bytesOut),\"errors\":\(c.errors),\"busy\":\(c.busyRejections)"
        }
        let qs = queues.map {
            "{\"queue\":\($0.number),\"pid\":\($0.pid),\"pasid\":\($0.pasid),\"direction\":\(J.string("\($0.direction)")),"
                + "\"state\":\(J.string($0.state.rawValue)),\(counters($0.counters))}"
        }
        let cs = clients.map {
            "{\"pid\":\($0.pid),\"uid\":\($0.uid),\"pasid\":\($0.pasid.map { "\($0)" } ?? "null"),\"queues\":\($0.queues),"
                + "\(counters($0.counters))}"
        }
        return "{\"socket\":\(J.string(socket)),\"daemon_pid\":\(daemonPID),"
            + "\"device\":\(J.attributesJSON(attributes, kind: "warpdrived", totalQueues: totalQueues, engines: engines)),"
            + "\"totals\":{\(counters(totals))},"
            + (limits.map { l in
                "\"limits\":{\"max_clients\":\(l.maxClients),\"max_clients_per_user\":\(l.maxClientsPerUser),"
                    + "\"max_queues_per_user\":\(l.maxQueuesPerUser),\"refused_connections\":\(l.refusedConnections),"
                    + "\"refused_queues\":\(l.refusedQueues),\"bad_requests\":\(l.badRequests)},"
            } ?? "")
            + "\"queues\":[\(qs.joined(separator: ","))],"
            + "\"clients\":[\(cs.joined(separator: ","))]}"
    }
}
