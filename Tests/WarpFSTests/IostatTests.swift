#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Foundation
import Testing
import WarpFSCore

/// `warpfs iostat` and the channel it reads, the read-only attribute
/// `user.warpfs.stats` of a mount's root, on real mounts.
@Suite(.serialized) struct IostatTests {
    /// The JSON lines of `warpfs iostat ARGS --json` (standard output only).
    private func iostatJSON(_ args: [String]) throws -> [[String: Any]] {
        let r = runCommand(["/bin/sh", "-c", "\"$0\" iostat --json \"$@\" 2>/dev/null", warpfsBinary] + args)
        #expect(r.status == 0, "\(r.output)")
        return try r.output.split(separator: "\n").map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], "\($0)")
        }
    }

    private func int(_ v: Any?) -> Int { (v as? NSNumber)?.intValue ?? -1 }

    /// The record on the mount root, parsed.
    private func record(_ mnt: String) throws -> IOStatistics.Snapshot {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = getxattr(mnt, WarpFileSystem.statsAttribute, &buf, buf.count)
        guard n >= 0 else { throw Errno(errno, "getxattr \(mnt) \(WarpFileSystem.statsAttribute)") }
        return try #require(IOStatistics.Snapshot(record: String(decoding: buf[0..<n], as: UTF8.self)))
    }

    /// Bytes written and read through the mount show in the first line
    /// (since mount) exactly, with the codecs' bytes and a ratio that is
    /// the stored content over the payload bytes written for it; the next
    /// line (an interval in which nothing happened) shows no traffic.
    @Test func writtenAndReadBytesShowWithTheirRatio() throws {
        // no_keep_cache: the second open drops the page cache, so the read
        // reaches the file system. no_writeback_cache: each 1 MiB write
        // request holds whole blocks (the kernel's own write-back of cached
        // pages may send a block in pieces under load, and a block stored
        // twice would count twice).
        try withMount(options: "no_keep_cache,no_writeback_cache,block_size=64k") { m in
            var r = Rng(11)
            let size = 4 << 20
            let data = r.text(size)
            try FileIO.write(m.path("text"), data)
            // The write handle's release comes after close() returns; until
            // it has run, the file's decompressed blocks stay cached and the
            // read below would not decompress anything.
            usleep(500_000)
            #expect(try FileIO.read(m.path("text")) == data)

            let lines = try iostatJSON([m.mountpoint, "1", "2"])
            try #require(lines.count == 2, "\(lines)")
            let total = lines[0], interval = lines[1]
            #expect(total["covers"] as? String == "since_mount" && interval["covers"] as? String == "interval")
            #expect(total["mountpoint"] as? String == m.mountpoint)
            #expect(int(total["write_bytes"]) == size, "\(total)")
            #expect(int(total["read_bytes"]) == size, "\(total)")
            // Every block went through a compression engine whole, and came back through a decompression one.
            #expect(int(total["compress_in_bytes"]) == size && int(total["decompress_out_bytes"]) == size, "\(total)")
            let logical = int(total["stored_logical_bytes"]), payload = int(total["stored_payload_bytes"])
            #expect(logical == size, "\(total)")
            #expect(payload == int(total["compress_out_bytes"]) && int(total["decompress_in_bytes"]) == payload, "\(total)")
            let ratio = try #require(total["ratio"] as? Double, "\(total)")
            #expect(abs(ratio - Double(size) / Double(payload)) < 1e-9 && ratio > 2, "\(total)")
            // The backing file holds those payloads (the rest is its header and slot table pages).
            var st = stat()
            #expect(stat(m.backingPath("text"), &st) == 0 && Int(st.st_blocks) * 512 >= payload)
            #expect(int(total["errors_eio"]) == 0 && int(total["accelerator_failures"]) == 0, "\(total)")
            #expect(int(total["engines"]) == 2 && int(total["engine_busy_ns"]) > 0, "\(total)")
            #expect(int(total["cache_hits"]) + int(total["cache_misses"]) >= size / (64 << 10), "\(total)")
            for key in ["read_bytes", "write_bytes", "compress_in_bytes", "decompress_out_bytes", "errors_eio", "compress_in_flight"] {
                #expect(int(interval[key]) == 0, "\(key): \(interval)")
            }
            #expect(interval["ratio"] is NSNull, "\(interval)")

            // The table: a header of two lines and one line of figures, sizes in K, M, G.
            let text = runCommand([warpfsBinary, "iostat", m.mountpoint])
            #expect(text.status == 0, "\(text.output)")
            let rows = text.output.split(separator: "\n")
            try #require(rows.count == 3, "\(text.output)")
            #expect(rows[0].contains("file system") && rows[0].contains("compress") && rows[0].contains("errors"), "\(text.output)")
            let columns = rows[1].split(separator: " ").map(String.init)
            let figures = rows[2].split(separator: " ").map(String.init)
            try #require(columns.count == 16 && figures.count == 16, "\(text.output)")
            #expect(Array(columns[0..<5]) == ["read", "write", "in", "out", "ratio"], "\(columns)")
            #expect(figures[0] == "4.0M" && figures[1] == "4.0M" && figures[2] == "4.0M", "\(text.output)")
            #expect(figures[4] == String(format: "%.2f", ratio), "\(text.output)")
            let exact = runCommand([warpfsBinary, "iostat", "-p", m.mountpoint])
            let exactFigures = exact.output.split(separator: "\n").last?.split(separator: " ").map(String.init) ?? []
            #expect(exactFigures.count == 16 && exactFigures[1] == "\(size)", "\(exact.output)")
        }
    }

    /// With allow_other, another user reads the figures (the root may be
    /// read by all) and can neither set nor remove the attribute, even on
    /// a root everyone may write, where the kernel lets the request through.
    @Test func anotherUserReadsTheFiguresButCannotChangeThem() throws {
        let user = try TestUser.ensure()
        try withMount(options: "allow_other") { m in
            try FileIO.write(m.path("f"), Array(repeating: 7, count: 100_000))
            openPathForOthers(m.mountpoint)
            openPathForOthers(warpfsBinary)
            #expect(chmod(m.mountpoint, 0o777) == 0)
            let shown = user.run([warpfsBinary, "iostat", "--json", m.mountpoint])
            #expect(shown.status == 0 && shown.output.contains("\"write_bytes\": 100000"), "\(shown.output)")

            let attempt = """
            import errno, os, sys
            path, name = sys.argv[1], sys.argv[2]
            for what, call in (("set", lambda: os.setxattr(path, name, b"write_bytes 0")), ("remove", lambda: os.removexattr(path, name))):
                try:
                    call(); print(what, "ok")
                except OSError as e:
                    print(what, errno.errorcode[e.errno])
            """
            let r = user.run(["/usr/bin/python3", "-c", attempt, m.mountpoint, WarpFileSystem.statsAttribute])
            #expect(r.output.contains("set EPERM") && r.output.contains("remove EPERM"), "\(r.output)")
            // Nothing changed: the figures still count the write, nothing was stored on the backing root.
            #expect(try record(m.mountpoint)[.writeBytes] == 100_000)
            var buf = [UInt8](repeating: 0, count: 64)
            #expect(getxattr(m.backing, WarpFileSystem.statsAttribute, &buf, buf.count) == -1 && errno == ENODATA)
        }
    }

    /// Root cannot set or remove it either; it is not listed; the figures
    /// are untouched.
    @Test func rootCannotChangeTheFigures() throws {
        try withMount { m in
            try FileIO.write(m.path("f"), Array(repeating: 7, count: 5000))
            let before = try record(m.mountpoint)
            let value = Array("warpfs-stats 1\nwrite_bytes 0\n".utf8)
            #expect(setxattr(m.mountpoint, WarpFileSystem.statsAttribute, value, value.count, 0) == -1 && errno == EPERM)
            #expect(setxattr(m.mountpoint, WarpFileSystem.statsAttribute, value, value.count, Int32(XATTR_CREATE)) == -1 && errno == EPERM)
            #expect(removexattr(m.mountpoint, WarpFileSystem.statsAttribute) == -1 && errno == EPERM)
            #expect(!XattrTests.list(m.mountpoint).contains(WarpFileSystem.statsAttribute))
            var buf = [UInt8](repeating: 0, count: 64)
            #expect(getxattr(m.backing, WarpFileSystem.statsAttribute, &buf, buf.count) == -1 && errno == ENODATA)
            let after = try record(m.mountpoint)
            #expect(after[.writeBytes] == 5000 && after[.writeBytes] == before[.writeBytes])
            // Only the root carries it: a file of the mount has no such attribute.
            #expect(getxattr(m.path("f"), WarpFileSystem.statsAttribute, &buf, buf.count) == -1 && errno == ENODATA)
        }
    }

    /// A path that is not on a WarpFS mount, or does not exist, is named in
    /// a clear error; bad intervals and counts are refused.
    @Test func aPathThatIsNotAWarpFSMountIsRefused() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let r = runCommand([warpfsBinary, "iostat", dir])
        #expect(r.status == 1 && r.output.contains("'\(dir)' is not on a WarpFS mount"), "\(r.output)")
        let missing = runCommand([warpfsBinary, "iostat", dir + "/missing"])
        #expect(missing.status == 1 && missing.output.contains("does not exist"), "\(missing.output)")
        let zero = runCommand([warpfsBinary, "iostat", dir, "0"])
        #expect(zero.status != 0 && zero.output.contains("INTERVAL"), "\(zero.output)")
        let none = runCommand([warpfsBinary, "iostat", dir, "1", "0"])
        #expect(none.status != 0 && none.output.contains("COUNT"), "\(none.output)")
    }

    /// The record: versioned, one `key value` line per figure, read back
    /// as written; intervals subtract counters and keep gauges.
    @Test func theRecordRoundTripsAndSubtracts() throws {
        var a = IOStatistics.Snapshot()
        a.uptimeNanoseconds = 1_000_000_000
        a[.writeBytes] = 100
        a[.compressInFlight] = 3
        a[.storedLogical] = 400
        a[.storedPayload] = 100
        #expect(a.record.hasPrefix("warpfs-stats 1\nuptime_ns 1000000000\n"))
        #expect(IOStatistics.Snapshot(record: a.record) == a)
        #expect(IOStatistics.Snapshot(record: "warpfs-stats 2\nread_bytes 1\n") == nil)
        #expect(IOStatistics.Snapshot(record: a.record + "a_future_figure 5\n")?[IOStatistics.Snapshot.Key("a_future_figure")] == 5)
        var b = a
        b.uptimeNanoseconds = 3_000_000_000
        b[.writeBytes] = 250
        b[.compressInFlight] = 1
        b[.storedLogical] = 700
        b[.storedPayload] = 200
        let d = b.delta(since: a)
        #expect(d.uptimeNanoseconds == 2_000_000_000 && d[.writeBytes] == 150 && d[.compressInFlight] == 1 && d.ratio == 3)
    }
}
