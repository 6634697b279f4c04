#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

// Open directories: a listing read once per OPENDIR, and their fsync.
extension WarpFileSystem {
    public func opendir(_ id: UInt64) throws -> UnsafeMutableRawPointer {
        let node = try inode(id)
        let fd = openat(node.fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FSError.last("opendir") }
        guard let dir = fdopendir(fd) else { let e = FSError.last("opendir"); close(fd); throw e }
        let h = OpenHandle(inode: node, flags: O_RDONLY)
        h.dir = dir
        return Unmanaged.passRetained(h).toOpaque()
    }

    /// Directory entries from index `offset` on (the offset cookie is the
    /// index + 1). The listing is read once per opendir, so offsets are stable.
    public func readdir(_ fh: UnsafeMutableRawPointer, offset: Int) -> ArraySlice<(name: String, ino: UInt64, type: UInt8)> {
        let h = Self.handle(fh)
        if h.dirEntries == nil || offset == 0 {
            var list: [(name: String, ino: UInt64, type: UInt8)] = []
            if let d = h.dir {
                rewinddir(d)
                while let e = Glibc.readdir(d) {
                    let name = String(cString: wd_dirent_name(e))
                    if WarpFileSystem.isReservedName(name) { continue }
                    list.append((name, UInt64(e.pointee.d_ino), e.pointee.d_type))
                }
            }
            h.dirEntries = list
        }
        let all = h.dirEntries!
        return all[min(offset, all.count)...]
    }

    /// `fsync` of a directory: makes the names created, renamed or removed
    /// in it durable (the backing directory's fsync). Always a full fsync,
    /// also for fdatasync: a directory's names are its data.
    public func fsyncdir(_ fh: UnsafeMutableRawPointer) throws {
        let h = Self.handle(fh)
        guard let d = h.dir else { throw FSError(EBADF) }
        do { _ = try sys("fsync directory \(displayName(h.inode))") { Glibc.fsync(dirfd(d)) } } catch {
            Log.error("\(error)")
            throw error
        }
    }

    public func releasedir(_ fh: UnsafeMutableRawPointer) {
        let um = Unmanaged<OpenHandle>.fromOpaque(fh)
        if let d = um.takeUnretainedValue().dir { closedir(d) }
        um.release()
    }
}
