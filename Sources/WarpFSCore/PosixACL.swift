#if canImport(Glibc)
import Glibc
#endif

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
