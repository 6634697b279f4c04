#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
import WarpFSFormat

/// `warpfs compress`, `decompress` and `fsck --repair` run by root over a
/// tree where a less-privileged user can write: nothing the user plants or
/// swaps in (symbolic links, a directory replaced by a link mid-walk, hard
/// links, odd names) makes them touch a file outside the tree, and the
/// files of the tree keep their content, owner and mode.
@Suite(.serialized) struct ConvertSafetyTests {
    /// Under `root` (made reachable for `user`): `tree`, the backing tree
    /// root converts, with a directory `u` the user owns, and `outside`, a
    /// root-owned directory beside it that nothing may touch.
    static func layout(_ root: String, for user: TestUser, outsideMode: mode_t) throws -> (tree: String, outside: String) {
        openPathForOthers(root)
        let tree = root + "/tree", outside = root + "/outside"
        #expect(mkdir(tree, 0o755) == 0 && mkdir(outside, outsideMode) == 0)
        #expect(mkdir(tree + "/u", 0o755) == 0 && chown(tree + "/u", user.uid, user.gid) == 0)
        return (tree, outside)
    }

    /// A symbolic link planted under the name of the old fixed temporary
    /// (`NAME.warpfs-tmp`) pointing at a root-owned file outside the tree.
    @Test func aPlantedTemporaryNameIsNotFollowed() throws {
        let user = try TestUser.ensure()
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        let (tree, outside) = try Self.layout(root, for: user, outsideMode: 0o700)
        let secret = Array("root's file outside the tree\n".utf8)
        try FileIO.write(outside + "/secret", secret, mode: 0o640)
        #expect(chmod(outside + "/secret", 0o640) == 0)
        let before = try FileIO.stat(outside + "/secret")

        var r = Rng(31)
        let victim = r.text(300_000)
        try FileIO.write(tree + "/u/victim", victim)
        #expect(chown(tree + "/u/victim", user.uid, user.gid) == 0)
        let planted = user.shell("ln -s '\(outside)/secret' '\(tree)/u/victim.warpfs-tmp'")
        #expect(planted.status == 0, "\(planted.output)")

        let c = runCommand([warpfsBinary, "compress", tree])
        #expect(isContainer(tree + "/u/victim"), "\(c.output)")
        let d = runCommand([warpfsBinary, "decompress", tree])
        #expect(d.status == 0, "\(d.output)")

        #expect(try FileIO.read(outside + "/secret") == secret, "the file outside the tree was overwritten:\n\(c.output)\n\(d.output)")
        let after = try FileIO.stat(outside + "/secret")
        #expect(after.st_uid == before.st_uid && after.st_gid == before.st_gid && after.st_mode == before.st_mode)
        let v = try FileIO.stat(tree + "/u/victim")
        #expect(v.st_mode & S_IFMT == S_IFREG && v.st_uid == user.uid)
        #expect(try FileIO.read(tree + "/u/victim") == victim)
        // The planted link is left as it was.
        #expect(try FileIO.stat(tree + "/u/victim.warpfs-tmp").st_mode & S_IFMT == S_IFLNK)
    }

    /// The user keeps swapping subdirectories of the tree for symbolic
    /// links to a root-owned directory outside (files of the same names)
    /// while root converts the tree, several times over.
    @Test func aDirectorySwappedForASymlinkDuringTheWalkIsNotFollowed() throws {
        let user = try TestUser.ensure()
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        let (tree, outside) = try Self.layout(root, for: user, outsideMode: 0o755)
        let subdirs = ["sub0", "sub1", "sub2"]
        var r = Rng(32)
        var inTree: [String: [UInt8]] = [:], out: [String: [UInt8]] = [:]
        for i in 0..<60 { out["f" + String(100 + i).dropFirst()] = r.text(20_000 + r.int(20_000)) }
        for (n, data) in out { try FileIO.write(outside + "/" + n, data) }
        for sub in subdirs {
            #expect(mkdir(tree + "/u/" + sub, 0o755) == 0 && chown(tree + "/u/" + sub, user.uid, user.gid) == 0)
            for n in out.keys {
                inTree[sub + "/" + n] = r.text(20_000 + r.int(20_000))
                try FileIO.write(tree + "/u/" + sub + "/" + n, inTree[sub + "/" + n]!)
            }
        }
        let outStat = try Dictionary(uniqueKeysWithValues: out.keys.map { ($0, try FileIO.stat(outside + "/" + $0)) })

        let swappers = SwapLoops(user, in: tree + "/u", subdirectories: subdirs, outside: outside)
        var rounds = 0
        var outputs = ""
        // Compress only: after the first round the tree's files are
        // containers already, so each round is a quick walk that converts
        // whatever plain file it reaches.
        while swappers.running {
            outputs += runCommand([warpfsBinary, "compress", tree]).output
            rounds += 1
        }
        swappers.finish()
        // The swaps were seen.
        #expect(outputs.contains("symbolic link, not followed"), "\(rounds) rounds")

        for (n, want) in out {
            let st = try FileIO.stat(outside + "/" + n)
            #expect(st.st_mode & S_IFMT == S_IFREG && st.st_mode == outStat[n]!.st_mode && st.st_uid == 0 && st.st_ino == outStat[n]!.st_ino,
                    "\(n) outside the tree was replaced")
            #expect(try FileIO.read(outside + "/" + n) == want, "\(n) outside the tree was changed (\(rounds) rounds):\n\(outputs.suffix(2000))")
        }
        let listed = try FileIO.list(outside)
        #expect(listed.count == out.count, "\(listed)")
        // The tree lost nothing: a last round without the swapper gives the files back.
        #expect(runCommand([warpfsBinary, "decompress", tree]).status == 0)
        for (n, want) in inTree { #expect(try FileIO.read(tree + "/u/" + n) == want, "\(n) in the tree") }
    }

    /// `fsck` and `fsck --repair` while the user swaps directories of the
    /// backing tree for links to a directory of damaged containers outside:
    /// the check never reports (so never read) them, the repair never writes them.
    @Test func fsckDoesNotFollowADirectorySwappedForASymlink() throws {
        let user = try TestUser.ensure()
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        let (tree, outside) = try Self.layout(root, for: user, outsideMode: 0o755)
        let subdirs = ["sub0", "sub1", "sub2"]
        var r = Rng(33)
        let names = (0..<30).map { "c" + String(100 + $0).dropFirst() }
        for n in names { try FileIO.write(outside + "/" + n, r.text(100_000)) }
        for sub in subdirs {
            #expect(mkdir(tree + "/u/" + sub, 0o755) == 0 && chown(tree + "/u/" + sub, user.uid, user.gid) == 0)
            for n in names { try FileIO.write(tree + "/u/" + sub + "/" + n, r.text(100_000)) }
        }
        #expect(runCommand([warpfsBinary, "compress", tree, outside]).status == 0)
        // Outside: header copy B damaged in every container (what --repair rewrites).
        var outBytes: [String: [UInt8]] = [:]
        for n in try FileIO.list(outside) {
            try damageHeaderCopyB(outside + "/" + n)
            outBytes[n] = try FileIO.read(outside + "/" + n)
        }
        let clean = runCommand([warpfsBinary, "fsck", tree, "--progress", "never"])
        #expect(clean.status == 0, "\(clean.output)")

        let swappers = SwapLoops(user, in: tree + "/u", subdirectories: subdirs, outside: outside)
        var reports = "", rounds = 0
        while swappers.running {
            let repair = rounds % 2 == 1
            reports += runCommand([warpfsBinary, "fsck", tree, "--progress", "never"] + (repair ? ["--repair"] : [])).output
            rounds += 1
        }
        swappers.finish()
        // The swaps were seen (files under a swapped-out name could not be checked).
        #expect(reports.contains("could not be checked"), "\(rounds) rounds")
        #expect(!reports.contains("header copy B is damaged"), "fsck read containers outside the tree (\(rounds) rounds):\n\(reports.suffix(3000))")
        for (n, want) in outBytes {
            #expect(try FileIO.read(outside + "/" + n) == want, "\(n) outside the tree was changed")
        }
        let after = runCommand([warpfsBinary, "fsck", tree, "--progress", "never"])
        #expect(after.status == 0, "\(after.output)")
    }

    /// A container of the backing tree that is also linked from outside it
    /// (a hard link the user made) is checked but not repaired: the repair
    /// would change the file outside. Two links both inside are repaired.
    @Test func fsckDoesNotRepairAFileLinkedFromOutsideTheTree() throws {
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        mkdir(root + "/tree", 0o755)
        var r = Rng(39)
        try FileIO.write(root + "/outside", r.text(100_000))
        try FileIO.write(root + "/tree/inside", r.text(100_000))
        #expect(runCommand([warpfsBinary, "compress", root + "/outside", root + "/tree/inside"]).status == 0)
        for f in ["/outside", "/tree/inside"] { try damageHeaderCopyB(root + f) }
        #expect(link(root + "/outside", root + "/tree/linked") == 0)
        #expect(link(root + "/tree/inside", root + "/tree/inside2") == 0)
        let before = try FileIO.read(root + "/outside")
        let fix = runCommand([warpfsBinary, "fsck", root + "/tree", "--repair", "--progress", "never"])
        #expect(fix.status == 4, "\(fix.output)")
        #expect(fix.output.contains("linked: header copy B is damaged") && fix.output.contains("not repaired: the file has 2 hard links"),
                "\(fix.output)")
        #expect(fix.output.contains("inside: header copy B is damaged") && fix.output.contains("repaired: copy B rewritten"), "\(fix.output)")
        #expect(try FileIO.read(root + "/outside") == before)
        let again = runCommand([warpfsBinary, "fsck", root + "/tree", "--progress", "never"])
        #expect(again.output.contains("1 problem found"), "\(again.output)")
    }

    /// A command-line path that is a symbolic link is followed (the caller
    /// named it): to a file, the file is converted and the link stays a
    /// link; to a directory, that directory is walked. Links met inside the
    /// walk are not followed.
    @Test func aSymlinkNamedOnTheCommandLineIsFollowedOnce() throws {
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        mkdir(root + "/data", 0o755)
        mkdir(root + "/other", 0o755)
        var r = Rng(34)
        let a = r.text(100_000), b = r.text(100_000), o = r.text(100_000)
        try FileIO.write(root + "/data/a", a)
        try FileIO.write(root + "/other/b", b)
        try FileIO.write(root + "/other/o", o)
        #expect(symlink(root + "/data/a", root + "/link-a") == 0)
        #expect(symlink(root + "/other", root + "/link-dir") == 0)
        #expect(symlink(root + "/data/a", root + "/other/inner-link") == 0)   // met inside the walk

        let c = runCommand([warpfsBinary, "compress", root + "/link-a"])
        #expect(c.status == 0 && isContainer(root + "/data/a"), "\(c.output)")
        #expect(try FileIO.stat(root + "/link-a").st_mode & S_IFMT == S_IFLNK)

        let d = runCommand([warpfsBinary, "decompress", root + "/data/a"])
        #expect(d.status == 0, "\(d.output)")
        #expect(try FileIO.read(root + "/data/a") == a)
        let walk = runCommand([warpfsBinary, "compress", root + "/link-dir"])
        #expect(walk.status == 0, "\(walk.output)")
        #expect(isContainer(root + "/other/b") && isContainer(root + "/other/o"), "\(walk.output)")
        #expect(try FileIO.read(root + "/data/a") == a, "a link inside the walk was followed")
        #expect(try FileIO.stat(root + "/link-dir").st_mode & S_IFMT == S_IFLNK)
        #expect(try FileIO.stat(root + "/other/inner-link").st_mode & S_IFMT == S_IFLNK)
        #expect(walk.output.contains("inner-link") && walk.output.contains("symbolic link"), "\(walk.output)")

        // fsck: its BACKING may be a link too (it is followed); links inside are not.
        let check = runCommand([warpfsBinary, "fsck", root + "/link-dir", "--progress", "never"])
        #expect(check.status == 0 && check.output.contains("2 files checked, 0 plain files skipped"), "\(check.output)")
    }

    /// Owner, mode with set-user-ID and set-group-ID bits, times, extended
    /// attributes and file capabilities: as before after compress and after
    /// decompress (chown would clear set-ID bits and capabilities, so they
    /// are set after it).
    @Test func ownerModeAndSetIDBitsSurviveBothWays() throws {
        let user = try TestUser.ensure()
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        var r = Rng(35)
        var want: [String: [UInt8]] = [:]
        for (n, mode) in [("suid", mode_t(0o4755)), ("sgid", mode_t(0o2755)), ("both", mode_t(0o6750)), ("plain", mode_t(0o640))] {
            want[n] = r.text(70_000)
            try FileIO.write(root + "/" + n, want[n]!)
            #expect(chown(root + "/" + n, user.uid, user.gid) == 0)
            #expect(chmod(root + "/" + n, mode) == 0)
        }
        // An extended attribute, and a file capability (chown clears it: it is set after).
        #expect(setxattr(root + "/suid", "user.note", "kept", 4, 0) == 0)
        let setcap = FileIO.exists("/usr/sbin/setcap")
        if setcap { #expect(runCommand(["/usr/sbin/setcap", "cap_net_raw+ep", root + "/both"]).status == 0) }
        var mtimes: [String: timespec] = [:]
        for n in want.keys { mtimes[n] = try FileIO.stat(root + "/" + n).st_mtim }
        let wanted = try Dictionary(uniqueKeysWithValues: want.keys.map { ($0, try FileIO.stat(root + "/" + $0).st_mode) })
        for command in ["compress", "decompress"] {
            let c = runCommand([warpfsBinary, command, root])
            #expect(c.status == 0, "\(c.output)")
            for n in want.keys {
                let st = try FileIO.stat(root + "/" + n)
                #expect(st.st_uid == user.uid && st.st_gid == user.gid, "\(command): \(n) owner \(st.st_uid):\(st.st_gid)")
                #expect(st.st_mode == wanted[n]!, "\(command): \(n) mode \(String(st.st_mode, radix: 8)), want \(String(wanted[n]!, radix: 8))")
                #expect(st.st_mtim.tv_sec == mtimes[n]!.tv_sec && st.st_mtim.tv_nsec == mtimes[n]!.tv_nsec)
                #expect(isContainer(root + "/" + n) == (command == "compress"))
            }
            var note = [UInt8](repeating: 0, count: 16)
            #expect(getxattr(root + "/suid", "user.note", &note, note.count) == 4 && note.prefix(4).elementsEqual(Array("kept".utf8)))
            if setcap {
                let cap = runCommand(["/usr/sbin/getcap", root + "/both"])
                #expect(cap.output.contains("cap_net_raw=ep"), "\(command): \(cap.output)")
            }
        }
        for (n, data) in want { #expect(try FileIO.read(root + "/" + n) == data) }
    }

    /// A file with more than one link is not converted (that would give this
    /// name its own copy and break the link): an error naming it, exit 1,
    /// both names still the one inode. Already in the wanted form, it is counted so.
    @Test func aHardLinkedFileIsNotConverted() throws {
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        mkdir(root + "/tree", 0o755)
        var r = Rng(36)
        let data = r.text(100_000)
        try FileIO.write(root + "/outside", data)
        #expect(link(root + "/outside", root + "/tree/linked") == 0)
        try FileIO.write(root + "/tree/single", data)
        let c = runCommand([warpfsBinary, "compress", root + "/tree"])
        #expect(c.status == 1 && c.output.contains("tree/linked") && c.output.contains("hard links"), "\(c.output)")
        #expect(isContainer(root + "/tree/single"))
        let a = try FileIO.stat(root + "/outside"), b = try FileIO.stat(root + "/tree/linked")
        #expect(a.st_ino == b.st_ino && a.st_nlink == 2)
        #expect(try FileIO.read(root + "/outside") == data)
        // A linked file already in the wanted form is no failure.
        let d = runCommand([warpfsBinary, "decompress", root + "/tree"])
        #expect(d.status == 0 && d.output.contains("decompressed 1 file(s), 1 already plain, 0 skipped, 0 failed"), "\(d.output)")
    }

    /// Names that are not UTF-8 are converted (the walk keeps the bytes),
    /// and a name with a newline is shown escaped in messages, so one
    /// message stays one line.
    @Test func oddNamesAreConvertedAndShownOnOneLine() throws {
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        let dirfd = open(root, O_RDONLY | O_DIRECTORY)
        defer { close(dirfd) }
        var r = Rng(37)
        let data = r.text(50_000)
        let latin1: [UInt8] = [0x63, 0x61, 0x66, 0xE9, 0]   // "caf\xE9"
        try writeAt(dirfd, latin1, data)
        let c = runCommand([warpfsBinary, "compress", root])
        #expect(c.status == 0, "\(c.output)")
        #expect(try readAt(dirfd, latin1).prefix(8).elementsEqual(Array("WARPFS\r\n".utf8)), "\(c.output)")
        // A damaged container named with a newline: decompress must fail on it.
        var bad = Array("WARPFS\r\n".utf8) + [UInt8](repeating: 0xAB, count: 2000)
        bad[20] = 1
        try FileIO.write(root + "/evil\nwarpfs: forged line", bad)
        let d = runCommand([warpfsBinary, "decompress", root])
        #expect(d.status == 1, "\(d.output)")
        #expect(try readAt(dirfd, latin1) == data)
        #expect(d.output.contains("evil\\nwarpfs: forged line"), "\(d.output)")
        #expect(!d.output.contains("\nwarpfs: forged line"), "\(d.output)")
        #expect(try FileIO.read(root + "/evil\nwarpfs: forged line") == bad)
    }

    /// A tree nested deeper than a path can be long (PATH_MAX) is walked
    /// by descriptors, to the bottom.
    @Test func aTreeDeeperThanPathMaxIsConverted() throws {
        let root = makeTempDir("warpfs-convert")
        defer { removeTree(root) }
        var fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        for _ in 0..<2200 {
            #expect(mkdirat(fd, "d", 0o755) == 0)
            let next = openat(fd, "d", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            close(fd)
            fd = next
        }
        var r = Rng(38)
        let data = r.text(50_000)
        try writeAt(fd, Array("deep".utf8) + [0], data)
        let c = runCommand([warpfsBinary, "compress", root])
        #expect(c.status == 0, "\(c.output.suffix(500))")
        #expect(try readAt(fd, Array("deep".utf8) + [0]).prefix(8).elementsEqual(Array("WARPFS\r\n".utf8)))
        let d = runCommand([warpfsBinary, "decompress", root])
        #expect(d.status == 0, "\(d.output.suffix(500))")
        #expect(try readAt(fd, Array("deep".utf8) + [0]) == data)
        let check = runCommand([warpfsBinary, "fsck", root, "--progress", "never"])
        #expect(check.status == 0 && check.output.contains("1 plain file skipped"), "\(check.output.suffix(500))")
        close(fd)
    }

    // MARK: Helpers

    /// Damages header copy B of the container at `path`: a byte inside it,
    /// where the container's format version puts the copy (after a
    /// conversion only copy A is written: the damage makes copy B's place
    /// neither a valid copy nor unwritten).
    private func damageHeaderCopyB(_ path: String) throws {
        let raw = try readBytes(path, HeaderCopies.span, at: 0)
        let copies = raw.withUnsafeBytes { HeaderCopies($0) }
        guard copies.newest != nil else { throw Errno(EINVAL, "\(path): not a container") }
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw Errno(errno, path) }
        defer { close(fd) }
        try FileIO.pwrite(fd, [0xFF], copies.copyOffsets[1] + 40)
    }

    private func isContainer(_ path: String) -> Bool {
        ((try? readBytes(path, 8, at: 0)) ?? []).elementsEqual(Array("WARPFS\r\n".utf8))
    }

    /// Writes `data` to the NUL-terminated name `name` in `dirfd` (names that are not UTF-8).
    private func writeAt(_ dirfd: Int32, _ name: [UInt8], _ data: [UInt8]) throws {
        let fd = name.withUnsafeBufferPointer {
            $0.withMemoryRebound(to: CChar.self) { openat(dirfd, $0.baseAddress!, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        }
        guard fd >= 0 else { throw Errno(errno, "create") }
        defer { close(fd) }
        try FileIO.pwrite(fd, data, 0)
    }

    private func readAt(_ dirfd: Int32, _ name: [UInt8]) throws -> [UInt8] {
        let fd = name.withUnsafeBufferPointer {
            $0.withMemoryRebound(to: CChar.self) { openat(dirfd, $0.baseAddress!, O_RDONLY | O_CLOEXEC) }
        }
        guard fd >= 0 else { throw Errno(errno, "open") }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        return try FileIO.pread(fd, Int(st.st_size), 0)
    }
}

/// One loop per subdirectory, run as a test user for 6 seconds: the
/// subdirectory is renamed away and a symbolic link to `outside` put in its
/// place for 30 ms, then the directory put back for 30 ms; the loops start
/// 10 ms apart.
final class SwapLoops: Sendable {
    let dir: String
    let subdirectories: [String]
    private let threads: [pthread_t]
    private let left: Counter

    final class Counter: Sendable {
        let value: Mutex<Int>
        init(_ n: Int) { value = Mutex(n) }
    }

    init(_ user: TestUser, in dir: String, subdirectories: [String], outside: String) {
        self.dir = dir
        self.subdirectories = subdirectories
        let left = Counter(subdirectories.count)
        self.left = left
        threads = subdirectories.enumerated().map { i, sub in
            startThread {
                let r = user.shell("""
                    cd '\(dir)' || exit 1
                    sleep 0.0\(i)
                    end=$(( $(date +%s) + 6 ))
                    while [ "$(date +%s)" -lt "$end" ]; do
                        mv \(sub) \(sub).x && ln -s '\(outside)' \(sub) && sleep 0.03
                        rm -f \(sub); mv \(sub).x \(sub); sleep 0.03
                    done
                    """)
                if r.status != 0 { print("swapper for \(sub): \(r)") }
                left.value.withLock { $0 -= 1 }
            }
        }
        // Commands the test runs meanwhile must not start while a loop is
        // being spawned: the loop's shell would inherit their output pipe
        // and keep it open (runCommand's pipe is not close-on-exec).
        usleep(300_000)
    }

    var running: Bool { left.value.withLock { $0 > 0 } }

    /// Waits for the loops and puts back whatever one left half-done.
    func finish() {
        for t in threads { pthread_join(t, nil) }
        for sub in subdirectories where FileIO.exists(dir + "/" + sub + ".x") {
            unlink(dir + "/" + sub)
            rename(dir + "/" + sub + ".x", dir + "/" + sub)
        }
    }
}
