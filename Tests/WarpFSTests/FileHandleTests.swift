#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
@testable import WarpFSCore

/// File handles of the mount (`name_to_handle_at` / `open_by_handle_at`, as
/// NFS re-export and handle-based tools use them) keep naming their file
/// after the kernel forgot it and after a remount, on the backing file
/// systems the tests use (ext4 under /tmp, and tmpfs); a handle of a
/// deleted file is stale, never another file; a handle reaches nothing
/// outside the backing directory.
@Suite(.serialized) struct FileHandleTests {
    enum Backing: String, CaseIterable, CustomTestStringConvertible {
        /// A directory under /tmp (ext4 here).
        case tmpDirectory
        /// A directory on a tmpfs mounted for the test.
        case tmpfs
        var testDescription: String { rawValue }
    }

    /// A backing directory with a sibling outside it on the same file system.
    final class Place {
        let top: String
        let tmpfs: Bool
        var backing: String { top + "/backing" }
        var outside: String { top + "/outside" }

        init(_ kind: Backing) throws {
            top = makeTempDir("warpfs-handles")
            tmpfs = kind == .tmpfs
            if tmpfs {
                let r = runCommand(["/bin/mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", top])
                guard r.status == 0 else { removeTree(top); throw Errno(EPERM, "mount tmpfs: \(r.output)") }
            }
            mkdir(backing, 0o755)
            mkdir(outside, 0o755)
        }

        func close() {
            if tmpfs { _ = runCommand(["/bin/umount", "-l", top]) }
            removeTree(top)
        }
    }

    static func withPlace<T>(_ kind: Backing, options: String = "", _ body: (TestMount, Place) throws -> T) throws -> T {
        let place = try Place(kind)
        defer { place.close() }
        let m = try TestMount(options: options, backing: place.backing)
        defer { m.close() }
        return try body(m, place)
    }

    // MARK: Handles

    struct Handle: Equatable {
        var type: Int32
        var bytes: [UInt8]
        var words: [UInt32] { bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt32.self)) } }
        init(type: Int32, bytes: [UInt8]) { self.type = type; self.bytes = bytes }
        init(type: Int32, words: [UInt32]) { self.type = type; bytes = words.withUnsafeBytes { Array($0) } }
    }

    /// `name_to_handle_at` of a path (not following a final symlink).
    static func handle(_ path: String) throws -> Handle {
        let fd = Glibc.open(path, Int32(WD_O_PATH) | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(errno, "open \(path)") }
        defer { close(fd) }
        var type: Int32 = 0
        var len = UInt32(WD_HANDLE_MAX)
        var buf = [UInt8](repeating: 0, count: Int(WD_HANDLE_MAX))
        let r = wd_handle_of(fd, &type, &buf, &len)
        guard r == 0 else { throw Errno(-r, "name_to_handle_at \(path)") }
        return Handle(type: type, bytes: Array(buf[0..<Int(len)]))
    }

    /// `open_by_handle_at` on the mount: a descriptor, or -errno.
    static func open(_ m: TestMount, _ h: Handle, _ flags: Int32 = O_RDONLY) -> Int32 {
        let root = Glibc.open(m.mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { return -errno }
        defer { close(root) }
        return wd_open_handle(root, h.type, h.bytes, UInt32(h.bytes.count), flags | O_CLOEXEC)
    }

    /// The content of the file a handle names, or the errno of opening it.
    static func read(_ m: TestMount, _ h: Handle) -> Result<[UInt8], Errno> {
        let fd = open(m, h)
        guard fd >= 0 else { return .failure(Errno(-fd, "open_by_handle_at")) }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = Glibc.read(fd, &buf, buf.count)
            if n < 0 { return .failure(Errno(errno, "read")) }
            if n == 0 { return .success(out) }
            out += buf[0..<n]
        }
    }

    /// The names in the directory a handle names, and the directory's path
    /// as the kernel sees it (only right if it reconnected the directory to
    /// the mount through LOOKUP ".." of each ancestor).
    static func list(_ m: TestMount, _ h: Handle) -> Result<(names: [String], path: String), Errno> {
        let fd = open(m, h, O_RDONLY | O_DIRECTORY)
        guard fd >= 0 else { return .failure(Errno(-fd, "open_by_handle_at")) }
        var link = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/fd/\(fd)", &link, 4095)
        let path = String(decoding: link[0..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let d = fdopendir(fd) else { close(fd); return .failure(Errno(errno, "fdopendir")) }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = String(cString: wd_dirent_name(e))
            if name != "." && name != ".." { names.append(name) }
        }
        return .success((names.sorted(), path))
    }

    /// Makes the kernel forget unused dentries and inodes (of every file
    /// system), so the mount gets FORGET for nodes nobody holds; then gives
    /// it a moment to process them.
    static func dropCaches() {
        sync()
        let fd = Glibc.open("/proc/sys/vm/drop_caches", O_WRONLY)
        #expect(fd >= 0)
        _ = "2\n".withCString { write(fd, $0, 2) }
        close(fd)
        usleep(200_000)
    }

    static func text(_ s: String) -> [UInt8] { Array(s.utf8) }

    // MARK: Tests

    @Test(arguments: Backing.allCases)
    func handlesSurviveForgetAndRemount(_ kind: Backing) throws {
        try Self.withPlace(kind) { m, place in
            #expect(m.log.contains("export support on"))
            #expect(mkdir(m.path("a"), 0o755) == 0 && mkdir(m.path("a/b"), 0o755) == 0 && mkdir(m.path("a/b/c"), 0o755) == 0)
            var r = Rng(12)
            let data = r.text(200_000)
            // A container (written through the mount) and a plain file (put in the backing directory).
            try FileIO.write(m.path("a/b/container"), data)
            try FileIO.write(m.backingPath("a/b/plain"), Self.text("plain bytes"))
            try FileIO.write(m.path("a/b/c/x"), Self.text("x"))
            #expect(try FileIO.read(m.backingPath("a/b/container")).prefix(8).elementsEqual(Self.text("WARPFS\r\n")))
            let container = try Self.handle(m.path("a/b/container"))
            let plain = try Self.handle(m.path("a/b/plain"))
            let dir = try Self.handle(m.path("a/b/c"))

            func check(_ when: String) {
                #expect(Self.read(m, container) == .success(data), "container \(when)")
                #expect(Self.read(m, plain) == .success(Self.text("plain bytes")), "plain file \(when)")
                let listed = Self.list(m, dir)
                #expect((try? listed.get().names) == ["x"], "directory \(when): \(listed)")
                #expect((try? listed.get().path) == m.path("a/b/c"), "directory path \(when): \(listed)")
            }
            check("while cached")
            Self.dropCaches()
            check("after the kernel forgot them")
            try m.remount()
            check("after a remount")
            Self.dropCaches()
            check("after a remount and forgetting")
            // The same handles as before: the node ids did not change.
            #expect(try Self.handle(m.path("a/b/container")) == container)
            #expect(try Self.handle(m.path("a/b/c")) == dir)
            _ = place
        }
    }

    @Test(arguments: Backing.allCases)
    func hardLinkedFile(_ kind: Backing) throws {
        try Self.withPlace(kind) { m, _ in
            #expect(mkdir(m.path("one"), 0o755) == 0 && mkdir(m.path("two"), 0o755) == 0)
            try FileIO.write(m.path("one/f"), Self.text("linked content"))
            #expect(link(m.path("one/f"), m.path("two/g")) == 0)
            let viaLink = try Self.handle(m.path("two/g"))
            // Both names give one file, so one handle.
            #expect(try Self.handle(m.path("one/f")) == viaLink)
            Self.dropCaches()
            #expect(Self.read(m, viaLink) == .success(Self.text("linked content")))
            #expect(unlink(m.path("one/f")) == 0)
            Self.dropCaches()
            #expect(Self.read(m, viaLink) == .success(Self.text("linked content")))
            try m.remount()
            #expect(Self.read(m, viaLink) == .success(Self.text("linked content")))
            // Written through the handle, read by name.
            let fd = Self.open(m, viaLink, O_WRONLY | O_APPEND)
            #expect(fd >= 0)
            _ = "!".withCString { write(fd, $0, 1) }
            close(fd)
            #expect(try FileIO.read(m.path("two/g")) == Self.text("linked content!"))
        }
    }

    /// A handle of a deleted file or directory is stale, also when a new
    /// object took its inode number; the new object has a handle of its own.
    @Test(arguments: Backing.allCases)
    func deletedObjectsGiveStale(_ kind: Backing) throws {
        try Self.withPlace(kind) { m, _ in
            #expect(mkdir(m.path("d"), 0o755) == 0 && mkdir(m.path("d/sub"), 0o755) == 0)
            try FileIO.write(m.path("d/old"), Self.text("old file"))
            try FileIO.write(m.path("d/sub/inside"), Self.text("i"))
            let oldIno = try FileIO.stat(m.backingPath("d/old")).st_ino
            let oldDirIno = try FileIO.stat(m.backingPath("d/sub")).st_ino
            let file = try Self.handle(m.path("d/old"))
            let dir = try Self.handle(m.path("d/sub"))
            Self.dropCaches()
            // They work before the deletion.
            #expect(Self.read(m, file) == .success(Self.text("old file")))
            #expect((try? Self.list(m, dir).get().names) == ["inside"])

            #expect(unlink(m.path("d/old")) == 0)
            #expect(unlink(m.path("d/sub/inside")) == 0 && rmdir(m.path("d/sub")) == 0)
            Self.dropCaches()  // the mount closes its descriptors: the inode numbers are free
            // New objects, until one reuses an inode number (ext4 usually gives the freed one back).
            var newFile: (name: String, handle: Handle)?
            var newDir: Handle?
            for i in 0..<20 {
                try FileIO.write(m.path("d/new\(i)"), Self.text("new file \(i)"))
                #expect(mkdir(m.path("d/newdir\(i)"), 0o755) == 0)
                if newFile == nil, try FileIO.stat(m.backingPath("d/new\(i)")).st_ino == oldIno {
                    newFile = ("new\(i)", try Self.handle(m.path("d/new\(i)")))
                }
                if newDir == nil, try FileIO.stat(m.backingPath("d/newdir\(i)")).st_ino == oldDirIno {
                    newDir = try Self.handle(m.path("d/newdir\(i)"))
                }
                if newFile != nil && newDir != nil { break }
            }
            for when in ["", " after a remount"] {
                if !when.isEmpty { try m.remount() }
                Self.dropCaches()
                #expect(Self.read(m, file) == .failure(Errno(ESTALE, "")), "deleted file\(when)")
                let listed = Self.list(m, dir)
                #expect(listed.map { _ in 0 } == .failure(Errno(ESTALE, "")), "deleted directory\(when): \(listed)")
                if let newFile {
                    #expect(newFile.handle != file)
                    #expect(Self.read(m, newFile.handle) == .success(Self.text("new file \(newFile.name.dropFirst(3))")), "reused inode\(when)")
                }
                if let newDir {
                    #expect(newDir != dir)
                    #expect((try? Self.list(m, newDir).get().names) == [], "reused directory inode\(when)")
                }
            }
        }
    }

    /// Handles forged from objects next to the backing directory (their
    /// inode number and generation are public: anyone may take the backing
    /// file system's handle of a file they can stat) reach nothing: a
    /// directory fails the walk up to the backing root even with the right
    /// tag, a file lacks the tag.
    @Test(arguments: Backing.allCases)
    func forgedHandlesReachNothingOutside(_ kind: Backing) throws {
        try Self.withPlace(kind) { m, place in
            try FileIO.write(place.outside + "/secret", Self.text("secret"))
            #expect(mkdir(place.outside + "/dir", 0o755) == 0)
            try FileIO.write(place.outside + "/dir/listed", Self.text("x"))
            try FileIO.write(m.path("mine"), Self.text("mine"))
            let mine = try Self.handle(m.path("mine"))
            #expect(mine.type == 0x81 && mine.words.count == 3)

            // The handle key of this backing directory (root may read it).
            var raw = [UInt8](repeating: 0, count: 16)
            #expect(getxattr(place.backing, StableHandles.keyAttribute, &raw, 16) == 16)
            let key = raw.withUnsafeBytes {
                (UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                 UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
            }
            func nodeID(_ h: Handle) -> UInt64 { UInt64(h.words[0]) << 32 | UInt64(h.words[1]) }
            func tag(_ id: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: SipHash24.hash(key: key, id)) }
            // A real handle: the node id is generation << 32 | inode, its generation the tag.
            #expect(UInt32(truncatingIfNeeded: nodeID(mine)) == UInt32(try FileIO.stat(m.backingPath("mine")).st_ino))
            #expect(mine.words[2] == tag(nodeID(mine)))

            func forged(_ outsidePath: String, rightTag: Bool) throws -> Handle {
                let b = try Self.handle(outsidePath)
                let ino = try FileIO.stat(outsidePath).st_ino
                let layout = try #require(HandleLayout.allCases.first { $0.generation(in: BackingHandle(type: b.type, bytes: b.bytes), ino: UInt64(ino)) != nil })
                let generation = layout.generation(in: BackingHandle(type: b.type, bytes: b.bytes), ino: UInt64(ino))!
                let id = UInt64(generation) << 32 | UInt64(ino)
                return Handle(type: 0x81, words: [generation, UInt32(ino), rightTag ? tag(id) : tag(id) &+ 1])
            }
            for when in ["", " after forgetting"] {
                if !when.isEmpty { Self.dropCaches() }
                #expect(Self.read(m, try forged(place.outside + "/secret", rightTag: false)) == .failure(Errno(ESTALE, "")), "file\(when)")
                for right in [false, true] {
                    let listed = Self.list(m, try forged(place.outside + "/dir", rightTag: right))
                    #expect(listed.map { _ in 0 } == .failure(Errno(ESTALE, "")), "directory, right tag \(right)\(when): \(listed)")
                }
                // The mount's own root is reached by its own handle only.
                let top = try forged(place.top, rightTag: true)
                #expect(Self.list(m, top).map { _ in 0 } == .failure(Errno(ESTALE, "")), "the directory above the backing root\(when)")
            }
            #expect(Self.read(m, mine) == .success(Self.text("mine")))
        }
    }

    /// Without a handle key and unable to store one (read-only mount), the
    /// mount offers no export support and says so.
    @Test func readOnlyMountWithoutKeyHasNoExportSupport() throws {
        try Self.withPlace(.tmpDirectory, options: "ro") { m, place in
            #expect(m.log.contains("export support off"))
            #expect(getxattr(place.backing, StableHandles.keyAttribute, nil, 0) < 0 && errno == ENODATA)
        }
    }

    @Test func sipHashReferenceVector() {
        // The reference implementation's vector for key 00..0f and the 8-byte message 00..07.
        #expect(SipHash24.hash(key: (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908), 0x0706_0504_0302_0100) == 0x93f5_f579_9a93_2462)
    }

    @Test func layoutsRoundTrip() {
        let ext4 = HandleLayout.ino32Generation.handle(ino: 1234, generation: 0xdead_beef)
        #expect(ext4.bytes.count == 8 && HandleLayout.ino32Generation.generation(in: ext4, ino: 1234) == 0xdead_beef)
        #expect(HandleLayout.ino32Generation.generation(in: ext4, ino: 1235) == nil)
        #expect(HandleLayout.tmpfs.generation(in: ext4, ino: 1234) == nil)
        let tmpfs = HandleLayout.tmpfs.handle(ino: 7, generation: 99)
        #expect(tmpfs.bytes.count == 12 && HandleLayout.tmpfs.generation(in: tmpfs, ino: 7) == 99)
        #expect(HandleLayout.ino32Generation.generation(in: tmpfs, ino: 7) == nil)
        // Inode 1 with generation 0 would be the root's id; inode 0 is none.
        #expect(NodeID.stable(ino: 1, generation: 0) == nil && NodeID.stable(ino: 0, generation: 5) == nil)
        #expect(NodeID.stable(ino: 1, generation: 1) == 1 << 32 | 1)
        #expect(!NodeID.isStable(NodeID.transient(3)) && !NodeID.isStable(NodeID.root))
    }
}
