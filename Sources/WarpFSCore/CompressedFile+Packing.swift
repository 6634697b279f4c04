#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpFSFormat

// Packed small files: a one-block file whose payload lives in the backing
// directory's pack file (`PackStore`), its backing file empty but for a
// reference (`PackReference`, in the extended attribute
// `user.warpfs.packed`). Reading one, unpacking it before a change, and
// what a container must be to be packed.
//
// The reference is the truth: a backing file that has one is packed,
// whatever bytes it also holds (a crash between setting the reference and
// cutting the container off, or between writing the unpacked container and
// removing the reference: both hold the same data).

/// A packed file's reference and the pack that holds its record.
struct PackedSource {
    let reference: PackReference
    let store: PackStore
}

extension CompressedFile {
    /// The packed-file reference on the backing file at `fd`; nil when it
    /// has none. A reference that does not decode is an error (EIO): the
    /// file's data cannot be found, and it must not be shown as empty.
    public static func packReference(fd: Int32, name: String) throws -> PackReference? {
        var buf = [UInt8](repeating: 0, count: PackReference.size + 16)
        let n = buf.withUnsafeMutableBytes { fgetxattr(fd, PackReference.attributeName, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == ENODATA || errno == ENOTSUP { return nil }
            if errno == ERANGE { throw FSError(EIO, "\(name): damaged packed-file reference (longer than \(buf.count) bytes)") }
            throw FSError.last("read the packed-file reference of \(name)")
        }
        do {
            return try PackReference.decode(Array(buf[0..<n]))
        } catch {
            throw FSError(EIO, "\(name): damaged packed-file reference (\(error))")
        }
    }

    /// Opens a packed file: its header and block 0 come from the
    /// reference, its payload from the pack.
    public static func openPacked(fd: Int32, name: String, codec: BlockCodec, reference: PackReference,
                                  store: PackStore) -> CompressedFile {
        let f = CompressedFile(fd: fd, name: name, codec: codec, header: reference.header, copy: nil)
        f.adoptPacked(PackedSource(reference: reference, store: store))
        return f
    }

    /// The in-memory state of a packed file: one block (or none), its
    /// version in slot 0, durable.
    func adoptPacked(_ source: PackedSource) {
        let ref = source.reference
        packed = source
        header = ref.header
        layout = BlockLayout(header)
        size = ref.logicalSize
        headerDirty = false
        durableHeaderCopy = nil
        lastHeaderCopy = nil
        changedSinceSync.removeAll()
        entries = BlockIndex()
        entries.grow(to: layout.blockCount(logicalSize: size))
        if ref.hasRecord {
            var e = Entry()
            e.set(0, SlotHeader(encoding: ref.payloadEncoding, block: 0, generation: 1, storedLength: ref.payloadLength,
                                payloadChecksum: ref.payloadChecksum, offset: 0))
            e.current = 0
            e.durable = 0
            entries[0] = e
        }
        nextGeneration = 2
    }

    /// Whether the file is packed (not yet unpacked by a change).
    public var isPacked: Bool { packed != nil }

    /// The packed file's reference, while it is packed.
    public var packReference: PackReference? { packed?.reference }

    /// Reads a packed file's payload from the pack (for `readPayload`).
    func readPackedPayload(_ source: PackedSource, into buf: UnsafeMutableRawBufferPointer) -> FSError? {
        do {
            try source.store.read(source.reference, into: buf, name: name)
            return nil
        } catch let e as FSError {
            return e
        } catch {
            return FSError(EIO, "\(name): \(error)")
        }
    }

    /// Before the first change of a packed file: writes it out as a
    /// container of its own (header, block 0) and makes that durable, then
    /// removes the reference and makes that durable, then frees the record
    /// in the pack. A crash before the reference is gone leaves it packed
    /// (the container written is ignored and cut off later); a crash after
    /// leaves an orphaned record (space, found by `warpfs fsck`). Either way
    /// the data is what it was.
    func unpackIfPacked() throws {
        guard let source = packed else { return }
        let ref = source.reference
        guard fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY else {
            throw FSError(EROFS, "\(name): packed, and its backing file is read-only: it cannot be changed")
        }
        var payload = [UInt8](repeating: 0, count: ref.payloadLength)
        if ref.hasRecord { try payload.withUnsafeMutableBytes { try source.store.read(ref, into: $0, name: name) } }
        do {
            _ = try sys("truncate \(name) to unpack it") { ftruncate(fd, 0) }
            packed = nil
            entries = BlockIndex()
            entries.grow(to: layout.blockCount(logicalSize: size))
            try writeHeader()
            if ref.hasRecord { try payload.withUnsafeBytes { try store(block: 0, encoding: ref.payloadEncoding, payload: $0) } }
            _ = try sys("fdatasync \(name)") { fdatasync(fd) }
            durableHeaderCopy = lastHeaderCopy
            try dropStaleCopies()
            if fremovexattr(fd, PackReference.attributeName) != 0 && errno != ENODATA {
                throw FSError.last("remove the packed-file reference of \(name)")
            }
        } catch {
            // The reference still stands: the file stays packed, in memory
            // as on disk (the container written is ignored, and cut off at
            // the last close).
            adoptPacked(source)
            throw error
        }
        // The reference is gone: the container is the file now, whatever
        // follows. Its removal must be durable before the record is freed;
        // if it cannot be made so, the record stays (an orphan at worst).
        guard Glibc.fsync(fd) == 0 else {
            let e = FSError.last("fsync \(name) after unpacking it")
            Log.error("\(e.description); its old record in the pack stays until warpfs fsck --repair")
            return
        }
        do { try source.store.release(ref) } catch {
            Log.error("\(name): unpacked, but its old record in the pack could not be freed (warpfs fsck --repair frees it): \(error)")
        }
    }

    /// Whether the file, as it stands after its last close, qualifies for
    /// packing: format version 3, at most one block, everything stored, one
    /// version (the packer copies the payload into the pack and makes it
    /// durable there; the container itself need not be synced), a payload
    /// a pack page holds.
    public var mayBePacked: Bool {
        guard packed == nil, layout.version >= 3, size <= UInt64(layout.blockSize), entries.count <= 1, !hasUnstoredBlocks,
              !headerDirty, fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY else { return false }
        guard entries.count == 1 else { return true }
        let e = entries[0]
        return !e.hasStale && (e.newest?.storedLength ?? 0) <= PackPage.maxPayload
    }

    /// What packing a closed container takes from it, read from the backing
    /// file itself (not from any open state).
    public struct PackingInput {
        public let header: FileHeader
        /// The payload's encoding (`.zero` for an empty file or one of zeros).
        public let encoding: BlockEncoding
        public let payload: [UInt8]
        public let checksum: UInt32
        /// Extended attributes of the backing file besides WarpFS's change-time record.
        public let dropChangeTimeRecord: Bool
    }

    /// Reads the container at `fd` and says whether it can be packed: a
    /// version-3 container of at most one block, whose block has one valid
    /// version (not two: a sync is pending) with a payload a pack page holds
    /// and reads back intact, on a backing file with no extended attribute
    /// but WarpFS's change-time record (others would push the reference out
    /// of the inode, into a block of its own). Nil when it cannot.
    public static func packingInput(fd: Int32, name: String) throws -> PackingInput? {
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_nlink >= 1 else { return nil }
        var names = [CChar](repeating: 0, count: 256)
        let listed = flistxattr(fd, &names, names.count)
        var dropRecord = false
        if listed != 0 {
            guard listed > 0 else { return nil }
            let all = names[0..<listed].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
            guard all == [WarpFileSystem.changeTimeAttribute] else { return nil }
            dropRecord = true
        }
        guard case .container(let header, _) = try headerCopies(fd: fd, name: name).kind, header.version >= 3,
              header.logicalSize <= UInt64(header.blockSize) else { return nil }
        let layout = BlockLayout(header)
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        let n = try table.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, layout.tableOffset(group: 0), "read slot headers of \(name)") }
        let slots = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<n]), group: 0, layout: layout) }
        var found: SlotHeader?
        for b in slots.blocks {
            for s in 0..<2 {
                switch slots.slot(block: b, s) {
                case .empty: continue
                case .damaged: return nil
                case .valid(let h):
                    guard b == 0, found == nil, header.logicalSize > 0 else { return nil }
                    found = h
                }
            }
        }
        guard let h = found, h.storedLength > 0, h.encoding != .zero else {
            return PackingInput(header: header, encoding: .zero, payload: [], checksum: 0, dropChangeTimeRecord: dropRecord)
        }
        guard h.storedLength <= PackPage.maxPayload else { return nil }
        var payload = [UInt8](repeating: 0, count: h.storedLength)
        let got = try payload.withUnsafeMutableBytes {
            try preadFully(fd, $0.baseAddress!, h.storedLength, layout.payloadOffset(block: 0, slot: 0, header: h), "read \(name) block 0")
        }
        guard got == h.storedLength, payload.withUnsafeBytes({ crc32Checksum($0) }) == h.payloadChecksum else { return nil }
        return PackingInput(header: header, encoding: h.encoding, payload: payload, checksum: h.payloadChecksum, dropChangeTimeRecord: dropRecord)
    }
}
