#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
import WarpFSCore
import WarpFSFormat

/// Packed small files (docs/FORMAT.md, "Packed small files") on real
/// mounts: what is packed and when, reading them back, the changes that
/// unpack them, removal freeing their records, and SIGKILL of the file
/// system while packing and unpacking.
@Suite struct PackingTests {
    /// Small files of every kind the packer meets: text, incompressible
    /// bytes (stored raw), zeros, empty, and one too large to pack.
    static func smallFiles(_ n: Int, seed: UInt64 = 1) -> [(name: String, data: [UInt8])] {
        var r = Rng(seed)
        var out: [(String, [UInt8])] = []
        for i in 0..<n {
            let data: [UInt8]
            switch i % 6 {
            case 0: data = r.text(50 + r.int(6000))
            case 1: data = r.bytes(100 + r.int(3500))           // raw, 100..3599 bytes
            case 2: data = [UInt8](repeating: 0, count: 1 + r.int(8192))
            case 3: data = []
            case 4: data = r.text(20 + r.int(300))
            default: data = r.text(60_000)                       // one full block of text
            }
            out.append(("f\(i)", data))
        }
        return out
    }

    /// Whether the backing file at `path` is packed: empty, with a reference.
    static func isPacked(_ path: String) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_size == 0 else { return false }
        var buf = [UInt8](repeating: 0, count: 64)
        return getxattr(path, PackReference.attributeName, &buf, buf.count) == PackReference.size
    }

    /// Bytes the tree at `path` takes on disk (`du -s -B1`).
    static func allocated(_ path: String) -> Int {
        let r = runCommand(["/usr/bin/du", "-s", "-B1", path])
        return Int(r.output.split(separator: "\t").first ?? "") ?? -1
    }

    static func packPages(_ m: TestMount) -> Int { allocated(m.backing + "/" + PackStore.directoryName + "/pages") }

    @Test func closedSmallFilesArePackedAndReadBackAfterARemount() throws {
        let files = PackingTests.smallFiles(120)
        let m = try TestMount(options: "pack_delay=0")
        defer { m.close() }
        let plain = try TestMount(options: "nopack")
        defer { plain.close() }
        for (name, data) in files {
            try FileIO.write(m.path(name), data)
            try FileIO.write(plain.path(name), data)
        }
        m.unmount()
        plain.unmount()
        var packed = 0
        for (name, data) in files {
            let isPacked = PackingTests.isPacked(m.backingPath(name))
            if isPacked { packed += 1 }
            // Text and raw payloads up to a pack page, empty files and zeros are packed; a full block of text is not.
            if name.hasSuffix("5") == false, data.count <= 3000 || data.allSatisfy({ $0 == 0 }) {
                #expect(isPacked, "\(name) (\(data.count) bytes) is not packed")
            }
            #expect(!PackingTests.isPacked(plain.backingPath(name)), "\(name) packed under nopack")
        }
        let withPack = PackingTests.allocated(m.backing), without = PackingTests.allocated(plain.backing)
        print("packing: \(packed) of \(files.count) files packed; backing \(withPack) bytes against \(without) without packing")
        #expect(packed >= files.count / 2)
        #expect(withPack * 10 < without * 8, "packing saved too little: \(withPack) against \(without) bytes")
        try m.start()
        var shares = 0
        for (name, data) in files {
            #expect(try FileIO.read(m.path(name)) == data, "\(name) reads back wrong")
            let st = try FileIO.stat(m.path(name))
            #expect(st.st_size == data.count)
            if PackingTests.isPacked(m.backingPath(name)) {
                // A packed file's blocks are its share of the pack: its record.
                if data.contains(where: { $0 != 0 }) { #expect(st.st_blocks > 0, "\(name): a packed file with data shows no blocks") }
                shares += Int(st.st_blocks) * 512
            }
        }
        let pages = PackingTests.packPages(m)
        print("packing: shares \(shares), pack \(pages)")
        #expect(shares <= pages + 512 * packed && pages <= shares + 8 * 4096, "shares \(shares) against the pack's \(pages) bytes")
    }

    @Test func theReferenceNeverLeavesTheInodesOwnAttributeSpace() throws {
        // ext4 keeps 96 bytes of extended attributes in a 256-byte inode: the
        // reference must fit there, or a packed file would take a 4 KiB
        // attribute block and save nothing.
        try withMount(options: "pack_delay=0") { m in
            for i in 0..<20 { try FileIO.write(m.path("s\(i)"), Array("small file \(i)\n".utf8)) }
            m.unmount()
            // Read, stat'ed and read again (reads set access times, which
            // the mount records beside the change time it shows).
            try m.start()
            for i in 0..<20 {
                #expect(try FileIO.read(m.path("s\(i)")) == Array("small file \(i)\n".utf8))
                #expect(try FileIO.stat(m.path("s\(i)")).st_blocks == 1)
            }
            m.unmount()
            var st = stat()
            for i in 0..<20 {
                #expect(PackingTests.isPacked(m.backingPath("s\(i)")))
                #expect(lstat(m.backingPath("s\(i)"), &st) == 0 && st.st_blocks == 0, "s\(i) takes \(st.st_blocks) blocks")
            }
            try m.start()
        }
    }

    @Test func aChangedPackedFileIsUnpackedAndPackedAgain() throws {
        try withMount(options: "pack_delay=0") { m in
            let files = (0..<40).map { ("p\($0)", Array("version 0 of file \($0)\n".utf8)) }
            for (n, d) in files { try FileIO.write(m.path(n), d) }
            m.unmount()
            #expect(files.allSatisfy { PackingTests.isPacked(m.backingPath($0.0)) })
            let first = PackingTests.packPages(m)
            try m.start()
            var expected: [String: [UInt8]] = Dictionary(uniqueKeysWithValues: files)
            for round in 1...3 {
                for (i, (n, _)) in files.enumerated() {
                    var d = expected[n]!
                    switch i % 4 {
                    case 0:      // overwrite in place
                        let fd = open(m.path(n), O_WRONLY)
                        try FileIO.pwrite(fd, Array("V\(round)".utf8), 0)
                        #expect(fsync(fd) == 0)
                        close(fd)
                        d.replaceSubrange(0..<2, with: Array("V\(round)".utf8))
                    case 1:      // append
                        let fd = open(m.path(n), O_WRONLY | O_APPEND)
                        try FileIO.pwrite(fd, Array("+\(round)".utf8), 0)
                        close(fd)
                        d += Array("+\(round)".utf8)
                    case 2:      // truncate shorter
                        #expect(truncate(m.path(n), off_t(d.count - 1)) == 0)
                        d.removeLast()
                    default:     // punch a hole over the start
                        let fd = open(m.path(n), O_RDWR)
                        #expect(wd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 3) == 0)
                        close(fd)
                        for k in 0..<3 { d[k] = 0 }
                    }
                    expected[n] = d
                    #expect(try FileIO.read(m.path(n)) == d, "round \(round): \(n) reads wrong after the change")
                }
                m.unmount()
                for (n, d) in expected {
                    #expect(PackingTests.isPacked(m.backingPath(n)), "round \(round): \(n) not packed again")
                    _ = d
                }
                try m.start()
                for (n, d) in expected { #expect(try FileIO.read(m.path(n)) == d, "round \(round): \(n) reads wrong after the remount") }
            }
            // Freed records give their space back: three rewrites leave the pack as big as one copy (within a page).
            let last = PackingTests.packPages(m)
            print("packing: pack \(first) bytes after the first copy, \(last) after three rounds of changes")
            #expect(last <= first + 4096, "the pack grew from \(first) to \(last) bytes")
        }
    }

    @Test func removedPackedFilesFreeTheirRecordsAndLinksKeepThem() throws {
        try withMount(options: "pack_delay=0") { m in
            var r = Rng(7)
            let files = (0..<200).map { ("r\($0)", r.text(200 + r.int(1500))) }
            for (n, d) in files { try FileIO.write(m.path(n), d) }
            try FileIO.write(m.path("linked"), Array("two names\n".utf8))
            try FileIO.write(m.path("held"), Array("unlinked while open\n".utf8))
            m.unmount()
            let full = PackingTests.packPages(m)
            try m.start()
            // A second name, then the first removed: the data stays.
            #expect(link(m.path("linked"), m.path("linked2")) == 0)
            #expect(unlink(m.path("linked")) == 0)
            // Unlinked while open: readable through the descriptor until it closes.
            let fd = open(m.path("held"), O_RDONLY)
            #expect(fd >= 0)
            #expect(unlink(m.path("held")) == 0)
            #expect(try FileIO.pread(fd, 100, 0) == Array("unlinked while open\n".utf8))
            close(fd)
            // Half removed, a quarter renamed over the others.
            for i in stride(from: 0, to: 100, by: 1) { #expect(unlink(m.path("r\(i)")) == 0) }
            for i in stride(from: 100, to: 150, by: 1) { #expect(rename(m.path("r\(i)"), m.path("r\(i + 50)")) == 0) }
            m.unmount()
            let after = PackingTests.packPages(m)
            print("packing: pack \(full) bytes with 202 files, \(after) after removing 152")
            #expect(after * 2 < full, "removed files' records were not freed: \(full) -> \(after) bytes")
            try m.start()
            #expect(try FileIO.read(m.path("linked2")) == Array("two names\n".utf8))
            for i in 150..<200 { #expect(try FileIO.read(m.path("r\(i)")) == files[i - 50].1, "r\(i) does not hold what was renamed over it") }
            #expect(!FileIO.exists(m.path("held")))
        }
    }

    @Test func thePackIsNotANameOfTheMount() throws {
        try withMount(options: "pack_delay=0") { m in
            try FileIO.write(m.path("a"), Array("a\n".utf8))
            m.unmount()
            #expect(FileIO.exists(m.backingPath(PackStore.directoryName)))
            try m.start()
            #expect(try FileIO.list(m.mountpoint) == ["a"])
            #expect(!FileIO.exists(m.path(PackStore.directoryName)))
            #expect(mkdir(m.path(PackStore.directoryName), 0o755) == -1 && errno == EPERM)
            #expect(open(m.path(PackStore.directoryName), O_WRONLY | O_CREAT | O_CLOEXEC, 0o644) == -1 && errno == EPERM)
            #expect(rename(m.path("a"), m.path(PackStore.directoryName)) == -1 && errno == EPERM)
            #expect(mkdir(m.path("sub"), 0o755) == 0)
            #expect(mkdir(m.path("sub/" + PackStore.directoryName), 0o755) == -1 && errno == EPERM)
            // The reference is the mount's: not listed, read, set or removed through it.
            var buf = [UInt8](repeating: 0, count: 256)
            #expect(getxattr(m.path("a"), PackReference.attributeName, &buf, buf.count) == -1 && errno == ENODATA)
            let listed = listxattr(m.path("a"), &buf, buf.count)
            #expect(listed >= 0 && !String(decoding: buf[0..<max(listed, 0)], as: UTF8.self).contains("warpfs"))
            let forged = PackReference(blockSize: 65536, fileEncoding: .deflate, level: 1, payloadEncoding: .raw, payloadLength: 2,
                                       logicalSize: 2, payloadChecksum: 0, packID: 1, page: 0, offset: 272, key: 1).encoded()
            #expect(setxattr(m.path("a"), PackReference.attributeName, forged, forged.count, 0) == -1 && errno == EPERM)
            #expect(removexattr(m.path("a"), PackReference.attributeName) == -1 && errno == EPERM)
            #expect(PackingTests.isPacked(m.backingPath("a")))
            #expect(try FileIO.read(m.path("a")) == Array("a\n".utf8))
        }
    }

    @Test func seekingInAPackedFileFindsWhatAContainerShows() throws {
        // The same files packed and in containers of their own answer SEEK_DATA and SEEK_HOLE alike.
        let files: [(String, [UInt8])] = [("text", Array("data\n".utf8)), ("zeros", [UInt8](repeating: 0, count: 5000)), ("empty", [])]
        var answers: [[String]] = []
        for options in ["pack_delay=0", "nopack"] {
            try withMount(options: options) { m in
                for (n, d) in files { try FileIO.write(m.path(n), d) }
                try m.remount()
                var out: [String] = []
                for (n, _) in files {
                    let fd = open(m.path(n), O_RDONLY)
                    defer { close(fd) }
                    for whence in [Int32(WD_SEEK_DATA), Int32(WD_SEEK_HOLE)] {
                        let r = lseek(fd, 0, whence)
                        out.append("\(n) \(whence): \(r < 0 ? "errno \(errno)" : "\(r)")")
                    }
                }
                if options == "pack_delay=0" { #expect(files.allSatisfy { PackingTests.isPacked(m.backingPath($0.0)) }) }
                answers.append(out)
            }
        }
        #expect(answers[0] == answers[1])
    }

    /// SIGKILL of the file system while it packs a tree of fsynced small
    /// files, at moments spread over the packing: after a remount every
    /// file holds its data, whether it was packed, half-packed or not.
    @Test func sigkillWhilePackingLosesNothing() throws {
        let files = PackingTests.smallFiles(300, seed: 3)
        var outcomes: [Int] = []
        for round in 0..<4 {
            let m = try TestMount(options: "pack_delay=0")
            defer { m.close() }
            for (n, d) in files {
                let fd = open(m.path(n), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                try FileIO.pwrite(fd, d, 0)
                #expect(fsync(fd) == 0)
                close(fd)
            }
            // The maintenance thread packs within 200 ms of the last close.
            usleep(useconds_t([0, 20_000, 80_000, 200_000][round]))
            kill(m.pid, SIGKILL)
            m.unmount()
            outcomes.append(files.filter { PackingTests.isPacked(m.backingPath($0.name)) }.count)
            try m.start()
            for (n, d) in files {
                let got: [UInt8]
                do { got = try FileIO.read(m.path(n)) } catch { Issue.record("round \(round): \(n): \(error); log: \(m.log)"); continue }
                #expect(got == d, "round \(round): \(n) lost its data (\(got.count) bytes, wrote \(d.count))")
            }
        }
        print("packing crash test: files packed when killed: \(outcomes)")
    }

    /// SIGKILL while packed files are rewritten and fsynced (each change
    /// unpacks one): every file holds its fsynced version, or the one
    /// written after it.
    @Test func sigkillWhileUnpackingLosesNothingFsynced() throws {
        let m = try TestMount(options: "pack_delay=0")
        defer { m.close() }
        let names = (0..<150).map { "u\($0)" }
        let content: @Sendable (String, Int) -> [UInt8] = { n, v in Array("\(n) version \(v)\n".utf8) + [UInt8](repeating: UInt8(v), count: 40) }
        for n in names { try FileIO.write(m.path(n), content(n, 0)) }
        m.unmount()
        #expect(names.allSatisfy { PackingTests.isPacked(m.backingPath($0)) })
        for round in 1...3 {
            try m.start()
            let done = Mutex<Int>(0)
            let mountpoint = m.mountpoint, pid = m.pid
            threads(2) { t in
                if t == 1 {
                    usleep(useconds_t(20_000 + 40_000 * round))
                    kill(pid, SIGKILL)
                    return
                }
                for (i, n) in names.enumerated() {
                    let fd = open(mountpoint + "/" + n, O_WRONLY | O_TRUNC)
                    if fd < 0 { return }
                    let d = content(n, round)
                    let ok = d.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == d.count && fsync(fd) == 0
                    close(fd)
                    if !ok { return }
                    done.withLock { $0 = i + 1 }
                }
            }
            m.unmount()
            try m.start()
            let fsynced = done.withLock { $0 }
            for (i, n) in names.enumerated() {
                let got = try FileIO.read(m.path(n))
                if i < fsynced {
                    #expect(got == content(n, round), "round \(round): \(n) lost its fsynced version")
                } else {
                    // Not fsynced: the old version, the new one, or empty (O_TRUNC reached the file system).
                    #expect(got == content(n, round - 1) || got == content(n, round) || got.isEmpty,
                            "round \(round): \(n) holds neither version (\(got.count) bytes)")
                }
            }
            print("packing crash test: round \(round): \(fsynced) of \(names.count) rewrites fsynced before the kill")
            // Settle the files to the version this round (the next round compares against it).
            for n in names { try FileIO.write(m.path(n), content(n, round)) }
            m.unmount()
        }
        try m.start()
    }

    /// SIGKILL while packed files are removed (each removal frees a record):
    /// every file not removed reads intact, and what a crash between a
    /// removal and the freeing of its record leaves is an orphan that
    /// `warpfs fsck --repair` finds and frees, after which fsck is clean.
    @Test func sigkillWhileRemovingPackedFilesLeavesOnlyOrphansFsckFrees() throws {
        let files = PackingTests.smallFiles(240, seed: 11).filter { !$0.data.isEmpty }
        let m = try TestMount(options: "pack_delay=0")
        defer { m.close() }
        for (n, d) in files { try FileIO.write(m.path(n), d) }
        m.unmount()
        var left = files
        for round in 0..<3 {
            try m.start()
            let names = left.map(\.name)
            let removed = Mutex<Int>(0)
            let mountpoint = m.mountpoint, pid = m.pid
            threads(2) { t in
                if t == 1 {
                    usleep(useconds_t([12_000, 20_000, 30_000][round]))
                    kill(pid, SIGKILL)
                    return
                }
                for (i, n) in names.enumerated() {
                    if unlink(mountpoint + "/" + n) != 0 { return }
                    removed.withLock { $0 = i + 1 }
                }
            }
            m.unmount()
            let gone = removed.withLock { $0 }
            let fsck = runCommand([warpfsBinary, "fsck", m.backing, "--repair", "--progress", "never"])
            #expect(fsck.status == 0 || fsck.status == 1, "round \(round): fsck --repair: \(fsck.output)")
            let again = runCommand([warpfsBinary, "fsck", m.backing, "--progress", "never"])
            #expect(again.status == 0, "round \(round): fsck after the repair: \(again.output)")
            print("packing crash test: removal round \(round): \(gone) of \(names.count) removed before the kill; fsck status \(fsck.status)")
            try m.start()
            for (i, (n, d)) in left.enumerated() {
                if i < gone { #expect(!FileIO.exists(m.path(n)), "round \(round): \(n) is back"); continue }
                guard FileIO.exists(m.path(n)) else {
                    #expect(i == gone, "round \(round): \(n) is gone but was not removed")
                    continue
                }
                #expect(try FileIO.read(m.path(n)) == d, "round \(round): \(n) lost its data")
            }
            left = left.enumerated().filter { $0.offset >= gone && FileIO.exists(m.path($0.element.name)) }.map(\.element)
            m.unmount()
        }
        try m.start()
    }

    /// Files the kernel forgets (dropped caches) and opens again while the
    /// packer packs them: each open goes through a new inode, and the
    /// packing lock on the backing file keeps the two apart; every fsynced
    /// rewrite reads back after a remount.
    @Test func filesReopenedThroughANewInodeWhileBeingPackedKeepTheirWrites() throws {
        let m = try TestMount(options: "pack_delay=0")
        defer { m.close() }
        let names = (0..<200).map { "n\($0)" }
        for round in 0..<3 {
            for n in names { try FileIO.write(m.path(n), Array("\(n) round \(round) first\n".utf8)) }
            // The kernel forgets the closed files' inodes (FORGET), while the packer works on them.
            if let f = fopen("/proc/sys/vm/drop_caches", "w") { fputs("2\n", f); fclose(f) }
            for n in names {
                let fd = open(m.path(n), O_WRONLY | O_TRUNC | O_CLOEXEC)
                #expect(fd >= 0)
                let d = Array("\(n) round \(round) second\n".utf8)
                #expect(d.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == d.count && fsync(fd) == 0)
                close(fd)
            }
            try m.remount()
            for n in names { #expect(try FileIO.read(m.path(n)) == Array("\(n) round \(round) second\n".utf8), "round \(round): \(n)") }
        }
    }
}
