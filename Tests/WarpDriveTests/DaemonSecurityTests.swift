#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
import TestSupport
@testable import WarpDrive

/// Whether this test process may choose the next pid (root in the initial
/// pid namespace, or CAP_CHECKPOINT_RESTORE): the pid-reuse test needs it.
let nextPidSettable: Bool = access("/proc/sys/kernel/ns_last_pid", W_OK) == 0

/// What a less-privileged client can do to `warpdrived`: reach memory that
/// is not its own (a forked client whose parent execs a set-user-ID
/// program, a pid reused by a root process), take every queue or every
/// connection, or stop the daemon with a malformed message. The clients
/// are `warpdrive-probe` run as a real unprivileged user.
@Suite(.serialized) struct DaemonSecurityTests {
    let probe = builtProductsDirectory + "/warpdrive-probe"

    /// A daemon whose socket and directory the test user can reach (set by
    /// hand, so the same test runs against a daemon without --socket-mode).
    func openDaemon(_ arguments: [String] = [], queues: Int = 8) throws -> Daemon {
        let d = try Daemon(queues: queues, arguments: arguments)
        openPathForOthers(d.directory)
        chmod(d.socket, 0o666)
        return d
    }

    func write(_ path: String, _ text: String) {
        writeFile(path + ".tmp", Array(text.utf8))
        chmod(path + ".tmp", 0o644)
        rename(path + ".tmp", path)
    }

    /// Polls `condition` every 10 ms for up to `seconds`.
    func waitFor(_ seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = wd_now_ns() + UInt64(seconds * 1e9)
        while !condition() {
            if wd_now_ns() >= deadline { return false }
            usleep(10_000)
        }
        return true
    }

    /// The mappings of `pid` backed by `path` (or named so, e.g. `[stack]`)
    /// whose permissions start with `perms`: (start, end).
    func mappings(_ pid: pid_t, of path: String, perms: String = "r") -> [(UInt64, UInt64)] {
        guard let text = readFile("/proc/\(pid)/maps") else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            let r = f.first?.split(separator: "-") ?? []
            guard f.count >= 6, f[1].hasPrefix(perms), String(f[5]) == path, r.count == 2,
                  let lo = UInt64(r[0], radix: 16), let hi = UInt64(r[1], radix: 16) else { return nil }
            return (lo, hi)
        }
    }

    func exe(_ pid: pid_t) -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(pid)/exe", &buf, 4095)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    }

    /// The effective uid of `pid` (from /proc/PID/status), or nil.
    func effectiveUID(_ pid: pid_t) -> uid_t? {
        guard let s = readFile("/proc/\(pid)/status"),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        let f = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
        return f.count > 2 ? uid_t(f[2]) : nil
    }

    /// 64 bytes of `pid`'s memory at `address`, read as root (what a leak would show).
    func rootRead(_ pid: pid_t, _ address: UInt64) -> String {
        let fd = open("/proc/\(pid)/mem", O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var b = [UInt8](repeating: 0, count: 64)
        let n = pread(fd, &b, 64, off_t(Int64(bitPattern: address)))
        return b.prefix(max(0, n)).map { String(format2: $0) }.joined()
    }

    /// Addresses in root process `pid` for the probe: its binary's ELF
    /// header (to read), the bottom of its stack (to write, unused by a
    /// sleeping program), and what root reads there now.
    func target(_ pid: pid_t, binary: String) throws -> (UInt64, UInt64, String) {
        try #require(waitFor(5) { !mappings(pid, of: binary).isEmpty }, "no mapping of \(binary) in \(pid)")
        let src = mappings(pid, of: binary)[0].0
        let dst = try #require(mappings(pid, of: "[stack]", perms: "rw").first, "no stack in \(pid)").0
        return (src, dst, rootRead(pid, dst))
    }

    /// A set-user-ID-root copy of `/bin/sleep` in `dir`.
    func setUIDSleep(in dir: String) throws -> String {
        let path = dir + "/sleep-suid"
        let r = runCommand(["/bin/cp", "/bin/sleep", path])
        try #require(r.status == 0, "cp: \(r.output)")
        chown(path, 0, 0)
        chmod(path, 0o4755)
        return path
    }

    /// The probe's result line, once it printed one.
    func result(_ p: Spawned) -> String? {
        p.output.split(separator: "\n").first { $0.hasPrefix("RESULT") || $0.hasPrefix("ERROR") }.map(String.init)
    }

    // MARK: Item 1: memory a client does not own

    /// A client connects, opens a queue and forks; the parent execs a
    /// set-user-ID-root program; the child, still holding the connection,
    /// asks the daemon to compress bytes of the now-root parent into its
    /// stack. The daemon must neither read nor write there: the request
    /// faults and root's memory is unchanged (before the fix it was served).
    @Test func aForkedClientCannotReachTheSetUIDProgramItsParentExecs() throws {
        let user = try TestUser.ensure()
        let d = try openDaemon()
        defer { d.stop() }
        let suid = try setUIDSleep(in: d.directory)
        let addrFile = d.directory + "/address"
        let p = try Spawned("/usr/bin/setpriv", Array(user.command([probe, "fork-exec", d.socket, addrFile, suid, "30"]).dropFirst()),
                            output: d.directory + "/probe.log")
        defer { p.signal(SIGKILL); p.wait(seconds: 10) }
        // The probe's own pid is the one bound (setpriv execs it).
        try #require(waitFor(20) { exe(p.pid) == suid }, "the parent did not exec \(suid): \(p.output)")
        try #require(waitFor(5) { effectiveUID(p.pid) == 0 }, "\(suid) did not run as root (nosuid mount?)")
        let (src, dst, before) = try target(p.pid, binary: suid)
        write(addrFile, "\(src) 64 \(dst) 4096\n")
        try #require(waitFor(30) { result(p) != nil }, "no result: \(p.output)")
        let r = result(p)!
        let after = rootRead(p.pid, dst)
        print("fork-exec probe: \(r); root's stack bottom \(before == after ? "unchanged" : "changed from \(before) to \(after)")")
        #expect(r.hasPrefix("RESULT fault"), "the daemon served an unprivileged client in root memory: \(r)")
        #expect(r.contains("page fault"), "\(r)")
        #expect(before == after, "root memory was written: \(before) -> \(after)")
        #expect(d.process.wait(seconds: 0) == nil, "warpdrived exited: \(d.process.output)")
    }

    /// A client connects, opens a queue and forks; the parent exits and a
    /// root process takes its pid (set with ns_last_pid); the child asks to
    /// compress bytes of that root process into its stack. The request
    /// faults and root's memory is unchanged.
    @Test(.enabled(if: nextPidSettable, "/proc/sys/kernel/ns_last_pid is not writable here: cannot make a root process take a chosen pid"))
    func aClientCannotReachTheProcessThatReusesItsPid() throws {
        let user = try TestUser.ensure()
        let d = try openDaemon()
        defer { d.stop() }
        let addrFile = d.directory + "/address"
        let p = try Spawned("/usr/bin/setpriv", Array(user.command([probe, "exit-early", d.socket, addrFile]).dropFirst()),
                            output: d.directory + "/probe.log")
        defer { p.signal(SIGKILL); p.wait(seconds: 10) }
        let old = p.pid
        try #require(p.wait(seconds: 20) == 0, "probe: \(p.output)")
        #expect(p.output.contains("READY"), "\(p.output)")
        // A root process with the dead client's pid.
        var victim: Spawned?
        for attempt in 0..<200 {
            guard let f = fopen("/proc/sys/kernel/ns_last_pid", "w") else { break }
            fputs("\(old - 1)", f)
            fclose(f)
            let s = try Spawned("/bin/sleep", ["30"], output: d.directory + "/victim-\(attempt).log")
            if s.pid == old { victim = s; break }
            s.stop(grace: 0)
        }
        let v = try #require(victim, "no process took pid \(old) (others keep taking pids)")
        defer { v.stop(grace: 0) }
        let (src, dst, before) = try target(v.pid, binary: exe(v.pid))
        write(addrFile, "\(src) 64 \(dst) 4096\n")
        // The probe's child is not ours to wait for: read its line from the log.
        try #require(waitFor(30) { result(p) != nil }, "no result: \(p.output)")
        let r = result(p)!
        let after = rootRead(v.pid, dst)
        print("pid-reuse probe (pid \(old)): \(r); root's stack bottom \(before == after ? "unchanged" : "changed from \(before) to \(after)")")
        #expect(r.hasPrefix("RESULT fault"), "the daemon served the client in the root process that took pid \(old): \(r)")
        #expect(before == after, "root memory was written: \(before) -> \(after)")
        #expect(d.process.wait(seconds: 0) == nil, "warpdrived exited: \(d.process.output)")
    }

    /// An unprivileged client of a root daemon still gets zlib's bytes (its
    /// memory is reached with its own credentials), and the daemon's report
    /// shows it only its own connections.
    @Test func anUnprivilegedClientGetsZlibsBytesThroughTheDaemon() throws {
        let user = try TestUser.ensure()
        let d = try openDaemon()
        defer { d.stop() }
        let data = TestData.mixed(700_000, seed: 21)
        writeFile(d.directory + "/input", data)
        chmod(d.directory + "/input", 0o644)
        // The output file is created by the probe (as the user) in a directory it may write.
        let outDir = d.directory + "/out"
        mkdir(outDir, 0o777)
        chmod(outDir, 0o777)
        defer { unlink(outDir + "/z"); rmdir(outDir) }
        let root = try RemoteDevice(socket: d.socket)
        let mine = try remoteSession(root, .zlib, .compress, level: 1)
        defer { mine.close() }
        let r = user.run([probe, "roundtrip", d.socket, d.directory + "/input", outDir + "/z"])
        #expect(r.status == 0 && r.output.contains("roundtrip OK"), "\(r.output)")
        let got = readBytes(outDir + "/z")
        #expect(Zlib.decompress(got, .zlib, capacity: data.count) == data, "\(got.count) bytes")
        #expect(Zlib.decompress(try mine.compress(data), .zlib, capacity: data.count) == data)
        // Root sees every client; the report's limits line is there.
        let report = try root.report()
        #expect(report.limits?.maxQueuesPerUser == 6, "\(String(describing: report.limits))")
    }

    func readBytes(_ path: String) -> [UInt8] {
        guard let f = fopen(path, "rb") else { return [] }
        defer { fclose(f) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n == 0 { break }
            out += chunk[0..<n]
        }
        return out
    }

    // MARK: Item 4: malformed messages and resource caps

    /// Random and boundary-value messages from a raw socket (every op number
    /// and unknown ones, values 0, 1, 2^31, 2^32, 2^63, 2^64-1, short and
    /// empty messages, over-long text, stray descriptors) for a bounded
    /// while: the daemon stays up, and another client then gets zlib's bytes.
    @Test func randomAndBoundaryMessagesDoNotStopTheDaemon() throws {
        let d = try Daemon(queues: 8)
        defer { d.stop() }
        let seed = UInt64(wd_now_ns() & 0xffff_ffff)
        print("DaemonSecurityTests fuzz seed \(seed)")
        var rng = SeededGenerator(seed: seed)
        let values: [UInt64] = [0, 1, 2, 1 << 31, 1 << 32, (1 << 32) - 1, 1 << 63, UInt64.max, UInt64.max - 1, UInt64(Int.max)]
        let queues: [UInt32] = [0, 1, 2, 7, 8, 1 << 31, UInt32.max]
        var sock = wd_seqpacket_connect(d.socket)
        try #require(sock >= 0)
        let devnull = open("/dev/null", O_RDONLY)
        var pipeFDs: [Int32] = [0, 0]
        pipe(&pipeFDs)
        defer { close(devnull); close(pipeFDs[0]); close(pipeFDs[1]); if sock >= 0 { close(sock) } }
        var sent = 0, reconnects = 0
        let deadline = wd_now_ns() + 4_000_000_000
        func drain(_ wait: Int32) {
            while wd_poll_in(sock, wait) > 0 {
                var buf = [UInt8](repeating: 0, count: 8192)
                var fds = [Int32](repeating: -1, count: 8)
                var n: Int32 = 0
                let got = wd_recv_message(sock, &buf, buf.count, &fds, 8, &n)
                fds.prefix(Int(n)).forEach { close($0) }
                if got <= 0 { break }
            }
        }
        while sent < 3000 && wd_now_ns() < deadline {
            let kind = rng.next() % 16
            var bytes: [UInt8]
            if kind == 0 {
                bytes = (0..<Int(rng.next() % 56)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }  // short (or empty)
            } else {
                let op: UInt32 = kind < 13 ? UInt32(rng.next() % 13) : (kind == 13 ? UInt32.max : UInt32(truncatingIfNeeded: rng.next()))
                let q = rng.next() % 2 == 0 ? queues[Int(rng.next() % UInt64(queues.count))] : UInt32(truncatingIfNeeded: rng.next())
                bytes = withUnsafeBytes(of: op.littleEndian) { Array($0) } + withUnsafeBytes(of: q.littleEndian) { Array($0) }
                for _ in 0..<6 {
                    let v = rng.next() % 3 == 0 ? rng.next() : values[Int(rng.next() % UInt64(values.count))]
                    bytes += withUnsafeBytes(of: v.littleEndian) { Array($0) }
                }
                switch rng.next() % 8 {
                case 0: bytes += (0..<Int(rng.next() % 9000)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }  // up to over-long
                case 1: bytes += Array("report\n\u{0}\u{7f}é".utf8)
                default: break
                }
            }
            var fds: [Int32] = []
            if rng.next() % 8 == 0 {
                let pool = [devnull, pipeFDs[0], pipeFDs[1], sock]
                fds = (0..<Int(1 + rng.next() % 8)).map { _ in pool[Int(rng.next() % 4)] }
            }
            let n = bytes.withUnsafeBytes { b in fds.withUnsafeBufferPointer { f in
                wd_send_message(sock, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
            } }
            sent += 1
            if n < 0 || wd_peer_gone(sock) != 0 {
                // An empty message reads as end of stream: the daemon closed this connection.
                close(sock)
                sock = wd_seqpacket_connect(d.socket)
                try #require(sock >= 0, "cannot connect again after \(sent) messages (seed \(seed))")
                reconnects += 1
            }
            drain(sent % 64 == 0 ? 20 : 0)
            try #require(d.process.wait(seconds: 0) == nil, "warpdrived died after \(sent) messages (seed \(seed)): \(d.process.output)")
        }
        drain(100)
        close(sock)
        sock = -1
        print("DaemonSecurityTests fuzz: \(sent) messages, \(reconnects) reconnects")
        #expect(sent >= 500)
        #expect(d.process.wait(seconds: 0) == nil, "warpdrived died (seed \(seed)): \(d.process.output)")
        // Another client is served correctly, and the refusals were counted.
        let remote = try RemoteDevice(socket: d.socket)
        let freed = try d.waitForInfo(remote) { $0.availableInstances == $0.totalInstances && $0.clients == 1 }
        #expect(freed.availableInstances == freed.totalInstances, "\(freed)")
        let c = try remoteSession(remote, .zlib, .compress, level: 1)
        defer { c.close() }
        let data = TestData.mixed(400_000, seed: seed)
        #expect(Zlib.decompress(try c.compress(data), .zlib, capacity: data.count) == data, "seed \(seed)")
        #expect((try remote.report().limits?.badRequests ?? 0) > 0)
    }

    /// Each boundary value in the fields that were converted with a trapping
    /// `Int(...)` (report start line, map region, queue, doorbell) gets an
    /// error reply, one by one, and the daemon keeps serving.
    @Test func boundaryFieldsGetErrorRepliesNotATrap() throws {
        try withDaemon { d in
            let remote = try RemoteDevice(socket: d.socket)
            let q = try remote.openDeviceQueue()
            defer { q.put() }
            for v: UInt64 in [2, 1 << 31, 1 << 32, 1 << 63, UInt64.max] {
                #expect(throws: WarpDriveError.self) { _ = try remote.request(.report, [v]) }
                #expect(throws: WarpDriveError.self) { _ = try remote.request(.map, queue: q.number, [v]) }
                #expect(throws: WarpDriveError.self) { _ = try remote.request(.setContext, queue: q.number, [v]) }
                remote.doorbell(queue: q.number, v)
                remote.doorbell(queue: Int(UInt32.max), v)
            }
            #expect(throws: WarpDriveError.self) { _ = try remote.request(.start, queue: Int(UInt32.max)) }
            #expect(throws: WarpDriveError.self) { _ = try remote.request(.counters, queue: Int(UInt32(1 << 31))) }
            #expect(d.process.wait(seconds: 0) == nil, "warpdrived exited: \(d.process.output)")
            let c = try remoteSession(remote, .gzip, .compress, level: 1)
            defer { c.close() }
            let data = TestData.text(100_000)
            #expect(Zlib.decompress(try c.compress(data), .gzip, capacity: data.count) == data)
        }
    }

    /// One user cannot hold more than --max-queues-per-user queues, over all
    /// its connections; another user still gets its own.
    @Test func oneUserCannotTakeEveryQueue() throws {
        let user = try TestUser.ensure()
        let d = try openDaemon(["--max-queues-per-user", "3"])
        defer { d.stop() }
        let a = try RemoteDevice(socket: d.socket), b = try RemoteDevice(socket: d.socket)
        var held = try (0..<2).map { _ in try a.openDeviceQueue() }
        held.append(try b.openDeviceQueue())
        defer { held.forEach { $0.put() } }
        #expect { _ = try a.openDeviceQueue() } throws: { e in
            guard case .busy(let why) = e as? WarpDriveError else { return false }
            return why.contains("--max-queues-per-user")
        }
        #expect(throws: WarpDriveError.self) { _ = try b.openDeviceQueue() }
        let r = user.run([probe, "queues", d.socket, "5"])
        #expect(r.output.contains("OPENED 3") && r.output.contains("max-queues-per-user"), "\(r.output)")
        // Giving one back lets the user open one again.
        held.removeLast().put()
        held.append(try a.openDeviceQueue())
        let limits = try #require(try a.report().limits)
        #expect(limits.maxQueuesPerUser == 3 && limits.refusedQueues == 3, "\(limits)")
        // The default: three quarters of the device's queues.
        let other = try Daemon(queues: 8)
        defer { other.stop() }
        let c = try RemoteDevice(socket: other.socket)
        let qs = try (0..<6).map { _ in try c.openDeviceQueue() }
        defer { qs.forEach { $0.put() } }
        #expect(throws: WarpDriveError.self) { _ = try c.openDeviceQueue() }
        #expect(try c.info().availableInstances == 2)
    }

    /// Connections beyond --max-clients-per-user (for one uid) or
    /// --max-clients (for all) get a clear `busy` error and are closed;
    /// freed slots are taken again.
    @Test func connectionsBeyondTheCapsAreRefused() throws {
        let user = try TestUser.ensure()
        do {
            let d = try openDaemon(["--max-clients", "8", "--max-clients-per-user", "2"])
            defer { d.stop() }
            var a: RemoteDevice? = try RemoteDevice(socket: d.socket)
            _ = try d.waitForInfo(a!) { $0.clients == 1 }   // the start-up probe's connection has gone
            let b = try RemoteDevice(socket: d.socket)
            #expect { _ = try RemoteDevice(socket: d.socket) } throws: { e in
                guard case .busy(let why) = e as? WarpDriveError else { return false }
                return why.contains("--max-clients-per-user")
            }
            // Another user is not held back by root's connections.
            let r = user.run([probe, "queues", d.socket, "1"])
            #expect(r.output.contains("OPENED 1"), "\(r.output)")
            a = nil
            _ = try d.waitForInfo(b) { $0.clients == 1 }
            a = try RemoteDevice(socket: d.socket)
            #expect(try b.report().limits?.refusedConnections == 1)
            _ = a
        }
        do {
            let d = try openDaemon(["--max-clients", "2"])
            defer { d.stop() }
            let a = try RemoteDevice(socket: d.socket)
            _ = try d.waitForInfo(a) { $0.clients == 1 }
            let b = try RemoteDevice(socket: d.socket)
            let r = user.run([probe, "queues", d.socket, "1"])
            #expect(r.status != 0 && r.output.contains("--max-clients"), "\(r.output)")
            #expect { _ = try RemoteDevice(socket: d.socket) } throws: { e in
                guard case .busy(let why) = e as? WarpDriveError else { return false }
                return why.contains("--max-clients")
            }
            #expect(try b.report().limits?.refusedConnections == 2)
            #expect(try a.info().clients == 2)
        }
    }

    /// The socket is created 0600 (only the daemon's user connects) unless
    /// --socket-mode and --socket-group say otherwise.
    @Test func theSocketAdmitsWhomItsModeAndGroupAdmit() throws {
        let user = try TestUser.ensure()
        let data = TestData.text(50_000)
        do {
            let d = try Daemon()
            defer { d.stop() }
            openPathForOthers(d.directory)
            var st = stat()
            #expect(stat(d.socket, &st) == 0 && st.st_mode & 0o7777 == 0o600 && st.st_uid == geteuid())
            writeFile(d.directory + "/input", data)
            chmod(d.directory + "/input", 0o644)
            let r = user.run([probe, "roundtrip", d.socket, d.directory + "/input", "/dev/null"])
            #expect(r.status != 0 && r.output.contains("permission denied"), "\(r.output)")
        }
        let group = "warpfs-probe-sock"
        let gid = try TestUser.ensureGroup(group)
        try user.join(group)
        let d = try Daemon(arguments: ["--socket-mode", "0660", "--socket-group", group])
        defer { d.stop() }
        openPathForOthers(d.directory)
        var st = stat()
        #expect(stat(d.socket, &st) == 0 && st.st_mode & 0o7777 == 0o660 && st.st_gid == gid)
        writeFile(d.directory + "/input", data)
        chmod(d.directory + "/input", 0o644)
        let r = user.run([probe, "roundtrip", d.socket, d.directory + "/input", "/dev/null"])
        #expect(r.status == 0 && r.output.contains("roundtrip OK"), "\(r.output)")
    }
}

extension String {
    /// Two hex digits of a byte.
    init(format2 b: UInt8) {
        let s = String(b, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }
}
