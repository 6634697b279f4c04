#if canImport(Glibc)
import Glibc
#endif
import Testing

/// The GlusterFS harness itself: what the shared-backing tests rely on.
/// Two client mounts of one volume agree after a close (data, size, names),
/// OFD locks taken through one hold against the other, and `close()` leaves
/// no process, mount or directory behind.
@Suite(.serialized) struct GlusterHarnessTests {
    static let F_OFD_SETLK: Int32 = 37

    /// F_OFD_SETLK of `type` (F_RDLCK, F_WRLCK, F_UNLCK) on the whole
    /// file: 0, or the errno.
    static func ofdLock(_ fd: Int32, _ type: Int32) -> Int32 {
        var lk = flock()
        lk.l_type = Int16(type)
        lk.l_whence = Int16(SEEK_SET)
        lk.l_start = 0
        lk.l_len = 0
        lk.l_pid = 0
        return fcntl(fd, F_OFD_SETLK, &lk) == 0 ? 0 : errno
    }

    /// 200 rounds, five names reused (a cache keyed by name or inode would
    /// serve the old contents): read through one mount, write and close
    /// through the other, then stat, open and read through the first; sizes from 1 byte to 300 KB,
    /// so a stale size shows as a short or long read.
    @Test func writeCloseIsSeenByOpenThroughTheOtherMount() throws {
        let v = try GlusterVolume()
        defer { v.close() }
        var r = Rng(77)
        var stale: [String] = []
        for i in 0..<200 {
            let (from, to) = i % 2 == 0 ? (v.hostA, v.hostB) : (v.hostB, v.hostA)
            let name = "/f\(i % 5)"
            let data = r.bytes(1 + r.int(300_000))
            // The reader's caches hold the old attributes and contents.
            if FileIO.exists(to + name) { _ = try FileIO.read(to + name) }
            try FileIO.write(from + name, data)
            let st = try FileIO.stat(to + name)
            if st.st_size != data.count { stale.append("round \(i): stat size \(st.st_size), wrote \(data.count)") }
            let fd = open(to + name, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Errno(errno, "open \(to + name)") }
            var fst = stat()
            fstat(fd, &fst)
            let got = try FileIO.pread(fd, data.count + 1, 0)
            close(fd)
            if fst.st_size != data.count { stale.append("round \(i): fstat size \(fst.st_size), wrote \(data.count)") }
            if got != data { stale.append("round \(i): read \(got.count) bytes, \(got.prefix(data.count) == data[...] ? "the data and more" : "not the data written")") }
        }
        #expect(stale.count == 0, "\(Set(stale.map { $0.prefix(while: { $0 != ":" }) }).count) stale rounds of 200: \(stale.prefix(5))")
    }

    @Test func renameUnlinkAndCreateAreSeenThroughTheOtherMount() throws {
        let v = try GlusterVolume()
        defer { v.close() }
        for i in 0..<20 {
            let (one, other) = i % 2 == 0 ? (v.hostA, v.hostB) : (v.hostB, v.hostA)
            // Looked up through the other mount first, so that a cached
            // name or absence would be used.
            #expect(!FileIO.exists(other + "/new\(i)"))
            try FileIO.write(one + "/new\(i)", Array("round \(i)".utf8))
            #expect(try FileIO.read(other + "/new\(i)") == Array("round \(i)".utf8))
            #expect(rename(one + "/new\(i)", one + "/renamed\(i)") == 0)
            #expect(!FileIO.exists(other + "/new\(i)"), "round \(i): the old name is still seen")
            #expect(try FileIO.read(other + "/renamed\(i)") == Array("round \(i)".utf8))
            #expect(mkdir(other + "/dir\(i)", 0o755) == 0)
            #expect(rename(one + "/renamed\(i)", one + "/dir\(i)/moved") == 0)
            #expect(try FileIO.read(other + "/dir\(i)/moved") == Array("round \(i)".utf8))
            #expect(unlink(other + "/dir\(i)/moved") == 0)
            #expect(!FileIO.exists(one + "/dir\(i)/moved"), "round \(i): the unlinked name is still seen")
            #expect(rmdir(one + "/dir\(i)") == 0)
            #expect(!FileIO.exists(other + "/dir\(i)"))
        }
    }

    /// With `directIO`, a descriptor opened through hostB before hostA
    /// rewrites the file reads the new bytes (without it, the page cache
    /// of hostB's open file may serve the old ones: close-to-open only).
    @Test func directIOHeldDescriptorReadsTheOtherMountsWrite() throws {
        let v = try GlusterVolume(directIO: true)
        defer { v.close() }
        try FileIO.write(v.hostA + "/held", Array(repeating: 0x30, count: 65536))
        let fd = open(v.hostB + "/held", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(errno, "open") }
        defer { close(fd) }
        var stale = 0
        for i in 0..<50 {
            _ = try FileIO.pread(fd, 65536, 0)
            let data = [UInt8](repeating: UInt8(0x41 + i % 26), count: 65536)
            try FileIO.write(v.hostA + "/held", data, flags: O_WRONLY)
            if try FileIO.pread(fd, 65536, 0) != data { stale += 1 }
        }
        #expect(stale == 0, "\(stale) of 50 reads through the held descriptor were stale")
    }

    /// An OFD write lock through hostA refuses one through hostB (EAGAIN,
    /// as between two hosts), and one through a second descriptor on hostA
    /// too. An explicit unlock frees it for hostB at once. A close frees it
    /// too, but not at once: FUSE sends the release that drops the lock
    /// after close() has returned, so hostB may be refused for a moment
    /// (a few milliseconds here); hostB retries for up to 5 s and
    /// the time it took is printed. Shared mode must unlock before close
    /// when another host is to take the lock next.
    @Test func ofdLockThroughOneMountHoldsAgainstTheOther() throws {
        let v = try GlusterVolume()
        defer { v.close() }
        try FileIO.write(v.hostA + "/locked", Array(repeating: 7, count: 4096))
        let a = open(v.hostA + "/locked", O_RDWR | O_CLOEXEC)
        let b = open(v.hostB + "/locked", O_RDWR | O_CLOEXEC)
        let a2 = open(v.hostA + "/locked", O_RDWR | O_CLOEXEC)
        defer { close(b); close(a2) }
        try #require(a >= 0 && b >= 0 && a2 >= 0)
        #expect(Self.ofdLock(a, F_WRLCK) == 0)
        #expect(Self.ofdLock(b, F_WRLCK) == EAGAIN)
        #expect(Self.ofdLock(a2, F_WRLCK) == EAGAIN)
        #expect(Self.ofdLock(b, F_RDLCK) == EAGAIN)
        #expect(Self.ofdLock(b, F_WRLCK) == EAGAIN, "the refusal does not last")

        // Explicit unlock: at once.
        #expect(Self.ofdLock(a, F_UNLCK) == 0)
        #expect(Self.ofdLock(b, F_WRLCK) == 0, "hostA's unlock is not seen by hostB")
        #expect(Self.ofdLock(a, F_WRLCK) == EAGAIN, "hostB's lock does not hold against hostA")
        #expect(Self.ofdLock(b, F_UNLCK) == 0)

        // Close: soon.
        #expect(Self.ofdLock(a, F_WRLCK) == 0)
        #expect(Self.ofdLock(b, F_WRLCK) == EAGAIN)
        close(a)
        let t0 = Self.monotonic()
        var got = Self.ofdLock(b, F_WRLCK)
        while got == EAGAIN && Self.monotonic() - t0 < 5 {
            usleep(2_000)
            got = Self.ofdLock(b, F_WRLCK)
        }
        print("GlusterVolume: hostB got the lock \(Self.ms(Self.monotonic() - t0)) ms after hostA's close")
        #expect(got == 0, "the lock outlived its descriptor by 5 s (\(got))")
        #expect(Self.ofdLock(a2, F_WRLCK) == EAGAIN, "hostB's lock does not hold against hostA")
    }

    /// After `close()`: no process started for the volume (nor glusterd if
    /// it was started here) runs, neither mountpoint is mounted, the
    /// directory is gone, glusterd (if one still runs) has no such volume;
    /// a second `close()` changes nothing. Prints how long the set-up and
    /// the teardown took.
    @Test func closeLeavesNothingBehind() throws {
        let t0 = Self.monotonic()
        let v = try GlusterVolume()
        let t1 = Self.monotonic()
        try FileIO.write(v.hostA + "/data", Array(repeating: 1, count: 100_000))
        let pids = v.processIDs
        let started = v.startedGlusterd
        #expect(pids.count == (started ? 4 : 3), "glusterd, the brick and two clients: \(pids)")
        #expect(pids.allSatisfy(GlusterProcess.isAlive))
        #expect(isMounted(v.hostA) && isMounted(v.hostB))
        v.close()
        let t2 = Self.monotonic()
        print("GlusterVolume: set-up \(Self.ms(t1 - t0)) ms, teardown \(Self.ms(t2 - t1)) ms (glusterd \(started ? "started here" : "already running"))")
        Self.expectGone(v, pids: pids)
        v.close()
        Self.expectGone(v, pids: pids)
        #expect(v.teardownProblems.isEmpty, "\(v.teardownProblems)")
    }

    /// A descriptor still open through hostA (so that a plain unmount fails
    /// with EBUSY) does not keep anything alive past `close()`.
    @Test func closeWithAFileOpenStillTearsDown() throws {
        let v = try GlusterVolume()
        let pids = v.processIDs
        let fd = open(v.hostA + "/held", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        defer { if fd >= 0 { close(fd) } }
        try #require(fd >= 0)
        v.close()
        Self.expectGone(v, pids: pids)
        #expect(v.teardownProblems.contains { $0.contains("lazily") }, "\(v.teardownProblems)")
    }

    static func expectGone(_ v: GlusterVolume, pids: [pid_t], sourceLocation: SourceLocation = #_sourceLocation) {
        let alive = pids.filter(GlusterProcess.isAlive)
        #expect(alive.isEmpty, "still running: \(alive)", sourceLocation: sourceLocation)
        let mentioning = GlusterProcess.all().filter { $0.mentions(v.directory) }
        #expect(mentioning.isEmpty, "gluster processes of \(v.directory): \(mentioning.map { "\($0.pid) \($0.arguments)" })",
                sourceLocation: sourceLocation)
        #expect(!isMounted(v.hostA) && !isMounted(v.hostB), sourceLocation: sourceLocation)
        #expect(access(v.directory, F_OK) != 0, "\(v.directory) remains", sourceLocation: sourceLocation)
        if !v.startedGlusterd {   // (one started here is gone with its state: among `pids`)
            let list = GlusterVolume.systemVolumes()
            #expect(list.status == 0 && !list.names.contains(v.name), "volume \(v.name) remains: \(list)", sourceLocation: sourceLocation)
        }
    }

    static func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func ms(_ s: Double) -> Int { Int(s * 1000) }
}
