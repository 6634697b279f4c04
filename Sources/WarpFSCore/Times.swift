#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// When reads through the mount update a file's access time (`-o noatime`,
/// `relatime`, the default, or `strictatime`), as the same mount options do
/// on a local file system.
public enum AccessTimePolicy: String, Sendable, Equatable {
    case noatime, relatime, strictatime
}

/// A file's times as the mount shows them are the times stored on the
/// backing file, with one addition: the change time.
///
/// The file system's own work on a backing file (storing blocks after the
/// application's write, dropping superseded copies, setting an access
/// time) changes the backing file's ctime, which no call can set back; and
/// with the writeback cache the kernel keeps its own ctime (the time of the
/// write) and sends it in SETATTR, where it cannot be stored either. So the
/// ctime the mount shows is kept in the extended attribute
/// `trusted.warpfs.ctime` of the backing file (16 bytes: ctime seconds and
/// nanoseconds; 16 more: the backing mtime when it was written), written
/// when the kernel sends a ctime and around maintenance that must not
/// change it. It counts while the backing mtime is still the one recorded
/// (a change of data makes the backing ctime the truth again) and, within
/// one mount, while the backing ctime is the one its own write left (any
/// other change through the mount, a chmod without the writeback cache,
/// an extended attribute, a link, shows the backing ctime). A change made
/// directly on the backing directory that leaves the mtime alone is not
/// seen. Only a mount run as root keeps it (the `trusted` namespace); the
/// name is hidden from and refused to callers.
extension WarpFileSystem {
    static let changeTimeAttribute = "trusted.warpfs.ctime"

    var keepsChangeTimes: Bool { runsAsRoot }

    /// The ctime to report for `node` whose backing stat is `st`, when the
    /// record applies.
    func recordedChangeTime(_ node: Inode, _ st: stat) -> timespec? {
        guard node.isRegular else { return nil }
        // A packed file's (an empty backing file with a reference) is in its reference.
        if st.st_size == 0 && st.st_blocks == 0, let t = packReference(node)?.changeTime {
            return timespec(tv_sec: Int(t.seconds), tv_nsec: Int(t.nanoseconds))
        }
        guard keepsChangeTimes else { return nil }
        if let mark = node.changeTimeMark, mark.tv_sec != st.st_ctim.tv_sec || mark.tv_nsec != st.st_ctim.tv_nsec { return nil }
        var raw = [Int64](repeating: 0, count: 4)
        let n = raw.withUnsafeMutableBytes { CWarpSys.getxattr(node.procPath, WarpFileSystem.changeTimeAttribute, $0.baseAddress, $0.count) }
        // A record whose nanoseconds are out of range (written by hand, or
        // restored by an archiver) is no record.
        guard n == 32, raw[2] == Int64(st.st_mtim.tv_sec), raw[3] == Int64(st.st_mtim.tv_nsec), (0..<1_000_000_000).contains(raw[1]) else {
            return nil
        }
        return timespec(tv_sec: Int(raw[0]), tv_nsec: Int(raw[1]))
    }

    /// Records `ctime` as the change time of `node`, valid for its current
    /// backing mtime, and remembers the backing ctime this write leaves.
    /// A packed file keeps it in its reference instead (a second attribute
    /// would not fit in the inode beside it).
    func recordChangeTime(_ node: Inode, _ ctime: timespec) {
        guard node.isRegular else { return }
        var st = stat()
        guard fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) == 0 else { return }
        if st.st_size == 0 && st.st_blocks == 0, setPackedChangeTime(node, ctime) { return }
        guard keepsChangeTimes else { return }
        let raw: [Int64] = [Int64(ctime.tv_sec), Int64(ctime.tv_nsec), Int64(st.st_mtim.tv_sec), Int64(st.st_mtim.tv_nsec)]
        let rc = raw.withUnsafeBytes { CWarpSys.setxattr(node.procPath, WarpFileSystem.changeTimeAttribute, $0.baseAddress, $0.count, 0) }
        guard rc == 0 else { node.changeTimeMark = nil; return }
        if fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) == 0 { node.changeTimeMark = st.st_ctim }
    }

    /// The backing ctime is the truth again (a change the mount shows as a change).
    func forgetChangeTime(_ node: Inode) {
        guard node.isRegular else { return }
        forgetPackedChangeTime(node)
        guard keepsChangeTimes else { return }
        node.changeTimeMark = nil
        _ = CWarpSys.removexattr(node.procPath, WarpFileSystem.changeTimeAttribute)
    }

    /// After a read through `h`: sets the backing atime to now when the
    /// mount's policy says a read updates it (relatime: the atime is not
    /// after the mtime or the ctime, or is a day old). The change time shown
    /// stays. Failures are ignored (the read itself succeeded).
    func touchAccessTime(_ node: Inode) {
        guard options.accessTimes != .noatime, node.isRegular else { return }
        var st = stat()
        guard fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) == 0 else { return }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if options.accessTimes == .relatime {
            // Cheapest test first: most reads find the atime after both times.
            func notAfter(_ a: timespec, _ b: timespec) -> Bool { a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec) }
            let stale = notAfter(st.st_atim, st.st_mtim) || now.tv_sec - st.st_atim.tv_sec >= 24 * 3600
                || notAfter(st.st_atim, st.st_ctim) && notAfter(st.st_atim, recordedChangeTime(node, st) ?? st.st_ctim)
            guard stale else { return }
        }
        let shown = recordedChangeTime(node, st) ?? st.st_ctim
        var times = [now, timespec(tv_sec: 0, tv_nsec: Int(WD_UTIME_OMIT))]
        guard utimensat(AT_FDCWD, node.procPath, &times, 0) == 0 else { return }
        recordChangeTime(node, shown)
    }
}
