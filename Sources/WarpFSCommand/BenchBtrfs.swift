#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import BenchSupport

/// btrfs on a loop device, mounted `compress-force=SPEC`: the kernel's own
/// transparent compression, the anchor WarpFS is measured against. The
/// image is a sparse file under the bench's temporary directory; it is
/// unmounted, detached and deleted by `stop()`, by exit() or by the signal
/// thread (see `Cleanup`), whichever comes first.
final class BtrfsTarget: BenchTarget, @unchecked Sendable {
    /// `zstd:1`, `zlib:1`, ...: the value of `compress-force=`.
    let spec: String
    let image: String
    private(set) var loopDevice: String?
    private var cleanupID = 0
    private var usedBefore: Int?

    /// The compression specs btrfs accepts (`compress-force=ALGORITHM[:LEVEL]`), as the bench checks them.
    static func validate(_ spec: String) throws {
        let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
        let levels: [Substring: ClosedRange<Int>] = ["zstd": 1...15, "zlib": 1...9]
        let known = parts[0] == "lzo" ? parts.count == 1 : levels[parts[0]].map { range in
            parts.count == 1 || (parts.count == 2 && Int(parts[1]).map(range.contains) == true)
        } ?? false
        guard known else {
            throw ValidationError("--btrfs '\(spec)': expected zstd[:1-15], zlib[:1-9] or lzo, comma separated")
        }
    }

    /// Why btrfs targets cannot run on this machine; nil when they can.
    static func unavailable() -> String? {
        if getuid() != 0 { return "not root (a loop device and a mount need root)" }
        for p in ["mkfs.btrfs", "btrfs"] where findProgram(p) == nil { return "\(p) not found (Debian package btrfs-progs)" }
        for p in ["losetup", "mount", "umount"] where findProgram(p) == nil { return "\(p) not found (Debian package mount)" }
        return nil
    }

    /// Makes, attaches and mounts a sparse image of `imageBytes` under `root`.
    init(spec: String, root: String, imageBytes: Int) throws {
        self.spec = spec
        let tag = "btrfs-" + spec.filter { $0 != ":" }
        image = root + "/\(tag).img"
        super.init(name: "btrfs-\(spec)", dir: root + "/\(tag)")
        do {
            try setUp(spec: spec, imageBytes: imageBytes)
        } catch {
            Cleanup.shared.run(cleanupID)
            throw error
        }
    }

    private func setUp(spec: String, imageBytes: Int) throws(BenchFailure) {
        try Cleanup.shared.critical { () throws(BenchFailure) in
            mkdir(dir, 0o755)
            let fd = open(image, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw BenchFailure("cannot create \(image): \(String(cString: strerror(errno)))") }
            cleanupID = Cleanup.shared.add { [self] in teardown() }
            let sized = ftruncate(fd, off_t(imageBytes)) == 0
            close(fd)
            guard sized else { throw BenchFailure("cannot size \(image): \(String(cString: strerror(errno)))") }
            let mkfs = btrfsTool("mkfs.btrfs", ["-q", "-f", image])
            guard mkfs.succeeded else { throw BenchFailure("mkfs.btrfs: \(mkfs.lastLine)") }
            let attach = btrfsTool("losetup", ["--find", "--show", image])
            guard attach.succeeded, attach.lastLine.hasPrefix("/dev/") else { throw BenchFailure("losetup: \(attach.lastLine)") }
            loopDevice = attach.lastLine
            let mount = btrfsTool("mount", ["-t", "btrfs", "-o", "compress-force=\(spec)", attach.lastLine, dir])
            guard mount.succeeded else { throw BenchFailure("mount -o compress-force=\(spec): \(mount.lastLine)") }
        }
    }

    override var coldMethod: String {
        "sync; echo 3 > /proc/sys/vm/drop_caches (btrfs's page cache and the image's on the backing file system)"
    }
    override var cpuMethod: String { "all kernel threads (btrfs's compression and checksum workers, the loop device)" }
    override var spaceMethod: String {
        "btrfs filesystem usage -b: Used (data + metadata) after the write minus before"
            + (findProgram("compsize") != nil ? "; data only: compsize -b" : "")
    }

    override var cpuSeconds: Double { kernelThreadsCPUSeconds() }

    override func beforeWrite() {
        sync()
        usedBefore = used()
    }

    override func space(of file: String) -> SpaceUse? {
        var st = stat()
        guard lstat(dir + "/" + file, &st) == 0 else { return nil }
        sync()
        var s = SpaceUse(logical: Int(st.st_size), allocated: 0)
        if let before = usedBefore, let after = used() { s.allocated = after - before }
        if findProgram("compsize") != nil {
            // "TOTAL  62%  <disk usage>  <uncompressed>  <referenced>"
            let r = btrfsTool("compsize", ["-b", dir + "/" + file])
            if let total = r.output.split(separator: "\n").first(where: { $0.hasPrefix("TOTAL") }) {
                let f = total.split(separator: " ", omittingEmptySubsequences: true)
                if f.count >= 3 { s.dataOnly = Int(f[2]) }
            }
        }
        if s.allocated <= 0, let d = s.dataOnly { s.allocated = d }
        return s.allocated > 0 ? s : nil
    }

    /// "Used:" of `btrfs filesystem usage -b`: bytes allocated on the device for data and metadata (DUP counted twice).
    private func used() -> Int? {
        let r = btrfsTool("btrfs", ["filesystem", "usage", "-b", dir])
        guard r.succeeded else { return nil }
        for line in r.output.split(separator: "\n") {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if f.count >= 2, f[0] == "Used:" { return Int(f[1]) }
        }
        return nil
    }

    override func stop() { Cleanup.shared.run(cleanupID) }

    /// Unmounts (lazily when busy, as on an interruption), detaches the loop
    /// device (a busy one detaches itself when released) and deletes the image.
    private func teardown() {
        if isMountpoint(dir) {
            let u = btrfsTool("umount", [dir])
            if !u.succeeded {
                eprint("warpfs bench: \(name): umount: \(u.lastLine); detaching lazily")
                _ = btrfsTool("umount", ["-l", dir])
            }
        }
        if let loopDevice {
            let d = btrfsTool("losetup", ["-d", loopDevice])
            if !d.succeeded { eprint("warpfs bench: \(name): losetup -d \(loopDevice): \(d.lastLine)") }
            self.loopDevice = nil
        }
        unlink(image)
        rmdir(dir)
    }
}

/// Runs one of btrfs-progs' or util-linux's programs by name.
func btrfsTool(_ name: String, _ arguments: [String]) -> ProgramResult {
    guard let path = findProgram(name) else { return ProgramResult(status: -1, output: "\(name) not found") }
    return runCapturing(path, arguments)
}
