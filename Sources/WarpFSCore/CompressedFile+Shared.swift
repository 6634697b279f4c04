#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpFSFormat

// A backing file other hosts mount too (`-o shared`, docs/ARCHITECTURE.md,
// "Deployment across hosts"): one writer per container across hosts, by a
// record lock the distributed file system enforces for every client, and
// what this host has in memory read again from the backing file whenever
// another host may have changed it.

extension CompressedFile {
    /// Before the first change while the file is open: takes the file's
    /// cross-host writer lock (an exclusive record lock over the whole
    /// backing file), waiting at most `writerLockTimeout` seconds, then
    /// reads header and index again, recovering what a writer that died
    /// left (as an open does). Held until the file's descriptor closes at
    /// its last close, after its changes are durable. No-op when not shared
    /// or already held.
    public func beginChange() throws {
        guard let timeout = writerLockTimeout, !holdsWriterLock else { return }
        guard fcntl(fd, F_GETFL) & O_ACCMODE != O_RDONLY else {
            throw FSError(EROFS, "\(name): its backing file is read-only here; it cannot be changed")
        }
        let taken = RecordLock(fd).take(exclusive: true, timeout: timeout, poll: 0.02) {
            Log.info("\(name): another host is writing it; waiting up to \(Int(timeout)) s for its writer lock")
        }
        switch taken {
        case .success: break
        case .failure(.held):
            throw FSError(EAGAIN, "\(name): another host is writing it and kept its writer lock for \(Int(timeout)) s "
                + "(lock_timeout); not changed")
        case .failure(.unsupported(let e)):
            throw FSError(e, "\(name): cannot take its writer lock (-o shared needs record locks the backing file system "
                + "enforces across hosts)")
        }
        holdsWriterLock = true
        try reloadFromDisk()
        reclaimUnreferencedPages()
    }

    /// With the writer lock just taken: punches the allocated pages of the
    /// payload regions that no slot refers to. A writer that died between a
    /// payload and its slot header (another host's, killed) left them; the
    /// open-time recovery sees only slots, and `warpfs fsck` would report
    /// them. Only allocated extents are looked at (`SEEK_DATA`/`SEEK_HOLE`).
    func reclaimUnreferencedPages() {
        guard packed == nil, entries.count > 0 else { return }
        let groups = (entries.count + BlockLayout.blocksPerGroup - 1) / BlockLayout.blocksPerGroup
        var g = 0
        while g < groups {
            let start = layout.regionOffset(group: g), end = start + layout.regionSize
            var at = lseek(fd, off_t(start), Int32(WD_SEEK_DATA))
            if at < 0 { return }                                  // no data from here on
            if Int(at) >= end { g = layout.group(containing: Int(at)); continue }
            let used = footprintsInUse(group: g, except: (-1, -1))
            while at >= 0 && Int(at) < end {
                let hole = lseek(fd, at, Int32(WD_SEEK_HOLE))
                let extentEnd = min(end, hole < 0 ? end : Int(hole))
                let released = (Int(at) - start)..<(extentEnd - start)
                for run in layout.punchablePages(of: released, used: used, group: g) { punch(run.lowerBound, run.count) }
                at = lseek(fd, off_t(extentEnd), Int32(WD_SEEK_DATA))
            }
            g += 1
        }
    }

    /// Gives the writer lock back (an explicit unlock: the lock would go with
    /// the descriptor's close, but a FUSE-based distributed file system
    /// releases that asynchronously, after the close returned). Called at
    /// the last close, once the changes are durable.
    public func releaseWriterLock() {
        guard holdsWriterLock else { return }
        RecordLock(fd).release()
        holdsWriterLock = false
    }

    /// Drops this host's cached pages of the backing file, so that what
    /// is read next comes from the distributed file system: a descriptor
    /// kept open across another host's writes would otherwise read the old
    /// bytes from the page cache (over GlusterFS, 199 times in 200; the
    /// writer lock taken on it changes nothing there).
    func dropBackingPageCache() {
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
    }

    /// Reads the header and the block index again from the backing file and
    /// forgets every cached block: another host may have changed the file.
    /// Only when nothing is buffered here (a host with buffered changes
    /// holds the writer lock, and nobody else changed the file). Recovery
    /// runs when this host holds the writer lock.
    public func reloadFromDisk() throws {
        guard !hasUnstoredBlocks else { return }
        drainCompressions()
        while let s = decompressor, s.inFlight > 0 { reapDecompressions(minimum: s.inFlight) }
        cache.removeAll()
        loadErrors.removeAll()
        dropBackingPageCache()
        lastReadEnd = .max
        hintedUpTo = -1
        tailVerified = false
        if let ref = try CompressedFile.packReference(fd: fd, name: name) {
            guard let store = packed?.store ?? packStoreForReload else {
                throw FSError(EIO, "\(name): packed by another host, and this host has no pack open")
            }
            adoptPacked(PackedSource(reference: ref, store: store))
            return
        }
        if let store = packed?.store { packStoreForReload = store }
        packed = nil
        let copies = try CompressedFile.headerCopies(fd: fd, name: name)
        guard let decoded = copies.newest else { throw FSError(EIO, "\(name): damaged WarpFS header (\(copies.firstError))") }
        header = decoded.header
        layout = BlockLayout(header)
        size = header.logicalSize
        durableHeaderCopy = decoded.copy
        lastHeaderCopy = decoded.copy
        nextGeneration = header.generation + 1
        headerDirty = false
        changedSinceSync.removeAll()
        entries = BlockIndex()
        try loadIndex()
    }
}
