#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
import WarpFSFormat

/// The durability contract under SIGKILL of the file-system process.
@Suite struct CrashTests {
    static let unit = 4096
    static let units = 96          // 384 KiB per file: 24 blocks of 16 KiB, two groups
    static let files = 4
    static let writers = 3

    /// The content of version `v` of a unit: a self-describing header
    /// (file, unit, version) and a fill that depends on all three, half of
    /// the versions compressible, half random (stored raw).
    static func content(file: Int, unit u: Int, version v: Int) -> [UInt8] {
        var r = Rng(UInt64(file &* 1_000_003 &+ u &* 7919 &+ v &* 104_729 &+ 1))
        var out = [UInt8](repeating: 0, count: 24)
        for (i, x) in [UInt64(0xC0FFEE), UInt64(file << 32 | u), UInt64(v)].enumerated() {
            withUnsafeBytes(of: x.littleEndian) { for k in 0..<8 { out[i * 8 + k] = $0[k] } }
        }
        return out + (v % 2 == 0 ? r.text(unit - 24) : r.bytes(unit - 24))
    }

    /// What the test knows per unit: the version the file system must at
    /// least show (durable), and the newest it may show (attempted).
    struct Model {
        var durable = [[Int]](repeating: [Int](repeating: 0, count: CrashTests.units), count: CrashTests.files)
        var completed = [[Int]](repeating: [Int](repeating: 0, count: CrashTests.units), count: CrashTests.files)
        var attempted = [[Int]](repeating: [Int](repeating: 0, count: CrashTests.units), count: CrashTests.files)
    }

    /// Writers rewrite ranges of units and fsync at random; the file-system
    /// process is killed with SIGKILL at a random moment; after a remount
    /// every unit must read without EIO and hold its last fsynced version
    /// or a newer one, whole. Repeated on the same backing directory, so
    /// later rounds crash over files with durable data and older versions.
    @Test func sigkillWhileWritingLosesNothingFsynced() throws {
        let m = try TestMount(options: "block_size=16k")
        defer { m.close() }
        let model = ModelBox()
        // WARPFS_CRASH_SEED replays a run; WARPFS_CRASH_ROUNDS runs longer.
        let seedValue = getenv("WARPFS_CRASH_SEED").flatMap { UInt64(String(cString: $0)) } ?? wd_now_ns()
        let rounds = getenv("WARPFS_CRASH_ROUNDS").flatMap { Int(String(cString: $0)) } ?? 16
        print("crash test: seed \(seedValue), \(rounds) rounds")
        var seed = Rng(seedValue)
        for round in 0..<rounds {
            let stop = StopFlag()
            let seeds = (0..<CrashTests.writers).map { _ in seed.next() }
            let delay = useconds_t(30_000 + seed.int(300_000))
            let pid = m.pid
            let paths = (0..<CrashTests.files).map { m.path("f\($0)") }
            threads(CrashTests.writers + 1) { t in
                if t == CrashTests.writers {
                    usleep(delay)
                    kill(pid, SIGKILL)
                    stop.flag.store(true, ordering: .relaxed)
                } else {
                    WriterContext(paths: paths, model: model, stop: stop, owner: t, seed: seeds[t]).run()
                }
            }
            m.unmount()
            try m.start()
            // Verify, then take what is shown as the new floor (it survives
            // further kills: the backing file system keeps it).
            for f in 0..<CrashTests.files {
                let path = m.path("f\(f)")
                guard FileIO.exists(path) else {
                    #expect(model.state.withLock { $0.durable[f].allSatisfy { $0 == 0 } }, "seed \(seedValue) round \(round): f\(f) is gone")
                    continue
                }
                let data: [UInt8]
                do { data = try FileIO.read(path) } catch {
                    Issue.record("seed \(seedValue) round \(round): reading f\(f) failed: \(error); log: \(m.log)")
                    return
                }
                for u in 0..<CrashTests.units {
                    let lo = u * CrashTests.unit
                    let bytes = lo < data.count ? Array(data[lo..<min(data.count, lo + CrashTests.unit)]) : []
                    let shown: Int
                    if bytes.isEmpty || bytes.allSatisfy({ $0 == 0 }) {
                        shown = 0
                    } else {
                        let v = bytes.count >= 24 ? Int(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 16, as: UInt64.self) }) : -1
                        guard v > 0, bytes == CrashTests.content(file: f, unit: u, version: v) else {
                            Issue.record("seed \(seedValue) round \(round): f\(f) unit \(u) holds bytes of no version written there (version field \(v))")
                            return
                        }
                        shown = v
                    }
                    let (floor, ceiling) = model.state.withLock { ($0.durable[f][u], $0.attempted[f][u]) }
                    #expect(shown >= floor && shown <= ceiling,
                            "seed \(seedValue) round \(round): f\(f) unit \(u) shows version \(shown); fsynced \(floor), newest written \(ceiling)")
                    model.state.withLock {
                        $0.durable[f][u] = shown
                        $0.completed[f][u] = shown
                        $0.attempted[f][u] = max($0.attempted[f][u], shown)
                    }
                }
            }
        }
        let stats = model.state.withLock { m in (m.attempted.joined().reduce(0, +), m.durable.joined().filter { $0 > 0 }.count) }
        print("crash test: \(stats.0) unit versions written, \(stats.1) units durable at the end")
        // Stale copies do not pile up: opening a file after a crash drops
        // them, so after a clean unmount every block has one version.
        m.unmount()
        for f in 0..<CrashTests.files where FileIO.exists(m.backingPath("f\(f)")) {
            let slots = try liveSlots(m.backingPath("f\(f)"), blockSize: 16 << 10)
            let blocks = Set(slots.map(\.block))
            #expect(slots.count == blocks.count, "f\(f): \(slots.count - blocks.count) stale copies left")
        }
        try m.start()
    }
}

/// The crash test's model, shared by its threads.
final class ModelBox: Sendable {
    let state = Mutex(CrashTests.Model())
}

/// Set when the writers of a crash round must stop.
final class StopFlag: Sendable {
    let flag = Atomic<Bool>(false)
}

/// One writer thread of the crash test: owns a range of units in every file.
final class WriterContext: @unchecked Sendable {
    let paths: [String]
    let model: ModelBox
    let stop: StopFlag
    let owner: Int
    var rng: Rng

    init(paths: [String], model: ModelBox, stop: StopFlag, owner: Int, seed: UInt64) {
        self.paths = paths
        self.model = model
        self.stop = stop
        self.owner = owner
        rng = Rng(seed)
    }

    func run() {
        let per = CrashTests.units / CrashTests.writers
        var fds = paths.map { open($0, O_RDWR | O_CREAT | O_CLOEXEC, 0o644) }
        defer { for fd in fds where fd >= 0 { close(fd) } }
        while !stop.flag.load(ordering: .relaxed) {
            let f = rng.int(CrashTests.files)
            guard fds[f] >= 0 else { return }
            if rng.int(8) == 0 {
                let snapshot = model.state.withLock { $0.completed[f] }
                guard fsync(fds[f]) == 0 else { return }
                model.state.withLock { for u in 0..<CrashTests.units { $0.durable[f][u] = max($0.durable[f][u], snapshot[u]) } }
                continue
            }
            let first = owner * per + rng.int(per)
            let count = 1 + rng.int(min(8, owner * per + per - first))
            var bytes: [UInt8] = []
            var versions: [Int] = []
            for u in first..<(first + count) {
                let v = model.state.withLock { m -> Int in m.attempted[f][u] += 1; return m.attempted[f][u] }
                versions.append(v)
                bytes += CrashTests.content(file: f, unit: u, version: v)
            }
            let n = bytes.withUnsafeBytes { pwrite(fds[f], $0.baseAddress, $0.count, off_t(first * CrashTests.unit)) }
            guard n == bytes.count else { return }
            model.state.withLock { for (i, v) in versions.enumerated() { $0.completed[f][first + i] = v } }
            if rng.int(30) == 0 { close(fds[f]); fds[f] = open(paths[f], O_RDWR | O_CLOEXEC) }
        }
    }
}

