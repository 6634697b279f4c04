#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpFSFormat

/// Containers of format version 2 next to version 3 on real mounts: a
/// version-2 container stays one while it is read and partly rewritten
/// (under a mount that makes version-3 containers), becomes version 3 once
/// emptied, `warpfs compress -o format_version=3` upgrades it, and a tree
/// holding both versions works under one mount. The version is read where
/// the format keeps it: the u16 at byte 8 of the backing file.
@Suite struct FormatUpgradeTests {
    /// Written under `format_version=2`, then read, partly rewritten,
    /// extended and synced under a default mount: still version 2, the data
    /// intact. Emptied (by ftruncate and by O_TRUNC) and written again: now
    /// version 3, the new data intact.
    @Test func aVersion2ContainerStaysVersion2UntilEmptiedThenBecomesVersion3() throws {
        var r = Rng(301)
        var want = ["cut": r.text(5 * (64 << 10) + 777), "otrunc": r.text(200_000), "kept": r.text(150_000)]
        let old = try TestMount(options: formatOption(2))
        defer { old.close() }
        for (name, data) in want { try FileIO.write(old.path(name), data) }
        old.unmount()
        for name in want.keys { #expect(try containerVersion(old.backingPath(name)) == 2, "\(name)") }

        let m = try TestMount(backing: old.backing)
        defer { m.close() }
        for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) read under a default mount") }
        // Partial rewrites inside and across blocks, and growth past the end.
        for name in want.keys {
            let fd = open(m.path(name), O_RDWR)
            #expect(fd >= 0)
            for (off, len) in [(10, 100), ((64 << 10) - 50, 3000), (100_000, 20_000), (want[name]!.count - 10, 5000)] {
                let piece = r.int(2) == 0 ? r.text(len) : r.bytes(len)
                try FileIO.pwrite(fd, piece, off)
                if want[name]!.count < off + len { want[name]! += [UInt8](repeating: 0, count: off + len - want[name]!.count) }
                want[name]!.replaceSubrange(off..<(off + len), with: piece)
            }
            #expect(fsync(fd) == 0)
            #expect(try FileIO.pread(fd, want[name]!.count + 10, 0) == want[name]!, "\(name) after partial rewrites")
            close(fd)
        }
        m.unmount()
        for name in want.keys { #expect(try containerVersion(m.backingPath(name)) == 2, "\(name) after partial rewrites") }
        try expectClean(m.backing)

        try m.start()
        for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) after a remount") }
        // Emptied by ftruncate: version 3 at once (the upgrade is made durable
        // before the truncation returns), then written again.
        let fd = open(m.path("cut"), O_RDWR)
        #expect(fd >= 0)
        #expect(ftruncate(fd, 0) == 0)
        #expect(try containerVersion(m.backingPath("cut")) == 3, "cut after ftruncate to 0")
        #expect(try FileIO.stat(m.path("cut")).st_size == 0)
        want["cut"] = r.text(3 * (64 << 10) + 5)
        try FileIO.pwrite(fd, want["cut"]!, 0)
        #expect(fsync(fd) == 0)
        close(fd)
        // Emptied by an open with O_TRUNC and written.
        want["otrunc"] = r.text(90_000)
        try FileIO.write(m.path("otrunc"), want["otrunc"]!)
        for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) after emptying") }
        m.unmount()
        #expect(try containerVersion(m.backingPath("cut")) == 3)
        #expect(try containerVersion(m.backingPath("otrunc")) == 3)
        #expect(try containerVersion(m.backingPath("kept")) == 2)
        #expect(try containerLayout(m.backingPath("cut")).version == 3)
        try expectClean(m.backing)
        try m.start()
        for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) after emptying and a remount") }
    }

    /// `warpfs compress -o format_version=3` over a tree of version-2
    /// containers (other block sizes, a sparse one, an empty one) and plain
    /// files: every one becomes a version-3 container with the same content
    /// through a mount, mode and times kept, fsck clean; all are counted as
    /// compressed, and a second run counts them as already compressed.
    @Test func compressUpgradesVersion2Containers() throws {
        var r = Rng(302)
        var want: [String: [UInt8]] = [:]
        let old = try TestMount(options: "block_size=16k,\(formatOption(2))")
        defer { old.close() }
        #expect(mkdir(old.path("dir"), 0o755) == 0)
        want["text"] = r.text(300_000)
        want["dir/noise"] = r.bytes(70_000) + r.text(50_000)
        want["empty"] = []
        for name in ["text", "dir/noise", "empty"] { try FileIO.write(old.path(name), want[name]!) }
        // Sparse: two pieces 3 MiB apart, the rest never written, and a
        // hole at the end (grown by ftruncate).
        let sparse = open(old.path("dir/sparse"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        let head = r.text(5000), tail = r.text(3000)
        try FileIO.pwrite(sparse, head, 0)
        try FileIO.pwrite(sparse, tail, 3 << 20)
        #expect(ftruncate(sparse, off_t((4 << 20) + 123)) == 0)
        close(sparse)
        want["dir/sparse"] = head + [UInt8](repeating: 0, count: (3 << 20) - head.count) + tail
        want["dir/sparse"]! += [UInt8](repeating: 0, count: (4 << 20) + 123 - want["dir/sparse"]!.count)
        #expect(chmod(old.path("text"), 0o640) == 0)
        old.unmount()
        let containers = want.keys.sorted()
        for name in containers { #expect(try containerVersion(old.backingPath(name)) == 2, "\(name)") }
        #expect(try containerLayout(old.backingPath("text")).blockSize == 16 << 10)
        want["plain.txt"] = r.text(40_000)
        want["dir/plain.bin"] = r.bytes(10_000)
        for name in ["plain.txt", "dir/plain.bin"] { try FileIO.write(old.backingPath(name), want[name]!) }
        let before = try FileIO.stat(old.backingPath("text"))

        let first = runCommand([warpfsBinary, "compress", "-o", formatOption(3), old.backing])
        #expect(first.status == 0, "\(first.output)")
        #expect(first.output.contains("compressed \(want.count) file(s), 0 already compressed, 0 skipped, 0 failed"), "\(first.output)")
        for name in want.keys.sorted() { #expect(try containerVersion(old.backingPath(name)) == 3, "\(name)") }
        // An upgraded container keeps its own block size; a converted plain file takes the option's.
        #expect(try containerLayout(old.backingPath("text")).blockSize == 16 << 10)
        #expect(try containerLayout(old.backingPath("plain.txt")).blockSize == 64 << 10)
        let after = try FileIO.stat(old.backingPath("text"))
        #expect(after.st_mode == before.st_mode && after.st_mtim.tv_sec == before.st_mtim.tv_sec
                && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec, "text: mode or times changed by the upgrade")
        try expectClean(old.backing)

        let second = runCommand([warpfsBinary, "compress", "-o", formatOption(3), old.backing])
        #expect(second.status == 0, "\(second.output)")
        #expect(second.output.contains("compressed 0 file(s), \(want.count) already compressed, 0 skipped, 0 failed"), "\(second.output)")

        let m = try TestMount(backing: old.backing)
        defer { m.close() }
        for (name, data) in want {
            #expect(try FileIO.stat(m.path(name)).st_size == data.count, "\(name) size")
            #expect(try FileIO.read(m.path(name)) == data, "\(name) after the upgrade")
        }
        // The sparse file stayed sparse.
        #expect(try FileIO.stat(m.backingPath("dir/sparse")).st_blocks * 512 < 1 << 20)
    }

    /// Under `format_version=2` an emptied version-3 file becomes version 2
    /// (the mount's version), as new files are: the option keeps a tree
    /// readable by older builds also when files are rewritten with `O_TRUNC`.
    @Test func anEmptiedFileTakesTheMountsVersion() throws {
        var r = Rng(77)
        let first = r.text(100_000), second = r.text(70_000)
        let new = try TestMount()
        defer { new.close() }
        try FileIO.write(new.path("f"), first)
        new.unmount()
        #expect(try containerVersion(new.backingPath("f")) == 3)
        let old = try TestMount(options: formatOption(2), backing: new.backing)
        defer { old.close() }
        #expect(try FileIO.read(old.path("f")) == first)
        try FileIO.write(old.path("f"), second)          // O_TRUNC: emptied, then written
        #expect(try containerVersion(old.backingPath("f")) == 2)
        #expect(try FileIO.read(old.path("f")) == second)
        old.unmount()
        #expect(try containerVersion(old.backingPath("f")) == 2)
        try expectClean(old.backing)
    }

    /// Version-2 and version-3 containers side by side, in one directory and
    /// a subdirectory: a default mount and a `format_version=2` mount each
    /// read and rewrite both, create files of their own version, rename
    /// across; every file keeps its version, fsck is clean, the data intact.
    /// `warpfs decompress` then gives plain files of both.
    @Test func aMixedTreeWorksUnderOneMount() throws {
        var r = Rng(303)
        var want: [String: [UInt8]] = [:]
        var versions: [String: UInt16] = [:]
        let root = makeTempDir("warpfs-mixed")
        defer { removeTree(root) }
        let backing = root + "/backing"
        #expect(mkdir(backing, 0o755) == 0 && mkdir(backing + "/sub", 0o755) == 0)
        for version in FileHeader.versions {
            let m = try TestMount(options: "\(formatOption(version)),block_size=\(version == 2 ? "32k" : "16k")", backing: backing)
            defer { m.close() }
            for name in ["v\(version)-a", "sub/v\(version)-b", "v\(version)-small"] {
                want[name] = name.hasSuffix("small") ? Array("small \(name)\n".utf8) : r.text(150_000 + r.int(100_000))
                versions[name] = version
                try FileIO.write(m.path(name), want[name]!)
            }
        }
        for (name, v) in versions { #expect(try containerVersion(backing + "/" + name) == v, "\(name)") }
        try expectClean(backing)

        for mountVersion in [nil, UInt16(2)] {
            let m = try TestMount(options: mountVersion.map(formatOption) ?? "nopack", backing: backing)
            defer { m.close() }
            let tag = mountVersion.map { "v\($0)" } ?? "default"
            for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) under the \(tag) mount") }
            for name in want.keys.sorted() {
                let fd = open(m.path(name), O_RDWR)
                #expect(fd >= 0)
                let off = r.int(want[name]!.count), piece = r.text(1 + r.int(40_000))
                try FileIO.pwrite(fd, piece, off)
                if want[name]!.count < off + piece.count { want[name]! += [UInt8](repeating: 0, count: off + piece.count - want[name]!.count) }
                want[name]!.replaceSubrange(off..<(off + piece.count), with: piece)
                close(fd)
            }
            let made = "sub/new-\(tag)"
            want[made] = r.text(120_000)
            versions[made] = mountVersion ?? FileHeader.version
            try FileIO.write(m.path(made), want[made]!)
            // A rename keeps the container as it is.
            let moved = mountVersion == nil ? ("v2-a", "sub/v2-a") : ("sub/v3-b", "v3-b")
            #expect(rename(m.path(moved.0), m.path(moved.1)) == 0)
            want[moved.1] = want.removeValue(forKey: moved.0)
            versions[moved.1] = versions.removeValue(forKey: moved.0)
            for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) after writes under the \(tag) mount") }
            m.unmount()
            for (name, v) in versions { #expect(try containerVersion(backing + "/" + name) == v, "\(name) after the \(tag) mount") }
            try expectClean(backing)
            try m.start()
            for (name, data) in want { #expect(try FileIO.read(m.path(name)) == data, "\(name) after a remount") }
        }
        let d = runCommand([warpfsBinary, "decompress", backing])
        #expect(d.status == 0 && d.output.contains("decompressed \(want.count) file(s), 0 already plain"), "\(d.output)")
        for (name, data) in want { #expect(try FileIO.read(backing + "/" + name) == data, "\(name) decompressed") }
    }

    /// `warpfs fsck` finds nothing to report in `backing`.
    private func expectClean(_ backing: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let check = runCommand([warpfsBinary, "fsck", backing, "--progress", "never"])
        #expect(check.status == 0 && check.output.contains(" 0 problems found"), "\(check.output)", sourceLocation: sourceLocation)
    }
}
