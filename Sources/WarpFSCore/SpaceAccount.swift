#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// Backing space promised to blocks held in memory and not yet stored.
///
/// A write that makes a block dirty first reserves the most that block can
/// take in the backing file (a raw payload plus a table page); when the
/// backing file system cannot cover every reservation, the write fails with
/// `ENOSPC` before any of its data is accepted. So the file system never
/// holds more unstorable data than it promised, data already stored is never
/// touched, and once space is freed writes succeed again. A reservation ends
/// when its block is stored (the bytes it used are then counted as taken
/// until the next look at `statvfs`) or dropped.
///
/// The free space comes from `fstatvfs` on the backing directory, looked at
/// again when a reservation would not fit or after `refreshNanoseconds`.
/// Other writers to the backing file system can still take space between
/// two looks; a store that then fails keeps its block in memory and
/// reports `ENOSPC` at the next write, flush, fsync or close.
///
/// The process writes the backing files as root, but it must not give an
/// unprivileged writer what the backing file system keeps for root: a
/// reservation for a writer who is not root is checked against `f_bavail`
/// (the blocks anyone may use), one for root against `f_bfree` (which also
/// counts ext4's root-reserved blocks), as a direct write by either would be.
public final class SpaceAccount: Sendable {
    private struct State {
        var reserved = 0
        /// Bytes free for root (`f_bfree`) and for anyone (`f_bavail`) at the last look.
        var free = 0
        var available = 0
        var checkedAt: UInt64 = 0
    }
    private let state = Mutex(State())
    private let fd: Int32
    /// Space kept free for the file system's own metadata updates.
    public let margin: Int
    static let refreshNanoseconds: UInt64 = 50_000_000
    /// Whether this process's writes may use the root-reserved blocks.
    private let rootReserveUsable: Bool
    /// The largest size a file of the backing file system may have (its
    /// `s_maxbytes`, or `RLIMIT_FSIZE` when lower); nil when it could not be
    /// learnt (no `O_TMPFILE` there, or read-only). Applies to files on the
    /// device `device` only (a file system mounted inside the backing
    /// directory may have another limit).
    public let maxFileSize: Int?
    /// `st_dev` of the backing directory.
    public let device: UInt64

    /// Accounts for the file system holding `fd` (not owned), and learns its
    /// largest file size when `probe` is true.
    public init(fd: Int32, margin: Int = 256 << 10, probe: Bool = true) {
        self.fd = fd
        self.margin = margin
        var st = stat()
        device = fstat(fd, &st) == 0 ? UInt64(st.st_dev) : 0
        rootReserveUsable = SpaceAccount.mayUseRootReserve(device: device)
        let limit = probe ? wd_probe_max_file_size(fd) : -1
        maxFileSize = limit > 0 ? Int(limit) : nil
    }

    /// Whether writes of this process may use the blocks the file system on
    /// `device` keeps for root. ext4 grants them to its `resuid` (0 unless
    /// set), to members of its `resgid`, and to CAP_SYS_RESOURCE, which the
    /// mount drops (see `warpfs mount`): on a file system whose reserve
    /// belongs to another user (shown as `resuid=` in its mount options) root
    /// writers are then held to `f_bavail` too, rather than accepted data
    /// failing when stored.
    static func mayUseRootReserve(device: UInt64) -> Bool {
        guard geteuid() == 0 else { return false }
        if wd_has_effective_capability(24) == 1 { return true }     // CAP_SYS_RESOURCE
        guard let f = fopen("/proc/self/mountinfo", "r") else { return true }
        defer { fclose(f) }
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let minor = (device & 0xff) | ((device >> 12) & ~0xff)
        let id = "\(major):\(minor)"
        var line = [CChar](repeating: 0, count: 8192)
        while fgets(&line, Int32(line.count), f) != nil {
            let text = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 2, fields[2] == id, let dash = fields.firstIndex(of: "-"), dash + 3 < fields.count else { continue }
            var owner: (uid: UInt32?, gid: UInt32?) = (nil, nil)
            for option in fields[dash + 3].split(separator: ",") {
                if option.hasPrefix("resuid=") { owner.uid = UInt32(option.dropFirst(7).trimmingSuffix()) }
                if option.hasPrefix("resgid=") { owner.gid = UInt32(option.dropFirst(7).trimmingSuffix()) }
            }
            guard let uid = owner.uid, uid != 0 else { return true }
            guard let gid = owner.gid, gid != 0 else { return false }
            var groups = [gid_t](repeating: 0, count: 256)
            let n = getgroups(Int32(groups.count), &groups)
            return getegid() == gid || (n > 0 && groups[0..<Int(n)].contains(gid))
        }
        return true
    }

    private func look(_ s: inout State) {
        var st = statvfs()
        guard fstatvfs(fd, &st) == 0 else { return }
        s.free = Int(clamping: st.f_bfree) &* Int(st.f_frsize)
        s.available = Int(clamping: st.f_bavail) &* Int(st.f_frsize)
        s.checkedAt = wd_now_ns()
    }

    /// Reserves `bytes` for a writer who is root (`privileged`) or not;
    /// false when the backing file system cannot cover it for that writer.
    public func reserve(_ bytes: Int, privileged: Bool = true) -> Bool {
        let rootBlocks = privileged && rootReserveUsable
        return state.withLock { s in
            func room(_ s: State) -> Int { (rootBlocks ? s.free : s.available) - margin }
            if s.reserved + bytes > room(s) || wd_now_ns() - s.checkedAt > SpaceAccount.refreshNanoseconds { look(&s) }
            guard s.reserved + bytes <= room(s) else { return false }
            s.reserved += bytes
            return true
        }
    }

    /// Ends a reservation of `bytes`, of which `used` were written to the backing file.
    public func release(_ bytes: Int, used: Int = 0) {
        state.withLock { s in
            s.reserved = max(0, s.reserved - bytes)
            s.free -= used
            s.available -= used
        }
    }

    /// Bytes reserved and bytes free (for root, or for anyone) at the last look, for messages.
    public func snapshot(privileged: Bool = true) -> (reserved: Int, free: Int) {
        let rootBlocks = privileged && rootReserveUsable
        return state.withLock { ($0.reserved, rootBlocks ? $0.free : $0.available) }
    }
}

private extension Substring {
    /// Without a trailing newline.
    func trimmingSuffix() -> Substring { last == "\n" ? dropLast() : self }
}
