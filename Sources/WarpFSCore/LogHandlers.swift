#if canImport(Glibc)
import Glibc
#endif
import Logging

/// A swift-log handler that writes each message as one line to a file
/// descriptor (standard error, or the file of `-o log=FILE`):
/// `2025-01-31T12:00:00Z warpfs ERROR: message`, time in UTC. One
/// write(2) per line, so lines of several processes appending to one file
/// do not interleave.
public struct DescriptorLogHandler: LogHandler {
    public let fd: Int32
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]

    public init(fd: Int32) { self.fd = fd }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = "\(Self.timestamp()) warpfs \(Self.name(event.level)): \(event.message)\n"
        line.withUTF8 { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
    }

    /// The level as the lines show it (the names WarpFS has always written).
    static func name(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "TRACE"
        case .debug: return "DEBUG"
        case .info, .notice: return "INFO"
        case .warning: return "WARN"
        case .error: return "ERROR"
        case .critical: return "CRITICAL"
        }
    }

    /// The time now, `YYYY-MM-DDTHH:MM:SSZ`.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tmv = tm()
        var t = ts.tv_sec
        gmtime_r(&t, &tmv)
        return String(Int(tmv.tm_year) + 1900) + "-" + two(Int(tmv.tm_mon) + 1) + "-" + two(Int(tmv.tm_mday))
            + "T" + two(Int(tmv.tm_hour)) + ":" + two(Int(tmv.tm_min)) + ":" + two(Int(tmv.tm_sec)) + "Z"
    }

    private static func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
}

/// A swift-log handler that sends each message to syslog(3): ident
/// `warpfs` with the process id, facility LOG_DAEMON, the level as the
/// priority, and the text prefixed with `prefix` (the mount point), so a
/// line in the system log reads `warpfs[PID]: /srv/data: message`. glibc
/// sends to /dev/log and reconnects when the socket comes back; nothing is
/// written when no syslog daemon listens.
public struct SyslogLogHandler: LogHandler {
    public let prefix: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]

    /// Opens the connection to the system log (once per process; the ident
    /// must outlive it, so it is a static string).
    public init(prefix: String) {
        self.prefix = prefix
        _ = Self.open
    }

    private static let open: Void = {
        // LOG_PID: the ident shows the process id; LOG_NDELAY: connect now,
        // before the process detaches. openlog keeps the pointer: the
        // string is never freed.
        openlog(strdup("warpfs"), LOG_PID | LOG_NDELAY, LOG_DAEMON)
    }()

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let text = prefix.isEmpty ? "\(event.message)" : "\(prefix): \(event.message)"
        text.withCString { p in
            withVaList([p]) { vsyslog(Self.priority(event.level), "%s", $0) }
        }
    }

    /// The syslog priority of a level.
    static func priority(_ level: Logger.Level) -> Int32 {
        switch level {
        case .trace, .debug: return LOG_DEBUG
        case .info: return LOG_INFO
        case .notice: return LOG_NOTICE
        case .warning: return LOG_WARNING
        case .error: return LOG_ERR
        case .critical: return LOG_CRIT
        }
    }
}
