#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Logging
import Synchronization

/// Where WarpFS writes its messages, through a swift-log `Logger`: standard
/// error (a foreground mount, the offline commands), the file of `-o
/// log=FILE`, or syslog (a background mount without `log=`, each message
/// prefixed with the mount point). See docs/SYSTEM.md, "Logging".
///
/// Every warning and error passes a global cap (`LogRateLimiter`: at most
/// `linesPerSecond`, then one line saying how many were suppressed), and
/// messages about one block of one file (`once`) are written once while
/// the last `RecentKeys.capacity` such keys are remembered: a damaged block
/// read a thousand times is one line, not a thousand.
///
/// Concurrency: callable from any thread. One lock (a leaf: nothing else
/// is taken under it) orders the lines and guards the limits; handlers
/// write each line with one system call under it.
public enum Log {
    /// The levels WarpFS writes at (standard error and files show the raw value).
    public enum Level: String, Sendable {
        case error = "ERROR", warning = "WARN", info = "INFO"

        var swiftLog: Logger.Level {
            switch self {
            case .error: return .error
            case .warning: return .warning
            case .info: return .info
            }
        }
    }

    /// What a once-per-block message is about; part of its key.
    public enum Topic: String, Sendable {
        /// A block that cannot be read: damaged payload, failed decompression (EIO).
        case damage
        /// A block the backing file system had no space (or quota) for.
        case noSpace
        /// A request the accelerator failed (engine error, time-out, reset).
        case accelerator
    }

    /// Where the lines go.
    public enum Destination: Sendable {
        /// Standard error (descriptor 2).
        case standardError
        /// The descriptor of an open file (appended to; not closed).
        case descriptor(Int32)
        /// syslog(3), ident `warpfs`, facility LOG_DAEMON, each message
        /// prefixed with `prefix` and ": " (the mount point).
        case syslog(prefix: String)
    }

    /// Most lines per second before lines are suppressed.
    public static let linesPerSecond = 100

    private struct State {
        var logger: Logger
        var limiter = LogRateLimiter(linesPerSecond: Log.linesPerSecond)
        var recent = RecentKeys()
    }

    private static let state = Mutex(State(logger: makeLogger(.standardError)))

    private static func makeLogger(_ destination: Destination) -> Logger {
        Logger(label: "warpfs") { _ in
            switch destination {
            case .standardError: return DescriptorLogHandler(fd: 2)
            case .descriptor(let fd): return DescriptorLogHandler(fd: fd)
            case .syslog(let prefix): return SyslogLogHandler(prefix: prefix)
            }
        }
    }

    /// Sends the lines from now on to `destination` (the mount chooses at start).
    public static func configure(_ destination: Destination) {
        let logger = makeLogger(destination)
        state.withLock { $0.logger = logger }
    }

    /// Writes one line, unless the global cap suppresses it.
    public static func write(_ level: Level, _ message: String) {
        state.withLock { s in emit(&s, level, message) }
    }

    /// Writes a line about `block` of `file` only if no line of the same
    /// topic about that block was written while the key is remembered.
    public static func once(_ level: Level, _ topic: Topic, file: String, block: Int, _ message: String) {
        let key = "\(topic.rawValue)\u{0}\(file)\u{0}\(block)"
        state.withLock { s in
            guard s.recent.insert(key) else { return }
            emit(&s, level, message)
        }
    }

    /// Writes the count of lines the cap suppressed since the last one
    /// written (at unmount, so a burst at the end is not silent).
    public static func flush() {
        state.withLock { s in
            let n = s.limiter.takeSuppressed()
            if n > 0 { s.logger.warning("\(suppressedLine(n))") }
        }
    }

    private static func emit(_ s: inout State, _ level: Level, _ message: String) {
        // The cap is for floods of warnings and errors; the few lines at
        // info level (mounted, unmounted, fault injection) always pass.
        if level == .info {
            s.logger.info("\(message)")
            return
        }
        let (admit, suppressed) = s.limiter.admit(nowSeconds: Int64(wd_now_ns() / 1_000_000_000))
        if suppressed > 0 { s.logger.warning("\(suppressedLine(suppressed))") }
        if admit { s.logger.log(level: level.swiftLog, "\(message)") }
    }

    /// The line that reports `n` suppressed lines.
    public static func suppressedLine(_ n: Int) -> String {
        "\(n) message\(n == 1 ? "" : "s") suppressed (more than \(linesPerSecond) a second)"
    }

    public static func error(_ m: String) { write(.error, m) }
    public static func warning(_ m: String) { write(.warning, m) }
    public static func info(_ m: String) { write(.info, m) }
}

/// The global cap on lines: at most `linesPerSecond` in one second of the
/// monotonic clock; the lines refused are counted and reported (by the
/// caller) before the first line admitted in a later second. Pure: the
/// time comes from the caller.
public struct LogRateLimiter: Sendable {
    public let linesPerSecond: Int
    private var second: Int64 = .min
    private var written = 0
    private var suppressed = 0

    public init(linesPerSecond: Int) { self.linesPerSecond = linesPerSecond }

    /// Whether a line at `nowSeconds` may be written, and how many lines
    /// were suppressed before it (to report first; then forgotten).
    public mutating func admit(nowSeconds: Int64) -> (admit: Bool, suppressedBefore: Int) {
        if nowSeconds != second {
            second = nowSeconds
            written = 0
        }
        guard written < linesPerSecond else {
            suppressed += 1
            return (false, 0)
        }
        written += 1
        return (true, takeSuppressed())
    }

    /// The lines suppressed and not yet reported (then zero).
    public mutating func takeSuppressed() -> Int {
        defer { suppressed = 0 }
        return suppressed
    }
}

/// The keys of once-per-block messages written lately: a set bounded to
/// `capacity`, forgetting the oldest key first.
public struct RecentKeys: Sendable {
    public static let capacity = 4096
    private var members = Set<String>()
    private var order: [String] = []
    private var next = 0
    private let capacity: Int

    public init(capacity: Int = RecentKeys.capacity) { self.capacity = capacity }

    /// Adds `key`; false when it was there already.
    public mutating func insert(_ key: String) -> Bool {
        guard !members.contains(key) else { return false }
        if order.count < capacity {
            order.append(key)
        } else {
            members.remove(order[next])
            order[next] = key
            next = (next + 1) % capacity
        }
        members.insert(key)
        return true
    }

    public var count: Int { members.count }
}
