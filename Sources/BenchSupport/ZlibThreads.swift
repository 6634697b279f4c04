// The zlib baseline: zlib called directly on N threads over independent blocks.
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive

/// zlib on `threads` threads, each with its own reused streams, over the
/// blocks round robin (thread t takes blocks t, t + T, t + 2T, ..., modulo
/// the block count): the work an accelerator's engines do, without it.
public final class ZlibThreads: @unchecked Sendable {
    public let threads: Int
    public let blocks: ZlibBlocks
    private let workers: [ZStream]

    public init(threads: Int, blocks: ZlibBlocks) {
        precondition(threads >= 1)
        self.threads = threads
        self.blocks = blocks
        workers = (0..<threads).map { _ in
            ZStream(level: blocks.level, windowBits: blocks.windowBits, capacity: streamCapacity(blocks.blockSize))
        }
    }

    /// Checks on a few blocks that a second run compresses to the same
    /// stream and inflates back to the original.
    public func verify(_ d: Direction) throws(BenchFailure) {
        let w = workers[0]
        for k in stride(from: 0, to: blocks.count, by: max(1, blocks.count / 8)) {
            if d == .compress {
                let n = w.compress(blocks.block(k))
                guard n == blocks.stream(k).count, memcmp(w.output.baseAddress!, blocks.stream(k).baseAddress!, n) == 0 else {
                    throw BenchFailure("zlib baseline: block \(k) compressed differently on a second run")
                }
            } else {
                let n = w.decompress(blocks.stream(k))
                guard n == blocks.blockSize, memcmp(w.output.baseAddress!, blocks.block(k).baseAddress!, n) == 0 else {
                    throw BenchFailure("zlib baseline: block \(k) does not inflate back to the original")
                }
            }
        }
    }

    /// Every thread works until `seconds` have passed.
    public func run(_ d: Direction, seconds: Double) -> Trial {
        run(d, total: Int.max, seconds: seconds)
    }

    /// `total` blocks in all, shared out round robin; the trial ends when the last thread is done.
    public func run(_ d: Direction, blocks total: Int) -> Trial {
        run(d, total: total, seconds: nil)
    }

    private func run(_ d: Direction, total: Int, seconds: Double?) -> Trial {
        let flag = StopFlag()
        let blocks = self.blocks, t = threads, compress = d == .compress
        let cpu0 = wd_process_cpu_ns(), t0 = wd_now_ns()
        var handles: [pthread_t] = []
        for i in 0..<t {
            let w = workers[i]
            handles.append(spawn {
                var k = i, bytes = 0
                let count = blocks.count, blockSize = blocks.blockSize
                while k < total && !flag.stop.load(ordering: .relaxed) {
                    let b = k % count
                    if compress {
                        _ = w.compress(blocks.block(b))
                        bytes += blockSize
                    } else {
                        let n = w.decompress(blocks.stream(b))
                        if n != blockSize { die("zlib baseline: inflate of block \(b) gave \(n) bytes") }
                        bytes += n
                    }
                    k += t
                }
                flag.bytes.add(bytes, ordering: .relaxed)
            })
        }
        if let seconds {
            sleepSeconds(seconds)
            flag.stop.store(true, ordering: .relaxed)
        }
        for h in handles { pthread_join(h, nil) }
        return Trial(bytes: flag.bytes.load(ordering: .relaxed), wallNs: wd_now_ns() - t0, cpuNs: wd_process_cpu_ns() - cpu0)
    }
}

private final class StopFlag: Sendable {
    let stop = Atomic<Bool>(false)
    let bytes = Atomic<Int>(0)
}

private final class ThreadBody: @unchecked Sendable {
    let run: @Sendable () -> Void
    init(_ run: @escaping @Sendable () -> Void) { self.run = run }
}

/// Starts a thread running `body`; join it with pthread_join.
public func spawn(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var t = pthread_t()
    let rc = pthread_create(&t, nil, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
    }, box)
    if rc != 0 { die("pthread_create failed: \(rc)") }
    return t
}

/// Sleeps `s` seconds, through signal interruptions.
public func sleepSeconds(_ s: Double) {
    var ts = timespec(tv_sec: Int(s), tv_nsec: Int((s - Double(Int(s))) * 1e9))
    var rem = timespec()
    while nanosleep(&ts, &rem) != 0 && errno == EINTR { ts = rem }
}
