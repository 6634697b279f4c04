#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// A full backing file system: ENOSPC to the application, nothing stored
/// lost, bounded memory, and the mount usable again once space is freed.
/// The backing directory is a small tmpfs mounted for the test.
@Suite(.serialized) struct SpaceTests {
    /// A tmpfs of `size` mounted on a fresh directory; unmounted by `close`.
    final class SmallFileSystem {
        let path: String
        init(size: String) throws {
            path = makeTempDir("warpfs-small")
            let r = runCommand(["/bin/mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", path])
            guard r.status == 0 else { removeTree(path); throw Errno(EPERM, "mount tmpfs: \(r.output)") }
        }
        func close() {
            _ = runCommand(["/bin/umount", "-l", path])
            removeTree(path)
        }
    }

    /// Writes 1 MiB chunks until `limit` chunks or an error; returns the
    /// chunks accepted and the errno of the failure (0 if none).
    static func fill(_ fd: Int32, chunks limit: Int) -> (written: [[UInt8]], error: Int32) {
        var written: [[UInt8]] = []
        let random = open("/dev/urandom", O_RDONLY)
        defer { close(random) }
        while written.count < limit {
            var chunk = [UInt8](repeating: 0, count: 1 << 20)
            #expect(read(random, &chunk, chunk.count) == chunk.count)
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 { return (written, errno) }
            written.append(Array(chunk[0..<n]))     // a short write: the next one reports why
        }
        return (written, 0)
    }

    /// With the writeback cache (the default) the kernel accepts write()
    /// into its page cache; the file system refuses the data it cannot
    /// store, so fsync reports ENOSPC. What was stored before stays.
    @Test func fullBackingReportsENOSPCAndKeepsStoredData() throws {
        let small = try SmallFileSystem(size: "8m")
        defer { small.close() }
        let m = try TestMount(backing: small.path)
        defer { m.close() }
        var r = Rng(31)
        let keep = r.bytes(1 << 20) + r.text(1 << 20)
        try FileIO.write(m.path("keep"), keep)
        let kfd = open(m.path("keep"), O_RDONLY)
        #expect(fsync(kfd) == 0)
        close(kfd)

        let fd = open(m.path("fill"), O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        let (_, writeError) = SpaceTests.fill(fd, chunks: 96)
        let syncResult = fsync(fd)
        let syncError = syncResult == 0 ? 0 : errno
        close(fd)
        // The application is told, at write() or at fsync().
        #expect(writeError == ENOSPC || syncError == ENOSPC, "write errno \(writeError), fsync errno \(syncError)")
        // Refused data is not piled up in memory (96 MiB were offered).
        #expect(peakResidentKiB(m.pid) < 80 * 1024)
        #expect(m.log.contains("no space left in the backing file system"), "log: \(m.log)")
        #expect(try FileIO.read(m.path("keep")) == keep)

        // Rewriting a stored file on a full disk must not touch its stored copy.
        let rfd = open(m.path("keep"), O_WRONLY)
        _ = r.bytes(1 << 20).withUnsafeBytes { pwrite(rfd, $0.baseAddress, $0.count, 0) }
        _ = fsync(rfd)
        close(rfd)

        // Space freed: the mount works again. (The backing file's space comes
        // back once the kernel has released and forgotten the unlinked file,
        // which it does asynchronously: wait for df to show it.)
        #expect(unlink(m.path("fill")) == 0)
        let deadline = wd_now_ns() + 10_000_000_000
        while wd_now_ns() < deadline {
            var st = statvfs()
            if statvfs(m.mountpoint, &st) == 0, Int(st.f_bfree) * Int(st.f_frsize) >= 4 << 20 { break }
            usleep(20_000)
        }
        let after = r.text(3 << 20)
        try FileIO.write(m.path("after"), after)
        let afd = open(m.path("after"), O_RDONLY)
        #expect(fsync(afd) == 0)
        close(afd)
        try m.remount()
        let kept = try FileIO.read(m.path("keep"))
        #expect(kept.count == keep.count)
        // The rewrite either made it whole or not at all, block by block.
        #expect(kept[(1 << 20)...] == keep[(1 << 20)...])
        #expect(try FileIO.read(m.path("after")) == after)
    }

    /// Without the writeback cache, write() itself fails with ENOSPC, and
    /// every byte it accepted before is stored.
    @Test func writeFailsWithENOSPCWithoutWritebackCache() throws {
        let small = try SmallFileSystem(size: "8m")
        defer { small.close() }
        let m = try TestMount(options: "no_writeback_cache", backing: small.path)
        defer { m.close() }
        let fd = open(m.path("fill"), O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        let (written, writeError) = SpaceTests.fill(fd, chunks: 48)
        #expect(writeError == ENOSPC)
        let accepted = written.reduce(0) { $0 + $1.count }
        #expect(accepted >= 4 << 20 && accepted < 8 << 20, "accepted \(accepted) bytes on an 8 MiB file system")
        #expect(fsync(fd) == 0)
        close(fd)
        try m.remount()
        let back = try FileIO.read(m.path("fill"))
        #expect(back == Array(written.joined()), "\(back.count) bytes read back of \(accepted) accepted")
    }
}
