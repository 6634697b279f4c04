import WarpFSFormat

/// `warpfs fsck`'s check of a pack (`.warpfs-pack`) against the packed
/// files the walk found: pages whose directory is damaged, references
/// whose record is not entered in its page (freed: the next record written
/// there may overwrite it), and records no file refers to (orphans: a crash
/// between appending a record and setting its reference, or between
/// removing a reference and freeing its record), which `--repair` frees.
public enum PackCheck {
    /// A packed file's reference that the check left in place.
    public struct Reference {
        /// The file, for messages.
        public let name: String
        public let reference: PackReference
        /// Its record was read back intact (else a problem was already reported for it).
        public let recordChecked: Bool
        public init(name: String, reference: PackReference, recordChecked: Bool) {
            self.name = name; self.reference = reference; self.recordChecked = recordChecked
        }
    }

    public struct Result {
        /// Live records in the pack.
        public var records = 0
        /// (what it is about: a file's name, or `label` for the pack itself; the problem), in report order.
        public var problems: [(String, ContainerProblem)] = []
    }

    /// Checks `store` against `references` (those naming its id). Orphans
    /// are freed with `repair` unless `blockers` says why a record nobody
    /// is known to refer to may still be a file's.
    public static func check(_ store: PackStore, label: String, references: [Reference], repair: Bool, blockers: [String]) throws -> Result {
        struct Place: Hashable { let page: UInt32; let offset: Int; let key: UInt64 }
        let found = try store.records()
        var out = Result(records: found.records.count)
        let damaged = Dictionary(found.damagedPages.map { ($0.page, $0.reason) }, uniquingKeysWith: { a, _ in a })
        for (page, reason) in found.damagedPages.sorted(by: { $0.page < $1.page }) {
            let inside = references.filter { $0.reference.page == page }.map(\.name)
            out.problems.append((label, ContainerProblem(kind: .packedRecord, block: nil, message: "page \(page) is damaged (\(reason)); "
                + "nothing in it is freed or reused" + (inside.isEmpty ? "" : "; it holds the records of \(inside.joined(separator: ", "))"),
                fix: nil)))
        }
        var live: [Place: PackStore.Record] = [:]
        for r in found.records { live[Place(page: r.page, offset: r.offset, key: r.key)] = r }
        var referenced: Set<Place> = []
        var placeOf: [[Int]: String] = [:]     // [page, offset] -> a file whose reference names it
        for r in references {
            let ref = r.reference
            let place = Place(page: ref.page, offset: ref.offset, key: ref.key)
            referenced.insert(place)
            placeOf[[Int(ref.page), ref.offset]] = r.name
            guard r.recordChecked, damaged[ref.page] == nil else { continue }
            if let record = live[place] {
                guard record.length != ref.recordLength else { continue }
                out.problems.append((r.name, ContainerProblem(kind: .packedRecord, block: nil, message: "packed, but its record in the pack "
                    + "(page \(ref.page), offset \(ref.offset)) is entered in the page's directory with \(record.length) bytes, not "
                    + "\(ref.recordLength): the pack is damaged", fix: nil)))
            } else {
                out.problems.append((r.name, ContainerProblem(kind: .packedRecord, block: nil, message: "packed, but its record in the pack "
                    + "(page \(ref.page), offset \(ref.offset)) is not entered in the page's directory (freed): it reads back intact now, "
                    + "but the next record written there may overwrite it; copy the file through a mount to keep it", fix: nil)))
            }
        }
        let kept = blockers.isEmpty ? nil : " (kept: " + blockers.joined(separator: "; ") + ", so a file may still refer to it)"
        var freed = false
        for r in found.records where !referenced.contains(Place(page: r.page, offset: r.offset, key: r.key)) {
            let what = "page \(r.page), offset \(r.offset): a record of \(r.length) bytes that no file refers to "
                + "(left by a crash while packing or unpacking, or after a removal)"
            // A reference naming this place with another key: it may be that
            // file's record with a damaged key (its only copy).
            let claimed = placeOf[[Int(r.page), r.offset]].map { " (kept: \($0)'s reference names this place with another key; "
                + "it may be that file's record, its key damaged)" }
            if let why = claimed ?? kept {
                out.problems.append((label, ContainerProblem(kind: .unreferenced, block: nil, message: what + why, fix: nil)))
                continue
            }
            var problem = ContainerProblem(kind: .unreferenced, block: nil, message: what, fix: "freed")
            if repair {
                do {
                    if try store.free(r) { problem.repaired = true; freed = true } else {
                        problem.repairError = "the record changed during the check; nothing freed"
                    }
                } catch {
                    problem.repairError = "\(error)"
                }
            }
            out.problems.append((label, problem))
        }
        if freed {
            do { try store.sync() } catch {
                for i in out.problems.indices where out.problems[i].1.repaired {
                    out.problems[i].1.repaired = false
                    out.problems[i].1.repairError = "\(error)"
                }
            }
        }
        return out
    }
}
