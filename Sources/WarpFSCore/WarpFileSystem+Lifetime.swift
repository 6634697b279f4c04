#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

// The mount's life beyond single requests: storing everything at unmount,
// files kept after a failed close, giving memory back, stopping the accelerator.

/// The files whose last close could not store everything (`keep`).
struct KeptFiles {
    var nodes: [Inode] = []
    /// When `retryKeptFiles` last tried (`wd_now_ns`).
    var lastTry: UInt64 = 0
    /// Nanoseconds between tries: 1 s, doubled after a failed try up to 32 s.
    var interval: UInt64 = 1_000_000_000
}

extension WarpFileSystem {
    /// Stores every buffered block and header, makes them durable and drops
    /// superseded copies, as a last close does (on unmount or signal: a
    /// release the kernel had not yet delivered must not leave stale copies).
    public func flushAll() {
        for node in inodes.all where node.isRegular {
            node.lock.withLock { _ in
                if case .compressed(let f)? = node.content {
                    do {
                        try settleForLastClose(node, f)
                    } catch { Log.error("\(f.name): storing at unmount failed: \(error)") }
                }
            }
        }
        packWaitingFiles(all: true)
    }

    /// What a file's last close does (and the unmount, for a release the
    /// kernel had not delivered): stores buffered blocks and the header,
    /// syncs and drops superseded copies when there are any, and compacts a
    /// small file rewritten in place; the file's times stay what the
    /// application set. Called under the inode's lock.
    func settleForLastClose(_ node: Inode, _ f: CompressedFile) throws {
        try f.flush()
        // Shared: durable before the writer lock goes with the descriptor,
        // so the next host's writer starts from it.
        if f.hasStaleCopies || (options.shared && f.holdsWriterLock) { try preservingTimes(node, f.fd) { () throws in try f.sync() } }
        // Compaction writes: under `shared` only by the host holding the writer lock.
        if !options.readOnly, !options.shared || f.holdsWriterLock, let plan = f.compactionPlan() {
            try preservingTimes(node, f.fd) { () throws in try f.compact(plan) }
        }
        afterLastClose(node, f)
        // Shared: the next host's writer may start now (the descriptor's own
        // release reaches the other hosts only later).
        if options.shared && !f.hasUnstoredBlocks { f.releaseWriterLock() }
    }

    /// Keeps `node`'s content, whose last close could not store every block
    /// (the accelerator failed or is gone), for `retryKeptFiles` and the
    /// unmount. Under the inode's lock.
    func keep(_ node: Inode) {
        node.keptUnstored.store(true, ordering: .releasing)
        keptFiles.withLock { k in
            if !k.nodes.contains(where: { $0 === node }) { k.nodes.append(node) }
        }
    }

    /// Tries again to store the files `keep` holds: once the accelerator
    /// is back, what was written while it failed is stored without waiting
    /// for the unmount. The maintenance thread calls it every 200 ms; it
    /// tries once a second, backing off to every 32 s while tries keep
    /// failing (a hung device makes each one wait for its time-out, and the
    /// thread has memory and packing to see to), and skips a file whose
    /// lock is taken. A file open again is left to its own last close;
    /// blocks that can never be stored were given up when they failed.
    public func retryKeptFiles() {
        let now = wd_now_ns()
        let due: [Inode] = keptFiles.withLock { k in
            guard !k.nodes.isEmpty, now &- k.lastTry >= k.interval else { return [] }
            k.lastTry = now
            return k.nodes
        }
        guard !due.isEmpty else { return }
        var failed = false
        for node in due {
            node.lock.withLockIfAvailable { _ in
                if node.keptUnstored.load(ordering: .acquiring), node.openHandles == 0 {
                    if case .compressed(let f)? = node.content {
                        do {
                            try settleForLastClose(node, f)
                            Log.info("\(f.name): stored what its last close had to keep in memory")
                        } catch {
                            if f.hasUnstoredBlocks { failed = true; return }
                            FSError.log(error)     // what failed was given up, as at a last close
                        }
                        node.cachedSize = f.size
                        node.content = nil
                    }
                    node.keptUnstored.store(false, ordering: .releasing)
                }
                // Off the list under the file's lock: a close that fails
                // meanwhile cannot find it listed and then lose the entry.
                keptFiles.withLock { k in k.nodes.removeAll { $0 === node } }
                inodes.dropIfForgotten(node)
            }
        }
        keptFiles.withLock { k in k.interval = failed ? min(k.interval * 2, 32_000_000_000) : 1_000_000_000 }
    }

    /// Drops clean cached blocks of files nobody is using right now (their
    /// lock is free), while block buffers exceed the memory budget. Called
    /// periodically by the server; never waits for a file's lock.
    public func reclaimMemory() {
        guard codec.overBudget else { return }
        for node in inodes.all where node.isRegular {
            node.lock.withLockIfAvailable { _ in
                if case .compressed(let f)? = node.content { f.dropCache() }
            }
            if !codec.overBudget { return }
        }
    }

    /// Stops the accelerator, after the unmount: the server has stored
    /// every buffered block (`flushAll`) before it unmounted.
    public func shutdown() {
        codec.shutdownDevices()
    }
}
