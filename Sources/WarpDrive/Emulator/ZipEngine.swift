#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// One engine ("core") of the emulated ZIP device: a thread that claims SQEs,
/// reads the source through the IOMMU, runs zlib's deflate/inflate in raw
/// mode, writes the destination and the results back, and posts the CQE.
///
/// Each engine keeps its zlib streams and bounce buffers for its lifetime,
/// so a request allocates nothing.
final class ZipEngine: @unchecked Sendable {
    let index: Int
    unowned(unsafe) let device: EmulatedZipDevice
    let busyNanoseconds = Atomic<UInt64>(0)

    private var deflaters: [Int: UnsafeMutablePointer<z_stream>] = [:]
    private var inflater: UnsafeMutablePointer<z_stream>?
    private var inBounce = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var outBounce = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    init(index: Int, device: EmulatedZipDevice) {
        self.index = index
        self.device = device
    }

    deinit {
        for (_, s) in deflaters { deflateEnd(s); s.deallocate() }
        if let s = inflater { inflateEnd(s); s.deallocate() }
        inBounce.deallocate()
        outBounce.deallocate()
    }

    func start() -> pthread_t {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        // Engines never take process signals (SIGTERM and friends belong to
        // the application's main thread): create them with all blocked.
        var all = sigset_t(), old = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let rc = pthread_create(&t, nil, { arg in
            let engine = Unmanaged<ZipEngine>.fromOpaque(arg!).takeRetainedValue()
            engine.run()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        return t
    }

    private func run() {
        let spinNs = UInt64(device.configuration.idleSpinMicroseconds) * 1000
        while true {
            let seq = wd_load_acquire_u32(device.workSequence)
            if device.isShuttingDown { return }
            let (job, more) = device.claim()
            if let job {
                if more && device.sleepingEngines.load(ordering: .sequentiallyConsistent) > 0 {
                    _ = wd_futex_wake(device.workSequence, 1)
                }
                let t0 = wd_thread_cpu_ns()
                execute(job)
                busyNanoseconds.add(wd_thread_cpu_ns() &- t0, ordering: .relaxed)
                continue
            }
            // Idle: spin briefly (cheap re-claim when work is about to arrive), then sleep.
            if spinNs > 0 {
                let until = wd_now_ns() + spinNs
                while wd_now_ns() < until && wd_load_acquire_u32(device.workSequence) == seq { wd_cpu_relax() }
                if wd_load_acquire_u32(device.workSequence) != seq { continue }
            }
            device.sleepingEngines.add(1, ordering: .sequentiallyConsistent)
            _ = wd_futex_wait(device.workSequence, seq, 100_000_000)
            device.sleepingEngines.subtract(1, ordering: .sequentiallyConsistent)
        }
    }

    // MARK: One request

    private func execute(_ job: EmulatedZipDevice.Job) {
        let q = job.queue
        let slot = q.dus.base + device.layout.sqeOffset(job.slot)
        // One read of the entry: the SQE is shared with the client.
        let sqe = ZipSQE(loading: slot)
        let inLen = Int(sqe.inputLength)
        let outCap = min(Int(sqe.destinationCapacity), ZipSQE.maxRequestBytes)

        var r = Outcome(status: .ok)
        if device.faults.drawEngineError() {
            r.status = .engineError
            r.hardwareError = true
        } else if let type = sqe.requestType, let window = sqe.window, ZipSQE.levels.contains(sqe.level),
                  inLen <= ZipSQE.maxRequestBytes {
            r = process(type: type, direction: q.direction, level: sqe.level, windowBits: window.zlibWindowBits,
                        pasid: q.binding.pasid, src: sqe.sourceAddress, inLen: inLen, dst: sqe.destinationAddress,
                        outCap: outCap)
        } else {
            r.status = .badRequest
        }

        // The results replace the device's words whole, as the hardware writes them.
        var done = ZipSQE()
        done.consumed = UInt32(truncatingIfNeeded: r.consumed)
        done.produced = UInt32(truncatingIfNeeded: r.produced)
        done.status = r.status
        done.endOfStream = r.endOfStream
        done.checksum = r.checksum
        done.isize = r.isize
        done.faultAddress = r.faultAddress
        done.storeResults(to: slot)
        device.finish(job, bytesIn: r.consumed, bytesOut: r.produced, error: !r.status.isSuccess,
                      hardwareError: r.hardwareError)
    }

    /// What a request came to, before it is written back into its SQE.
    struct Outcome {
        var status: CompletionStatus
        var consumed = 0
        var produced = 0
        var checksum: UInt32 = 0
        var isize: UInt32 = 0
        var endOfStream = false
        var hardwareError = false
        var faultAddress: UInt64 = 0
    }

    private func process(type: ZipSQE.RequestType, direction: Direction, level: Int, windowBits: Int,
                         pasid: UInt32, src: UInt64, inLen: Int, dst: UInt64, outCap: Int) -> Outcome {
        var r = Outcome(status: .ok)
        // Source: direct through a registered region, else copied from the bound process.
        let input: UnsafeRawPointer
        var keepIn: RegisteredRegion?
        switch device.iommu.route(pasid: pasid, address: src, length: inLen) {
        case .unbound:
            r.status = .pageFault; r.faultAddress = src; return r
        case .direct(let p, let region):
            input = UnsafeRawPointer(p); keepIn = region
        case .process(let memory):
            ensure(&inBounce, inLen)
            let n = inLen == 0 ? 0 : memory.read(inBounce.baseAddress, from: src, count: inLen)
            if n != inLen {
                r.status = .pageFault
                r.faultAddress = src &+ UInt64(max(0, n))
                return r
            }
            input = UnsafeRawPointer(inBounce.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 8)!)
        }
        // Destination: direct, or an engine bounce buffer written back afterwards.
        var output: UnsafeMutableRawPointer
        var remote: ProcessMemory?
        var keepOut: RegisteredRegion?
        switch device.iommu.route(pasid: pasid, address: dst, length: outCap) {
        case .unbound:
            r.status = .pageFault; r.faultAddress = dst; return r
        case .direct(let p, let region):
            output = p; keepOut = region
        case .process(let memory):
            ensure(&outBounce, outCap)
            output = outBounce.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 8)!
            remote = memory
        }
        defer { withExtendedLifetime(keepIn) {}; withExtendedLifetime(keepOut) {} }

        if direction == .compress {
            compress(level: level, windowBits: windowBits, input, inLen, output, outCap, &r)
            switch type {
            case .deflate: break
            case .zlib: r.checksum = UInt32(adler32(1, input.assumingMemoryBound(to: UInt8.self), UInt32(inLen)))
            case .gzip: r.checksum = UInt32(crc32(0, input.assumingMemoryBound(to: UInt8.self), UInt32(inLen)))
            }
            r.isize = UInt32(truncatingIfNeeded: inLen)
        } else {
            decompress(input, inLen, output, outCap, &r)
            if r.produced > 0 || r.status == .endOfStream {
                switch type {
                case .deflate: break
                case .zlib: r.checksum = UInt32(adler32(1, output.assumingMemoryBound(to: UInt8.self), UInt32(r.produced)))
                case .gzip: r.checksum = UInt32(crc32(0, output.assumingMemoryBound(to: UInt8.self), UInt32(r.produced)))
                }
            }
            r.isize = UInt32(truncatingIfNeeded: r.produced)
        }
        if let remote, r.produced > 0 {
            let n = remote.write(to: dst, output, count: r.produced)
            if n != r.produced {
                r.status = .pageFault
                r.faultAddress = dst &+ UInt64(max(0, n))
            }
        }
        return r
    }

    private func compress(level: Int, windowBits: Int, _ input: UnsafeRawPointer, _ inLen: Int,
                          _ output: UnsafeMutableRawPointer, _ outCap: Int, _ r: inout Outcome) {
        let key = level << 4 | windowBits
        let s: UnsafeMutablePointer<z_stream>
        if let existing = deflaters[key] {
            s = existing
            deflateReset(s)
        } else {
            s = .allocate(capacity: 1)
            s.initialize(to: z_stream())
            let rc = wd_deflate_init2(s, Int32(level), -Int32(windowBits), 8, Z_DEFAULT_STRATEGY)
            precondition(rc == Z_OK, "deflateInit2 failed: \(rc)")
            deflaters[key] = s
        }
        s.pointee.next_in = UnsafeMutablePointer(mutating: input.assumingMemoryBound(to: UInt8.self))
        s.pointee.avail_in = UInt32(inLen)
        s.pointee.next_out = output.assumingMemoryBound(to: UInt8.self)
        s.pointee.avail_out = UInt32(outCap)
        let rc = deflate(s, Z_FINISH)
        r.consumed = inLen - Int(s.pointee.avail_in)
        r.produced = outCap - Int(s.pointee.avail_out)
        if rc == Z_STREAM_END {
            r.status = r.produced > inLen ? .negativeCompression : .ok
        } else {
            r.status = .destinationTooSmall
            r.produced = 0
        }
    }

    private func decompress(_ input: UnsafeRawPointer, _ inLen: Int, _ output: UnsafeMutableRawPointer,
                            _ outCap: Int, _ r: inout Outcome) {
        let s: UnsafeMutablePointer<z_stream>
        if let existing = inflater {
            s = existing
            inflateReset(s)
        } else {
            s = .allocate(capacity: 1)
            s.initialize(to: z_stream())
            let rc = wd_inflate_init2(s, -15)
            precondition(rc == Z_OK, "inflateInit2 failed: \(rc)")
            inflater = s
        }
        s.pointee.next_in = UnsafeMutablePointer(mutating: input.assumingMemoryBound(to: UInt8.self))
        s.pointee.avail_in = UInt32(inLen)
        s.pointee.next_out = output.assumingMemoryBound(to: UInt8.self)
        s.pointee.avail_out = UInt32(outCap)
        let rc = inflate(s, Z_FINISH)
        r.consumed = inLen - Int(s.pointee.avail_in)
        r.produced = outCap - Int(s.pointee.avail_out)
        switch rc {
        case Z_STREAM_END:
            r.status = .endOfStream
            r.endOfStream = true
        case Z_BUF_ERROR where s.pointee.avail_out == 0:
            r.status = .destinationTooSmall
        case Z_BUF_ERROR, Z_OK:
            r.status = .ok  // input ended before the end of the stream
        default:
            r.status = .corruptInput
        }
    }

    private func ensure(_ b: inout UnsafeMutableRawBufferPointer, _ n: Int) {
        if b.count >= n { return }
        b.deallocate()
        let size = max(n, 64 << 10)
        b = .allocate(byteCount: size, alignment: 64)
    }
}
