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
                        try f.flush()
                        if f.hasStaleCopies { try preservingTimes(node, f.fd) { () throws in try f.sync() } }
                        if f.compactionPlan() != nil, !options.readOnly {
                            try preservingTimes(node, f.fd) { () throws in try f.compactIfItFreesPages() }
                        }
                    } catch { Log.error("\(f.name): storing at unmount failed: \(error)") }
                }
            }
        }
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
