#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpFSCore

/// POSIX ACLs through a real mount, checked as a real unprivileged user.
/// The oracle is the backing file system itself: every step is done both
/// through the mount and on a directory of the backing file system (same
/// ext4 or tmpfs, no FUSE), and `getfacl`, the mode and what the user may
/// do must come out the same.
@Suite(.serialized) struct ACLTests {
    static let getfaclPath = "/usr/bin/getfacl"
    static let setfaclPath = "/usr/bin/setfacl"

    /// The ACL as `getfacl` prints it (numeric ids, no header).
    static func getfacl(_ path: String) -> String {
        let r = runCommand([getfaclPath, "--omit-header", "--numeric", "--absolute-names", path])
        return r.status == 0 ? r.output : "getfacl failed (\(r.status)): \(r.output)"
    }

    static func setfacl(_ args: [String]) -> (status: Int32, output: String) {
        runCommand([setfaclPath] + args)
    }

    static func mode(_ path: String) -> mode_t { ((try? FileIO.stat(path))?.st_mode ?? 0) & 0o7777 }

    /// A mount other users may use, a backing-file-system directory to
    /// compare with, both reachable by `user`.
    static func withACLMount(options: String = "allow_other", _ body: (TestMount, String, TestUser) throws -> Void) throws {
        let user = try TestUser.ensure()
        try withMount(options: options) { m in
            let oracle = m.root + "/oracle"
            #expect(mkdir(oracle, 0o755) == 0)
            openPathForOthers(m.root)
            try body(m, oracle, user)
        }
    }

    /// An access ACL entry for the user on a root-owned 0600 file lets the
    /// user read it; the mask shows in the group bits; a mask of `---`,
    /// removing the entry, and chmod (which rewrites the mask) deny it again.
    @Test func accessACLGrantsAndTheMaskLimits() throws {
        try Self.withACLMount { m, oracle, user in
            let bases = [m.mountpoint, oracle]
            for b in bases {
                try FileIO.write(b + "/secret", Array("s3cret".utf8), mode: 0o600)
                #expect(chmod(b + "/secret", 0o600) == 0)
            }
            let steps: [(what: String, change: [String], readable: Bool, mode: mode_t)] = [
                ("no ACL", [], false, 0o600),
                ("grant user r", ["setfacl", "-m", "u:\(user.name):r"], true, 0o640),
                ("mask ---", ["setfacl", "-m", "m::---"], false, 0o600),
                ("mask r", ["setfacl", "-m", "m::r"], true, 0o640),
                ("chmod 0600", ["chmod", "0600"], false, 0o600),
                ("chmod 0640", ["chmod", "0640"], true, 0o640),
                ("remove the entry", ["setfacl", "-x", "u:\(user.name)"], false, 0o600),
                ("grant again", ["setfacl", "-m", "u:\(user.name):rw"], true, 0o660),
                ("remove all", ["setfacl", "-b"], false, 0o600),
            ]
            for step in steps {
                for b in bases {
                    let p = b + "/secret"
                    switch step.change.first {
                    case "setfacl"?:
                        let r = Self.setfacl(Array(step.change.dropFirst()) + [p])
                        #expect(r.status == 0, "\(step.what) on \(p): \(r.output)")
                    case "chmod"?:
                        #expect(chmod(p, mode_t(step.change[1], radix: 8)!) == 0, "\(step.what) on \(p)")
                    default: break
                    }
                }
                let (through, direct) = (m.path("secret"), oracle + "/secret")
                #expect(Self.getfacl(through) == Self.getfacl(direct), "\(step.what): the ACL differs from the backing file system's")
                #expect(Self.mode(through) == step.mode && Self.mode(direct) == step.mode,
                        "\(step.what): mode \(String(Self.mode(through), radix: 8)) through the mount, \(String(Self.mode(direct), radix: 8)) on the backing file system, \(String(step.mode, radix: 8)) expected")
                for p in [through, direct] {
                    let r = user.run(["/bin/cat", p])
                    #expect((r.status == 0 && r.output == "s3cret") == step.readable,
                            "\(step.what): \(user.name) reading \(p): \(r.status) \(r.output)")
                }
            }
            // The ACL lives in the backing file's attribute.
            #expect(Self.setfacl(["-m", "u:\(user.name):r", m.path("secret")]).status == 0)
            #expect(Self.getfacl(m.backingPath("secret")) == Self.getfacl(m.path("secret")))
        }
    }

    /// A default ACL on a directory is inherited by a new file, a new
    /// subdirectory (which also gets the default ACL, and passes it on), a
    /// FIFO; the creator's umask (077) is not applied when the parent has a
    /// default ACL, and is applied when it has none.
    @Test func defaultACLIsInheritedAndReplacesTheUmask() throws {
        try Self.withACLMount { m, oracle, user in
            let bases = [m.mountpoint, oracle]
            for b in bases {
                let shared = b + "/shared", plain = b + "/plain"
                #expect(mkdir(shared, 0o755) == 0 && mkdir(plain, 0o755) == 0)
                #expect(chmod(shared, 0o755) == 0 && chmod(plain, 0o755) == 0)
                for (args, path) in [(["-m", "u:\(user.name):rwx"], shared), (["-d", "-m", "u::rwx,g::r-x,o::r--,u:\(user.name):rwx"], shared),
                                     (["-m", "u:\(user.name):rwx"], plain)] {
                    let r = Self.setfacl(args + [path])
                    #expect(r.status == 0, "setfacl \(args) \(path): \(r.output)")
                }
                // The access entry on the directory is what lets the user create in it.
                let made = user.shell("cd \(shared) && echo hi > f && mkdir sub && mkdir sub/deeper && echo x > sub/g && mkfifo p", umask: "077")
                #expect(made.status == 0, "creating under \(shared) as \(user.name): \(made.output)")
                let madePlain = user.shell("cd \(plain) && echo hi > f && mkdir d && mkfifo p", umask: "027")
                #expect(madePlain.status == 0, "creating under \(plain) as \(user.name): \(madePlain.output)")
            }
            for name in ["shared", "shared/f", "shared/sub", "shared/sub/deeper", "shared/sub/g", "shared/p", "plain/f", "plain/d", "plain/p"] {
                let (through, direct) = (m.path(name), oracle + "/" + name)
                #expect(Self.getfacl(through) == Self.getfacl(direct),
                        "\(name): ACL through the mount:\n\(Self.getfacl(through))\non the backing file system:\n\(Self.getfacl(direct))")
                #expect(Self.mode(through) == Self.mode(direct),
                        "\(name): mode \(String(Self.mode(through), radix: 8)) through the mount, \(String(Self.mode(direct), radix: 8)) on the backing file system")
            }
            // What ext4 gives (the numbers the oracle above stands for):
            // umask 077 ignored, group bits are the mask (rw- for a file, rwx for a directory).
            #expect(Self.mode(m.path("shared/f")) == 0o664)
            #expect(Self.mode(m.path("shared/sub")) == 0o774)
            #expect(Self.getfacl(m.path("shared/sub")).contains("default:user:\(user.uid):rwx"))
            #expect(Self.getfacl(m.path("shared/sub/deeper")).contains("default:user:\(user.uid):rwx"))
            #expect(Self.getfacl(m.path("shared/f")).contains("user:\(user.uid):rwx\t#effective:rw-"))
            // Without a default ACL the umask (027) applies.
            #expect(Self.mode(m.path("plain/f")) == 0o640)
            #expect(Self.mode(m.path("plain/d")) == 0o750)
            // The inherited entry is enforced: the user may write the new file
            // through the named entry even after it is given to root.
            #expect(chown(m.path("shared/f"), 0, 0) == 0)
            let w = user.shell("echo more >> \(m.path("shared/f"))")
            #expect(w.status == 0, "\(w.output)")
        }
    }

    /// Setting an access ACL on a set-group-ID file whose group the caller
    /// is not in drops the set-group-ID bit, as ext4 does (the kernel leaves
    /// it to the file system: FUSE_SETXATTR_ACL_KILL_SGID needs a protocol
    /// extension libfuse 3.14 does not offer). A caller in the group keeps it.
    @Test func aclSetByANonMemberDropsSetGID() throws {
        try Self.withACLMount { m, oracle, user in
            let other = try TestUser.ensureGroup("warpfs-acl-other")
            for b in [m.mountpoint, oracle] {
                for (name, group) in [("foreign", other), ("own", user.gid)] {
                    let p = b + "/" + name
                    try FileIO.write(p, [1], mode: 0o755)
                    #expect(chown(p, user.uid, group) == 0 && chmod(p, 0o2755) == 0)
                    let r = user.run([Self.setfaclPath, "-m", "u:nobody:r", p])
                    #expect(r.status == 0, "setfacl as \(user.name) on \(p): \(r.output)")
                }
            }
            for name in ["foreign", "own"] {
                #expect(Self.mode(m.path(name)) == Self.mode(oracle + "/" + name),
                        "\(name): mode \(String(Self.mode(m.path(name)), radix: 8)) through the mount, \(String(Self.mode(oracle + "/" + name), radix: 8)) on the backing file system")
            }
            #expect(Self.mode(m.path("foreign")) & S_ISGID == 0)
            #expect(Self.mode(m.path("own")) & S_ISGID != 0)
        }
    }

    /// `-o noacl`: ACLs are neither enforced nor stored; setting one fails
    /// with EOPNOTSUPP (as on ext4 mounted with noacl), reading one finds none.
    @Test func noaclRefusesACLs() throws {
        try Self.withACLMount(options: "allow_other,noacl") { m, _, user in
            let p = m.path("f")
            try FileIO.write(p, Array("data".utf8), mode: 0o600)
            let r = Self.setfacl(["-m", "u:\(user.name):r", p])
            #expect(r.status != 0 && r.output.contains("Operation not supported"), "setfacl on a noacl mount: \(r.status) \(r.output)")
            // The raw attribute too (version 2, user::rw- group::--- other::---).
            var acl: [UInt8] = [2, 0, 0, 0]
            for (tag, perm) in [(0x01, 6), (0x04, 0), (0x20, 0)] as [(UInt16, UInt16)] {
                acl += withUnsafeBytes(of: tag.littleEndian, Array.init) + withUnsafeBytes(of: perm.littleEndian, Array.init)
                acl += [0xff, 0xff, 0xff, 0xff]
            }
            #expect(setxattr(p, "system.posix_acl_access", acl, acl.count, 0) == -1 && errno == EOPNOTSUPP)
            #expect(setxattr(m.path(""), "system.posix_acl_default", acl, acl.count, 0) == -1 && errno == EOPNOTSUPP)
            var buf = [UInt8](repeating: 0, count: 256)
            #expect(getxattr(p, "system.posix_acl_access", &buf, buf.count) == -1)
            #expect(Self.getfacl(m.backingPath("f")) == "user::rw-\ngroup::---\nother::---\n\n")
            // Plain mode permissions still hold.
            #expect(user.run(["/bin/cat", p]).status != 0)
            #expect(chmod(p, 0o644) == 0)
            #expect(user.run(["/bin/cat", p]).output == "data")
            // An ACL already in a backing file is neither shown nor enforced.
            try FileIO.write(m.backingPath("g"), Array("data".utf8), mode: 0o600)
            #expect(chmod(m.backingPath("g"), 0o600) == 0)
            #expect(Self.setfacl(["-m", "u:\(user.name):r", m.backingPath("g")]).status == 0)
            let size = listxattr(m.path("g"), nil, 0)
            var names = [CChar](repeating: 0, count: max(size, 1))
            #expect(size == 0 && listxattr(m.path("g"), &names, names.count) == 0)
            #expect(Self.getfacl(m.path("g")) == "user::rw-\ngroup::r--\nother::---\n\n")
            #expect(user.run(["/bin/cat", m.path("g")]).status != 0)
        }
    }

    /// The creation mode as the kernel's posix_acl_create_masq computes it,
    /// and the attribute format.
    @Test func creationModeAndFormat() throws {
        typealias E = PosixACL.Entry
        let noMask = PosixACL(entries: [E(.userObj, 7), E(.groupObj, 5), E(.other, 0)])
        #expect(noMask.creationMode(S_IFREG | 0o666) == S_IFREG | 0o640)
        let masked = PosixACL(entries: [E(.userObj, 6), E(.user, 7, id: 1000), E(.groupObj, 7), E(.mask, 4), E(.other, 4)])
        #expect(masked.creationMode(S_IFDIR | 0o777) == S_IFDIR | 0o644)
        #expect(masked.creationMode(S_IFREG | 0o600) == S_IFREG | 0o600)
        let open = PosixACL(entries: [E(.userObj, 7), E(.groupObj, 7), E(.other, 7)])
        #expect(open.creationMode(S_IFDIR | 0o2777) == S_IFDIR | 0o2777)
        #expect(open.creationMode(S_IFIFO | 0o640) == S_IFIFO | 0o640)
        // Round trip, and what is not an ACL.
        let bytes = masked.xattr
        #expect(bytes.count == 4 + 5 * 8 && bytes.prefix(4) == [2, 0, 0, 0])
        #expect(bytes.withUnsafeBytes { PosixACL(xattr: $0) } == masked)
        #expect([UInt8]([1, 0, 0, 0]).withUnsafeBytes { PosixACL(xattr: $0) } == nil)
        #expect(Array(bytes.dropLast()).withUnsafeBytes { PosixACL(xattr: $0) } == nil)
        var badTag = bytes
        badTag[4] = 0x40
        #expect(badTag.withUnsafeBytes { PosixACL(xattr: $0) } == nil)
    }

    /// A backing file system without ACL support (ramfs: no extended
    /// attributes at all): the kernel's ACL look-ups find none (they must not
    /// fail every access check), the umask applies, and setting an ACL fails
    /// with EOPNOTSUPP.
    @Test func backingWithoutACLSupport() throws {
        let backing = try RamFS()
        defer { backing.close() }
        let user = try TestUser.ensure()
        #expect(chmod(backing.path, 0o755) == 0)
        let m = try TestMount(options: "allow_other", backing: backing.path)
        defer { m.close() }
        openPathForOthers(m.root)
        try FileIO.write(m.path("f"), Array("data".utf8), mode: 0o644)
        #expect(chmod(m.path("f"), 0o644) == 0)
        #expect(mkdir(m.path("d"), 0o777) == 0 && chmod(m.path("d"), 0o777) == 0)
        let r = user.run(["/bin/cat", m.path("f")])
        #expect(r.status == 0 && r.output == "data", "reading a 0644 file: \(r.output)")
        let made = user.shell("cd \(m.path("d")) && echo x > new && mkdir sub", umask: "027")
        #expect(made.status == 0, "\(made.output)")
        #expect(Self.mode(m.path("d/new")) == 0o640 && Self.mode(m.path("d/sub")) == 0o750)
        let s = Self.setfacl(["-m", "u:\(user.name):r", m.path("f")])
        #expect(s.status != 0 && s.output.contains("Operation not supported"), "\(s.output)")
        #expect(Self.getfacl(m.path("f")) == "user::rw-\ngroup::r--\nother::r--\n\n")
    }

    /// A ramfs on a fresh directory, unmounted and removed by `close`.
    final class RamFS {
        let path: String
        init() throws {
            path = makeTempDir("warpfs-ramfs")
            let r = runCommand(["/bin/mount", "-t", "ramfs", "ramfs", path])
            guard r.status == 0 else { removeTree(path); throw Errno(EIO, "mount ramfs: \(r.output)") }
        }
        func close() {
            if runCommand(["/bin/umount", path]).status != 0 { _ = runCommand(["/bin/umount", "-l", path]) }
            removeTree(path)
        }
    }
}
