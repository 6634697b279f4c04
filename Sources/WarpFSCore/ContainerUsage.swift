#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpFSFormat

/// How one container stores its blocks, read from its headers alone (no
/// payload is read): for every block of the file that has a stored current
/// version, its encoding, the length of its payload (the codec's output) and
/// the logical bytes it holds; the blocks that read as zeros without a
/// payload are summed up. What `warpfs stats` adds up.
///
/// This is the one place that reads a container for space accounting: it
/// knows the format version's layout, everything built on it does not.
public struct ContainerUsage: Sendable, Equatable {
    /// One block's current version.
    public struct Block: Sendable, Equatable {
        /// Block number in the file.
        public let index: Int
        /// How the payload is stored (never `.zero`: those are holes).
        public let encoding: BlockEncoding
        /// Bytes of the payload: the codec's output (raw: the block without its trailing zeros).
        public let storedLength: Int
        /// Bytes of the file the block holds: the block size, less past the end of the file.
        public let logicalBytes: Int
        /// Bytes of the payload region the payload occupies in the format's
        /// unit of placement (version 3: its length; version 2: whole 4 KiB
        /// pages, 0 for a payload inline in the first page).
        public let footprint: Int
        /// The payload lies in the file's first page, beside the header
        /// copies and group 0's table (a small file then takes one page).
        public let inHeaderPage: Bool

        public init(index: Int, encoding: BlockEncoding, storedLength: Int, logicalBytes: Int, footprint: Int, inHeaderPage: Bool? = nil) {
            self.index = index; self.encoding = encoding; self.storedLength = storedLength
            self.logicalBytes = logicalBytes; self.footprint = footprint
            self.inHeaderPage = inHeaderPage ?? (footprint == 0 && storedLength > 0)
        }
    }

    /// The container's format version.
    public let formatVersion: Int
    public let blockSize: Int
    /// The file's size as applications see it.
    public let logicalSize: UInt64
    /// Blocks covering `logicalSize`.
    public let blockCount: Int
    /// Blocks with a stored current version, in order.
    public let stored: [Block]
    /// Blocks that read as zeros without a payload: stored as a hole
    /// (encoding zero) or with no valid version.
    public var holeBlocks: Int { blockCount - stored.count }
    /// The logical bytes of those blocks.
    public var holeLogicalBytes: UInt64 { logicalSize - stored.reduce(0) { $0 + UInt64($1.logicalBytes) } }
    /// Older versions still on disk beside a block's current one (a crash, or
    /// a file open for writing since the last sync), and their payload bytes.
    public let supersededVersions: Int
    public let supersededBytes: Int
    /// The file is packed (docs/FORMAT.md, "Packed small files"): its one
    /// block's payload is a record in the pack, not in its backing file
    /// (whatever container bytes a crash left there do not count).
    public let packed: PackReference?

    public init(formatVersion: Int, blockSize: Int, logicalSize: UInt64, stored: [Block], supersededVersions: Int = 0, supersededBytes: Int = 0,
                packed: PackReference? = nil) {
        self.formatVersion = formatVersion; self.blockSize = blockSize; self.logicalSize = logicalSize
        self.blockCount = Int((logicalSize + UInt64(blockSize) - 1) / UInt64(blockSize))
        self.stored = stored; self.supersededVersions = supersededVersions; self.supersededBytes = supersededBytes
        self.packed = packed
    }

    /// A packed file's usage, from its reference: one block stored in the
    /// payload's encoding (none for an empty payload: a hole), taking no
    /// place in the backing file (its footprint is in the pack).
    public init(packed ref: PackReference) {
        let stored = ref.hasRecord
            ? [Block(index: 0, encoding: ref.payloadEncoding, storedLength: ref.payloadLength, logicalBytes: Int(ref.logicalSize),
                     footprint: 0, inHeaderPage: false)]
            : []
        self.init(formatVersion: Int(ref.header.version), blockSize: ref.blockSize, logicalSize: ref.logicalSize, stored: stored, packed: ref)
    }

    /// O_NOATIME (not exported to Swift).
    public static let noAtime: Int32 = 0o1000000

    /// Reads the container open at `fd` (`name` for messages); nil for a
    /// plain file. Throws `FSError` (EIO) for a container with no valid
    /// header copy or one this build does not read, and for read errors.
    ///
    /// Format versions 2 and 3 (`BlockLayout` knows both): a block's current version is its valid slot with
    /// the highest generation (slot 0 on a tie, as the file system opens
    /// it); a block with no valid slot, or whose current version has
    /// encoding zero, is a hole. Slots of blocks past the logical size are
    /// not part of the file and are left out. Groups whose table is a hole
    /// in the backing file are skipped with `SEEK_DATA`, so a sparse file
    /// costs no reads.
    ///
    /// A packed file (one with a `user.warpfs.packed` reference) is read
    /// from its reference alone (`init(packed:)`); a reference that does
    /// not decode is an error (EIO).
    public static func read(fd: Int32, name: String) throws -> ContainerUsage? {
        if let ref = try CompressedFile.packReference(fd: fd, name: name) { return ContainerUsage(packed: ref) }
        // The header copies and group 0's slot table in one read (version 2's
        // table ends last: at 2048).
        let firstSpan = BlockLayout(blockSize: 4096, version: 2).tableOffset(group: 0) + BlockLayout.tableSize
        var first = [UInt8](repeating: 0, count: firstSpan)
        let n = try first.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, 0, "read header of \(name)") }
        let copies = first.withUnsafeBytes { HeaderCopies(UnsafeRawBufferPointer(rebasing: $0[0..<min(n, HeaderCopies.span)])) }
        let header: FileHeader
        switch copies.kind {
        case .plain: return nil
        case .damaged(let e): throw FSError(EIO, "\(name): damaged or unsupported WarpFS header (\(e.reason))")
        case .container(let h, _): header = h
        }
        let layout = BlockLayout(header)
        let bs = layout.blockSize
        let count = layout.blockCount(logicalSize: header.logicalSize)
        var blocks: [Block] = []
        var superseded = 0, supersededBytes = 0
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        var group = 0
        while group * BlockLayout.blocksPerGroup < count {
            let slots: SlotTable
            if group == 0 {
                let start = layout.tableOffset(group: 0)
                let end = max(start, min(n, start + BlockLayout.tableSize))
                slots = first.withUnsafeBytes {
                    SlotTable(UnsafeRawBufferPointer(rebasing: $0[start..<end]), group: 0, layout: layout)
                }
            } else {
                let next = lseek(fd, off_t(layout.tableOffset(group: group)), Int32(WD_SEEK_DATA))
                if next < 0 { break }       // ENXIO: nothing stored past here
                let g = max(group, layout.group(containing: Int(next)))
                if g != group { group = g; continue }
                let got = try table.withUnsafeMutableBytes {
                    try preadFully(fd, $0.baseAddress!, $0.count, layout.tableOffset(group: group), "read slot headers of \(name)")
                }
                slots = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<got]), group: group, layout: layout) }
            }
            for b in slots.blocks where b < count {
                let v0 = slots.header(block: b, 0), v1 = slots.header(block: b, 1)
                let current: SlotHeader?
                switch (v0, v1) {
                case (nil, nil): current = nil
                case (let a?, nil): current = a
                case (nil, let c?): current = c
                case (let a?, let c?):
                    current = a.generation >= c.generation ? a : c
                    superseded += 1
                    supersededBytes += (a.generation >= c.generation ? c : a).storedLength
                }
                guard let h = current, h.encoding != .zero else { continue }
                let logical = Int(min(UInt64(bs), header.logicalSize - UInt64(b) * UInt64(bs)))
                blocks.append(Block(index: b, encoding: h.encoding, storedLength: h.storedLength, logicalBytes: logical,
                                    footprint: layout.footprint(h).count,
                                    inHeaderPage: h.storedLength > 0 && layout.payloadOffset(block: b, slot: 0, header: h) + h.storedLength <= BlockLayout.pageSize))
            }
            group += 1
        }
        return ContainerUsage(formatVersion: Int(header.version), blockSize: bs, logicalSize: header.logicalSize, stored: blocks,
                              supersededVersions: superseded, supersededBytes: supersededBytes)
    }
}
