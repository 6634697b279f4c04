#if canImport(Glibc)
import Glibc
#endif

/// A file-system error: the errno the application sees, and a message for
/// the log that names the file, block or option.
public struct FSError: Error, CustomStringConvertible, Sendable {
    public let errno: Int32
    public let message: String
    /// Already written to the log where it happened (or deliberately logged
    /// once for many requests): whoever reports it to the application does
    /// not log it again.
    public var logged = false

    public init(_ errno: Int32, _ message: String = "", logged: Bool = false) {
        self.errno = errno
        self.message = message
        self.logged = logged
    }

    /// Logs `error` unless it says it was logged already.
    public static func log(_ error: Error) {
        if let e = error as? FSError, e.logged { return }
        Log.error("\(error)")
    }

    /// The errno of the last failed system call, with context.
    public static func last(_ what: @autoclosure () -> String) -> FSError {
        let e = Glibc.errno
        return FSError(e, "\(what()): \(String(cString: strerror(e)))")
    }

    public var description: String { message.isEmpty ? String(cString: strerror(errno)) : message }
}

/// Runs a system call, again while it fails with EINTR; throws FSError
/// (errno, `what`) when it fails otherwise. The one EINTR loop of the file
/// system: other calls that may be interrupted go through it.
@inline(__always)
func sys<T: BinaryInteger>(_ what: @autoclosure () -> String, _ call: () -> T) throws -> T {
    while true {
        let r = call()
        if r >= 0 { return r }
        if Glibc.errno == EINTR { continue }
        throw FSError.last(what())
    }
}

/// Full pread: reads until `count` bytes or end of file. Returns bytes read.
func preadFully(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ count: Int, _ offset: Int, _ what: @autoclosure () -> String) throws -> Int {
    var done = 0
    while done < count {
        let n = try sys(what()) { pread(fd, buf + done, count - done, off_t(offset + done)) }
        if n == 0 { break }
        done += n
    }
    return done
}

/// Full pwrite.
func pwriteFully(_ fd: Int32, _ buf: UnsafeRawPointer, _ count: Int, _ offset: Int, _ what: @autoclosure () -> String) throws {
    var done = 0
    while done < count {
        done += try sys(what()) { pwrite(fd, buf + done, count - done, off_t(offset + done)) }
    }
}
