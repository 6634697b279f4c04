#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CWarpSys
import WarpDrive
import WarpFSCore
import WarpFSFormat

/// `warpfs fsck BACKING [--repair]`: checks every container of an unmounted
/// backing directory and, with `--repair`, fixes what can be fixed without
/// losing readable data. Exit codes as fsck(8).
struct Fsck: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the containers of a backing directory (offline), and repair them with --repair.",
        discussion: """
        Walks BACKING (BACKING itself may be a symbolic link; nothing inside it is followed), skips \
        plain files, and checks in every \
        container both header copies, every block's slot headers and payloads (checksums and \
        decompression), stale or torn versions left by a crash, slots past the end of the file, \
        payloads that overlap and allocated space nothing refers to. One line per problem on \
        standard output, naming the file (relative to BACKING) and the block, then a summary.

        Packed small files (an empty backing file whose user.warpfs.packed attribute refers to a \
        record in the pack, .warpfs-pack) are checked against the pack in their directory or the \
        nearest one above: the reference decodes, names that pack's id, and its record is there \
        with its key and checksum, entered in its page, and decompresses to one block. Container \
        bytes a crash left beside a reference are reported, and so is a reference whose record \
        cannot be read (by file name; the file cannot be read unless a whole container beside the \
        reference holds its data). The pack itself is not walked as files. When BACKING holds the \
        pack, its damaged pages are reported and so are its orphans: records no file in BACKING \
        refers to (page, offset, bytes), left by a crash while packing or unpacking or after a \
        removal. When BACKING is a subdirectory of the directory holding the pack, orphans are not \
        looked for (fsck says so).

        --repair rewrites a damaged header copy from the valid one, drops stale and torn \
        versions, slots past the end and damaged slot headers next to a valid version, and \
        punches unreferenced space. For packed files it cuts off container bytes beside a good \
        reference (keeping the file's times), removes a reference whose record cannot be read when \
        a whole container beside it holds the data, and frees orphaned records, unless a file \
        that could not be checked or a reference that does not decode might still name them (or a \
        reference names the same place with another key). It never touches a version that can \
        still be read, never writes a file that has a hard link outside BACKING or that was \
        replaced during the check, and refuses to run while BACKING is mounted.

        Exit status: 0 no problem; 1 problems found and all repaired; 4 problems left (any \
        problem without --repair); 8 operational error (BACKING missing or unreadable, a file \
        that cannot be read, BACKING mounted with --repair); 16 usage error. 8 is added to 1 or \
        4 when both happen.
        """)

    static let usageError: Int32 = 16
    static let operationalError: Int32 = 8

    @Argument(help: "The backing directory (what `warpfs mount` is given); not mounted, for --repair.")
    var backing: String
    @Flag(help: "Repair what can be repaired without losing readable data.") var repair = false
    @Option(help: ArgumentHelp("Progress bar on standard error: auto (when it is a terminal), always or never.", valueName: "when"))
    var progress: String = "auto"
    @Option(name: .short, help: "Options as for mount that choose the accelerator: engines, device.") var o: [String] = []

    func validate() throws {
        guard ["auto", "always", "never"].contains(progress) else {
            throw ValidationError("--progress must be auto, always or never, not '\(progress)'")
        }
        _ = try acceleratorOptions()
    }

    /// The `-o` options (the accelerator fsck decompresses with).
    func acceleratorOptions() throws -> MountOptions {
        do { return try MountOptions(lists: o) } catch { throw ValidationError("\(error)") }
    }

    /// Runs `warpfs fsck ...` when that is the command line, with fsck(8)'s
    /// usage status (16) for a bad command line instead of the parser's 64;
    /// returns for every other command.
    static func mainIfInvoked() {
        let args = Array(CommandLine.arguments.dropFirst())
        guard args.first == "fsck" else { return }
        do {
            var command = try WarpFS.parseAsRoot(args)
            try command.run()
            Glibc.exit(0)
        } catch {
            if WarpFS.exitCode(for: error) == .validationFailure {
                eprint(WarpFS.fullMessage(for: error))
                Glibc.exit(usageError)
            }
            WarpFS.exit(withError: error)
        }
    }

    func run() throws {
        var st = stat()
        guard stat(backing, &st) == 0 else {
            eprint("warpfs fsck: backing directory '\(displayName(backing))': \(String(cString: strerror(errno)))")
            throw ExitCode(Fsck.operationalError)
        }
        guard st.st_mode & S_IFMT == S_IFDIR, let root = canonical(backing) else {
            eprint("warpfs fsck: '\(displayName(backing))' is not a directory (give the backing directory of a WarpFS mount)")
            throw ExitCode(Fsck.operationalError)
        }
        guard access(root, R_OK | X_OK) == 0 else {
            eprint("warpfs fsck: backing directory '\(displayName(root))': \(String(cString: strerror(errno)))")
            throw ExitCode(Fsck.operationalError)
        }
        if let mnt = liveMount(of: root) {
            if repair {
                eprint("warpfs fsck: '\(root)' is the backing directory of the WarpFS mount at '\(mnt)'; unmount it before --repair")
                throw ExitCode(Fsck.operationalError)
            }
            eprint("warpfs fsck: warning: '\(root)' is the backing directory of the WarpFS mount at '\(mnt)'; "
                + "files changing under the check may give inconsistent results")
        }

        TreeWalk.raiseOpenFileLimit()
        let rootfd: Int32
        do { rootfd = try TreeWalk.openArgumentDirectory(root) } catch {
            eprint("warpfs fsck: backing directory '\(displayName(root))': \(error)")
            throw ExitCode(Fsck.operationalError)
        }
        var walk = BackingWalk(rootfd: rootfd, label: "warpfs fsck")
        walk.collect()
        defer { walk.close() }
        let codec: BlockCodec
        do { codec = try Accelerator.codec(try acceleratorOptions(), poolBuffers: 128) } catch {
            eprint("warpfs fsck: \(error)")
            throw ExitCode(Fsck.operationalError)
        }
        // Stop the engines while this thread still holds the device: an engine
        // thread that dropped the last reference would free it under itself.
        defer { codec.shutdownDevices() }
        let checker = ContainerCheck(codec: codec)
        let bar = ProgressBar(total: walk.totalBytes, enabled: progress == "always" || (progress == "auto" && isatty(2) != 0))
        checker.progress = { bar.advance($0) }

        var files = 0, plain = 0, packed = 0, blocks = 0, found = 0, repaired = 0, operational = walk.errors.count
        for e in walk.errors { bar.print(e, error: true) }
        func report(_ label: String, _ p: ContainerProblem) {
            found += 1
            var line = "\(label): \(p.message)"
            if p.repaired {
                repaired += 1
                line += "; repaired: \(p.fix!)"
            } else if let e = p.repairError {
                line += "; repair failed: \(e)"
            } else if let fix = p.fix {
                line += repair ? "; not repaired" : "; --repair: \(fix)"
            } else {
                line += "; cannot be repaired"
            }
            bar.print(line)
        }

        // The packs in the tree (by the directory holding each), and the
        // one above it that serves the files no pack in the tree does.
        var packs: [Int: Result<PackStore?, Error>] = [:]
        for p in walk.packs {
            let label = walk.packLabel(p.directory)
            packs[p.directory] = Result {
                try PackStore.open(root: try walk.directory(p.directory, for: label), create: false, readOnly: !repair)
            }
            if case .failure(let e) = packs[p.directory]! {
                operational += 1
                bar.print("warpfs fsck: \(label): \(e)", error: true)
            }
        }
        var above: Result<(store: PackStore, levels: Int)?, Error>?
        func packAbove() throws -> (store: PackStore, levels: Int)? {
            if above == nil { above = Result { try PackStore.locate(from: rootfd, readOnly: !repair) } }
            return try above!.get()
        }
        func pack(serving directory: Int, for name: String) throws -> PackStore? {
            do {
                guard let p = walk.pack(serving: directory) else { return try packAbove()?.store }
                return try packs[p.directory]!.get()
            } catch {
                throw FSError((error as? FSError)?.errno ?? EIO, "\(name): packed, and its pack cannot be opened: \(error)")
            }
        }

        var references: [PackCheck.Reference] = []
        var unchecked: [Int] = []                 // directories of files that could not be checked
        var undecodable: [Int] = []               // directories of files keeping a reference that does not decode
        for file in walk.files {
            let before = bar.done
            do {
                let dirfd = try walk.directory(file.directory, for: file.name)
                let r = try checker.check(at: dirfd, leaf: file.leaf.cString, name: file.name, repair: repair, namesInTree: file.names,
                                          pack: { try pack(serving: file.directory, for: file.name) })
                guard r.isContainer || r.isPacked else { plain += 1; bar.set(before + file.bytes); continue }
                files += 1
                if r.isPacked { packed += 1 }
                blocks += r.blocks
                if let ref = r.packReference, ref.hasRecord {
                    references.append(PackCheck.Reference(name: file.name, reference: ref,
                                                         recordChecked: !r.problems.contains { $0.kind == .packedRecord }))
                }
                if r.keepsUndecodableReference { undecodable.append(file.directory) }
                for p in r.problems { report(file.name, p) }
            } catch {
                operational += 1
                unchecked.append(file.directory)
                bar.print("warpfs fsck: \(error)", error: true)
            }
            bar.set(before + file.bytes)
        }

        // Each pack of the tree against the references found: damaged
        // pages, references whose record is not entered in its page, and
        // records nobody refers to (orphans, freed by --repair unless a
        // file that could not be read may refer to them).
        var records = 0
        for p in walk.packs {
            guard case .success(let store?) = packs[p.directory] else { continue }
            let label = walk.packLabel(p.directory)
            var blockers: [String] = []
            if !walk.errors.isEmpty { blockers.append("parts of the tree could not be walked") }
            let blind = unchecked.filter { walk.directory($0, isIn: p.directory) }.count
            if blind > 0 { blockers.append("\(blind) file\(blind == 1 ? "" : "s") could not be checked") }
            let opaque = undecodable.filter { walk.directory($0, isIn: p.directory) }.count
            if opaque > 0 { blockers.append(opaque == 1 ? "1 file keeps a reference that does not decode" : "\(opaque) files keep references that do not decode") }
            do {
                let result = try PackCheck.check(store, label: label, references: references.filter { $0.reference.packID == store.id },
                                                repair: repair, blockers: blockers)
                records += result.records
                for (name, problem) in result.problems { report(name, problem) }
            } catch {
                operational += 1
                bar.print("warpfs fsck: \(label): \(error)", error: true)
            }
        }
        bar.finish()
        if walk.pack(serving: 0) == nil, case .some(let p?) = try? packAbove() {
            let up = Array(repeating: "..", count: p.levels).joined(separator: "/")
            print("orphaned records in the pack were not looked for: the pack is in \(up) (\(p.levels) level\(p.levels == 1 ? "" : "s") "
                + "above \(displayName(root))); check that directory to look for them")
        }
        if packed > 0 || !walk.packs.isEmpty {
            print("\(packed) packed file\(packed == 1 ? "" : "s") checked" + (walk.packs.isEmpty ? "" : ", \(records) record"
                + "\(records == 1 ? "" : "s") in \(walk.packs.count) pack\(walk.packs.count == 1 ? "" : "s")"))
        }
        print("\(files) file\(files == 1 ? "" : "s") checked, \(plain) plain file\(plain == 1 ? "" : "s") skipped, "
            + "\(blocks) block\(blocks == 1 ? "" : "s") checked, \(found) problem\(found == 1 ? "" : "s") found, \(repaired) repaired"
            + (operational > 0 ? ", \(operational) file\(operational == 1 ? "" : "s") could not be checked" : ""))
        var code: Int32 = found > repaired ? 4 : found > 0 ? 1 : 0
        if operational > 0 { code += Fsck.operationalError }
        if code != 0 { throw ExitCode(code) }
    }
}

/// A one-line progress bar on standard error, redrawn at most five times a
/// second, cleared before any other line is printed and at the end.
final class ProgressBar {
    let total: Int
    let enabled: Bool
    private(set) var done = 0
    private var lastDraw: UInt64 = 0
    private var shown = false

    init(total: Int, enabled: Bool) {
        self.total = max(total, 1)
        self.enabled = enabled
    }

    func advance(_ n: Int) { set(done + n) }

    func set(_ n: Int) {
        done = n
        guard enabled else { return }
        let now = wd_now_ns()
        if now - lastDraw < 200_000_000 { return }
        lastDraw = now
        let fraction = min(1.0, Double(done) / Double(total))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        raw("\r[\(bar)] \(Int(fraction * 100))% \(mib(min(done, total))) of \(mib(total)) MiB\u{1B}[K")
        shown = true
    }

    /// Prints a line on standard output (or error) without mixing it with the bar.
    func print(_ line: String, error: Bool = false) {
        clear()
        if error { eprint(line) } else { Swift.print(line); fflush(nil) }
    }

    func finish() { clear() }

    private func clear() {
        guard shown else { return }
        raw("\r\u{1B}[K")
        shown = false
        lastDraw = 0
    }

    private func raw(_ s: String) {
        var s = s
        s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    private func mib(_ n: Int) -> String {
        let tenths = n * 10 / (1 << 20)
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// The mountpoint of a live WarpFS mount whose backing directory is `root`,
/// contains it or lies inside it, per /proc/self/mountinfo. A WarpFS mount
/// has the file system type `fuse.warpfs` and its backing directory as its
/// source (fsname, with commas turned into '_'; `warpfs:BACKING` as
/// earlier builds named it is still recognised, for mounts that run on).
func liveMount(of root: String) -> String? {
    guard let f = fopen("/proc/self/mountinfo", "r") else { return nil }
    defer { fclose(f) }
    let mine = String(root.map { $0 == "," ? "_" : $0 })
    var line = [CChar](repeating: 0, count: 16384)
    while fgets(&line, Int32(line.count), f) != nil {
        let text = String(decoding: line.prefix(while: { $0 != 0 && $0 != 10 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let fields = text.split(separator: " ", omittingEmptySubsequences: false)
        guard let dash = fields.firstIndex(of: "-"), fields.count > dash + 2, fields.count > 4 else { continue }
        guard fields[dash + 1] == "fuse.warpfs" else { continue }
        let source = unescapeMountPath(String(fields[dash + 2]))
        let theirs = source.hasPrefix("warpfs:") ? String(source.dropFirst("warpfs:".count)) : source
        if theirs == mine || mine.hasPrefix(theirs == "/" ? "/" : theirs + "/") || theirs.hasPrefix(mine == "/" ? "/" : mine + "/") {
            return unescapeMountPath(String(fields[4]))
        }
    }
    return nil
}
