#if canImport(Glibc)
import Glibc
#endif
import WarpFSCore

/// The regular files of a backing tree, in name order, found by directory
/// descriptors without following symbolic links (see `TreeWalk`); each
/// inode once (hard links share one container), with how many of its names
/// are in the tree. The reader (`fsck`, `stats`) comes back to each file's
/// directory by descriptors again, from the root: `directory(_:for:)`.
///
/// The other nodes of the tree (the root, directories, symbolic links,
/// devices, pipes, sockets) are not listed; their allocated space is
/// summed in `otherBytes`, so files, other nodes and the packs' pages
/// together are what `du -B1 -s` counts for the tree.
///
/// A directory's pack (`.warpfs-pack`, the pages of its packed small files)
/// is not user data: it is not walked as files, but listed in `packs` (its
/// pages file) and counted (the pack directory and its other entries among
/// the other nodes). A mount reserves the name in every directory.
struct BackingWalk {
    struct Directory {
        let parent: Int
        let name: EntryName
        let device: UInt64, inode: UInt64
    }
    struct File {
        /// Index in `directories` of the directory holding it.
        let directory: Int
        let leaf: EntryName
        /// Relative to the root, for messages.
        let name: String
        /// Allocated space (st_blocks * 512) when the walk found it.
        let bytes: Int
        /// Names of this inode found in the tree.
        var names: Int
        /// (device, inode) as the walk found them.
        let key: [UInt64]
    }
    /// A pack found in the tree.
    struct Pack {
        /// Index in `directories` of the directory holding `.warpfs-pack`.
        let directory: Int
        /// Allocated space of its pages file (0 when it has none), unless
        /// an earlier walk counted it.
        let bytes: Int
        /// No earlier walk (of another argument) counted this pack.
        let first: Bool
    }
    let rootfd: Int32
    /// What messages start with ("warpfs fsck").
    let label: String
    /// Index 0 is the root.
    private(set) var directories: [Directory] = []
    var files: [File] = []
    var errors: [String] = []
    /// The packs found, by the directory that holds each.
    private(set) var packs: [Pack] = []
    /// Their pages' allocated space.
    var packBytes: Int { packs.reduce(0) { $0 + $1.bytes } }
    /// Allocated space of the listed files, when the walk found them.
    var totalBytes = 0
    /// Nodes that are not regular files (the root included) and their allocated space.
    private(set) var otherNodes = 0
    private(set) var otherBytes = 0
    /// (device, inode) of every node counted: those given to `init` (counted
    /// by an earlier walk, and left out of this one) and this walk's.
    private(set) var counted: Set<[UInt64]>
    private var seen: [[UInt64]: Int] = [:]
    /// The directories open now, from the root's child down (`directory(_:for:)`).
    private var open: [(index: Int, fd: Int32)] = []

    init(rootfd: Int32, label: String, counted: Set<[UInt64]> = []) {
        self.rootfd = rootfd
        self.label = label
        self.counted = counted
        var st = stat()
        fstat(rootfd, &st)
        directories = [Directory(parent: -1, name: EntryName("."), device: UInt64(st.st_dev), inode: UInt64(st.st_ino))]
        countOther(st)
    }

    private mutating func countOther(_ st: stat) {
        guard counted.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted else { return }
        otherNodes += 1
        otherBytes += Int(st.st_blocks) * 512
    }

    mutating func collect() {
        struct Frame { let fd: Int32; let index: Int; let prefix: String; var pending: [EntryName]; let depth: Int }
        var stack: [Frame] = []
        do { stack.append(Frame(fd: rootfd, index: 0, prefix: "", pending: try TreeWalk.names(rootfd).reversed(), depth: 0)) } catch {
            errors.append("\(label): .: \(error)")
        }
        while !stack.isEmpty {
            guard let n = stack[stack.count - 1].pending.popLast() else {
                let done = stack.removeLast()
                if done.fd != rootfd { Glibc.close(done.fd) }
                continue
            }
            let top = stack[stack.count - 1]
            let name = top.prefix + n.display
            var st = stat()
            guard fstatat(top.fd, n.cString, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                errors.append("\(label): \(name): \(String(cString: strerror(errno)))")
                continue
            }
            switch st.st_mode & S_IFMT {
            case S_IFDIR where n == BackingWalk.packName:
                let first = !counted.contains([UInt64(st.st_dev), UInt64(st.st_ino)])
                countOther(st)
                countPack(top.fd, top.index, name, first: first)
            case S_IFDIR:
                countOther(st)
                guard top.depth + 1 < TreeWalk.maxDepth else {
                    errors.append("\(label): \(name): directories nested more than \(TreeWalk.maxDepth) deep; not entered")
                    continue
                }
                do {
                    let fd = try TreeWalk.openDirectory(top.fd, n)
                    var dst = stat()
                    fstat(fd, &dst)
                    directories.append(Directory(parent: top.index, name: n, device: UInt64(dst.st_dev), inode: UInt64(dst.st_ino)))
                    do {
                        stack.append(Frame(fd: fd, index: directories.count - 1, prefix: name + "/", pending: try TreeWalk.names(fd).reversed(),
                                           depth: top.depth + 1))
                    } catch {
                        Glibc.close(fd)
                        throw error
                    }
                } catch {
                    errors.append("\(label): \(name): \(error)")
                }
            case S_IFREG:
                let key = [UInt64(st.st_dev), UInt64(st.st_ino)]
                if let i = seen[key] { files[i].names += 1; continue }
                guard counted.insert(key).inserted else { continue }
                seen[key] = files.count
                let bytes = Int(st.st_blocks) * 512
                files.append(File(directory: top.index, leaf: n, name: name, bytes: bytes, names: 1, key: key))
                totalBytes += bytes
            default:
                countOther(st)
            }
        }
    }

    static let packName = EntryName(PackStore.directoryName)

    /// The pack directory in `dirfd` (directory `index`): its pages file is
    /// the pack's space, the other entries (its id) are other nodes. Not
    /// descended into further.
    private mutating func countPack(_ dirfd: Int32, _ index: Int, _ name: String, first: Bool) {
        var bytes = 0
        do {
            let fd = try TreeWalk.openDirectory(dirfd, BackingWalk.packName)
            defer { Glibc.close(fd) }
            for entry in try TreeWalk.names(fd) {
                let st = try TreeWalk.lstatAt(fd, entry)
                if entry.display == PackStore.pagesName && st.st_mode & S_IFMT == S_IFREG {
                    if counted.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted { bytes = Int(st.st_blocks) * 512 }
                } else {
                    countOther(st)
                }
            }
        } catch {
            errors.append("\(label): \(name): \(error)")
        }
        packs.append(Pack(directory: index, bytes: bytes, first: first))
    }

    /// The pack that serves directory `index`: the nearest one found in it
    /// or in a directory above it in the tree; nil when none is.
    func pack(serving index: Int) -> Pack? {
        var i = index
        while i >= 0 {
            if let p = packs.first(where: { $0.directory == i }) { return p }
            i = directories[i].parent
        }
        return nil
    }

    /// Directory `index` relative to the root ("" for the root), for messages.
    func path(of index: Int) -> String {
        var parts: [String] = []
        var i = index
        while i > 0 { parts.append(directories[i].name.display); i = directories[i].parent }
        return parts.reversed().joined(separator: "/")
    }

    /// How messages call the pack held by directory `index`.
    func packLabel(_ index: Int) -> String {
        let dir = path(of: index)
        return (dir.isEmpty ? "" : dir + "/") + PackStore.directoryName
    }

    /// Whether directory `index` is `ancestor` or lies below it.
    func directory(_ index: Int, isIn ancestor: Int) -> Bool {
        var i = index
        while i >= 0 {
            if i == ancestor { return true }
            i = directories[i].parent
        }
        return false
    }

    /// The descriptor of directory `index`, opened from the root one name at
    /// a time without following links (the directories open for the
    /// previous file are reused), and checked to be the directory the walk
    /// found there. `file` names the file in the error when it fails.
    mutating func directory(_ index: Int, for file: String) throws -> Int32 {
        var chain: [Int] = []
        var i = index
        while i > 0 { chain.append(i); i = directories[i].parent }
        chain.reverse()
        var keep = 0
        while keep < min(chain.count, open.count) && open[keep].index == chain[keep] { keep += 1 }
        while open.count > keep { Glibc.close(open.removeLast().fd) }
        for d in chain[keep...] {
            let parent = open.last?.fd ?? rootfd
            let fd: Int32
            do { fd = try TreeWalk.openDirectory(parent, directories[d].name) } catch {
                throw FSError((error as? FSError)?.errno ?? EIO, "\(file): a directory on its path: \(error)")
            }
            var st = stat()
            guard fstat(fd, &st) == 0, UInt64(st.st_dev) == directories[d].device, UInt64(st.st_ino) == directories[d].inode else {
                Glibc.close(fd)
                throw FSError(ESTALE, "\(file): a directory on its path was replaced after the walk found it; skipped")
            }
            open.append((d, fd))
        }
        return open.last?.fd ?? rootfd
    }

    mutating func close() {
        while let last = open.popLast() { Glibc.close(last.fd) }
        Glibc.close(rootfd)
    }
}
