#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// Every POSIX operation users rely on, against a real mount.
@Suite struct PosixTests {
    @Test func createWriteReadAndSizes() throws {
        try withMount { m in
            var r = Rng(1)
            let data = r.text(300_000)
            try FileIO.write(m.path("a"), data)
            #expect(try FileIO.read(m.path("a")) == data)
            #expect(try FileIO.stat(m.path("a")).st_size == 300_000)
            // The backing file is a container, smaller than the data.
            let back = try FileIO.read(m.backingPath("a"))
            #expect(back.prefix(8).elementsEqual(Array("WARPFS\r\n".utf8)))
            #expect(try FileIO.stat(m.backingPath("a")).st_blocks * 512 < 300_000 / 2)
        }
    }

    @Test func openFlags() throws {
        try withMount { m in
            let p = m.path("f")
            try FileIO.write(p, Array("0123456789".utf8))
            // O_EXCL on an existing file fails.
            #expect(open(p, O_WRONLY | O_CREAT | O_EXCL, 0o644) == -1 && errno == EEXIST)
            // O_APPEND writes at the end whatever the offset.
            let fd = open(p, O_WRONLY | O_APPEND)
            #expect(fd >= 0)
            _ = "abc".withCString { write(fd, $0, 3) }
            _ = "de".withCString { pwrite(fd, $0, 2, 0) }
            close(fd)
            #expect(String(decoding: try FileIO.read(p), as: UTF8.self) == "0123456789abcde")
            // O_TRUNC empties it.
            let t = open(p, O_WRONLY | O_TRUNC)
            close(t)
            #expect(try FileIO.read(p) == [])
            #expect(try FileIO.stat(p).st_size == 0)
        }
    }

    @Test func truncateGrowsAndShrinks() throws {
        try withMount(options: "block_size=16k") { m in
            let p = m.path("t")
            var r = Rng(2)
            let data = r.text(100_000)
            try FileIO.write(p, data)
            #expect(truncate(p, 40_000) == 0)
            #expect(try FileIO.read(p) == Array(data.prefix(40_000)))
            #expect(truncate(p, 70_000) == 0)
            #expect(try FileIO.read(p) == Array(data.prefix(40_000)) + [UInt8](repeating: 0, count: 30_000))
            let fd = open(p, O_RDWR)
            #expect(ftruncate(fd, 5) == 0)
            #expect(ftruncate(fd, 20_000) == 0)
            close(fd)
            #expect(try FileIO.read(p) == Array(data.prefix(5)) + [UInt8](repeating: 0, count: 19_995))
        }
    }

    @Test func namesAndDirectories() throws {
        try withMount { m in
            #expect(mkdir(m.path("d"), 0o750) == 0)
            #expect(mkdir(m.path("d/e"), 0o755) == 0)
            try FileIO.write(m.path("d/e/x"), Array("x".utf8))
            try FileIO.write(m.path("d/y"), Array("y".utf8))
            #expect(try FileIO.list(m.path("d")) == ["e", "y"])
            #expect(try FileIO.stat(m.path("d")).st_mode & 0o777 == 0o750)
            #expect(rmdir(m.path("d/e")) == -1 && errno == ENOTEMPTY)
            #expect(unlink(m.path("d/e/x")) == 0)
            #expect(rmdir(m.path("d/e")) == 0)
            // rename, also over an existing file.
            try FileIO.write(m.path("d/z"), Array("zzz".utf8))
            #expect(rename(m.path("d/y"), m.path("d/z")) == 0)
            #expect(String(decoding: try FileIO.read(m.path("d/z")), as: UTF8.self) == "y")
            #expect(!FileIO.exists(m.path("d/y")))
            #expect(rename(m.path("d"), m.path("d2")) == 0)
            #expect(try FileIO.list(m.path("d2")) == ["z"])
            // Many entries: readdir across several reply buffers.
            for i in 0..<300 { try FileIO.write(m.path("d2/file-with-a-longish-name-\(i)"), [UInt8(i & 0xff)]) }
            #expect(try FileIO.list(m.path("d2")).count == 301)
            let ls = runCommand(["/bin/ls", "-l", m.path("d2")])
            #expect(ls.status == 0 && ls.output.split(separator: "\n").count == 302)
        }
    }

    @Test func symlinksAndHardLinks() throws {
        try withMount { m in
            try FileIO.write(m.path("target"), Array("content".utf8))
            #expect(symlink("target", m.path("link")) == 0)
            var buf = [CChar](repeating: 0, count: 256)
            let n = readlink(m.path("link"), &buf, 255)
            #expect(String(decoding: buf[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "target")
            #expect(String(decoding: try FileIO.read(m.path("link")), as: UTF8.self) == "content")
            #expect(link(m.path("target"), m.path("hard")) == 0)
            #expect(try FileIO.stat(m.path("target")).st_nlink == 2)
            // A write through one name is seen through the other.
            let fd = open(m.path("hard"), O_WRONLY)
            _ = "CON".withCString { pwrite(fd, $0, 3, 0) }
            close(fd)
            #expect(String(decoding: try FileIO.read(m.path("target")), as: UTF8.self) == "CONtent")
            #expect(try FileIO.stat(m.path("hard")).st_ino == FileIO.stat(m.path("target")).st_ino)
        }
    }

    @Test func attributes() throws {
        try withMount { m in
            let p = m.path("attr")
            try FileIO.write(p, Array("abc".utf8))
            #expect(chmod(p, 0o600) == 0)
            #expect(try FileIO.stat(p).st_mode & 0o777 == 0o600)
            #expect(chown(p, 1234, 5678) == 0)
            let st = try FileIO.stat(p)
            #expect(st.st_uid == 1234 && st.st_gid == 5678)
            var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 5), timespec(tv_sec: 1_100_000_000, tv_nsec: 7)]
            #expect(utimensat(AT_FDCWD, p, &times, 0) == 0)
            let st2 = try FileIO.stat(p)
            #expect(st2.st_mtim.tv_sec == 1_100_000_000 && st2.st_atim.tv_sec == 1_000_000_000)
            // Times set after writing survive the close that stores the data.
            let fd = open(p, O_WRONLY)
            _ = "xyz".withCString { write(fd, $0, 3) }
            #expect(futimens(fd, &times) == 0)
            close(fd)
            #expect(try FileIO.stat(p).st_mtim.tv_sec == 1_100_000_000)
            var sv = statvfs()
            #expect(statvfs(m.mountpoint, &sv) == 0 && sv.f_blocks > 0)
        }
    }

    @Test func extendedAttributes() throws {
        try withMount { m in
            let p = m.path("x")
            try FileIO.write(p, [1, 2, 3])
            #expect(setxattr(p, "user.color", "blue", 4, 0) == 0)
            var buf = [CChar](repeating: 0, count: 64)
            #expect(getxattr(p, "user.color", &buf, 64) == 4)
            #expect(String(decoding: buf.prefix(4).map { UInt8(bitPattern: $0) }, as: UTF8.self) == "blue")
            #expect(getxattr(p, "user.color", nil, 0) == 4)
            #expect(listxattr(p, &buf, 64) > 0)
            #expect(removexattr(p, "user.color") == 0)
            #expect(getxattr(p, "user.color", &buf, 64) == -1 && errno == ENODATA)
        }
    }

    @Test func syncFifosAndFallocate() throws {
        try withMount { m in
            let p = m.path("s")
            let fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            try FileIO.pwrite(fd, Array(repeating: 7, count: 200_000), 0)
            #expect(fsync(fd) == 0)
            #expect(fdatasync(fd) == 0)
            // fallocate extends; punching a hole zeroes.
            #expect(wd_fallocate(fd, 0, 0, 300_000) == 0)
            #expect(try FileIO.stat(p).st_size == 300_000)
            #expect(wd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1000, 100_000) == 0)
            let back = try FileIO.pread(fd, 300_000, 0)
            #expect(back[0..<1000].allSatisfy { $0 == 7 })
            #expect(back[1000..<101_000].allSatisfy { $0 == 0 })
            #expect(back[101_000..<200_000].allSatisfy { $0 == 7 })
            #expect(back[200_000...].allSatisfy { $0 == 0 })
            close(fd)
            #expect(mkfifo(m.path("fifo"), 0o644) == 0)
            #expect(try FileIO.stat(m.path("fifo")).st_mode & S_IFMT == S_IFIFO)
        }
    }

    /// fsync and fdatasync of a directory reach the backing directory as an
    /// fsync (its names are its data), so a name created, renamed or removed
    /// in it survives a crash once the call returns. Seen with strace: a
    /// crash cannot be staged here.
    @Test func directoryFsyncSyncsTheBackingDirectory() throws {
        try withMount { m in
            #expect(mkdir(m.path("d"), 0o755) == 0)
            try FileIO.write(m.path("d/new"), Array("n".utf8))
            #expect(rename(m.path("d/new"), m.path("d/renamed")) == 0)
            let fd = open(m.path("d"), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            #expect(fd >= 0)
            defer { close(fd) }
            let trace = try SyscallTrace(pid: m.pid, calls: "fsync,fdatasync,syncfs,sync", dir: m.root)
            #expect(fsync(fd) == 0)
            #expect(fdatasync(fd) == 0)
            let lines = trace.stop()
            let synced = SyscallTrace.calls(lines, "fsync", on: m.backingPath("d"))
            #expect(synced.count == 2 && synced.allSatisfy { $0.hasSuffix("= 0") }, "traced: \(lines)")
        }
    }

    /// fsync (not fdatasync) of a compressed file also makes its metadata
    /// durable: the backing file gets an fsync, not only an fdatasync.
    @Test func fileFsyncSyncsMetadataToo() throws {
        try withMount { m in
            let fd = open(m.path("f"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            #expect(fd >= 0)
            defer { close(fd) }
            try FileIO.pwrite(fd, Array(repeating: 5, count: 100_000), 0)
            let trace = try SyscallTrace(pid: m.pid, calls: "fsync,fdatasync", dir: m.root)
            #expect(fsync(fd) == 0)
            let afterFsync = trace.stop()
            #expect(SyscallTrace.calls(afterFsync, "fsync", on: m.backingPath("f")).count >= 1, "traced: \(afterFsync)")
            try FileIO.pwrite(fd, Array(repeating: 6, count: 100_000), 0)
            let again = try SyscallTrace(pid: m.pid, calls: "fsync,fdatasync", dir: m.root)
            #expect(fdatasync(fd) == 0)
            let afterFdatasync = again.stop()
            #expect(SyscallTrace.calls(afterFdatasync, "fdatasync", on: m.backingPath("f")).count >= 1, "traced: \(afterFdatasync)")
            #expect(SyscallTrace.calls(afterFdatasync, "fsync", on: m.backingPath("f")).isEmpty, "traced: \(afterFdatasync)")
        }
    }

    @Test func seekDataAndHole() throws {
        try withMount(options: "block_size=64k") { m in
            let p = m.path("sparse")
            let fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            defer { close(fd) }
            try FileIO.pwrite(fd, [1], 1 << 20)           // one data block at 1 MiB
            try FileIO.pwrite(fd, [2], (3 << 20) + 10)    // another at 3 MiB
            #expect(fsync(fd) == 0)
            #expect(lseek(fd, 0, 3 /* SEEK_DATA */) == 1 << 20)
            #expect(lseek(fd, 1 << 20, 4 /* SEEK_HOLE */) == (1 << 20) + 65536)
            #expect(lseek(fd, (1 << 20) + 65536, 3) == 3 << 20)
            #expect(lseek(fd, 3 << 20, 4) == (3 << 20) + 11)   // the end of file is a hole
            #expect(lseek(fd, (3 << 20) + 11, 3) == -1 && errno == ENXIO)
        }
    }

    @Test func unlinkedWhileOpenKeepsWorking() throws {
        try withMount { m in
            let p = m.path("gone")
            var r = Rng(3)
            let data = r.text(150_000)
            try FileIO.write(p, data)
            let fd = open(p, O_RDWR)
            #expect(unlink(p) == 0)
            #expect(!FileIO.exists(p))
            #expect(try FileIO.pread(fd, data.count, 0) == data)
            try FileIO.pwrite(fd, Array("new".utf8), 149_000)
            #expect(try FileIO.pread(fd, 3, 149_000) == Array("new".utf8))
            close(fd)
            #expect(try FileIO.list(m.backing) == [])
        }
    }

    @Test func mmapReadsAndWrites() throws {
        try withMount { m in
            let p = m.path("mm")
            var r = Rng(4)
            let data = r.text(200_000)
            try FileIO.write(p, data)
            let fd = open(p, O_RDWR)
            let map = mmap(nil, data.count, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
            #expect(map != MAP_FAILED)
            let bytes = map.assumingMemoryBound(to: UInt8.self)
            #expect(Array(UnsafeBufferPointer(start: bytes, count: data.count)) == data)
            for i in stride(from: 0, to: data.count, by: 4096) { bytes[i] = 0xAB }
            #expect(msync(map, data.count, MS_SYNC) == 0)
            munmap(map, data.count)
            close(fd)
            var expected = data
            for i in stride(from: 0, to: data.count, by: 4096) { expected[i] = 0xAB }
            #expect(try FileIO.read(p) == expected)
            try m.remount()
            #expect(try FileIO.read(p) == expected)
        }
    }
}
