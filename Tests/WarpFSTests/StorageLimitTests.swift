#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// What the backing file system can never take, and what it keeps from
/// unprivileged users: writes past its largest file fail with EFBIG, fast
/// and once in the log; a non-root writer stops at the root-reserved blocks
/// and at its disk quota, as a direct write would. Each test builds a real
/// ext4 file system in an image file (loop mount), torn down in every path.
@Suite(.serialized) struct StorageLimitTests {
    /// An ext4 file system (4 KiB blocks: its largest file is 16 TiB) in an
    /// image file, loop-mounted on `path`; `close` unmounts it and removes it.
    final class Ext4Image {
        let dir: String
        let image: String
        let path: String

        init(sizeMiB: Int, mkfs extra: [String] = [], options: String = "", at mountpoint: String? = nil) throws {
            dir = makeTempDir("warpfs-ext4")
            image = dir + "/image"
            path = mountpoint ?? dir + "/fs"
            mkdir(path, 0o755)
            let fd = open(image, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0, ftruncate(fd, off_t(sizeMiB) << 20) == 0 else { removeTree(dir); throw Errno(errno, "image \(image)") }
            Glibc.close(fd)
            let made = runCommand(["/usr/sbin/mkfs.ext4", "-q", "-F", "-b", "4096"] + extra + [image])
            guard made.status == 0 else { removeTree(dir); throw Errno(EIO, "mkfs.ext4 \(extra): \(made.output)") }
            let mounted = runCommand(["/bin/mount", "-o", "loop" + (options.isEmpty ? "" : "," + options), image, path])
            guard mounted.status == 0 else { removeTree(dir); throw Errno(EIO, "mount \(image): \(mounted.output)") }
        }

        /// The loop device it is mounted from.
        var device: String { mountSource(path) ?? "" }

        func close() {
            // The file-system process may still be closing its files: retry, then detach lazily.
            for _ in 0..<50 where isMounted(path) {
                if runCommand(["/bin/umount", path]).status == 0 { break }
                usleep(100_000)
            }
            if isMounted(path) { _ = runCommand(["/bin/umount", "-l", path]) }
            removeTree(dir)
        }
    }

    /// A tmpfs (whose largest file is 8 EiB) on a fresh directory.
    final class Tmpfs {
        let path = makeTempDir("warpfs-tmpfs")
        init() throws {
            let r = runCommand(["/bin/mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", path])
            guard r.status == 0 else { removeTree(path); throw Errno(EIO, "mount tmpfs: \(r.output)") }
        }
        func close() {
            if isMounted(path) && runCommand(["/bin/umount", path]).status != 0 { _ = runCommand(["/bin/umount", "-l", path]) }
            removeTree(path)
        }
    }

    // MARK: Blocks that can never be stored

    /// Writes valid data at 0 and below the limit, then `count` compressible
    /// 64 KiB blocks 1 MiB apart from `far` on, then fsyncs and closes;
    /// prints each step's outcome (an errno, 0 for success).
    static let farWriter = """
    import os, sys, time, errno
    path, far, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    start = time.time()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, bytes(range(256)) * 4096, 0)
    os.pwrite(fd, b"valid data near the limit " * 2521, 3 << 40)
    errors = {}
    for i in range(count):
        block = (b"block %d past the limit of the backing file system " % i) * 1300
        try:
            os.pwrite(fd, block[:65536], far + i * (1 << 20))
        except OSError as e:
            errors[e.errno] = errors.get(e.errno, 0) + 1
    def step(f):
        try:
            f()
            return 0
        except OSError as e:
            return e.errno
    fsync = step(lambda: os.fsync(fd))
    close = step(lambda: os.close(fd))
    print("writes=%s fsync=%d close=%d seconds=%.1f" % (",".join("%d:%d" % kv for kv in errors.items()), fsync, close, time.time() - start))
    """

    static func residentKiB(_ pid: pid_t) -> Int {
        guard let raw = try? FileIO.read("/proc/\(pid)/status") else { return 0 }
        return String(decoding: raw, as: UTF8.self).split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
    }

    /// Thousands of blocks past what the backing file system can address
    /// (ext4: 16 TiB; a block lies about four times further into the backing
    /// file than into the logical one, so past about 4 TiB): the writer gets
    /// EFBIG within seconds, the log says so once, memory and space are given
    /// back, valid data reads back, and the mount unmounts cleanly. `nested`
    /// puts the ext4 file system inside a tmpfs backing directory, so the
    /// limit learnt from the backing directory does not apply and the blocks
    /// reach the store, which must give them up (the first failure mode);
    /// otherwise the write itself is refused.
    @Test(arguments: [false, true]) func blocksPastTheBackingFileSizeLimitFailFastWithEFBIG(nested: Bool) throws {
        let outer = nested ? try Tmpfs() : nil
        defer { outer?.close() }
        let ext4 = try Ext4Image(sizeMiB: 128, at: outer.map { $0.path + "/ext4" })
        defer { ext4.close() }
        let m = try TestMount(backing: outer?.path ?? ext4.path)
        defer { m.close() }
        let dir = nested ? "ext4/" : ""
        let before = StorageLimitTests.residentKiB(m.pid)
        let blocks = 3000
        // Past 5 TiB: backing offsets past 20 TiB.
        let run = runWithDeadline(["/usr/bin/python3", "-c", StorageLimitTests.farWriter, m.path(dir + "far"), "\(5 << 40)", "\(blocks)"],
                                  seconds: 30) {
            // The old behaviour: close never returns. End the file system so the writer does.
            kill(m.pid, SIGKILL)
        }
        guard let run else {
            Issue.record("the writer did not finish within 30 s (\(blocks) unstorable blocks); log lines: \(m.log.split(separator: "\n").count)")
            return
        }
        #expect(run.status == 0, "writer: \(run.output)")
        let report = Dictionary(uniqueKeysWithValues: run.output.split(separator: " ").compactMap { field -> (String, String)? in
            let kv = field.split(separator: "=", maxSplits: 1)
            return kv.count == 2 ? (String(kv[0]), String(kv[1]).trimmingCharacters()) : nil
        })
        let efbig = "\(EFBIG)"
        #expect((report["writes"] ?? "").contains(efbig + ":") || report["fsync"] == efbig || report["close"] == efbig,
                "the writer was not told EFBIG: \(run.output)")

        // The log: a line or two about it, not one per block or per retry.
        let errors = m.log.split(separator: "\n").filter { $0.contains(" ERROR: ") }
        #expect(errors.count <= 4, "\(errors.count) error lines: \(errors.prefix(10).joined(separator: "\n"))")
        #expect(m.log.contains("File too large"), "log: \(m.log)")

        // Memory: the refused blocks are not held (3000 x 64 KiB were offered).
        let after = StorageLimitTests.residentKiB(m.pid)
        #expect(after < before + 48 * 1024, "resident \(before) KiB before, \(after) KiB after")

        // Valid data reads back, and space reservations were given back:
        // 24 MiB more fit on the 128 MiB file system.
        let fd = open(m.path(dir + "far"), O_RDONLY)
        #expect(try FileIO.pread(fd, 1 << 20, 0) == Array((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0) }))
        let near = Array("valid data near the limit ".utf8)
        #expect(try FileIO.pread(fd, near.count * 2521, 3 << 40) == Array(Array(repeating: near, count: 2521).joined()))
        close(fd)
        var r = Rng(77)
        let more = r.bytes(24 << 20)
        try FileIO.write(m.path(dir + "more"), more)
        let mfd = open(m.path(dir + "more"), O_RDONLY)
        #expect(fsync(mfd) == 0, "errno \(errno)")
        close(mfd)

        // The mount unmounts cleanly, and the data is there after a remount.
        #expect(runCommand(["/bin/fusermount3", "-u", m.mountpoint]).status == 0)
        try m.remount()
        #expect(try FileIO.read(m.path(dir + "more")) == more)
        let again = open(m.path(dir + "far"), O_RDONLY)
        #expect(try FileIO.pread(again, 4096, 0) == Array((0..<4096).map { UInt8(truncatingIfNeeded: $0) }))
        close(again)
    }

    /// Without the writeback cache the application's write itself fails with
    /// EFBIG past the limit, as a direct write past ext4's s_maxbytes does,
    /// and a truncate there too; just below, writes work.
    @Test func aWritePastTheLimitFailsAtWriteTime() throws {
        let ext4 = try Ext4Image(sizeMiB: 64)
        defer { ext4.close() }
        let m = try TestMount(options: "no_writeback_cache", backing: ext4.path)
        defer { m.close() }
        let fd = open(m.path("f"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        defer { close(fd) }
        var rng = Rng(5)
        let data = rng.text(1 << 16)
        #expect(throws: Errno(EFBIG, "")) { try FileIO.pwrite(fd, data, 5 << 40) }
        #expect(ftruncate(fd, off_t(5 << 40)) == -1 && errno == EFBIG)
        try FileIO.pwrite(fd, data, 3 << 40)
        #expect(fsync(fd) == 0)
        #expect(try FileIO.pread(fd, data.count, 3 << 40) == data)
        let lines = m.log.split(separator: "\n").filter { $0.contains(" ERROR: ") }
        #expect(lines.count == 1, "\(lines)")
    }

    // MARK: Space an unprivileged writer may not use

    /// Writes incompressible 1 MiB chunks to `path` until an error or
    /// `limit` MiB, then fsyncs and closes; prints the bytes write() accepted
    /// and each step's errno (0 for success).
    static let filler = """
    import os, sys
    path, limit = sys.argv[1], int(sys.argv[2])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    accepted, werr = 0, 0
    while accepted < limit << 20:
        try:
            n = os.write(fd, os.urandom(1 << 20))
        except OSError as e:
            werr = e.errno
            break
        accepted += n
    def step(f):
        try:
            f()
            return 0
        except OSError as e:
            return e.errno
    print("accepted=%d write=%d fsync=%d close=%d" % (accepted, werr, step(lambda: os.fsync(fd)), step(lambda: os.close(fd))))
    """

    struct Fill {
        var accepted = 0, write: Int32 = -1, fsync: Int32 = -1, close: Int32 = -1
        var output = ""
        /// The errno the writer was told, at write, fsync or close (0 if none).
        var error: Int32 { [write, fsync, close].first { $0 != 0 } ?? 0 }
    }

    static func fill(_ path: String, as user: TestUser?, limitMiB: Int) -> Fill {
        let args = ["/usr/bin/python3", "-c", filler, path, "\(limitMiB)"]
        let r = user.map { $0.run(args) } ?? runCommand(args)
        var f = Fill(output: r.output)
        for field in r.output.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            let kv = field.split(separator: "=")
            guard kv.count == 2, let v = Int(kv[1]) else { continue }
            switch kv[0] {
            case "accepted": f.accepted = v
            case "write": f.write = Int32(v)
            case "fsync": f.fsync = Int32(v)
            case "close": f.close = Int32(v)
            default: break
            }
        }
        return f
    }

    /// Space the file system on `path` offers to anyone (f_bavail) and to root (f_bfree).
    static func space(_ path: String) -> (available: Int, free: Int) {
        var st = statvfs()
        guard statvfs(path, &st) == 0 else { return (0, 0) }
        return (Int(st.f_bavail) * Int(st.f_frsize), Int(st.f_bfree) * Int(st.f_frsize))
    }

    /// Waits until the file system on `path` has at least `bytes` available
    /// (space of deleted files comes back asynchronously).
    static func waitForSpace(_ path: String, _ bytes: Int) {
        let deadline = wd_now_ns() + 10_000_000_000
        while space(path).available < bytes && wd_now_ns() < deadline {
            sync()
            usleep(50_000)
        }
    }

    /// A directory on `fs` owned by `user`.
    static func userDirectory(_ fs: String, _ name: String, _ user: TestUser) -> String {
        openPathForOthers(fs)
        let d = fs + "/" + name
        mkdir(d, 0o755)
        chown(d, user.uid, user.gid)
        return d
    }

    /// ext4 keeps 40% of this file system for root (`-m 40`). A user writing
    /// through the mount (which writes as root) stops with ENOSPC where the
    /// same user's direct write stops, not 40% later; root, through the
    /// mount, still uses the reserve. With the writeback cache the error
    /// comes at fsync or close, and what was stored is no more.
    @Test(arguments: ["no_writeback_cache", ""]) func aUserStopsAtTheRootReservedBlocks(options: String) throws {
        let user = try TestUser.ensure()
        let ext4 = try Ext4Image(sizeMiB: 96, mkfs: ["-m", "40"])
        defer { ext4.close() }
        let data = StorageLimitTests.userDirectory(ext4.path, "data", user)
        let direct = StorageLimitTests.userDirectory(ext4.path, "direct", user)
        let initial = StorageLimitTests.space(ext4.path)
        #expect(initial.free - initial.available > 30 << 20, "reserve: \(initial)")

        // What the user can write there directly.
        let own = StorageLimitTests.fill(direct + "/x", as: user, limitMiB: 200)
        #expect(own.error == ENOSPC, "direct: \(own.output)")
        unlink(direct + "/x")
        StorageLimitTests.waitForSpace(ext4.path, initial.available - (1 << 20))

        let m = try TestMount(options: ["allow_other", options].filter { !$0.isEmpty }.joined(separator: ","), backing: data)
        defer { m.close() }
        openPathForOthers(m.mountpoint)
        let through = StorageLimitTests.fill(m.path("y"), as: user, limitMiB: 200)
        #expect(through.error == ENOSPC, "through the mount: \(through.output)")
        // What the mount stored for the user (accepted writes, with the writeback cache
        // the kernel accepts everything and what could not be stored is refused later).
        let used = Int(try FileIO.stat(data + "/y").st_blocks) * 512
        let taken = options.isEmpty ? used : through.accepted
        #expect(taken <= own.accepted + (2 << 20),
                "the user wrote \(own.accepted >> 20) MiB directly but \(taken >> 20) MiB through the mount (\(through.output))")
        #expect(taken >= own.accepted * 3 / 4, "the mount stopped early: \(taken >> 20) of \(own.accepted >> 20) MiB")

        // Root, through the mount, may still use the reserve.
        let left = StorageLimitTests.space(ext4.path)
        #expect(left.available < 8 << 20, "after the user's writes: \(left)")
        var rng = Rng(9)
        let rootData = rng.bytes(12 << 20)
        try FileIO.write(m.path("root-file"), rootData)
        let rfd = open(m.path("root-file"), O_RDONLY)
        #expect(fsync(rfd) == 0, "root's write into the reserve: errno \(errno); log: \(m.log)")
        close(rfd)
        #expect(try FileIO.read(m.path("root-file")) == rootData)
    }

    /// The writer of `storesRefusedForSpace...`, in a process of its own
    /// (the test process spawns programs from other tests' threads all the
    /// time, and every child holds a copy of each descriptor from its clone
    /// to its exec: its close sends FUSE a FLUSH of the mount's file, which
    /// stores blocks at a moment of its choosing, and keeps a filler's pages
    /// allocated after the test unlinked it). Prints one line per step:
    /// its name, the errno (0 for success) or figure, and on a failure what
    /// the backing file system holds.
    static let spaceRefusalWriter = """
    import os, sys, errno, random
    path, backing, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    rng = random.Random(21)
    def write_all(fd, data, off):
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], off + done)
    def avail():
        s = os.statvfs(backing)
        return s.f_bavail * s.f_frsize
    def held():
        files = ["%s %d/%d" % (n, st.st_size, st.st_blocks * 512) for n in sorted(os.listdir(backing))
                 for st in [os.stat(backing + "/" + n)]]
        return "(%d bytes available; size/allocated: %s)" % (avail(), ", ".join(files))
    def fill(fd, step):
        free = avail()
        while free > 0:
            try:
                os.posix_fallocate(fd, 0, free)
                return
            except OSError:
                free -= step
    def step(name, call):
        try:
            call()
            print(name, 0)
        except OSError as e:
            print(name, e.errno, held())
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    # 32 partial blocks: buffered, not stored yet.
    parts = [rng.randbytes(40 << 10) for _ in range(32)]
    for i, p in enumerate(parts):
        write_all(fd, p, i << 16)
    # Someone else takes every free byte; what the first filler could not
    # take (up to 64 KiB) goes to a second, page by page.
    filler = os.open(backing + "/filler", os.O_RDWR | os.O_CREAT, 0o600)
    fill(filler, 1 << 16)
    rest = os.open(backing + "/filler2", os.O_RDWR | os.O_CREAT, 0o600)
    fill(rest, 4096)
    print("unfilled", avail())
    step("fsync", lambda: os.fsync(fd))
    refused = other = 0
    for i in range(32, 132):
        try:
            write_all(fd, rng.randbytes(1 << 16), i << 16)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                refused += 1
            else:
                other = e.errno
    print("refused", refused, other)
    # Space comes back: the next write stores what was kept, and goes in.
    os.close(filler); os.unlink(backing + "/filler")
    os.close(rest); os.unlink(backing + "/filler2")
    last = rng.randbytes(1 << 16)
    step("last", lambda: write_all(fd, last, 200 << 16))
    step("synced", lambda: os.fsync(fd))
    step("closed", lambda: os.close(fd))
    with open(expected, "wb") as f:
        f.write(b"".join(parts) + last)
    """

    /// Blocks accepted with space reserved, then the backing file system
    /// filled behind the mount's back (as a quota, which the space account
    /// cannot see, refuses data): fsync reports ENOSPC, the log says so once
    /// (not per block or per refused write), new data is refused rather
    /// than piled up, and once space is freed everything is stored.
    @Test func storesRefusedForSpaceAreLoggedOnceAndRetriedWhenSpaceReturns() throws {
        let fs = try Tmpfs()
        defer { fs.close() }
        let m = try TestMount(options: "no_writeback_cache", backing: fs.path)
        defer { m.close() }
        let expected = m.root + "/expected"
        let run = runCommand(["/usr/bin/python3", "-c", StorageLimitTests.spaceRefusalWriter, m.path("f"), fs.path, expected])
        try #require(run.status == 0, "\(run.output)")
        var steps: [String: [String]] = [:]
        for line in run.output.split(separator: "\n") {
            let words = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard let name = words.first else { continue }
            steps[name] = words.count > 1 ? words[1].split(separator: " ", maxSplits: 1).map(String.init) : []
        }
        let unfilled = Int(steps["unfilled"]?.first ?? "") ?? -1
        #expect(unfilled >= 0 && unfilled < 40 << 10, "the fillers left \(unfilled) bytes free: room for a block")
        #expect(steps["fsync"]?.first == "\(ENOSPC)", "fsync: \(steps["fsync"] ?? []); log: \(m.log)")
        #expect(steps["refused"] == ["100", "0"], "refused writes (ENOSPC, another errno): \(steps["refused"] ?? [])")
        #expect(steps["last"] == ["0"], "the write after space came back: \(steps["last"] ?? []); log: \(m.log)")
        #expect(steps["synced"] == ["0"], "fsync after space came back: \(steps["synced"] ?? []); log: \(m.log)")
        #expect(steps["closed"] == ["0"], "close: \(steps["closed"] ?? [])")
        let errors = m.log.split(separator: "\n").filter { $0.contains(" ERROR: ") }
        #expect(errors.count <= 3, "\(errors.count) error lines: \(errors.prefix(8).joined(separator: "\n"))")

        try m.remount()
        let back = try FileIO.read(m.path("f"))
        let want = try FileIO.read(expected)
        #expect(back.count == 201 << 16 && want.count == 32 * (40 << 10) + (1 << 16), "\(back.count) bytes read back, \(want.count) expected")
        guard back.count == 201 << 16, want.count == 32 * (40 << 10) + (1 << 16) else { return }
        for i in 0..<32 {
            #expect(back[(i << 16)..<((i << 16) + (40 << 10))].elementsEqual(want[(i * (40 << 10))..<((i + 1) * (40 << 10))]), "block \(i)")
            #expect(!back[((i << 16) + (40 << 10))..<((i + 1) << 16)].contains { $0 != 0 }, "block \(i) past its data")
        }
        // The refused writes left nothing behind.
        #expect(!back[(32 << 16)..<(200 << 16)].contains { $0 != 0 }, "blocks 32..<200 hold refused data")
        #expect(back[(200 << 16)...].elementsEqual(want[(32 * (40 << 10))...]), "the last block")
    }

    // MARK: Quotas

    /// Whether this kernel enforces disk quotas on ext4 (it needs
    /// CONFIG_QUOTA and the quota format CONFIG_QFMT_V2).
    static let quotasWork: Bool = {
        guard let image = try? Ext4Image(sizeMiB: 16, mkfs: ["-O", "quota", "-E", "quotatype=usrquota"], options: "usrquota") else {
            return false
        }
        image.close()
        return true
    }()

    /// Sets `uid`'s block hard and soft limit on the file system of `device` (quotactl Q_SETQUOTA).
    static func setBlockLimit(device: String, uid: uid_t, bytes: Int) -> (status: Int32, output: String) {
        let script = """
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        class Dqblk(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint64) for n in ("bhard", "bsoft", "curspace", "ihard", "isoft", "curinodes", "btime", "itime")] + [("valid", ctypes.c_uint32)]
        q = Dqblk(bhard=int(sys.argv[3]) // 1024, bsoft=int(sys.argv[3]) // 1024, valid=1)  # QIF_BLIMITS, 1 KiB units
        if libc.quotactl(ctypes.c_int(0x800008 << 8), sys.argv[1].encode(), int(sys.argv[2]), ctypes.byref(q)) != 0:
            sys.exit("quotactl: " + os.strerror(ctypes.get_errno()))
        """
        return runCommand(["/usr/bin/python3", "-c", script, device, "\(uid)", "\(bytes)"])
    }

    /// A user with a 16 MiB block quota writes through the mount: the
    /// payload writes are charged to the file's owner, and the mount process
    /// has no CAP_SYS_RESOURCE to exceed the limit with, so the user gets
    /// EDQUOT near the limit, as a direct write gets it.
    @Test(.enabled(if: StorageLimitTests.quotasWork, "the kernel has no disk quota format (CONFIG_QFMT_V2)"),
          arguments: ["no_writeback_cache", ""])
    func aUserStopsAtTheQuota(options: String) throws {
        let user = try TestUser.ensure()
        let ext4 = try Ext4Image(sizeMiB: 96, mkfs: ["-O", "quota", "-E", "quotatype=usrquota"], options: "usrquota")
        defer { ext4.close() }
        let data = StorageLimitTests.userDirectory(ext4.path, "data", user)
        let direct = StorageLimitTests.userDirectory(ext4.path, "direct", user)
        let limit = 16 << 20
        let set = StorageLimitTests.setBlockLimit(device: ext4.device, uid: user.uid, bytes: limit)
        try #require(set.status == 0, "\(set.output)")

        let own = StorageLimitTests.fill(direct + "/x", as: user, limitMiB: 64)
        try #require(own.error == EDQUOT, "the quota is not enforced on a direct write: \(own.output)")
        unlink(direct + "/x")
        sync()

        let m = try TestMount(options: ["allow_other", options].filter { !$0.isEmpty }.joined(separator: ","), backing: data)
        defer { m.close() }
        openPathForOthers(m.mountpoint)
        let through = StorageLimitTests.fill(m.path("y"), as: user, limitMiB: 64)
        #expect(through.error == EDQUOT, "through the mount: \(through.output)")
        #expect(try FileIO.stat(data + "/y").st_uid == user.uid)
        let used = Int(try FileIO.stat(data + "/y").st_blocks) * 512
        #expect(used <= limit, "stored \(used >> 20) MiB for a \(limit >> 20) MiB quota")
        if !options.isEmpty {
            #expect(through.accepted <= own.accepted + (2 << 20) && through.accepted >= own.accepted / 2,
                    "accepted \(through.accepted >> 20) MiB through the mount, \(own.accepted >> 20) MiB directly")
        }
    }

    /// The mount process keeps no thread with CAP_SYS_RESOURCE in its
    /// effective set: the capability that lets root's writes exceed disk
    /// quotas (and, on ext4, use the reserved blocks of a `resuid`). (Where
    /// the tests run without it, as in a sandbox whose bounding set lacks it,
    /// there is nothing to drop.)
    @Test(.enabled(if: wd_has_effective_capability(24) == 1, "this process has no CAP_SYS_RESOURCE to begin with"))
    func theMountProcessHasNoCapSysResource() throws {
        try withMount { m in
            var rng = Rng(3)
            try FileIO.write(m.path("f"), rng.text(1 << 20))     // worker threads and engines running
            let tasks = try FileIO.list("/proc/\(m.pid)/task")
            #expect(tasks.count > 1)
            for t in tasks {
                let status = String(decoding: try FileIO.read("/proc/\(m.pid)/task/\(t)/status"), as: UTF8.self)
                let eff = status.split(separator: "\n").first { $0.hasPrefix("CapEff:") }
                    .flatMap { UInt64($0.split(separator: "\t").last ?? "", radix: 16) } ?? .max
                #expect(eff & (1 << 24) == 0, "thread \(t) of the mount has CAP_SYS_RESOURCE (CapEff \(String(eff, radix: 16)))")
            }
        }
    }

    /// The shim the mount drops CAP_SYS_RESOURCE with: it clears one
    /// capability from the calling thread's effective set, and a thread it
    /// then starts inherits that. Tried on a capability this process has.
    @Test func droppingAnEffectiveCapabilityReachesLaterThreads() throws {
        let capLease: Int32 = 28
        try #require(wd_has_effective_capability(capLease) == 1, "the test process lacks CAP_LEASE")
        final class Result: @unchecked Sendable { var own = -1, child = -1, drop: Int32 = -1 }
        let r = Result()
        var thread = pthread_t()
        let arg = Unmanaged.passRetained(r).toOpaque()
        pthread_create(&thread, nil, { arg in
            let r = Unmanaged<Result>.fromOpaque(arg!).takeRetainedValue()
            r.drop = wd_drop_effective_capability(28)
            r.own = Int(wd_has_effective_capability(28))
            var inner = pthread_t()
            pthread_create(&inner, nil, { arg in
                Unmanaged<Result>.fromOpaque(arg!).takeUnretainedValue().child = Int(wd_has_effective_capability(28))
                return nil
            }, Unmanaged.passUnretained(r).toOpaque())
            pthread_join(inner, nil)
            return nil
        }, arg)
        pthread_join(thread, nil)
        #expect(r.drop == 0 && r.own == 0 && r.child == 0, "drop \(r.drop), own \(r.own), child \(r.child)")
        // Other threads keep theirs.
        #expect(wd_has_effective_capability(capLease) == 1)
    }
}

/// The source (device) of the mount at `path`, from /proc/self/mountinfo.
func mountSource(_ path: String) -> String? {
    guard let f = fopen("/proc/self/mountinfo", "r") else { return nil }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 8192)
    var found: String?
    while fgets(&line, Int32(line.count), f) != nil {
        let fields = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: " ")
        guard fields.count > 4, fields[4] == path, let dash = fields.firstIndex(of: "-"), dash + 2 < fields.count else { continue }
        found = String(fields[dash + 2])
    }
    return found
}

/// Runs `args` to completion within `seconds`; its output goes to a file.
/// On time-out `onTimeout` runs (it must make the process end, e.g. by
/// ending what it waits for) and nil is returned once the process is gone.
func runWithDeadline(_ args: [String], seconds: Double, onTimeout: () -> Void) -> (status: Int32, output: String)? {
    let out = makeTempDir("warpfs-run")
    defer { removeTree(out) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_addopen(&actions, 1, out + "/output", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let cargs = args.map { strdup($0) } + [nil]
    defer { cargs.forEach { free($0) } }
    var pid: pid_t = 0
    wd_spawn_close_from(&actions, 3)   // no stray descriptors (of mounts) in the child
    let rc = posix_spawn(&pid, args[0], &actions, nil, cargs, environ)
    posix_spawn_file_actions_destroy(&actions)
    guard rc == 0 else { return (-1, "spawn failed: \(rc)") }
    let deadline = wd_now_ns() + UInt64(seconds * 1e9)
    var status: Int32 = 0
    var timedOut = false
    while waitpid(pid, &status, WNOHANG) == 0 {
        if !timedOut && wd_now_ns() > deadline {
            timedOut = true
            onTimeout()
            kill(pid, SIGKILL)
        }
        usleep(10_000)
    }
    if timedOut { return nil }
    let output = (try? FileIO.read(out + "/output")).map { String(decoding: $0, as: UTF8.self) } ?? ""
    return ((status >> 8) & 0xff, output)
}

private extension String {
    func trimmingCharacters() -> String { String(self.filter { !$0.isWhitespace }) }
}
