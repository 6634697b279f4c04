#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// An OFD record lock (`F_OFD_SETLK`) on a byte range of a backing file:
/// owned by the open file description, released when its last descriptor
/// closes (also when the process dies), and enforced across clients by a
/// distributed file system that has POSIX locks (GlusterFS). The one place
/// the project takes one: the cross-host writer lock of `-o shared`, the
/// pack's cross-host lock and the packing lock.
struct RecordLock {
    /// `F_OFD_SETLK` (Glibc does not export the GNU constant).
    static let setCommand: Int32 = 37

    let fd: Int32
    /// The range: `start` and `length` (0: to the end of the file and beyond).
    let start: off_t
    let length: off_t

    init(_ fd: Int32, start: off_t = 0, length: off_t = 0) {
        self.fd = fd; self.start = start; self.length = length
    }

    /// Why a `take` did not get the lock.
    enum Refusal: Error {
        /// Held by another open file description past the deadline.
        case held
        /// The file system refuses record locks (errno).
        case unsupported(Int32)
    }

    /// Takes it (`exclusive`: a write lock, else a read lock), polling
    /// every `poll` seconds for up to `timeout` while another holder has
    /// it; `waiting` is called once, when the first try finds it held.
    func take(exclusive: Bool, timeout: Double = 0, poll: Double = 0.005, waiting: () -> Void = {}) -> Result<Void, Refusal> {
        var lock = flock()
        lock.l_type = Int16(exclusive ? F_WRLCK : F_RDLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = start
        lock.l_len = length
        let deadline = wd_now_ns() + UInt64(max(0, timeout) * 1e9)
        var told = false
        while fcntl(fd, RecordLock.setCommand, &lock) != 0 {
            let e = errno
            if e == EINTR { continue }
            guard e == EAGAIN || e == EACCES else { return .failure(.unsupported(e)) }
            guard wd_now_ns() < deadline else { return .failure(.held) }
            if !told { waiting(); told = true }
            usleep(useconds_t(poll * 1e6))
        }
        return .success(())
    }

    /// Gives it back (explicitly: a FUSE-based file system releases a
    /// closed descriptor's locks only later).
    func release() {
        var unlock = flock()
        unlock.l_type = Int16(F_UNLCK)
        unlock.l_whence = Int16(SEEK_SET)
        unlock.l_start = start
        unlock.l_len = length
        _ = fcntl(fd, RecordLock.setCommand, &unlock)
    }
}
