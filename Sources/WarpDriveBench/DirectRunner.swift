#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive

// MARK: Direct zlib on threads

final class StopFlag: Sendable {
    let stop = Atomic<Bool>(false)
    let bytes = Atomic<Int>(0)
}

/// zlib on `threads` threads, each with its own reused streams, over the
/// blocks round robin (thread t takes blocks t, t + T, t + 2T, ...).
final class DirectRunner: @unchecked Sendable {
    let threads: Int
    let corpus: Corpus
    let workers: [ZStream]

    init(threads: Int, settings s: Settings, corpus: Corpus) {
        self.threads = threads
        self.corpus = corpus
        workers = (0..<threads).map { _ in
            ZStream(level: s.level, windowBits: s.algorithm.windowBits, capacity: slotCapacity(corpus.blockSize))
        }
    }

    /// The direct path's results are right (a few blocks).
    func verify(_ d: Direction) throws {
        let w = workers[0]
        for k in stride(from: 0, to: corpus.count, by: max(1, corpus.count / 8)) {
            if d == .compress {
                let n = w.compress(corpus.block(k))
                guard n == corpus.stream(k).count, memcmp(w.output.baseAddress!, corpus.stream(k).baseAddress!, n) == 0 else {
                    throw BenchFailure("zlib baseline: block \(k) compressed differently on a second run")
                }
            } else {
                let n = w.decompress(corpus.stream(k))
                guard n == corpus.blockSize, memcmp(w.output.baseAddress!, corpus.block(k).baseAddress!, n) == 0 else {
                    throw BenchFailure("zlib baseline: block \(k) does not inflate back to the original")
                }
            }
        }
    }

    func run(_ d: Direction, seconds: Double) -> Trial {
        let flag = StopFlag()
        let corpus = self.corpus, t = threads, compress = d == .compress
        let cpu0 = wd_process_cpu_ns(), t0 = wd_now_ns()
        var handles: [pthread_t] = []
        for i in 0..<t {
            let w = workers[i]
            handles.append(spawn {
                var k = i, bytes = 0
                let count = corpus.count
                while !flag.stop.load(ordering: .relaxed) {
                    let b = k % count
                    if compress {
                        _ = w.compress(corpus.block(b))
                        bytes += corpus.blockSize
                    } else {
                        let n = w.decompress(corpus.stream(b))
                        if n != corpus.blockSize { die("zlib baseline: inflate of block \(b) gave \(n) bytes") }
                        bytes += n
                    }
                    k += t
                }
                flag.bytes.add(bytes, ordering: .relaxed)
            })
        }
        sleepSeconds(seconds)
        flag.stop.store(true, ordering: .relaxed)
        for h in handles { pthread_join(h, nil) }
        return Trial(bytes: flag.bytes.load(ordering: .relaxed), wallNs: wd_now_ns() - t0, cpuNs: wd_process_cpu_ns() - cpu0)
    }
}
