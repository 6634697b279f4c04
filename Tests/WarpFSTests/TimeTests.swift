#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// The times the mount shows are the times it stores: after a write and
/// close, after fsync, after maintenance, and after a remount, to the
/// nanosecond; reads update access times by the mount's atime option.
@Suite(.serialized) struct TimeTests {
    /// Each scenario changes one file (statting it between the change and
    /// the close, as tools do), then prints its name, mtime and ctime in
    /// nanoseconds, and whether the mtime moved past the time before the change.
    static let scenarios = """
    import mmap, os, sys, time
    d = sys.argv[1]
    def report(name):
        s = os.stat(os.path.join(d, name))
        print(name, s.st_mtime_ns, s.st_ctime_ns)
    def fresh(name, data=b"x" * 100):
        p = os.path.join(d, name)
        with open(p, "wb") as f: f.write(data)
        time.sleep(0.02)
        return p
    def check_moved(name, before):
        s = os.stat(os.path.join(d, name))
        print("moved", name, s.st_mtime_ns > before, s.st_mtime_ns, before)
    def write_close(name, data, flags=0, fsync=False, more=b""):
        p = fresh(name)
        before = os.stat(p).st_mtime_ns
        fd = os.open(p, os.O_WRONLY | flags)
        os.pwrite(fd, data, 10)
        os.fstat(fd); os.stat(p)
        if fsync: os.fsync(fd); os.stat(p)
        if more: time.sleep(0.02); os.pwrite(fd, more, 5); os.stat(p)
        os.close(fd)
        check_moved(name, before)
        report(name)
    write_close("small", b"y" * 50)
    write_close("big", os.urandom(1000) * 300)
    write_close("fsynced", b"z" * 200000, fsync=True)
    write_close("fsynced-then-more", b"z" * 200000, fsync=True, more=b"m" * 1000)
    p = fresh("truncated"); os.truncate(p, 5000); report("truncated")
    p = fresh("allocated"); fd = os.open(p, os.O_WRONLY); os.posix_fallocate(fd, 0, 300000); os.close(fd); report("allocated")
    p = fresh("mapped", b"\\0" * (1 << 20)); fd = os.open(p, os.O_RDWR)
    m = mmap.mmap(fd, 1 << 20); m[0:10] = b"0123456789"; m.flush(); m.close(); os.close(fd); report("mapped")
    p = fresh("chmodded"); os.chmod(p, 0o600); report("chmodded")
    p = fresh("touched"); os.utime(p, ns=(1000000000123456789, 1000000000987654321)); report("touched")
    p = fresh("read-after-write"); open(p, "rb").read(); report("read-after-write")
    """

    @Test(arguments: ["", "no_writeback_cache"])
    func timesShownAreTheTimesStored(options: String) throws {
        let m = try TestMount(options: options)
        defer { m.close() }
        let r = runCommand(["/usr/bin/python3", "-c", TimeTests.scenarios, m.mountpoint])
        #expect(r.status == 0, "\(r.output)")
        let lines = r.output.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        for l in lines where l.first == "moved" { #expect(l[2] == "True", "\(options): the write did not move the mtime of \(l[1]): \(l)") }
        let shown = lines.filter { $0.count == 3 }
        #expect(shown.count == 10, "\(r.output)")
        // A second later the kernel's attribute cache has expired: still the same.
        usleep(1_100_000)
        for l in shown {
            let st = try FileIO.stat(m.path(l[0]))
            #expect("\(st.st_mtim.tv_sec * 1_000_000_000 + st.st_mtim.tv_nsec) \(st.st_ctim.tv_sec * 1_000_000_000 + st.st_ctim.tv_nsec)" == "\(l[1]) \(l[2])",
                    "\(options) \(l[0]): later")
        }
        try m.remount()
        for l in shown {
            let st = try FileIO.stat(m.path(l[0]))
            #expect("\(st.st_mtim.tv_sec * 1_000_000_000 + st.st_mtim.tv_nsec)" == l[1], "\(options) \(l[0]): mtime after a remount")
            #expect("\(st.st_ctim.tv_sec * 1_000_000_000 + st.st_ctim.tv_nsec)" == l[2], "\(options) \(l[0]): ctime after a remount")
        }
    }

    /// Reads (each past a dropped page cache, so it reaches the file
    /// system) under each atime option: relatime updates the atime when it
    /// is not after the mtime or ctime (the first read after a write) and
    /// not on the next read; strictatime on every read; noatime never. The
    /// atime survives the last close's maintenance and a remount.
    static let reads = """
    import os, sys, time
    p = sys.argv[1]
    with open(p, "wb") as f: f.write(b"r" * 300000)
    fd = os.open(p, os.O_RDWR); os.pwrite(fd, b"s" * 70000, 0); os.fsync(fd); os.pwrite(fd, b"t" * 70000, 0); os.close(fd)
    def read():
        time.sleep(0.02)
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.pread(fd, 100, 0)
        os.close(fd)
        s = os.stat(p)
        return s.st_atime_ns
    s = os.stat(p)
    a0 = s.st_atime_ns
    a1 = read()
    a2 = read()
    print("first", "updated" if a1 > a0 else "kept", "second", "updated" if a2 > a1 else "kept", a2, os.stat(p).st_ctime_ns)
    """

    @Test(arguments: ["noatime", "relatime", "strictatime"])
    func readsUpdateAccessTimesByTheMountOption(option: String) throws {
        let m = try TestMount(options: option)
        defer { m.close() }
        let r = runCommand(["/usr/bin/python3", "-c", TimeTests.reads, m.path("f")])
        let expected = ["noatime": "first kept second kept", "relatime": "first updated second kept",
                        "strictatime": "first updated second updated"][option]!
        #expect(r.status == 0 && r.output.hasPrefix(expected + " "), "\(option): \(r.output)")
        let fields = r.output.split(separator: " ")
        guard fields.count == 6 else { return }
        usleep(300_000)
        try m.remount()
        let st = try FileIO.stat(m.path("f"))
        #expect("\(st.st_atim.tv_sec * 1_000_000_000 + st.st_atim.tv_nsec)" == fields[4], "\(option): atime after a remount")
        #expect("\(st.st_ctim.tv_sec * 1_000_000_000 + st.st_ctim.tv_nsec)" == fields[5].trimmingCharacters(), "\(option): ctime after a remount")
    }
}

extension Substring {
    func trimmingCharacters() -> String { String(filter { !$0.isWhitespace }) }
}
