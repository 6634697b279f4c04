#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// Bad command lines: a message naming the problem, a non-zero exit, nothing mounted.
@Suite struct CommandLineTests {
    @Test func badOptionMissingBackingAndBusyMountpoint() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        mkdir(root + "/b", 0o755)
        mkdir(root + "/m", 0o755)
        let bad = runCommand([warpfsBinary, "mount", root + "/b", root + "/m", "-o", "level=42"])
        #expect(bad.status != 0 && bad.output.contains("level=42"))
        let unknown = runCommand([warpfsBinary, "mount", root + "/b", root + "/m", "-o", "colour=blue"])
        #expect(unknown.status != 0 && unknown.output.contains("colour"))
        let block = runCommand([warpfsBinary, "mount", root + "/b", root + "/m", "-o", "block_size=5000"])
        #expect(block.status != 0 && block.output.contains("block_size"))
        let missing = runCommand([warpfsBinary, "mount", root + "/nope", root + "/m"])
        #expect(missing.status != 0 && missing.output.contains("nope"))
        #expect(!isMounted(root + "/m"))
        // Background mount, then a second mount on the same mountpoint.
        let first = runCommand([warpfsBinary, "mount", root + "/b", root + "/m"])
        #expect(first.status == 0, "\(first.output)")
        defer { _ = runCommand([warpfsBinary, "unmount", root + "/m"]) }
        #expect(isMounted(root + "/m"))
        try FileIO.write(root + "/m/hello", Array("hi".utf8))
        let second = runCommand([warpfsBinary, "mount", root + "/b", root + "/m"])
        #expect(second.status != 0 && second.output.contains("already in use"))
        let un = runCommand([warpfsBinary, "unmount", root + "/m"])
        #expect(un.status == 0, "\(un.output)")
        #expect(!isMounted(root + "/m"))
        // Stored compressed: a container, or packed (an empty backing file with a reference).
        var ref = [UInt8](repeating: 0, count: 64)
        let packed = getxattr(root + "/b/hello", "user.warpfs.packed", &ref, ref.count) > 0
        let header = try FileIO.read(root + "/b/hello").prefix(6)
        #expect(packed || header.elementsEqual(Array("WARPFS".utf8)))
    }

    /// `warpfs unmount` returns once the server has exited, even when the
    /// server's parent (here the test, which started `mount -f`) has not
    /// reaped it yet: a zombie is not a running server.
    @Test func unmountDoesNotWaitForAnUnreapedServer() throws {
        let m = try TestMount()
        defer { m.close() }
        try FileIO.write(m.path("f"), Array("kept".utf8))
        let start = wd_now_ns()
        let r = runCommand([warpfsBinary, "unmount", m.mountpoint])
        let seconds = Double(wd_now_ns() - start) / 1e9
        #expect(r.status == 0, "\(r.output)")
        #expect(seconds < 10, "unmount took \(seconds) s")
        #expect(!isMounted(m.mountpoint))
        try m.start()
        #expect(try FileIO.read(m.path("f")) == Array("kept".utf8))
    }

    @Test func signalsUnmountCleanly() throws {
        let m = try TestMount()
        defer { m.close() }
        try FileIO.write(m.path("kept"), Array(repeating: 65, count: 100_000))
        kill(m.pid, SIGTERM)
        let deadline = 10_000
        var waited = 0
        while isMounted(m.mountpoint) && waited < deadline { usleep(10_000); waited += 10 }
        #expect(!isMounted(m.mountpoint))
        try m.start()
        #expect(try FileIO.read(m.path("kept")) == Array(repeating: 65, count: 100_000))
    }
}

/// `warpfs bench` runs every workload on its targets and writes what a person opens.
@Suite struct BenchCommandTests {
    @Test func smallBenchWritesTableJSONAndChart() throws {
        let dir = makeTempDir("warpfs-bench-test")
        defer { removeTree(dir) }
        let r = runCommand([warpfsBinary, "bench", "--size", "4", "--random-ops", "50", "--files", "20", "--runs", "1",
                            "--work", dir, "--json", dir + "/b.json", "--svg", dir + "/b.svg"])
        #expect(r.status == 0, "\(r.output)")
        for w in ["sequential write", "sequential read", "random read", "random write", "small files"] {
            #expect(r.output.contains(w))
        }
        #expect(r.output.contains("warpfs-nocompress") && r.output.contains("zlib-2-threads"))
        #expect(r.output.contains("warpfs / zlib-2-threads, sequential write"))
        let json = String(decoding: try FileIO.read(dir + "/b.json"), as: UTF8.self)
        #expect(json.contains("\"workload\"") && json.contains("\"median\"") && json.contains("\"warpfs_over_zlib\""))
        let svg = String(decoding: try FileIO.read(dir + "/b.svg"), as: UTF8.self)
        #expect(svg.hasPrefix("<svg") && svg.contains("<rect"))
        // Its temporary mounts are gone.
        #expect(!runCommand(["/bin/cat", "/proc/self/mountinfo"]).output.contains(dir))
    }
}
