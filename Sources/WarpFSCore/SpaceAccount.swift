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
public final class SpaceAccount: Sendable {
    private struct State {
        var reserved = 0
        var free = 0
        var checkedAt: UInt64 = 0
    }
    private let state = Mutex(State())
    private let fd: Int32
    /// Space kept free for the file system's own metadata updates.
    public let margin: Int
    static let refreshNanoseconds: UInt64 = 50_000_000

    /// Accounts for the file system holding `fd` (not owned).
    public init(fd: Int32, margin: Int = 256 << 10) {
        self.fd = fd
        self.margin = margin
    }

    private func look(_ s: inout State) {
        var st = statvfs()
        guard fstatvfs(fd, &st) == 0 else { return }
        // Root may use the blocks ext4 reserves for it; others may not.
        let blocks = geteuid() == 0 ? st.f_bfree : st.f_bavail
        s.free = Int(clamping: blocks) &* Int(st.f_frsize)
        s.checkedAt = wd_now_ns()
    }

    /// Reserves `bytes`; false when the backing file system cannot cover it.
    public func reserve(_ bytes: Int) -> Bool {
        state.withLock { s in
            if s.reserved + bytes > s.free - margin || wd_now_ns() - s.checkedAt > SpaceAccount.refreshNanoseconds { look(&s) }
            guard s.reserved + bytes <= s.free - margin else { return false }
            s.reserved += bytes
            return true
        }
    }

    /// Ends a reservation of `bytes`, of which `used` were written to the backing file.
    public func release(_ bytes: Int, used: Int = 0) {
        state.withLock { s in
            s.reserved = max(0, s.reserved - bytes)
            s.free -= used
        }
    }

    /// Bytes reserved and bytes free at the last look, for messages.
    public var snapshot: (reserved: Int, free: Int) { state.withLock { ($0.reserved, $0.free) } }
}
