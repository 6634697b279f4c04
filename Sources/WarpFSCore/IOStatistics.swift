#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive

/// The live counters of one mount, behind `warpfs iostat`: what
/// applications read and wrote, what went through the codecs, what was
/// stored, requests in flight, block cache hits, errors. Each is an atomic
/// added to with relaxed ordering on the path it counts (no lock; a
/// snapshot is not taken at one instant, which figures per second do not
/// need). The mount publishes a snapshot as the read-only attribute
/// `user.warpfs.stats` of its root (`Snapshot.record`, docs/SYSTEM.md).
public final class IOStatistics: Sendable {
    /// Read and write requests that reached the file system, and their bytes
    /// (reads the kernel serves from its page cache never do).
    let reads = Atomic<UInt64>(0), readBytes = Atomic<UInt64>(0)
    let writes = Atomic<UInt64>(0), writeBytes = Atomic<UInt64>(0)
    /// Bytes into and out of the engines, for requests they completed.
    let compressIn = Atomic<UInt64>(0), compressOut = Atomic<UInt64>(0)
    let decompressIn = Atomic<UInt64>(0), decompressOut = Atomic<UInt64>(0)
    /// Blocks stored by write-back: their content (up to the last nonzero
    /// byte) and the payload bytes written for it (compressed or raw).
    let storedLogical = Atomic<UInt64>(0), storedPayload = Atomic<UInt64>(0)
    /// Requests submitted and not yet reaped, per direction.
    let compressInFlight = Atomic<Int>(0), decompressInFlight = Atomic<Int>(0)
    /// Reads of a block that found it decompressed in the cache, and reads
    /// that waited for it to be read and decompressed (read ahead or on demand).
    let cacheHits = Atomic<UInt64>(0), cacheMisses = Atomic<UInt64>(0)
    /// Error replies to applications.
    let eio = Atomic<UInt64>(0), enospc = Atomic<UInt64>(0), edquot = Atomic<UInt64>(0)
    /// Requests the accelerator failed (engine errors, time-outs, resets)
    /// and requests sent again after one.
    let acceleratorFailures = Atomic<UInt64>(0), acceleratorRetries = Atomic<UInt64>(0)
    /// When the counters started (CLOCK_MONOTONIC).
    let startNanoseconds = wd_now_ns()

    public init() {}

    @inline(__always) func noteRead(_ bytes: Int) {
        reads.add(1, ordering: .relaxed)
        readBytes.add(UInt64(bytes), ordering: .relaxed)
    }

    @inline(__always) func noteWrite(_ bytes: Int) {
        writes.add(1, ordering: .relaxed)
        writeBytes.add(UInt64(bytes), ordering: .relaxed)
    }

    @inline(__always) func noteStored(logical: Int, payload: Int) {
        storedLogical.add(UInt64(logical), ordering: .relaxed)
        storedPayload.add(UInt64(payload), ordering: .relaxed)
    }

    /// Counts an error reply (only the errnos `iostat` shows).
    @inline(__always) public func noteErrorReply(_ errno: Int32) {
        switch errno {
        case EIO: eio.add(1, ordering: .relaxed)
        case ENOSPC: enospc.add(1, ordering: .relaxed)
        case EDQUOT: edquot.add(1, ordering: .relaxed)
        default: break
        }
    }

    /// The counters now; `device` adds its engines' busy time when it knows it.
    public func snapshot(device: any AcceleratorDevice) -> Snapshot {
        var s = Snapshot()
        s.uptimeNanoseconds = wd_now_ns() &- startNanoseconds
        s[.reads] = reads.load(ordering: .relaxed)
        s[.readBytes] = readBytes.load(ordering: .relaxed)
        s[.writes] = writes.load(ordering: .relaxed)
        s[.writeBytes] = writeBytes.load(ordering: .relaxed)
        s[.compressIn] = compressIn.load(ordering: .relaxed)
        s[.compressOut] = compressOut.load(ordering: .relaxed)
        s[.decompressIn] = decompressIn.load(ordering: .relaxed)
        s[.decompressOut] = decompressOut.load(ordering: .relaxed)
        s[.storedLogical] = storedLogical.load(ordering: .relaxed)
        s[.storedPayload] = storedPayload.load(ordering: .relaxed)
        s[.compressInFlight] = UInt64(max(0, compressInFlight.load(ordering: .relaxed)))
        s[.decompressInFlight] = UInt64(max(0, decompressInFlight.load(ordering: .relaxed)))
        s[.cacheHits] = cacheHits.load(ordering: .relaxed)
        s[.cacheMisses] = cacheMisses.load(ordering: .relaxed)
        s[.eio] = eio.load(ordering: .relaxed)
        s[.enospc] = enospc.load(ordering: .relaxed)
        s[.edquot] = edquot.load(ordering: .relaxed)
        s[.acceleratorFailures] = acceleratorFailures.load(ordering: .relaxed)
        s[.acceleratorRetries] = acceleratorRetries.load(ordering: .relaxed)
        if let emulated = device as? EmulatedZipDevice {
            let busy = emulated.engineBusyNanoseconds
            s[.engines] = UInt64(busy.count)
            s[.engineBusyNanoseconds] = busy.reduce(0, +)
        }
        return s
    }
}

extension IOStatistics {
    /// A set of the mount's figures, as the record `user.warpfs.stats`
    /// carries them: counters since mount (or, after `delta`, over an
    /// interval) and gauges (requests in flight, engines). Keys the reader
    /// does not know are kept; keys the record lacks read as absent (nil).
    public struct Snapshot: Sendable, Equatable {
        /// The record's format version: the first line is `warpfs-stats 1`.
        public static let version = 1
        /// The name of the record's first word.
        public static let magic = "warpfs-stats"

        /// One figure: its key in the record.
        public struct Key: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
            public let name: String
            public init(stringLiteral name: String) { self.name = name }
            public init(_ name: String) { self.name = name }
            public var description: String { name }

            public static let uptime: Key = "uptime_ns"
            public static let reads: Key = "read_ops", readBytes: Key = "read_bytes"
            public static let writes: Key = "write_ops", writeBytes: Key = "write_bytes"
            public static let compressIn: Key = "compress_in_bytes", compressOut: Key = "compress_out_bytes"
            public static let decompressIn: Key = "decompress_in_bytes", decompressOut: Key = "decompress_out_bytes"
            public static let storedLogical: Key = "stored_logical_bytes", storedPayload: Key = "stored_payload_bytes"
            public static let compressInFlight: Key = "compress_in_flight", decompressInFlight: Key = "decompress_in_flight"
            public static let engines: Key = "engines", engineBusyNanoseconds: Key = "engine_busy_ns"
            public static let cacheHits: Key = "cache_hits", cacheMisses: Key = "cache_misses"
            public static let eio: Key = "errors_eio", enospc: Key = "errors_enospc", edquot: Key = "errors_edquot"
            public static let acceleratorFailures: Key = "accelerator_failures", acceleratorRetries: Key = "accelerator_retries"

            /// The record's keys in the order it lists them.
            public static let all: [Key] = [
                uptime, reads, readBytes, writes, writeBytes, compressIn, compressOut, decompressIn, decompressOut,
                storedLogical, storedPayload, compressInFlight, decompressInFlight, engines, engineBusyNanoseconds,
                cacheHits, cacheMisses, eio, enospc, edquot, acceleratorFailures, acceleratorRetries,
            ]
            /// Values of the moment, not counts: an interval shows the later value.
            public static let gauges: Set<Key> = [compressInFlight, decompressInFlight, engines]
        }

        /// The figures by key.
        public private(set) var values: [Key: UInt64] = [:]
        /// Keys as they came, known ones first in `Key.all` order.
        public var keys: [Key] { Key.all.filter { values[$0] != nil } + values.keys.filter { !Key.all.contains($0) }.sorted { $0.name < $1.name } }

        public init() {}

        public subscript(_ key: Key) -> UInt64? {
            get { values[key] }
            set { values[key] = newValue }
        }

        /// Time the figures cover (since mount, or the interval), in nanoseconds.
        public var uptimeNanoseconds: UInt64 {
            get { values[.uptime] ?? 0 }
            set { values[.uptime] = newValue }
        }

        /// The record: `warpfs-stats 1`, then one `key value` line per figure
        /// (unsigned decimal integers).
        public var record: String {
            var text = "\(Snapshot.magic) \(Snapshot.version)\n"
            for k in keys { text += "\(k.name) \(values[k]!)\n" }
            return text
        }

        /// Parses a record; nil when it is not one, or of another version.
        public init?(record: String) {
            var lines = record.split(separator: "\n", omittingEmptySubsequences: true)[...]
            guard let head = lines.popFirst(), head == "\(Snapshot.magic) \(Snapshot.version)" else { return nil }
            for line in lines {
                let parts = line.split(separator: " ")
                guard parts.count == 2, let v = UInt64(parts[1]) else { return nil }
                values[Key(String(parts[0]))] = v
            }
        }

        /// The figures of the interval from `earlier` to this one: counters
        /// subtracted, gauges as they are now (a counter that went back, a
        /// remount, counts from zero).
        public func delta(since earlier: Snapshot) -> Snapshot {
            var d = Snapshot()
            for (k, v) in values {
                if Key.gauges.contains(k) { d.values[k] = v; continue }
                let before = earlier.values[k] ?? 0
                d.values[k] = v >= before ? v - before : v
            }
            return d
        }

        /// Stored content over stored payload: the compression ratio of what
        /// write-back stored (nil when nothing was).
        public var ratio: Double? {
            guard let logical = self[.storedLogical], let payload = self[.storedPayload], payload > 0 else { return nil }
            return Double(logical) / Double(payload)
        }

        /// Engine busy time over engines times the time covered (nil when
        /// the device does not say: a `warpdrived` serves the mount).
        public var engineBusyShare: Double? {
            guard let busy = self[.engineBusyNanoseconds], let engines = self[.engines], engines > 0, uptimeNanoseconds > 0 else { return nil }
            return Double(busy) / (Double(engines) * Double(uptimeNanoseconds))
        }
    }
}
