#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// WarpFS as the system runs it, as root: mount(8), fstab and systemd mount
/// units (`SystemMountTests`), the Debian package (`PackageTests`). One
/// serialized suite: both decide what `mount -t fuse.warpfs` runs.
@Suite(.serialized) struct SystemIntegration {
    /// The repository root: three levels above this file.
    static let repositoryRoot: String = {
        let parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        return parts.dropLast(3).joined(separator: "/")
    }()

    /// Whether the test may run: mount(8) of a FUSE file system and dpkg need root.
    static func runsAsRoot(_ test: String) -> Bool {
        if geteuid() == 0 { return true }
        print("\(test): skipped, needs root (mount(8) and dpkg)")
        return false
    }

    /// The options mountinfo shows for `path`: per-mount options, type, source.
    static func mountEntry(_ path: String) -> (options: Set<String>, type: String, source: String)? {
        guard let raw = try? FileIO.read("/proc/self/mountinfo") else { return nil }
        for line in String(decoding: raw, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            guard f.count > 4, f[4] == path, let dash = f.firstIndex(of: "-"), f.count > dash + 2 else { continue }
            return (Set(f[5].split(separator: ",").map(String.init)), f[dash + 1], f[dash + 2])
        }
        return nil
    }

    /// How many mounts sit on `path`.
    static func mountCount(_ path: String) -> Int {
        let raw = (try? FileIO.read("/proc/self/mountinfo")) ?? []
        return String(decoding: raw, as: UTF8.self).split(separator: "\n").filter { $0.split(separator: " ").dropFirst(4).first.map(String.init) == path }.count
    }

    /// Live `warpfs` processes serving `mountpoint`, with their arguments.
    static func servers(of mountpoint: String) -> [(pid: pid_t, exe: String, args: [String])] {
        guard let d = opendir("/proc") else { return [] }
        defer { closedir(d) }
        var found: [(pid_t, String, [String])] = []
        while let e = readdir(d) {
            let name = String(cString: wd_dirent_name(e))
            guard let pid = pid_t(name), alive(pid) else { continue }
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/\(pid)/exe", &buf, 4095)
            guard n > 0 else { continue }
            let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard exe.hasSuffix("/warpfs"), let raw = try? FileIO.read("/proc/\(pid)/cmdline") else { continue }
            let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.contains(mountpoint) { found.append((pid, exe, args)) }
        }
        return found
    }

    /// Alive and not a zombie (a daemonized server's parent may never reap it here).
    static func alive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0, let stat = try? FileIO.read("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: UInt8(ascii: ")")), close + 2 < stat.count else { return false }
        return stat[close + 2] != UInt8(ascii: "Z")
    }

    /// Waits for `pids` to exit (they store their data first); SIGKILL past 30 s.
    static func waitForExit(_ pids: [pid_t]) {
        let deadline = wd_now_ns() + 30_000_000_000
        while pids.contains(where: alive) {
            if wd_now_ns() > deadline { pids.forEach { kill($0, SIGKILL) } }
            usleep(10_000)
        }
    }

    /// Unmounts whatever is left at `mountpoint` (lazily if busy) and waits
    /// for its server: the clean-up of every test, failed or not.
    static func forceUnmount(_ mountpoint: String) {
        let pids = servers(of: mountpoint).map(\.pid)
        for attempt in [["/bin/umount"], ["/bin/umount", "-l"]] where isMounted(mountpoint) {
            _ = runCommand(attempt + [mountpoint])
        }
        waitForExit(pids)
    }

    /// `BACKING MOUNTPOINT` relocated under a temporary root, created.
    static func relocate(_ path: String, under root: String) -> String {
        let moved = root + path
        _ = runCommand(["/bin/mkdir", "-p", moved])
        return moved
    }

    /// The options a server was given (mount(8) puts generic ones first).
    static func passed(_ args: [String]) -> Set<String> {
        guard let o = args.firstIndex(of: "-o"), o + 1 < args.count else { return [] }
        return Set(args[o + 1].split(separator: ",").map(String.init))
    }

    /// Writes a file through the mount and reads it back.
    static func writeAndRead(_ mountpoint: String, _ backing: String) throws {
        var rng = Rng(16)
        let data = rng.text(300_000)
        try FileIO.write(mountpoint + "/hello.txt", data)
        #expect(try FileIO.read(mountpoint + "/hello.txt") == data)
        // The backing file is a WarpFS container.
        #expect(try FileIO.read(backing + "/hello.txt").prefix(6).elementsEqual(Array("WARPFS".utf8)))
    }
}

/// A temporary `/sbin/mount.fuse.warpfs`. mount(8) runs it, when it exists,
/// instead of `mount.fuse3 -t fuse.warpfs`, and clears PATH for it; so it
/// runs the real mount.fuse3 with this build's directory first on PATH, and
/// what the tests go through is mount(8) and mount.fuse3 running this build's
/// `warpfs BACKING MOUNTPOINT -o OPTIONS`. (Installed, mount.fuse3's shell
/// finds /usr/bin/warpfs on its default path; no helper is needed.)
enum MountHelper {
    static let path = "/sbin/mount.fuse.warpfs"
    static let marker = "# WarpFS test helper: removed when the test ends"

    /// Installs the helper; false (with the reason printed) when another
    /// program of that name is there, which the tests do not replace.
    static func install() throws -> Bool {
        if let existing = try? FileIO.read(path), !String(decoding: existing, as: UTF8.self).contains(marker) {
            print("skipped: \(path) exists and is not this test's helper")
            return false
        }
        let dir = String(warpfsBinary.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/"))
        let script = "#!/bin/sh\n\(marker)\nPATH='\(dir)':/usr/sbin:/usr/bin:/sbin:/bin exec /sbin/mount.fuse3 \"$@\" -t fuse.warpfs\n"
        try FileIO.write(path, Array(script.utf8), mode: 0o755)
        chmod(path, 0o755)
        return true
    }

    /// Removes the helper if it is this test's.
    static func remove() {
        if let existing = try? FileIO.read(path), String(decoding: existing, as: UTF8.self).contains(marker) { unlink(path) }
    }
}

extension SystemIntegration {
    /// `mount -t fuse.warpfs`, fstab lines and systemd mount units, through
    /// the real mount(8), mount.fuse3 and umount(8).
    @Suite struct SystemMountTests {
        @Test func mountTypeFuseWarpfsThenUmount() throws {
            guard runsAsRoot("mount -t fuse.warpfs"), try MountHelper.install() else { return }
            defer { MountHelper.remove() }
            let root = makeTempDir()
            let backing = relocate("/b", under: root), mnt = relocate("/m", under: root)
            defer { forceUnmount(mnt); removeTree(root) }
            let r = runCommand(["/bin/mount", "-t", "fuse.warpfs", backing, mnt, "-o", "defaults,noexec,algorithm=zstd,level=3"])
            #expect(r.status == 0, "\(r.output)")
            let entry = try #require(mountEntry(mnt))
            #expect(entry.type == "fuse.warpfs" && entry.source == backing, "\(entry)")
            #expect(entry.options.contains("noexec"), "\(entry.options)")
            // What mount.fuse3 ran: this build's warpfs in the mount(8) form.
            let server = try #require(servers(of: mnt).first)
            #expect(server.exe == canonical(warpfsBinary), "\(server.exe)")
            #expect(server.args.dropFirst().prefix(3) == [backing, mnt, "-o"], "\(server.args)")
            #expect(passed(server.args).isSuperset(of: ["noexec", "algorithm=zstd", "level=3"]), "\(server.args)")
            try writeAndRead(mnt, backing)
            // noexec is honoured: the kernel refuses to run a program there.
            try FileIO.write(mnt + "/script", Array("#!/bin/sh\necho ran\n".utf8), mode: 0o755)
            let run = runCommand([mnt + "/script"])
            #expect(run.status != 0 && !run.output.contains("ran"), "\(run)")
            let u = runCommand(["/bin/umount", mnt])
            #expect(u.status == 0, "\(u.output)")
            #expect(!isMounted(mnt))
            waitForExit([server.pid])
            // Stored: a fresh mount of the backing directory reads it back.
            let again = try TestMount(backing: backing)
            defer { again.close() }
            #expect(try FileIO.read(again.path("hello.txt")).count == 300_000)
        }

        /// The fstab line of docs/examples/fstab, relocated under a temporary
        /// directory: `mount --fstab FILE MOUNTPOINT`, then `mount -a` finds
        /// it mounted and does nothing, then `warpfs unmount` finds its server.
        @Test func fstabLineFromTheDocs() throws {
            guard runsAsRoot("fstab"), try MountHelper.install() else { return }
            defer { MountHelper.remove() }
            let example = String(decoding: try FileIO.read(SystemIntegration.repositoryRoot + "/docs/examples/fstab"), as: UTF8.self)
            let line = try #require(example.split(separator: "\n").first { !$0.hasPrefix("#") && !$0.isEmpty })
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            try #require(fields.count == 6, "\(fields)")
            #expect(fields[2] == "fuse.warpfs")
            #expect(fields[3] == "defaults,nofail,x-systemd.automount,algorithm=zstd")
            let root = makeTempDir()
            let backing = relocate(fields[0], under: root), mnt = relocate(fields[1], under: root)
            defer { forceUnmount(mnt); removeTree(root) }
            let fstab = root + "/fstab"
            try FileIO.write(fstab, Array(([backing, mnt] + fields[2...]).joined(separator: " ").utf8) + [10])
            let r = runCommand(["/bin/mount", "--fstab", fstab, mnt])
            #expect(r.status == 0, "\(r.output)")
            #expect(mountEntry(mnt)?.source == backing)
            let server = try #require(servers(of: mnt).first)
            #expect(passed(server.args).contains("algorithm=zstd"), "\(server.args)")
            try writeAndRead(mnt, backing)
            // The source is the fstab line's, so mount -a knows the line is mounted.
            let all = runCommand(["/bin/mount", "--fstab", fstab, "-a"])
            #expect(all.status == 0, "\(all.output)")
            #expect(mountCount(mnt) == 1)
            let u = runCommand([warpfsBinary, "unmount", mnt])
            #expect(u.status == 0, "\(u.output)")
            #expect(!isMounted(mnt))
            #expect(!alive(server.pid), "warpfs unmount returned before the server exited")
        }

        /// docs/examples/srv-data.mount, as systemd would run it:
        /// `mount WHAT WHERE -t TYPE -o OPTIONS`, and `umount WHERE` to stop.
        /// The unit must be valid for systemd-analyze, named after Where=,
        /// and shown verbatim in docs/SYSTEM.md.
        @Test func systemdMountUnitFromTheDocs() throws {
            let file = SystemIntegration.repositoryRoot + "/docs/examples/srv-data.mount"
            let unit = String(decoding: try FileIO.read(file), as: UTF8.self)
            let doc = String(decoding: try FileIO.read(SystemIntegration.repositoryRoot + "/docs/SYSTEM.md"), as: UTF8.self)
            #expect(doc.contains(unit), "docs/SYSTEM.md must show docs/examples/srv-data.mount as it is")
            var section = "", keys: [String: String] = [:]
            for raw in unit.split(separator: "\n") where !raw.hasPrefix("#") {
                let line = Substring(raw)
                if line.hasPrefix("[") { section = String(line); continue }
                if section == "[Mount]", let eq = line.firstIndex(of: "=") {
                    keys[String(line[..<eq])] = String(line[line.index(after: eq)...])
                }
            }
            let what = try #require(keys["What"]), place = try #require(keys["Where"])
            let type = try #require(keys["Type"]), options = try #require(keys["Options"])
            #expect(type == "fuse.warpfs")
            if FileIO.exists("/usr/bin/systemd-escape") {
                #expect(runCommand(["/usr/bin/systemd-escape", "--path", "--suffix=mount", place]).output == "srv-data.mount\n")
            }
            if FileIO.exists("/usr/bin/systemd-analyze") {
                let v = runCommand(["/usr/bin/systemd-analyze", "verify", file])
                #expect(v.status == 0 && v.output.isEmpty, "systemd-analyze verify: \(v.output)")
            }
            guard runsAsRoot("systemd mount unit"), try MountHelper.install() else { return }
            defer { MountHelper.remove() }
            let root = makeTempDir()
            let backing = relocate(what, under: root), mnt = relocate(place, under: root)
            defer { forceUnmount(mnt); removeTree(root) }
            let r = runCommand(["/bin/mount", backing, mnt, "-t", type, "-o", options])
            #expect(r.status == 0, "\(r.output)")
            #expect(mountEntry(mnt)?.type == "fuse.warpfs")
            let server = try #require(servers(of: mnt).first)
            #expect(passed(server.args).isSuperset(of: options.split(separator: ",").map(String.init)), "\(server.args)")
            try writeAndRead(mnt, backing)
            #expect(runCommand(["/bin/umount", mnt]).status == 0)
            #expect(!isMounted(mnt))
            waitForExit([server.pid])
        }

        /// mount(8) relays warpfs's refusal: a message naming the option, a
        /// non-zero exit, nothing mounted.
        @Test func unknownOptionThroughMountIsNamed() throws {
            guard runsAsRoot("unknown option through mount(8)"), try MountHelper.install() else { return }
            defer { MountHelper.remove() }
            let root = makeTempDir()
            let backing = relocate("/b", under: root), mnt = relocate("/m", under: root)
            defer { forceUnmount(mnt); removeTree(root) }
            for (options, named) in [("algorithm=zstd,colour=blue", "unknown mount option 'colour'"),
                                     ("nofail,dirsync", "'dirsync' is not supported"),
                                     ("level=42", "level=42")] {
                let r = runCommand(["/bin/mount", "-t", "fuse.warpfs", backing, mnt, "-o", options])
                #expect(r.status != 0, "-o \(options): \(r.output)")
                #expect(r.output.contains(named), "-o \(options): \(r.output)")
                #expect(!isMounted(mnt))
            }
        }

        /// `-o sync` through mount(8): the kernel sends an fsync after every
        /// write (three writes, three FSYNC requests in libfuse's trace), so
        /// each has reached the backing file when it returns; without it, none.
        @Test(arguments: ["sync", "async"]) func syncSendsAnFsyncAfterEachWrite(_ mode: String) throws {
            guard runsAsRoot("mount -o \(mode)"), try MountHelper.install() else { return }
            defer { MountHelper.remove() }
            let root = makeTempDir()
            let backing = relocate("/b", under: root), mnt = relocate("/m", under: root)
            defer { forceUnmount(mnt); removeTree(root) }
            let log = root + "/trace"
            let r = runCommand(["/bin/mount", "-t", "fuse.warpfs", backing, mnt, "-o", "\(mode),debug,log=\(log)"])
            #expect(r.status == 0, "\(r.output)")
            let fd = open(mnt + "/written", O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
            try #require(fd >= 0)
            for _ in 0..<3 { #expect("a small write\n".withCString { write(fd, $0, 14) } == 14) }
            close(fd)
            let u = runCommand(["/bin/umount", mnt])
            #expect(u.status == 0, "\(u.output)")
            forceUnmount(mnt)
            let trace = String(decoding: try FileIO.read(log), as: UTF8.self)
            let fsyncs = trace.split(separator: "\n").filter { $0.contains("opcode: FSYNC ") }.count
            #expect(fsyncs == (mode == "sync" ? 3 : 0), "\(fsyncs) FSYNC requests with -o \(mode)")
        }
    }
}

/// The absolute, symlink-free form of an existing path.
func canonical(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
}
