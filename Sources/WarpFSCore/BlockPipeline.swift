#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive
import WarpFSFormat

// The block pipeline: blocks on their way through the accelerator.
// Submission (`send`), completion (`reapCompressions`,
// `reapDecompressions`) and retries (`retried`, by `RetryPolicy`); each
// stream's table is the only record of what is in flight.

extension CompressedFile {
    /// The stream format of the file's compressed blocks (a header's encoding is always a compressed one).
    private var algorithm: CompressionAlgorithm { header.encoding.algorithm ?? .deflate }

    /// The level the file's new blocks are compressed at: the one its header
    /// records (set at creation from the mount's `level=` or the directory's
    /// properties), so a file keeps its level under a mount with another
    /// algorithm or level. A header level the encoding does not have (a
    /// header written by hand) gives the mount's level, within the
    /// encoding's range. Asked once per compressing stream, not per block.
    var compressionLevel: Int {
        let levels = algorithm.levels
        let own = Int(header.level)
        return levels.contains(own) ? own : min(max(codec.level, levels.lowerBound), levels.upperBound)
    }

    private func compressStream() throws -> BlockStream<CompressJob> {
        if let s = compressor { return s }
        do {
            let s = try codec.stream(.compress, algorithm: algorithm, level: compressionLevel, capacity: writeDepth, of: CompressJob.self)
            compressor = s
            return s
        } catch { throw FSError(EIO, "\(name): no accelerator queue for compression: \(error)") }
    }

    private func decompressStream() throws -> BlockStream<LoadJob> {
        if let s = decompressor { return s }
        do {
            let s = try codec.stream(.decompress, algorithm: algorithm, capacity: max(readahead, 8) * 2, of: LoadJob.self)
            decompressor = s
            return s
        } catch { throw FSError(EIO, "\(name): no accelerator queue for decompression: \(error)") }
    }

    /// Sends dirty block `b` to the accelerator (or stores it as a hole).
    func startCompression(_ b: Int) throws {
        guard let c = cache[b], c.dirty, !c.busy else { return }
        var len = layout.blockSize
        while len > 0 && c.data[len - 1] == 0 { len -= 1 }
        let content = UnsafeRawBufferPointer(rebasing: c.data[0..<len])
        // All zeros: a hole. Random-looking bytes: raw, without spending an engine on them.
        if len == 0 || EntropyCheck.looksIncompressible(content) {
            c.dirty = false
            do {
                try store(block: b, encoding: len == 0 ? .zero : .raw, payload: content)
                codec.stats.noteStored(logical: len, payload: len)
                c.stored(used: layout.footprintLength(len))
            } catch {
                storeFailed(block: b, c, error)
            }
            return
        }
        // The block stays dirty until it is on its way: a stream that cannot
        // be had (no queue, the device gone) must not leave it clean, or
        // the cache would drop data that was never stored.
        let s = try compressStream()
        while s.isFull { reapCompressions(minimum: 1) }
        let out = codec.takeBuffer(layout.blockSize)
        c.dirty = false
        c.busy = true
        do {
            try send(CompressJob(block: b, source: c, output: out, rawLength: len, tries: RetryPolicy.Record(firstSent: wd_now_ns())), on: s)
        } catch {
            c.busy = false
            c.dirty = true
            throw FSError(EIO, "\(name): block \(b) could not be sent for compression: \(error)")
        }
    }

    /// Sends stored block `b`'s payload to be decompressed into `target`
    /// (which joins the cache when it is reaped whole).
    func startDecompression(_ b: Int, payload: BlockBuffer, into target: CachedBlock) throws {
        let s = try decompressStream()
        try send(LoadJob(block: b, target: target, payload: payload, tries: RetryPolicy.Record(firstSent: wd_now_ns())), on: s)
        loading.insert(b)
    }

    /// Sends `job`'s request on `s`. A failure to send goes through the
    /// retry policy as a failed completion does (after a reset the session
    /// opens a fresh queue for the next try).
    private func send<J: PipelineJob>(_ job: J, on s: BlockStream<J>) throws {
        var job = job
        while true {
            do { return try s.submit(job) } catch let e as WarpDriveError where codec.retry.retry(after: e, &job.tries, now: wd_now_ns()) {
                codec.stats.acceleratorFailures.add(1, ordering: .relaxed)
                codec.stats.acceleratorRetries.add(1, ordering: .relaxed)
            }
        }
    }

    /// After a failed try of `job` (reaped from `s`): sends it again when
    /// the retry policy allows; true when it is on its way. After a time-out
    /// the device may still write the old output buffer: it is set aside.
    private func retried<J: PipelineJob>(_ job: J, after e: WarpDriveError, on s: BlockStream<J>) -> Bool {
        var job = job
        guard codec.retry.retry(after: e, &job.tries, now: wd_now_ns()) else { return false }
        if case .timedOut = e { job.replaceOutput(codec, blockSize: layout.blockSize) }
        do { try send(job, on: s) } catch { return false }
        codec.stats.acceleratorRetries.add(1, ordering: .relaxed)
        // One line per file and block (Log.once): a device that keeps
        // failing or resetting does not fill the log.
        Log.once(.error, .accelerator, file: name, block: job.block, "\(name): block \(job.block): \(J.what) failed (\(e)); retrying")
        return true
    }

    /// Stores finished compressions; waits for at least `minimum`.
    func reapCompressions(minimum: Int) {
        guard let s = compressor, s.inFlight > 0 else { return }
        for (job, result) in s.reap(minimum: minimum) {
            if case .failure(let e) = result, retried(job, after: e, on: s) { continue }
            let b = job.block, source = job.source, output = job.output.bytes, rawLength = job.rawLength
            source.busy = false
            do {
                switch result {
                case .success(let n) where n <= rawLength - rawLength / 16:
                    try store(block: b, encoding: header.encoding, payload: UnsafeRawBufferPointer(rebasing: output[0..<n]))
                    codec.stats.noteStored(logical: rawLength, payload: n)
                    source.stored(used: layout.footprintLength(n))
                case .success, .failure(.destinationTooSmall):
                    // Saves less than 6.25%: stored raw.
                    try store(block: b, encoding: .raw, payload: UnsafeRawBufferPointer(rebasing: source.data[0..<rawLength]))
                    codec.stats.noteStored(logical: rawLength, payload: rawLength)
                    source.stored(used: layout.footprintLength(rawLength))
                case .failure(let e):
                    throw FSError(EIO, "\(name): block \(b) could not be compressed: \(e)")
                }
            } catch {
                storeFailed(block: b, source, error)
            }
        }
    }

    /// Caches finished decompressions; waits for at least `minimum`.
    func reapDecompressions(minimum: Int) {
        guard let s = decompressor, s.inFlight > 0 else { return }
        for (job, result) in s.reap(minimum: minimum) {
            let b = job.block
            loading.remove(b)
            if case .failure(let e) = result, retried(job, after: e, on: s) { loading.insert(b); continue }
            let target = job.target
            switch result {
            case .success(let n) where n == layout.blockSize:
                // Fresh in the LRU order: read-ahead blocks must not be the
                // first evicted (they would be decompressed twice).
                clock += 1
                target.lastUse = clock
                if cache[b] == nil { cache[b] = target }
            case .success(let n):
                loadErrors[b] = FSError(EIO, "\(name): block \(b) decompresses to \(n) bytes, not \(layout.blockSize)")
            case .failure(let e):
                loadErrors[b] = FSError(EIO, "\(name): block \(b) cannot be decompressed: \(e)")
            }
        }
    }

    /// Waits until block `b` is neither being compressed nor loaded.
    func settle(_ b: Int) {
        while let c = cache[b], c.busy { reapCompressions(minimum: 1) }
        while loading.contains(b) { reapDecompressions(minimum: 1) }
    }

    /// Waits for every compression in flight (their results stored).
    func drainCompressions() {
        while let s = compressor, s.inFlight > 0 { reapCompressions(minimum: s.inFlight) }
    }

    /// Gives idle accelerator streams back to the mount's pool, so queues are
    /// held only by files with requests in flight.
    func releaseIdleStreams() {
        if let s = compressor, s.inFlight == 0 { codec.recycle(s); compressor = nil }
        if let s = decompressor, s.inFlight == 0 { codec.recycle(s); decompressor = nil }
    }
}

/// A block request of the pipeline: which block, what the retry policy
/// knows of it, and how to replace its output buffer after a time-out.
protocol PipelineJob: BlockRequest {
    /// What the engine does, for messages ("compression").
    static var what: String { get }
    var block: Int { get }
    var tries: RetryPolicy.Record { get set }
    /// Sets the output buffer aside for good (the device may still write
    /// it after a time-out) and takes a fresh one.
    mutating func replaceOutput(_ codec: BlockCodec, blockSize: Int)
}

/// A dirty block being compressed: `source` is busy (its bytes must not
/// change) until the job is reaped.
struct CompressJob: PipelineJob {
    static let what = "compression"
    let block: Int
    let source: CachedBlock
    var output: BlockBuffer
    /// Bytes of the block up to its last nonzero byte (what a raw store keeps).
    let rawLength: Int
    var tries: RetryPolicy.Record

    var engineInput: UnsafeRawBufferPointer { UnsafeRawBufferPointer(source.data) }
    var engineOutput: UnsafeMutableRawBufferPointer { output.bytes }
    mutating func replaceOutput(_ codec: BlockCodec, blockSize: Int) {
        codec.quarantine(output)
        output = codec.takeBuffer(blockSize)
    }
}

/// A stored block being decompressed into `target`, which joins the cache
/// when the job is reaped whole.
struct LoadJob: PipelineJob {
    static let what = "decompression"
    let block: Int
    var target: CachedBlock
    let payload: BlockBuffer
    var tries: RetryPolicy.Record

    var engineInput: UnsafeRawBufferPointer { UnsafeRawBufferPointer(payload.bytes) }
    var engineOutput: UnsafeMutableRawBufferPointer { target.data }
    mutating func replaceOutput(_ codec: BlockCodec, blockSize: Int) {
        codec.quarantine(target)
        target = CachedBlock(codec.takeBuffer(blockSize), zeroed: false)
    }
}
