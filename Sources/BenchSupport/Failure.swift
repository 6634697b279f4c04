// How a bench stops when a result is wrong.
#if canImport(Glibc)
import Glibc
#endif

/// A wrong result or an unusable setting: the bench reports it and fails.
public struct BenchFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Writes a line to standard error.
public func eprint(_ message: String) {
    var m = message + "\n"
    m.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// "<program>: FAILED: <message>" on standard error, then exit status 2:
/// for failures on threads that cannot throw.
public func die(_ message: String) -> Never {
    let program = CommandLine.arguments.first.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? "bench"
    eprint("\(program): FAILED: " + message)
    exit(2)
}
