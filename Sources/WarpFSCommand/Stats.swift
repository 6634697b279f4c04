#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import WarpFSCore
import WarpFSFormat

/// `warpfs stats PATH...`: how the files of a backing tree, or of a live
/// mount, are stored, per block encoding (the compsize of WarpFS). Reads
/// only headers and slot tables (`ContainerUsage`), never payloads.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show how files are stored: per block encoding, logical size, payload bytes and allocated space.",
        discussion: """
        PATH is a file or directory inside a backing directory (read offline) or inside a live WarpFS \
        mount (found in /proc/self/mountinfo; the matching backing files are read, so the caller must be \
        able to read the backing directory). Symbolic links on the command line are followed; nothing \
        inside a tree is followed. Hard links are counted once.

        One row per encoding present: raw, zero/holes (blocks that read as zeros without a payload), \
        deflate, zlib, gzip, zstd, lz4, and plain (files that are not containers). files = files with at \
        least one block in that row; blocks; logical = the blocks' uncompressed bytes, clipped at the file \
        size; stored = the current versions' payload bytes, the codec outputs (a plain file: its size). \
        TOTAL adds allocated = st_blocks * 512 of the regular files and ratio = logical / allocated. \
        Directories and other nodes are not in TOTAL; the line under it adds them, which is what \
        du -B1 -s counts for the same paths.

        Packed small files (their one block a record in the backing directory's pack, \
        .warpfs-pack, their backing files empty) count as containers, in the row of their \
        payload's encoding: logical = their size, stored = the payload's length. A tree that holds \
        a pack counts its pages file once in TOTAL allocated (the pack directory and its id file \
        are other nodes), so TOTAL and the line under it still make du -B1 -s; the pack is not \
        walked as files. The packed line (and "packed" in --json: files, logical, stored, \
        allocated by their own backing files, packs, pack_allocated) gives the figures.

        Through a live mount, blocks the mount still buffers (written since the file was last closed or \
        synced) are not counted yet. Exit status 1 when some path or file could not be read (reported, \
        left out of the figures).
        """)

    @Argument(help: ArgumentHelp("Files or directories in a backing directory or a WarpFS mount.", valueName: "path")) var paths: [String]
    @Flag(help: "Print one JSON object instead of the table.") var json = false
    @Flag(help: "Exact byte counts in the table instead of KiB, MiB, GiB.") var bytes = false
    @Option(help: ArgumentHelp("Progress line on standard error: auto (when it is a terminal and the tree is large), always or never.",
                               valueName: "when"))
    var progress: String = "auto"

    /// A tree is large (auto shows progress) from this many files or allocated bytes.
    static let largeTree = (files: 10_000, bytes: 1 << 30)

    func validate() throws {
        guard !paths.isEmpty else { throw ValidationError("give at least one PATH") }
        guard ["auto", "always", "never"].contains(progress) else {
            throw ValidationError("--progress must be auto, always or never, not '\(progress)'")
        }
    }

    /// What one argument turned into: a tree walk or one file, in the
    /// directory the argument resolves to.
    private struct Target {
        enum Kind {
            case tree(BackingWalk)
            case file(dirfd: Int32, leaf: EntryName, key: [UInt64])
        }
        let kind: Kind
        /// The argument, for messages: files are named below it.
        let display: String
        /// Read through a mount: a permission error gets a hint.
        let onMount: Bool
    }

    func run() throws {
        TreeWalk.raiseOpenFileLimit()
        var tally = StatsTally()
        var failed = false
        var counted: Set<[UInt64]> = []
        var targets: [Target] = []
        var described: [(argument: String, read: String, mount: String?)] = []
        for p in paths {
            let display = displayName(p)
            let place: StatsPlace
            do { place = try StatsPlace.locate(p) } catch {
                eprint("warpfs stats: \(display): \(error)")
                failed = true
                continue
            }
            if let mnt = place.mount, !json {
                print("\(display): on the WarpFS mount at \(displayName(mnt)); reading its backing files at \(displayName(place.read))")
            }
            do {
                let (parent, leaf) = try TreeWalk.resolveArgument(place.read)
                guard let leaf else {
                    var walk = BackingWalk(rootfd: parent, label: "warpfs stats", counted: counted)
                    walk.collect()
                    counted = walk.counted
                    targets.append(Target(kind: .tree(walk), display: display, onMount: place.mount != nil))
                    described.append((p, place.read, place.mount))
                    continue
                }
                let st: stat
                do { st = try TreeWalk.lstatAt(parent, leaf) } catch { close(parent); throw error }
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    let fd: Int32
                    do { fd = try TreeWalk.openDirectory(parent, leaf) } catch { close(parent); throw error }
                    close(parent)
                    var walk = BackingWalk(rootfd: fd, label: "warpfs stats", counted: counted)
                    walk.collect()
                    counted = walk.counted
                    targets.append(Target(kind: .tree(walk), display: display, onMount: place.mount != nil))
                case S_IFREG:
                    let key = [UInt64(st.st_dev), UInt64(st.st_ino)]
                    if counted.insert(key).inserted {
                        targets.append(Target(kind: .file(dirfd: parent, leaf: leaf, key: key), display: display, onMount: place.mount != nil))
                    } else {
                        close(parent)
                    }
                default:
                    close(parent)
                    throw FSError(EINVAL, "a \(TreeWalk.typeName(st.st_mode)), not a regular file or directory; skipped")
                }
                described.append((p, place.read, place.mount))
            } catch {
                eprint("warpfs stats: \(display): \(place.mount == nil ? "" : "(backing file \(displayName(place.read))) ")\(error)"
                    + (place.mount != nil && (error as? FSError)?.errno == EACCES ? StatsPlace.permissionHint : ""))
                failed = true
            }
        }

        var totalFiles = 0, totalBytes = 0
        for t in targets {
            switch t.kind {
            case .tree(let w): totalFiles += w.files.count; totalBytes += w.totalBytes
            case .file: totalFiles += 1
            }
        }
        let large = totalFiles >= Stats.largeTree.files || totalBytes >= Stats.largeTree.bytes
        let bar = ProgressBar(total: totalBytes, enabled: progress == "always" || (progress == "auto" && large && isatty(2) != 0))
        func unreadable(_ error: Error, _ t: Target) {
            let hint = t.onMount && (error as? FSError)?.errno == EACCES ? StatsPlace.permissionHint : ""
            bar.print("warpfs stats: \(error)\(hint)", error: true)
            tally.unreadable += 1
            failed = true
        }
        for t in targets {
            switch t.kind {
            case .tree(var walk):
                let prefix = t.display.hasSuffix("/") ? t.display : t.display + "/"
                for e in walk.errors { bar.print(e, error: true); failed = true }
                tally.otherNodes += walk.otherNodes
                tally.otherAllocated += UInt64(walk.otherBytes)
                for p in walk.packs where p.first { tally.addPack(allocated: p.bytes) }
                for file in walk.files {
                    let before = bar.done
                    do {
                        let dirfd = try walk.directory(file.directory, for: prefix + file.name)
                        try Stats.count(dirfd, file.leaf, key: file.key, name: prefix + file.name, into: &tally)
                    } catch {
                        unreadable(error, t)
                    }
                    bar.set(before + file.bytes)
                }
                walk.close()
            case .file(let dirfd, let leaf, let key):
                do { try Stats.count(dirfd, leaf, key: key, name: t.display, into: &tally) } catch { unreadable(error, t) }
                close(dirfd)
            }
        }
        bar.finish()
        print(json ? tally.json(paths: described) : tally.render(bytes: bytes), terminator: "")
        if failed { throw ExitCode(1) }
    }

    /// Reads one regular file into the tally: opened in `dirfd` without
    /// following a link or blocking on a FIFO, and checked to be the inode
    /// the walk found (`key`).
    static func count(_ dirfd: Int32, _ leaf: EntryName, key: [UInt64], name: String, into tally: inout StatsTally) throws {
        let flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY
        var fd = openat(dirfd, leaf.cString, flags | ContainerUsage.noAtime)
        if fd < 0 && errno == EPERM { fd = openat(dirfd, leaf.cString, flags) }
        guard fd >= 0 else {
            if errno == ELOOP { throw FSError(ELOOP, "\(name): replaced by a symbolic link during the walk; not followed") }
            throw FSError.last("open \(name)")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw FSError.last("stat \(name)") }
        guard st.st_mode & S_IFMT == S_IFREG, [UInt64(st.st_dev), UInt64(st.st_ino)] == key else {
            throw FSError(ESTALE, "\(name): replaced during the walk; not counted")
        }
        let allocated = Int(st.st_blocks) * 512
        if let usage = try ContainerUsage.read(fd: fd, name: name) {
            tally.add(usage, allocated: allocated)
        } else {
            tally.addPlain(size: Int(st.st_size), allocated: allocated)
        }
    }
}

/// Where a command-line path is read: the path itself (offline), or, when
/// it lies in a live WarpFS mount, the same path under the mount's backing
/// directory.
struct StatsPlace {
    /// What to read (absolute, symbolic links resolved).
    let read: String
    /// The mountpoint when `read` was mapped from a mount.
    let mount: String?

    static let permissionHint = " (stats reads the backing files of a mount: run it as the user who mounted, or as root)"

    /// Resolves `path` (following symbolic links as given) and maps it to
    /// the backing tree when the mount it lies on is a WarpFS mount: the
    /// mount whose mountpoint is the longest prefix of the path (the last
    /// one listed, on a tie), per /proc/self/mountinfo, with file system
    /// type `fuse.warpfs` and the backing directory as its source
    /// (`warpfs:BACKING` from earlier builds).
    static func locate(_ path: String) throws -> StatsPlace {
        guard let real = canonical(path) else { throw FSError.last("resolve") }
        guard let m = mountContaining(real) else { return StatsPlace(read: real, mount: nil) }
        let rest = m.mountpoint == "/" ? real : String(real.dropFirst(m.mountpoint.count))
        let backing = m.backing
        // The mount shows the backing files' own inode numbers: the root must match.
        var b = stat(), r = stat()
        guard stat(backing, &b) == 0 else {
            let e = errno
            throw FSError(e, "it is on the WarpFS mount at \(displayName(m.mountpoint)), whose backing directory "
                + "\(displayName(backing)) cannot be reached: \(String(cString: strerror(e)))" + (e == EACCES ? permissionHint : ""))
        }
        guard stat(m.mountpoint, &r) == 0, b.st_ino == r.st_ino else {
            throw FSError(ENOENT, "it is on the WarpFS mount at \(displayName(m.mountpoint)), but \(displayName(backing)) is not its "
                + "backing directory (the mount table shows commas in the backing path as '_'); give the backing path instead")
        }
        guard access(backing, R_OK | X_OK) == 0 else {
            let e = errno
            throw FSError(e, "it is on the WarpFS mount at \(displayName(m.mountpoint)), whose backing directory "
                + "\(displayName(backing)) cannot be read: \(String(cString: strerror(e)))" + (e == EACCES ? permissionHint : ""))
        }
        return StatsPlace(read: backing + rest, mount: m.mountpoint)
    }

    /// The WarpFS mount `path` (absolute, resolved) is on, if the mount it is on is one.
    static func mountContaining(_ path: String) -> (mountpoint: String, backing: String)? {
        guard let f = fopen("/proc/self/mountinfo", "r") else { return nil }
        defer { fclose(f) }
        var best: (mountpoint: String, type: Substring, source: String)?
        var line = [CChar](repeating: 0, count: 16384)
        while fgets(&line, Int32(line.count), f) != nil {
            let text = String(decoding: line.prefix(while: { $0 != 0 && $0 != 10 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", omittingEmptySubsequences: false)
            guard let dash = fields.firstIndex(of: "-"), fields.count > dash + 2, fields.count > 4 else { continue }
            let mp = unescapeMountPath(String(fields[4]))
            guard mp == "/" || path == mp || path.hasPrefix(mp + "/") else { continue }
            if let b = best, b.mountpoint.count > mp.count { continue }
            best = (mp, fields[dash + 1], unescapeMountPath(String(fields[dash + 2])))
        }
        guard let b = best, b.type == "fuse.warpfs" else { return nil }
        return (b.mountpoint, b.source.hasPrefix("warpfs:") ? String(b.source.dropFirst("warpfs:".count)) : b.source)
    }
}
