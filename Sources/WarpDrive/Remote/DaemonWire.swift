#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// The `warpdrived` wire format: one SOCK_SEQPACKET message per request or
/// reply, a fixed 56-byte header (`op`, `queue`, six 64-bit values) and an
/// optional UTF-8 text after it; file descriptors travel as SCM_RIGHTS.
/// Every request but `doorbell` gets exactly one reply, in order.
public struct DaemonMessage: Sendable {
    /// Requests (client to daemon).
    public enum Op: UInt32, Sendable {
        /// Device name (text), instances, depth. No fds.
        case hello = 1
        /// Open a queue bound to the caller (SO_PEERCRED) → queue, v0 PASID, v1 depth; fd: notification eventfd.
        case open = 2
        /// Map region v0 of the queue → v0 size; fd: the region's memfd.
        case map = 3
        /// Set the queue's direction v0 (0 compress, 1 decompress).
        case setContext = 4
        /// Start the queue.
        case start = 5
        /// Release the queue; the reply comes once no engine touches it.
        case put = 6
        /// The doorbell word v0 the client stored at MMIO + 0x1000. No reply.
        case doorbell = 7
        /// The queue's counters → v0 requests, v1 bytes in, v2 bytes out, v3 errors.
        case counters = 8
        /// Daemon-wide figures → `DaemonInfo`.
        case info = 9
        /// One page of the status report (`DaemonReport` lines) from line
        /// v0; v0 = 0 takes a fresh snapshot, later pages read the same one.
        /// → v0 lines in all, v1 the next line; text: whole lines.
        case report = 10
    }

    /// Reply status in `op`: 0 success, otherwise the error kind.
    public enum Status: UInt32, Sendable {
        case ok = 0, busy, isolated, invalidState, alreadyMapped, system, unknownQueue, badRequest
    }

    /// Bytes of the fixed header.
    public static let headerSize = 56
    /// Largest message (header plus text).
    public static let maxSize = 4096

    /// The request (`Op`) or, in a reply, the status (`Status`).
    public var op: UInt32
    /// The queue number the message is about (0 when none).
    public var queue: UInt32
    /// Six 64-bit values, read and written with the subscript.
    public var values: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)
    /// Optional UTF-8 text after the header.
    public var text: String = ""

    /// A message with `op`, `queue` and up to six values.
    public init(op: UInt32, queue: UInt32 = 0, _ v: [UInt64] = [], text: String = "") {
        self.op = op
        self.queue = queue
        self.text = text
        for (i, x) in v.prefix(6).enumerated() { self[i] = x }
    }

    /// Value `i` (0..<6).
    public subscript(i: Int) -> UInt64 {
        get { withUnsafeBytes(of: values) { $0.load(fromByteOffset: i * 8, as: UInt64.self) } }
        set { withUnsafeMutableBytes(of: &values) { $0.storeBytes(of: newValue, toByteOffset: i * 8, as: UInt64.self) } }
    }

    /// An error reply for `e`.
    public init(error e: WarpDriveError, queue: UInt32 = 0) {
        switch e {
        case .busy(let d): self.init(op: Status.busy.rawValue, queue: queue, text: d)
        case .deviceIsolated(let d): self.init(op: Status.isolated.rawValue, queue: queue, text: d)
        case .invalidState(let o, let s): self.init(op: Status.invalidState.rawValue, queue: queue, text: o + "\n" + s)
        case .alreadyMapped(let r): self.init(op: Status.alreadyMapped.rawValue, queue: queue, text: r)
        case .system(let c, let n): self.init(op: Status.system.rawValue, queue: queue, [UInt64(UInt32(bitPattern: n))], text: c)
        default: self.init(op: Status.badRequest.rawValue, queue: queue, text: e.description)
        }
    }

    /// The error an error reply carries, or nil for success.
    public func error(socket: String) -> WarpDriveError? {
        guard let s = Status(rawValue: op) else { return .daemonUnavailable(socket: socket, reason: "unknown reply status \(op)") }
        switch s {
        case .ok: return nil
        case .busy: return .busy(device: text)
        case .isolated: return .deviceIsolated(device: text)
        case .invalidState:
            let p = text.split(separator: "\n", maxSplits: 1).map(String.init)
            return .invalidState(operation: p.first ?? "", state: p.count > 1 ? p[1] : "")
        case .alreadyMapped: return .alreadyMapped(region: text)
        case .system: return .system(call: "warpdrived: " + text, errno: Int32(truncatingIfNeeded: self[0]))
        case .unknownQueue: return .invalidState(operation: "queue \(queue) at \(socket)", state: "not open")
        case .badRequest: return .daemonUnavailable(socket: socket, reason: "request refused: \(text)")
        }
    }

    /// Sends the message with `fds`. Returns 0 or -errno.
    public func send(_ socket: Int32, fds: [Int32] = []) -> Int {
        var buf = [UInt8](repeating: 0, count: DaemonMessage.headerSize)
        buf.withUnsafeMutableBytes { b in
            b.storeBytes(of: op.littleEndian, toByteOffset: 0, as: UInt32.self)
            b.storeBytes(of: queue.littleEndian, toByteOffset: 4, as: UInt32.self)
            for i in 0..<6 { b.storeBytes(of: self[i].littleEndian, toByteOffset: 8 + 8 * i, as: UInt64.self) }
        }
        buf += Array(text.utf8.prefix(DaemonMessage.maxSize - DaemonMessage.headerSize))
        let n = buf.withUnsafeBytes { b in fds.withUnsafeBufferPointer { f in
            wd_send_message(socket, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
        } }
        return n < 0 ? Int(n) : 0
    }

    /// Receives one message and its fds. `.failure(0)` at end of stream,
    /// `.failure(errno)` on error or a short message (`EBADMSG`).
    public static func receive(_ socket: Int32) -> Result<(DaemonMessage, [Int32]), ReceiveError> {
        var buf = [UInt8](repeating: 0, count: maxSize)
        var fds = [Int32](repeating: -1, count: 8)
        var nfds: Int32 = 0
        let n = buf.withUnsafeMutableBytes { b in fds.withUnsafeMutableBufferPointer { f in
            wd_recv_message(socket, b.baseAddress, b.count, f.baseAddress, 8, &nfds)
        } }
        let got = Array(fds.prefix(Int(nfds)))
        if n == 0 { got.forEach { close($0) }; return .failure(ReceiveError(errno: 0)) }
        if n < 0 { return .failure(ReceiveError(errno: Int32(-n))) }
        guard let m = decode(buf, count: n) else { got.forEach { close($0) }; return .failure(ReceiveError(errno: EBADMSG)) }
        return .success((m, got))
    }

    /// Receives one request without accepting descriptors (what the daemon
    /// does: the kernel drops any a client sends without installing them,
    /// so none is ever closed by the daemon, which for a file on a FUSE
    /// mount would wait on that file system's server). `dropped` is true
    /// when descriptors or bytes past `maxSize` were discarded.
    public static func receiveRequest(_ socket: Int32) -> Result<(message: DaemonMessage, dropped: Bool), ReceiveError> {
        var buf = [UInt8](repeating: 0, count: maxSize)
        var truncated: Int32 = 0
        let n = buf.withUnsafeMutableBytes { b in wd_recv_message_nofds(socket, b.baseAddress, b.count, &truncated) }
        if n == 0 { return .failure(ReceiveError(errno: 0)) }
        if n < 0 { return .failure(ReceiveError(errno: Int32(-n))) }
        guard let m = decode(buf, count: n) else { return .failure(ReceiveError(errno: EBADMSG)) }
        return .success((m, truncated != 0))
    }

    private static func decode(_ buf: [UInt8], count n: Int) -> DaemonMessage? {
        guard n >= headerSize, n <= buf.count else { return nil }
        var m = DaemonMessage(op: 0)
        buf.withUnsafeBytes { b in
            m.op = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
            m.queue = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            for i in 0..<6 { m[i] = UInt64(littleEndian: b.loadUnaligned(fromByteOffset: 8 + 8 * i, as: UInt64.self)) }
        }
        m.text = String(decoding: buf[headerSize..<n], as: UTF8.self)
        return m
    }

    /// Why `receive` returned no message: errno, 0 for end of stream.
    public struct ReceiveError: Error, Sendable { public let errno: Int32 }
}

/// Daemon-wide figures (`info` request): what a client or test checks to see
/// that queues and PASIDs were freed.
public struct DaemonInfo: Sendable, Equatable, CustomStringConvertible {
    /// Queue pairs the device has in all.
    public var totalInstances: Int
    /// Queue pairs free now (`available_instances`).
    public var availableInstances: Int
    /// PASIDs bound now (one per client process with a queue).
    public var boundPASIDs: Int
    /// Client connections now.
    public var clients: Int
    /// Requests completed since start.
    public var requests: UInt64
    /// Requests completed with an error status since start.
    public var errors: UInt64

    init(_ m: DaemonMessage) {
        totalInstances = Int(clamping: m[0]); availableInstances = Int(clamping: m[1]); boundPASIDs = Int(clamping: m[2])
        clients = Int(clamping: m[3]); requests = m[4]; errors = m[5]
    }

    /// The reply carrying these figures.
    public static func reply(total: Int, available: Int, pasids: Int, clients: Int, requests: UInt64, errors: UInt64) -> DaemonMessage {
        DaemonMessage(op: DaemonMessage.Status.ok.rawValue,
                      [UInt64(total), UInt64(available), UInt64(pasids), UInt64(clients), requests, errors])
    }

    public var description: String {
        "instances \(availableInstances)/\(totalInstances) free, PASIDs bound \(boundPASIDs), clients \(clients), "
            + "requests \(requests), errors \(errors)"
    }
}
