#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing

/// `-o shared` with two mounts of one local backing directory standing for
/// two hosts (the record locks and the page cache are the local kernel's;
/// GlusterTests runs the same over a real GlusterFS volume).
@Suite struct SharedModeTests {
    /// A version of a file: its name, version and length in every 4 KiB
    /// unit (so a mix of versions is caught), text or random bytes.
    static func version(_ name: String, _ v: Int, length: Int) -> [UInt8] {
        var r = Rng(UInt64(v &* 7919 &+ name.utf8.reduce(0) { $0 &* 31 &+ Int($1) }))
        var out: [UInt8] = []
        var unit = 0
        while out.count < length {
            let tag = Array("\(name) v\(v) len \(length) unit \(unit)\n".utf8)
            out += tag + (v % 2 == 0 ? r.text(4096 - tag.count) : r.bytes(4096 - tag.count))
            unit += 1
        }
        return Array(out.prefix(length))
    }

    /// The version a unit of `version(...)` names in its first line; -1
    /// when it names none (zeros, or bytes of no version).
    static func versionField(_ bytes: [UInt8]) -> Int {
        let words = String(decoding: bytes.prefix(40), as: UTF8.self).split(separator: " ")
        guard words.count > 1, words[1].hasPrefix("v") else { return -1 }
        return Int(words[1].dropFirst()) ?? -1
    }

    @Test func anOpenSeesWhatTheOtherHostClosed() throws {
        let a = try TestMount(options: "shared,block_size=16k")
        defer { a.close() }
        let b = try TestMount(options: "shared,block_size=16k", backing: a.backing)
        defer { b.close() }
        var r = Rng(5)
        for turn in 0..<40 {
            let (writer, reader) = turn % 2 == 0 ? (a, b) : (b, a)
            let name = "f\(turn % 3)"
            let data = SharedModeTests.version(name, turn, length: [0, 10, 5000, 16384, 70_000, 150_000][r.int(6)])
            // Half the turns rewrite in place (no O_TRUNC): the reader's kernel and index both had the old version.
            if turn % 4 == 1, FileIO.exists(writer.path(name)) {
                let fd = open(writer.path(name), O_RDWR | O_CLOEXEC)
                try FileIO.pwrite(fd, data, 0)
                #expect(ftruncate(fd, off_t(data.count)) == 0)
                close(fd)
            } else {
                try FileIO.write(writer.path(name), data)
            }
            #expect(try FileIO.stat(reader.path(name)).st_size == data.count, "turn \(turn): \(name)'s size on the other host")
            #expect(try FileIO.read(reader.path(name)) == data, "turn \(turn): \(name) on the other host")
        }
        // Names: a rename and an unlink on one host are seen on the other.
        #expect(rename(a.path("f0"), a.path("renamed")) == 0)
        #expect(FileIO.exists(b.path("renamed")) && !FileIO.exists(b.path("f0")))
        #expect(unlink(b.path("renamed")) == 0)
        #expect(!FileIO.exists(a.path("renamed")))
    }

    /// (The tests' descriptors are opened O_CLOEXEC: a child process that
    /// closes an inherited copy of a descriptor that wrote is a close, and
    /// gives the writer lock back, as FUSE reports every close.)
    @Test func aSecondHostsWriterWaitsForTheFirstThenGetsEAGAIN() throws {
        let a = try TestMount(options: "shared")
        defer { a.close() }
        let b = try TestMount(options: "shared,lock_timeout=1", backing: a.backing)
        defer { b.close() }
        try FileIO.write(a.path("f"), SharedModeTests.version("f", 0, length: 100_000))
        // Host A writes and keeps the file open: it holds the writer lock.
        let fa = open(a.path("f"), O_RDWR | O_CLOEXEC)
        #expect(fa >= 0)
        try FileIO.pwrite(fa, SharedModeTests.version("f", 1, length: 100_000), 0)
        let fb = open(b.path("f"), O_RDWR | O_CLOEXEC)
        #expect(fb >= 0)
        let started = wd_now_ns()
        let piece = Array("from host B".utf8)
        let n = piece.withUnsafeBytes { pwrite(fb, $0.baseAddress, $0.count, 0) }
        let e = errno
        let waited = Double(wd_now_ns() - started) / 1e9
        #expect(n == -1 && e == EAGAIN, "host B's write while A writes: \(n), errno \(e)")
        #expect(waited >= 0.9, "host B gave up after \(waited) s, not lock_timeout")
        #expect(b.log.contains("another host is writing"), "\(b.log)")
        // B's refused write changed nothing; A's close makes its version the file's.
        close(fa)
        #expect(try FileIO.read(b.path("f")) == SharedModeTests.version("f", 1, length: 100_000))
        // Now B is the writer.
        #expect(piece.withUnsafeBytes { pwrite(fb, $0.baseAddress, $0.count, 0) } == piece.count)
        close(fb)
        var want = SharedModeTests.version("f", 1, length: 100_000)
        want.replaceSubrange(0..<piece.count, with: piece)
        #expect(try FileIO.read(a.path("f")) == want)
    }

    /// A host that only read a file writes nothing to it at its last close:
    /// the compaction a small rewritten file gets there is the writer's
    /// (a reader compacting while another host writes broke that host's
    /// slots: GlusterTests.writersOnBothHostsNeverInterleave found it).
    @Test func aReadersLastCloseWritesNothing() throws {
        let a = try TestMount(options: "shared")
        defer { a.close() }
        let b = try TestMount(options: "shared", backing: a.backing)
        defer { b.close() }
        var r = Rng(17)
        try FileIO.write(a.path("s"), r.bytes(2000))
        // Rewritten in place and synced while host A keeps it open: its one
        // version now lies on the second page, where compaction would move it from.
        let fd = open(a.path("s"), O_RDWR | O_CLOEXEC)
        let second = r.bytes(2000)
        try FileIO.pwrite(fd, second, 0)
        #expect(fsync(fd) == 0)
        let before = try FileIO.read(a.backingPath("s"))
        #expect(try FileIO.read(b.path("s")) == second)
        // Host B's release of the file comes after close() returns: its unmount waits for it.
        b.unmount()
        #expect(try FileIO.read(a.backingPath("s")) == before, "host B's last close changed the backing file")
        try b.start()
        close(fd)
        #expect(try FileIO.read(b.path("s")) == second)
    }

    /// Files packed before the backing directory was shared are read on
    /// both hosts, unpacked by the writer (its record freed under the
    /// pack's cross-host lock), never packed again under `shared`, and
    /// fsck finds nothing left.
    @Test func packedFilesAreReadAndUnpackedUnderShared() throws {
        let first = try TestMount(options: "pack_delay=0")
        defer { first.close() }
        for i in 0..<20 { try FileIO.write(first.path("p\(i)"), Array("packed \(i)\n".utf8)) }
        first.unmount()
        #expect(PackingTests.isPacked(first.backingPath("p0")))
        let a = try TestMount(options: "shared", backing: first.backing)
        defer { a.close() }
        let b = try TestMount(options: "shared", backing: first.backing)
        defer { b.close() }
        for i in 0..<20 { #expect(try FileIO.read(b.path("p\(i)")) == Array("packed \(i)\n".utf8)) }
        for i in 0..<10 { try FileIO.write(a.path("p\(i)"), Array("rewritten \(i) on host A\n".utf8)) }
        for i in 0..<20 {
            let want = i < 10 ? "rewritten \(i) on host A\n" : "packed \(i)\n"
            #expect(try FileIO.read(b.path("p\(i)")) == Array(want.utf8), "p\(i) on host B")
        }
        a.unmount()
        b.unmount()
        // Rewritten files are containers again (no packing under shared); the others stay packed.
        #expect(!PackingTests.isPacked(first.backingPath("p0")) && PackingTests.isPacked(first.backingPath("p15")))
        let fsck = runCommand([warpfsBinary, "fsck", first.backing, "--progress", "never"])
        #expect(fsck.status == 0, "\(fsck.output)")
        try a.start()
        try b.start()
    }

    /// What a writer killed between a payload and its slot header leaves (an
    /// allocated page no slot refers to) is reclaimed by the next host's
    /// writer when it takes the lock, so fsck finds nothing afterwards.
    @Test func theNextWriterReclaimsPagesADeadWriterLeft() throws {
        let a = try TestMount(options: "shared,block_size=16k")
        defer { a.close() }
        try FileIO.write(a.path("f"), SharedModeTests.version("f", 0, length: 40_000))
        a.unmount()
        // A payload written, its slot header never: a page inside group 0's region, past the payloads.
        let fd = open(a.backingPath("f"), O_WRONLY | O_CLOEXEC)
        try FileIO.pwrite(fd, [UInt8](repeating: 0x5A, count: 4096), 512 << 10)
        close(fd)
        let before = runCommand([warpfsBinary, "fsck", a.backing, "--progress", "never"])
        #expect(before.status == 4 && before.output.contains("no valid slot refers to"), "\(before.output)")
        try a.start()
        let w = open(a.path("f"), O_RDWR | O_CLOEXEC)
        try FileIO.pwrite(w, Array("x".utf8), 40_000)
        close(w)
        a.unmount()
        let after = runCommand([warpfsBinary, "fsck", a.backing, "--progress", "never"])
        #expect(after.status == 0, "\(after.output)")
        try a.start()
        var want = SharedModeTests.version("f", 0, length: 40_000)
        want.append(UInt8(ascii: "x"))
        #expect(try FileIO.read(a.path("f")) == want)
    }

    /// Writers on both hosts at once (GlusterTests has the same over GlusterFS).
    @Test func writersOnBothHostsNeverInterleave() throws {
        let a = try TestMount(options: "shared,block_size=16k")
        defer { a.close() }
        let b = try TestMount(options: "shared,block_size=16k", backing: a.backing)
        defer { b.close() }
        try GlusterTests.writersNeverInterleave(a, b)
    }

    /// Host A rewrites a file again and again (fsync after each version)
    /// while host B reads it whole, reopening each time: every block read
    /// is one whole version (never units of two versions in one block; the
    /// blocks of one read may be of different versions, as on any file
    /// system a read races a writer), and never EIO.
    @Test func aReaderSeesWholeVersionsWhileAnotherHostWrites() throws {
        let a = try TestMount(options: "shared,block_size=16k")
        defer { a.close() }
        let b = try TestMount(options: "shared,block_size=16k", backing: a.backing)
        defer { b.close() }
        let length = 200_000
        try FileIO.write(a.path("f"), SharedModeTests.version("f", 0, length: length))
        let stop = Atomic<Bool>(false)
        let written = Atomic<Int>(0)
        let problems = Mutex<[String]>([])
        let pa = a.path("f"), pb = b.path("f")
        threads(2) { t in
            if t == 0 {
                let fd = open(pa, O_RDWR | O_CLOEXEC)
                for v in 1...30 {
                    let d = SharedModeTests.version("f", v, length: length)
                    _ = d.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
                    _ = fsync(fd)
                    written.store(v, ordering: .relaxed)
                }
                close(fd)
                stop.store(true, ordering: .relaxed)
            } else {
                var reads = 0
                while !stop.load(ordering: .relaxed) || reads < 5 {
                    reads += 1
                    guard let got = try? FileIO.read(pb) else { problems.withLock { $0.append("read \(reads) failed: errno \(errno)") }; continue }
                    guard got.count == length else { problems.withLock { $0.append("read \(reads): \(got.count) bytes") }; continue }
                    for block in stride(from: 0, to: length, by: 16384) {
                        let bytes = Array(got[block..<min(block + 16384, length)])
                        let v = SharedModeTests.versionField(bytes)
                        if v < 0 || bytes != Array(SharedModeTests.version("f", v, length: length)[block..<min(block + 16384, length)]) {
                            problems.withLock { $0.append("read \(reads): block at \(block) is not one whole version (its first unit says v\(v))") }
                        }
                    }
                }
            }
        }
        #expect(problems.withLock { $0 }.isEmpty, "\(problems.withLock { $0 }.prefix(5))")
        #expect(try FileIO.read(b.path("f")) == SharedModeTests.version("f", 30, length: length))
    }

    /// Host A's file system is killed (SIGKILL) in the middle of rewrites:
    /// host B's next writer recovers the file as an open after a crash
    /// does, every unit holds a version written there, and fsck is clean.
    @Test func aHostKilledMidWriteIsRecoveredByTheNextWriter() throws {
        let a = try TestMount(options: "shared,block_size=16k")
        defer { a.close() }
        let b = try TestMount(options: "shared,block_size=16k", backing: a.backing)
        defer { b.close() }
        let floor = try SharedModeTests.killWriterThenWriteOnTheOther(a, b, length: 300_000, killAfter: 150_000)
        b.unmount()
        let fsck = runCommand([warpfsBinary, "fsck", a.backing, "--progress", "never"])
        #expect(fsck.status == 0, "\(fsck.output)")
        try b.start()
        try a.start()
        print("shared: host A killed after version \(floor) was fsynced")
    }

    /// Host A rewrites a file of `length` bytes whole again and again
    /// (fsync after each version) until its file system is killed after
    /// `killAfter` µs; then host B writes one byte past the end (taking the
    /// writer lock A's death released, and recovering), and every unit must
    /// hold one whole version at least as new as the last one fsynced.
    /// Returns that version.
    static func killWriterThenWriteOnTheOther(_ a: TestMount, _ b: TestMount, length: Int, killAfter: useconds_t) throws -> Int {
        try FileIO.write(a.path("f"), version("f", 0, length: length))
        let pa = a.path("f"), pid = a.pid
        let synced = Atomic<Int>(0)
        threads(2) { t in
            if t == 1 { usleep(killAfter); kill(pid, SIGKILL); return }
            let fd = open(pa, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { return }
            for v in 1...1000 {
                let d = version("f", v, length: length)
                if d.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, 0) }) != d.count || fsync(fd) != 0 { break }
                synced.store(v, ordering: .relaxed)
            }
            close(fd)
        }
        a.unmount()
        let floor = synced.load(ordering: .relaxed)
        let fd = open(b.path("f"), O_RDWR | O_CLOEXEC)
        #expect(fd >= 0)
        try FileIO.pwrite(fd, Array("B".utf8), length)
        close(fd)
        let got = try FileIO.read(b.path("f"))
        #expect(got.count == length + 1)
        for unit in 0..<(length / 4096) {
            let lo = unit * 4096
            let bytes = Array(got[lo..<(lo + 4096)])
            let v = versionField(bytes)
            #expect(v >= floor && bytes == Array(version("f", v, length: length)[lo..<(lo + 4096)]), "unit \(unit) holds v\(v); fsynced v\(floor)")
        }
        return floor
    }
}
