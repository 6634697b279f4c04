#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
@testable import WarpDrive

/// Where the built executables are: beside the test bundle.
let builtProductsDirectory: String = {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, 4095)
    let exe = String(decoding: buf[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
}()

/// A process started with posix_spawn, its output in a file; killed and
/// reaped on `stop()`/deinit whatever the test's outcome.
final class Spawned: @unchecked Sendable {
    let pid: pid_t
    let outputPath: String
    private var reaped = false
    private(set) var exitStatus: Int32 = -1

    init(_ path: String, _ arguments: [String], output: String) throws {
        outputPath = output
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var p: pid_t = 0
        wd_spawn_close_from(&actions, 3)   // no stray descriptors (of mounts) in the child
        let rc = posix_spawn(&p, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw WarpDriveError.system(call: "posix_spawn \(path)", errno: rc) }
        pid = p
    }

    /// Waits up to `seconds` for the process to exit; returns its exit code
    /// (128 + signal when killed), or nil if it is still running.
    @discardableResult
    func wait(seconds: Double) -> Int32? {
        if reaped { return exitStatus }
        let deadline = wd_now_ns() + UInt64(seconds * 1e9)
        while true {
            var st: Int32 = 0
            let r = waitpid(pid, &st, WNOHANG)
            if r == pid {
                reaped = true
                exitStatus = st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f)
                return exitStatus
            }
            if wd_now_ns() >= deadline { return nil }
            usleep(5_000)
        }
    }

    func signal(_ s: Int32) { if !reaped { kill(pid, s) } }

    var output: String { readFile(outputPath) ?? "" }

    /// Stops the process: SIGTERM, then SIGKILL after `grace` seconds.
    func stop(grace: Double = 5) {
        guard !reaped else { return }
        signal(SIGTERM)
        if wait(seconds: grace) == nil {
            signal(SIGKILL)
            wait(seconds: 30)
        }
    }

    deinit { stop() }
}

/// A `warpdrived` on a socket in a fresh temporary directory.
final class Daemon: @unchecked Sendable {
    let directory: String
    let socket: String
    let process: Spawned

    /// `arguments` are added to warpdrived's command line.
    init(engines: Int = 2, queues: Int = 8, arguments: [String] = []) throws {
        var template = Array("/tmp/warpdrived-test-XXXXXX".utf8CString)
        directory = String(cString: mkdtemp(&template)!)
        socket = directory + "/warpdrive.sock"
        process = try Spawned(builtProductsDirectory + "/warpdrived",
                              ["--socket", socket, "--engines", "\(engines)", "--queues", "\(queues)"] + arguments,
                              output: directory + "/warpdrived.log")
        // Ready once it accepts a connection.
        let deadline = wd_now_ns() + 20_000_000_000
        while true {
            if (try? RemoteDevice(socket: socket)) != nil { break }
            if let rc = process.wait(seconds: 0) {
                throw WarpDriveError.daemonUnavailable(socket: socket, reason: "warpdrived exited with \(rc): \(process.output)")
            }
            guard wd_now_ns() < deadline else {
                throw WarpDriveError.daemonUnavailable(socket: socket, reason: "not accepting after 20 s")
            }
            usleep(10_000)
        }
    }

    /// Stops the daemon and removes its directory.
    func stop() {
        process.stop()
        unlink(directory + "/warpdrived.log")
        unlink(socket)
        for f in ["data", "hello-0.log", "hello-1.log", "victim.log"] { unlink(directory + "/" + f) }
        // Whatever else a test left there (files only).
        if let d = opendir(directory) {
            while let e = readdir(d) {
                let name = String(cString: wd_dirent_name(e))
                if name != "." && name != ".." { unlink(directory + "/" + name) }
            }
            closedir(d)
        }
        rmdir(directory)
    }

    deinit { stop() }

    /// Polls the daemon's figures until `condition` holds (or 10 s pass).
    func waitForInfo(_ device: RemoteDevice, _ condition: (DaemonInfo) -> Bool) throws -> DaemonInfo {
        let deadline = wd_now_ns() + 10_000_000_000
        while true {
            let i = try device.info()
            if condition(i) || wd_now_ns() >= deadline { return i }
            usleep(5_000)
        }
    }
}

/// Starts a daemon, runs `body`, and stops the daemon whatever happens.
func withDaemon<T>(engines: Int = 2, queues: Int = 8, arguments: [String] = [], _ body: (Daemon) throws -> T) throws -> T {
    let d = try Daemon(engines: engines, queues: queues, arguments: arguments)
    defer { d.stop() }
    return try body(d)
}

func writeFile(_ path: String, _ data: [UInt8]) {
    let f = fopen(path, "wb")!
    _ = data.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
    fclose(f)
}

func remoteSession(_ device: RemoteDevice, _ a: CompressionAlgorithm, _ d: Direction, level: Int = 6,
                   timeoutMs: Int = 30_000) throws -> CompressionSession {
    var c = SessionConfiguration(algorithm: a, direction: d, level: level)
    c.timeoutMilliseconds = timeoutMs
    return try CompressionSession(device: device, configuration: c)
}

@Suite(.serialized) struct DaemonTests {
    @Test func compressAndDecompressThroughTheDaemonGiveTheBytesOfInProcessAndZlib() throws {
        try withDaemon { daemon in
            let remote = try RemoteDevice(socket: daemon.socket)
            #expect(remote.daemonPID == daemon.process.pid)
            for (a, level) in [(CompressionAlgorithm.zlib, 6), (.gzip, 1), (.deflate, 9)] {
                let data = TestData.mixed(300_000, seed: UInt64(level))
                let c = try remoteSession(remote, a, .compress, level: level)
                let d = try remoteSession(remote, a, .decompress)
                let viaDaemon = try c.compress(data)
                let inProcess = try withDevice { dev in try session(dev, a, .compress, level: level).compress(data) }
                #expect(viaDaemon == inProcess, "\(a) level \(level)")
                // Levels 1...3 are ISA-L's (any inflater reads them), the others zlib's own bytes.
                if level > 3 { #expect(viaDaemon == Zlib.compress(data, a, level: level), "\(a) level \(level)") }
                #expect(try d.decompress(viaDaemon, capacity: data.count) == data)
                #expect(Zlib.decompress(viaDaemon, a, capacity: data.count) == data)
                // The queue's PASID names this process in the daemon, not the daemon itself.
                let q = c.currentQueues[0]
                let row = try remote.report().queues.first { $0.number == q.number }
                #expect(row?.pid == getpid() && row?.pasid == q.pasid && row?.pid != daemon.process.pid, "\(String(describing: row))")
                #expect(c.currentQueues[0].counters.requests == 1)
                c.close(); d.close()
            }
            // Everything released: instances back, no PASID bound.
            let info = try daemon.waitForInfo(remote) { $0.availableInstances == $0.totalInstances && $0.boundPASIDs == 0 }
            #expect(info.availableInstances == 8 && info.boundPASIDs == 0 && info.clients >= 1)
            #expect(info.requests == 6)
        }
    }

    @Test func twoClientProcessesShareTheDaemonConcurrently() throws {
        try withDaemon { daemon in
            let file = daemon.directory + "/data"
            writeFile(file, TestData.mixed(1 << 20, seed: 7))
            let hello = builtProductsDirectory + "/warpdrive-hello"
            let clients = try (0..<2).map {
                try Spawned(hello, ["--device", daemon.socket, "--repeat", "15", file], output: daemon.directory + "/hello-\($0).log")
            }
            // This process uses the daemon at the same time.
            let remote = try RemoteDevice(socket: daemon.socket)
            let c = try remoteSession(remote, .zlib, .compress, level: 1)
            let data = TestData.text(200_000)
            var sawOthers = false
            for _ in 0..<20 {
                #expect(Zlib.decompress(try c.compress(data), .zlib, capacity: data.count) == data)
                if try remote.info().boundPASIDs >= 2 { sawOthers = true }
            }
            for (i, p) in clients.enumerated() {
                #expect(p.wait(seconds: 120) == 0, "client \(i): \(p.output)")
                #expect(p.output.contains("restores the input: OK"), "client \(i): \(p.output)")
                #expect(p.output.contains("requests=15"), "client \(i): \(p.output)")
            }
            #expect(sawOthers, "no other client held a PASID while this one worked")
            c.close()
            let info = try daemon.waitForInfo(remote) { $0.boundPASIDs == 0 && $0.clients == 1 }
            #expect(info.requests == 50)
            #expect(info.boundPASIDs == 0 && info.availableInstances == info.totalInstances)
        }
    }

    /// Submits one raw deflate request on `q` and returns the reaped request.
    func roundTrip(_ q: WarpDrive.Queue, source: UInt64, length: Int, destination: UInt64, capacity: Int) throws -> PendingRequest {
        #expect(try q.trySubmit(PendingRequest(), source: source, sourceLength: length, destination: destination,
                                destinationCapacity: capacity, type: .deflate, level: 1, window: .size32K))
        var got: PendingRequest?
        try q.wait(until: { got != nil }, deadline: wd_now_ns() + 30_000_000_000, timeoutMilliseconds: 30_000, mode: .interrupt) { got = $0 }
        return got!
    }

    /// Start addresses of the readable mappings of `pid`.
    func mappings(_ pid: pid_t) -> [(UInt64, UInt64, String)] {
        guard let f = fopen("/proc/\(pid)/maps", "r") else { return [] }
        defer { fclose(f) }
        var out: [(UInt64, UInt64, String)] = []
        var line = [CChar](repeating: 0, count: 1024)
        while fgets(&line, 1024, f) != nil {
            let s = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = s.split(separator: " ", omittingEmptySubsequences: true)
            let range = fields.first?.split(separator: "-") ?? []
            if range.count == 2, let lo = UInt64(range[0], radix: 16), let hi = UInt64(range[1], radix: 16),
               fields.count > 1, fields[1].hasPrefix("r") {
                out.append((lo, hi, fields.count > 5 ? String(fields[5].filter { $0 != "\n" }) : ""))
            }
        }
        return out
    }

    /// A client that fills four queues with requests naming nothing and
    /// never reaps them, and floods a fifth with garbage doorbell words,
    /// while another client process does real work: that process finishes
    /// (clients take turns on the engines; bad doorbells are counted and
    /// dropped), and the daemon keeps serving.
    @Test func aMisbehavingClientDoesNotStarveOthers() throws {
        // Every process here is root: the per-user queue cap (6 of 8) would
        // refuse the well-behaved client's queue.
        try withDaemon(queues: 8, arguments: ["--max-queues-per-user", "8"]) { daemon in
            let file = daemon.directory + "/data"
            writeFile(file, TestData.mixed(1 << 20, seed: 9))
            let remote = try RemoteDevice(socket: daemon.socket)
            let hogs = try (0..<4).map { _ in try Queue.started(device: remote, direction: .compress) }
            defer { hogs.forEach { $0.release() } }
            var queued = 0
            for q in hogs {
                while (try? q.trySubmit(PendingRequest(), source: 0x10, sourceLength: 65536, destination: 0x10,
                                        destinationCapacity: 65536, type: .deflate, level: 1, window: .size32K)) == true { queued += 1 }
            }
            #expect(queued > 1000)
            let noisy = try remote.openDeviceQueue()
            _ = try noisy.map(.mmio); _ = try noisy.map(.dus)
            try noisy.setContext(.compress); try noisy.start()
            defer { noisy.put() }
            final class Flag: Sendable { let stop = Atomic<Bool>(false); let rings = Atomic<Int>(0); let status = Atomic<Int32>(-1) }
            let flag = Flag()
            let hello = builtProductsDirectory + "/warpdrive-hello"
            let client = try Spawned(hello, ["--device", daemon.socket, "--repeat", "10", file], output: daemon.directory + "/hello.log")
            runThreads(2) { i in
                if i == 0 {
                    flag.status.store(client.wait(seconds: 120) ?? -1, ordering: .relaxed)
                    flag.stop.store(true, ordering: .relaxed)
                } else {
                    var x: UInt64 = 0x9E37_79B9_7F4A_7C15
                    while !flag.stop.load(ordering: .relaxed) {
                        x ^= x << 13; x ^= x >> 7; x ^= x << 17
                        noisy.doorbell(x)
                        flag.rings.add(1, ordering: .relaxed)
                    }
                }
            }
            let status = flag.status.load(ordering: .relaxed)
            #expect(status == 0, "well-behaved client: \(client.output)")
            #expect(client.output.contains("restores the input: OK"), "\(client.output)")
            #expect(flag.rings.load(ordering: .relaxed) > 1000, "only \(flag.rings.load(ordering: .relaxed)) doorbells were rung")
            // The garbage doorbells were counted as errors of that queue and dropped.
            let noisyRow = try remote.report().queues.first { $0.number == noisy.number }
            #expect((noisyRow?.counters.errors ?? 0) > 0, "\(String(describing: noisyRow))")
            // Still serving.
            let c = try remoteSession(remote, .zlib, .compress, level: 1)
            defer { c.close() }
            let data = TestData.text(100_000)
            #expect(Zlib.decompress(try c.compress(data), .zlib, capacity: data.count) == data)
        }
    }

    @Test func addressesTheClientDoesNotMapFaultAndTheQueueKeepsServing() throws {
        try withDaemon { daemon in
            let remote = try RemoteDevice(socket: daemon.socket)
            let q = try Queue.started(device: remote, direction: .compress)
            defer { q.release() }
            let page = mmap(nil, 65536, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)!
            defer { munmap(page, 65536) }
            let gone = UInt64(UInt(bitPattern: page))
            // An address the daemon maps (its own heap or binary) and this process does not.
            let ours = mappings(getpid())
            let daemonOnly = mappings(daemon.process.pid).first { m in !ours.contains { m.0 < $0.1 && $0.0 < m.1 } }
            let theirs = try #require(daemonOnly, "every daemon mapping overlaps one of ours").0
            var out = [UInt8](repeating: 0, count: 8192)
            let data = TestData.text(3000)
            try data.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { d in
                    let src = UInt64(UInt(bitPattern: s.baseAddress)), dst = UInt64(UInt(bitPattern: d.baseAddress))
                    let r1 = try roundTrip(q, source: gone, length: 3000, destination: dst, capacity: d.count)
                    #expect(r1.status == CompletionStatus.pageFault && r1.faultAddress == gone)
                    let r2 = try roundTrip(q, source: src, length: s.count, destination: gone, capacity: 4096)
                    #expect(r2.status == CompletionStatus.pageFault && r2.faultAddress == gone)
                    // The daemon's own memory is out of reach: the address is translated in our space.
                    let r3 = try roundTrip(q, source: theirs, length: 64, destination: dst, capacity: d.count)
                    #expect(r3.status == CompletionStatus.pageFault && r3.faultAddress == theirs)
                    let r4 = try roundTrip(q, source: src, length: s.count, destination: theirs, capacity: 4096)
                    #expect(r4.status == CompletionStatus.pageFault && r4.faultAddress == theirs)
                    // The next good request is served.
                    let r5 = try roundTrip(q, source: src, length: s.count, destination: dst, capacity: d.count)
                    #expect(r5.status == CompletionStatus.ok)
                    #expect(Zlib.decompress(Array(d[0..<r5.produced]), .deflate, capacity: data.count) == data)
                }
            }
            #expect(q.counters.errors == 4)
            // Through a session the fault is a pageFault error naming the PASID and address.
            let c = try remoteSession(remote, .deflate, .compress)
            let bad = UnsafeRawBufferPointer(start: page, count: 4096)
            _ = out.withUnsafeMutableBytes { d in
                #expect(throws: WarpDriveError.pageFault(pasid: c.currentQueues[0].pasid, address: gone)) { try c.process(bad, into: d) }
            }
            #expect(try c.compress(data) == Zlib.compress(data, .deflate, level: 6))
        }
    }

    @Test func aClientKilledMidRequestHasItsQueuesAndPASIDFreed() throws {
        try withDaemon(engines: 1) { daemon in
            let file = daemon.directory + "/data"
            writeFile(file, TestData.mixed(6 << 20, seed: 11))
            let remote = try RemoteDevice(socket: daemon.socket)
            let victim = try Spawned(builtProductsDirectory + "/warpdrive-hello",
                                     ["--device", daemon.socket, "--repeat", "100000", file], output: daemon.directory + "/victim.log")
            defer { victim.stop(grace: 0) }
            // Wait until it holds a queue and its requests are being served.
            let busy = try daemon.waitForInfo(remote) { $0.availableInstances == $0.totalInstances - 1 && $0.requests >= 2 }
            try #require(busy.availableInstances == busy.totalInstances - 1 && busy.boundPASIDs == 1, "\(busy) \(victim.output)")
            usleep(20_000)  // an engine is in the middle of a 6 MiB request now
            victim.signal(SIGKILL)
            #expect(victim.wait(seconds: 10) == 128 + SIGKILL)
            let after = try daemon.waitForInfo(remote) { $0.availableInstances == $0.totalInstances && $0.boundPASIDs == 0 && $0.clients == 1 }
            #expect(after.availableInstances == after.totalInstances, "\(after)")
            #expect(after.boundPASIDs == 0, "\(after)")
            #expect(after.clients == 1, "\(after)")
            // The daemon keeps serving.
            let c = try remoteSession(remote, .zlib, .compress, level: 1)
            let data = TestData.mixed(500_000)
            #expect(Zlib.decompress(try c.compress(data), .zlib, capacity: data.count) == data)
            #expect(daemon.process.wait(seconds: 0) == nil, "warpdrived exited: \(daemon.process.output)")
        }
    }

    @Test func stoppingTheDaemonGivesClientsClearErrorsNotAHang() throws {
        try withDaemon { daemon in
            let remote = try RemoteDevice(socket: daemon.socket)
            let c = try remoteSession(remote, .zlib, .compress, level: 9, timeoutMs: 60_000)
            let data = TestData.mixed(4 << 20)
            #expect(try c.compress(data) == Zlib.compress(data, .zlib, level: 9))
            // Requests keep the device busy while the daemon is told to stop.
            let errors = Mutex<[WarpDriveError]>([])
            let started = Atomic<Bool>(false)
            let t0 = wd_now_ns()
            runThreads(2) { i in
                if i == 0 {
                    for _ in 0..<1000 {
                        started.store(true, ordering: .releasing)
                        do { _ = try c.compress(data) } catch let e as WarpDriveError { errors.withLock { $0.append(e) }; return } catch { return }
                    }
                } else {
                    while !started.load(ordering: .acquiring) { usleep(1000) }
                    usleep(50_000)
                    daemon.process.signal(SIGTERM)
                }
            }
            let elapsed = Double(wd_now_ns() - t0) / 1e9
            #expect(daemon.process.wait(seconds: 10) == 0, "\(daemon.process.output)")
            let first = try #require(errors.withLock { $0.first })
            switch first {
            case .deviceReset, .daemonUnavailable: break
            default: Issue.record("unexpected error \(first)")
            }
            #expect(elapsed < 20, "the client took \(elapsed) s to see the daemon stop")
            // The socket is gone; later requests name it.
            #expect(access(daemon.socket, F_OK) != 0)
            #expect {
                _ = try c.compress(data)
            } throws: { e in
                guard case .daemonUnavailable(let s, _) = e as? WarpDriveError else { return false }
                return s == daemon.socket
            }
            #expect(throws: WarpDriveError.daemonUnavailable(socket: daemon.socket, reason: "no such socket (is warpdrived running?)")) {
                _ = try RemoteDevice(socket: daemon.socket)
            }
        }
    }

    @Test func aDaemonKilledMidRequestIsAnErrorNotAHang() throws {
        try withDaemon(engines: 1) { daemon in
            let remote = try RemoteDevice(socket: daemon.socket)
            let c = try remoteSession(remote, .zlib, .compress, level: 9, timeoutMs: 60_000)
            let data = TestData.mixed(8 << 20)
            let outcome = Mutex<Result<Int, WarpDriveError>?>(nil)
            let t0 = wd_now_ns()
            runThreads(2) { i in
                if i == 0 {
                    do { _ = try c.compress(data); outcome.withLock { $0 = .success(0) } }
                    catch { outcome.withLock { $0 = .failure(error as! WarpDriveError) } }
                } else {
                    usleep(100_000)  // the 8 MiB level-9 request takes far longer than this
                    daemon.process.signal(SIGKILL)
                }
            }
            let elapsed = Double(wd_now_ns() - t0) / 1e9
            #expect(daemon.process.wait(seconds: 10) == 128 + SIGKILL)
            guard case .failure(.daemonUnavailable(let s, _))? = outcome.withLock({ $0 }) else {
                Issue.record("expected daemonUnavailable, got \(String(describing: outcome.withLock { $0 }))")
                return
            }
            #expect(s == daemon.socket)
            #expect(elapsed < 10, "the client took \(elapsed) s to see the daemon die (time-out is 60 s)")
        }
    }

    /// The status report spans several messages when many queues are open,
    /// and a client's sums keep the counters of queues it released.
    @Test func theReportListsEveryQueueAcrossPagesAndKeepsReleasedCounters() throws {
        try withDaemon(queues: 100) { daemon in
            let remote = try RemoteDevice(socket: daemon.socket)
            let data = TestData.mixed(300_000)
            do {
                let c = try remoteSession(remote, .zlib, .compress, level: 1)
                _ = try c.compress(data)
            }
            let queues = try (0..<70).map { _ in try remote.openDeviceQueue() }
            defer { queues.forEach { $0.put() } }
            #expect(DaemonReport.page(try remote.report().lines, from: 0).next < 70, "the report should need more than one page")
            let r = try remote.report()
            #expect(r.queues.map(\.number).sorted() == queues.map(\.number).sorted())
            #expect(r.queues.allSatisfy { $0.pid == getpid() && $0.pasid == queues[0].pasid && $0.state == .initialized })
            #expect(r.totalQueues == 100 && r.attributes.availableInstances == 30 && r.daemonPID == daemon.process.pid)
            let me = r.clients.filter { $0.pid == getpid() }
            #expect(me.count == 1 && me.first?.queues == 70 && me.first?.pasid == queues[0].pasid, "\(r.clients)")
            #expect((me.first?.counters.requests ?? 0) >= 1 && me.first?.counters.bytesIn == UInt64(data.count), "\(r.clients)")
            #expect(r.totals.requests == me.first?.counters.requests)
            #expect(DaemonReport(lines: r.lines) == r)
        }
    }

    @Test func noDaemonIsAClearError() throws {
        var template = Array("/tmp/warpdrived-test-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&template)!)
        defer { rmdir(dir) }
        #expect(throws: WarpDriveError.daemonUnavailable(socket: dir + "/none.sock", reason: "no such socket (is warpdrived running?)")) {
            _ = try RemoteDevice(socket: dir + "/none.sock")
        }
        // A stale socket file nobody listens on.
        let fd = wd_seqpacket_listen(dir + "/stale.sock", 1)
        try #require(fd >= 0)
        close(fd)
        defer { unlink(dir + "/stale.sock") }
        #expect(throws: WarpDriveError.daemonUnavailable(socket: dir + "/stale.sock",
                                                         reason: "connection refused (warpdrived is not running; stale socket)")) {
            _ = try RemoteDevice(socket: dir + "/stale.sock")
        }
    }
}
