#if canImport(Glibc)
import Glibc
#endif
import Testing
import WarpFSCore
import WarpFSFormat

/// `ContainerUsage.read` on containers built byte by byte with the
/// format's encoders (version 2, with its inline payloads and pages; the
/// mounts of `StatsCommandTests` make version-3 ones): which version of a
/// block counts, holes, the last block's logical bytes, slots past the end,
/// sparse groups.
@Suite struct ContainerUsageTests {
    static let bs = 16 << 10
    let layout = BlockLayout(blockSize: ContainerUsageTests.bs, version: 2)

    /// A backing file in a fresh directory, removed by `done`.
    private final class Scratch {
        let dir = makeTempDir("warpfs-usage")
        var path: String { dir + "/f" }
        let fd: Int32
        init() { fd = open(dir + "/f", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644) }
        func done() { close(fd); removeTree(dir) }
    }

    private func header(_ f: Scratch, logicalSize: UInt64, copy: Int = 0, generation: UInt64 = 1) throws {
        var raw = [UInt8](repeating: 0, count: FileHeader.size(version: 2))
        raw.withUnsafeMutableBytes {
            FileHeader(version: 2, blockSize: Self.bs, encoding: .deflate, level: 1, generation: generation, logicalSize: logicalSize).encode(into: $0)
        }
        try FileIO.pwrite(f.fd, raw, layout.headerCopyOffsets[copy])
    }

    private func slot(_ f: Scratch, block: Int, slot: Int, _ encoding: BlockEncoding, length: Int, generation: UInt64, page: Int = 0,
                      inline: Bool = false) throws {
        let h = SlotHeader(encoding: encoding, isInline: inline, block: UInt64(block), generation: generation, storedLength: length,
                           payloadChecksum: 0, offset: page * BlockLayout.pageSize)
        var raw = [UInt8](repeating: 0, count: BlockLayout.slotHeaderSize)
        raw.withUnsafeMutableBytes { h.encode(into: $0, layout: layout) }
        try FileIO.pwrite(f.fd, raw, layout.slotHeaderOffset(block: block, slot: slot))
        if length > 0 && !inline {
            try FileIO.pwrite(f.fd, [UInt8](repeating: 7, count: length), layout.regionOffset(group: block / 16) + page * BlockLayout.pageSize)
        }
    }

    @Test func aPlainFileIsNotAContainer() throws {
        let f = Scratch()
        defer { f.done() }
        try FileIO.pwrite(f.fd, Array("just text\n".utf8), 0)
        #expect(try ContainerUsage.read(fd: f.fd, name: "f") == nil)
        let empty = Scratch()
        defer { empty.done() }
        #expect(try ContainerUsage.read(fd: empty.fd, name: "empty") == nil)
    }

    @Test func theNewestValidVersionCountsAndHolesAreSummed() throws {
        let f = Scratch()
        defer { f.done() }
        let size = UInt64(5 * Self.bs + 1000)       // 6 blocks, the last holding 1000 bytes
        try header(f, logicalSize: size)
        try slot(f, block: 0, slot: 0, .deflate, length: 900, generation: 2, inline: true)
        try slot(f, block: 1, slot: 0, .raw, length: 9000, generation: 3, page: 0)
        try slot(f, block: 1, slot: 1, .zstd, length: 5000, generation: 9, page: 3)      // newer: counts
        try slot(f, block: 2, slot: 1, .lz4, length: 4097, generation: 4, page: 5)
        try slot(f, block: 2, slot: 0, .gzip, length: 100, generation: 2, page: 7)       // older: superseded
        try slot(f, block: 3, slot: 0, .zero, length: 0, generation: 5)                    // a hole
        // block 4: no slot (a hole); block 5: the short last block.
        try slot(f, block: 5, slot: 0, .zlib, length: 300, generation: 6, page: 8)
        try slot(f, block: 7, slot: 0, .raw, length: 4096, generation: 7, page: 9)         // past the end: not the file's
        // A damaged slot header is no version.
        try FileIO.pwrite(f.fd, [1, 2, 3], layout.slotHeaderOffset(block: 4, slot: 1))

        let u = try #require(try ContainerUsage.read(fd: f.fd, name: "f"))
        #expect(u.formatVersion == 2 && u.blockSize == Self.bs && u.logicalSize == size && u.blockCount == 6)
        let bs = Self.bs
        #expect(u.stored == [
            .init(index: 0, encoding: .deflate, storedLength: 900, logicalBytes: bs, footprint: 0),
            .init(index: 1, encoding: .zstd, storedLength: 5000, logicalBytes: bs, footprint: 8192),
            .init(index: 2, encoding: .lz4, storedLength: 4097, logicalBytes: bs, footprint: 8192),
            .init(index: 5, encoding: .zlib, storedLength: 300, logicalBytes: 1000, footprint: 4096),
        ])
        #expect(u.holeBlocks == 2 && u.holeLogicalBytes == UInt64(2 * bs))
        #expect(u.supersededVersions == 2 && u.supersededBytes == 9000 + 100)
    }

    @Test func theNewerHeaderCopyGivesTheSize() throws {
        let f = Scratch()
        defer { f.done() }
        try header(f, logicalSize: UInt64(Self.bs), copy: 0, generation: 1)
        try header(f, logicalSize: 3, copy: 1, generation: 2)
        try slot(f, block: 0, slot: 0, .raw, length: 3, generation: 3, inline: true)
        try slot(f, block: 1, slot: 0, .raw, length: 3, generation: 3, page: 1)
        let u = try #require(try ContainerUsage.read(fd: f.fd, name: "f"))
        #expect(u.blockCount == 1 && u.stored == [.init(index: 0, encoding: .raw, storedLength: 3, logicalBytes: 3, footprint: 0)])
    }

    /// Groups whose tables are holes are skipped; later groups still count.
    @Test func sparseGroupsAreSkipped() throws {
        let f = Scratch()
        defer { f.done() }
        let size = UInt64(100 * Self.bs)       // groups 0..6
        try header(f, logicalSize: size)
        try slot(f, block: 50, slot: 1, .deflate, length: 2000, generation: 2, page: 4)     // group 3
        try slot(f, block: 99, slot: 0, .raw, length: Self.bs, generation: 3, page: 0)      // group 6
        let u = try #require(try ContainerUsage.read(fd: f.fd, name: "f"))
        #expect(u.stored.map(\.index) == [50, 99])
        #expect(u.stored.map(\.footprint) == [4096, Self.bs])
        #expect(u.holeBlocks == 98 && u.holeLogicalBytes == UInt64(98 * Self.bs))
    }

    @Test func aDamagedHeaderIsAnError() throws {
        let f = Scratch()
        defer { f.done() }
        try header(f, logicalSize: 10)
        try FileIO.pwrite(f.fd, [0xFF], 40)
        #expect(throws: FSError.self) { try ContainerUsage.read(fd: f.fd, name: "f") }
        // A format version this build does not know is refused the same way, naming the version.
        var v9 = [UInt8](repeating: 0, count: 512)
        v9.withUnsafeMutableBytes { FileHeader(version: 2, blockSize: Self.bs, encoding: .zstd, level: 1, generation: 1, logicalSize: 10).encode(into: $0) }
        v9[8] = 9
        v9.withUnsafeMutableBytes { b in
            let crc = crc32Checksum(UnsafeRawBufferPointer(rebasing: b[0..<60]))
            b.storeBytes(of: crc.littleEndian, toByteOffset: 60, as: UInt32.self)
        }
        try FileIO.pwrite(f.fd, v9, 0)
        do {
            _ = try ContainerUsage.read(fd: f.fd, name: "f")
            Issue.record("version 9 read")
        } catch {
            #expect("\(error)".contains("format version 9"), "\(error)")
        }
    }
}
