import BenchSupport
import WarpFSCore
import WarpFSFormat

/// What `warpfs stats` adds up over the files it reads, and its two
/// renderings (a table, one JSON object). Knows encodings and sizes, not
/// the container layout: every container comes in as a `ContainerUsage`.
struct StatsTally {
    /// One row of the table: an encoding, "zero" (blocks that read as
    /// zeros without a payload) or "plain" (files that are not containers).
    struct Row: Equatable {
        /// Files with at least one block in this row (as compsize counts).
        var files = 0
        var blocks = 0
        /// Uncompressed bytes of those blocks, clipped at the file's size.
        var logical: UInt64 = 0
        /// Payload bytes (the codec outputs); a plain file's size.
        var stored: UInt64 = 0
    }

    /// Row keys in table order; JSON uses the same keys.
    static let order = ["raw", "zero", "deflate", "zlib", "gzip", "zstd", "lz4", "plain"]
    static func key(_ e: BlockEncoding) -> String {
        switch e {
        case .raw: "raw"
        case .zero: "zero"
        case .deflate: "deflate"
        case .zlib: "zlib"
        case .gzip: "gzip"
        case .zstd: "zstd"
        case .lz4: "lz4"
        }
    }

    var rows: [String: Row] = [:]
    /// Regular files counted, containers (packed ones included) and plain ones.
    var files = 0, containers = 0, plain = 0
    /// Packed small files: their logical bytes, payloads (in the pack) and
    /// the space their own backing files take (none, but for container
    /// bytes a crash left beside a reference).
    var packed = 0, packedLogical: UInt64 = 0, packedStored: UInt64 = 0, packedAllocated: UInt64 = 0
    /// Packs (`.warpfs-pack`) of the trees read, and what their pages files take.
    var packs = 0, packAllocated: UInt64 = 0
    /// Sizes as applications see them.
    var logical: UInt64 = 0
    /// st_blocks * 512 of the regular files (each inode once) and of the
    /// packs' pages files (each pack once).
    var allocated: UInt64 = 0
    /// The same for containers with a backing file of their own (not
    /// packed), and what their payloads occupy in the format's unit of
    /// placement (whole 4 KiB pages in version 2).
    var containerAllocated: UInt64 = 0, containerStored: UInt64 = 0, payloadFootprint: UInt64 = 0
    /// Payloads that take no page of their own (version 2: block 0 inline in the first page).
    var unpagedPayloads = 0
    /// Older block versions still on disk beside the current ones.
    var supersededVersions = 0, supersededBytes: UInt64 = 0
    /// Directories, symbolic links and other nodes that are not regular files.
    var otherNodes = 0, otherAllocated: UInt64 = 0
    /// Files that could not be read (reported, not counted).
    var unreadable = 0

    var stored: UInt64 { rows.values.reduce(0) { $0 + $1.stored } }
    var blocks: Int { rows.values.reduce(0) { $0 + $1.blocks } }
    /// Logical size over allocated space; nil when nothing is allocated.
    var ratio: Double? { allocated > 0 ? Double(logical) / Double(allocated) : nil }

    mutating func add(_ u: ContainerUsage, allocated a: Int) {
        files += 1
        containers += 1
        logical += u.logicalSize
        allocated += UInt64(a)
        if u.packed != nil {
            packed += 1
            packedLogical += u.logicalSize
            packedStored += u.stored.reduce(0) { $0 + UInt64($1.storedLength) }
            packedAllocated += UInt64(a)
        } else {
            containerAllocated += UInt64(a)
        }
        var seen: Set<String> = []
        for b in u.stored {
            let k = StatsTally.key(b.encoding)
            if seen.insert(k).inserted { rows[k, default: Row()].files += 1 }
            rows[k, default: Row()].blocks += 1
            rows[k, default: Row()].logical += UInt64(b.logicalBytes)
            rows[k, default: Row()].stored += UInt64(b.storedLength)
            guard u.packed == nil else { continue }
            containerStored += UInt64(b.storedLength)
            payloadFootprint += UInt64(b.footprint)
            if b.inHeaderPage { unpagedPayloads += 1 }
        }
        if u.holeBlocks > 0 {
            rows["zero", default: Row()].files += 1
            rows["zero", default: Row()].blocks += u.holeBlocks
            rows["zero", default: Row()].logical += u.holeLogicalBytes
        }
        supersededVersions += u.supersededVersions
        supersededBytes += UInt64(u.supersededBytes)
    }

    /// A pack of a tree read: its pages file's allocated space, once.
    mutating func addPack(allocated a: Int) {
        packs += 1
        packAllocated += UInt64(a)
        allocated += UInt64(a)
    }

    mutating func addPlain(size: Int, allocated a: Int) {
        files += 1
        plain += 1
        logical += UInt64(size)
        allocated += UInt64(a)
        rows["plain", default: Row()].files += 1
        rows["plain", default: Row()].logical += UInt64(size)
        rows["plain", default: Row()].stored += UInt64(size)
    }

    // MARK: text

    /// The table and the lines under it; sizes exact with `bytes`, else in KiB, MiB, GiB.
    func render(bytes: Bool) -> String {
        func size(_ n: UInt64) -> String { bytes ? "\(n)" : human(n) }
        var table: [[String]] = [["encoding", "files", "blocks", "logical", "stored", "allocated", "ratio"]]
        for k in StatsTally.order {
            guard let r = rows[k] else { continue }
            table.append([k == "zero" ? "zero/holes" : k, "\(r.files)", k == "plain" ? "-" : "\(r.blocks)", size(r.logical), size(r.stored), "", ""])
        }
        table.append(["TOTAL", "\(files)", "\(blocks)", size(logical), size(stored), size(allocated), ratio.map { fmt($0, 2) } ?? "-"])
        let widths = (0..<table[0].count).map { c in table.map { $0[c].count }.max()! }
        var out = table.map { row in
            row.enumerated().map { c, s in
                c == 0 ? s + String(repeating: " ", count: widths[c] - s.count) : String(repeating: " ", count: widths[c] - s.count) + s
            }.joined(separator: "  ").trimmingSuffixSpaces()
        }
        out.append("\(files) file\(files == 1 ? "" : "s"): \(containers) container\(containers == 1 ? "" : "s")"
            + (packed > 0 ? " (\(packed) packed)" : "") + ", \(plain) plain")
        if containers > packed {
            let rounding = payloadFootprint >= containerStored ? payloadFootprint - containerStored : 0
            let rest = Int64(containerAllocated) - Int64(payloadFootprint)
            out.append("containers: \(size(containerAllocated)) allocated for \(size(containerStored)) of payloads: "
                + "\(size(rounding)) rounding payloads up to whole pages, \(rest < 0 ? "-" : "")\(size(UInt64(abs(rest)))) headers, slot tables "
                + "and the rest; \(unpagedPayloads) payload\(unpagedPayloads == 1 ? "" : "s") inside the header page")
        }
        if packed > 0 || packs > 0 {
            out.append("packed: \(packed) file\(packed == 1 ? "" : "s"), \(size(packedLogical)) logical in \(size(packedStored)) of payloads "
                + "in \(packs == 1 ? "the pack" : "\(packs) packs"), whose pages take \(size(packAllocated)) (counted once in TOTAL allocated)"
                + (packedAllocated > 0 ? "; \(size(packedAllocated)) of container bytes beside references (warpfs fsck --repair cuts them off)" : ""))
        }
        if supersededVersions > 0 {
            out.append("superseded versions still stored: \(supersededVersions) (\(size(supersededBytes)) of payloads)")
        }
        out.append("other nodes (directories, symbolic links, ...): \(otherNodes), \(size(otherAllocated)) allocated; "
            + "with them \(size(allocated + otherAllocated)) (what du -s counts)")
        if unreadable > 0 { out.append("\(unreadable) file\(unreadable == 1 ? "" : "s") could not be read and \(unreadable == 1 ? "is" : "are") not counted") }
        return out.joined(separator: "\n") + "\n"
    }

    private func human(_ n: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : fmt(v, v >= 100 ? 0 : 1) + " " + units[u]
    }

    // MARK: JSON

    /// One JSON object with the same figures, in bytes. `paths` says, for
    /// each argument, what was read (and through which mount).
    func json(paths: [(argument: String, read: String, mount: String?)]) -> String {
        func int(_ n: UInt64) -> JSON { .int(Int(n)) }
        var encodings: [(String, JSON)] = []
        for k in StatsTally.order {
            guard let r = rows[k] else { continue }
            encodings.append((k, .line(.object([("files", .int(r.files)), ("blocks", .int(r.blocks)), ("logical", int(r.logical)),
                                                 ("stored", int(r.stored))]))))
        }
        let doc: JSON = .object([
            ("paths", .array(paths.map { p in
                .line(.object([("path", .string(p.argument)), ("read", .string(p.read))] + (p.mount.map { [("mount", JSON.string($0))] } ?? [])))
            })),
            ("encodings", .object(encodings)),
            ("total", .object([
                ("files", .int(files)), ("containers", .int(containers)), ("packed", .int(packed)), ("plain", .int(plain)), ("blocks", .int(blocks)),
                ("logical", int(logical)), ("stored", int(stored)), ("allocated", int(allocated)),
                ("ratio", ratio.map { JSON.number($0) } ?? .number(.nan)),
            ])),
            ("containers", .object([
                ("allocated", int(containerAllocated)), ("stored", int(containerStored)), ("payload_pages", int(payloadFootprint)),
                ("unpaged_payloads", .int(unpagedPayloads)),
                ("superseded_versions", .int(supersededVersions)), ("superseded_bytes", int(supersededBytes)),
            ])),
            ("packed", .object([
                ("files", .int(packed)), ("logical", int(packedLogical)), ("stored", int(packedStored)), ("allocated", int(packedAllocated)),
                ("packs", .int(packs)), ("pack_allocated", int(packAllocated)),
            ])),
            ("other_nodes", .line(.object([("count", .int(otherNodes)), ("allocated", int(otherAllocated))]))),
            ("unreadable", .int(unreadable)),
        ])
        return doc.render() + "\n"
    }
}

private extension String {
    func trimmingSuffixSpaces() -> String {
        var s = self
        while s.last == " " { s.removeLast() }
        return s
    }
}
