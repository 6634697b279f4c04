#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
import WarpFSFormat

/// Data integrity on real mounts: a model checker, large and many files,
/// concurrency, remounts, space use and damage.
@Suite struct DataTests {
    /// Random writes, reads and truncates against an in-memory model, across
    /// block boundaries, with remounts in between; in containers of each
    /// format version (a version-2 file stays version 2 unless emptied).
    @Test(arguments: [UInt64(11), 12, 13], FileHeader.versions)
    func randomOperationsMatchAModel(seed: UInt64, version: UInt16) throws {
        try withMount(options: "block_size=16k,cache_blocks=8,\(formatOption(version))") { m in
            var r = Rng(seed)
            var model: [[UInt8]] = [[], [], []]
            let names = ["m0", "m1", "m2"]
            var fds = names.map { open(m.path($0), O_RDWR | O_CREAT | O_CLOEXEC, 0o644) }
            // An emptied container may change version (one of an older version is upgraded).
            var versions = [UInt16?](repeating: version, count: names.count)
            for step in 0..<1500 {
                let f = r.int(3)
                let fd = fds[f]
                switch r.int(10) {
                case 0...4:
                    let off = r.int(200_000)
                    let len = 1 + r.int(r.int(4) == 0 ? 70_000 : 3000)
                    let data = r.int(3) == 0 ? r.bytes(len) : r.int(2) == 0 ? [UInt8](repeating: 0, count: len) : r.text(len)
                    try FileIO.pwrite(fd, data, off)
                    if model[f].count < off + len { model[f] += [UInt8](repeating: 0, count: off + len - model[f].count) }
                    model[f].replaceSubrange(off..<(off + len), with: data)
                case 5...7:
                    let off = r.int(220_000)
                    let len = 1 + r.int(50_000)
                    let got = try FileIO.pread(fd, len, off)
                    let want = off >= model[f].count ? [] : Array(model[f][off..<min(model[f].count, off + len)])
                    #expect(got == want, "seed \(seed) step \(step): read \(len) at \(off) of \(names[f])")
                    if got != want { return }
                case 8:
                    let size = r.int(210_000)
                    #expect(ftruncate(fd, off_t(size)) == 0)
                    if size == 0 { versions[f] = nil }
                    if size < model[f].count { model[f].removeSubrange(size...) } else { model[f] += [UInt8](repeating: 0, count: size - model[f].count) }
                default:
                    if r.int(4) == 0 { #expect(fsync(fd) == 0) }
                    if r.int(10) == 0 {
                        for fd in fds { close(fd) }
                        try m.remount()
                        fds = names.map { open(m.path($0), O_RDWR, 0o644) }
                    }
                }
            }
            for (i, fd) in fds.enumerated() {
                #expect(try FileIO.stat(m.path(names[i])).st_size == model[i].count)
                #expect(try FileIO.pread(fd, model[i].count + 10, 0) == model[i])
                close(fd)
            }
            try m.remount()
            for i in 0..<3 { #expect(try FileIO.read(m.path(names[i])) == model[i]) }
            m.unmount()
            for i in 0..<3 where versions[i] != nil { #expect(try containerVersion(m.backingPath(names[i])) == versions[i], "\(names[i])") }
        }
    }

    @Test func sparseFileBeyondFourGiB() throws {
        try withMount { m in
            let p = m.path("huge")
            let fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            let far = (5 << 30) + 12345
            try FileIO.pwrite(fd, Array("tail".utf8), far)
            try FileIO.pwrite(fd, Array("head".utf8), 0)
            close(fd)
            #expect(try FileIO.stat(p).st_size == far + 4)
            let fd2 = open(p, O_RDONLY)
            #expect(try FileIO.pread(fd2, 4, far) == Array("tail".utf8))
            #expect(try FileIO.pread(fd2, 8, 0) == Array("head".utf8) + [0, 0, 0, 0])
            #expect(try FileIO.pread(fd2, 100, 3 << 30).allSatisfy { $0 == 0 })
            close(fd2)
            // The backing file holds little more than the two blocks.
            #expect(try FileIO.stat(m.backingPath("huge")).st_blocks * 512 < 1 << 20)
            try m.remount()
            #expect(try FileIO.stat(p).st_size == far + 4)
        }
    }

    /// A terabyte-sized sparse file costs neither memory nor time: the
    /// block index holds only stored blocks, and opening skips the holes.
    @Test func sparseTerabyteFile() throws {
        try withMount { m in
            let p = m.path("tera")
            let fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            let tera = 1 << 40
            #expect(ftruncate(fd, off_t(tera)) == 0)
            try FileIO.pwrite(fd, Array("end!".utf8), tera - 4)
            try FileIO.pwrite(fd, Array("start".utf8), 0)
            close(fd)
            try m.remount()
            let fd2 = open(p, O_RDWR)
            defer { close(fd2) }
            #expect(try FileIO.stat(p).st_size == tera)
            #expect(try FileIO.pread(fd2, 4, tera - 4) == Array("end!".utf8))
            #expect(try FileIO.pread(fd2, 5, 0) == Array("start".utf8))
            #expect(try FileIO.pread(fd2, 64, 1 << 39).allSatisfy { $0 == 0 })
            // Past the first block, the next data is the last block.
            #expect(lseek(fd2, 65536, Int32(WD_SEEK_DATA)) == off_t(tera - 65536))
            #expect(lseek(fd2, 0, Int32(WD_SEEK_HOLE)) == 65536)
            #expect(ftruncate(fd2, 10) == 0)
            #expect(try FileIO.pread(fd2, 100, 0) == Array("start".utf8) + [0, 0, 0, 0, 0])
            let hwm = peakResidentKiB(m.pid)
            #expect(hwm > 0 && hwm < 150 * 1024, "peak resident \(hwm) KiB")
        }
    }

    /// Directory entries are read in place: an entry from readdir(3) is only
    /// `d_reclen` bytes long, and copying `struct dirent`'s 256-byte `d_name`
    /// by value (through `pointee`) reads past it, which faulted the mount
    /// in READDIRPLUS when an entry ended a page of the stream's buffer
    /// (the fault needs that placement, so the rule is checked in the
    /// sources: every reader goes through `wd_dirent_name`).
    @Test func directoryEntryNamesAreReadInPlace() throws {
        let root = String(#filePath.dropLast("Tests/WarpFSTests/DataTests.swift".count))
        var offenders: [String] = []
        for top in ["Sources", "Tests"] {
            let out = runCommand(["/usr/bin/grep", "-rlF", "--include=*.swift", "pointee." + "d_name", root + top])
            offenders += out.output.split(separator: "\n").map(String.init)
        }
        #expect(offenders.isEmpty, "struct dirent's name copied by value in: \(offenders)")
        // The search did look at the sources: the readers that use the helper are found.
        let readers = runCommand(["/usr/bin/grep", "-rlF", "--include=*.swift", "wd_dirent_name(", root + "Sources"]).output
        #expect(readers.split(separator: "\n").count >= 6, "readers of directories found under \(root)Sources: \(readers)")
        // The helper reads an entry that ends right before an unmapped page.
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let map = mmap(nil, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(map, 2 * page) }
        #expect(mprotect(map + page, page, PROT_NONE) == 0)
        let nameOffset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
        let record = map + page - (nameOffset + 8)          // a name of 7 bytes and its NUL end the page
        (record + nameOffset).copyMemory(from: "entry-7\0", byteCount: 8)
        #expect(String(cString: wd_dirent_name(record.assumingMemoryBound(to: dirent.self))) == "entry-7")
    }

    @Test func thousandsOfSmallFiles() throws {
        try withMount { m in
            #expect(mkdir(m.path("many"), 0o755) == 0)
            for i in 0..<2000 { try FileIO.write(m.path("many/f\(i)"), Array("file number \(i)\n".utf8)) }
            #expect(try FileIO.list(m.path("many")).count == 2000)
            for i in stride(from: 0, to: 2000, by: 7) {
                #expect(String(decoding: try FileIO.read(m.path("many/f\(i)")), as: UTF8.self) == "file number \(i)\n")
            }
            try m.remount()
            for i in stride(from: 3, to: 2000, by: 11) {
                #expect(String(decoding: try FileIO.read(m.path("many/f\(i)")), as: UTF8.self) == "file number \(i)\n")
            }
        }
    }

    @Test func hundredsOfFilesOpenWithDataInFlight() throws {
        try withMount { m in
            var r = Rng(31)
            let data = r.text(200_000)
            var fds: [Int32] = []
            defer { for fd in fds { close(fd) } }
            for i in 0..<600 {
                let fd = open(m.path("open\(i)"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
                #expect(fd >= 0)
                fds.append(fd)
                try FileIO.pwrite(fd, data, i)
            }
            for (i, fd) in fds.enumerated() where i % 37 == 0 {
                #expect(try FileIO.pread(fd, data.count, i) == data)
            }
            for fd in fds { close(fd) }
            fds.removeAll()
            for i in stride(from: 0, to: 600, by: 53) {
                #expect(try FileIO.read(m.path("open\(i)")) == [UInt8](repeating: 0, count: i) + data)
            }
        }
    }

    /// Forty open files with 2 MiB each read back would cache 80 MiB of
    /// blocks; with an 8 MiB budget the mount stays far below that (190 MiB
    /// peak without a budget, 69 MiB with it, when measured).
    @Test func memoryStaysWithinTheBudget() throws {
        try withMount(options: "memory=8,no_keep_cache") { m in
            var r = Rng(41)
            let data = r.text(2 << 20)
            var fds: [Int32] = []
            defer { for fd in fds { close(fd) } }
            for i in 0..<40 {
                let fd = open(m.path("mem\(i)"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
                fds.append(fd)
                try FileIO.pwrite(fd, data, 0)
                #expect(fsync(fd) == 0)
            }
            for fd in fds { #expect(try FileIO.pread(fd, data.count, 0) == data) }
            usleep(500_000)  // the reclaimer runs every 200 ms
            let hwm = peakResidentKiB(m.pid)
            #expect(hwm > 0 && hwm < 120 * 1024, "peak resident \(hwm) KiB")
        }
    }

    @Test func concurrentWritersAndReaders() throws {
        try withMount { m in
            let failures = Atomic<Int>(0)
            let base = m.mountpoint
            threads(4) { t in
                var r = Rng(UInt64(100 + t))
                let data = r.text(400_000 + t * 1000)
                do {
                    try FileIO.write(base + "/w\(t)", data)
                    if try FileIO.read(base + "/w\(t)") != data { failures.add(1, ordering: .relaxed) }
                } catch { failures.add(1, ordering: .relaxed) }
            }
            var r = Rng(7)
            let shared = r.text(1 << 20)
            try FileIO.write(m.path("shared"), shared)
            try m.remount()  // cold cache: readers race to decompress
            threads(4) { t in
                let fd = open(base + "/shared", O_RDONLY)
                defer { close(fd) }
                var rr = Rng(UInt64(t))
                for _ in 0..<100 {
                    let off = rr.int(1 << 20), len = 1 + rr.int(100_000)
                    let got = (try? FileIO.pread(fd, len, off)) ?? []
                    if got != Array(shared[off..<min(shared.count, off + len)]) { failures.add(1, ordering: .relaxed) }
                }
            }
            #expect(failures.load(ordering: .relaxed) == 0)
        }
    }

    @Test(arguments: FileHeader.versions)
    func compressibleDataSavesSpaceIncompressibleIsStoredRaw(version: UInt16) throws {
        try withMount(options: formatOption(version)) { m in
            var r = Rng(9)
            try FileIO.write(m.path("text"), r.text(4 << 20))
            try FileIO.write(m.path("noise"), r.bytes(4 << 20))
            try FileIO.write(m.path("zeros"), [UInt8](repeating: 0, count: 4 << 20))
            let text = try FileIO.stat(m.backingPath("text")).st_blocks * 512
            let noise = try FileIO.stat(m.backingPath("noise")).st_blocks * 512
            let zeros = try FileIO.stat(m.backingPath("zeros")).st_blocks * 512
            #expect(text < (4 << 20) / 2)
            // Raw: about the data size plus headers, not more than 5% over.
            #expect(noise >= 4 << 20 && noise < (4 << 20) + (4 << 20) / 20)
            #expect(zeros < 64 << 10)
            // du through the mount shows the same real usage.
            #expect(try FileIO.stat(m.path("text")).st_blocks * 512 == text)
            #expect(try FileIO.stat(m.path("noise")).st_size == 4 << 20)
        }
    }

    /// Many small rewrites leave no allocated page that no live payload (or
    /// a header or table) uses, and cost little against a fresh copy. In
    /// version 3 a fresh copy packs its payloads byte by byte, while the
    /// rewritten file's payloads lie apart (wherever a free run was when
    /// each was written): each run of them may start and end in a page of
    /// its own, so the bound allows one page per block more there.
    @Test(arguments: FileHeader.versions)
    func rewritingDoesNotGrowTheBackingFile(version: UInt16) throws {
        try withMount(options: formatOption(version)) { m in
            var r = Rng(21)
            let data = r.text(2 << 20)
            try FileIO.write(m.path("re"), data)
            let first = try FileIO.stat(m.backingPath("re")).st_blocks
            for round in 0..<20 {
                let fd = open(m.path("re"), O_RDWR)
                for k in 0..<30 { try FileIO.pwrite(fd, r.text(5000), r.int(2 << 20 - 5000) + k) }
                if round % 3 == 0 { fsync(fd) }
                close(fd)
            }
            m.unmount()  // waits until the last release has been processed
            let after = try FileIO.stat(m.backingPath("re")).st_blocks
            #expect(try containerVersion(m.backingPath("re")) == version)
            let unused = try pagesNoLivePayloadUses(m.backingPath("re"))
            #expect(unused.isEmpty, "allocated pages no live payload, header or table uses: \(unused)")
            try m.start()
            // Against a fresh copy of the same final content: only a small, bounded overhead.
            try FileIO.write(m.path("fresh"), try FileIO.read(m.path("re")))
            let fresh = try FileIO.stat(m.backingPath("fresh")).st_blocks
            let apart = version == 2 ? 0 : (2 << 20) / (64 << 10) * BlockLayout.pageSize / 512
            #expect(after <= fresh + fresh / 20 + 16 + apart,
                    "rewritten: \(after * 512) bytes, fresh copy: \(fresh * 512) (first write \(first * 512))")
        }
    }

    /// Payloads written in order lie next to each other in the backing file
    /// (byte by byte in version 3, page by page in version 2), and rewrites
    /// of every compressibility never place two live payloads on the same
    /// bytes (checked on the slot headers while mounted).
    @Test(arguments: FileHeader.versions)
    func payloadsArePackedAndNeverOverlap(version: UInt16) throws {
        try withMount(options: "block_size=16k,\(formatOption(version))") { m in
            let bs = 16 << 10
            var r = Rng(77)
            var model = r.text(48 * bs)
            try FileIO.write(m.path("p"), model)
            m.unmount()
            let layout = try containerLayout(m.backingPath("p"))
            #expect(layout == BlockLayout(blockSize: bs, version: version))
            let fresh = try liveSlots(m.backingPath("p"), blockSize: bs)
            #expect(fresh.count == 48)
            for g in 0..<3 {
                let inGroup = fresh.filter { $0.block / 16 == g }.sorted { $0.block < $1.block }
                #expect(inGroup.first.map { layout.footprint($0.header).lowerBound } == 0, "group \(g) does not start at its region's start")
                for (a, b) in zip(inGroup, inGroup.dropFirst()) {
                    #expect(layout.footprint(a.header).upperBound == layout.footprint(b.header).lowerBound,
                            "blocks \(a.block) and \(b.block) are not adjacent")
                }
            }
            try m.start()
            let fd = open(m.path("p"), O_RDWR)
            for step in 0..<400 {
                let b = r.int(48)
                let data = r.int(3) == 0 ? r.bytes(bs) : r.int(2) == 0 ? r.text(bs) : r.text(1 + r.int(bs))
                try FileIO.pwrite(fd, data, b * bs)
                model.replaceSubrange((b * bs)..<(b * bs + data.count), with: data)
                if step % 7 == 0 { #expect(fsync(fd) == 0) }
                if step % 50 == 49 {
                    let slots = try liveSlots(m.backingPath("p"), blockSize: bs)
                    for g in 0..<3 {
                        let ranges = slots.filter { $0.block / 16 == g }.map { layout.footprint($0.header) }.filter { !$0.isEmpty }
                            .sorted { $0.lowerBound < $1.lowerBound }
                        for (x, y) in zip(ranges, ranges.dropFirst()) { #expect(x.upperBound <= y.lowerBound, "step \(step): \(x) overlaps \(y)") }
                        #expect(ranges.allSatisfy { $0.upperBound <= layout.regionSize })
                    }
                }
            }
            close(fd)
            try m.remount()
            #expect(try FileIO.read(m.path("p")) == model)
            m.unmount()
            #expect(try containerVersion(m.backingPath("p")) == version)
        }
    }

    @Test(arguments: FileHeader.versions)
    func aCorruptedBlockReadsAsEIOAndIsLogged(version: UInt16) throws {
        try withMount(options: "block_size=64k,\(formatOption(version))") { m in
            var r = Rng(5)
            let data = r.text(64 << 10 * 4)
            try FileIO.write(m.path("c"), data)
            m.unmount()
            // Flip a byte in the payload of block 2.
            let back = open(m.backingPath("c"), O_RDWR)
            let slots = try liveSlots(m.backingPath("c"), blockSize: 64 << 10)
            let two = try #require(slots.first { $0.block == 2 })
            let payload = try containerLayout(m.backingPath("c")).payloadOffset(block: 2, slot: two.slot, header: two.header)
            var b = try FileIO.pread(back, 1, payload + 100)
            b[0] ^= 0xFF
            try FileIO.pwrite(back, b, payload + 100)
            close(back)
            try m.start()
            let fd = open(m.path("c"), O_RDONLY)
            defer { close(fd) }
            #expect(try FileIO.pread(fd, 1000, 0) == Array(data[0..<1000]))
            var buf = [UInt8](repeating: 0, count: 1000)
            #expect(pread(fd, &buf, 1000, off_t(2 * (64 << 10) + 10)) == -1 && errno == EIO)
            #expect(try FileIO.pread(fd, 1000, 3 * (64 << 10)) == Array(data[(3 * (64 << 10))..<(3 * (64 << 10) + 1000)]))
            let log = m.log
            #expect(log.contains("c: block 2"), "log: \(log)")
        }
    }

    /// A crash between writing a block's new version and the sync that drops
    /// the old one can leave a newer slot whose payload is not what its
    /// header says (torn). Opening the file falls back to the older, durable
    /// version and drops the torn one.
    @Test(arguments: FileHeader.versions)
    func aTornNewerVersionFallsBackToTheDurableOne(version: UInt16) throws {
        try withMount(options: "block_size=64k,\(formatOption(version))") { m in
            var r = Rng(6)
            let data = r.text(64 << 10 * 3)
            try FileIO.write(m.path("t"), data)
            m.unmount()
            let layout = try containerLayout(m.backingPath("t"))
            #expect(layout.version == version)
            let old = try #require(try liveSlots(m.backingPath("t"), blockSize: 64 << 10).first { $0.block == 1 })
            // Its payload would lie far after the others (page 900 of the region).
            let torn = SlotHeader(encoding: old.header.encoding, block: 1, generation: old.header.generation + 100,
                                  storedLength: 5000, payloadChecksum: 0x1234_5678, offset: 900 * BlockLayout.pageSize)
            let back = open(m.backingPath("t"), O_RDWR)
            try FileIO.pwrite(back, encodedSlot(torn, layout), layout.slotHeaderOffset(block: 1, slot: 1 - old.slot))
            close(back)
            try m.start()
            #expect(try FileIO.read(m.path("t")) == data)
            #expect(m.log.contains("t: block 1: the newest version"), "log: \(m.log)")
            m.unmount()
            let after = try liveSlots(m.backingPath("t"), blockSize: 64 << 10).filter { $0.block == 1 }
            #expect(after.count == 1 && after.first?.header == old.header)
            try m.start()
        }
    }

    /// A crash after blocks were stored but before the size covering them
    /// was: their slots lie past the end. They are cleared when the file is
    /// opened, so growing the file later shows zeros or new data there,
    /// never the old version (or its pages reused by another block).
    @Test(arguments: FileHeader.versions)
    func versionsPastTheEndAreNotBroughtBackByGrowing(version: UInt16) throws {
        try withMount(options: "block_size=16k,\(formatOption(version))") { m in
            let bs = 16 << 10
            var r = Rng(14)
            let data = r.text(6 * bs)
            try FileIO.write(m.path("g"), data)
            m.unmount()
            // Block 9 of a six-block file, as a crash leaves it, and a table
            // with a version in group 1, wholly past the end.
            let layout = try containerLayout(m.backingPath("g"))
            #expect(layout.version == version)
            let stray = r.bytes(bs)
            let fd = open(m.backingPath("g"), O_RDWR)
            // Payloads at pages 200 and 10 of their groups' regions.
            for (block, page) in [(9, 200), (20, 10)] {
                let h = SlotHeader(encoding: .raw, block: UInt64(block), generation: 1000, storedLength: stray.count,
                                   payloadChecksum: stray.withUnsafeBytes { crc32Checksum($0) }, offset: page * BlockLayout.pageSize)
                try FileIO.pwrite(fd, stray, layout.payloadOffset(block: block, slot: 0, header: h))
                try FileIO.pwrite(fd, encodedSlot(h, layout), layout.slotHeaderOffset(block: block, slot: 0))
            }
            close(fd)
            try m.start()
            // Grow the file over block 9 and past block 20 without writing those blocks.
            var want = data
            let w = open(m.path("g"), O_RDWR)
            for b in [6, 7, 8, 10, 11, 12, 21] {
                let piece = r.text(bs)
                try FileIO.pwrite(w, piece, b * bs)
                if want.count < (b + 1) * bs { want += [UInt8](repeating: 0, count: (b + 1) * bs - want.count) }
                want.replaceSubrange((b * bs)..<((b + 1) * bs), with: piece)
            }
            #expect(fsync(w) == 0)
            close(w)
            try m.remount()
            #expect(try FileIO.read(m.path("g")) == want)
            #expect(m.log.contains("g: cleared block versions past the end"), "log: \(m.log)")
        }
    }

    @Test func existingPlainFilesAndConversion() throws {
        let root = makeTempDir()
        defer { removeTree(root) }
        let backing = root + "/plain"
        mkdir(backing, 0o755)
        var r = Rng(6)
        let text = r.text(500_000)
        try FileIO.write(backing + "/old.txt", text)
        try FileIO.write(backing + "/empty", [])
        let m = try TestMount(backing: backing)
        defer { m.close() }
        // A directory that existed before is readable and writable as it is.
        #expect(try FileIO.read(m.path("old.txt")) == text)
        let fd = open(m.path("old.txt"), O_WRONLY)
        try FileIO.pwrite(fd, Array("PLAIN".utf8), 0)
        close(fd)
        var expected = text
        expected.replaceSubrange(0..<5, with: Array("PLAIN".utf8))
        #expect(try FileIO.read(backing + "/old.txt") == expected)  // still plain in the backing dir
        m.unmount()
        // warpfs compress converts it; the mount shows the same bytes.
        let c = runCommand([warpfsBinary, "compress", backing])
        #expect(c.status == 0, "\(c.output)")
        #expect(try FileIO.read(backing + "/old.txt").prefix(8).elementsEqual(Array("WARPFS\r\n".utf8)))
        #expect(try FileIO.stat(backing + "/old.txt").st_blocks * 512 < 250_000)
        try m.start()
        #expect(try FileIO.read(m.path("old.txt")) == expected)
        #expect(try FileIO.read(m.path("empty")) == [])
        m.unmount()
        let d = runCommand([warpfsBinary, "decompress", backing])
        #expect(d.status == 0, "\(d.output)")
        #expect(try FileIO.read(backing + "/old.txt") == expected)
    }
}

/// Runs `body(0..<n)` on `n` threads and waits for all of them.
func threads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let ts = (0..<n).map { i in startThread { body(i) } }
    for t in ts { pthread_join(t, nil) }
}

/// Starts `body` on a new joinable thread.
func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable { let f: () -> Void; init(_ f: @escaping () -> Void) { self.f = f } }
    var t = pthread_t()
    let rc = pthread_create(&t, nil, { Unmanaged<Box>.fromOpaque($0!).takeRetainedValue().f(); return nil },
                            Unmanaged.passRetained(Box(body)).toOpaque())
    precondition(rc == 0, "pthread_create: \(rc)")
    return t
}

/// The valid slot headers of a container, read from the backing file
/// (decoded with `blockSize` and the format version its header states).
func liveSlots(_ path: String, blockSize: Int) throws -> [(block: Int, slot: Int, header: SlotHeader)] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw Errno(errno, path) }
    defer { close(fd) }
    let raw = try FileIO.pread(fd, HeaderCopies.span, 0)
    let header = try raw.withUnsafeBytes { try FileHeader.decodeNewest($0).header }
    let layout = BlockLayout(blockSize: blockSize, version: header.version)
    var out: [(Int, Int, SlotHeader)] = []
    for b in 0..<layout.blockCount(logicalSize: header.logicalSize) {
        for s in 0..<2 {
            let bytes = try FileIO.pread(fd, BlockLayout.slotHeaderSize, layout.slotHeaderOffset(block: b, slot: s))
            if let h = bytes.withUnsafeBytes({ SlotHeader.decode($0, block: b, layout: layout) }) { out.append((b, s, h)) }
        }
    }
    return out
}

/// The pages (backing-file page numbers) of the container at `path` that
/// hold data but that no live payload, header copy or slot table touches.
func pagesNoLivePayloadUses(_ path: String) throws -> [Int] {
    let layout = try containerLayout(path)
    let page = BlockLayout.pageSize
    var used: Set<Int> = [0]   // header copies, group 0's table (and inline payloads in version 2)
    func touch(_ r: Range<Int>) { if !r.isEmpty { used.formUnion((r.lowerBound / page)..<((r.upperBound + page - 1) / page)) } }
    for s in try liveSlots(path, blockSize: layout.blockSize) {
        let g = s.block / BlockLayout.blocksPerGroup
        touch(layout.tableOffset(group: g)..<(layout.tableOffset(group: g) + BlockLayout.tableSize))
        if s.header.isInline { continue }
        let base = layout.regionOffset(group: g)
        let fp = layout.footprint(s.header)
        touch((base + fp.lowerBound)..<(base + fp.upperBound))
    }
    return try dataExtents(path).flatMap { ($0.lowerBound / page)..<(($0.upperBound + page - 1) / page) }.filter { !used.contains($0) }
}

/// The layout (block size and format version) the newest valid header of
/// the container at `path` states.
func containerLayout(_ path: String) throws -> BlockLayout {
    let raw = try readBytes(path, HeaderCopies.span, at: 0)
    return BlockLayout(try raw.withUnsafeBytes { try FileHeader.decodeNewest($0).header })
}

/// The format version field (bytes 8..<10) of a backing file's first header copy.
func containerVersion(_ path: String) throws -> UInt16 {
    let raw = try readBytes(path, 10, at: 0)
    guard raw.count == 10 else { throw Errno(EINVAL, "\(path): \(raw.count) bytes, no header") }
    return UInt16(raw[8]) | UInt16(raw[9]) << 8
}

/// The mount options that make new containers of format `version` and keep
/// small files in containers of their own (not packed), for tests that
/// read or damage the container layout itself.
func formatOption(_ version: UInt16) -> String { "format_version=\(version),nopack" }

/// `h` as the 32 bytes a container of `layout` stores.
func encodedSlot(_ h: SlotHeader, _ layout: BlockLayout) -> [UInt8] {
    var raw = [UInt8](repeating: 0, count: BlockLayout.slotHeaderSize)
    raw.withUnsafeMutableBytes { h.encode(into: $0, layout: layout) }
    return raw
}
