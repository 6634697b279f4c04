#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

// Opening and recovery: what a backing file is, creating and opening a
// container, and rebuilding the block index from the slot headers after
// whatever a crash left (torn versions, versions past the end).

extension CompressedFile {
    /// What the first bytes of a backing file say it is.
    public enum Kind {
        case compressed(FileHeader)
        /// Packed into the backing directory's pack file (its backing file
        /// holds a reference, and no container that counts).
        case packed(PackReference)
        case plain
    }

    /// Classifies the file open at `fd`: a WarpFS container, or a plain file.
    /// A file with the magic but no valid header copy is an error (EIO),
    /// never silently shown as plain bytes. A packed-file reference comes
    /// first: it is the truth whatever else the file holds.
    public static func kind(fd: Int32, name: String) throws -> Kind {
        if let ref = try packReference(fd: fd, name: name) { return .packed(ref) }
        switch try headerCopies(fd: fd, name: name).kind {
        case .plain: return .plain
        case .container(let h, _): return .compressed(h)
        case .damaged(let error): throw FSError(EIO, "\(name): damaged WarpFS header (\(error))")
        }
    }

    /// The header copies at the start of the file open at `fd`.
    static func headerCopies(fd: Int32, name: String) throws -> HeaderCopies {
        var buf = [UInt8](repeating: 0, count: HeaderCopies.span)
        let n = try buf.withUnsafeMutableBytes { (b) throws -> Int in
            try preadFully(fd, b.baseAddress!, b.count, 0, "read header of \(name)")
        }
        return buf.withUnsafeBytes { HeaderCopies(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    /// Creates an empty container of format `version` in the (empty) file at
    /// `fd`, whose blocks are compressed at `level` (nil: the codec's; it
    /// must be one the encoding's algorithm has).
    public static func create(fd: Int32, name: String, codec: BlockCodec, blockSize: Int, encoding: BlockEncoding,
                              level: Int? = nil, version: UInt16 = FileHeader.version) throws -> CompressedFile {
        let h = FileHeader(version: version, blockSize: blockSize, encoding: encoding, level: UInt8(clamping: level ?? codec.level),
                           generation: 1, logicalSize: 0)
        let f = CompressedFile(fd: fd, name: name, codec: codec, header: h, copy: nil)
        try f.writeHeader()
        return f
    }

    /// Opens the container at `fd` and rebuilds the block index from the
    /// slot headers. `writerLockTimeout`: the backing file is shared with
    /// other hosts (`-o shared`): nothing is written, recovery included,
    /// before the file's cross-host writer lock is held (`beginChange`).
    public static func open(fd: Int32, name: String, codec: BlockCodec, writerLockTimeout: Double? = nil) throws -> CompressedFile {
        // Shared: nothing this host cached of the file may stand for what another host wrote.
        if writerLockTimeout != nil { _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) }
        let copies = try headerCopies(fd: fd, name: name)
        guard let decoded = copies.newest else {
            throw FSError(EIO, "\(name): damaged WarpFS header (\(copies.firstError))")
        }
        let f = CompressedFile(fd: fd, name: name, codec: codec, header: decoded.header, copy: decoded.copy)
        f.writerLockTimeout = writerLockTimeout
        try f.loadIndex()
        return f
    }

    func loadIndex() throws {
        let count = layout.blockCount(logicalSize: size)
        entries = BlockIndex()
        entries.grow(to: count)
        var maxGen = header.generation
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        var group = 0
        while group * BlockLayout.blocksPerGroup < count {
            // Groups with nothing stored are holes in the backing file: jump
            // to the group of the next data (a sparse file costs no reads).
            if group > 0 {
                let next = lseek(fd, off_t(layout.tableOffset(group: group)), Int32(WD_SEEK_DATA))
                if next < 0 { break }       // ENXIO: no data past here
                group = max(group, layout.group(containing: Int(next)))
                if group * BlockLayout.blocksPerGroup >= count { break }
            }
            let first = group * BlockLayout.blocksPerGroup
            let off = layout.tableOffset(group: group)
            let n = try table.withUnsafeMutableBytes { b in
                try preadFully(fd, b.baseAddress!, b.count, off, "read slot headers of \(name)")
            }
            let slots = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<n]), group: group, layout: layout) }
            for k in 0..<BlockLayout.blocksPerGroup where first + k < count {
                var e = Entry()
                for s in 0..<2 {
                    let h = slots.header(block: first + k, s)
                    e.set(s, h)
                    if let h { maxGen = max(maxGen, h.generation) }
                }
                switch (e.slot.0, e.slot.1) {
                case (nil, nil): e.current = nil
                case (_?, nil): e.current = 0
                case (nil, _?): e.current = 1
                case (let a?, let b?): e.current = a.generation >= b.generation ? 0 : 1; changedSinceSync.insert(first + k)
                }
                // Two versions: a crash came between a write and the sync that
                // drops the older one. The newer may be torn (its payload not
                // written, or written after its header); then the older, the
                // last durable version, is the block's content.
                if let cur = e.current, let other = e.header(1 - cur), !payloadIntact(block: first + k, slot: cur, header: e.header(cur)!),
                   payloadIntact(block: first + k, slot: 1 - cur, header: other) {
                    Log.error("\(name): block \(first + k): the newest version (generation \(e.header(cur)!.generation)) is torn; "
                        + "using the previous one (generation \(other.generation))")
                    e.current = 1 - cur      // the torn copy is dropped with the stale ones below
                }
                e.durable = e.current
                entries[first + k] = e
            }
            group += 1
        }
        nextGeneration = maxGen + 1
        // A backing file open read-only (a read-only backing file system) is
        // read as it is: nothing is placed in it, so nothing needs clearing.
        // Nor is a file shared with other hosts whose writer lock this one
        // does not hold: its writer may be in the middle of the protocol.
        guard fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY, writerLockTimeout == nil || holdsWriterLock else {
            changedSinceSync.removeAll()
            return
        }
        let pastEnd = try dropSlotsPastEnd(count: count)
        // What is on disk now is what the next writes must not overwrite:
        // make it durable, then drop older copies.
        if !changedSinceSync.isEmpty || pastEnd {
            _ = fdatasync(fd)
            try dropStaleCopies()
        }
    }

    /// Clears slots of blocks at or past the logical end: what a crash leaves
    /// when blocks were stored and the size covering them was not. They were
    /// never part of the file. Left on disk, placement (which sees only the
    /// index) would reuse their pages, and the file growing over them later
    /// would bring them back, damaged. True when something was cleared (the
    /// caller makes it durable before anything is placed).
    private func dropSlotsPastEnd(count: Int) throws -> Bool {
        let g = count / BlockLayout.blocksPerGroup
        var cleared = false
        // Groups wholly past the end: cut off.
        let beyond = layout.tableOffset(group: g + 1)
        var st = stat()
        if fstat(fd, &st) == 0, Int(st.st_size) > beyond, lseek(fd, off_t(beyond), Int32(WD_SEEK_DATA)) >= 0 {
            _ = try sys("truncate \(name) past its end") { ftruncate(fd, off_t(beyond)) }
            cleared = true
        }
        // The group holding the end: the slots of its blocks past it.
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        let n = try table.withUnsafeMutableBytes { b in
            try preadFully(fd, b.baseAddress!, b.count, layout.tableOffset(group: g), "read slot headers of \(name)")
        }
        let slots = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<n]), group: g, layout: layout) }
        let inUse = footprintsInUse(group: g, except: (-1, -1))
        for b in slots.blocks where b >= count {
            for s in 0..<2 {
                guard let h = slots.header(block: b, s) else { continue }
                try writeSlotHeader(nil, block: b, slot: s)
                for run in layout.punchablePages(of: layout.footprint(h), used: inUse, group: g) { punch(run.lowerBound, run.count) }
                cleared = true
            }
        }
        if cleared { Log.info("\(name): cleared block versions past the end of the file (left by a crash)") }
        return cleared
    }

    /// Whether the payload of a slot reads back with its checksum.
    private func payloadIntact(block b: Int, slot: Int, header h: SlotHeader) -> Bool {
        guard h.storedLength > 0 else { return true }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: h.storedLength, alignment: 16)
        defer { buf.deallocate() }
        return (try? readPayload(block: b, slot: slot, header: h, into: buf)) == nil
    }

    /// Reads a slot's payload into `buf` (at least `storedLength` bytes) and
    /// checks it: nil when intact, else why not, naming file and block.
    func readPayload(block b: Int, slot: Int, header h: SlotHeader, into buf: UnsafeMutableRawBufferPointer) throws -> FSError? {
        if let source = packed { return readPackedPayload(source, into: buf) }
        let n = try preadFully(fd, buf.baseAddress!, h.storedLength, layout.payloadOffset(block: b, slot: slot, header: h),
                               "read \(name) block \(b)")
        switch h.damage(ofPayload: UnsafeRawBufferPointer(buf), read: n) {
        case nil: return nil
        case .truncated(let n): return FSError(EIO, "\(name): block \(b) is truncated (\(n) of \(h.storedLength) bytes)")
        case .checksum(let stored, let read):
            return FSError(EIO, "\(name): block \(b) fails its checksum (stored 0x\(String(stored, radix: 16)), "
                + "read 0x\(String(read, radix: 16))): the backing file is damaged")
        }
    }

}
