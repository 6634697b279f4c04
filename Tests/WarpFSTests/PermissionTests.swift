#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// A mount shared with other users (`allow_other`), exercised by a real
/// unprivileged user: new nodes get exactly the mode and group the same
/// call gives on the backing file system itself, and only root and the
/// user who mounted may use the mount root's control attributes.
@Suite struct PermissionTests {
    /// A python3 an unprivileged user can run (root's own may live in a
    /// home directory others cannot enter).
    static let python: String = ["/usr/bin/python3", "/usr/local/bin/python3"].first { access($0, X_OK) == 0 } ?? "/usr/bin/python3"

    /// Creates one node of each kind in argv[1] under umask argv[2] without
    /// any chmod, and prints each name with "ok" or the errno.
    static let createEverything = """
        import os, stat, sys
        d, mask = sys.argv[1], int(sys.argv[2], 8)
        os.umask(mask)
        def make(name, f):
            try:
                f(os.path.join(d, name)); print(name, "ok")
            except OSError as e:
                print(name, e.errno)
        def create(mode):
            return lambda p: os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        make("file", create(0o666))
        make("exec", create(0o777))
        make("setuid", create(0o4777))
        make("setgid", create(0o2777))
        make("sticky-file", create(0o1777))
        make("mknod-file", lambda p: os.mknod(p, 0o666 | stat.S_IFREG))
        make("dir", lambda p: os.mkdir(p, 0o777))
        make("sticky-dir", lambda p: os.mkdir(p, 0o1777))
        make("fifo", lambda p: os.mkfifo(p, 0o666))
        make("socket", lambda p: os.mknod(p, 0o777 | stat.S_IFSOCK))
        make("chardev", lambda p: os.mknod(p, 0o666 | stat.S_IFCHR, os.makedev(1, 3)))
        make("symlink", lambda p: os.symlink("file", p))
        """
    static let names = ["file", "exec", "setuid", "setgid", "sticky-file", "mknod-file", "dir", "sticky-dir", "fifo",
                        "socket", "chardev", "symlink"]

    /// Runs `createEverything` in `dir` as `user` (nil: root).
    static func createEverything(in dir: String, umask: String, as user: TestUser?) -> (status: Int32, output: String) {
        let args = [python, "-c", createEverything, dir, umask]
        return user.map { $0.run(args) } ?? runCommand(args)
    }

    /// A directory `name` in the mount and one beside the backing
    /// directory on the same file system, both root's with `mode` and `group`.
    static func twinDirectories(_ m: TestMount, _ name: String, mode: mode_t = 0o777, group: gid_t = 0) throws -> (mounted: String, direct: String) {
        let direct = m.root + "/direct"
        mkdir(direct, 0o755)
        let pair = (mounted: m.path(name), direct: direct + "/" + name)
        for d in [pair.mounted, pair.direct] {
            guard mkdir(d, 0o700) == 0 else { throw Errno(errno, "mkdir \(d)") }
            guard chown(d, 0, group) == 0, chmod(d, mode) == 0 else { throw Errno(errno, "chown/chmod \(d)") }
        }
        return pair
    }

    /// Type and mode, owner, group and device of every created node, in the
    /// mount and directly on the backing file system.
    static func compare(_ pair: (mounted: String, direct: String), _ context: String) throws {
        for n in names where FileIO.exists(pair.direct + "/" + n) {
            let a = try FileIO.stat(pair.mounted + "/" + n), b = try FileIO.stat(pair.direct + "/" + n)
            #expect(String(a.st_mode, radix: 8) == String(b.st_mode, radix: 8), "\(context): mode of \(n)")
            #expect(a.st_uid == b.st_uid && a.st_gid == b.st_gid, "\(context): owner of \(n): \(a.st_uid):\(a.st_gid), directly \(b.st_uid):\(b.st_gid)")
            #expect(a.st_rdev == b.st_rdev, "\(context): device of \(n)")
        }
    }

    /// Every umask, as an unprivileged user and as root: each kind of node
    /// comes out with exactly the requested mode less the umask (set-ID and
    /// sticky bits kept), as the same calls give on the backing file system.
    @Test func newNodesGetExactlyTheModeTheCallerAsked() throws {
        let user = try TestUser.ensure()
        try withMount(options: "allow_other") { m in
            openPathForOthers(m.root)
            for who in [user, nil] as [TestUser?] {
                for umask in ["0", "002", "022", "077"] {
                    let context = "\(who.map(\.name) ?? "root"), umask \(umask)"
                    let pair = try PermissionTests.twinDirectories(m, "\(who == nil ? "root" : "user")-\(umask)")
                    let mounted = PermissionTests.createEverything(in: pair.mounted, umask: umask, as: who)
                    let direct = PermissionTests.createEverything(in: pair.direct, umask: umask, as: who)
                    #expect(mounted.status == 0 && mounted.output == direct.output, "\(context): \(mounted.output) vs \(direct.output)")
                    try PermissionTests.compare(pair, context)
                    // And by value, not only by comparison.
                    let mask = mode_t(umask, radix: 8)!
                    let expected: [(String, mode_t)] = [("file", 0o666), ("exec", 0o777), ("setuid", 0o4777), ("setgid", 0o2777),
                                                        ("mknod-file", 0o666), ("dir", 0o777), ("sticky-dir", 0o1777), ("fifo", 0o666)]
                    for (name, mode) in expected {
                        let st = try FileIO.stat(pair.mounted + "/" + name)
                        #expect(st.st_mode & 0o7777 == mode & ~mask, "\(context): \(name) is \(String(st.st_mode & 0o7777, radix: 8))")
                        #expect(st.st_uid == who?.uid ?? 0, "\(context): \(name) belongs to \(st.st_uid)")
                    }
                    #expect(try FileIO.stat(pair.mounted + "/symlink").st_mode & 0o7777 == 0o777)
                    if who == nil {
                        #expect(try FileIO.stat(pair.mounted + "/chardev").st_mode == S_IFCHR | (0o666 & ~mask))
                    }
                }
            }
        }
    }

    /// A set-group-ID directory of group G: what the user creates in it gets
    /// group G, a new directory also S_ISGID, whether the user is a member of
    /// G or not (set-group-ID on a new file stays only for members; the
    /// kernel strips it for others before WarpFS sees the mode).
    @Test func setGroupIDDirectoriesGiveTheirGroup() throws {
        let user = try TestUser.ensure()
        let member = try TestUser.ensureGroup("warpfs-test-sgid")
        try user.join("warpfs-test-sgid")
        let stranger = try TestUser.ensureGroup("warpfs-test-other")
        try withMount(options: "allow_other") { m in
            openPathForOthers(m.root)
            for (label, group) in [("member", member), ("not a member", stranger)] {
                let pair = try PermissionTests.twinDirectories(m, "sgid-\(group)", mode: 0o2777, group: group)
                let mounted = PermissionTests.createEverything(in: pair.mounted, umask: "022", as: user)
                let direct = PermissionTests.createEverything(in: pair.direct, umask: "022", as: user)
                #expect(mounted.status == 0 && mounted.output == direct.output, "\(label): \(mounted.output) vs \(direct.output)")
                try PermissionTests.compare(pair, label)
                for name in ["file", "setgid", "dir", "fifo", "symlink"] {
                    let st = try FileIO.stat(pair.mounted + "/" + name)
                    #expect(st.st_gid == group && st.st_uid == user.uid, "\(label): \(name) is \(st.st_uid):\(st.st_gid)")
                }
                #expect(try FileIO.stat(pair.mounted + "/dir").st_mode & 0o7777 == 0o2755)
                #expect(try FileIO.stat(pair.mounted + "/setgid").st_mode & S_ISGID == (group == member ? S_ISGID : 0))
                // The set-group-ID subdirectory passes the group on again.
                let deeper = user.run([PermissionTests.python, "-c", "import os, sys; os.mkdir(sys.argv[1], 0o755)", pair.mounted + "/dir/deeper"])
                #expect(deeper.status == 0, "\(deeper.output)")
                let st = try FileIO.stat(pair.mounted + "/dir/deeper")
                #expect(st.st_gid == group && st.st_mode & 0o7777 == 0o2755)
            }
        }
    }

    /// Sets (value non-nil) or reads a root attribute as `user`; prints "ok" or the errno.
    static func rootAttribute(_ m: TestMount, _ name: String, set value: String?, as user: TestUser) -> String {
        let script = value != nil
            ? "import os, sys\ntry:\n    os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode()); print('ok')\nexcept OSError as e: print(e.errno)"
            : "import os, sys\ntry:\n    os.getxattr(sys.argv[1], sys.argv[2]); print('ok')\nexcept OSError as e: print(e.errno)"
        let r = user.run([python, "-c", script, m.mountpoint, name] + (value.map { [$0] } ?? []))
        return r.output.trimmingNewlines
    }

    /// With `allow_other` and a root directory everyone may write (so that
    /// only WarpFS stands between a user and the attribute), another user can
    /// neither stop the accelerator nor read its counters; the mount keeps
    /// working, and root still can.
    @Test func othersCannotInjectFaultsOrReadTheDevice() throws {
        let user = try TestUser.ensure()
        try withMount(options: "allow_other,fault_injection,engine_timeout=2") { (m: TestMount) throws in
            openPathForOthers(m.root)
            #expect(chmod(m.mountpoint, 0o777) == 0)
            for command in ["hang", "error_rate=1", "reset"] {
                #expect(PermissionTests.rootAttribute(m, "user.warpfs.fault", set: command, as: user) == "\(EPERM)", "\(command)")
            }
            #expect(PermissionTests.rootAttribute(m, "user.warpfs.device", set: nil, as: user) == "\(EPERM)")
            #expect(!m.log.contains("fault injection:"))
            // The device still answers: a write and its fsync succeed (a hung
            // device fails them with EIO after the engine time-outs), and read back.
            var r = Rng(11)
            let data = r.text(300_000)
            #expect(AcceleratorFaultTests.writeAndSync(m.path("after"), data) == 0)
            #expect(try FileIO.read(m.path("after")) == data)
            // Root may.
            #expect(AcceleratorFaultTests.fault(m, "error_rate=0") == 0)
            var buf = [UInt8](repeating: 0, count: 512)
            #expect(getxattr(m.mountpoint, "user.warpfs.device", &buf, buf.count) > 0)
            _ = AcceleratorFaultTests.fault(m, "resume")
        }
    }

    /// The user who mounted (the process's real uid; here a process with
    /// root's effective uid, as a set-user-ID install would be) may use the
    /// control attributes; another user may not.
    @Test func theUserWhoMountedMayInjectFaults() throws {
        let owner = try TestUser.ensure()
        let other = try TestUser.ensure("warpfs-test2")
        let m = try TestMount(options: "allow_other,fault_injection", launcher: ["/usr/bin/setpriv", "--ruid=\(owner.uid)", "--"])
        defer { m.close() }
        openPathForOthers(m.root)
        #expect(chmod(m.mountpoint, 0o777) == 0)
        #expect(PermissionTests.rootAttribute(m, "user.warpfs.fault", set: "error_rate=0", as: owner) == "ok")
        #expect(PermissionTests.rootAttribute(m, "user.warpfs.device", set: nil, as: owner) == "ok")
        #expect(PermissionTests.rootAttribute(m, "user.warpfs.fault", set: "hang", as: other) == "\(EPERM)")
        #expect(PermissionTests.rootAttribute(m, "user.warpfs.device", set: nil, as: other) == "\(EPERM)")
        #expect(m.log.contains("fault injection: error_rate=0") && !m.log.contains("fault injection: hang"))
    }
}

extension String {
    var trimmingNewlines: String { String(self.reversed().drop { $0 == "\n" }.reversed()) }
}
