#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// Set-user-ID and set-group-ID bits dropped by a change of a file's
/// content, as the kernel drops them for a direct call
/// (`setattr_should_drop_suidgid`, Linux 6.x): a caller without CAP_FSETID
/// who writes, truncates or allocates in a regular file loses S_ISUID, and
/// S_ISGID when the group may execute (S_IXGRP) or the caller is not in the
/// file's group. (S_ISGID without S_IXGRP is a mandatory-locking mark a
/// member of the group keeps.)
///
/// The FUSE kernel module does part of this itself and gets the rest
/// wrong: before a write, truncate or fallocate it sends a SETATTR of the
/// mode with its own older rule (S_ISUID; S_ISGID only with S_IXGRP), and
/// nothing at all when that rule finds nothing to clear; an `open` with
/// O_TRUNC (atomic in the file system) sends nothing. So the file system
/// finishes the job where it hears of the change with the caller's
/// credentials: the SETATTR itself, truncation, fallocate, O_TRUNC, and a
/// write the caller sends (without the writeback cache, or O_DIRECT). A
/// buffered write through the writeback cache reaches the file system later
/// as the kernel's write-back, without the writer: for S_ISGID without
/// S_IXGRP (no S_ISUID) nothing tells the file system a write happened, and
/// the bit stays (see docs/ARCHITECTURE.md).
struct CallerCredentials {
    /// CAP_FSETID in the effective set.
    let mayKeepSetID: Bool
    let groups: [gid_t]

    /// The credentials of `caller`, from /proc (the request names the
    /// thread). Root by uid counts as capable without a look; a caller whose
    /// status cannot be read (gone) is taken by its uid and primary group.
    init(_ caller: WarpFileSystem.Caller) {
        if caller.uid == 0 { mayKeepSetID = true; groups = [caller.gid]; return }
        var capable = false
        var groups = [caller.gid]
        if caller.pid > 0, let f = fopen("/proc/\(caller.pid)/status", "r") {
            defer { fclose(f) }
            var line = [CChar](repeating: 0, count: 4096)
            while fgets(&line, Int32(line.count), f) != nil {
                let text = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if text.hasPrefix("CapEff:") {
                    let hex = text.dropFirst(7).trimmingCharacters()
                    capable = (UInt64(hex, radix: 16) ?? 0) & (1 << 4) != 0      // CAP_FSETID
                } else if text.hasPrefix("Groups:") {
                    groups += text.dropFirst(7).split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { gid_t($0) }
                }
            }
        }
        mayKeepSetID = capable
        self.groups = groups
    }

    /// The set-ID bits of `mode` (a regular file of group `gid`) that a
    /// change of its content by this caller drops.
    func setIDBitsDropped(mode: mode_t, gid: gid_t) -> mode_t {
        guard mode & S_IFMT == S_IFREG, !mayKeepSetID else { return 0 }
        var bits = mode & S_ISUID
        if mode & S_ISGID != 0 && (mode & S_IXGRP != 0 || !groups.contains(gid)) { bits |= S_ISGID }
        return bits
    }

    /// Whether S_ISGID may stay in a mode this caller sets on a file of group `gid`.
    func mayKeepSetGroupID(gid: gid_t) -> Bool { mayKeepSetID || groups.contains(gid) }
}

extension WarpFileSystem {
    /// Drops the set-ID bits a change of `node`'s content by `caller` drops
    /// (nothing for root, for files without set-ID bits, or with no caller).
    func dropSetIDBits(_ node: Inode, caller: Caller?) throws {
        guard let caller, caller.uid != 0, node.isRegular else { return }
        var st = stat()
        _ = try sys("stat node \(node.nodeID)") { fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) }
        guard st.st_mode & (S_ISUID | S_ISGID) != 0 else { return }
        let bits = CallerCredentials(caller).setIDBitsDropped(mode: st.st_mode, gid: st.st_gid)
        guard bits != 0 else { return }
        _ = try sys("chmod \(displayName(node))") { fchmodat(AT_FDCWD, node.procPath, st.st_mode & 0o7777 & ~bits, 0) }
    }
}

private extension Substring {
    func trimmingCharacters() -> String { String(filter { !$0.isWhitespace }) }
}
