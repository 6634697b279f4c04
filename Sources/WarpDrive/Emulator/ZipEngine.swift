#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization

/// One engine ("core") of the emulated ZIP device: a thread that claims SQEs,
/// reads the source through the IOMMU, runs the request's codec
/// (`EngineCodecs`: zlib, ISA-L, libdeflate, zstd or lz4), writes the
/// destination and the results back, and posts the CQE.
///
/// Each engine keeps its codec contexts and bounce buffers for its
/// lifetime, so a request allocates nothing.
final class ZipEngine: @unchecked Sendable {
    let index: Int
    unowned(unsafe) let device: EmulatedZipDevice
    let busyNanoseconds = Atomic<UInt64>(0)

    private let codecs: EngineCodecs
    private var inBounce = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var outBounce = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    init(index: Int, device: EmulatedZipDevice) {
        self.index = index
        self.device = device
        codecs = EngineCodecs(deflateEngine: device.configuration.deflateEngine)
    }

    deinit {
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
        } else if let type = sqe.requestType, device.offers(type), let window = sqe.window,
                  q.direction == .decompress || type.levels.contains(sqe.level), inLen <= ZipSQE.maxRequestBytes {
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

        let hasChecksum = type == .zlib || type == .gzip
        if direction == .compress {
            let c = codecs.compress(type, level: level, windowBits: windowBits, input, inLen, output, outCap)
            r.status = c.status; r.consumed = c.consumed; r.produced = c.produced
            if hasChecksum && c.status.isSuccess { r.checksum = codecs.checksum(type, input, inLen) }
            r.isize = UInt32(truncatingIfNeeded: inLen)
        } else {
            let d = codecs.decompress(type, input, inLen, output, outCap)
            r.status = d.status; r.consumed = d.consumed; r.produced = d.produced; r.endOfStream = d.endOfStream
            if hasChecksum && (r.produced > 0 || r.status == .endOfStream) {
                r.checksum = codecs.checksum(type, output, r.produced)
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

    private func ensure(_ b: inout UnsafeMutableRawBufferPointer, _ n: Int) {
        if b.count >= n { return }
        b.deallocate()
        let size = max(n, 64 << 10)
        b = .allocate(byteCount: size, alignment: 64)
    }
}
