#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// `warpfs bench`'s kernel anchor: btrfs on a loop device, compressing, as
/// targets beside WarpFS; and the system corpus as data.
extension BenchCommandTests {
    /// Root and btrfs-progs: what the btrfs targets need.
    static let btrfsWorks = getuid() == 0
        && ["/usr/sbin/mkfs.btrfs", "/sbin/mkfs.btrfs", "/usr/bin/mkfs.btrfs"].contains(where: { (p: String) in access(p, X_OK) == 0 })

    static let compsizeFound = ["/usr/sbin/compsize", "/usr/bin/compsize"].contains(where: { (p: String) in access(p, X_OK) == 0 })

    @Test(.enabled(if: btrfsWorks, "needs root and mkfs.btrfs (Debian package btrfs-progs)"))
    func btrfsTargetsJoinWithFiguresAndCompression() throws {
        let dir = makeTempDir("anchor-test")
        defer { removeTree(dir) }
        let r = runCommand([warpfsBinary, "bench", "--data", "system", "--size", "4", "--random-ops", "50", "--files", "20",
                            "--runs", "2", "--btrfs", "zstd:1,zlib:1", "--work", dir, "--json", dir + "/b.json", "--svg", dir + "/b.svg"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("warpfs / btrfs") && r.output.contains("/btrfs-zstd:1") && r.output.contains("/btrfs-zlib:1"))
        // Which accelerator the figures come from (this host has no kernel device).
        #expect(r.output.contains("warpfs mount: block 64 KiB, deflate level 1, in-process emulated device"), "\(r.output.prefix(600))")
        let json = String(decoding: try FileIO.read(dir + "/b.json"), as: UTF8.self)
        let lines = json.split(separator: "\n").map(String.init)
        for target in ["btrfs-zstd:1", "btrfs-zlib:1"] {
            // A row per workload, each with a finite, positive median.
            let rows = lines.filter { $0.contains("\"workload\"") && $0.contains("\"target\": \"\(target)\"") }
            #expect(rows.count == 5, "\(target): \(rows)")
            for row in rows {
                let median = number(after: "\"median\": ", in: row)
                #expect(median != nil && median!.isFinite && median! > 0, "\(row)")
            }
            // Its compression: logical size over allocated space, more than 1 for text and libraries.
            let described = lines.first { $0.contains("{\"name\": \"\(target)\"") } ?? ""
            let ratio = number(after: "\"compression_ratio\": ", in: described)
            #expect(ratio != nil && ratio!.isFinite && ratio! > 1, "\(described)")
            #expect(number(after: "\"allocated_bytes\": ", in: described).map { $0 > 0 } == true, "\(described)")
            // And the file's data extents alone, when compsize (btrfs-compsize) is there.
            if BenchCommandTests.compsizeFound {
                let dataOnly = number(after: "\"data_only_compression_ratio\": ", in: described)
                #expect(dataOnly != nil && dataOnly!.isFinite && dataOnly! > 1, "\(described)")
            }
            // WarpFS over it, per workload.
            #expect(json.contains("\"\(target)\": {\"sequential write 1 MiB\": "), "\(json)")
        }
        let svg = String(decoding: try FileIO.read(dir + "/b.svg"), as: UTF8.self)
        #expect(svg.contains(">btrfs-zstd:1<") && svg.contains("compression achieved"))
        expectNothingLeft(dir)
        // The corpus was built once under --work and is reused.
        #expect(access(dir + "/warpfs-bench-system-4MiB.tar", R_OK) == 0)
        let again = runCommand([warpfsBinary, "bench", "--data", "system", "--size", "4", "--random-ops", "10", "--files", "5",
                                "--runs", "1", "--no-btrfs", "--work", dir, "--json", dir + "/c.json", "--svg", dir + "/c.svg"])
        #expect(again.status == 0 && again.output.contains("reused"), "\(again.output)")
        #expect(!again.output.contains("btrfs-"), "\(again.output)")
    }

    /// Ctrl-C in the middle of a run unmounts and deletes everything the bench made.
    @Test(.enabled(if: btrfsWorks, "needs root and mkfs.btrfs (Debian package btrfs-progs)"))
    func interruptedBenchLeavesNothingBehind() throws {
        let dir = makeTempDir("anchor-int-test")
        defer { removeTree(dir) }
        let args = [warpfsBinary, "bench", "--size", "64", "--random-ops", "20000", "--files", "2000", "--runs", "3",
                    "--btrfs", "zstd:1", "--work", dir, "--json", dir + "/b.json", "--svg", dir + "/b.svg"]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        wd_spawn_close_from(&actions, 3)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let cargs = args.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, warpfsBinary, &actions, nil, cargs, environ) == 0)
        // Wait until the btrfs target is mounted, then interrupt.
        var waited = 0
        while !mountinfo().contains(where: { $0.contains(dir) && $0.contains(" btrfs ") }) && waited < 60_000 {
            usleep(20_000); waited += 20
        }
        #expect(waited < 60_000, "the btrfs target never mounted")
        usleep(300_000)
        kill(pid, SIGINT)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 128 + SIGINT, "wait status \(status)")
        expectNothingLeft(dir)
    }

    /// No mount, loop device or temporary directory of a bench under `dir` is left.
    func expectNothingLeft(_ dir: String) {
        #expect(!mountinfo().contains { $0.contains(dir) }, "\(mountinfo().filter { $0.contains(dir) })")
        let loops = runCommand(["/bin/sh", "-c", "PATH=$PATH:/usr/sbin:/sbin losetup -a"]).output
        #expect(!loops.contains(dir), "\(loops)")
        // Only the results and the reusable corpus: no temporary directory, image or partial tar.
        let left = runCommand(["/bin/ls", "-A", dir]).output.split(separator: "\n")
        #expect(left.allSatisfy { !$0.hasPrefix("warpfs-bench-") || ($0.hasPrefix("warpfs-bench-system-") && $0.hasSuffix(".tar")) },
                "left in \(dir): \(left)")
    }

    func mountinfo() -> [String] {
        runCommand(["/bin/cat", "/proc/self/mountinfo"]).output.split(separator: "\n").map(String.init)
    }

    /// The number that follows `key` in `line` (up to a comma, brace or bracket).
    func number(after key: String, in line: String) -> Double? {
        guard let r = line.firstRange(of: key) else { return nil }
        return Double(line[r.upperBound...].prefix { !",}] ".contains($0) })
    }
}
