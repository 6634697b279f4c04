#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// Extended attributes as ext4 has them: on symlinks, at the size limits,
/// and where the backing file system runs out of room. The backing file
/// system (here, not through the mount) is the oracle.
@Suite(.serialized) struct XattrTests {
    /// lgetxattr as bytes, or the errno.
    static func get(_ path: String, _ name: String) -> Result<[UInt8], Errno> {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = lgetxattr(path, name, &buf, buf.count)
        return n < 0 ? .failure(Errno(errno, "lgetxattr \(path) \(name)")) : .success(Array(buf[0..<n]))
    }

    /// The names llistxattr gives, sorted.
    static func list(_ path: String) -> [String] {
        let size = llistxattr(path, nil, 0)
        guard size > 0 else { return [] }
        var buf = [CChar](repeating: 0, count: size)
        let n = llistxattr(path, &buf, size)
        guard n > 0 else { return [] }
        return buf[0..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }.sorted()
    }

    /// The names of a backing object that the mount shows: all but the
    /// mount's own records (`trusted.warpfs.*`, e.g. the change time).
    static func listShown(_ backingPath: String) -> [String] {
        list(backingPath).filter { !$0.hasPrefix("trusted.warpfs.") }
    }

    /// lsetxattr's errno (0 on success).
    static func set(_ path: String, _ name: String, _ value: [UInt8], flags: Int32 = 0) -> Int32 {
        lsetxattr(path, name, value, value.count, flags) == 0 ? 0 : errno
    }

    /// `trusted.*` (as root) and `security.*` attributes on a symlink are set,
    /// read, listed and removed on the symlink itself (the backing symlink
    /// carries them, its target does not); `user.*` is refused with EPERM as
    /// on ext4.
    @Test func attributesOnSymlinks() throws {
        try withMount { m in
            try FileIO.write(m.path("target"), Array("t".utf8))
            #expect(symlink("target", m.path("link")) == 0)
            #expect(symlink("dangling", m.path("dangling")) == 0)
            #expect(symlink("target", m.backingPath("oracle")) == 0)
            for link in ["link", "dangling"] {
                let p = m.path(link)
                for (name, value) in [("trusted.x", "tv"), ("security.x", "sv")] {
                    #expect(Self.set(p, name, Array(value.utf8)) == 0, "set \(name) on \(link)")
                    #expect(Self.get(p, name) == .success(Array(value.utf8)), "get \(name) on \(link)")
                    #expect(Self.get(m.backingPath(link), name) == .success(Array(value.utf8)), "the backing symlink carries \(name)")
                }
                #expect(Self.list(p) == ["security.x", "trusted.x"])
                #expect(Self.list(m.backingPath(link)) == ["security.x", "trusted.x"])
                // XATTR_CREATE on an existing one, XATTR_REPLACE on a missing one.
                #expect(Self.set(p, "trusted.x", [1], flags: Int32(XATTR_CREATE)) == EEXIST)
                #expect(Self.set(p, "trusted.y", [1], flags: Int32(XATTR_REPLACE)) == ENODATA)
                #expect(lremovexattr(p, "trusted.x") == 0)
                #expect(Self.get(p, "trusted.x") == .failure(Errno(ENODATA, "")))
                #expect(Self.list(p) == ["security.x"])
                #expect(lremovexattr(p, "security.x") == 0)
                #expect(Self.list(p) == [])
            }
            // The target never got any.
            #expect(Self.list(m.path("target")) == [] && Self.listShown(m.backingPath("target")) == [])
            // user.* on a symlink: what ext4 says, through the mount too.
            let direct = Self.set(m.backingPath("oracle"), "user.x", [1])
            #expect(direct == EPERM)
            #expect(Self.set(m.path("link"), "user.x", [1]) == direct)
            #expect(Self.get(m.path("link"), "user.x") == .failure(Errno(ENODATA, "")))
            // Following the link (setxattr, not lsetxattr) reaches the target.
            #expect(setxattr(m.path("link"), "user.color", "red", 3, 0) == 0)
            #expect(Self.get(m.backingPath("target"), "user.color") == .success(Array("red".utf8)))
            #expect(Self.list(m.path("link")) == [])
        }
    }

    /// An unprivileged user listing a file's attributes does not see the
    /// `trusted.*` names (ext4 lists them only to CAP_SYS_ADMIN; WarpFS
    /// lists as root, so it must leave them out itself), nor read them.
    @Test func trustedNamesAreListedOnlyToRoot() throws {
        let user = try TestUser.ensure()
        try withMount(options: "allow_other") { m in
            openPathForOthers(m.root)
            let list = "import os, sys; print(' '.join(sorted(os.listxattr(sys.argv[1], follow_symlinks=False))))"
            for p in [m.path("f"), m.backingPath("oracle")] {
                try FileIO.write(p, [1], mode: 0o644)
                #expect(chmod(p, 0o644) == 0)
                #expect(Self.set(p, "trusted.secret", [1]) == 0 && Self.set(p, "user.open", [2]) == 0 && Self.set(p, "security.label", [3]) == 0)
            }
            #expect(chmod(m.backing, 0o755) == 0)
            let direct = user.run(["/usr/bin/python3", "-c", list, m.backingPath("oracle")])
            let through = user.run(["/usr/bin/python3", "-c", list, m.path("f")])
            #expect(direct.status == 0 && direct.output == "security.label user.open\n", "\(direct.output)")
            #expect(through.status == 0 && through.output == direct.output, "as \(user.name) through the mount: \(through.output)")
            // Root still sees all three, through the mount too.
            #expect(Self.list(m.path("f")) == ["security.label", "trusted.secret", "user.open"])
            let read = user.run(["/usr/bin/python3", "-c", "import os, sys; os.getxattr(sys.argv[1], 'trusted.secret')", m.path("f")])
            #expect(read.status != 0)
        }
    }

    /// A symlink's own times and owner change without touching its target.
    /// The file-handle key the mount keeps on the backing root
    /// (`trusted.warpfs.handle_key`) is the mount's own: root sees it on the
    /// backing directory, but through the mount it is neither listed, nor
    /// readable, nor replaceable or removable, so copying the mount root
    /// does not carry it and nobody swaps it under the mount.
    @Test func theMountsOwnKeyIsNotReachableThroughTheMount() throws {
        try withMount { m in
            let key = "trusted.warpfs.handle_key"
            guard case .success(let stored) = Self.get(m.backing, key) else {
                Issue.record("the backing root has no \(key) (file handles not set up): \(m.log)")
                return
            }
            #expect(stored.count == 16)
            #expect(!Self.list(m.mountpoint).contains(key))
            if case .success = Self.get(m.mountpoint, key) { Issue.record("\(key) readable through the mount") }
            #expect(Self.set(m.mountpoint, key, [UInt8](repeating: 7, count: 16)) == EPERM)
            #expect(lremovexattr(m.mountpoint, key) != 0 && errno == EPERM)
            #expect((try? Self.get(m.backing, key).get()) == stored)
            // Other trusted attributes of the root stay root's to use.
            #expect(Self.set(m.mountpoint, "trusted.other", [1]) == 0)
            #expect(Self.list(m.mountpoint).contains("trusted.other"))
        }
    }

    @Test func symlinkTimesAndOwner() throws {
        try withMount { m in
            try FileIO.write(m.path("target"), Array("t".utf8))
            #expect(symlink("target", m.path("link")) == 0)
            let before = try FileIO.stat(m.backingPath("target"))
            var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 0), timespec(tv_sec: 1_100_000_000, tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, m.path("link"), &times, AT_SYMLINK_NOFOLLOW) == 0)
            #expect(try FileIO.stat(m.path("link")).st_mtim.tv_sec == 1_100_000_000)
            #expect(try FileIO.stat(m.backingPath("link")).st_mtim.tv_sec == 1_100_000_000)
            #expect(try FileIO.stat(m.backingPath("target")).st_mtim.tv_sec == before.st_mtim.tv_sec)
            #expect(lchown(m.path("link"), 1234, 5678) == 0)
            let l = try FileIO.stat(m.backingPath("link")), t = try FileIO.stat(m.backingPath("target"))
            #expect(l.st_uid == 1234 && l.st_gid == 5678)
            #expect(t.st_uid == before.st_uid && t.st_gid == before.st_gid)
        }
    }

    /// Names and values at the kernel's limits behave as on the backing file
    /// system: a 255-byte name works, 256 is ERANGE; a value the backing file
    /// system cannot hold fails with its errno; a list larger than the
    /// caller's buffer is ERANGE, and a size query gives the exact size.
    @Test func namesAndValuesAtTheLimits() throws {
        try withMount { m in
            try FileIO.write(m.path("f"), [1])
            try FileIO.write(m.backingPath("oracle"), [1])
            let paths = [m.path("f"), m.backingPath("oracle")]
            let long = "user." + String(repeating: "n", count: 250)
            for p in paths {
                #expect(Self.set(p, long, Array("v".utf8)) == 0, "255-byte name on \(p)")
                #expect(Self.get(p, long) == .success(Array("v".utf8)))
                #expect(Self.set(p, long + "x", [1]) == ERANGE)
            }
            // Values: growing sizes up to the kernel's 64 KiB limit; where the
            // backing file system gives up, the mount gives up the same way.
            for size in [1, 1000, 3000, 4000, 8000, 65536] {
                let value = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
                let direct = Self.set(paths[1], "user.v\(size)", value)
                let through = Self.set(paths[0], "user.v\(size)", value)
                #expect(through == direct, "a \(size)-byte value: \(through) through the mount, \(direct) on the backing file system")
                if direct == 0 { #expect(Self.get(paths[0], "user.v\(size)") == .success(value)) }
            }
            #expect(Self.set(paths[0], "user.v65537", [UInt8](repeating: 1, count: 65537)) == E2BIG)
            #expect(Self.list(paths[0]) == Self.list(paths[1]))
            let size = llistxattr(paths[0], nil, 0)
            #expect(size == llistxattr(paths[1], nil, 0))
            var small = [CChar](repeating: 0, count: max(size - 1, 0))
            #expect(llistxattr(paths[0], &small, small.count) == -1 && errno == ERANGE)
            var small2 = [UInt8](repeating: 0, count: 2)
            #expect(lgetxattr(paths[0], "user.v1000", &small2, 2) == -1 && errno == ERANGE)
        }
    }

    /// On a backing file system that holds them (tmpfs), a 64 KiB value (the
    /// kernel's limit) and a list near the kernel's 64 KiB list limit pass
    /// through the FUSE request and reply buffers whole.
    @Test func largestValueAndListPassThrough() throws {
        let tmpfs = makeTempDir("warpfs-xattr-tmpfs")
        defer { _ = runCommand(["/bin/umount", "-l", tmpfs]); removeTree(tmpfs) }
        let r = runCommand(["/bin/mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", tmpfs])
        try #require(r.status == 0, "mount tmpfs: \(r.output)")
        let m = try TestMount(backing: tmpfs)
        defer { m.close() }
        try FileIO.write(m.path("f"), [1])
        let value = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        #expect(Self.set(m.path("f"), "user.big", value) == 0)
        #expect(Self.get(m.path("f"), "user.big") == .success(value))
        #expect(Self.get(m.backingPath("f"), "user.big") == .success(value))
        #expect(lgetxattr(m.path("f"), "user.big", nil, 0) == 65536)
        // 250 names of 255 bytes: a 64,000-byte list.
        for i in 0..<250 {
            let name = "user." + String(repeating: "a", count: 246) + String(1000 + i)
            #expect(Self.set(m.path("f"), name, [UInt8(i & 0xff)]) == 0, "attribute \(i)")
        }
        let shown = Self.listShown(m.backingPath("f"))
        #expect(llistxattr(m.path("f"), nil, 0) == shown.reduce(0) { $0 + $1.utf8.count + 1 })
        let names = Self.list(m.path("f"))
        #expect(names.count == 251 && names == shown)
    }

    /// When the backing file system has no room left for another attribute
    /// (ext4: about one block per file), the application gets the backing
    /// errno after exactly as many attributes as on the backing file system,
    /// and the log names the file.
    @Test func capacityIsTheBackingFileSystems() throws {
        try withMount { m in
            try FileIO.write(m.path("full"), [1])
            try FileIO.write(m.backingPath("oracle"), [1])
            func fill(_ p: String) -> (count: Int, error: Int32) {
                let value = [UInt8](repeating: 7, count: 100)
                for i in 0..<2000 {
                    let e = Self.set(p, "user.attribute-\(i)", value)
                    if e != 0 { return (i, e) }
                }
                return (2000, 0)
            }
            let direct = fill(m.backingPath("oracle"))
            let through = fill(m.path("full"))
            #expect(through.count == direct.count && through.error == direct.error,
                    "through the mount: \(through.count) then errno \(through.error); on the backing file system: \(direct.count) then errno \(direct.error)")
            #expect(direct.error == ENOSPC || direct.error == E2BIG || direct.error == 0)
            if direct.error != 0 {
                #expect(m.log.contains("full"), "the log does not name the file: \(m.log)")
                #expect(m.log.contains("user.attribute-\(through.count)"), "\(m.log)")
            }
            // The file is still usable and its attributes readable.
            #expect(Self.get(m.path("full"), "user.attribute-0") == .success([UInt8](repeating: 7, count: 100)))
            #expect(Self.list(m.path("full")).count == through.count)
        }
    }
}
