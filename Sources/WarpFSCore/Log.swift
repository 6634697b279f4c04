#if canImport(Glibc)
import Glibc
#endif

/// Where WarpFS writes its messages: standard error (the mount's log, or
/// the terminal with `-f`). Each line is prefixed with the time and level.
public enum Log {
    public enum Level: String, Sendable { case error = "ERROR", warning = "WARN", info = "INFO" }

    /// Writes one line to fd 2.
    public static func write(_ level: Level, _ message: String) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tmv = tm()
        var t = ts.tv_sec
        gmtime_r(&t, &tmv)
        let stamp = String(Int(tmv.tm_year) + 1900) + "-" + two(Int(tmv.tm_mon) + 1) + "-" + two(Int(tmv.tm_mday))
            + "T" + two(Int(tmv.tm_hour)) + ":" + two(Int(tmv.tm_min)) + ":" + two(Int(tmv.tm_sec)) + "Z"
        var line = "\(stamp) warpfs \(level.rawValue): \(message)\n"
        line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    }

    private static func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

    public static func error(_ m: String) { write(.error, m) }
    public static func warning(_ m: String) { write(.warning, m) }
    public static func info(_ m: String) { write(.info, m) }
}
