#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
@testable import WarpDrive

/// Deterministic pseudo-random bytes (xorshift64*).
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}

enum TestData {
    static func random(_ n: Int, seed: UInt64 = 1) -> [UInt8] {
        var g = SeededGenerator(seed: seed)
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            let v = g.next()
            for k in 0..<min(8, n - i) { out[i + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) }
            i += 8
        }
        return out
    }

    /// Text-like data that compresses about 3:1.
    static func text(_ n: Int, seed: UInt64 = 2) -> [UInt8] {
        let words = ["queue", "doorbell", "phase", "deflate", "inflate", "engine", "ring", "the", "of", "a",
                     "completion", "submission", "address", "space", "PASID", "block", "file", "system"]
        var g = SeededGenerator(seed: seed)
        var out: [UInt8] = []
        out.reserveCapacity(n + 16)
        while out.count < n {
            out += Array(words[Int(g.next() % UInt64(words.count))].utf8)
            out.append(g.next() % 9 == 0 ? 10 : 32)
            if g.next() % 50 == 0 { out.append(UInt8(truncatingIfNeeded: g.next())) }
        }
        return Array(out.prefix(n))
    }

    /// Text, binary noise and zero runs mixed, like a directory of system files.
    static func mixed(_ n: Int, seed: UInt64 = 3) -> [UInt8] {
        var out: [UInt8] = []
        var k: UInt64 = 0
        while out.count < n {
            let chunk = 4096 * Int(1 + (seed &+ k) % 8)
            switch (seed &+ k) % 3 {
            case 0: out += text(chunk, seed: seed &+ k)
            case 1: out += random(chunk / 2, seed: seed &+ k) + text(chunk / 2, seed: seed &+ k &+ 99)
            default: out += [UInt8](repeating: 0, count: chunk / 4) + text(3 * chunk / 4, seed: k)
            }
            k += 1
        }
        return Array(out.prefix(n))
    }
}

/// Stock zlib, called directly: the reference the device must match.
enum Zlib {
    /// The formats zlib writes and reads.
    static let algorithms: [CompressionAlgorithm] = [.deflate, .zlib, .gzip]

    static func windowBits(_ a: CompressionAlgorithm) -> Int32 {
        switch a {
        case .deflate: -15
        case .zlib: 15
        case .gzip: 31
        case .zstd, .lz4: preconditionFailure("zlib has no \(a)")
        }
    }

    static func compress(_ data: [UInt8], _ a: CompressionAlgorithm, level: Int) -> [UInt8] {
        var s = z_stream()
        precondition(wd_deflate_init2(&s, Int32(level), windowBits(a), 8, Z_DEFAULT_STRATEGY) == Z_OK)
        defer { deflateEnd(&s) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&s, UInt(data.count))) + 32)
        let rc: Int32 = data.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                s.next_in = UnsafeMutablePointer(mutating: src.baseAddress?.assumingMemoryBound(to: UInt8.self))
                s.avail_in = UInt32(src.count)
                s.next_out = dst.baseAddress!.assumingMemoryBound(to: UInt8.self)
                s.avail_out = UInt32(dst.count)
                return deflate(&s, Z_FINISH)
            }
        }
        precondition(rc == Z_STREAM_END)
        return Array(out.prefix(Int(s.total_out)))
    }

    static func decompress(_ data: [UInt8], _ a: CompressionAlgorithm, capacity: Int) -> [UInt8]? {
        var s = z_stream()
        precondition(wd_inflate_init2(&s, windowBits(a)) == Z_OK)
        defer { inflateEnd(&s) }
        var out = [UInt8](repeating: 0, count: max(capacity, 1))
        let rc: Int32 = data.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                s.next_in = UnsafeMutablePointer(mutating: src.baseAddress?.assumingMemoryBound(to: UInt8.self))
                s.avail_in = UInt32(src.count)
                s.next_out = dst.baseAddress!.assumingMemoryBound(to: UInt8.self)
                s.avail_out = UInt32(dst.count)
                return inflate(&s, Z_FINISH)
            }
        }
        guard rc == Z_STREAM_END else { return nil }
        return Array(out.prefix(Int(s.total_out)))
    }
}

/// A device that is shut down when the test ends.
func withDevice<T>(_ configuration: EmulatedDeviceConfiguration = .init(engines: 2),
                   _ body: (EmulatedZipDevice) throws -> T) rethrows -> T {
    let device = EmulatedZipDevice(configuration: configuration, iommu: IOMMU())
    defer { device.shutdown() }
    return try body(device)
}

func session(_ device: EmulatedZipDevice, _ a: CompressionAlgorithm, _ d: Direction, level: Int = 6,
             queues: Int = 1, timeoutMs: Int = 10_000, mode: NotificationMode = .interrupt,
             handler: CompressionSession.CompletionHandler? = nil) throws -> CompressionSession {
    var c = SessionConfiguration(algorithm: a, direction: d, level: level)
    c.queues = queues
    c.timeoutMilliseconds = timeoutMs
    c.notification = mode
    return try CompressionSession(device: device, configuration: c, completionHandler: handler)
}

/// A child process that lives until killed (its address space is not ours).
final class ChildProcess {
    let pid: pid_t
    init() throws {
        var p: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sleep"), strdup("60"), nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        wd_spawn_close_from(&actions, 3)
        let rc = posix_spawn(&p, "/bin/sleep", &actions, nil, argv, environ)
        guard rc == 0 else { throw WarpDriveError.system(call: "posix_spawn", errno: rc) }
        pid = p
    }
    /// Whether `address` lies in one of the child's mappings.
    func maps(_ address: UInt64) -> Bool {
        guard let f = fopen("/proc/\(pid)/maps", "r") else { return true }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, 512, f) != nil {
            let s = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let range = s.prefix(while: { $0 != " " }).split(separator: "-")
            if range.count == 2, let lo = UInt64(range[0], radix: 16), let hi = UInt64(range[1], radix: 16),
               address >= lo && address < hi { return true }
        }
        return false
    }
    deinit {
        kill(pid, SIGKILL)
        var st: Int32 = 0
        waitpid(pid, &st, 0)
    }
}

/// Simple thread runner for concurrency tests.
func runThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Box: @unchecked Sendable { let f: () -> Void; init(_ f: @escaping () -> Void) { self.f = f } }
    var threads: [pthread_t] = []
    for i in 0..<n {
        let box = Unmanaged.passRetained(Box { body(i) })
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.f()
            return nil
        }, box.toOpaque())
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
}

extension WarpDrive.Queue {
    /// Submits one raw request: an SQE of `type`, `level` and `window` for
    /// these buffers (what a session builds).
    func trySubmit(_ request: PendingRequest, source: UInt64, sourceLength: Int, destination: UInt64, destinationCapacity: Int,
                   type: ZipSQE.RequestType, level: Int, window: ZipSQE.Window) throws -> Bool {
        var sqe = ZipSQE(type: type, window: window, level: level)
        sqe.sourceAddress = source
        sqe.inputLength = UInt32(sourceLength)
        sqe.destinationAddress = destination
        sqe.destinationCapacity = UInt32(destinationCapacity)
        return try trySubmit(request, sqe)
    }
}

/// A whole text file (a process's output, a /proc file), or nil when it cannot be opened.
func readFile(_ path: String) -> String? {
    guard let f = fopen(path, "r") else { return nil }
    defer { fclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n == 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}
