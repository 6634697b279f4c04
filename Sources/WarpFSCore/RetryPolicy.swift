import WarpDrive

/// When a block request the accelerator failed is sent again: the one
/// retry policy of the file system, applied by the block pipeline to a
/// failure to send and to a failed completion alike. (WarpDrive retries
/// nothing: a session opens a fresh queue for the next request after a
/// reset or a time-out, and the failed request reports its error.)
///
/// - A failure of the data (corrupt input, a destination too small, a bad
///   request) is final: the same request would fail the same way.
/// - A failure of the request on the device (engine error, time-out, page
///   fault, queue full, a system error) uses up one of `attempts` tries.
/// - A device reset is an event of the device, not a failure of the request
///   (every request in flight fails with it): it uses up no try.
/// - Bound: nothing is sent again once `attempts` × the engine time-out
///   has passed since the request was first sent. A device that keeps
///   resetting therefore still ends in an error, and every request is done
///   (stored, read, or failed with EIO) within about (`attempts` + 1) ×
///   `engine_timeout`: the bound, plus the last try's own time-out.
struct RetryPolicy: Sendable {
    /// Tries of a request that its own failures may use up.
    static let attempts = 3
    /// The engine time-out (`engine_timeout`), in nanoseconds.
    let timeout: UInt64

    init(timeoutMilliseconds: Int) { timeout = UInt64(max(0, timeoutMilliseconds)) * 1_000_000 }

    /// Time after its first sending in which a request may be sent again.
    var bound: UInt64 { UInt64(RetryPolicy.attempts) * timeout }

    /// What one request has been through, kept with its job.
    struct Record: Sendable, Equatable {
        /// When it was first sent (`wd_now_ns`).
        let firstSent: UInt64
        /// Tries that failed for a reason of their own (resets not counted).
        private(set) var failures = 0
        /// Tries a device reset ended.
        private(set) var resets = 0

        init(firstSent: UInt64) { self.firstSent = firstSent }

        fileprivate mutating func count(_ e: WarpDriveError) {
            if case .deviceReset = e { resets += 1 } else { failures += 1 }
        }
    }

    /// Failures of the device rather than of the data, which a new try may
    /// get past: the pipeline tries such a request again.
    static func isDeviceFailure(_ e: WarpDriveError) -> Bool {
        switch e {
        case .engineError, .deviceReset, .timedOut, .queueFull, .pageFault, .system: return true
        default: return false
        }
    }

    /// Failures that say nothing of the data: the device failures, and a
    /// device that is gone or takes no queue (removed, `warpdrived` away,
    /// no free instance, isolated, none at all), which a try at once would
    /// not get past. `fsck` gives a block no verdict on them.
    static func saysNothingOfTheData(_ e: WarpDriveError) -> Bool {
        switch e {
        case .deviceRemoved, .daemonUnavailable, .busy, .deviceIsolated, .noDevice: return true
        default: return isDeviceFailure(e)
        }
    }

    /// Counts `error` against the request whose record is `record`, at
    /// `now`; true when the request is to be sent again.
    func retry(after error: WarpDriveError, _ record: inout Record, now: UInt64) -> Bool {
        guard RetryPolicy.isDeviceFailure(error) else { return false }
        record.count(error)
        return record.failures < RetryPolicy.attempts && now &- record.firstSent < bound
    }
}
