#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
import WarpFSFormat

/// `warpfs fsck` on real backing directories: containers written through a
/// mount, then damaged in the backing files with the format's encoders, as
/// crashes and bad media leave them. The cases that look at the layout run
/// on containers of each format version (the mount's `format_version`);
/// offsets come from the container's own layout (`containerLayout`).
@Suite struct FsckTests {
    static let bs = 16 << 10

    /// 16 KiB blocks, new containers of format `version`.
    static func options(_ version: UInt16) -> String { "block_size=16k,\(formatOption(version))" }

    @Test(arguments: FileHeader.versions)
    func aCleanTreeIsClean(version: UInt16) throws {
        try withMount(options: FsckTests.options(version)) { m in
            var r = Rng(1)
            #expect(mkdir(m.path("dir"), 0o755) == 0)
            try FileIO.write(m.path("dir/text"), r.text(200_000))
            try FileIO.write(m.path("noise"), r.bytes(70_000))
            try FileIO.write(m.path("zeros"), [UInt8](repeating: 0, count: 50_000))
            try FileIO.write(m.path("small"), Array("small\n".utf8))
            try FileIO.write(m.path("empty"), [])
            let fd = open(m.path("noise"), O_RDWR)
            try FileIO.pwrite(fd, r.text(30_000), 5000)
            #expect(fsync(fd) == 0)
            #expect(ftruncate(fd, 40_000) == 0)
            close(fd)
            m.unmount()
            // Containers of their own (the options say nopack; a packed tree: PackFsckTests).
            for n in ["dir/text", "noise", "zeros", "small", "empty"] {
                #expect(try containerVersion(m.backingPath(n)) == version, "\(n)")
            }
            try FileIO.write(m.backingPath("plain.txt"), Array("not a container\n".utf8))
            #expect(symlink(m.backingPath("dir/text"), m.backingPath("link")) == 0)
            let check = fsck(m.backing)
            #expect(check.status == 0, "\(check.output)")
            // Blocks: 13 + 3 + 4 + 1 + 0.
            #expect(check.output.contains("5 files checked, 1 plain file skipped, 21 blocks checked, 0 problems found, 0 repaired"),
                    "\(check.output)")
        }
    }

    /// Each crash leftover --repair fixes, one file each: a stale older
    /// version, a torn newest version, a damaged header copy, a version
    /// past the end, loose pages, and a stale version whose pages another
    /// block's live payload uses (dropping it must not punch them).
    @Test(arguments: FileHeader.versions)
    func crashLeftoversAreFoundRepairedAndTheDurableContentKept(version: UInt16) throws {
        try withMount(options: FsckTests.options(version)) { m in
            let bs = FsckTests.bs
            let page = BlockLayout.pageSize
            var r = Rng(2)
            let names = ["stale", "torn", "header", "past", "loose", "shared"]
            var want: [String: [UInt8]] = [:]
            for n in names {
                want[n] = r.text(5 * bs + 1000)
                // shared: block 3 incompressible, so that its old payload
                // holds whole pages of its own in either version.
                if n == "shared" { want[n]!.replaceSubrange((3 * bs)..<(4 * bs), with: r.bytes(bs)) }
                try FileIO.write(m.path(n), want[n]!)
            }
            m.unmount()
            let layout = try containerLayout(m.backingPath("stale"))
            #expect(layout == BlockLayout(blockSize: bs, version: version))
            var blocksBefore: [String: Int] = [:]
            for n in names { blocksBefore[n] = Int(try FileIO.stat(m.backingPath(n)).st_blocks) }

            // stale: a newer, intact version of block 1 in its other slot (the
            // sync that drops the older one never came). It is the content.
            let s1 = try slot(m.backingPath("stale"), block: 1)
            let newer = r.bytes(bs)
            try writeVersion(m.backingPath("stale"), block: 1, slot: 1 - s1.slot, generation: s1.header.generation + 50, offset: 200 * page, payload: newer)
            want["stale"]!.replaceSubrange(bs..<(2 * bs), with: newer)

            // torn: a newer header for block 2 whose payload never reached the disk.
            let t2 = try slot(m.backingPath("torn"), block: 2)
            try writeHeader(m.backingPath("torn"), block: 2, slot: 1 - t2.slot,
                            SlotHeader(encoding: .deflate, block: 2, generation: t2.header.generation + 50, storedLength: 5000,
                                       payloadChecksum: 0x1234_5678, offset: 200 * page))

            // header: the older header copy damaged.
            let copies = try headerCopies(m.backingPath("header"))
            let a = try #require(copies[0]), b = try #require(copies[1])
            let older = a.generation < b.generation ? 0 : 1
            // A byte of the copy the checksum covers (past the fields).
            try FileIO.flipByte(m.backingPath("header"), at: layout.headerCopyOffsets[older] + 40)

            // past: a valid version of block 9 in a six-block file.
            try writeVersion(m.backingPath("past"), block: 9, slot: 0, generation: 999, offset: 220 * page, payload: r.bytes(bs))

            // loose: two pages of the region (whole pages of the backing
            // file, about page 230 of the region) that no slot refers to.
            let loosePages = (layout.regionOffset(group: 0) + 230 * page) / page * page
            let loose = open(m.backingPath("loose"), O_RDWR)
            try FileIO.pwrite(loose, r.bytes(2 * page), loosePages)
            close(loose)

            // shared: block 3 gets a newer intact version elsewhere, and its
            // older slot is made to point at block 2's payload (same bytes,
            // so it is intact too). Dropping the older must keep block 2's pages;
            // block 3's own old pages are left referring to nothing.
            let sh2 = try slot(m.backingPath("shared"), block: 2)
            let sh3 = try slot(m.backingPath("shared"), block: 3)
            var alias = sh2.header
            alias.block = 3
            alias.generation = sh3.header.generation
            try writeHeader(m.backingPath("shared"), block: 3, slot: sh3.slot, alias)
            let block3 = r.bytes(bs)
            try writeVersion(m.backingPath("shared"), block: 3, slot: 1 - sh3.slot, generation: sh3.header.generation + 50, offset: 240 * page,
                             payload: block3)
            want["shared"]!.replaceSubrange((3 * bs)..<(4 * bs), with: block3)

            let found = fsck(m.backing)
            #expect(found.status == 4, "\(found.output)")
            #expect(found.output.contains("6 files checked, 0 plain files skipped, 36 blocks checked, 7 problems found, 0 repaired"),
                    "\(found.output)")
            for line in ["stale: block 1 has two valid versions", "torn: block 2: the newest version",
                         "header: header copy \(older == 0 ? "A" : "B") is damaged (bad checksum)",
                         "past: block 9 is past the end of the file",
                         "loose: group 0 (blocks 0-15): 2 allocated pages (offset \(loosePages)..<\(loosePages + 2 * page))",
                         "shared: block 3 has two valid versions", "shared: group 0 (blocks 0-15): "] {
                #expect(found.output.contains(line), "missing '\(line)' in:\n\(found.output)")
            }
            #expect(found.output.contains("its pages are shared with another valid slot"), "\(found.output)")

            let repaired = fsck(m.backing, "--repair")
            #expect(repaired.status == 1, "\(repaired.output)")
            #expect(repaired.output.contains("7 problems found, 7 repaired"), "\(repaired.output)")
            #expect(repaired.output.contains("stale: block 1 has two valid versions") && repaired.output.contains("repaired: kept generation"))
            let again = fsck(m.backing)
            #expect(again.status == 0, "\(again.output)")

            // What stays is what the file system read before the repair, minus the waste.
            #expect(try liveSlots(m.backingPath("stale"), blockSize: bs).count == 6)
            #expect(try headerCopies(m.backingPath("header")).allSatisfy { $0 != nil })
            #expect(try readBytes(m.backingPath("past"), 32, at: layout.slotHeaderOffset(block: 9, slot: 0)).allSatisfy { $0 == 0 })
            #expect(Int(try FileIO.stat(m.backingPath("past")).st_blocks) == blocksBefore["past"]!)
            #expect(Int(try FileIO.stat(m.backingPath("loose")).st_blocks) == blocksBefore["loose"]!)
            try m.start()
            for n in names { #expect(try FileIO.read(m.path(n)) == want[n]!, "\(n) reads back differently after the repair") }
            #expect(!m.log.contains("is torn"), "\(m.log)")
        }
    }

    /// A newer version that passes its checksum but does not decompress is
    /// not what a crash leaves: the file system reads it (EIO), so fsck
    /// reports it and --repair does not bring the older version back.
    @Test(arguments: FileHeader.versions)
    func aNewerVersionThatDoesNotDecompressIsNotTakenForTorn(version: UInt16) throws {
        try withMount(options: FsckTests.options(version)) { m in
            var r = Rng(12)
            let data = r.text(4 * FsckTests.bs)
            try FileIO.write(m.path("d"), data)
            m.unmount()
            let s1 = try slot(m.backingPath("d"), block: 1)
            try writeVersion(m.backingPath("d"), block: 1, slot: 1 - s1.slot, generation: s1.header.generation + 50,
                             offset: 200 * BlockLayout.pageSize, payload: r.bytes(3000), encoding: .deflate)
            let before = try FileIO.read(m.backingPath("d"))
            let check = fsck(m.backing)
            #expect(check.status == 4 && check.output.contains("d: block 1") && check.output.contains("passes its checksum"), "\(check.output)")
            let repair = fsck(m.backing, "--repair")
            #expect(repair.status == 4, "\(repair.output)")
            #expect(try FileIO.read(m.backingPath("d")) == before)
            try m.start()
            let fd = open(m.path("d"), O_RDONLY)
            defer { close(fd) }
            var buf = [UInt8](repeating: 0, count: 100)
            #expect(pread(fd, &buf, 100, off_t(FsckTests.bs + 10)) == -1 && errno == EIO)
            #expect(try FileIO.pread(fd, 100, 0) == Array(data[0..<100]))
        }
    }

    /// One flipped bit in copy A's magic: the file is still a container
    /// (copy B, where the version puts it, vouches for it), fsck reports
    /// copy A and rewrites it.
    @Test(arguments: FileHeader.versions)
    func aFlippedMagicIsRepairedFromCopyB(version: UInt16) throws {
        try withMount(options: FsckTests.options(version)) { m in
            var r = Rng(9)
            let data = r.text(100_000)
            try FileIO.write(m.path("x"), data)
            m.unmount()
            try flipBit(m.backingPath("x"), offset: 3, bit: 2)
            let before = fsck(m.backing)
            #expect(before.status == 4 && before.output.contains("x: header copy A is damaged"), "\(before.output)")
            #expect(fsck(m.backing, "--repair").status == 1)
            #expect(fsck(m.backing).status == 0)
            #expect(try FileIO.read(m.backingPath("x")).prefix(8) == ArraySlice(Array("WARPFS\r\n".utf8)))
            #expect(try containerVersion(m.backingPath("x")) == version)
            try m.start()
            #expect(try FileIO.read(m.path("x")) == data)
        }
    }

    /// A block whose only version is damaged (checksum, or a payload that
    /// passes its checksum and does not decompress to a block), and two
    /// blocks whose payloads overlap: reported with file and block, left as
    /// they are by --repair (exit 4 both times), the rest of the file readable.
    @Test(arguments: FileHeader.versions)
    func damageBeyondRepairIsReportedAndLeftAlone(version: UInt16) throws {
        try withMount(options: FsckTests.options(version)) { m in
            let bs = FsckTests.bs
            var r = Rng(3)
            var want: [String: [UInt8]] = [:]
            for n in ["bad-crc", "bad-stream", "overlap"] {
                want[n] = r.text(6 * bs)
                try FileIO.write(m.path(n), want[n]!)
            }
            m.unmount()
            let layout = try containerLayout(m.backingPath("bad-crc"))
            #expect(layout == BlockLayout(blockSize: bs, version: version))
            // bad-crc: one byte of block 2's payload flipped.
            let c2 = try slot(m.backingPath("bad-crc"), block: 2)
            try FileIO.flipByte(m.backingPath("bad-crc"), at: layout.payloadOffset(block: 2, slot: c2.slot, header: c2.header) + 100)
            // bad-stream: block 4's payload cut to half, with a checksum that
            // matches the half: it passes the checksum, not the decompression.
            let s4 = try slot(m.backingPath("bad-stream"), block: 4)
            #expect(s4.header.encoding == .deflate && s4.header.storedLength > 200)
            var cut = s4.header
            cut.storedLength /= 2
            let fd = open(m.backingPath("bad-stream"), O_RDONLY)
            let half = try FileIO.pread(fd, cut.storedLength, layout.payloadOffset(block: 4, slot: s4.slot, header: s4.header))
            close(fd)
            cut.payloadChecksum = half.withUnsafeBytes { crc32Checksum($0) }
            try writeHeader(m.backingPath("bad-stream"), block: 4, slot: s4.slot, cut)
            // overlap: block 5's only version points at block 4's payload.
            let o4 = try slot(m.backingPath("overlap"), block: 4)
            let o5 = try slot(m.backingPath("overlap"), block: 5)
            var moved = o4.header
            moved.block = 5
            moved.generation = o5.header.generation
            try writeHeader(m.backingPath("overlap"), block: 5, slot: o5.slot, moved)
            var snapshot: [String: [UInt8]] = [:]
            for n in want.keys { snapshot[n] = try FileIO.read(m.backingPath(n)) }

            for args in [[], ["--repair"]] {
                let out = fsck(m.backing, args)
                #expect(out.status == 4, "\(args): \(out.output)")
                #expect(out.output.contains("bad-crc: block 2 is damaged: its only version"), "\(out.output)")
                #expect(out.output.contains("fails its checksum"), "\(out.output)")
                #expect(out.output.contains("bad-stream: block 4 is damaged: its only version"), "\(out.output)")
                #expect(out.output.contains("decompresses to") || out.output.contains("cannot be decompressed"), "\(out.output)")
                let bytes = layout.footprint(o4.header)
                #expect(out.output.contains("overlap: block 4 (slot \(o4.slot), bytes \(bytes.lowerBound)..<\(bytes.upperBound)) and block 5")
                        && out.output.contains("overlap in group 0's region"), "\(out.output)")
                #expect(out.output.contains("cannot be repaired"), "\(out.output)")
                #expect(!out.output.contains("repaired: "), "\(out.output)")
            }
            for n in want.keys { #expect(try FileIO.read(m.backingPath(n)) == snapshot[n]!, "\(n) was changed by --repair") }

            try m.start()
            for (n, bad) in [("bad-crc", 2), ("bad-stream", 4)] {
                let fd = open(m.path(n), O_RDONLY)
                defer { close(fd) }
                for b in 0..<6 where b != bad {
                    #expect(try FileIO.pread(fd, bs, b * bs) == Array(want[n]![(b * bs)..<((b + 1) * bs)]), "\(n) block \(b)")
                }
                var buf = [UInt8](repeating: 0, count: 100)
                #expect(pread(fd, &buf, 100, off_t(bad * bs)) == -1 && errno == EIO, "\(n) block \(bad)")
            }
        }
    }

    @Test func repairRefusesAMountedBackingDirectory() throws {
        try withMount { m in
            try FileIO.write(m.path("f"), Array("data\n".utf8))
            #expect(mkdir(m.path("sub"), 0o755) == 0)
            #expect(symlink(m.backing, m.root + "/alias") == 0)
            for dir in [m.backing, m.backing + "/sub", m.root + "/alias", m.root] {
                let refused = fsck(dir, "--repair")
                #expect(refused.status == 8, "\(dir): \(refused.output)")
                #expect(refused.output.contains("unmount it before --repair") && refused.output.contains(m.mountpoint), "\(refused.output)")
            }
            let checked = fsck(m.backing)
            #expect(checked.output.contains("warning") && checked.output.contains("mount at '\(m.mountpoint)'"), "\(checked.output)")
            #expect(checked.output.contains("1 file checked"), "\(checked.output)")
            #expect(try FileIO.read(m.path("f")) == Array("data\n".utf8))
            // A sibling directory that is not mounted is not refused.
            let other = m.root + "/other"
            #expect(mkdir(other, 0o755) == 0)
            #expect(fsck(other, "--repair").status == 0)
        }
    }

    @Test func badCommandLinesAndProgressOnStandardError() throws {
        let root = makeTempDir("warpfs-fsck")
        defer { removeTree(root) }
        let none = runCommand([warpfsBinary, "fsck"])
        #expect(none.status == 16 && none.output.contains("<backing>"), "\(none.output)")
        let typo = runCommand([warpfsBinary, "fsck", root, "--repiar"])
        #expect(typo.status == 16 && typo.output.contains("--repiar"), "\(typo.output)")
        let progress = runCommand([warpfsBinary, "fsck", root, "--progress", "sometimes"])
        #expect(progress.status == 16 && progress.output.contains("--progress") && progress.output.contains("sometimes"), "\(progress.output)")
        let two = runCommand([warpfsBinary, "fsck", root, root])
        #expect(two.status == 16, "\(two.output)")
        let missing = runCommand([warpfsBinary, "fsck", root + "/nope"])
        #expect(missing.status == 8 && missing.output.contains(root + "/nope"), "\(missing.output)")
        try FileIO.write(root + "/file", Array("x".utf8))
        let file = runCommand([warpfsBinary, "fsck", root + "/file"])
        #expect(file.status == 8 && file.output.contains("not a directory"), "\(file.output)")
        let help = runCommand([warpfsBinary, "fsck", "--help"])
        #expect(help.status == 0 && help.output.contains("--repair") && help.output.contains("Exit status"), "\(help.output)")

        // The bar goes to standard error only; standard output is the report.
        var r = Rng(4)
        try FileIO.write(root + "/data", r.text(300_000))
        #expect(runCommand([warpfsBinary, "compress", root + "/data"]).status == 0)
        let out = runCommand(["/bin/sh", "-c", "\"$0\" fsck \"$1\" --progress always 2>/dev/null", warpfsBinary, root])
        #expect(out.status == 0 && out.output == "1 file checked, 1 plain file skipped, 5 blocks checked, 0 problems found, 0 repaired\n",
                "\(out.output)")
        let err = runCommand(["/bin/sh", "-c", "\"$0\" fsck \"$1\" --progress always 2>&1 >/dev/null", warpfsBinary, root])
        #expect(err.output.contains("%") && err.output.contains("MiB"), "\(err.output)")
    }

    // MARK: Helpers

    private func fsck(_ backing: String, _ extra: String...) -> (status: Int32, output: String) {
        fsck(backing, extra)
    }

    private func fsck(_ backing: String, _ extra: [String]) -> (status: Int32, output: String) {
        runCommand([warpfsBinary, "fsck", backing, "--progress", "never"] + extra)
    }

    /// The single valid slot of `block`.
    private func slot(_ path: String, block: Int) throws -> (block: Int, slot: Int, header: SlotHeader) {
        let all = try liveSlots(path, blockSize: FsckTests.bs).filter { $0.block == block }
        try #require(all.count == 1, "\(path) block \(block) has \(all.count) valid slots")
        return all[0]
    }

    /// Writes `h` as the slot header of `block`'s `slot`, encoded for the container's version.
    private func writeHeader(_ path: String, block: Int, slot: Int, _ h: SlotHeader) throws {
        let layout = try containerLayout(path)
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw Errno(errno, path) }
        defer { close(fd) }
        try FileIO.pwrite(fd, encodedSlot(h, layout), layout.slotHeaderOffset(block: block, slot: slot))
    }

    /// Writes a raw payload at byte `offset` of the block's group region
    /// (a multiple of 4096, for version 2), then a valid header for it.
    private func writeVersion(_ path: String, block: Int, slot: Int, generation: UInt64, offset: Int, payload: [UInt8],
                              encoding: BlockEncoding = .raw) throws {
        let h = SlotHeader(encoding: encoding, block: UInt64(block), generation: generation, storedLength: payload.count,
                           payloadChecksum: payload.withUnsafeBytes { crc32Checksum($0) }, offset: offset)
        let layout = try containerLayout(path)
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw Errno(errno, path) }
        try FileIO.pwrite(fd, payload, layout.payloadOffset(block: block, slot: slot, header: h))
        close(fd)
        try writeHeader(path, block: block, slot: slot, h)
    }


    /// Copy A and copy B of the container's header (nil: not a valid copy).
    private func headerCopies(_ path: String) throws -> [FileHeader?] {
        let raw = try readBytes(path, HeaderCopies.span, at: 0)
        return raw.withUnsafeBytes { HeaderCopies($0) }.copies.map { if case .valid(let h) = $0 { h } else { nil } }
    }
}
