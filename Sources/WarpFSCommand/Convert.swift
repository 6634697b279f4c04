#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CWarpSys
import WarpDrive
import WarpFSCore
import WarpFSFormat

/// Shared by `compress` and `decompress`: walks the paths by directory
/// descriptors (see `TreeWalk`) and converts each regular file through a
/// temporary file created beside it and an atomic rename, keeping mode,
/// owner, times and extended attributes. A path on the command line is
/// resolved once, following symbolic links as the caller named it; nothing
/// found inside the walk is followed.
///
/// What others who can write in the tree cannot do any more (the commands
/// run as root): plant the temporary's name as a link (it is random, created
/// with O_CREAT | O_EXCL | O_NOFOLLOW in the source's directory descriptor),
/// swap a directory for a link mid-walk (each step is an `openat` with
/// O_NOFOLLOW | O_DIRECTORY), make root open a FIFO that blocks (O_NONBLOCK,
/// then fstat: regular files only), or have metadata applied to another file
/// (fchown, fchmod, futimens and xattrs through the new file's descriptor).
struct Converter {
    let toCompressed: Bool
    let options: MountOptions
    let codec: BlockCodec
    var converted = 0, alreadyDone = 0, skipped = 0, failed = 0

    /// The old fixed temporary name's suffix (left over by an interrupted
    /// run of an older version) and the prefix of today's random names.
    static let oldTemporarySuffix = Array(".warpfs-tmp".utf8)
    static let temporaryPrefix = ".warpfs-tmp-"

    init(toCompressed: Bool, options: MountOptions) throws {
        self.toCompressed = toCompressed
        self.options = options
        codec = try Accelerator.codec(options)
    }

    /// One directory being walked: its descriptor, how messages call it,
    /// and the names still to visit (last first).
    private struct Frame {
        let fd: Int32
        let display: String
        var pending: [EntryName]
        let depth: Int
    }

    /// Converts what `argument` names: a regular file, or every regular file below a directory.
    mutating func run(_ argument: String) {
        let display = displayName(argument)
        let parent: Int32, leaf: EntryName?
        do { (parent, leaf) = try TreeWalk.resolveArgument(argument) } catch {
            report(display, "\(error)")
            failed += 1
            return
        }
        if let real = canonical(argument), real.split(separator: "/").contains(Substring(PackStore.directoryName)) {
            report(display, "inside the pack of a backing directory's packed small files; not converted")
            close(parent)
            skipped += 1
            return
        }
        var stack: [Frame] = []
        if let leaf {
            if let frame = visit(parent, leaf, display, depth: 0) { stack.append(frame) }
            close(parent)
        } else {
            // "/" itself.
            do { stack.append(Frame(fd: parent, display: display, pending: try TreeWalk.names(parent).reversed(), depth: 0)) } catch {
                report(display, "\(error)")
                failed += 1
                close(parent)
            }
        }
        while !stack.isEmpty {
            guard let name = stack[stack.count - 1].pending.popLast() else {
                close(stack.removeLast().fd)
                continue
            }
            let top = stack[stack.count - 1]
            let path = (top.display.hasSuffix("/") ? top.display : top.display + "/") + name.display
            if let frame = visit(top.fd, name, path, depth: top.depth + 1) { stack.append(frame) }
        }
    }

    /// One entry of the directory `dirfd`: a directory comes back as a frame to walk.
    private mutating func visit(_ dirfd: Int32, _ name: EntryName, _ display: String, depth: Int) -> Frame? {
        let st: stat
        do { st = try TreeWalk.lstatAt(dirfd, name) } catch {
            report(display, "\(error)")
            failed += 1
            return nil
        }
        switch st.st_mode & S_IFMT {
        case S_IFDIR where name == BackingWalk.packName:
            // The pack of packed small files: not user data, never converted.
            if depth == 0 {
                report(display, "the pack of a backing directory's packed small files; not converted")
                skipped += 1
            }
            return nil
        case S_IFDIR:
            guard depth < TreeWalk.maxDepth else {
                report(display, "directories nested more than \(TreeWalk.maxDepth) deep; not entered")
                failed += 1
                return nil
            }
            do {
                let fd = try TreeWalk.openDirectory(dirfd, name)
                do { return Frame(fd: fd, display: display, pending: try TreeWalk.names(fd).reversed(), depth: depth) } catch {
                    close(fd)
                    throw error
                }
            } catch {
                report(display, "\(error)")
                failed += 1
                return nil
            }
        case S_IFREG:
            if Converter.isTemporary(name) {
                report(display, "temporary file of an interrupted conversion; left alone (remove it when no conversion is running)")
                skipped += 1
                return nil
            }
            do {
                switch try convert(dirfd, name, display) {
                case .converted: converted += 1
                case .alreadyDone: alreadyDone += 1
                case .skipped(let why): report(display, why); skipped += 1
                }
            } catch {
                report(display, "\(error)")
                failed += 1
            }
        case S_IFLNK:
            report(display, "symbolic link, not followed")
            skipped += 1
        default:
            report(display, "\(TreeWalk.typeName(st.st_mode)), not a regular file; skipped")
            skipped += 1
        }
        return nil
    }

    private func report(_ display: String, _ message: String) {
        eprint("warpfs: \(display): \(message)")
    }

    static func isTemporary(_ name: EntryName) -> Bool {
        let b = name.bytes
        return b.starts(with: Array(temporaryPrefix.utf8)) || b.reversed().starts(with: oldTemporarySuffix.reversed())
    }

    enum Outcome { case converted, alreadyDone, skipped(String) }

    /// Converts the regular file `name` of `dirfd`. The source is left as it
    /// was whenever this throws.
    func convert(_ dirfd: Int32, _ name: EntryName, _ display: String) throws -> Outcome {
        // O_NONBLOCK: a FIFO swapped in since the lstat must not block the
        // open; O_NOFOLLOW: nor may a link be followed.
        let src = openat(dirfd, name.cString, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        guard src >= 0 else {
            if errno == ELOOP { return .skipped("symbolic link (it replaced the file during the walk), not followed") }
            throw FSError.last("open")
        }
        defer { close(src) }
        var st = stat()
        guard fstat(src, &st) == 0 else { throw FSError.last("stat") }
        guard st.st_mode & S_IFMT == S_IFREG else {
            return .skipped("\(TreeWalk.typeName(st.st_mode)) (it replaced the file during the walk), not a regular file; skipped")
        }
        _ = fcntl(src, F_SETFL, fcntl(src, F_GETFL) & ~O_NONBLOCK)
        let kind = try CompressedFile.kind(fd: src, name: display)
        switch (kind, toCompressed) {
        case (.compressed(let h), true) where h.version == options.formatVersion: return .alreadyDone
        // Packed files are version-3 containers kept in the pack.
        case (.packed, true): return .alreadyDone
        case (.plain, false): return .alreadyDone
        default: break
        }
        // The new file would have this name alone: the other names would keep
        // the old form, the link broken (and a link to a file outside the tree
        // would leave a copy of that file here).
        guard st.st_nlink <= 1 else {
            throw FSError(EMLINK, "has \(st.st_nlink) hard links; not converted (converting would break them: "
                + "to convert it, give each name its own copy first)")
        }

        // A packed file is read from the pack that serves its directory;
        // its record is freed once the plain file has replaced it.
        var pack: (store: PackStore, reference: PackReference)?
        if case .packed(let ref) = kind {
            guard let found = try PackStore.locate(from: dirfd, readOnly: false) else {
                throw FSError(EIO, "packed, but no pack (\(PackStore.directoryName)) was found in its directory or above it; not converted")
            }
            pack = (found.store, ref)
        }

        let (dst, tmp) = try createTemporary(in: dirfd)
        var dstStat = stat()
        guard fstat(dst, &dstStat) == 0 else {
            let e = FSError.last("stat the temporary")
            close(dst)
            unlinkat(dirfd, tmp.cString, 0)   // just made with O_EXCL: the name is ours
            throw e
        }
        func stillOurs(_ name: EntryName, _ want: stat) -> Bool {
            var now = stat()
            return fstatat(dirfd, name.cString, &now, AT_SYMLINK_NOFOLLOW) == 0 && now.st_dev == want.st_dev && now.st_ino == want.st_ino
        }
        do {
            let chunk = 1 << 20
            let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
            defer { buf.deallocate() }
            if toCompressed {
                // A container of another version keeps its block size.
                var blockSize = options.blockSize
                if case .compressed(let h) = kind { blockSize = h.blockSize }
                let out = try CompressedFile.create(fd: dup(dst), name: display, codec: codec, blockSize: blockSize,
                                                    encoding: options.encoding, version: options.formatVersion)
                // A container of another format version is read through its
                // own layout and written anew (its blocks recompressed).
                var input: CompressedFile?
                if case .compressed = kind { input = try CompressedFile.open(fd: dup(src), name: display, codec: codec) }
                var off = 0
                while true {
                    let n = try input.map { try $0.read(offset: UInt64(off), count: chunk, into: buf) } ?? preadAll(src, buf, chunk, off)
                    if n == 0 { break }
                    try out.write(offset: UInt64(off), count: n, from: buf)
                    off += n
                }
                if let input, UInt64(off) < input.size { try out.truncate(to: input.size) }
                try out.sync()
            } else {
                let input = try pack.map { CompressedFile.openPacked(fd: dup(src), name: display, codec: codec, reference: $0.reference, store: $0.store) }
                    ?? CompressedFile.open(fd: dup(src), name: display, codec: codec)
                var off: UInt64 = 0
                while off < input.size {
                    let n = try input.read(offset: off, count: chunk, into: buf)
                    var done = 0
                    while done < n {
                        let w = pwrite(dst, buf + done, n - done, off_t(off) + off_t(done))
                        guard w > 0 else { throw FSError.last("write the temporary file") }
                        done += w
                    }
                    off += UInt64(n)
                }
                guard ftruncate(dst, off_t(input.size)) == 0 else { throw FSError.last("write the temporary file") }
            }
            try copyMetadata(from: src, st, to: dst)
            guard fsync(dst) == 0 else { throw FSError.last("sync the temporary file") }
            // Nothing may have written the source meanwhile (the new file would
            // lose it), nor replaced either name.
            var after = stat()
            guard fstat(src, &after) == 0, after.st_size == st.st_size, after.st_mtim.tv_sec == st.st_mtim.tv_sec,
                  after.st_mtim.tv_nsec == st.st_mtim.tv_nsec, after.st_ctim.tv_sec == st.st_ctim.tv_sec,
                  after.st_ctim.tv_nsec == st.st_ctim.tv_nsec else {
                throw FSError(EAGAIN, "changed during the conversion; left as it is (run again)")
            }
            guard stillOurs(name, st) else { throw FSError(EAGAIN, "was replaced during the conversion; left as it is") }
            guard stillOurs(tmp, dstStat) else { throw FSError(EAGAIN, "the temporary file was replaced during the conversion; the file is left as it was") }
            guard renameat(dirfd, tmp.cString, dirfd, name.cString) == 0 else { throw FSError.last("rename the temporary file over it") }
            close(dst)
            let durable = fsync(dirfd) == 0
            if let pack {
                // The packed file's only name is gone: once that is durable
                // its record is nobody's. Otherwise the record stays, an
                // orphan for `warpfs fsck --repair`, never one still referred to.
                do {
                    guard durable else { throw FSError.last("fsync the directory") }
                    try pack.store.release(pack.reference)
                    try pack.store.sync()
                } catch {
                    report(display, "decompressed, but its old record in the pack stays (warpfs fsck --repair frees it): \(error)")
                }
            }
            return .converted
        } catch {
            close(dst)
            if stillOurs(tmp, dstStat) { unlinkat(dirfd, tmp.cString, 0) }
            throw error
        }
    }

    /// A new empty file, mode 0600, under a random name in `dirfd`, created
    /// exclusively and without following links: a name that exists already,
    /// whoever planted it, is never reused.
    private func createTemporary(in dirfd: Int32) throws -> (Int32, EntryName) {
        for _ in 0..<32 {
            let random = String(UInt64.random(in: .min ... .max), radix: 16)
            let name = EntryName(Converter.temporaryPrefix + String(repeating: "0", count: 16 - random.count) + random)
            let fd = openat(dirfd, name.cString, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 { return (fd, name) }
            if errno != EEXIST { throw FSError.last("create a temporary file beside it") }
        }
        throw FSError(EEXIST, "create a temporary file beside it: 32 random names in a row exist already")
    }

    private func preadAll(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ n: Int, _ off: Int) throws -> Int {
        var done = 0
        while done < n {
            let r = pread(fd, buf + done, n - done, off_t(off + done))
            if r < 0 { if errno == EINTR { continue }; throw FSError.last("read") }
            if r == 0 { break }
            done += r
        }
        return done
    }

    /// Attributes that describe the old backing file itself, never copied:
    /// a packed file's reference (on the new file it would name the old
    /// file's record, freed after the conversion) and the mount's own
    /// records (`trusted.warpfs.*`: the old file's recorded change time).
    static func belongsToTheOldFile(_ attribute: [UInt8]) -> Bool {
        attribute == Array(PackReference.attributeName.utf8) || attribute.starts(with: Array("trusted.warpfs.".utf8))
    }

    /// Owner, extended attributes, mode and times of the source onto the new
    /// file, through descriptors only. The owner first: chown clears the
    /// set-user-ID and set-group-ID bits (and security.capability), so the
    /// mode and the attributes come after it.
    private func copyMetadata(from src: Int32, _ st: stat, to fd: Int32) throws {
        guard fchown(fd, st.st_uid, st.st_gid) == 0 else { throw FSError.last("give the new file the owner \(st.st_uid):\(st.st_gid)") }
        var names = [CChar](repeating: 0, count: 65536)
        let n = flistxattr(src, &names, names.count)
        if n < 0 && errno != ENOTSUP { throw FSError.last("list extended attributes") }
        if n > 0 {
            var value = [UInt8](repeating: 0, count: 65536)
            for raw in names[0..<n].split(separator: 0) {
                let attr = Array(raw) + [0]
                let shown = displayName(raw.map { UInt8(bitPattern: $0) })
                if Converter.belongsToTheOldFile(raw.map { UInt8(bitPattern: $0) }) { continue }
                let len = fgetxattr(src, attr, &value, value.count)
                if len < 0 {
                    if errno == ENODATA { continue }
                    throw FSError.last("read extended attribute \(shown)")
                }
                guard fsetxattr(fd, attr, value, len, 0) == 0 else { throw FSError.last("copy extended attribute \(shown)") }
            }
        }
        guard fchmod(fd, st.st_mode & 0o7777) == 0 else { throw FSError.last("set the mode") }
        var times = [st.st_atim, st.st_mtim]
        guard futimens(fd, &times) == 0 else { throw FSError.last("set the times") }
    }
}

/// What `compress --help` and `decompress --help` say about the walk.
let conversionDiscussion = """
    A path given here may be a symbolic link: it is resolved once and followed, as named. Inside \
    the walk nothing is followed: symbolic links, named pipes, sockets and devices are reported on \
    standard error and skipped, and a directory replaced by a link during the walk is not entered. \
    Each file is converted into a new file with a random name beside it (created exclusively) that \
    gets the original's owner, mode (set-ID bits included), extended attributes and times, and is \
    then renamed over it; on any error the original is left as it was. A file with more than one \
    hard link is not converted (that would break the link): it is reported and counted as failed. \
    Exit status 1 when any file failed.

    Packed small files (an empty backing file whose user.warpfs.packed attribute refers to a record \
    in the backing directory's pack, .warpfs-pack) count as compressed: compress leaves them as \
    they are; decompress reads each from the pack in its directory or the nearest one above it (on \
    the same file system), writes the plain file, and frees the record once the plain file has \
    replaced it. The pack itself is never walked or converted, and neither the reference nor the \
    mount's own trusted.warpfs.* attributes are copied onto a new file.
    """

struct ConvertOptions: ParsableArguments {
    @Option(name: .short, help: "Options as for mount: block_size, algorithm, level, engines, device.") var o: [String] = []
    @Argument(help: "Files or directories (walked recursively) of a backing directory, not mounted.") var paths: [String]

    func mountOptions() throws -> MountOptions {
        do { return try MountOptions(lists: o) } catch { throw ValidationError("\(error)") }
    }
}

struct Compress: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert plain files of a backing directory to WarpFS containers (offline).", discussion: conversionDiscussion)
    @OptionGroup var options: ConvertOptions

    func run() throws {
        var c = try Converter(toCompressed: true, options: try options.mountOptions())
        // Engines stop while the device is still held (see EmulatedZipDevice.shutdown).
        defer { c.codec.shutdownDevices() }
        TreeWalk.raiseOpenFileLimit()
        for p in options.paths { c.run(p) }
        print("compressed \(c.converted) file(s), \(c.alreadyDone) already compressed, \(c.skipped) skipped, \(c.failed) failed")
        if c.failed > 0 { throw ExitCode(1) }
    }
}

struct Decompress: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert WarpFS containers of a backing directory back to plain files (offline).", discussion: conversionDiscussion)
    @OptionGroup var options: ConvertOptions

    func run() throws {
        var c = try Converter(toCompressed: false, options: try options.mountOptions())
        defer { c.codec.shutdownDevices() }
        TreeWalk.raiseOpenFileLimit()
        for p in options.paths { c.run(p) }
        print("decompressed \(c.converted) file(s), \(c.alreadyDone) already plain, \(c.skipped) skipped, \(c.failed) failed")
        if c.failed > 0 { throw ExitCode(1) }
    }
}
