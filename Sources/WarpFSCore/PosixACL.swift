#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// A POSIX ACL as Linux keeps it in the `system.posix_acl_access` and
/// `system.posix_acl_default` extended attributes: a little-endian 4-byte
/// header (version 2), then 8-byte entries (tag u16, permissions u16, id u32).
///
/// WarpFS stores ACLs in the backing object's attributes, so the backing
/// file system (ext4, xfs, btrfs, tmpfs) interprets them as it does for its
/// own files: setting an access ACL updates the mode, chmod rewrites the
/// mask, and a node created under a directory with a default ACL inherits it.
/// The kernel enforces them on the mount (FUSE_CAP_POSIX_ACL). What is left
/// to WarpFS is the creation mode: with FUSE_CAP_DONT_MASK the kernel sends
/// the mode unmasked with the caller's umask beside it, and the umask applies
/// only where the parent has no default ACL (`WarpFileSystem.creationMode`).
public struct PosixACL: Equatable, Sendable {
    public static let accessName = "system.posix_acl_access"
    public static let defaultName = "system.posix_acl_default"
    static let version: UInt32 = 2

    /// Entry tags (`<linux/posix_acl.h>`).
    public enum Tag: UInt16, Sendable {
        case userObj = 0x01, user = 0x02, groupObj = 0x04, group = 0x08, mask = 0x10, other = 0x20
    }

    public struct Entry: Equatable, Sendable {
        public var tag: Tag
        public var perm: UInt16
        public var id: UInt32
        public init(_ tag: Tag, _ perm: UInt16, id: UInt32 = UInt32.max) { self.tag = tag; self.perm = perm; self.id = id }
    }

    public var entries: [Entry]

    public init(entries: [Entry]) { self.entries = entries }

    /// Whether `name` is one of the two ACL attributes.
    public static func isACL(_ name: String) -> Bool { name == accessName || name == defaultName }

    /// Parses the attribute's bytes; nil when they are not a version 2 ACL.
    public init?(xattr bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= 4, (bytes.count - 4) % 8 == 0 else { return nil }
        func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> UInt32 { UInt32(u16(at)) | UInt32(u16(at + 2)) << 16 }
        guard u32(0) == PosixACL.version else { return nil }
        var list: [Entry] = []
        var at = 4
        while at < bytes.count {
            guard let tag = Tag(rawValue: u16(at)) else { return nil }
            list.append(Entry(tag, u16(at + 2) & 7, id: u32(at + 4)))
            at += 8
        }
        entries = list
    }

    /// The attribute's bytes.
    public var xattr: [UInt8] {
        var out: [UInt8] = [2, 0, 0, 0]
        for e in entries {
            out += [UInt8(e.tag.rawValue & 0xff), UInt8(e.tag.rawValue >> 8), UInt8(e.perm & 0xff), UInt8(e.perm >> 8)]
            out += [UInt8(e.id & 0xff), UInt8((e.id >> 8) & 0xff), UInt8((e.id >> 16) & 0xff), UInt8(e.id >> 24)]
        }
        return out
    }

    /// The mode of a node created with `mode` under a directory whose
    /// default ACL this is, as the kernel's `posix_acl_create_masq` computes
    /// it (and so as the backing file system will): the owner and other
    /// bits are those of the ACL limited by `mode`, the group bits those of
    /// the mask entry (or, without one, the owning group's entry) limited by
    /// `mode`. The file type and the set-id and sticky bits pass unchanged;
    /// the umask plays no part.
    public func creationMode(_ mode: mode_t) -> mode_t {
        let bits = UInt16(truncatingIfNeeded: mode & 0o777)
        var owner = bits >> 6 & 7, group = bits >> 3 & 7, other = bits & 7
        var groupObj: UInt16?, mask: UInt16?
        for e in entries {
            switch e.tag {
            case .userObj: owner &= e.perm
            case .other: other &= e.perm
            case .groupObj: groupObj = e.perm
            case .mask: mask = e.perm
            case .user, .group: break
            }
        }
        group &= mask ?? groupObj ?? 7
        return mode & ~0o777 | mode_t(owner << 6 | group << 3 | other)
    }
}

extension WarpFileSystem {
    /// What the kernel granted at FUSE init (bits of `aclState`).
    private static let aclsOn: UInt8 = 1, umaskHere: UInt8 = 2

    /// Called by the FUSE adapter at init with what the kernel granted:
    /// `posixACL` (the kernel enforces ACLs, FUSE_CAP_POSIX_ACL) and
    /// `dontMask` (the kernel leaves the umask to us, FUSE_CAP_DONT_MASK).
    public func kernelGranted(posixACL: Bool, dontMask: Bool) {
        aclState.store((posixACL ? Self.aclsOn : 0) | (dontMask ? Self.umaskHere : 0), ordering: .releasing)
        guard options.posixACL else { return }
        guard posixACL else {
            Log.warning("the kernel offers FUSE no POSIX ACL support: ACLs are off on this mount (setting one fails with EOPNOTSUPP)")
            return
        }
        var probe = [UInt8](repeating: 0, count: 1)
        if CWarpSys.getxattr(inodes.root.procPath, PosixACL.accessName, &probe, 0) < 0 && errno == EOPNOTSUPP {
            Log.info("the backing file system at \(backingPath) keeps no POSIX ACLs: none apply, and setting one fails with EOPNOTSUPP")
        }
    }

    /// Whether ACLs are enforced on this mount: asked for (not `-o noacl`)
    /// and granted by the kernel.
    public var aclsEnforced: Bool { aclState.load(ordering: .acquiring) & Self.aclsOn != 0 }

    /// ACL attributes on a mount without ACLs: EOPNOTSUPP, as ext4 mounted
    /// `noacl` answers (stored, they would have no effect).
    func refuseACLIfOff(_ name: String) throws {
        if PosixACL.isACL(name) && !aclsEnforced {
            throw FSError(EOPNOTSUPP, "\(name): POSIX ACLs are off on this mount")
        }
    }

    /// The mode to create a node with, from the mode and umask the kernel
    /// sent. With FUSE_CAP_DONT_MASK the kernel no longer applies the umask:
    /// as ext4 (`posix_acl_create`), a parent with a default ACL sets the
    /// permission bits from that ACL and `mode` and the umask is ignored;
    /// otherwise the umask applies. Without it, `mode` is already masked.
    /// The backing file system then creates the node with this mode and
    /// copies the default ACL itself (to the access ACL, and for a directory
    /// to its default ACL too), giving the same bits.
    public func creationMode(parent: UInt64, mode: mode_t, umask: mode_t) -> mode_t {
        guard aclState.load(ordering: .acquiring) & Self.umaskHere != 0 else { return mode }
        if mode & S_IFMT != S_IFLNK, let p = inodes.get(parent), let acl = defaultACL(p) {
            return acl.creationMode(mode)
        }
        return mode & ~(umask & 0o777)
    }

    /// After `caller` set an access ACL: a caller neither in the node's
    /// group nor root makes it lose the set-group-ID bit, as on ext4
    /// (posix_acl_update_mode). The kernel would tell us with
    /// FUSE_SETXATTR_ACL_KILL_SGID, which libfuse 3.14 cannot negotiate,
    /// and the backing file system sees only WarpFS, which is root. Root
    /// stands for CAP_FSETID, which the request does not carry.
    public func accessACLWasSet(_ id: UInt64, caller: Caller, groups: [gid_t]) {
        guard aclsEnforced, caller.uid != 0, let node = inodes.get(id) else { return }
        var st = stat()
        guard fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_ISGID != 0,
              st.st_gid != caller.gid, !groups.contains(st.st_gid) else { return }
        if fchmodat(AT_FDCWD, node.procPath, st.st_mode & 0o7777 & ~S_ISGID, 0) != 0 {
            Log.warning("\(displayName(node)): dropping set-group-ID after an ACL change: \(String(cString: strerror(errno)))")
        }
    }

    /// A directory's default ACL, nil when it has none (or the backing file
    /// system keeps none).
    func defaultACL(_ dir: Inode) -> PosixACL? {
        guard dir.isDirectory else { return nil }
        var buf = [UInt8](repeating: 0, count: 4096)
        var n = CWarpSys.getxattr(dir.procPath, PosixACL.defaultName, &buf, buf.count)
        if n < 0 && errno == ERANGE {
            let size = CWarpSys.getxattr(dir.procPath, PosixACL.defaultName, nil, 0)
            guard size > 0 else { return nil }
            buf = [UInt8](repeating: 0, count: size)
            n = CWarpSys.getxattr(dir.procPath, PosixACL.defaultName, &buf, buf.count)
        }
        guard n > 0 else { return nil }
        guard let acl = buf.withUnsafeBytes({ PosixACL(xattr: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) else {
            Log.warning("\(displayName(dir)): \(PosixACL.defaultName) is not a version 2 ACL; new nodes in it get the umask")
            return nil
        }
        return acl
    }
}
