#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing

/// Accelerator faults on a live mount (the emulated device's fault injection,
/// driven through the `user.warpfs.fault` attribute of the mount root):
/// applications see EIO or a retry that succeeds, the mount never hangs,
/// nothing stored is damaged, and the device recovers.
@Suite struct AcceleratorFaultTests {
    static func fault(_ m: TestMount, _ command: String) -> Int32 {
        setxattr(m.mountpoint, "user.warpfs.fault", command, command.utf8.count, 0) == 0 ? 0 : errno
    }

    /// Writes `data` to `name` and fsyncs; the errno of the first failure, or 0.
    static func writeAndSync(_ path: String, _ data: [UInt8]) -> Int32 {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        let n = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n != data.count { return n < 0 ? errno : EIO }
        return fsync(fd) == 0 ? 0 : errno
    }

    /// Runs `body` on a thread; false if it has not finished after `seconds`
    /// (it keeps running; the caller must unblock it).
    static func finishes(within seconds: Int, _ body: @escaping @Sendable () -> Void) -> (Bool, () -> Void) {
        final class Done: Sendable { let flag = Atomic<Bool>(false) }
        let done = Done()
        let t = startThread { body(); done.flag.store(true, ordering: .releasing) }
        let deadline = wd_now_ns() + UInt64(seconds) * 1_000_000_000
        while !done.flag.load(ordering: .acquiring) && wd_now_ns() < deadline { usleep(10_000) }
        return (done.flag.load(ordering: .acquiring), { pthread_join(t, nil) })
    }

    @Test func faultCommandsNeedTheOption() throws {
        try withMount { m in
            #expect(AcceleratorFaultTests.fault(m, "hang") == EPERM)
            var buf = [UInt8](repeating: 0, count: 512)
            let n = getxattr(m.mountpoint, "user.warpfs.device", &buf, buf.count)
            #expect(n > 0 && String(decoding: buf[0..<max(0, n)], as: UTF8.self).contains("requests="))
        }
        try withMount(options: "fault_injection") { m in
            #expect(AcceleratorFaultTests.fault(m, "error_rate=2") == EINVAL)
            #expect(AcceleratorFaultTests.fault(m, "melt") == EINVAL)
            #expect(AcceleratorFaultTests.fault(m, "error_rate=0") == 0)
        }
    }

    /// Engine errors on a third of the requests: each request is tried three
    /// times, so most writes succeed; a block that still fails is EIO at
    /// fsync and stays buffered, and stores once the device is healthy.
    @Test func engineErrorsAreRetriedAndNothingIsLost() throws {
        try withMount(options: "fault_injection,engine_timeout=2") { m in
            var r = Rng(41)
            let base = r.text(2 << 20)
            #expect(AcceleratorFaultTests.writeAndSync(m.path("base"), base) == 0)
            #expect(AcceleratorFaultTests.fault(m, "error_rate=0.3") == 0)
            let data = r.text(6 << 20)
            let e = AcceleratorFaultTests.writeAndSync(m.path("a"), data)
            #expect(e == 0 || e == EIO, "errno \(e)")
            // Reading under faults: the right bytes or EIO, never others.
            let fd = open(m.path("base"), O_RDONLY)
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            let n = pread(fd, &buf, buf.count, 1 << 20)
            close(fd)
            #expect(n == -1 ? errno == EIO : Array(buf[0..<n]) == Array(base[(1 << 20)..<(2 << 20)]))
            #expect(AcceleratorFaultTests.fault(m, "error_rate=0") == 0)
            let afd = open(m.path("a"), O_WRONLY)
            #expect(fsync(afd) == 0)
            close(afd)
            #expect(m.log.contains("retrying"), "log: \(m.log)")
            try m.remount()
            #expect(try FileIO.read(m.path("a")) == data)
            #expect(try FileIO.read(m.path("base")) == base)
        }
    }

    /// A device that stops answering: fsync fails with EIO after the
    /// time-out and its retries instead of hanging; other operations go
    /// on meanwhile; after `resume` everything stores.
    @Test func aHungDeviceTimesOutAndRecovers() throws {
        try withMount(options: "fault_injection,engine_timeout=1") { m in
            var r = Rng(42)
            let before = r.text(1 << 20)
            #expect(AcceleratorFaultTests.writeAndSync(m.path("before"), before) == 0)
            #expect(AcceleratorFaultTests.fault(m, "hang") == 0)
            let data = r.text(2 << 20)
            let path = m.path("during")
            let result = Atomic<Int32>(-1)
            let (finished, join) = AcceleratorFaultTests.finishes(within: 20) { result.store(AcceleratorFaultTests.writeAndSync(path, data), ordering: .relaxed) }
            #expect(finished, "fsync on a hung device did not return within 20 s")
            #expect(!finished || result.load(ordering: .relaxed) == EIO)
            // The mount answers meanwhile.
            #expect(try FileIO.stat(m.path("before")).st_size == before.count)
            #expect(AcceleratorFaultTests.fault(m, "resume") == 0)
            join()
            #expect(AcceleratorFaultTests.writeAndSync(m.path("during"), data) == 0)
            try m.remount()
            #expect(try FileIO.read(m.path("during")) == data)
            #expect(try FileIO.read(m.path("before")) == before)
        }
    }

    /// A file whose last close cannot store its blocks (every request
    /// fails) keeps them in memory, also after the kernel forgets the file
    /// (drop_caches), and stores them by itself about a second after the
    /// device is healthy again: without an fsync, an open or the unmount.
    @Test func aFailedLastCloseIsStoredOnceTheDeviceRecovers() throws {
        try withMount(options: "fault_injection,engine_timeout=1") { m in
            var r = Rng(44)
            let data = r.text(3 << 20)
            #expect(AcceleratorFaultTests.fault(m, "error_rate=1") == 0)
            #expect(AcceleratorFaultTests.writeAndSync(m.path("kept"), data) == EIO)
            // The kernel forgets the file (its dentry and inode go).
            for _ in 0..<3 {
                if let f = fopen("/proc/sys/vm/drop_caches", "w") { fputs("2\n", f); fclose(f) }
                usleep(100_000)
            }
            #expect(m.log.contains("kept in memory"), "log: \(m.log)")
            // Looked up again, it is the same file: its size is what was written.
            #expect(try FileIO.stat(m.path("kept")).st_size == data.count)
            #expect(AcceleratorFaultTests.fault(m, "error_rate=0") == 0)
            let deadline = wd_now_ns() + 20_000_000_000
            while !m.log.contains("stored what its last close had to keep") && wd_now_ns() < deadline { usleep(50_000) }
            #expect(m.log.contains("stored what its last close had to keep"), "log: \(m.log)")
            if let f = fopen("/proc/sys/vm/drop_caches", "w") { fputs("3\n", f); fclose(f) }
            #expect(try FileIO.read(m.path("kept")) == data)
            try m.remount()
            #expect(try FileIO.read(m.path("kept")) == data)
        }
    }

    /// A block a writer has only begun is not stored while the file has
    /// other blocks to store: stored half written and then dropped from
    /// the cache, the writer's next piece would need it read back
    /// (decompressed), which fails while the device does, and under the
    /// writeback cache the kernel then drops that piece's data. Here the
    /// next piece goes in while every request fails, and everything is
    /// stored once the device is healthy.
    @Test func aBlockBeingFilledNeedsNoDeviceForTheNextPiece() throws {
        try withMount(options: "fault_injection,engine_timeout=1,no_writeback_cache") { m in
            var r = Rng(45)
            let bs = 64 << 10
            let data = r.text(200 * bs)
            let fd = open(m.path("filling"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            try #require(fd >= 0)
            defer { close(fd) }
            func put(_ range: Range<Int>) -> Int {
                data[range].withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(range.lowerBound)) }
            }
            // The first page of 100 blocks, block 20's first: more than the
            // file's cache holds (64 blocks), so stores and evictions run.
            for b in 20..<120 { #expect(put((b * bs)..<(b * bs + 4096)) == 4096) }
            usleep(300_000)
            for b in 120..<130 { #expect(put((b * bs)..<(b * bs + 4096)) == 4096) }
            #expect(AcceleratorFaultTests.fault(m, "error_rate=1") == 0)
            // The rest of block 20 but its last byte (nothing completes, so
            // nothing is sent): it must go in without the device.
            let n = put((20 * bs + 4096)..<(21 * bs - 1))
            #expect(n == bs - 4096 - 1, "the next piece of a block being filled: \(n), errno \(errno); log: \(m.log)")
            #expect(AcceleratorFaultTests.fault(m, "error_rate=0") == 0)
            #expect(put((21 * bs - 1)..<(21 * bs)) == 1)
            #expect(fsync(fd) == 0)
            try m.remount()
            let back = try FileIO.read(m.path("filling"))
            let whole = back[(20 * bs)..<(21 * bs)].elementsEqual(data[(20 * bs)..<(21 * bs)])
            #expect(whole, "block 20 reads back as written")
            let firstPages = (21..<130).filter { !back[($0 * bs)..<($0 * bs + 4096)].elementsEqual(data[($0 * bs)..<($0 * bs + 4096)]) }
            #expect(firstPages.isEmpty, "blocks whose first page differs: \(firstPages)")
        }
    }

    /// Writes `megabytes` of text to `name` (with fsync) while the device is
    /// reset `resets` times, `gapMicroseconds` apart; the writer must see no
    /// error and the file must read back after a remount.
    static func writeWhileResetting(_ m: TestMount, _ name: String, seed: UInt64, megabytes: Int,
                                    resets: Int, gapMicroseconds: UInt32) throws {
        var r = Rng(seed)
        let data = r.text(megabytes << 20)
        let path = m.path(name)
        let result = Atomic<Int32>(-1)
        let writer = startThread { result.store(AcceleratorFaultTests.writeAndSync(path, data), ordering: .relaxed) }
        for _ in 0..<resets {
            usleep(gapMicroseconds)
            #expect(AcceleratorFaultTests.fault(m, "reset") == 0)
        }
        pthread_join(writer, nil)
        #expect(result.load(ordering: .relaxed) == 0)
        try m.remount()
        #expect(try FileIO.read(m.path(name)) == data)
    }

    /// Resets while a writer streams: requests in flight fail and are
    /// retried on fresh queues; the application sees no error.
    @Test func resetsDuringWritesAreRetried() throws {
        try withMount(options: "fault_injection") { m in
            try Self.writeWhileResetting(m, "r", seed: 43, megabytes: 16, resets: 5, gapMicroseconds: 20_000)
        }
    }

    /// Resets in quick succession, more than a request has tries: a reset
    /// is the device's event and costs a request no try, so the writer
    /// still sees no error (the retry policy's bound is attempts x
    /// engine_timeout, far away here).
    @Test func resetsInQuickSuccessionCostNoTries() throws {
        try withMount(options: "fault_injection") { m in
            try Self.writeWhileResetting(m, "quick", seed: 44, megabytes: 8, resets: 40, gapMicroseconds: 2_000)
        }
    }

    /// Two queues for the whole mount and four writers: files wait for a
    /// queue instead of failing.
    @Test func writersShareTooFewQueues() throws {
        try withMount(options: "queues=2") { m in
            let contents = (0..<4).map { i -> [UInt8] in var r = Rng(UInt64(50 + i)); return r.text(2 << 20) }
            let results = Mutex([Int32](repeating: -1, count: 4))
            let paths = (0..<4).map { m.path("q\($0)") }
            threads(4) { i in
                let e = AcceleratorFaultTests.writeAndSync(paths[i], contents[i])
                results.withLock { $0[i] = e }
            }
            #expect(results.withLock { $0 } == [0, 0, 0, 0])
            for i in 0..<4 { #expect((try? FileIO.read(paths[i])) == contents[i]) }
        }
    }
}
