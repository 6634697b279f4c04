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
        let sqe = ZipSQE(q.dus.base + device.layout.sqOffset + job.slot * RingLayout.sqeSize)
        // Read every field once: the SQE is shared with the client.
        let dw9 = sqe.dw9
        let inLen = Int(sqe.inputLength)
        let outCap = min(Int(sqe.destinationCapacity), ZipSQE.maxRequestBytes)
        let src = sqe.sourceAddress
        let dst = sqe.destinationAddress
        let typeRaw = UInt8(dw9 & 0xff)
        let window = Int((dw9 >> 12) & 0xf)
        let level = Int((dw9 >> 16) & 0xff)
        let pasid = q.binding.pasid
        let direction = q.direction

        var r = Outcome(status: ZipSQE.Status.ok)
        if device.faults.drawEngineError() {
            r.status = ZipSQE.Status.engineError
            r.hardwareError = true
        } else if let type = ZipSQE.RequestType(rawValue: typeRaw), window <= 4, level <= 9, inLen <= ZipSQE.maxRequestBytes {
            r = process(type: type, direction: direction, level: level, windowBits: ZipEngine.windowBits[window],
                        pasid: pasid, src: src, inLen: inLen, dst: dst, outCap: outCap)
        } else {
            r.status = ZipSQE.Status.badRequest
        }

        sqe.consumed = UInt32(truncatingIfNeeded: r.consumed)
        sqe.produced = UInt32(truncatingIfNeeded: r.produced)
        sqe.statusWord = UInt32(r.status) | (r.endOfStream ? 0x100 : 0)
        sqe.checksum = r.checksum
        sqe.isize = r.isize
        sqe.faultAddressLow = UInt32(truncatingIfNeeded: r.faultAddress)
        sqe.faultAddressHigh = UInt32(truncatingIfNeeded: r.faultAddress >> 32)
        let ok = r.status == ZipSQE.Status.ok || r.status == ZipSQE.Status.negativeCompression
            || r.status == ZipSQE.Status.endOfStream
        device.finish(job, bytesIn: r.consumed, bytesOut: r.produced, error: !ok, hardwareError: r.hardwareError)
    }

    /// SQE window field (UADK `wd_comp_winsz_type`: 4K, 8K, 16K, 24K, 32K) to
    /// zlib window bits; zlib has no 24K window, so 24K compresses with 16K
    /// (never exceeding the requested window).
    static let windowBits = [12, 13, 14, 14, 15]

    struct Outcome {
        var status: UInt8
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
        var r = Outcome(status: ZipSQE.Status.ok)
        // Source: direct through a registered region, else copied from the bound process.
        let input: UnsafeRawPointer
        var keepIn: RegisteredRegion?
        switch device.iommu.route(pasid: pasid, address: src, length: inLen) {
        case .unbound:
            r.status = ZipSQE.Status.pageFault; r.faultAddress = src; return r
        case .direct(let p, let region):
            input = UnsafeRawPointer(p); keepIn = region
        case .process(let memory):
            ensure(&inBounce, inLen)
            let n = inLen == 0 ? 0 : memory.read(inBounce.baseAddress, from: src, count: inLen)
            if n != inLen {
                r.status = ZipSQE.Status.pageFault
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
            r.status = ZipSQE.Status.pageFault; r.faultAddress = dst; return r
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
            if r.produced > 0 || r.status == ZipSQE.Status.endOfStream {
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
                r.status = ZipSQE.Status.pageFault
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
            r.status = r.produced > inLen ? ZipSQE.Status.negativeCompression : ZipSQE.Status.ok
        } else {
            r.status = ZipSQE.Status.destinationTooSmall
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
            r.status = ZipSQE.Status.endOfStream
            r.endOfStream = true
        case Z_BUF_ERROR where s.pointee.avail_out == 0:
            r.status = ZipSQE.Status.destinationTooSmall
        case Z_BUF_ERROR, Z_OK:
            r.status = ZipSQE.Status.ok  // input ended before the end of the stream
        default:
            r.status = ZipSQE.Status.corruptInput
        }
    }

    private func ensure(_ b: inout UnsafeMutableRawBufferPointer, _ n: Int) {
        if b.count >= n { return }
        b.deallocate()
        let size = max(n, 64 << 10)
        b = .allocate(byteCount: size, alignment: 64)
    }
}
