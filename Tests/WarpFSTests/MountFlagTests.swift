#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// `nosuid` and `nodev` by default; root may ask for `suid` and `dev`, and
/// then set-user-ID programs and device files on the mount work.
@Suite(.serialized) struct MountFlagTests {
    /// The mount options the kernel shows for `path` in /proc/self/mountinfo.
    static func mountFlags(_ path: String) throws -> Set<String> {
        let info = String(decoding: try FileIO.read("/proc/self/mountinfo"), as: UTF8.self)
        for line in info.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 5 && fields[4] == path { return Set(fields[5].split(separator: ",").map(String.init)) }
        }
        throw Errno(ENOENT, "\(path) in mountinfo")
    }

    @Test(arguments: ["allow_other", "allow_other,nosuid", "allow_other,suid"])
    func setUserIDProgram(_ options: String) throws {
        let user = try TestUser.ensure()
        try withMount(options: options) { m in
            let honoured = options.hasSuffix(",suid")
            let flags = try Self.mountFlags(m.mountpoint)
            #expect(flags.contains("nosuid") != honoured, "\(flags)")
            openPathForOthers(m.mountpoint)
            // A set-user-ID-root copy of id(1), stored compressed like any file.
            try FileIO.write(m.path("id"), try FileIO.read("/usr/bin/id"), mode: 0o755)
            #expect(chown(m.path("id"), 0, 0) == 0)
            #expect(chmod(m.path("id"), 0o4755) == 0)
            #expect(try FileIO.stat(m.path("id")).st_mode & 0o7777 == 0o4755)
            let r = user.run([m.path("id")])
            #expect(r.status == 0, "\(r.output)")
            #expect(r.output.contains("uid=\(user.uid)"), "\(r.output)")
            #expect(r.output.contains("euid=0(") == honoured, "with -o \(options): \(r.output)")
        }
    }

    @Test(arguments: ["", "nodev", "dev"])
    func deviceFile(_ options: String) throws {
        try withMount(options: options) { m in
            let honoured = options == "dev"
            let flags = try Self.mountFlags(m.mountpoint)
            #expect(flags.contains("nodev") != honoured, "\(flags)")
            // /dev/null's numbers: character device 1:3.
            #expect(mknod(m.path("null"), S_IFCHR | 0o666, dev_t(1 << 8 | 3)) == 0)
            let fd = open(m.path("null"), O_WRONLY | O_CLOEXEC)
            let openErrno = errno
            if honoured {
                #expect(fd >= 0, "open: \(String(cString: strerror(openErrno)))")
                #expect("discarded".withCString { write(fd, $0, 9) } == 9)
            } else {
                #expect(fd < 0 && openErrno == EACCES, "open gave fd \(fd), errno \(openErrno)")
            }
            if fd >= 0 { close(fd) }
            // The backing directory holds a real device node, used by nobody.
            #expect(try FileIO.stat(m.backingPath("null")).st_rdev == dev_t(1 << 8 | 3))
        }
    }

    /// Only root may ask: other users get a clear message and no mount.
    @Test func nonRootMayNotAskForSuidOrDev() throws {
        let user = try TestUser.ensure()
        let root = makeTempDir()
        defer { removeTree(root) }
        mkdir(root + "/b", 0o755)
        mkdir(root + "/m", 0o755)
        chown(root + "/b", user.uid, user.gid)
        chown(root + "/m", user.uid, user.gid)
        openPathForOthers(root)
        for option in ["suid", "dev", "dev,suid"] {
            let r = user.run([warpfsBinary, "mount", root + "/b", root + "/m", "-o", option])
            if isMounted(root + "/m") { _ = runCommand(["/bin/fusermount3", "-u", "-z", root + "/m"]) }
            #expect(r.status != 0, "-o \(option): \(r.output)")
            #expect(r.output.contains("needs a mount by root"), "-o \(option): \(r.output)")
        }
    }
}
