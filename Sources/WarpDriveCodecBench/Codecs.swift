// Codecs through the queue against the same codecs called directly.
//
// For each codec the emulated device serves (ISA-L and zlib deflate, zstd,
// lz4, and libdeflate/zlib inflate), on the same 64 KiB blocks of the same
// data: the library's own call on E threads, each with its own context (the
// call the engine makes), against one client thread keeping N requests in
// flight through a session on a device with E engines (registered buffers,
// one interrupt per N/2 completions). Direct and queue trials alternate;
// medians of MB/s (10^6 bytes of uncompressed data per second, both
// directions) and their ratio are printed, with the codec's compression
// ratio over the corpus. Every result is checked before timing.
//
// Self-contained (its own helpers): `warpdrive-codec-bench` runs it today
// (Sources/WarpDriveCodecBench/main.swift); the file can move into
// warpdrive-bench as it is, called as `try runCodecBench(CodecBenchSettings(...))`.
import CWarpCodecs
import CWarpSys
import Synchronization
import WarpDrive
#if canImport(Glibc)
import Glibc
#endif

/// What the codec scenario runs.
struct CodecBenchSettings: Sendable {
    /// Corpus bytes (cut into blocks); read from system files.
    var corpusBytes = 128 << 20
    var blockSize = 64 << 10
    /// Engines of the device, and threads of the direct path.
    var engines = 2
    /// Requests in flight through the queue.
    var inflight = [4, 16]
    var seconds = 1.0
    var trials = 5
    /// Codec names to run (see `CodecBench.all`); empty: all.
    var only: [String] = []
    /// Directions to run.
    var directions: [Direction] = [.compress, .decompress]
    /// The device's engine idle spin in µs (nil: the device's default).
    var idleSpinMicroseconds: Int? = nil
    /// Folders whose files make the corpus, in order.
    var sources = ["/usr/share/doc", "/usr/share/man", "/usr/lib/x86_64-linux-gnu"]
}

/// One codec of the scenario: the device's algorithm, level and deflate
/// engine, and the library call the direct path makes.
struct CodecCase: Sendable {
    enum Library: String, Sendable { case isal, zlib, zstd, lz4 }
    var name: String
    var algorithm: CompressionAlgorithm
    var level: Int
    var library: Library
    /// The device's deflate engine (decides the deflate decoder too: libdeflate for .isal, zlib for .zlib).
    var deflateEngine: DeflateEngine { library == .zlib ? .zlib : .isal }
    var decoderName: String {
        switch library {
        case .isal: "libdeflate"
        case .zlib: "zlib inflate"
        case .zstd: "ZSTD_decompressDCtx"
        case .lz4: "LZ4_decompress_safe"
        }
    }
    var encoderName: String {
        switch library {
        case .isal: "isal_deflate_stateless L\(level)"
        case .zlib: "zlib deflate L\(level)"
        case .zstd: "ZSTD_compressCCtx L\(level)"
        case .lz4: level < 3 ? "LZ4_compress_fast_extState" : "LZ4_compress_HC_extStateHC L\(level)"
        }
    }
}

enum CodecBench {
    static let all: [CodecCase] = [
        CodecCase(name: "isal-1", algorithm: .deflate, level: 1, library: .isal),
        CodecCase(name: "isal-3", algorithm: .deflate, level: 3, library: .isal),
        CodecCase(name: "zlib-1", algorithm: .deflate, level: 1, library: .zlib),
        CodecCase(name: "zstd-1", algorithm: .zstd, level: 1, library: .zstd),
        CodecCase(name: "zstd-3", algorithm: .zstd, level: 3, library: .zstd),
        CodecCase(name: "lz4-1", algorithm: .lz4, level: 1, library: .lz4),
    ]
}

struct CodecBenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}

/// Runs the scenario and prints its table.
func runCodecBench(_ s: CodecBenchSettings) throws {
    let cases = s.only.isEmpty ? CodecBench.all : CodecBench.all.filter { s.only.contains($0.name) }
    guard !cases.isEmpty else { throw CodecBenchFailure("no codec named \(s.only); known: \(CodecBench.all.map(\.name))") }
    let corpus = CodecCorpus(bytes: s.corpusBytes, blockSize: s.blockSize, sources: s.sources)
    codecOut("codecs: \(corpus.count) blocks of \(s.blockSize >> 10) KiB (\(corpus.count * s.blockSize / 1_000_000) MB from "
             + "\(s.sources.joined(separator: ", "))), \(s.engines) engines = \(s.engines) direct threads, "
             + "\(s.trials) alternating trials of \(s.seconds) s, medians")
    codecOut(codecPad("codec", 8) + codecPad("direction", 11) + codecPad("library call", 30) + codecLpad("in flight", 10)
             + codecLpad("direct MB/s", 12) + codecLpad("queue MB/s", 11) + codecLpad("queue/direct", 13)
             + codecLpad("range", 13) + codecLpad("ratio", 7) + codecLpad("cpu s/GB d/q", 14))
    for c in cases {
        let streams = try CodecStreams(c, corpus)
        for direction in s.directions {
            let direct = CodecDirectRunner(c, corpus, streams, threads: s.engines)
            try direct.verify(direction)
            for n in s.inflight {
                var cfg = EmulatedDeviceConfiguration(engines: s.engines)
                cfg.deflateEngine = c.deflateEngine
                if let spin = s.idleSpinMicroseconds { cfg.idleSpinMicroseconds = spin }
                let device = EmulatedZipDevice(configuration: cfg)
                defer { device.shutdown() }
                let runner = try CodecQueueRunner(c, corpus, streams, direction: direction, inflight: n, device: device)
                defer { runner.close() }
                try runner.run(seconds: nil, verify: true)
                _ = direct.run(direction, seconds: min(0.1, s.seconds))
                var d: [Double] = [], q: [Double] = [], ratios: [Double] = [], dc: [Double] = [], qc: [Double] = []
                for _ in 0..<s.trials {
                    let c0 = wd_process_cpu_ns()
                    let (dm, db) = direct.run(direction, seconds: s.seconds)
                    let c1 = wd_process_cpu_ns()
                    let (qm, qb) = try runner.run(seconds: s.seconds, verify: false)
                    let c2 = wd_process_cpu_ns()
                    d.append(dm); q.append(qm); ratios.append(qm / dm)
                    // CPU seconds per GB of uncompressed data: insensitive to other load on the machine.
                    dc.append(Double(c1 - c0) / Double(db))
                    qc.append(Double(c2 - c1) / Double(qb))
                }
                let dmed = codecMedian(d), qmed = codecMedian(q)
                codecOut(codecPad(c.name, 8) + codecPad(direction == .compress ? "compress" : "decompress", 11)
                         + codecPad(direction == .compress ? c.encoderName : c.decoderName, 30) + codecLpad("\(n)", 10)
                         + codecLpad(codecFmt(dmed, 0), 12) + codecLpad(codecFmt(qmed, 0), 11)
                         + codecLpad(codecFmt(qmed / dmed, 3), 13)
                         + codecLpad(codecFmt(ratios.min()!, 3) + "-" + codecFmt(ratios.max()!, 3), 13)
                         + codecLpad(codecFmt(streams.ratio, 3), 7)
                         + codecLpad(codecFmt(codecMedian(dc), 2) + "/" + codecFmt(codecMedian(qc), 2), 14))
            }
        }
    }
}

// MARK: Data

/// The corpus: system files concatenated (each at most 1 MiB, sorted
/// paths, like a tar without headers), cut into blocks.
final class CodecCorpus: @unchecked Sendable {
    let blockSize: Int
    let count: Int
    let base: UnsafeMutableRawPointer

    init(bytes: Int, blockSize: Int, sources: [String]) {
        self.blockSize = blockSize
        base = .allocate(byteCount: bytes, alignment: 64)
        var filled = 0
        // Each folder's files in sorted order, the folders interleaved file
        // by file, so that any prefix mixes them (docs, manual pages, libraries).
        var perSource: [[String]] = []
        for root in sources {
            var stack = [root], list: [String] = []
            while let dir = stack.popLast(), list.count < 100_000 {
                guard let d = opendir(dir) else { continue }
                var names: [String] = []
                while let e = readdir(d) {
                    let name = String(cString: wd_dirent_name(e))
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(d)
                var subdirs: [String] = []
                for name in names.sorted() {
                    let path = dir + "/" + name
                    var st = stat()
                    guard lstat(path, &st) == 0 else { continue }
                    if st.st_mode & S_IFMT == S_IFDIR { subdirs.append(path) } else if st.st_mode & S_IFMT == S_IFREG { list.append(path) }
                }
                stack += subdirs.reversed()
            }
            perSource.append(list)
        }
        var files: [String] = []
        for i in 0..<(perSource.map(\.count).max() ?? 0) {
            for list in perSource where i < list.count { files.append(list[i]) }
        }
        for path in files where filled < bytes {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            let n = read(fd, base + filled, min(1 << 20, bytes - filled))
            close(fd)
            if n > 0 { filled += n }
        }
        // Top up with seeded ~2:1 data when the files run out.
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        while filled < bytes {
            x ^= x >> 12; x ^= x << 25; x ^= x >> 27
            let v = x &* 0x2545_F491_4F6C_DD1D
            (base + filled).storeBytes(of: UInt8(truncatingIfNeeded: v % 3 == 0 ? v >> 8 : 0x61 + v % 4), as: UInt8.self)
            filled += 1
        }
        count = bytes / blockSize
    }

    func block(_ k: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base + k * blockSize, count: blockSize) }
}

/// Every block compressed once by the case's direct call: the decompress
/// path's input and the compression ratio.
final class CodecStreams: @unchecked Sendable {
    let bound: Int
    let base: UnsafeMutableRawPointer
    var lengths: [Int]
    let ratio: Double

    init(_ c: CodecCase, _ corpus: CodecCorpus) throws {
        bound = c.algorithm.compressBound(corpus.blockSize) + 64
        base = .allocate(byteCount: bound * corpus.count, alignment: 64)
        let ctx = CodecContext(c)
        var total = 0
        lengths = []
        for k in 0..<corpus.count {
            let b = corpus.block(k)
            let n = ctx.compress(b.baseAddress!, b.count, base + k * bound, bound)
            guard n > 0 else { throw CodecBenchFailure("\(c.name): block \(k) did not compress") }
            lengths.append(n)
            total += n
        }
        ratio = Double(corpus.count * corpus.blockSize) / Double(total)
    }

    func stream(_ k: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base + k * bound, count: lengths[k]) }
}

/// One thread's contexts for the direct path: the calls the engine makes.
final class CodecContext: @unchecked Sendable {
    let c: CodecCase
    private var isal: UnsafeMutablePointer<isal_zstream>?
    private var isalBuffer: UnsafeMutableRawPointer?
    private var isalBufferSize: UInt32 = 0
    private var zDeflate: UnsafeMutablePointer<z_stream>?
    private var zInflate: UnsafeMutablePointer<z_stream>?
    private var libdeflate: OpaquePointer?
    private var zstdC: OpaquePointer?
    private var zstdD: OpaquePointer?
    private var lz4State: UnsafeMutableRawPointer?
    private var lz4HC: UnsafeMutableRawPointer?

    init(_ c: CodecCase) {
        self.c = c
        switch c.library {
        case .isal:
            isal = .allocate(capacity: 1)
            isalBufferSize = wd_isal_level_buffer_size(Int32(c.level))
            if isalBufferSize > 0 { isalBuffer = .allocate(byteCount: Int(isalBufferSize), alignment: 64) }
            libdeflate = libdeflate_alloc_decompressor()
        case .zlib:
            zDeflate = .allocate(capacity: 1)
            zDeflate!.initialize(to: z_stream())
            precondition(wd_deflate_init2(zDeflate, Int32(c.level), -15, 8, Z_DEFAULT_STRATEGY) == Z_OK)
            zInflate = .allocate(capacity: 1)
            zInflate!.initialize(to: z_stream())
            precondition(wd_inflate_init2(zInflate, -15) == Z_OK)
        case .zstd:
            zstdC = ZSTD_createCCtx()
            zstdD = ZSTD_createDCtx()
        case .lz4:
            lz4State = .allocate(byteCount: Int(LZ4_sizeofState()), alignment: 16)
            lz4HC = .allocate(byteCount: Int(LZ4_sizeofStateHC()), alignment: 16)
        }
    }

    /// Compressed bytes written, 0 on failure.
    func compress(_ src: UnsafeRawPointer, _ n: Int, _ dst: UnsafeMutableRawPointer, _ cap: Int) -> Int {
        switch c.library {
        case .isal:
            let s = isal!
            isal_deflate_stateless_init(s)
            s.pointee.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: UInt8.self))
            s.pointee.avail_in = UInt32(n)
            s.pointee.next_out = dst.assumingMemoryBound(to: UInt8.self)
            s.pointee.avail_out = UInt32(cap)
            s.pointee.level = UInt32(c.level)
            s.pointee.level_buf = isalBuffer?.assumingMemoryBound(to: UInt8.self)
            s.pointee.level_buf_size = isalBufferSize
            s.pointee.hist_bits = 15
            s.pointee.end_of_stream = 1
            s.pointee.flush = UInt16(NO_FLUSH)
            s.pointee.gzip_flag = UInt16(IGZIP_DEFLATE)
            return isal_deflate_stateless(s) == wd_isal_comp_ok() ? Int(s.pointee.total_out) : 0
        case .zlib:
            let s = zDeflate!
            deflateReset(s)
            s.pointee.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: UInt8.self))
            s.pointee.avail_in = UInt32(n)
            s.pointee.next_out = dst.assumingMemoryBound(to: UInt8.self)
            s.pointee.avail_out = UInt32(cap)
            return deflate(s, Z_FINISH) == Z_STREAM_END ? cap - Int(s.pointee.avail_out) : 0
        case .zstd:
            let r = ZSTD_compressCCtx(zstdC, dst, cap, src, n, Int32(c.level))
            return ZSTD_isError(r) != 0 ? 0 : r
        case .lz4:
            let s = src.assumingMemoryBound(to: CChar.self), d = dst.assumingMemoryBound(to: CChar.self)
            return Int(c.level < 3 ? LZ4_compress_fast_extState(lz4State, s, d, Int32(n), Int32(cap), 1)
                       : LZ4_compress_HC_extStateHC(lz4HC, s, d, Int32(n), Int32(cap), Int32(c.level)))
        }
    }

    /// Decompressed bytes written, -1 on failure.
    func decompress(_ src: UnsafeRawPointer, _ n: Int, _ dst: UnsafeMutableRawPointer, _ cap: Int) -> Int {
        switch c.library {
        case .isal:
            var written = 0
            return libdeflate_deflate_decompress_ex(libdeflate, src, n, dst, cap, nil, &written) == LIBDEFLATE_SUCCESS ? written : -1
        case .zlib:
            let s = zInflate!
            inflateReset(s)
            s.pointee.next_in = UnsafeMutablePointer(mutating: src.assumingMemoryBound(to: UInt8.self))
            s.pointee.avail_in = UInt32(n)
            s.pointee.next_out = dst.assumingMemoryBound(to: UInt8.self)
            s.pointee.avail_out = UInt32(cap)
            return inflate(s, Z_FINISH) == Z_STREAM_END ? cap - Int(s.pointee.avail_out) : -1
        case .zstd:
            let r = ZSTD_decompressDCtx(zstdD, dst, cap, src, n)
            return ZSTD_isError(r) != 0 ? -1 : r
        case .lz4:
            return Int(LZ4_decompress_safe(src.assumingMemoryBound(to: CChar.self), dst.assumingMemoryBound(to: CChar.self),
                                           Int32(n), Int32(cap)))
        }
    }
}

// MARK: Direct

/// The library on `threads` threads, each with its own context and output
/// buffer, over the blocks round robin.
final class CodecDirectRunner: @unchecked Sendable {
    let corpus: CodecCorpus
    let streams: CodecStreams
    let contexts: [CodecContext]
    let outputs: [UnsafeMutableRawPointer]
    let outCap: Int

    init(_ c: CodecCase, _ corpus: CodecCorpus, _ streams: CodecStreams, threads: Int) {
        self.corpus = corpus
        self.streams = streams
        contexts = (0..<threads).map { _ in CodecContext(c) }
        outCap = max(streams.bound, corpus.blockSize)
        outputs = (0..<threads).map { _ in UnsafeMutableRawPointer.allocate(byteCount: max(streams.bound, corpus.blockSize), alignment: 64) }
    }

    deinit { outputs.forEach { $0.deallocate() } }

    func verify(_ d: Direction) throws {
        let ctx = contexts[0], out = outputs[0]
        for k in stride(from: 0, to: corpus.count, by: max(1, corpus.count / 16)) {
            if d == .compress {
                let b = corpus.block(k)
                let n = ctx.compress(b.baseAddress!, b.count, out, outCap)
                guard n == streams.lengths[k], memcmp(out, streams.stream(k).baseAddress!, n) == 0 else {
                    throw CodecBenchFailure("\(ctx.c.name) direct: block \(k) compressed differently on a second run")
                }
            } else {
                let s = streams.stream(k)
                let n = ctx.decompress(s.baseAddress!, s.count, out, outCap)
                guard n == corpus.blockSize, memcmp(out, corpus.block(k).baseAddress!, n) == 0 else {
                    throw CodecBenchFailure("\(ctx.c.name) direct: block \(k) does not decompress to the original")
                }
            }
        }
    }

    /// MB/s of uncompressed data over `seconds`, and the bytes.
    @discardableResult
    func run(_ d: Direction, seconds: Double) -> (Double, Int) {
        let flag = CodecStopFlag()
        let t = contexts.count, count = corpus.count, compress = d == .compress
        let t0 = wd_now_ns()
        var handles: [pthread_t] = []
        for i in 0..<t {
            let ctx = contexts[i], out = UInt(bitPattern: outputs[i]), cap = outCap, corpus = corpus, streams = streams
            handles.append(codecSpawn {
                let out = UnsafeMutableRawPointer(bitPattern: out)!
                var k = i, done = 0
                while !flag.stop.load(ordering: .relaxed) {
                    let b = k % count
                    if compress {
                        let src = corpus.block(b)
                        _ = ctx.compress(src.baseAddress!, src.count, out, cap)
                    } else {
                        let s = streams.stream(b)
                        _ = ctx.decompress(s.baseAddress!, s.count, out, cap)
                    }
                    done += corpus.blockSize
                    k += t
                }
                flag.bytes.add(done, ordering: .relaxed)
            })
        }
        usleep(UInt32(seconds * 1_000_000))
        flag.stop.store(true, ordering: .relaxed)
        for h in handles { pthread_join(h, nil) }
        let bytes = flag.bytes.load(ordering: .relaxed)
        return (Double(bytes) / (Double(wd_now_ns() - t0) / 1e9) / 1e6, bytes)
    }
}

final class CodecStopFlag: Sendable {
    let stop = Atomic<Bool>(false)
    let bytes = Atomic<Int>(0)
}

// MARK: Through the queue

/// Completed tags as the session's handler reports them; preallocated.
final class CodecCompletions: @unchecked Sendable {
    private let lock = Mutex(())
    private let tags: UnsafeMutablePointer<Int>
    private let sizes: UnsafeMutablePointer<Int>
    private var count = 0
    private var failure: WarpDriveError?

    init(capacity: Int) {
        tags = .allocate(capacity: capacity)
        sizes = .allocate(capacity: capacity)
    }

    deinit { tags.deallocate(); sizes.deallocate() }

    func record(_ tag: UInt64, _ r: Result<Int, WarpDriveError>) {
        lock.withLock { _ in
            switch r {
            case .success(let n): tags[count] = Int(tag); sizes[count] = n; count += 1
            case .failure(let e): if failure == nil { failure = e }
            }
        }
    }

    func drain(_ t: UnsafeMutablePointer<Int>, _ s: UnsafeMutablePointer<Int>) throws -> Int {
        try lock.withLock { _ in
            if let f = failure { throw CodecBenchFailure("queue request failed: \(f)") }
            let n = count
            t.update(from: tags, count: n)
            s.update(from: sizes, count: n)
            count = 0
            return n
        }
    }
}

/// One client thread (the caller) keeping N requests in flight through one
/// session, on registered buffers (sources: every block or its stream;
/// destinations: one per slot).
final class CodecQueueRunner {
    let c: CodecCase
    let corpus: CodecCorpus
    let streams: CodecStreams
    let direction: Direction
    let inflight: Int
    let session: CompressionSession
    let log: CodecCompletions
    let binding: SVABinding
    let sourcePool: SharedBufferPool
    let destinationPool: SharedBufferPool
    let sources: [UnsafeRawBufferPointer]
    let checker: CodecContext
    private let slotBlock: UnsafeMutablePointer<Int>
    private let doneTags: UnsafeMutablePointer<Int>
    private let doneSizes: UnsafeMutablePointer<Int>
    private let scratch: UnsafeMutableRawPointer

    init(_ c: CodecCase, _ corpus: CodecCorpus, _ streams: CodecStreams, direction: Direction, inflight n: Int,
         device: EmulatedZipDevice) throws {
        self.c = c
        self.corpus = corpus
        self.streams = streams
        self.direction = direction
        inflight = n
        var cfg = SessionConfiguration(algorithm: c.algorithm, direction: direction, level: c.level)
        cfg.notification = .interrupt
        cfg.interruptThreshold = max(1, n / 2)
        let log = CodecCompletions(capacity: n)
        self.log = log
        session = try CompressionSession(device: device, configuration: cfg) { tag, r in log.record(tag, r) }
        binding = try device.iommu.bind()
        let compress = direction == .compress
        sourcePool = try SharedBufferPool(binding: binding, bufferSize: compress ? corpus.blockSize : streams.bound, count: corpus.count)
        destinationPool = try SharedBufferPool(binding: binding, bufferSize: max(streams.bound, corpus.blockSize), count: n)
        var srcs: [UnsafeRawBufferPointer] = []
        for k in 0..<corpus.count {
            let data = compress ? corpus.block(k) : streams.stream(k)
            let b = sourcePool.buffer(k)
            b.copyMemory(from: data)
            srcs.append(UnsafeRawBufferPointer(rebasing: b[0..<data.count]))
        }
        sources = srcs
        checker = CodecContext(c)
        slotBlock = .allocate(capacity: n)
        doneTags = .allocate(capacity: n)
        doneSizes = .allocate(capacity: n)
        scratch = .allocate(byteCount: max(streams.bound, corpus.blockSize), alignment: 64)
    }

    func close() {
        session.close()
        binding.unbind()
    }

    deinit { slotBlock.deallocate(); doneTags.deallocate(); doneSizes.deallocate(); scratch.deallocate() }

    private func check(_ slot: Int, _ size: Int) throws {
        let k = slotBlock[slot]
        let out = UnsafeRawBufferPointer(destinationPool.buffer(slot))
        if direction == .compress {
            let n = checker.decompress(out.baseAddress!, size, scratch, corpus.blockSize)
            guard n == corpus.blockSize, memcmp(scratch, corpus.block(k).baseAddress!, n) == 0 else {
                throw CodecBenchFailure("\(c.name) queue: the stream of block \(k) does not decompress to it")
            }
        } else {
            guard size == corpus.blockSize, memcmp(out.baseAddress!, corpus.block(k).baseAddress!, size) == 0 else {
                throw CodecBenchFailure("\(c.name) queue: block \(k) came back wrong (\(size) bytes)")
            }
        }
    }

    /// Runs for `seconds` (or once over every block when nil); MB/s and bytes.
    @discardableResult
    func run(seconds: Double?, verify: Bool) throws -> (Double, Int) {
        let n = inflight, count = corpus.count
        var next = 0, submitted = 0, completed = 0
        let t0 = wd_now_ns()
        let until = seconds.map { t0 + UInt64($0 * 1e9) }
        func submit(_ slot: Int) throws {
            let k = next % count
            next += 1
            slotBlock[slot] = k
            try session.submit(sources[k], into: destinationPool.buffer(slot), tag: UInt64(slot))
            submitted += 1
        }
        func more() -> Bool { until.map { wd_now_ns() < $0 } ?? (submitted < count) }
        for slot in 0..<n where more() { try submit(slot) }
        while completed < submitted {
            try session.poll(minimum: 1)
            let got = try log.drain(doneTags, doneSizes)
            for i in 0..<got {
                completed += 1
                if verify { try check(doneTags[i], doneSizes[i]) }
                if more() { try submit(doneTags[i]) }
            }
        }
        let bytes = completed * corpus.blockSize
        return (Double(bytes) / (Double(wd_now_ns() - t0) / 1e9) / 1e6, bytes)
    }
}

// MARK: Helpers (the scenario's own, so that it does not depend on the rest of the bench)

func codecOut(_ s: String) {
    print(s)
    fflush(nil)
}

func codecPad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }
func codecLpad(_ s: String, _ w: Int) -> String { s.count >= w ? " " + s : String(repeating: " ", count: w - s.count) + s }

func codecFmt(_ v: Double, _ digits: Int) -> String {
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let r = (v * p).rounded() / p
    var s = "\(r)"
    if digits == 0, s.hasSuffix(".0") { s.removeLast(2) }
    if digits > 0, let dot = s.firstIndex(of: ".") {
        let have = s.distance(from: dot, to: s.endIndex) - 1
        if have < digits { s += String(repeating: "0", count: digits - have) }
    }
    return s
}

func codecMedian(_ v: [Double]) -> Double {
    let s = v.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func codecSpawn(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable { let f: @Sendable () -> Void; init(_ f: @escaping @Sendable () -> Void) { self.f = f } }
    var t = pthread_t()
    let box = Unmanaged.passRetained(Box(body))
    let rc = pthread_create(&t, nil, { arg in
        Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().f()
        return nil
    }, box.toOpaque())
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return t
}
