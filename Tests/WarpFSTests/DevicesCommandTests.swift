#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// `warpfs devices` and `warpdrived --info` against a real daemon with real
/// clients: a mount and the example client, each with its own queue.
@Suite struct DevicesCommandTests {
    /// `warpdrive-hello --device SOCKET --repeat N` in the background; `stop` kills it.
    final class Hello {
        private(set) var pid: pid_t = 0

        init(socket: String) throws {
            let binary = String(warpfsBinary.dropLast("warpfs".count)) + "warpdrive-hello"
            let args = [binary, "--device", socket, "--repeat", "1000000", binary]
            let cargs = args.map { strdup($0) } + [nil]
            defer { cargs.forEach { free($0) } }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
            defer { posix_spawn_file_actions_destroy(&actions) }
            var p: pid_t = 0
            wd_spawn_close_from(&actions, 3)   // no stray descriptors (of mounts) in the child
            let rc = posix_spawn(&p, binary, &actions, nil, cargs, environ)
            guard rc == 0 else { throw Errno(rc, "spawn \(binary)") }
            pid = p
        }

        func stop() {
            guard pid > 0 else { return }
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            pid = 0
        }
    }

    /// The row of a text table (clients or queues section) whose column
    /// `column` is `value`, split into columns.
    func rows(_ output: String, section: String, column: Int, value: String) -> [[String]] {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
        guard let start = lines.firstIndex(where: { $0.hasPrefix(section) }) else { return [] }
        var found: [[String]] = []
        for line in lines[(start + 2)...] {
            guard line.hasPrefix("  ") else { break }
            let cols = line.split(separator: " ").map(String.init)
            if cols.count > column && cols[column] == value { found.append(cols) }
        }
        return found
    }

    /// Polls `warpfs devices --device` until `ready` holds for its output (10 s).
    func devices(_ socket: String, until ready: (String) -> Bool) -> (status: Int32, output: String) {
        let deadline = wd_now_ns() + 10_000_000_000
        while true {
            let r = runCommand([warpfsBinary, "devices", "--device", socket])
            if r.status != 0 || ready(r.output) || wd_now_ns() > deadline { return r }
            usleep(50_000)
        }
    }

    @Test func aDaemonReportsItsQueuesAndClients() throws {
        let d = try SharedDeviceTests.Daemon()
        defer { d.close() }
        let m = try TestMount(options: "device=" + d.socket)
        defer { m.close() }
        var rng = Rng(91)
        try FileIO.write(m.path("f"), rng.text(2 << 20))
        let fd = open(m.path("f"), O_RDONLY)
        #expect(fsync(fd) == 0)
        close(fd)
        let hello = try Hello(socket: d.socket)
        defer { hello.stop() }
        let mountPID = String(m.pid), helloPID = String(hello.pid)
        // Clients table: PID UID PASID QUEUES REQUESTS ...
        func busyClient(_ out: String, _ pid: String) -> Bool {
            rows(out, section: "clients", column: 0, value: pid).contains { (UInt64($0[4]) ?? 0) > 0 && $0[3] != "0" }
        }
        let r = devices(d.socket) { busyClient($0, mountPID) && busyClient($0, helloPID) }
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("warpdrive_zip_emu-0 (warpdrived pid \(d.pid) at \(d.socket))"), "\(r.output)")
        #expect(r.output.contains("algorithms           deflate zlib gzip zstd lz4"))
        #expect(r.output.contains("engines              2"))
        #expect(busyClient(r.output, mountPID), "mount pid \(mountPID) missing or idle:\n\(r.output)")
        #expect(busyClient(r.output, helloPID), "warpdrive-hello pid \(helloPID) missing or idle:\n\(r.output)")
        // Queues table: QUEUE PID PASID DIRECTION STATE REQUESTS ...
        let mountQueues = rows(r.output, section: "queues", column: 1, value: mountPID)
        let helloQueues = rows(r.output, section: "queues", column: 1, value: helloPID)
        #expect(!mountQueues.isEmpty && !helloQueues.isEmpty, "\(r.output)")
        #expect(helloQueues.contains { $0[4] == "STARTED" && (UInt64($0[5]) ?? 0) > 0 }, "\(r.output)")
        // Two processes, two PASIDs.
        #expect(Set((mountQueues + helloQueues).map { $0[2] }).count == 2, "\(r.output)")

        let j = runCommand([warpfsBinary, "devices", "--device", d.socket, "--json"])
        #expect(j.status == 0, "\(j.output)")
        let json = String(j.output.drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
        #expect(json.hasPrefix("{") && json.hasSuffix("}"), "\(json)")
        #expect(json.contains("\"daemon_pid\":\(d.pid)"))
        #expect(json.contains("\"name\":\"warpdrive_zip_emu-0\""))
        #expect(json.contains("\"algorithms\":[\"deflate\",\"zlib\",\"gzip\",\"zstd\",\"lz4\"]"))
        #expect(json.contains("{\"pid\":\(hello.pid),\"uid\":\(getuid()),\"pasid\":"), "\(json)")
        #expect(json.contains("\"pid\":\(m.pid),\"pasid\":"), "queue row of the mount: \(json)")
        // The device totals are not all zero (they precede the queue list).
        #expect(json.contains("\"totals\":{\"requests\":") && !json.contains("\"totals\":{\"requests\":0,"), "\(json)")
        func count(_ c: Character) -> Int { json.filter { $0 == c }.count }
        #expect(count("{") == count("}") && count("[") == count("]"))

        // The daemon answers about itself the same way.
        let i = runCommand([String(warpfsBinary.dropLast("warpfs".count)) + "warpdrived", "--info", "--socket", d.socket])
        #expect(i.status == 0, "\(i.output)")
        #expect(busyClient(i.output, helloPID), "\(i.output)")
    }

    @Test func aMissingDaemonIsNamed() throws {
        let dir = makeTempDir("warpfs-devices")
        defer { removeTree(dir) }
        let socket = dir + "/nobody.sock"
        let r = runCommand([warpfsBinary, "devices", "--device", socket])
        #expect(r.status != 0)
        #expect(r.output.contains(socket) && r.output.contains("no such socket"), "\(r.output)")
        let i = runCommand([String(warpfsBinary.dropLast("warpfs".count)) + "warpdrived", "--info", "--socket", socket])
        #expect(i.status != 0)
        #expect(i.output.contains(socket), "\(i.output)")
        #expect(access(socket, F_OK) != 0, "--info must not start serving")
    }

    @Test func withoutADaemonTheEmulatedDeviceIsListed() throws {
        let r = runCommand([warpfsBinary, "devices"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("warpdrive_zip_emu-0 (emulated, in-process)"), "\(r.output)")
        for line in ["api                  hisi_qm_v2", "algorithms           deflate zlib gzip zstd lz4",
                     "available_instances  1024", "engines              2", "isolated             0"] {
            #expect(r.output.contains(line), "\(line) missing:\n\(r.output)")
        }
        let j = runCommand([warpfsBinary, "devices", "--json"])
        #expect(j.status == 0)
        #expect(j.output.hasPrefix("{\"devices\":[{\"name\":\"warpdrive_zip_emu-0\",\"kind\":\"emulated\""), "\(j.output)")
        #expect(j.output.contains("\"isolated\":false"))
    }

    /// Real uacce devices come from sysfs; a fixture tree stands in for it.
    @Test func uacceDevicesFromSysfsAreListed() throws {
        let root = makeTempDir("warpfs-sysfs")
        defer { removeTree(root) }
        let dev = root + "/class/uacce/hisi_zip-7"
        #expect(mkdir(root + "/class", 0o755) == 0 && mkdir(root + "/class/uacce", 0o755) == 0 && mkdir(dev, 0o755) == 0)
        try FileIO.write(dev + "/api", Array("hisi_qm_v3\n".utf8))
        try FileIO.write(dev + "/algorithms", Array("deflate\ngzip\n".utf8))
        try FileIO.write(dev + "/available_instances", Array("5\n".utf8))
        // One this client speaks: what a mount without device= takes.
        let own = root + "/class/uacce/warpdrive_zip-3"
        #expect(mkdir(own, 0o755) == 0)
        try FileIO.write(own + "/api", Array("warpdrive_zip_v1\n".utf8))
        try FileIO.write(own + "/algorithms", Array("deflate\nzlib\ngzip\n".utf8))
        let r = runCommand([warpfsBinary, "devices", "--sysfs", root])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("hisi_zip-7 (uacce, \(dev); listed only)"), "\(r.output)")
        #expect(r.output.contains("warpdrive_zip-3 (uacce, \(own); a mount without device= may take it for what it offers)"), "\(r.output)")
        #expect(r.output.contains("api                  hisi_qm_v3"))
        let j = runCommand([warpfsBinary, "devices", "--sysfs", root, "--json"])
        #expect(j.output.contains("{\"name\":\"hisi_zip-7\",\"kind\":\"uacce\",\"api\":\"hisi_qm_v3\""), "\(j.output)")
        #expect(j.output.contains("\"sysfs\":\"\(dev)\",\"driven\":false"), "\(j.output)")
        #expect(j.output.contains("\"sysfs\":\"\(own)\",\"driven\":true"), "\(j.output)")
    }
}
