#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// A process that reaches the device from outside this one (a `warpdrived`
/// client): its pid, the uid and gid it connected with (`SO_PEERCRED`, the
/// effective ids at `connect`), and a pidfd naming that very process for its
/// whole life, so that a pid reused after it dies names nothing of it.
public final class ClientProcess: Sendable {
    /// The client's pid at connect time.
    public let pid: pid_t
    /// The effective uid and gid it connected with.
    public let uid: uid_t
    public let gid: gid_t
    /// A pidfd for the process (`SO_PEERPIDFD`, else `pidfd_open`).
    let pidfd: Int32
    /// The pidfd's inode: one per process on pidfs (0 where unknown).
    let identity: UInt64

    /// The peer process of a connected Unix socket.
    public init(socket: Int32) throws {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        let rc = wd_peer_credentials(socket, &pid, &uid, &gid)
        guard rc == 0 else { throw WarpDriveError.system(call: "SO_PEERCRED", errno: -rc) }
        let fd = wd_peer_pidfd(socket)
        guard fd >= 0 else { throw WarpDriveError.system(call: "pidfd of pid \(pid)", errno: -fd) }
        self.pid = pid; self.uid = uid; self.gid = gid
        pidfd = fd
        identity = wd_pidfd_inode(fd)
    }

    deinit { close(pidfd) }

    /// Whether the process still exists (its pid cannot have been reused).
    public var isAlive: Bool { wd_pidfd_alive(pidfd) == 1 }
}

/// How the device reaches a bound address space outside its registered
/// regions: the in-process device's `process_vm_readv`/`writev` on a pid,
/// the same guarded by a pidfd for a client with the daemon's own
/// credentials, the client's `/proc/PID/mem` opened with the client's own
/// credentials for any other client, or not at all.
final class ProcessMemory: @unchecked Sendable {
    enum Path {
        /// `process_vm_*` on a pid of the device's own choosing (in-process).
        case local(pid_t)
        /// `process_vm_*`, only while the pidfd names a live process
        /// (before and after each copy).
        case checked(pid_t, Int32)
        /// The client's address space as it was when bound (the fd pins it:
        /// after an exec or exit every access fails).
        case file(Int32)
        /// Nothing outside registered regions is reachable.
        case refused
    }

    let path: Path
    /// Keeps the client's pidfd open while the path uses it.
    private let client: ClientProcess?

    init(local pid: pid_t) { path = .local(pid); client = nil }

    /// The daemon's own identity, taken once.
    private static let own = (ruid: getuid(), euid: geteuid(), rgid: getgid(), egid: getegid(),
                              capabilities: wd_process_has_capabilities() != 0)

    /// Chooses and opens the path for `client`. Throws when the client's
    /// address space cannot be reached with its own credentials (it is gone,
    /// or the kernel's ptrace rules refuse its user, e.g. it is not dumpable).
    init(client c: ClientProcess) throws {
        client = c
        let own = ProcessMemory.own
        let sameIDs = c.uid == own.ruid && c.uid == own.euid && c.gid == own.rgid && c.gid == own.egid
        guard c.isAlive else { throw WarpDriveError.system(call: "bind address space of pid \(c.pid)", errno: ESRCH) }
        if (c.uid == 0 && own.euid == 0) || (sameIDs && !own.capabilities) {
            // The daemon reaches no more than this client could itself.
            path = .checked(c.pid, c.pidfd)
        } else if own.euid == 0 || sameIDs {
            // Root acting for another user (or a daemon of the client's user
            // holding capabilities): open the client's memory as the client.
            let fd = wd_open_process_memory(c.pidfd, c.pid, c.uid, c.gid, sameIDs ? 0 : 1)
            guard fd >= 0 else {
                throw WarpDriveError.system(call: "open the memory of pid \(c.pid) as uid \(c.uid) gid \(c.gid)", errno: -fd)
            }
            path = .file(fd)
        } else {
            // A daemon that is not root cannot act as another user.
            path = .refused
        }
    }

    deinit { if case .file(let fd) = path { close(fd) } }

    /// Whether the path still reaches the process it was made for (a new
    /// binding of the same client may share it).
    var isCurrent: Bool {
        switch path {
        case .local: return true
        case .checked(_, let pidfd): return wd_pidfd_alive(pidfd) == 1
        // The memory may outlive the client (a CLONE_VM sibling): a new
        // process that takes the pid must not share it.
        case .file(let fd): return wd_mem_alive(fd) == 1 && (client?.isAlive ?? false)
        case .refused: return client?.isAlive ?? false
        }
    }

    /// Copies `count` bytes at `remote` into `local`. Bytes copied or -errno.
    @inline(__always)
    func read(_ local: UnsafeMutableRawPointer?, from remote: UInt64, count: Int) -> Int {
        switch path {
        case .local(let pid):
            return wd_vm_read(pid, local, UnsafeRawPointer(bitPattern: UInt(remote)), count)
        case .checked(let pid, let pidfd):
            return wd_vm_read_checked(pidfd, pid, local, UnsafeRawPointer(bitPattern: UInt(remote)), count)
        case .file(let fd):
            return wd_mem_read(fd, local, remote, count)
        case .refused:
            return -Int(EPERM)
        }
    }

    /// Copies `count` bytes from `local` to `remote`. Bytes copied or -errno.
    @inline(__always)
    func write(to remote: UInt64, _ local: UnsafeRawPointer, count: Int) -> Int {
        switch path {
        case .local(let pid):
            return wd_vm_write(pid, UnsafeMutableRawPointer(bitPattern: UInt(remote)), local, count)
        case .checked(let pid, let pidfd):
            return wd_vm_write_checked(pidfd, pid, UnsafeMutableRawPointer(bitPattern: UInt(remote)), local, count)
        case .file(let fd):
            return wd_mem_write(fd, remote, local, count)
        case .refused:
            return -Int(EPERM)
        }
    }
}
