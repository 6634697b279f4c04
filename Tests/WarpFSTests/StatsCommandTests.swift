#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing

/// `warpfs stats` on trees written through real mounts with several
/// algorithms: the per-encoding rows, allocated space against st_blocks
/// and du, the JSON against the table, offline and through a live mount,
/// symbolic links inside the tree not followed, hard links counted once,
/// and a caller who cannot read the backing files.
@Suite struct StatsCommandTests {
    static let bs = 65536

    /// What the tree holds, per row: files, blocks, logical bytes.
    static let expected: [String: (files: Int, blocks: Int, logical: Int)] = [
        "raw": (1, 3, 3 * bs),                               // noise
        "zero": (1, 15, 15 * bs),                            // sparse: blocks 0-14
        "deflate": (2, 7, 5 * bs + 1000 + bs),              // text (6 blocks) and sparse's last block
        "zstd": (1, 4, 4 * bs),                              // z/text
        "lz4": (1, 2, 2 * bs),                               // l/text
        "plain": (1, 0, 5000),                               // plain.txt
    ]
    /// Regular files (each inode once) and their names in the backing tree.
    static let files = ["text", "noise", "sparse", "empty", "z/text", "l/text", "plain.txt"]

    /// Writes the tree: deflate, zstd and lz4 mounts in turn over one
    /// backing directory, a plain file, a hard link, and symbolic links to
    /// a file and a directory outside the tree. Returns the unmounted mount.
    /// Small files are not packed here (PackFsckTests counts packed ones).
    private func makeTree() throws -> TestMount {
        let bs = Self.bs
        let m = try TestMount(options: "algorithm=deflate,nopack")
        do {
            var r = Rng(7)
            try FileIO.write(m.path("text"), r.text(5 * bs + 1000))
            // Noise whose blocks end in a non-zero byte: raw payloads are the whole block.
            var noise = r.bytes(3 * bs)
            for b in 1...3 { noise[b * bs - 1] = 1 }
            try FileIO.write(m.path("noise"), noise)
            let fd = open(m.path("sparse"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            #expect(fd >= 0 && ftruncate(fd, off_t(16 * bs)) == 0)
            try FileIO.pwrite(fd, Array("ten bytes\n".utf8), 16 * bs - 10)
            close(fd)
            try FileIO.write(m.path("empty"), [])
            m.unmount()
            for (algorithm, dir, blocks) in [("zstd", "z", 4), ("lz4", "l", 2)] {
                let n = try TestMount(options: "algorithm=\(algorithm),nopack", backing: m.backing)
                defer { n.close() }
                #expect(mkdir(n.path(dir), 0o755) == 0)
                try FileIO.write(n.path(dir + "/text"), r.text(blocks * bs))
            }
            try FileIO.write(m.backingPath("plain.txt"), r.text(5000))
            #expect(link(m.backingPath("text"), m.backingPath("text-link")) == 0)
            let outside = m.root + "/outside"
            #expect(mkdir(outside, 0o755) == 0)
            try FileIO.write(outside + "/big", r.bytes(1 << 20))
            #expect(symlink(outside + "/big", m.backingPath("out-file")) == 0)
            #expect(symlink(outside, m.backingPath("out-dir")) == 0)
            return m
        } catch {
            m.close()
            throw error
        }
    }

    /// `warpfs stats --json ARGS` (standard output only), parsed.
    private func statsJSON(_ args: [String]) throws -> [String: Any] {
        let r = runCommand(["/bin/sh", "-c", "\"$0\" stats --json \"$@\" 2>/dev/null", warpfsBinary] + args)
        #expect(r.status == 0, "\(r.output)")
        let object = try JSONSerialization.jsonObject(with: Data(r.output.utf8))
        return try #require(object as? [String: Any], "\(r.output)")
    }

    private func int(_ v: Any?) -> Int { (v as? NSNumber)?.intValue ?? -1 }

    private func rows(_ doc: [String: Any]) -> [String: [String: Int]] {
        var out: [String: [String: Int]] = [:]
        for (k, v) in doc["encodings"] as? [String: Any] ?? [:] {
            out[k] = ((v as? [String: Any]) ?? [:]).mapValues { int($0) }
        }
        return out
    }

    private func totals(_ doc: [String: Any]) -> [String: Int] {
        ((doc["total"] as? [String: Any]) ?? [:]).filter { $0.key != "ratio" }.mapValues { int($0) }
    }

    /// Sum of st_blocks * 512 of the tree's regular files.
    private func allocated(_ m: TestMount) throws -> Int {
        try Self.files.reduce(0) { $0 + Int(try FileIO.stat(m.backingPath($1)).st_blocks) * 512 }
    }

    private func du(_ args: [String]) -> Int {
        let r = runCommand(["/usr/bin/du", "-B1"] + args)
        #expect(r.status == 0, "\(r.output)")
        return Int(r.output.split(separator: "\n").last?.split(separator: "\t").first ?? "") ?? -1
    }

    @Test func rowsTotalsAndAllocatedSpaceOfATreeWrittenWithThreeAlgorithms() throws {
        let m = try makeTree()
        defer { m.close() }
        let doc = try statsJSON([m.backing])
        let got = rows(doc)
        #expect(Set(got.keys) == Set(Self.expected.keys), "\(got)")
        for (k, want) in Self.expected {
            let row = got[k] ?? [:]
            #expect(row["files"] == want.files && row["blocks"] == want.blocks && row["logical"] == want.logical, "\(k): \(row)")
        }
        #expect(got["raw"]?["stored"] == 3 * Self.bs)
        #expect(got["zero"]?["stored"] == 0)
        #expect(got["plain"]?["stored"] == 5000)
        for k in ["deflate", "zstd", "lz4"] {
            let row = got[k] ?? [:]
            #expect((row["stored"] ?? 0) > 0 && (row["stored"] ?? 0) < (row["logical"] ?? 0) / 2, "\(k) compresses: \(row)")
        }

        // Totals: each inode once (the hard link), nothing behind the symbolic links.
        let total = totals(doc)
        let logical = (5 * Self.bs + 1000) + 3 * Self.bs + 16 * Self.bs + 0 + 4 * Self.bs + 2 * Self.bs + 5000
        #expect(total["files"] == 7 && total["containers"] == 6 && total["plain"] == 1, "\(total)")
        #expect(total["logical"] == logical, "\(total)")
        #expect(total["stored"] == got.values.reduce(0) { $0 + ($1["stored"] ?? 0) })
        #expect(total["blocks"] == Self.expected.values.reduce(0) { $0 + $1.blocks })
        let sum = try allocated(m)
        #expect(total["allocated"] == sum, "allocated \(total["allocated"] ?? -1), st_blocks sum \(sum)")
        #expect(du(["-c"] + (Self.files + ["text-link"]).map(m.backingPath)) == sum, "du -B1 -c of the files")
        let other = (doc["other_nodes"] as? [String: Any]) ?? [:]
        // The root, z, l and the two symbolic links.
        #expect(int(other["count"]) == 5, "\(other)")
        #expect(sum + int(other["allocated"]) == du(["-s", m.backing]), "files and other nodes make du -s")
        let ratio = ((doc["total"] as? [String: Any])?["ratio"] as? NSNumber)?.doubleValue ?? 0
        #expect(abs(ratio - Double(logical) / Double(sum)) < 1e-9)
        #expect(int(doc["unreadable"]) == 0)
        // Containers alone: everything but plain.txt; version 3 places payloads byte by byte.
        let containers = ((doc["containers"] as? [String: Any]) ?? [:]).mapValues { int($0) }
        let plainAllocated = Int(try FileIO.stat(m.backingPath("plain.txt")).st_blocks) * 512
        #expect(containers["allocated"] == sum - plainAllocated && containers["stored"] == (total["stored"] ?? 0) - 5000, "\(containers)")
        #expect(containers["payload_pages"] == containers["stored"] && (containers["payload_pages"] ?? 0) <= (containers["allocated"] ?? 0),
                "\(containers)")
        #expect(containers["superseded_versions"] == 0 && containers["unpaged_payloads"] ?? -1 >= 0, "\(containers)")

        // The table says the same (exact bytes).
        let text = runCommand([warpfsBinary, "stats", "--bytes", m.backing])
        #expect(text.status == 0, "\(text.output)")
        for (k, row) in got {
            let label = k == "zero" ? "zero/holes" : k
            let line = text.output.split(separator: "\n").first { $0.hasPrefix(label + " ") }.map { $0.split(separator: " ").map(String.init) }
            let blocks = k == "plain" ? "-" : "\(row["blocks"]!)"
            #expect(line == [label, "\(row["files"]!)", blocks, "\(row["logical"]!)", "\(row["stored"]!)"], "\(k): \(text.output)")
        }
        let totalLine = text.output.split(separator: "\n").first { $0.hasPrefix("TOTAL ") }?.split(separator: " ").map(String.init)
        #expect(totalLine?.prefix(6) == ["TOTAL", "7", "\(total["blocks"]!)", "\(logical)", "\(total["stored"]!)", "\(sum)"], "\(text.output)")
    }

    /// Through a live mount the same backing files are read: the same
    /// figures for the whole tree, and for a subdirectory and a file.
    @Test func throughALiveMountTheBackingFilesAreRead() throws {
        let m = try makeTree()
        defer { m.close() }
        let offline = try statsJSON([m.backing])
        try m.start()
        let online = try statsJSON([m.mountpoint])
        #expect(rows(online) == rows(offline))
        #expect(totals(online) == totals(offline))
        let paths = (online["paths"] as? [[String: Any]]) ?? []
        #expect(paths.count == 1 && paths.first?["mount"] as? String == m.mountpoint && paths.first?["read"] as? String == m.backing,
                "\(paths)")

        let sub = try statsJSON([m.path("z"), m.path("l/text")])
        #expect(rows(sub) == ["zstd": rows(offline)["zstd"]!, "lz4": rows(offline)["lz4"]!])
        #expect(totals(sub)["files"] == 2)

        let text = runCommand([warpfsBinary, "stats", m.path("z")])
        #expect(text.status == 0 && text.output.contains("on the WarpFS mount at \(m.mountpoint); reading its backing files at \(m.backing)/z"),
                "\(text.output)")
    }

    /// A symbolic link inside the tree is a node of its own, never followed,
    /// even to a directory full of files; one named on the command line is.
    @Test func symbolicLinksInsideTheTreeAreNotFollowed() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        #expect(mkdir(root + "/tree", 0o755) == 0 && mkdir(root + "/elsewhere", 0o755) == 0)
        try FileIO.write(root + "/elsewhere/f", [UInt8](repeating: 1, count: 100_000))
        #expect(symlink(root + "/elsewhere", root + "/tree/dir-link") == 0)
        #expect(symlink(root + "/elsewhere/f", root + "/tree/file-link") == 0)
        let doc = try statsJSON([root + "/tree"])
        #expect(totals(doc)["files"] == 0 && totals(doc)["allocated"] == 0, "\(doc)")
        #expect(int((doc["other_nodes"] as? [String: Any])?["count"]) == 3)
        let named = try statsJSON([root + "/tree/file-link"])
        #expect(totals(named)["files"] == 1 && rows(named)["plain"]?["logical"] == 100_000, "\(named)")
    }

    /// A caller who cannot read the backing directory of a mount is told
    /// so, and a backing file it cannot read is reported and left out.
    @Test func aCallerWhoCannotReadTheBackingFilesIsTold() throws {
        let user = try TestUser.ensure()
        try withMount(options: "allow_other") { m in
            try FileIO.write(m.path("open"), Array(repeating: 65, count: 70_000), mode: 0o644)
            try FileIO.write(m.path("secret"), Array(repeating: 66, count: 70_000), mode: 0o600)
            #expect(chmod(m.path("secret"), 0o600) == 0 && chmod(m.path("open"), 0o644) == 0)
            openPathForOthers(m.mountpoint)
            #expect(chmod(m.backing, 0o700) == 0)
            let denied = user.run([warpfsBinary, "stats", m.mountpoint])
            #expect(denied.status == 1, "\(denied.output)")
            #expect(denied.output.contains("WarpFS mount at \(m.mountpoint), whose backing directory \(m.backing) cannot be read: Permission denied")
                    && denied.output.contains("run it as the user who mounted, or as root"), "\(denied.output)")

            #expect(chmod(m.backing, 0o755) == 0)
            let partly = user.run([warpfsBinary, "stats", "--bytes", m.mountpoint])
            #expect(partly.status == 1, "\(partly.output)")
            #expect(partly.output.contains("\(m.mountpoint)/secret") && partly.output.contains("Permission denied")
                    && partly.output.contains("1 file could not be read and is not counted"), "\(partly.output)")
            #expect(partly.output.split(separator: "\n").contains { $0.hasPrefix("TOTAL ") && $0.split(separator: " ")[1] == "1" },
                    "\(partly.output)")
        }
    }

    @Test func badCommandLines() throws {
        let none = runCommand([warpfsBinary, "stats"])
        #expect(none.status != 0 && none.output.contains("Missing expected argument '<path> ...'"), "\(none.output)")
        let missing = runCommand([warpfsBinary, "stats", "/nonexistent/warpfs-stats"])
        #expect(missing.status == 1 && missing.output.contains("/nonexistent/warpfs-stats: resolve: No such file or directory"), "\(missing.output)")
        let progress = runCommand([warpfsBinary, "stats", "/tmp", "--progress", "sometimes"])
        #expect(progress.status != 0 && progress.output.contains("--progress"), "\(progress.output)")
    }

    /// The progress line goes to standard error only; standard output is the same table as without it.
    @Test func progressGoesToStandardErrorOnly() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        var r = Rng(5)
        for i in 0..<20 { try FileIO.write(root + "/f\(i)", r.text(50_000)) }
        let quiet = runCommand([warpfsBinary, "stats", root, "--progress", "never"])
        let out = runCommand(["/bin/sh", "-c", "\"$0\" stats \"$1\" --progress always 2>/dev/null", warpfsBinary, root])
        #expect(quiet.status == 0 && out.status == 0 && out.output == quiet.output, "\(out.output)\n\(quiet.output)")
        let err = runCommand(["/bin/sh", "-c", "\"$0\" stats \"$1\" --progress always 2>&1 >/dev/null", warpfsBinary, root])
        #expect(err.output.contains("%") && err.output.contains("MiB"), "\(err.output)")
        // auto: not a terminal here, so nothing.
        let auto = runCommand(["/bin/sh", "-c", "\"$0\" stats \"$1\" 2>&1 >/dev/null", warpfsBinary, root])
        #expect(auto.status == 0 && auto.output.isEmpty, "\(auto.output)")
    }
}
