#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing

/// The WarpFS tests over GlusterFS run inside the harness's serialized
/// suite: one process's volumes share one glusterd, and the harness's own
/// tests check that it is gone when their volume is.
typealias GlusterTests = GlusterHarnessTests.GlusterTests

extension GlusterHarnessTests {
    /// `-o shared` over a real GlusterFS volume mounted twice (two hosts'
    /// clients, `GlusterVolume`), a WarpFS mount over each: close-to-open
    /// turns of two processes against a model, writers on both hosts at once,
    /// a host killed mid-write, and fsck at the end. A machine where GlusterFS
    /// cannot start fails these tests (GlusterVolume throws what failed).
    @Suite(.serialized) struct GlusterTests {
        /// One host's driver: a second process that runs one operation per
        /// line of its standard input on its WarpFS mount, each a whole
        /// open-change-close, and answers with one line. Data comes from the
        /// same generator as the test's `Rng`, so the test's model knows it.
        static let driver = #"""
    import os, sys
    M = (1 << 64) - 1
    def gen(seed, n):
        s = seed | 1
        out = bytearray(n)
        for i in range(n):
            s ^= s >> 12; s ^= (s << 25) & M; s ^= s >> 27
            out[i] = ((s * 0x2545F4914F6CDD1D) & M) & 0xFF
        return bytes(out)
    def fnv(data):
        h = 0xcbf29ce484222325
        for b in data:
            h = ((h ^ b) * 0x100000001b3) & M
        return h
    root = sys.argv[1]
    for line in sys.stdin:
        w = line.split()
        try:
            if w[0] == "write":
                fd = os.open(os.path.join(root, w[1]), os.O_WRONLY | os.O_CREAT, 0o644)
                os.pwrite(fd, gen(int(w[4]), int(w[3])), int(w[2])); os.close(fd); print("ok")
            elif w[0] == "truncate":
                fd = os.open(os.path.join(root, w[1]), os.O_WRONLY); os.ftruncate(fd, int(w[2])); os.close(fd); print("ok")
            elif w[0] == "rename":
                os.rename(os.path.join(root, w[1]), os.path.join(root, w[2])); print("ok")
            elif w[0] == "unlink":
                os.unlink(os.path.join(root, w[1])); print("ok")
            elif w[0] == "read":
                fd = os.open(os.path.join(root, w[1]), os.O_RDONLY)
                size = os.fstat(fd).st_size
                data = b""
                while True:
                    piece = os.read(fd, 1 << 20)
                    if not piece: break
                    data += piece
                os.close(fd)
                print("data %d %d %d" % (len(data), size, fnv(data)))
            elif w[0] == "list":
                print(" ".join(sorted(os.listdir(root))))
            else:
                print("err unknown")
        except OSError as e:
            print("err %d" % e.errno)
        sys.stdout.flush()
    """#

        static func fnv(_ data: [UInt8]) -> UInt64 {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in data { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            return h
        }

        /// A driver process on `root`, talking through pipes.
        final class Driver {
            let pid: pid_t
            let input: UnsafeMutablePointer<FILE>
            let output: UnsafeMutablePointer<FILE>

            init(root: String) throws {
                var toChild: [Int32] = [0, 0], fromChild: [Int32] = [0, 0]
                guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw Errno(errno, "pipe") }
                var actions = posix_spawn_file_actions_t()
                posix_spawn_file_actions_init(&actions)
                defer { posix_spawn_file_actions_destroy(&actions) }
                posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
                posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
                wd_spawn_close_from(&actions, 3)
                let args = ["/usr/bin/python3", "-c", GlusterTests.driver, root]
                let cargs = args.map { strdup($0) } + [nil]
                defer { cargs.forEach { free($0) } }
                var p: pid_t = 0
                let rc = posix_spawn(&p, args[0], &actions, nil, cargs, environ)
                Glibc.close(toChild[0]); Glibc.close(fromChild[1])
                guard rc == 0 else { throw Errno(rc, "spawn python3") }
                pid = p
                input = fdopen(toChild[1], "w")
                output = fdopen(fromChild[0], "r")
            }

            func run(_ command: String) -> String {
                fputs(command + "\n", input)
                fflush(input)
                var line = [CChar](repeating: 0, count: 1 << 16)
                guard fgets(&line, Int32(line.count), output) != nil else { return "err eof" }
                var text = String(cString: line)
                while text.hasSuffix("\n") { text.removeLast() }
                return text
            }

            func close() {
                fclose(input)
                fclose(output)
                var status: Int32 = 0
                waitpid(pid, &status, 0)
            }
        }

        /// The mounts: a GlusterFS volume's two clients, a WarpFS mount over each.
        final class TwoHosts {
            let volume: GlusterVolume
            let a: TestMount
            let b: TestMount

            init(options: String = "shared,block_size=16k") throws {
                volume = try GlusterVolume()
                do {
                    #expect(mkdir(volume.hostA + "/backing", 0o755) == 0)
                    a = try TestMount(options: options, backing: volume.hostA + "/backing")
                    do { b = try TestMount(options: options, backing: volume.hostB + "/backing") } catch { a.close(); throw error }
                } catch {
                    volume.close()
                    throw error
                }
            }

            func close() {
                a.unmount()
                b.unmount()
                volume.close()
            }
        }

        /// Two processes, one per host, in close-to-open turns: random writes,
        /// truncations, renames and unlinks on either host, every read on
        /// either host checked against the model.
        @Test func twoHostsInCloseToOpenTurnsAgainstAModel() throws {
            let hosts = try TwoHosts()
            defer { hosts.close() }
            let drivers = [try Driver(root: hosts.a.mountpoint), try Driver(root: hosts.b.mountpoint)]
            defer { drivers.forEach { $0.close() } }
            var model: [String: [UInt8]] = [:]
            var r = Rng(wd_now_ns())
            let seed = r.s
            let names = ["a", "b", "c", "d"]
            var checked = 0
            for step in 0..<300 {
                let host = r.int(2)
                let d = drivers[host]
                let name = names[r.int(names.count)]
                let where_ = "seed \(seed) step \(step) host \(host == 0 ? "A" : "B")"
                switch r.int(10) {
                case 0..<4:
                    let old = model[name] ?? []
                    let off = r.int(old.count + 20_000), len = 1 + r.int(r.int(4) == 0 ? 120_000 : 6000), s = r.next() >> 1
                    #expect(d.run("write \(name) \(off) \(len) \(s)") == "ok", "\(where_): write")
                    var new = old
                    if new.count < off + len { new += [UInt8](repeating: 0, count: off + len - new.count) }
                    var g = Rng(s)
                    new.replaceSubrange(off..<(off + len), with: g.bytes(len))
                    model[name] = new
                case 4:
                    guard let old = model[name] else { continue }
                    let len = r.int(old.count + 10_000)
                    #expect(d.run("truncate \(name) \(len)") == "ok", "\(where_): truncate")
                    model[name] = len <= old.count ? Array(old[0..<len]) : old + [UInt8](repeating: 0, count: len - old.count)
                case 5:
                    guard let data = model[name] else { continue }
                    let to = names[r.int(names.count)]
                    guard to != name else { continue }
                    #expect(d.run("rename \(name) \(to)") == "ok", "\(where_): rename")
                    model[to] = data
                    model[name] = nil
                case 6:
                    guard model[name] != nil else { continue }
                    #expect(d.run("unlink \(name)") == "ok", "\(where_): unlink")
                    model[name] = nil
                default:
                    let got = d.run("read \(name)")
                    if let want = model[name] {
                        #expect(got == "data \(want.count) \(want.count) \(GlusterTests.fnv(want))", "\(where_): read \(name) gave '\(got)'")
                        checked += 1
                    } else {
                        #expect(got == "err \(ENOENT)", "\(where_): read of removed \(name) gave '\(got)'")
                    }
                }
            }
            // Both hosts end with the model's names and contents.
            for d in drivers {
                #expect(d.run("list") == model.keys.sorted().joined(separator: " "))
                for (name, want) in model { #expect(d.run("read \(name)") == "data \(want.count) \(want.count) \(GlusterTests.fnv(want))") }
            }
            hosts.a.unmount()
            hosts.b.unmount()
            let fsck = runCommand([warpfsBinary, "fsck", hosts.volume.hostB + "/backing", "--progress", "never"])
            #expect(fsck.status == 0, "\(fsck.output)")
            print("gluster: seed \(seed): 300 steps, \(checked) reads checked against the model")
            try hosts.a.start()
            try hosts.b.start()
        }

        /// Writers on both hosts at once, each rewriting one file whole (in two
        /// writes) and fsyncing, many times: the writer lock serialises them, so
        /// no block ever holds parts of two versions, and at the end the file
        /// is one writer's last version, whole.
        @Test func writersOnBothHostsNeverInterleave() throws {
            let hosts = try TwoHosts()
            defer { hosts.close() }
            try GlusterTests.writersNeverInterleave(hosts.a, hosts.b)
        }

        /// The body of the concurrent-writers test, for any two mounts of one
        /// backing directory (SharedModeTests runs it on a local one).
        static func writersNeverInterleave(_ a: TestMount, _ b: TestMount) throws {
            let length = 150_000
            try FileIO.write(a.path("f"), SharedModeTests.version("f", 0, length: length))
            let problems = Mutex<[String]>([])
            let paths = [a.path("f"), b.path("f")]
            threads(2) { t in
                for round in 0..<10 {
                    let v = 1 + round * 2 + t
                    let fd = open(paths[t], O_RDWR | O_CLOEXEC)
                    guard fd >= 0 else { problems.withLock { $0.append("host \(t): open: errno \(errno)") }; return }
                    let d = SharedModeTests.version("f", v, length: length)
                    // Two halves: a writer that interleaved with the other would leave blocks of both.
                    let half = length / 2
                    let first = d[0..<half].withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
                    let e1 = errno
                    let second = d[half...].withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(half)) }
                    let e2 = errno
                    let synced = fsync(fd)
                    let e3 = errno
                    if first != half || second != length - half || synced != 0 {
                        problems.withLock {
                            $0.append("host \(t) version \(v): first write \(first) (errno \(e1)), second \(second) (errno \(e2)), fsync \(synced) (errno \(e3))")
                        }
                    }
                    Glibc.close(fd)
                    // Read on this host between writes (the other host may be
                    // writing already): every block one whole version.
                    if let got = try? FileIO.read(paths[t]) {
                        for block in stride(from: 0, to: got.count, by: 16384) {
                            let bytes = Array(got[block..<min(block + 16384, got.count)])
                            let w = SharedModeTests.versionField(bytes)
                            if got.count != length || w < 0
                                || bytes != Array(SharedModeTests.version("f", w, length: length)[block..<min(block + 16384, length)]) {
                                problems.withLock { $0.append("host \(t) after version \(v): block at \(block) is not one whole version (v\(w), \(got.count) bytes)") }
                            }
                        }
                    }
                }
            }
            #expect(problems.withLock { $0 }.isEmpty, "\(problems.withLock { $0 }.prefix(5)); host A's log: \(a.log.suffix(3000)); host B's log: \(b.log.suffix(3000))")
            let onA = try FileIO.read(a.path("f")), onB = try FileIO.read(b.path("f"))
            #expect(onA == onB)
            let v = SharedModeTests.versionField(onA)
            #expect(onA == SharedModeTests.version("f", v, length: length), "the file is not one whole version")
            #expect(v == 19 || v == 20, "the last version is v\(v)")
        }

        /// Host A's WarpFS is killed in the middle of rewrites; host B's next
        /// writer recovers the file (A's lock went with its process), every
        /// unit holds a version at least as new as the last fsynced one, and
        /// fsck on either host finds nothing.
        @Test func aKilledHostsFileIsRecoveredOnTheOther() throws {
            let hosts = try TwoHosts()
            defer { hosts.close() }
            let floor = try SharedModeTests.killWriterThenWriteOnTheOther(hosts.a, hosts.b, length: 200_000, killAfter: 400_000)
            hosts.b.unmount()
            for side in [hosts.volume.hostA, hosts.volume.hostB] {
                let fsck = runCommand([warpfsBinary, "fsck", side + "/backing", "--progress", "never"])
                #expect(fsck.status == 0, "\(side): \(fsck.output)")
            }
            print("gluster: host A killed after version \(floor) was fsynced")
            try hosts.a.start()
            try hosts.b.start()
        }
    }
}
