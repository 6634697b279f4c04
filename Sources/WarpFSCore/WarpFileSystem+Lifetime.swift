#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

// The mount's life beyond single requests: storing everything at unmount,
// giving memory back, stopping the accelerator.
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
        device.shutdown()
    }
}
