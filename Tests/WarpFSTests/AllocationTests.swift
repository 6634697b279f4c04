#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing

/// `fallocate` on a container reserves the backing space a later write of
/// the range needs, or fails with ENOSPC up front (docs/FORMAT.md,
/// "Allocation"); plain files pass it to the backing file system. On a
/// small tmpfs as the backing file system.
@Suite(.serialized) struct AllocationTests {
    static let helpers = """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def falloc(fd, mode, off, n):
        if libc.fallocate(fd, mode, ctypes.c_long(off), ctypes.c_long(n)) != 0:
            return ctypes.get_errno()
        return 0
    def fill(path):
        # Writes 1 MiB of random bytes at a time until the mount refuses (at write or fsync).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = 0
        for i in range(256):
            try:
                os.write(fd, os.urandom(1 << 20))
            except OSError as e:
                err = e.errno
                break
        try:
            os.fsync(fd)
        except OSError as e:
            err = err or e.errno
        try:
            os.close(fd)
        except OSError as e:
            err = err or e.errno
        return err

    """

    /// Allocations the backing file system cannot cover fail with ENOSPC
    /// and change nothing; those it can cover succeed, with or without
    /// FALLOC_FL_KEEP_SIZE.
    static let upFront = helpers + """
    d = sys.argv[1]
    fd = os.open(os.path.join(d, "f"), os.O_RDWR | os.O_CREAT, 0o644)
    print("twice-free", falloc(fd, 0, 0, 32 << 20), os.fstat(fd).st_size)
    print("twice-free-keep-size", falloc(fd, 1, 0, 32 << 20), os.fstat(fd).st_size)
    print("200GiB", falloc(fd, 0, 0, 200 << 30), os.fstat(fd).st_size)
    print("zero-range-twice-free", falloc(fd, 0x10, 0, 32 << 20), os.fstat(fd).st_size)
    before = os.statvfs(d)
    print("within", falloc(fd, 0, 0, 4 << 20), os.fstat(fd).st_size)
    after = os.statvfs(d)
    print("df-shows-it", (before.f_bavail - after.f_bavail) * after.f_frsize >= 4 << 20)
    print("within-keep-size", falloc(fd, 1, 4 << 20, 2 << 20), os.fstat(fd).st_size)
    os.pwrite(fd, b"z" * 100000, 0)
    print("zero-range", falloc(fd, 0x10, 4096, 8192), os.fstat(fd).st_size, os.pread(fd, 8192, 4096) == b"\\0" * 8192, os.pread(fd, 10, 12288) == b"z" * 10)
    print("zero-range-grows", falloc(fd, 0x10, 6 << 20, 4096), os.fstat(fd).st_size)
    """

    @Test func allocationsTheBackingCannotCoverFailUpFront() throws {
        let small = try SpaceTests.SmallFileSystem(size: "16m")
        defer { small.close() }
        let m = try TestMount(backing: small.path)
        defer { m.close() }
        let r = runCommand(["/usr/bin/python3", "-c", AllocationTests.upFront, m.mountpoint])
        let expected = """
            twice-free \(ENOSPC) 0
            twice-free-keep-size \(ENOSPC) 0
            200GiB \(ENOSPC) 0
            zero-range-twice-free \(ENOSPC) 0
            within 0 4194304
            df-shows-it True
            within-keep-size 0 4194304
            zero-range 0 4194304 True True
            zero-range-grows 0 6295552

            """
        #expect(r.status == 0 && r.output == expected, "\(r.output)")
    }

    /// A range allocated while there was room is written after another file
    /// filled the backing file system: the write and its fsync succeed, and
    /// the data reads back, also after a remount. What was written is kept
    /// off the full file system (argument 3), so it is what was written.
    static let fullDisk = helpers + """
    d, mode, keep = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fd = os.open(os.path.join(d, "allocated"), os.O_RDWR | os.O_CREAT, 0o644)
    print("allocate", falloc(fd, mode, 0, 4 << 20))
    print("fill", fill(os.path.join(d, "filler")))
    data = os.urandom(4 << 20)
    try:
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        print("write 0")
    except OSError as e:
        print("write", e.errno)
    os.close(fd)
    print("read", open(os.path.join(d, "allocated"), "rb").read() == data)
    with open(os.path.join(keep, "data"), "wb") as f:
        f.write(data)
    """

    @Test(arguments: [0, 1]) func anAllocatedRangeIsWrittenOnAFullDisk(mode: Int32) throws {
        let small = try SpaceTests.SmallFileSystem(size: "16m")
        defer { small.close() }
        let data = makeTempDir("warpfs-data")
        defer { removeTree(data) }
        let m = try TestMount(backing: small.path)
        defer { m.close() }
        let r = runCommand(["/usr/bin/python3", "-c", AllocationTests.fullDisk, m.mountpoint, "\(mode)", data])
        let lines = r.output.split(separator: "\n").map(String.init)
        #expect(lines.count >= 4 && lines[0] == "allocate 0" && lines[1] == "fill \(ENOSPC)" && lines[2] == "write 0" && lines[3] == "read True",
                "mode \(mode): \(r.output)")
        let written = try FileIO.read(data + "/data")
        #expect(written.count == 4 << 20)
        try m.remount()
        #expect(try FileIO.read(m.path("allocated")) == written)
    }

    /// A plain file (`nocompress`) gets the backing file system's own fallocate.
    @Test func plainFilesPassAllocationThrough() throws {
        let small = try SpaceTests.SmallFileSystem(size: "16m")
        defer { small.close() }
        let m = try TestMount(options: "nocompress", backing: small.path)
        defer { m.close() }
        let r = runCommand(["/usr/bin/python3", "-c", AllocationTests.helpers + """
            fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
            print(falloc(fd, 0, 0, 32 << 20), falloc(fd, 0, 0, 4 << 20), falloc(fd, 1, 4 << 20, 4 << 20), os.fstat(fd).st_size)
            """, m.path("plain")])
        #expect(r.output == "\(ENOSPC) 0 0 4194304\n", "\(r.output)")
        #expect(try FileIO.stat(small.path + "/plain").st_blocks * 512 >= 8 << 20)
    }
}
