#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Foundation
import Testing
import WarpFSFormat

/// The offline tools on packed small files: trees packed by a real mount
/// (`pack_delay=0`; the unmount packs every closed small file), then left
/// as crashes and damage leave them in the backing directory: `fsck`
/// (clean, orphaned records, a damaged record, container bytes beside a
/// reference, a reference whose record is lost beside a whole container),
/// `stats` (packed files and the pack against `du`), `decompress` and
/// `compress`.
@Suite struct PackFsckTests {
    /// Small files of every kind a pack holds: compressible text, bytes
    /// that stay raw, zeros (no record), an empty file, and one in a subdirectory.
    static let small: [String: [UInt8]] = {
        var r = Rng(11)
        return [
            "text": r.text(3000),
            "noise": r.bytes(2000),
            "zeros": [UInt8](repeating: 0, count: 1500),
            "empty": [],
            "d/note": Array("a note in a subdirectory\n".utf8),
        ]
    }()

    /// A mount of a fresh backing directory with `small` and a large file
    /// written, unmounted (everything small packed). Checks the packed state.
    private func packedTree(extra: [String: [UInt8]] = [:]) throws -> TestMount {
        let m = try TestMount(options: "pack_delay=0")
        do {
            #expect(mkdir(m.path("d"), 0o755) == 0)
            var r = Rng(12)
            try FileIO.write(m.path("large"), r.text(200_000))
            for (n, data) in Self.small.merging(extra, uniquingKeysWith: { a, _ in a }) { try FileIO.write(m.path(n), data) }
            m.unmount()
            for n in Self.small.keys.sorted() + extra.keys.sorted() {
                #expect(try FileIO.stat(m.backingPath(n)).st_size == 0, "\(n) is packed: an empty backing file")
                #expect(try reference(m.backingPath(n)) != nil, "\(n) has its reference")
            }
            #expect(try reference(m.backingPath("large")) == nil && (try FileIO.stat(m.backingPath("large")).st_size) > 0)
            return m
        } catch {
            m.close()
            throw error
        }
    }

    @Test func aPackedTreeIsClean() throws {
        let m = try packedTree()
        defer { m.close() }
        let check = fsck(m.backing)
        #expect(check.status == 0, "\(check.output)")
        // 3 records: text, noise, d/note; zeros and empty have none. The pack's own files are not walked.
        #expect(check.output.contains("5 packed files checked, 3 records in 1 pack"), "\(check.output)")
        #expect(check.output.contains("6 files checked, 0 plain files skipped, ") && check.output.contains(" 0 problems found, 0 repaired"),
                "\(check.output)")
        // A subdirectory: its packed files are checked against the pack above; orphans are not looked for.
        let sub = fsck(m.backingPath("d"))
        #expect(sub.status == 0, "\(sub.output)")
        #expect(sub.output.contains("orphaned records in the pack were not looked for: the pack is in .. (1 level above")
                && sub.output.contains("1 packed file checked\n"), "\(sub.output)")
        // And the files read back through a mount after the check.
        try m.start()
        for (n, data) in Self.small { #expect(try FileIO.read(m.path(n)) == data, "\(n)") }
    }

    /// Removing packed backing files directly leaves their records in the
    /// pack: fsck names each (page, offset, bytes), --repair frees them and
    /// the emptied page goes back to the file system.
    @Test func orphanedRecordsAreFoundAndFreed() throws {
        let m = try packedTree()
        defer { m.close() }
        let pages = m.backingPath(".warpfs-pack/pages")
        let before = try FileIO.stat(pages).st_blocks
        #expect(before > 0)
        var orphans: [PackReference] = []
        for n in ["text", "noise", "d/note"] {
            orphans.append(try #require(try reference(m.backingPath(n))))
            #expect(unlink(m.backingPath(n)) == 0)
        }
        let found = fsck(m.backing)
        #expect(found.status == 4, "\(found.output)")
        for o in orphans {
            let line = ".warpfs-pack: page \(o.page), offset \(o.offset): a record of \(o.recordLength) bytes that no file refers to"
            #expect(found.output.contains(line + " (left by a crash while packing or unpacking, or after a removal); --repair: freed"),
                    "missing '\(line)' in:\n\(found.output)")
        }
        #expect(found.output.contains("3 problems found, 0 repaired"), "\(found.output)")
        #expect(try FileIO.stat(pages).st_blocks == before, "nothing freed without --repair")

        let repaired = fsck(m.backing, "--repair")
        #expect(repaired.status == 1 && repaired.output.contains("3 problems found, 3 repaired"), "\(repaired.output)")
        #expect(try FileIO.stat(pages).st_blocks == 0, "the page, empty now, is punched")
        let again = fsck(m.backing)
        #expect(again.status == 0 && again.output.contains("2 packed files checked, 0 records in 1 pack"), "\(again.output)")
        try m.start()
        for n in ["zeros", "empty"] { #expect(try FileIO.read(m.path(n)) == Self.small[n]!) }
    }

    /// An orphan is not freed while a file keeps a reference that does not
    /// decode: that reference may name it.
    @Test func orphansAreKeptWhileAReferenceCannotBeRead() throws {
        let m = try packedTree()
        defer { m.close() }
        #expect(unlink(m.backingPath("text")) == 0)
        var garbage = [UInt8](repeating: 0x5A, count: PackReference.size)
        #expect(setxattr(m.backingPath("noise"), PackReference.attributeName, &garbage, garbage.count, 0) == 0)
        let pages = m.backingPath(".warpfs-pack/pages")
        let before = try FileIO.read(pages)
        let r = fsck(m.backing, "--repair")
        #expect(r.status == 4, "\(r.output)")
        #expect(r.output.contains("noise: packed, but its packed-file reference (user.warpfs.packed) is damaged (bad checksum); "
                                  + "reading it is an I/O error: its data is lost unless the pack is restored; cannot be repaired"), "\(r.output)")
        // noise's own record and text's: both unreferenced now, both kept.
        #expect(r.output.components(separatedBy: "that no file refers to").count - 1 == 2, "\(r.output)")
        #expect(r.output.contains("(kept: 1 file keeps a reference that does not decode, so a file may still refer to it); "
                                  + "cannot be repaired"), "\(r.output)")
        #expect(try FileIO.read(pages) == before, "the pack is left as it was")
    }

    /// A record overwritten in the pack is named by its file; without a
    /// container beside the reference nothing is changed. With a whole
    /// container beside it (a crash while unpacking), the repair removes
    /// the reference and the container is the file's data.
    @Test func aDamagedRecordIsNamedByItsFile() throws {
        let m = try packedTree()
        defer { m.close() }
        let text = try #require(try reference(m.backingPath("text")))
        let note = try #require(try reference(m.backingPath("d/note")))
        // text: a payload byte flipped; d/note: its key overwritten.
        try FileIO.flipByte(m.backingPath(".warpfs-pack/pages"), at: Int(text.page) * 4096 + text.offset + PackPage.keySize + 5)
        try FileIO.flipByte(m.backingPath(".warpfs-pack/pages"), at: Int(note.page) * 4096 + note.offset)
        // noise: a whole container of the same bytes beside its reference, its record gone.
        let noise = try #require(try reference(m.backingPath("noise")))
        try FileIO.write(m.backingPath("noise"), try containerOf(Self.small["noise"]!), flags: O_WRONLY)
        try FileIO.flipByte(m.backingPath(".warpfs-pack/pages"), at: Int(noise.page) * 4096 + noise.offset + PackPage.keySize)

        let found = fsck(m.backing)
        #expect(found.status == 4, "\(found.output)")
        #expect(found.output.contains("text: packed, but its record in the pack fails its checksum"), "\(found.output)")
        #expect(found.output.contains("d/note: packed, but its record in the pack (page \(note.page), offset \(note.offset)) is gone or "
                                      + "another file's; reading it is an I/O error"), "\(found.output)")
        #expect(found.output.contains("noise: packed, but its record in the pack fails its checksum")
                && found.output.contains("its backing file also holds a whole container (left by a crash while packing or unpacking); "
                                         + "--repair: reference removed: the container is the file's data"), "\(found.output)")
        // d/note's record, its key damaged, looks like nobody's: it is kept.
        #expect(found.output.contains(".warpfs-pack: page \(note.page), offset \(note.offset): a record of \(note.recordLength) bytes that no "
                                      + "file refers to") && found.output.contains("(kept: d/note's reference names this place with another key"),
                "\(found.output)")
        #expect(found.output.contains("4 problems found, 0 repaired"), "\(found.output)")

        let repaired = fsck(m.backing, "--repair")
        // noise's reference goes, and with it its record (nobody's now) in the same run.
        #expect(repaired.status == 4 && repaired.output.contains("noise: packed, but its record") && repaired.output.contains("repaired: reference removed")
                && repaired.output.contains(".warpfs-pack: page \(noise.page), offset \(noise.offset): a record of \(noise.recordLength) bytes "
                                            + "that no file refers to (left by a crash while packing or unpacking, or after a removal); repaired: freed")
                && repaired.output.contains("5 problems found, 2 repaired"), "\(repaired.output)")
        #expect(try reference(m.backingPath("noise")) == nil)
        #expect(try reference(m.backingPath("text")) == text, "a reference with nothing to fall back on stays")
        #expect(try reference(m.backingPath("d/note")) == note)
        let again = fsck(m.backing)
        #expect(again.status == 4 && again.output.contains("3 problems found, 0 repaired"), "\(again.output)")
        try m.start()
        #expect(try FileIO.read(m.path("noise")) == Self.small["noise"]!)
        #expect(throws: Errno(EIO, "")) { try FileIO.read(m.path("text")) }
    }

    /// Container bytes beside a good reference (a crash between setting the
    /// reference and cutting the container off): cut off, times kept.
    @Test func containerBytesBesideAReferenceAreCutOff() throws {
        let m = try packedTree()
        defer { m.close() }
        let path = m.backingPath("text")
        let ref = try #require(try reference(path))
        let container = try containerOf(Self.small["text"]!)
        try FileIO.write(path, container, flags: O_WRONLY)
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 5), timespec(tv_sec: 1_100_000_000, tv_nsec: 7)]
        #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)

        let found = fsck(m.backing)
        #expect(found.status == 4, "\(found.output)")
        #expect(found.output.contains("text: packed, but its backing file still holds \(container.count) bytes of a container beside its "
                                      + "reference (a crash while packing or unpacking); the reference is the file's data; --repair: "
                                      + "container bytes cut off (times kept)"), "\(found.output)")
        let repaired = fsck(m.backing, "--repair")
        #expect(repaired.status == 1 && repaired.output.contains("1 problem found, 1 repaired"), "\(repaired.output)")
        let st = try FileIO.stat(path)
        #expect(st.st_size == 0 && st.st_blocks == 0)
        #expect(st.st_mtim.tv_sec == 1_100_000_000 && st.st_mtim.tv_nsec == 7)
        #expect(try reference(path) == ref)
        #expect(fsck(m.backing).status == 0)
        try m.start()
        #expect(try FileIO.read(m.path("text")) == Self.small["text"]!)
    }

    /// stats: packed files by their payload's encoding, the pack's pages
    /// once, totals that make du -B1 -s with the other nodes; the same
    /// through a live mount.
    @Test func statsCountsPackedFilesAndThePackOnce() throws {
        let m = try packedTree()
        defer { m.close() }
        let doc = try statsJSON([m.backing])
        let total = dict(doc["total"]), packed = dict(doc["packed"]), other = dict(doc["other_nodes"])
        let files = ["large", "text", "noise", "zeros", "empty", "d/note"]
        #expect(total["files"] == 6 && total["containers"] == 6 && total["packed"] == 5 && total["plain"] == 0, "\(total)")
        let pagesBytes = Int(try FileIO.stat(m.backingPath(".warpfs-pack/pages")).st_blocks) * 512
        #expect(pagesBytes > 0)
        let fileBytes = try files.reduce(0) { $0 + Int(try FileIO.stat(m.backingPath($1)).st_blocks) * 512 }
        #expect(total["allocated"] == fileBytes + pagesBytes, "\(total)")
        #expect(total["allocated"]! + other["allocated"]! == du(["-s", m.backing]), "files, the pack and other nodes make du -s")
        // The root, d, .warpfs-pack and its id.
        #expect(other["count"] == 4, "\(other)")
        let logical = Self.small.values.reduce(0) { $0 + $1.count }
        let refs = try ["text", "noise", "zeros", "empty", "d/note"].map { try #require(try reference(m.backingPath($0))) }
        #expect(packed["files"] == 5 && packed["logical"] == logical && packed["allocated"] == 0, "\(packed)")
        #expect(packed["stored"] == refs.reduce(0) { $0 + $1.payloadLength } && packed["packs"] == 1 && packed["pack_allocated"] == pagesBytes,
                "\(packed)")
        #expect(total["logical"] == logical + 200_000)
        // Rows: noise stays raw; zeros is a hole; text and d/note in their payloads' encodings.
        let rows = dict2(doc["encodings"])
        let raw = refs.filter { $0.payloadEncoding == .raw }
        #expect(refs[1].payloadEncoding == .raw && rows["raw"]?["files"] == raw.count
                && rows["raw"]?["stored"] == raw.reduce(0) { $0 + $1.payloadLength }, "\(rows)")
        #expect(rows["zero"]?["files"] == 1 && rows["zero"]?["logical"] == 1500, "\(rows)")

        let text = runCommand([warpfsBinary, "stats", "--bytes", m.backing])
        #expect(text.status == 0 && text.output.contains("6 files: 6 containers (5 packed), 0 plain")
                && text.output.contains("packed: 5 files, \(logical) logical in \(packed["stored"]!) of payloads in the pack, whose pages take "
                                        + "\(pagesBytes) (counted once in TOTAL allocated)"), "\(text.output)")

        // Two arguments over the same pack count it once.
        let twice = try statsJSON([m.backing, m.backing + "/"])
        #expect(dict(twice["total"])["allocated"] == total["allocated"], "\(twice)")

        try m.start()
        let online = try statsJSON([m.mountpoint])
        #expect(dict(online["total"]) == total && dict(online["packed"]) == packed, "\(online)")
    }

    /// decompress reads a packed file from its pack, writes it plain, and
    /// frees its record; compress leaves packed files and the pack alone.
    @Test func decompressOfAPackedFileGivesItsBytesAndFreesItsRecord() throws {
        let m = try packedTree()
        defer { m.close() }
        let pages = m.backingPath(".warpfs-pack/pages")
        let packBefore = try FileIO.read(pages)
        let compress = runCommand([warpfsBinary, "compress", m.backing])
        #expect(compress.status == 0 && compress.output.contains("compressed 0 file(s), 6 already compressed, 0 skipped, 0 failed"),
                "\(compress.output)")
        #expect(try FileIO.read(pages) == packBefore, "the pack is not converted")

        let d = runCommand([warpfsBinary, "decompress", m.backingPath("d/note"), m.backingPath("text")])
        #expect(d.status == 0 && d.output.contains("decompressed 2 file(s)"), "\(d.output)")
        for n in ["d/note", "text"] {
            #expect(try FileIO.read(m.backingPath(n)) == Self.small[n]!, "\(n)")
            #expect(try reference(m.backingPath(n)) == nil, "\(n): the reference is not copied")
        }
        let check = fsck(m.backing)
        #expect(check.status == 0 && check.output.contains("3 packed files checked, 1 record in 1 pack"), "\(check.output)")
        let all = runCommand([warpfsBinary, "decompress", m.backing])
        #expect(all.status == 0 && all.output.contains("decompressed 4 file(s), 2 already plain"), "\(all.output)")
        #expect(try FileIO.stat(pages).st_blocks == 0, "every record freed: the page is punched")
        for (n, data) in Self.small { #expect(try FileIO.read(m.backingPath(n)) == data, "\(n)") }
        #expect(fsck(m.backing).status == 0)
    }

    // MARK: Helpers

    private func fsck(_ backing: String, _ extra: String...) -> (status: Int32, output: String) {
        runCommand([warpfsBinary, "fsck", backing, "--progress", "never"] + extra)
    }

    /// The packed-file reference of a backing file; nil when it has none.
    private func reference(_ path: String) throws -> PackReference? {
        var buf = [UInt8](repeating: 0, count: 128)
        let n = getxattr(path, PackReference.attributeName, &buf, buf.count)
        if n < 0 {
            if errno == ENODATA { return nil }
            throw Errno(errno, "getxattr \(path)")
        }
        return try PackReference.decode(Array(buf[0..<n]))
    }


    /// The backing bytes of a container holding `data`, written by a mount that does not pack.
    private func containerOf(_ data: [UInt8]) throws -> [UInt8] {
        try withMount(options: "nopack") { m in
            try FileIO.write(m.path("f"), data)
            m.unmount()
            return try FileIO.read(m.backingPath("f"))
        }
    }

    private func statsJSON(_ args: [String]) throws -> [String: Any] {
        let r = runCommand(["/bin/sh", "-c", "\"$0\" stats --json --progress never \"$@\" 2>/dev/null", warpfsBinary] + args)
        #expect(r.status == 0, "\(r.output)")
        return try #require(try JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], "\(r.output)")
    }

    private func dict(_ v: Any?) -> [String: Int] {
        ((v as? [String: Any]) ?? [:]).compactMapValues { ($0 as? NSNumber).map { $0.intValue } }
    }

    private func dict2(_ v: Any?) -> [String: [String: Int]] {
        ((v as? [String: Any]) ?? [:]).mapValues { dict($0) }
    }

    private func du(_ args: [String]) -> Int {
        let r = runCommand(["/usr/bin/du", "-B1"] + args)
        #expect(r.status == 0, "\(r.output)")
        return Int(r.output.split(separator: "\n").last?.split(separator: "\t").first ?? "") ?? -1
    }
}
