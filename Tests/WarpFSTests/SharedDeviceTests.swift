#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing

/// Mounts on a shared `warpdrived` (`-o device=SOCKET`): real daemon, real
/// mounts, a real example client.
@Suite struct SharedDeviceTests {
    /// A `warpdrived` child process on a socket in a temporary directory;
    /// `stop` ends it (SIGTERM, then SIGKILL).
    final class Daemon {
        let dir = makeTempDir("warpdrived-test")
        let socket: String
        var logPath: String { dir + "/wd.log" }
        private(set) var pid: pid_t = 0

        /// A daemon on `socket`, or on a new socket in its own directory,
        /// started with `arguments` besides the socket.
        init(socket existing: String? = nil, arguments: [String] = []) throws {
            socket = existing ?? dir + "/wd.sock"
            let binary = String(warpfsBinary.dropLast("warpfs".count)) + "warpdrived"
            let args = [binary, "--socket", socket] + arguments
            let cargs = args.map { strdup($0) } + [nil]
            defer { cargs.forEach { free($0) } }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
            defer { posix_spawn_file_actions_destroy(&actions) }
            var p: pid_t = 0
            wd_spawn_close_from(&actions, 3)   // no stray descriptors (of mounts) in the child
            let rc = posix_spawn(&p, binary, &actions, nil, cargs, environ)
            guard rc == 0 else { removeTree(dir); throw Errno(rc, "spawn \(binary)") }
            pid = p
            let deadline = wd_now_ns() + 10_000_000_000
            while access(socket, F_OK) != 0 {
                guard wd_now_ns() < deadline else { stop(); throw Errno(ETIMEDOUT, "warpdrived did not create \(socket)") }
                usleep(5000)
            }
        }

        var log: String { (try? FileIO.read(logPath)).map { String(decoding: $0, as: UTF8.self) } ?? "" }

        func stop(signal: Int32 = SIGTERM) {
            guard pid > 0 else { return }
            kill(pid, signal)
            var status: Int32 = 0
            let deadline = wd_now_ns() + 10_000_000_000
            while waitpid(pid, &status, WNOHANG) == 0 {
                if wd_now_ns() > deadline { kill(pid, SIGKILL); waitpid(pid, &status, 0); break }
                usleep(5000)
            }
            pid = 0
        }

        func close() {
            stop()
            removeTree(dir)
        }
    }

    /// The daemon's request count from `warpfs devices --device SOCKET --json`.
    static func daemonRequests(_ socket: String) -> UInt64? {
        let j = runCommand([warpfsBinary, "devices", "--device", socket, "--json"]).output
        let key = "\"totals\":{\"requests\":"
        guard let part = j.split(separator: key, maxSplits: 1, omittingEmptySubsequences: false).dropFirst().first else { return nil }
        return UInt64(part.prefix(while: { $0.isNumber }))
    }

    /// `compress`, `decompress` and `fsck` take the accelerator from the same
    /// options as a mount: with `-o device=SOCKET` every block goes through
    /// that daemon (its request count grows by at least the blocks), and the
    /// files come back byte for byte; a socket nobody serves is an error
    /// naming the option, and nothing is converted.
    @Test func offlineToolsUseTheDeviceTheOptionsName() throws {
        let d = try Daemon()
        defer { d.close() }
        let dir = makeTempDir()
        defer { removeTree(dir) }
        var r = Rng(91)
        let content = r.text(1 << 20)       // 16 blocks of 64 KiB
        try FileIO.write(dir + "/f", content)
        let o = "device=" + d.socket
        let start = try #require(Self.daemonRequests(d.socket))
        let c = runCommand([warpfsBinary, "compress", "-o", o, dir + "/f"])
        #expect(c.status == 0, "\(c.output)")
        let afterCompress = try #require(Self.daemonRequests(d.socket))
        #expect(afterCompress >= start + 16, "compress: \(start) -> \(afterCompress) requests")
        let f = runCommand([warpfsBinary, "fsck", "-o", o, dir])
        #expect(f.status == 0, "\(f.output)")
        let afterFsck = try #require(Self.daemonRequests(d.socket))
        #expect(afterFsck >= afterCompress + 16, "fsck: \(afterCompress) -> \(afterFsck) requests")
        let x = runCommand([warpfsBinary, "decompress", "-o", o, dir + "/f"])
        #expect(x.status == 0, "\(x.output)")
        #expect(try FileIO.read(dir + "/f") == content)
        #expect(try #require(Self.daemonRequests(d.socket)) >= afterFsck + 16)

        let missing = dir + "/nobody.sock"
        let bad = runCommand([warpfsBinary, "compress", "-o", "device=" + missing, dir + "/f"])
        #expect(bad.status != 0 && bad.output.contains("device=" + missing), "\(bad.output)")
        let badFsck = runCommand([warpfsBinary, "fsck", "-o", "device=" + missing, dir])
        #expect(badFsck.status == 8 && badFsck.output.contains("device=" + missing), "\(badFsck.output)")
        #expect(try FileIO.read(dir + "/f") == content)
    }

    /// Two mounts and the example client use one daemon at the same time;
    /// the files read back, also through the in-process device afterwards.
    @Test func twoMountsAndAnExampleShareOneDaemon() throws {
        let d = try Daemon()
        defer { d.close() }
        let a = try TestMount(options: "device=" + d.socket)
        defer { a.close() }
        let b = try TestMount(options: "device=" + d.socket)
        defer { b.close() }
        let contents = (0..<2).map { i -> [UInt8] in var r = Rng(UInt64(70 + i)); return r.text(6 << 20) + r.bytes(1 << 20) }
        let paths = [a.path("a"), b.path("b")]
        let errors = Mutex([String]())
        let hello = String(warpfsBinary.dropLast("warpfs".count)) + "warpdrive-hello"
        let socket = d.socket
        threads(3) { i in
            if i < 2 {
                do { try FileIO.write(paths[i], contents[i]) } catch { errors.withLock { $0.append("\(error)") } }
            } else {
                let r = runCommand([hello, "--device", socket, "/proc/self/exe"])
                if r.status != 0 { errors.withLock { $0.append("warpdrive-hello: \(r.output)") } }
            }
        }
        #expect(errors.withLock { $0 } == [])
        var attribute = [UInt8](repeating: 0, count: 512)
        let n = getxattr(a.mountpoint, "user.warpfs.device", &attribute, attribute.count)
        #expect(n > 0 && String(decoding: attribute[0..<max(n, 0)], as: UTF8.self).contains("served by warpdrived at \(d.socket)"))
        #expect(try FileIO.read(paths[0]) == contents[0])
        #expect(try FileIO.read(paths[1]) == contents[1])
        // The format does not depend on who compressed it.
        let local = try TestMount(afterUnmounting: a)
        defer { local.close() }
        #expect(try FileIO.read(local.path("a")) == contents[0])
    }

    /// The daemon is restarted under a mount: requests fail while it is
    /// gone, then the mount connects again by itself and everything stores.
    @Test func aRestartedDaemonIsPickedUpAgain() throws {
        let d = try Daemon()
        defer { d.close() }
        let m = try TestMount(options: "device=\(d.socket),engine_timeout=2")
        defer { m.close() }
        var r = Rng(81)
        let first = r.text(1 << 20)
        try FileIO.write(m.path("first"), first)
        d.stop(signal: SIGKILL)
        let lost = r.text(1 << 20)
        let fd = open(m.path("lost"), O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        _ = lost.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        #expect(fsync(fd) == -1 && errno == EIO)
        close(fd)
        let again = try Daemon(socket: d.socket)
        defer { again.close() }
        let second = r.text(3 << 20)
        try FileIO.write(m.path("second"), second)
        let sfd = open(m.path("second"), O_RDONLY)
        #expect(fsync(sfd) == 0)
        close(sfd)
        try m.remount()
        #expect(try FileIO.read(m.path("first")) == first)
        #expect(try FileIO.read(m.path("second")) == second)
        // The restarted daemon did the work (its totals, printed when it stops).
        m.unmount()
        again.stop()
        #expect(again.log.contains("requests=") && !again.log.contains("requests=0 "), "daemon log: \(again.log)")
    }

    /// The daemon dies under a mount: operations that need the accelerator
    /// fail with EIO instead of hanging, the rest of the mount answers, and
    /// data stored before stays readable through the in-process device.
    @Test func aDaemonThatDiesGivesEIONotAHang() throws {
        let d = try Daemon()
        defer { d.close() }
        // A time-out far above the bound below: the EIO must come from the
        // daemon being seen gone, not from requests timing out.
        let m = try TestMount(options: "device=\(d.socket),engine_timeout=60")
        defer { m.close() }
        var r = Rng(80)
        let before = r.text(1 << 20)
        try FileIO.write(m.path("before"), before)
        let bfd = open(m.path("before"), O_RDONLY)
        #expect(fsync(bfd) == 0)
        close(bfd)
        d.stop(signal: SIGKILL)
        let fd = open(m.path("after"), O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        let data = r.text(2 << 20)
        let start = wd_now_ns()
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let syncResult = fsync(fd)
        let syncErrno = errno
        close(fd)
        #expect(syncResult == -1 && syncErrno == EIO)
        #expect(wd_now_ns() - start < 10_000_000_000)
        #expect(try FileIO.stat(m.path("before")).st_size == before.count)
        m.unmount()
        let local = try TestMount(backing: m.backing)
        defer { local.close() }
        #expect(try FileIO.read(local.path("before")) == before)
    }
}

extension TestMount {
    /// A mount of `other`'s backing directory with the in-process device, after `other` is unmounted.
    convenience init(afterUnmounting other: TestMount) throws {
        other.unmount()
        try self.init(backing: other.backing)
    }
}
