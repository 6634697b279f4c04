#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// What the mount knows of a directory's stored properties (`Inode.properties`).
enum CachedProperties: Sendable {
    /// Not read since the inode was made.
    case unread
    /// None stored (or none readable: a backing file system without
    /// extended attributes, a mount not run by root).
    case none
    /// A stored value that does not parse: ignored (logged when read).
    case invalid
    case set(DirectoryProperties)
}

// Per-directory properties (`DirectoryProperties`; docs/FORMAT.md,
// "Per-directory properties"): kept in the backing directory's
// `trusted.warpfs.props`, read when a file or directory is created in it
// (cached per directory inode), shown and changed through the virtual
// attribute `user.warpfs.property` of the directory on the mount.
extension WarpFileSystem {
    /// The directory's properties, from the cache or the backing
    /// directory; nil when none apply (none stored, or a stored value that
    /// does not parse, which is logged once when read).
    func directoryProperties(_ dir: Inode) -> DirectoryProperties? {
        guard dir.isDirectory else { return nil }
        return dir.properties.withLock { cached in
            if case .unread = cached { cached = readProperties(dir) }
            if case .set(let p) = cached { return p }
            return nil
        }
    }

    /// What a regular file created in `dir` is made as: the directory's
    /// properties over the mount's options.
    func newFileSettings(in dir: Inode) -> NewFileSettings {
        (directoryProperties(dir) ?? DirectoryProperties()).settings(over: options)
    }

    /// Reads the stored value (one getxattr; called under `dir.properties`).
    private func readProperties(_ dir: Inode) -> CachedProperties {
        var buf = [UInt8](repeating: 0, count: DirectoryProperties.maxStoredLength + 1)
        let n = CWarpSys.getxattr(dir.procPath, DirectoryProperties.storedName, &buf, buf.count)
        if n < 0 {
            switch errno {
            case ENODATA, EOPNOTSUPP, EPERM: return .none
            case ERANGE:
                Log.warning("\(displayName(dir)): \(DirectoryProperties.storedName) is longer than \(DirectoryProperties.maxStoredLength) bytes; "
                    + "ignored: new files here take the mount's options")
                return .invalid
            default:
                Log.warning("\(displayName(dir)): reading \(DirectoryProperties.storedName): \(String(cString: strerror(errno))); "
                    + "new files here take the mount's options")
                return .none
            }
        }
        do {
            return .set(try DirectoryProperties(stored: buf[0..<n]))
        } catch {
            Log.warning("\(displayName(dir)): \(DirectoryProperties.storedName) is not a valid properties value (\(error)); "
                + "ignored: new files here take the mount's options")
            return .invalid
        }
    }

    /// Writes `p` to the backing directory (removes the attribute when
    /// empty). Called under `dir.properties`.
    private func storeProperties(_ p: DirectoryProperties, _ dir: Inode) throws {
        let path = dir.procPath
        if p.isEmpty {
            let r = CWarpSys.removexattr(path, DirectoryProperties.storedName)
            if r != 0 && errno != ENODATA { throw FSError.last("\(displayName(dir)): removing \(DirectoryProperties.storedName)") }
            return
        }
        let bytes = p.stored
        _ = try sys("\(displayName(dir)): setting \(DirectoryProperties.storedName)") {
            CWarpSys.setxattr(path, DirectoryProperties.storedName, bytes, bytes.count, 0)
        }
    }

    /// SETXATTR of `user.warpfs.property`: `changes` (words separated by
    /// white space, `DirectoryProperties.applying`) applied to the
    /// directory's properties as a whole, or not at all. Only the
    /// directory's owner or root may (the kernel has checked write
    /// permission already, as for every `user.*` attribute).
    func setProperty(_ id: UInt64, changes: UnsafeRawBufferPointer, caller: Caller) throws {
        guard changes.count <= DirectoryProperties.maxChangeLength else {
            throw FSError(EINVAL, "\(DirectoryProperties.interfaceName): more than \(DirectoryProperties.maxChangeLength) bytes")
        }
        let words = String(decoding: changes, as: UTF8.self).split(whereSeparator: { " \t\n\0".contains($0) }).map(String.init)
        try setProperty(id, words: words, caller: caller)
    }

    /// REMOVEXATTR of `user.warpfs.property`: clears every property of the
    /// directory (as `clear`), with the same permission.
    func clearProperties(_ id: UInt64, caller: Caller) throws {
        try setProperty(id, words: ["clear"], caller: caller)
    }

    private func setProperty(_ id: UInt64, words: [String], caller: Caller) throws {
        let dir = try inode(id)
        guard dir.isDirectory else { throw FSError(ENOTDIR, "\(DirectoryProperties.interfaceName): properties belong to directories") }
        try writable()
        guard runsAsRoot else {
            throw FSError(EOPNOTSUPP, "\(DirectoryProperties.interfaceName): properties need a mount run by root (\(DirectoryProperties.storedName))")
        }
        var st = stat()
        _ = try sys("stat \(displayName(dir))") { fstatat(dir.fd, "", &st, Int32(WD_AT_EMPTY_PATH)) }
        guard caller.uid == 0 || caller.uid == st.st_uid else {
            Log.info("\(displayName(dir)): uid \(caller.uid) may not set its properties (only its owner, uid \(st.st_uid), and root)")
            throw FSError(EPERM)
        }
        try dir.properties.withLock { cached in
            if case .unread = cached { cached = readProperties(dir) }
            // A value that did not parse is replaced, as if none were set.
            let old: DirectoryProperties
            if case .set(let p) = cached { old = p } else { old = DirectoryProperties() }
            let new: DirectoryProperties
            do { new = try old.applying(words) } catch {
                Log.info(printable("\(displayName(dir)): properties '\(words.joined(separator: " "))' refused: \(error)"))
                throw FSError(EINVAL)
            }
            try storeProperties(new, dir)
            cached = new.isEmpty ? .none : .set(new)
            Log.info("\(displayName(dir)): properties set by uid \(caller.uid): \(new.isEmpty ? "none" : new.text)")
        }
    }

    /// GETXATTR of `user.warpfs.property`: the directory's properties as
    /// text (`algorithm=zstd level=3`); ENODATA when none are set (or on
    /// a node that is not a directory), EBADMSG when the stored value does
    /// not parse (and so is ignored).
    func getProperty(_ id: UInt64, into buf: UnsafeMutableRawBufferPointer) throws -> Int {
        let dir = try inode(id)
        guard dir.isDirectory else { throw FSError(ENODATA) }
        let cached = dir.properties.withLock { cached -> CachedProperties in
            if case .unread = cached { cached = readProperties(dir) }
            return cached
        }
        let text: [UInt8]
        switch cached {
        case .set(let p): text = Array(p.text.utf8)
        case .invalid: throw FSError(EBADMSG)
        case .none, .unread: throw FSError(ENODATA)
        }
        if buf.count == 0 { return text.count }
        guard buf.count >= text.count else { throw FSError(ERANGE) }
        buf.copyBytes(from: text)
        return text.count
    }

    /// A directory just made in `parent` (`fd`, a descriptor of it, not yet
    /// given to its caller) gets a copy of the parent's properties, as
    /// btrfs copies its compression property: moved later, it keeps them.
    /// Failing to copy is logged, not an error of the mkdir.
    func inheritProperties(from parent: Inode, into fd: Int32, name: String) {
        guard let p = directoryProperties(parent) else { return }
        let bytes = p.stored
        if CWarpSys.setxattr("/proc/self/fd/\(fd)", DirectoryProperties.storedName, bytes, bytes.count, 0) != 0 {
            Log.warning("\(displayName(parent))/\(name): copying the parent's properties (\(p.text)): \(String(cString: strerror(errno))); "
                + "new files in it take the mount's options")
        }
    }

    /// `text` with control characters and non-ASCII shown as `?`: what a
    /// caller sent stays one line of the log.
    private func printable(_ text: String) -> String {
        String(text.unicodeScalars.map { (0x20...0x7E).contains($0.value) ? Character($0) : "?" })
    }
}
