/// Every failure the queue layer reports. Each case carries enough context
/// (device, queue, address, option) for a message that names the problem.
public enum WarpDriveError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No instance (queue pair) is left on the device: `available_instances` is 0.
    case busy(device: String)
    /// A queue operation was called in a state that does not allow it
    /// (uacce answers `EINVAL`), e.g. starting a queue twice.
    case invalidState(operation: String, state: String)
    /// A ring region was mapped a second time (uacce answers `EEXIST`).
    case alreadyMapped(region: String)
    /// The submission ring is full (capacity is depth - 1); try again after reaping.
    case queueFull(queue: Int)
    /// The device was reset or fenced: the queue's stop words are set. Open a new queue.
    case deviceReset(device: String, queue: Int)
    /// The device did not complete a request within the time-out. The queue is failed.
    case timedOut(device: String, queue: Int, milliseconds: Int)
    /// A request is larger than the device's per-request limit (8 MiB).
    case requestTooLarge(bytes: Int, limit: Int)
    /// The destination buffer cannot hold the output.
    case destinationTooSmall(capacity: Int)
    /// The device touched an address that the queue's PASID does not map.
    case pageFault(pasid: UInt32, address: UInt64)
    /// The input is not a valid stream of the session's algorithm.
    case corruptData(String)
    /// The decompressed data does not match the stream's Adler-32 / CRC-32.
    case checksumMismatch(expected: UInt32, actual: UInt32)
    /// The device reported a hardware (engine) error for the request.
    case engineError(device: String, queue: Int, status: UInt8)
    /// The SQE was malformed (unknown type, bad length) and the device refused it.
    case badRequest(status: UInt8)
    /// The device does not offer the algorithm.
    case unsupportedAlgorithm(String)
    /// The device is isolated after too many errors and takes no new queues.
    case deviceIsolated(device: String)
    /// No device in the registry can serve the request.
    case noDevice(String)
    /// A system call failed.
    case system(call: String, errno: Int32)
    /// The kernel device went away while the queue was open (its driver was
    /// unloaded or the device unbound): uacce revoked the queue's mappings
    /// and answers its calls with `ENXIO`, or the device node is gone. A
    /// queue opened once the device is back works again.
    case deviceRemoved(device: String)
    /// `warpdrived` cannot be reached at `socket`: not running, the socket
    /// is missing, or the daemon went away while a queue was open.
    case daemonUnavailable(socket: String, reason: String)

    public var description: String {
        switch self {
        case .busy(let d): return "\(d): no free queue (available_instances is 0)"
        case .invalidState(let op, let st): return "queue operation '\(op)' is not allowed in state \(st)"
        case .alreadyMapped(let r): return "ring region '\(r)' is already mapped"
        case .queueFull(let q): return "queue \(q): submission ring is full"
        case .deviceReset(let d, let q): return "\(d) queue \(q): device was reset (stop words set)"
        case .timedOut(let d, let q, let ms): return "\(d) queue \(q): no completion within \(ms) ms"
        case .requestTooLarge(let b, let l): return "request of \(b) bytes exceeds the device limit of \(l) bytes"
        case .destinationTooSmall(let c): return "destination of \(c) bytes is too small for the output"
        case .pageFault(let p, let a): return "I/O page fault: PASID \(p) does not map address 0x\(String(a, radix: 16))"
        case .corruptData(let why): return "corrupt compressed data: \(why)"
        case .checksumMismatch(let e, let a):
            return "checksum mismatch: stream says 0x\(String(e, radix: 16)), data gives 0x\(String(a, radix: 16))"
        case .engineError(let d, let q, let s): return "\(d) queue \(q): engine error (status 0x\(String(s, radix: 16)))"
        case .badRequest(let s): return "device refused a malformed request (status 0x\(String(s, radix: 16)))"
        case .unsupportedAlgorithm(let a): return "algorithm '\(a)' is not supported"
        case .deviceIsolated(let d): return "\(d) is isolated after too many errors"
        case .noDevice(let why): return "no accelerator device: \(why)"
        case .system(let call, let e): return "\(call) failed: errno \(e)"
        case .daemonUnavailable(let socket, let why): return "warpdrived at \(socket): \(why)"
        case .deviceRemoved(let d): return "\(d) was removed (its driver went away); queues work again once it is back"
        }
    }
}
