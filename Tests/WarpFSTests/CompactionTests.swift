#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing

/// Small files rewritten in place take the space of a fresh copy
/// (compaction at the last close, `CompressedFile+Compaction.swift`), and a
/// SIGKILL at any moment of it loses nothing fsynced.
@Suite struct CompactionTests {
    /// Version `v` of small file `f`: a header naming both, compressible
    /// text, then `noise` random bytes (stored as they are by the codec), so
    /// payloads land on both sides of a page boundary.
    static func content(file f: Int, version v: Int, noise: Int) -> [UInt8] {
        var r = Rng(UInt64(f &* 7919 &+ v &* 104_729 &+ 11))
        var head = [UInt8](repeating: 0, count: 16)
        for (i, x) in [UInt64(f), UInt64(v)].enumerated() {
            withUnsafeBytes(of: x.littleEndian) { for k in 0..<8 { head[i * 8 + k] = $0[k] } }
        }
        return head + r.text(3000) + r.bytes(noise)
    }

    static let noise = [600, 1200, 1600, 2200, 3500, 6000, 9000]

    static func allocated(_ path: String) throws -> Int { Int(try FileIO.stat(path).st_blocks) * 512 }

    /// Each file rewritten in place three times (open without truncation,
    /// one write of the whole new content, close) takes no more than a
    /// fresh copy of the same bytes, reads back whole, and `fsck` is clean.
    @Test func aSmallFileRewrittenInPlaceTakesWhatAFreshCopyTakes() throws {
        try withMount { m in
            for (f, n) in Self.noise.enumerated() { try FileIO.write(m.path("f\(f)"), Self.content(file: f, version: 0, noise: n)) }
            for round in 1...3 {
                for (f, n) in Self.noise.enumerated() {
                    let data = Self.content(file: f, version: round, noise: n)
                    let fd = open(m.path("f\(f)"), O_RDWR | O_CLOEXEC)
                    #expect(fd >= 0)
                    try FileIO.pwrite(fd, data, 0)
                    close(fd)
                    try FileIO.write(m.path("fresh\(f)"), data)
                }
                for (f, n) in Self.noise.enumerated() {
                    // The kernel sends the release after close returns: wait for it (at most 10 s).
                    var rewritten = 0, fresh = 0
                    let deadline = wd_now_ns() + 10_000_000_000
                    repeat {
                        rewritten = try Self.allocated(m.backingPath("f\(f)"))
                        fresh = try Self.allocated(m.backingPath("fresh\(f)"))
                        if rewritten <= fresh { break }
                        usleep(10_000)
                    } while wd_now_ns() < deadline
                    #expect(rewritten <= fresh, "round \(round), \(n) random bytes: \(rewritten) bytes allocated after the rewrite, \(fresh) for a fresh copy")
                    #expect(try FileIO.read(m.path("f\(f)")) == Self.content(file: f, version: round, noise: n))
                }
            }
            m.unmount()
            let r = runCommand([warpfsBinary, "fsck", m.backing])
            #expect(r.status == 0, "\(r.output)")
            try m.start()
        }
    }

    /// Writers rewrite small files in place, fsync and close them (each
    /// close may compact) while the file-system process is killed with
    /// SIGKILL at a random moment; after a remount every file reads without
    /// EIO and holds, whole, its last fsynced version or a newer one written.
    @Test func sigkillDuringCompactionLosesNothingFsynced() throws {
        let m = try TestMount()
        defer { m.close() }
        let files = Self.noise.count
        let seedValue = getenv("WARPFS_CRASH_SEED").flatMap { UInt64(String(cString: $0)) } ?? wd_now_ns()
        print("compaction crash test: seed \(seedValue)")
        var seed = Rng(seedValue)
        // Per file: (durable, attempted) versions.
        let state = Mutex([(Int, Int)](repeating: (0, 0), count: files))
        for (f, n) in Self.noise.enumerated() { try FileIO.write(m.path("f\(f)"), Self.content(file: f, version: 0, noise: n)) }
        for round in 0..<10 {
            let stop = StopFlag()
            let delay = useconds_t(20_000 + seed.int(200_000))
            let pid = m.pid
            let paths = (0..<files).map { m.path("f\($0)") }
            threads(3) { t in
                if t == 2 {
                    usleep(delay)
                    kill(pid, SIGKILL)
                    stop.flag.store(true, ordering: .relaxed)
                    return
                }
                // Writer t owns the files f with f % 2 == t.
                while !stop.flag.load(ordering: .relaxed) {
                    for f in stride(from: t, to: files, by: 2) {
                        let v = state.withLock { s -> Int in s[f].1 += 1; return s[f].1 }
                        let fd = open(paths[f], O_RDWR | O_CLOEXEC)
                        guard fd >= 0 else { return }
                        let data = Self.content(file: f, version: v, noise: Self.noise[f])
                        guard (try? FileIO.pwrite(fd, data, 0)) != nil, fsync(fd) == 0 else { close(fd); return }
                        state.withLock { $0[f].0 = v }
                        close(fd)
                    }
                }
            }
            m.unmount()
            try m.start()
            for f in 0..<files {
                let data: [UInt8]
                do { data = try FileIO.read(m.path("f\(f)")) } catch {
                    Issue.record("seed \(seedValue) round \(round): reading f\(f) failed: \(error); log: \(m.log)")
                    return
                }
                let v = data.count >= 16 ? Int(data.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self) }) : -1
                let (durable, attempted) = state.withLock { $0[f] }
                #expect(v >= durable && v <= attempted && data == Self.content(file: f, version: v, noise: Self.noise[f]),
                        "seed \(seedValue) round \(round): f\(f) shows version \(v) (\(data.count) bytes); fsynced \(durable), newest \(attempted)")
                state.withLock { $0[f] = (v, max(attempted, v)) }
            }
        }
        m.unmount()
        let r = runCommand([warpfsBinary, "fsck", m.backing])
        #expect(r.status == 0, "seed \(seedValue): \(r.output)")
        try m.start()
    }
}
