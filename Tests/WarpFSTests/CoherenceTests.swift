#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// The kernel's page cache of a file and what the file system stores agree
/// after every operation that bypasses the cache: an asynchronous O_DIRECT
/// write (libaio) raced by buffered readers, and the neighbours (a direct
/// write under a shared mapping, hole punching, copy_file_range, truncation).
@Suite(.serialized) struct CoherenceTests {
    /// libaio through ctypes (io_setup/io_submit/io_getevents by syscall
    /// number, struct iocb from linux/aio_abi.h), x86-64 and arm64 numbers.
    static let aio = """
    import ctypes, os, platform
    libc = ctypes.CDLL(None, use_errno=True)
    NR = {"x86_64": (206, 209, 208), "aarch64": (0, 2, 4)}[platform.machine()]
    class iocb(ctypes.Structure):
        _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32), ("aio_rw_flags", ctypes.c_int32),
                    ("aio_lio_opcode", ctypes.c_uint16), ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                    ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64), ("aio_offset", ctypes.c_int64),
                    ("aio_reserved2", ctypes.c_uint64), ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]
    class io_event(ctypes.Structure):
        _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]
    ctx = ctypes.c_ulong(0)
    assert libc.syscall(NR[0], 8, ctypes.byref(ctx)) == 0, "io_setup: errno %d" % ctypes.get_errno()
    def aio_write(fd, buf, n, off):
        cb = iocb(aio_lio_opcode=1, aio_fildes=fd, aio_buf=ctypes.addressof(ctypes.c_char.from_buffer(buf)), aio_nbytes=n, aio_offset=off)
        arr = (ctypes.POINTER(iocb) * 1)(ctypes.pointer(cb))
        assert libc.syscall(NR[1], ctx, 1, arr) == 1, "io_submit: errno %d" % ctypes.get_errno()
        ev = (io_event * 1)()
        assert libc.syscall(NR[2], ctx, 1, 1, ev, None) == 1, "io_getevents: errno %d" % ctypes.get_errno()
        return ev[0].res

    """

    /// Rounds of: two processes read a 4 MiB file buffered (dropping their
    /// cache each pass) while an asynchronous O_DIRECT write puts a new
    /// pattern over all of it; once the write has completed, a buffered
    /// read must see the pattern. Prints the rounds that saw old bytes.
    static let racedWrites = aio + """
    import mmap, signal, sys, time
    path, rounds = sys.argv[1], int(sys.argv[2])
    size = 4 << 20
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, b"\\0" * size, 0)
    os.fsync(fd)
    dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, size)
    stale = 0
    for r in range(rounds):
        pattern = bytes([r % 250 + 1])
        readers = []
        for k in range(2):
            pid = os.fork()
            if pid == 0:
                rfd = os.open(path, os.O_RDONLY)
                while True:
                    os.posix_fadvise(rfd, 0, size, os.POSIX_FADV_DONTNEED)
                    for off in range(0, size, 65536):
                        os.pread(rfd, 4096, off + 4096 * k)
            readers.append(pid)
        time.sleep(0.003)
        buf.seek(0)
        buf.write(pattern * size)
        res = aio_write(dfd, buf, size, 0)
        assert res == size, "aio write returned %d" % res
        for pid in readers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if os.pread(fd, size, 0) != pattern * size:
            stale += 1
    print("stale=%d rounds=%d" % (stale, rounds))
    """

    @Test(arguments: ["", "no_writeback_cache"])
    func asynchronousDirectWritesLeaveNoStalePages(options: String) throws {
        try withMount(options: options) { m in
            let r = runCommand(["/usr/bin/python3", "-c", CoherenceTests.racedWrites, m.path("raced"), "40"])
            #expect(r.status == 0 && r.output.hasPrefix("stale=0 "), "\(options): \(r.output)")
        }
    }

    /// The neighbours: every step prints "name ok" or what it saw.
    static let neighbours = aio + """
    import mmap, sys
    d = sys.argv[1]
    def check(name, got, want):
        print(name, "ok" if got == want else "STALE (%r... instead of %r...)" % (got[:8], want[:8]))
    size = 1 << 20
    p = os.path.join(d, "mapped")
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, b"a" * size, 0)
    os.fsync(fd)
    view = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    assert view[0:4] == b"aaaa"
    dfd = os.open(p, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 65536)
    buf.write(b"b" * 65536)
    assert aio_write(dfd, buf, 65536, 65536) == 65536
    check("direct-under-mapping", view[65536:131072], b"b" * 65536)
    check("direct-then-buffered", os.pread(fd, 65536, 65536), b"b" * 65536)
    assert os.pwritev(dfd, [buf], 3 * 65536) == 65536
    check("sync-direct-under-mapping", view[3 * 65536:4 * 65536], b"b" * 65536)
    os.pread(fd, size, 0)
    libc.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(8192))
    check("punch-hole", os.pread(fd, 8192, 0), b"\\0" * 8192)
    check("punch-hole-mapped", view[0:8192], b"\\0" * 8192)
    src = os.path.join(d, "source")
    sfd = os.open(src, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(sfd, b"c" * 65536, 0)
    os.pread(fd, size, 0)
    n = os.copy_file_range(sfd, fd, 65536, 0, 8 * 65536)
    check("copy-file-range", os.pread(fd, 65536, 8 * 65536), b"c" * 65536)
    view.close()
    os.ftruncate(fd, 4096)
    os.ftruncate(fd, size)
    check("truncate", os.pread(fd, 8192, 4096), b"\\0" * 8192)
    other = os.open(p, os.O_RDONLY)
    check("reopened", os.pread(other, 4096, 8 * 65536), b"\\0" * 4096)
    """

    @Test(arguments: ["", "no_writeback_cache"])
    func operationsThatBypassTheCacheKeepItCoherent(options: String) throws {
        try withMount(options: options) { m in
            let r = runCommand(["/usr/bin/python3", "-c", CoherenceTests.neighbours, m.mountpoint])
            #expect(r.status == 0, "\(options): \(r.output)")
            let lines = r.output.split(separator: "\n")
            #expect(lines.count == 8 && lines.allSatisfy { $0.hasSuffix(" ok") }, "\(options): \(r.output)")
        }
    }
}
