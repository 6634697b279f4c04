#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

/// One thing wrong with a container, found by `ContainerCheck`: what it is,
/// where (block or group), and the repair that fixes it, if there is one.
public struct ContainerProblem: Sendable {
    /// The kinds of problem, in the terms of `docs/FORMAT.md`.
    public enum Kind: String, Sendable {
        /// One header copy is damaged, the other is valid.
        case headerCopy
        /// No valid header copy: the file cannot be read.
        case header
        /// A block has two valid versions (a crash before the sync that drops the older).
        case staleCopy
        /// The newest version of a block is torn; the previous one is intact.
        case tornVersion
        /// A valid slot for a block past the logical size.
        case pastEnd
        /// A slot header that is neither empty nor valid, next to a valid one.
        case damagedSlotHeader
        /// Valid slots of one group whose payloads share pages.
        case overlap
        /// Payload pages that no valid slot refers to.
        case unreferenced
        /// A block with no readable version.
        case damagedBlock
        /// A packed file's backing file still holds container bytes beside
        /// its reference (a crash while packing or unpacking).
        case packedLeftover
        /// A packed file's reference does not decode.
        case packedReference
        /// A packed file's record cannot be read through its reference: no
        /// pack, another pack's id, the record gone or another file's, a
        /// payload that fails its checksum or does not decompress.
        case packedRecord
    }

    public let kind: Kind
    /// The block concerned (nil for the header and for group-level findings).
    public let block: Int?
    /// Where and what, e.g. "block 3: payload fails its checksum".
    public let message: String
    /// What `--repair` does about it; nil when it cannot be repaired.
    public let fix: String?
    /// Whether the repair was carried out.
    public internal(set) var repaired = false
    /// Why the repair failed, when it did.
    public internal(set) var repairError: String?
}

/// What `ContainerCheck.check` found in one backing file.
public struct ContainerCheckResult: Sendable {
    /// False for a plain file (no WarpFS magic): nothing else was checked.
    public var isContainer = false
    /// Logical blocks checked (holes included).
    public var blocks = 0
    public var problems: [ContainerProblem] = []
    /// The file is packed: it has a `user.warpfs.packed` reference.
    public var isPacked = false
    /// The reference the file keeps after the check (and its repair): the
    /// record it names is in use. Nil when the file is not packed, when its
    /// reference does not decode, or when the repair removed it.
    public var packReference: PackReference?
    /// The file keeps a reference that does not decode: it may name any
    /// record of the pack, so none may be freed as an orphan.
    public var keepsUndecodableReference = false
}

/// Checks, and on request repairs, one container offline: both header
/// copies, every slot header and payload (checksums, and decompression
/// through the accelerator as the file system does it), stale and torn
/// versions, slots past the end, overlapping payloads and allocated space
/// that nothing refers to. Repairs never touch a version that could still
/// be read; see "Checking and repairing" in `docs/FORMAT.md`.
public final class ContainerCheck {
    let codec: BlockCodec
    /// Called with the number of backing bytes read since the last call.
    public var progress: ((Int) -> Void)?

    /// O_NOATIME (not exported to Swift): reading a file for the check leaves its access time alone.
    private static let noAtime: Int32 = 0o1000000

    public init(codec: BlockCodec) {
        self.codec = codec
    }

    /// One valid slot header and what its payload turned out to be.
    private struct Slot {
        let block: Int
        let slot: Int
        let header: SlotHeader
        /// nil: intact; otherwise what is wrong with the payload.
        var damage: String?
        /// The damage is what a crash leaves (a payload shorter than its
        /// header says, or failing its checksum): only then may the older
        /// version replace it, as the file system does on open.
        var torn = false
        /// The region bytes (relative to the group's region) its payload takes.
        let footprint: Range<Int>
    }

    /// A step of a repair, with the problem it belongs to.
    private enum Step {
        case writeHeaderCopy(copy: Int, bytes: [UInt8])
        case clearSlot(block: Int, slot: Int)
        case punch(offset: Int, length: Int)
    }

    /// Checks the file `leaf` (a NUL-terminated name) of the directory open
    /// at `dirfd`; `name` is how messages call it. The file is opened without
    /// following a symbolic link (and without blocking on a FIFO) and must be
    /// a regular file. `namesInTree` is how many names of this inode the
    /// caller found in the tree it checks: a file with more links than that
    /// has a name elsewhere, and is checked but not repaired. Throws
    /// `FSError` when the file cannot be read (or, with `repair`, opened for
    /// writing); problems in the file are returned, not thrown.
    ///
    /// A packed file (one with a `user.warpfs.packed` reference) is checked
    /// against its pack, which `pack` gives when first needed (nil: no pack
    /// found; it throws when the pack cannot be opened): see `checkPacked`.
    public func check(at dirfd: Int32, leaf: [CChar], name: String, repair: Bool, namesInTree: Int = 1,
                      pack: () throws -> PackStore? = { nil }) throws -> ContainerCheckResult {
        let flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY
        var fd = openat(dirfd, leaf, flags | ContainerCheck.noAtime)
        if fd < 0 && errno == EPERM { fd = openat(dirfd, leaf, flags) }
        guard fd >= 0 else {
            if errno == ELOOP { throw FSError(ELOOP, "\(name): replaced by a symbolic link during the check; not followed") }
            throw FSError.last("open \(name)")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FSError.last("stat \(name)") }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw FSError(EINVAL, "\(name): replaced by something other than a regular file during the check; not checked")
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        // A packed-file reference comes first: it is the truth whatever else the file holds.
        var raw = [UInt8](repeating: 0, count: PackReference.size + 16)
        let got = raw.withUnsafeMutableBytes { fgetxattr(fd, PackReference.attributeName, $0.baseAddress, $0.count) }
        if got >= 0 || errno == ERANGE {
            return try checkPacked(fd: fd, st, reference: got >= 0 ? Array(raw[0..<got]) : nil, at: dirfd, leaf: leaf, name: name,
                                   repair: repair, namesInTree: namesInTree, pack: pack)
        }
        guard errno == ENODATA || errno == ENOTSUP else { throw FSError.last("read the packed-file reference of \(name)") }
        return try checkContainer(fd: fd, st, at: dirfd, leaf: leaf, name: name, repair: repair, namesInTree: namesInTree)
    }

    /// The check of a container (`check`), on the file open at `fd` whose stat is `st`.
    private func checkContainer(fd: Int32, _ st: stat, at dirfd: Int32, leaf: [CChar], name: String, repair: Bool,
                                namesInTree: Int) throws -> ContainerCheckResult {
        var result = ContainerCheckResult()
        var steps: [[Step]] = []   // parallel to result.problems
        func add(_ kind: ContainerProblem.Kind, _ block: Int?, _ message: String, fix: String? = nil, _ s: [Step] = []) {
            result.problems.append(ContainerProblem(kind: kind, block: block, message: message, fix: fix))
            steps.append(s)
        }

        // Header copies, classified as the file system does it: the magic,
        // or a near-magic with a valid copy B (copy A's magic lost a bit;
        // repaired below).
        var first = [UInt8](repeating: 0, count: HeaderCopies.span)
        let n = try first.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, 0, "read header of \(name)") }
        progress?(n)
        let copies = first.withUnsafeBytes { HeaderCopies(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        guard copies.hasContainerMagic else { return result }
        result.isContainer = true
        let copyName = ["A", "B"]
        func why(_ c: HeaderCopies.Copy) -> String {
            switch c {
            case .valid: return "valid"
            case .unwritten: return FileHeader.DecodeError.notAHeader.reason
            case .invalid(let e): return e.reason
            }
        }
        guard let (header, good) = copies.newest else {
            add(.header, nil, "no valid header copy (A: \(why(copies.copies[0])), B: \(why(copies.copies[1]))); the file cannot be read")
            return result
        }
        // A copy never written yet is not damage: a file only written once has copy A alone.
        for (i, c) in copies.copies.enumerated() where i != good {
            guard case .invalid(let e) = c else { continue }
            let off = copies.copyOffsets[good]
            add(.headerCopy, nil, "header copy \(copyName[i]) is damaged (\(e.reason)); copy \(copyName[good]) (generation \(header.generation)) is valid",
                fix: "copy \(copyName[i]) rewritten from copy \(copyName[good])",
                [.writeHeaderCopy(copy: i, bytes: Array(first[off..<(off + header.size)]))])
        }

        // Slot headers of every group whose table holds data (holes are empty tables).
        let layout = BlockLayout(header)
        let count = layout.blockCount(logicalSize: header.logicalSize)
        result.blocks = count
        let fileSize = Int(st.st_size)
        var slots: [Int: [Slot]] = [:]          // by group
        var garbage: [Int: [Int]] = [:]         // block -> slots whose header is neither empty nor valid
        var table = [UInt8](repeating: 0, count: BlockLayout.tableSize)
        var g = 0
        while true {
            let off = layout.tableOffset(group: g)
            if off >= fileSize { break }
            let d = Int(lseek(fd, off_t(off), Int32(WD_SEEK_DATA)))
            if d < 0 { break }
            if d >= off + BlockLayout.tableSize { g = max(g + 1, layout.group(containing: d)); continue }
            let got = try table.withUnsafeMutableBytes { try preadFully(fd, $0.baseAddress!, $0.count, off, "read slot headers of \(name)") }
            progress?(got)
            let decoded = table.withUnsafeBytes { SlotTable(UnsafeRawBufferPointer(rebasing: $0[0..<got]), group: g, layout: layout) }
            var found: [Slot] = []
            for b in decoded.blocks {
                for s in 0..<2 {
                    switch decoded.slot(block: b, s) {
                    case .valid(let h): found.append(Slot(block: b, slot: s, header: h, footprint: layout.footprint(h)))
                    case .damaged: garbage[b, default: []].append(s)
                    case .empty: break
                    }
                }
            }
            if !found.isEmpty { slots[g] = found }
            g += 1
        }

        // Payloads of the valid slots of blocks in range: checksum, then decompression.
        for (group, list) in slots {
            var checked = list
            try verify(fd: fd, name: name, layout: layout, count: count, group: group, &checked)
            slots[group] = checked
        }

        // Per block: which version stays, which goes.
        var dropped: Set<[Int]> = []          // [block, slot] of valid slots a repair clears
        var dropMessages: [(Int, Int, Int, String, String, ContainerProblem.Kind)] = []  // group, block, slot, message, fix, kind
        for group in slots.keys.sorted() {
            let list = slots[group]!
            var byBlock: [Int: [Slot]] = [:]
            for s in list { byBlock[s.block, default: []].append(s) }
            for b in byBlock.keys.sorted() {
                let v = byBlock[b]!.sorted { $0.slot < $1.slot }
                if b >= count {
                    for s in v {
                        dropped.insert([b, s.slot])
                        dropMessages.append((group, b, s.slot,
                            "block \(b) is past the end of the file (logical size \(header.logicalSize), \(count) blocks) "
                            + "but slot \(s.slot) holds a valid version (generation \(s.header.generation))",
                            "slot \(s.slot) cleared", .pastEnd))
                    }
                    continue
                }
                guard v.count == 2 else { continue }
                let newest = v[0].header.generation >= v[1].header.generation ? v[0] : v[1]
                let older = newest.slot == v[0].slot ? v[1] : v[0]
                if newest.damage == nil {
                    dropped.insert([b, older.slot])
                    dropMessages.append((group, b, older.slot,
                        "block \(b) has two valid versions: generation \(newest.header.generation) (slot \(newest.slot)) and a stale "
                        + "generation \(older.header.generation) (slot \(older.slot)\(older.damage.map { ", whose payload " + $0 } ?? ""))",
                        "kept generation \(newest.header.generation), dropped generation \(older.header.generation)", .staleCopy))
                } else if older.damage == nil && newest.torn {
                    dropped.insert([b, newest.slot])
                    dropMessages.append((group, b, newest.slot,
                        "block \(b): the newest version (generation \(newest.header.generation), slot \(newest.slot)) is torn "
                        + "(its payload \(newest.damage!)); the previous one (generation \(older.header.generation), slot \(older.slot)) is intact",
                        "kept generation \(older.header.generation), dropped the torn generation \(newest.header.generation)", .tornVersion))
                }
            }
        }
        // Pages of the slots that stay, per group: a dropped slot's pages are
        // punched only where no remaining slot uses them.
        var kept: [Int: [Slot]] = [:]
        for (group, list) in slots { kept[group] = list.filter { !dropped.contains([$0.block, $0.slot]) } }
        for (group, b, s, message, fix, kind) in dropMessages {
            let slot = slots[group]!.first { $0.block == b && $0.slot == s }!
            let others = kept[group, default: []].map(\.footprint).filter { !$0.isEmpty }
            let free = layout.punchablePages(of: slot.footprint, used: others, group: group)
            var note = ""
            if others.contains(where: { $0.overlaps(slot.footprint) }) {
                note = "; its pages are shared with another valid slot (only the unshared ones are released)"
            }
            add(kind, b, message + note, fix: fix, [.clearSlot(block: b, slot: s)] + free.map { .punch(offset: $0.lowerBound, length: $0.count) })
        }

        // Damaged slot headers, and blocks that cannot be read.
        var damagedBlocks: [Int: String] = [:]
        for b in Set(garbage.keys).union(slots.values.flatMap { $0.map(\.block) }).sorted() where b < count {
            let v = (slots[b / BlockLayout.blocksPerGroup] ?? []).filter { $0.block == b }
            let bad = garbage[b] ?? []
            if v.isEmpty {
                damagedBlocks[b] = "no valid version: the header of slot\(bad.count > 1 ? "s 0 and 1 is" : " \(bad[0]) is") damaged; the block reads as zeros"
                continue
            }
            for s in bad {
                add(.damagedSlotHeader, b, "block \(b): the header of slot \(s) is damaged (neither empty nor valid); the block's version "
                    + "in slot \(v[0].slot) is used", fix: "slot \(s) header cleared", [.clearSlot(block: b, slot: s)])
            }
            if v.count == 1, let damage = v[0].damage {
                damagedBlocks[b] = "its only version (generation \(v[0].header.generation), slot \(v[0].slot)) \(damage); reading it is an I/O error"
            } else if v.count == 2, let newest = v.max(by: { $0.header.generation < $1.header.generation }), let damage = newest.damage,
                      !newest.torn, v.contains(where: { $0.damage == nil }) {
                // Not what a crash leaves: the file system reads (and fails on) this version, so it stays.
                damagedBlocks[b] = "its newest version (generation \(newest.header.generation), slot \(newest.slot)) passes its checksum but "
                    + "\(damage); reading it is an I/O error (the older version is left in place)"
            } else if v.count == 2, let d0 = v[0].damage, let d1 = v[1].damage {
                damagedBlocks[b] = "both versions are damaged: slot 0 (generation \(v[0].header.generation)) \(d0); "
                    + "slot 1 (generation \(v[1].header.generation)) \(d1)"
            }
        }
        for b in damagedBlocks.keys.sorted() { add(.damagedBlock, b, "block \(b) is damaged: \(damagedBlocks[b]!)") }

        // Payloads that overlap (among the slots that stay): never "fixed".
        var suspect = Set(damagedBlocks.keys.map { $0 / BlockLayout.blocksPerGroup })
        for group in kept.keys.sorted() {
            let list = kept[group]!.filter { !$0.footprint.isEmpty }.sorted { $0.footprint.lowerBound < $1.footprint.lowerBound }
            for (i, a) in list.enumerated() {
                for c in list[(i + 1)...] where c.footprint.lowerBound < a.footprint.upperBound {
                    suspect.insert(group)
                    add(.overlap, a.block, "block \(a.block) (slot \(a.slot), bytes \(a.footprint.lowerBound)..<\(a.footprint.upperBound)) and block "
                        + "\(c.block) (slot \(c.slot), bytes \(c.footprint.lowerBound)..<\(c.footprint.upperBound)) overlap in group \(group)'s region")
                }
            }
        }

        // Allocated pages of the regions that no valid slot touches (pages
        // holding a header or a table are not region pages).
        var allocated: [Int: [Range<Int>]] = [:]        // region-relative bytes, by group
        var pos = 0
        while pos < fileSize {
            let d = Int(lseek(fd, off_t(pos), Int32(WD_SEEK_DATA)))
            if d < 0 { break }
            var h = Int(lseek(fd, off_t(d), Int32(WD_SEEK_HOLE)))
            if h < 0 { h = fileSize }
            var o = d
            while o < h {
                let gg = layout.group(containing: o)
                let rs = layout.regionOffset(group: gg), re = rs + layout.regionSize
                if o < rs { o = rs; continue }                              // the group's table
                if o >= re { o = layout.tableOffset(group: gg + 1); continue } // unused space before the next group
                let end = min(h, re)
                allocated[gg, default: []].append((o - rs)..<(end - rs))
                o = end
            }
            pos = max(h, d + 1)
        }
        for group in allocated.keys.sorted() {
            let used = (slots[group] ?? []).map(\.footprint).filter { !$0.isEmpty }
            let first = group * BlockLayout.blocksPerGroup
            for extent in allocated[group]! {
                for run in layout.punchablePages(of: extent, used: used, group: group) {
                    let pages = run.count / BlockLayout.pageSize
                    let what = "group \(group) (blocks \(first)-\(first + BlockLayout.blocksPerGroup - 1)): \(pages) allocated "
                        + "page\(pages == 1 ? "" : "s") (offset \(run.lowerBound)..<\(run.upperBound)) that no valid slot refers to"
                    if suspect.contains(group) {
                        // A damaged block's data may be there (a header with a
                        // wrong length or offset): kept for whoever recovers it.
                        add(.unreferenced, nil, what + " (kept: the group has a damaged block or overlapping payloads)")
                    } else {
                        add(.unreferenced, nil, what, fix: "punched", [.punch(offset: run.lowerBound, length: run.count)])
                    }
                }
            }
        }

        if repair && steps.contains(where: { !$0.isEmpty }) {
            if Int(st.st_nlink) > namesInTree {
                // A name outside the tree: repairing here would change a file there.
                let why = "not repaired: the file has \(st.st_nlink) hard links and only \(namesInTree) "
                    + "\(namesInTree == 1 ? "is" : "are") in the checked tree"
                for i in result.problems.indices where !steps[i].isEmpty { result.problems[i].repairError = why }
            } else {
                carryOut(steps, at: dirfd, leaf: leaf, checked: st, name: name, layout: layout, into: &result)
            }
        }
        return result
    }

    /// Reads and checks the payloads of `list` (blocks in range only):
    /// stored length present, CRC-32C, and for compressed payloads a
    /// decompression through the accelerator that gives exactly one block.
    private func verify(fd: Int32, name: String, layout: BlockLayout, count: Int, group: Int, _ list: inout [Slot]) throws {
        var jobs: [(index: Int, payload: BlockBuffer, algorithm: CompressionAlgorithm)] = []
        for i in list.indices where list[i].block < count {
            let h = list[i].header
            guard h.storedLength > 0 else { continue }
            let buf = codec.takeBuffer(h.storedLength)
            let off = layout.payloadOffset(block: list[i].block, slot: list[i].slot, header: h)
            let n: Int
            // A read error is not damage a repair may act on: stop, change nothing.
            n = try preadFully(fd, buf.bytes.baseAddress!, h.storedLength, off, "read \(name) block \(list[i].block)")
            progress?(n)
            guard n == h.storedLength else {
                list[i].damage = "is truncated (\(n) of \(h.storedLength) bytes; the backing file ends at \(off + n))"
                list[i].torn = true
                continue
            }
            if case .checksum(let stored, let read)? = h.damage(ofPayload: UnsafeRawBufferPointer(buf.bytes), read: n) {
                list[i].damage = "fails its checksum (stored 0x\(String(stored, radix: 16)), read 0x\(String(read, radix: 16)))"
                list[i].torn = true
                continue
            }
            if let algorithm = h.encoding.algorithm { jobs.append((i, buf, algorithm)) }
        }
        for (i, damage) in try decompressionDamage(jobs, blockSize: layout.blockSize, name: name, label: { "block \(list[$0].block)" }) {
            list[i].damage = damage
        }
    }

    /// Decompresses the payloads of `jobs` as the file system does it
    /// (through a stream per algorithm of the accelerator), each of which
    /// must give exactly one block of `blockSize` bytes; returns what is
    /// wrong with those that do not, by job index. A failure of the
    /// accelerator is no verdict on a payload: it throws (`label` names the
    /// payload in the message), after what is in flight has finished.
    private func decompressionDamage(_ jobs: [(index: Int, payload: BlockBuffer, algorithm: CompressionAlgorithm)], blockSize: Int,
                                     name: String, label: (Int) -> String) throws -> [Int: String] {
        var damage: [Int: String] = [:]
        struct Decompression: BlockRequest {
            let index: Int
            let payload: BlockBuffer
            let output: BlockBuffer
            var engineInput: UnsafeRawBufferPointer { UnsafeRawBufferPointer(payload.bytes) }
            var engineOutput: UnsafeMutableRawBufferPointer { output.bytes }
        }
        for algorithm in CompressionAlgorithm.allCases {
            let mine = jobs.filter { $0.algorithm == algorithm }
            guard !mine.isEmpty else { continue }
            let stream: BlockStream<Decompression>
            do { stream = try codec.stream(.decompress, algorithm: algorithm, capacity: 2 * BlockLayout.blocksPerGroup) } catch {
                throw FSError(EIO, "\(name): no accelerator queue for decompression: \(error)")
            }
            defer { codec.recycle(stream) }
            // Finish what is in flight (the stream holds its buffers), then stop.
            var deviceFailure: FSError?
            for job in mine where deviceFailure == nil {
                do {
                    try stream.submit(Decompression(index: job.index, payload: job.payload, output: codec.takeBuffer(blockSize)))
                } catch {
                    deviceFailure = FSError(EIO, "\(name): \(label(job.index)) could not be sent for decompression (\(error)); nothing was changed")
                }
            }
            while stream.inFlight > 0 {
                for (job, r) in stream.reap(minimum: stream.inFlight) {
                    let i = job.index
                    switch r {
                    case .success(let n) where n == blockSize: break
                    case .success(let n): damage[i] = "decompresses to \(n) bytes, not \(blockSize)"
                    case .failure(.destinationTooSmall): damage[i] = "decompresses to more than \(blockSize) bytes"
                    case .failure(let e) where RetryPolicy.saysNothingOfTheData(e):
                        deviceFailure = deviceFailure
                            ?? FSError(EIO, "\(name): \(label(i)): the accelerator failed while checking it (\(e)); nothing was changed")
                    case .failure(let e): damage[i] = "cannot be decompressed (\(e))"
                    }
                }
            }
            if let deviceFailure { throw deviceFailure }
        }
        return damage
    }

    /// Carries out the repair steps: header copies first, then slot headers
    /// (made durable), then the punches, then durable again. The backing
    /// file's times are put back (they are the file's times in the mount).
    ///
    /// The file is opened again for writing by its name in `dirfd`, without
    /// following links, and must be the inode that was checked (`checked`);
    /// otherwise nothing is written and every repair reports why.
    private func carryOut(_ steps: [[Step]], at dirfd: Int32, leaf: [CChar], checked st: stat, name: String, layout: BlockLayout,
                          into result: inout ContainerCheckResult) {
        let fd = openat(dirfd, leaf, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        var now = stat()
        var refused: String?
        if fd < 0 {
            refused = FSError.last("open \(name) for repair").description
        } else if fstat(fd, &now) != 0 || now.st_dev != st.st_dev || now.st_ino != st.st_ino {
            refused = "\(name) was replaced during the check; nothing written"
        }
        if let refused {
            if fd >= 0 { close(fd) }
            for i in result.problems.indices where !steps[i].isEmpty { result.problems[i].repairError = refused }
            return
        }
        defer { close(fd) }
        var failed: [Int: String] = [:]
        func run(_ phase: (Step) -> Bool) {
            for (i, list) in steps.enumerated() where failed[i] == nil {
                for step in list where phase(step) {
                    do {
                        switch step {
                        case .writeHeaderCopy(let copy, let bytes):
                            try bytes.withUnsafeBytes {
                                try pwriteFully(fd, $0.baseAddress!, $0.count, layout.headerCopyOffsets[copy], "write header copy of \(name)")
                            }
                        case .clearSlot(let b, let s):
                            let zeros = [UInt8](repeating: 0, count: BlockLayout.slotHeaderSize)
                            try zeros.withUnsafeBytes {
                                try pwriteFully(fd, $0.baseAddress!, $0.count, layout.slotHeaderOffset(block: b, slot: s), "clear slot \(s) of \(name) block \(b)")
                            }
                        case .punch(let off, let len):
                            _ = try sys("punch \(len) bytes at offset \(off) of \(name)") {
                                wd_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, Int64(off), Int64(len))
                            }
                        }
                    } catch {
                        failed[i] = "\(error)"
                        break
                    }
                }
            }
        }
        func durable() {
            if fdatasync(fd) != 0 {
                let e = FSError.last("fdatasync \(name)").description
                for i in steps.indices where !steps[i].isEmpty && failed[i] == nil { failed[i] = e }
            }
        }
        run { if case .writeHeaderCopy = $0 { return true } else { return false } }
        durable()
        run { if case .clearSlot = $0 { return true } else { return false } }
        durable()
        run { if case .punch = $0 { return true } else { return false } }
        durable()
        var t = [st.st_atim, st.st_mtim]
        _ = futimens(fd, &t)
        for i in result.problems.indices where !steps[i].isEmpty {
            if let e = failed[i] { result.problems[i].repairError = e } else { result.problems[i].repaired = true }
        }
    }
}

// Packed files (docs/FORMAT.md, "Packed small files"): the reference is the
// truth, whatever container bytes the backing file also holds.
extension ContainerCheck {
    /// A repair of a packed file.
    private enum PackedRepair {
        /// Cut the container a crash left beside a good reference.
        case truncate
        /// Drop a reference whose record cannot be read, when the container
        /// beside it is whole: that container is then the file's data.
        case removeReference
    }

    /// Checks the packed file open at `fd` (`st`): its reference (`raw`;
    /// nil when it is longer than a reference) decodes; the pack
    /// (`pack()`) is the one it names; its record is there with its key
    /// and checksum and decompresses to one block, as a container's blocks
    /// must. A good reference with container bytes beside it is repaired by
    /// cutting them off; a reference that cannot be read, beside a whole
    /// container, by removing the reference; without one the file cannot be
    /// read, and nothing is changed.
    private func checkPacked(fd: Int32, _ st: stat, reference raw: [UInt8]?, at dirfd: Int32, leaf: [CChar], name: String, repair: Bool,
                             namesInTree: Int, pack: () throws -> PackStore?) throws -> ContainerCheckResult {
        var result = ContainerCheckResult()
        result.isPacked = true
        var reference: PackReference?
        var damage: String?
        var kind = ContainerProblem.Kind.packedRecord
        if let raw {
            do { reference = try PackReference.decode(raw) } catch {
                damage = "its packed-file reference (\(PackReference.attributeName)) is damaged (\(error.reason))"
                kind = .packedReference
            }
        } else {
            damage = "its packed-file reference (\(PackReference.attributeName)) is damaged (longer than \(PackReference.size) bytes)"
            kind = .packedReference
        }
        if let ref = reference {
            result.blocks = ref.logicalSize > 0 ? 1 : 0
            if ref.hasRecord { damage = try recordDamage(ref, name: name, pack: pack) }
        }

        var problem: ContainerProblem?
        var step: PackedRepair?
        if let damage {
            // A whole container beside it (a crash while packing or
            // unpacking leaves the same data in both) is the file's data.
            var whole = false
            if st.st_size > 0 {
                let container = try checkContainer(fd: fd, st, at: dirfd, leaf: leaf, name: name, repair: false, namesInTree: namesInTree)
                whole = container.isContainer && container.problems.isEmpty
            }
            if whole {
                problem = ContainerProblem(kind: kind, block: nil, message: "packed, but \(damage); its backing file also holds a whole "
                    + "container (left by a crash while packing or unpacking)", fix: "reference removed: the container is the file's data")
                step = .removeReference
            } else {
                problem = ContainerProblem(kind: kind, block: nil, message: "packed, but \(damage); reading it is an I/O error"
                    + (st.st_size > 0 ? " (the \(st.st_size) bytes beside the reference are not a whole container)" : "")
                    + ": its data is lost unless the pack is restored", fix: nil)
            }
        } else if st.st_size > 0 {
            problem = ContainerProblem(kind: .packedLeftover, block: nil, message: "packed, but its backing file still holds \(st.st_size) "
                + "bytes of a container beside its reference (a crash while packing or unpacking); the reference is the file's data",
                fix: "container bytes cut off (times kept)")
            step = .truncate
        }
        if var problem {
            if repair, let step {
                if Int(st.st_nlink) > namesInTree {
                    problem.repairError = "not repaired: the file has \(st.st_nlink) hard links and only \(namesInTree) "
                        + "\(namesInTree == 1 ? "is" : "are") in the checked tree"
                } else {
                    do {
                        try carryOut(step, at: dirfd, leaf: leaf, checked: st, name: name)
                        problem.repaired = true
                    } catch {
                        problem.repairError = "\(error)"
                    }
                }
            }
            let removed = problem.repaired && step == .removeReference
            result.packReference = removed ? nil : reference
            result.keepsUndecodableReference = reference == nil && !removed
            result.problems.append(problem)
        } else {
            result.packReference = reference
        }
        return result
    }

    /// What keeps the record of `ref` from being read: nil when it reads
    /// back intact and decompresses to one block. Throws when the pack
    /// cannot be opened or read, or the accelerator fails.
    private func recordDamage(_ ref: PackReference, name: String, pack: () throws -> PackStore?) throws -> String? {
        guard let store = try pack() else {
            return "no pack (\(PackStore.directoryName)) was found in the checked directory or above it"
        }
        guard ref.packID == store.id else {
            return "it was packed into pack \(String(ref.packID, radix: 16)), not this tree's (\(String(store.id, radix: 16))): "
                + "its record is not in this pack"
        }
        let buf = codec.takeBuffer(ref.payloadLength)
        if let damage = try store.recordDamage(ref, into: buf.bytes, name: name) { return damage }
        progress?(ref.payloadLength)
        guard let algorithm = ref.payloadEncoding.algorithm else { return nil }
        let damage = try decompressionDamage([(0, buf, algorithm)], blockSize: ref.blockSize, name: name, label: { _ in "its packed block" })
        return damage[0].map { "its record in the pack (page \(ref.page), offset \(ref.offset)) \($0)" }
    }

    /// Carries out a packed file's repair on the file opened again for
    /// writing by its name, if it is still the inode checked; durable before
    /// it returns.
    private func carryOut(_ step: PackedRepair, at dirfd: Int32, leaf: [CChar], checked st: stat, name: String) throws {
        let fd = openat(dirfd, leaf, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw FSError.last("open \(name) for repair") }
        defer { close(fd) }
        var now = stat()
        guard fstat(fd, &now) == 0, now.st_dev == st.st_dev, now.st_ino == st.st_ino else {
            throw FSError(ESTALE, "\(name) was replaced during the check; nothing written")
        }
        switch step {
        case .truncate:
            _ = try sys("truncate \(name)") { ftruncate(fd, 0) }
            var t = [st.st_atim, st.st_mtim]
            _ = futimens(fd, &t)
        case .removeReference:
            if fremovexattr(fd, PackReference.attributeName) != 0 && errno != ENODATA {
                throw FSError.last("remove the packed-file reference of \(name)")
            }
        }
        _ = try sys("fsync \(name)") { fsync(fd) }
    }
}
