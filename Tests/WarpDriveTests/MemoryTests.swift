#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
@testable import WarpDrive

@Suite struct MemoryTests {
    @Test func pasidAllocatorUsesTwentyBitsAndReusesFreedIDs() {
        let a = PASIDAllocator()
        var seen = Set<UInt32>()
        for _ in 0..<5000 {
            let p = a.allocate()!
            #expect(p >= 1 && p <= PASIDAllocator.maxPASID)
            #expect(seen.insert(p).inserted)
        }
        let small = PASIDAllocator(limit: 3)
        let ids = [small.allocate(), small.allocate(), small.allocate()]
        #expect(Set(ids.compactMap { $0 }) == [1, 2, 3])
        #expect(small.allocate() == nil)
        small.free(2)
        #expect(small.allocate() == 2)
    }

    @Test func oneProcessOnePASIDFreedWithTheLastBinding() throws {
        let iommu = IOMMU()
        let b1 = try iommu.bind()
        let b2 = try iommu.bind()
        #expect(b1.pasid == b2.pasid)
        #expect(iommu.boundProcess(pasid: b1.pasid) == getpid())
        b1.unbind()
        #expect(iommu.boundProcess(pasid: b2.pasid) == getpid())
        b2.unbind()
        #expect(iommu.boundProcess(pasid: b2.pasid) == nil)
        #expect(iommu.pasids.allocatedCount == 0)
    }

    @Test func releasingAQueueUnbindsItsAddressSpace() throws {
        try withDevice { device in
            let q = try Queue.started(device: device, direction: .compress)
            let pasid = q.pasid
            #expect(device.iommu.boundProcess(pasid: pasid) == getpid())
            q.release()
            #expect(device.iommu.boundProcess(pasid: pasid) == nil)
        }
    }

    /// Submits one raw deflate request on `q` and returns the reaped request.
    func roundTrip(_ q: WarpDrive.Queue, source: UInt64, length: Int, destination: UInt64, capacity: Int) throws -> PendingRequest {
        #expect(try q.trySubmit(PendingRequest(), source: source, sourceLength: length, destination: destination,
                                destinationCapacity: capacity, type: .deflate, level: 1, window: .size32K))
        var got: PendingRequest?
        let deadline = wd_now_ns() + 10_000_000_000
        try q.wait(until: { got != nil }, deadline: deadline, timeoutMilliseconds: 10_000, mode: .interrupt) { got = $0 }
        return got!
    }

    @Test func unmappedAddressIsAPageFaultAndTheQueueKeepsServing() throws {
        try withDevice { device in
            let q = try Queue.started(device: device, direction: .compress)
            defer { q.release() }
            // Address space reserved without access (PROT_NONE): no page can be
            // reached there, and no other thread's mmap can take the range meanwhile.
            let page = mmap(nil, 65536, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)!
            defer { munmap(page, 65536) }
            let gone = UInt64(UInt(bitPattern: page))
            var out = [UInt8](repeating: 0, count: 4096)
            let data = TestData.text(3000)
            try out.withUnsafeMutableBytes { d in
                let dst = UInt64(UInt(bitPattern: d.baseAddress))
                let r = try roundTrip(q, source: gone, length: 3000, destination: dst, capacity: d.count)
                #expect(r.status == CompletionStatus.pageFault)
                #expect(r.faultAddress == gone)
                // Destination unmapped: fault too, and nothing written anywhere else.
                try data.withUnsafeBytes { s in
                    let src = UInt64(UInt(bitPattern: s.baseAddress))
                    let r2 = try roundTrip(q, source: src, length: s.count, destination: gone, capacity: 4096)
                    #expect(r2.status == CompletionStatus.pageFault)
                    // The next good request is served.
                    let r3 = try roundTrip(q, source: src, length: s.count, destination: dst, capacity: d.count)
                    #expect(r3.status == CompletionStatus.ok)
                    #expect(Zlib.decompress(Array(d[0..<r3.produced]), .deflate, capacity: data.count) == data)
                }
            }
            #expect(q.counters.errors == 2)
        }
    }

    @Test func aQueueBoundToAnotherProcessNeverReachesOurMemory() throws {
        try withDevice { device in
            let child = try ChildProcess()
            let q = try Queue(device: device, pid: child.pid)
            try q.map(.mmio); try q.map(.dus); try q.setContext(.compress); try q.start()
            defer { q.release() }
            #expect(device.iommu.boundProcess(pasid: q.pasid) == child.pid)
            let secret = TestData.text(8192)
            var out = [UInt8](repeating: 0xAA, count: 16384)
            try secret.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { d in
                    let src = UInt64(UInt(bitPattern: s.baseAddress)), dst = UInt64(UInt(bitPattern: d.baseAddress))
                    try #require(!child.maps(src) && !child.maps(dst), "the child happens to map our buffers' addresses")
                    let r = try roundTrip(q, source: src, length: s.count, destination: dst, capacity: d.count)
                    #expect(r.status == CompletionStatus.pageFault)
                    #expect(r.faultAddress == src)
                }
            }
            #expect(out.allSatisfy { $0 == 0xAA })  // nothing was written into our memory
        }
    }

    /// Clients take turns on the engines, not queues: a process with four
    /// full queues and one with a single queue get alternate requests. With
    /// one engine and every request queued before the device answers, the
    /// one-queue client's tenth request completes after about ten of the
    /// other's: once sixteen of those are seen completed, all ten are
    /// (round robin over queues would have served about four). Counting
    /// the other way round, the four-queue client's completions when the
    /// tenth is seen, measured how late this thread woke under load.
    @Test func clientsTakeTurnsWhateverTheirQueueCount() throws {
        try withDevice(EmulatedDeviceConfiguration(engines: 1)) { device in
            let child = try ChildProcess()
            device.faults.stopAnswering = true
            let heavy = try (0..<4).map { _ in try Queue.started(device: device, direction: .compress) }
            defer { heavy.forEach { $0.release() } }
            let light = try Queue(device: device, pid: child.pid)
            try light.map(.mmio); try light.map(.dus); try light.setContext(.compress); try light.start()
            defer { light.release() }
            let data = TestData.text(256 << 10)
            var out = [UInt8](repeating: 0, count: 40 * (300 << 10))
            try data.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { d in
                    let src = UInt64(UInt(bitPattern: s.baseAddress))
                    for (qi, q) in heavy.enumerated() {
                        for r in 0..<10 {
                            let dst = UInt64(UInt(bitPattern: d.baseAddress)) + UInt64((qi * 10 + r) * (300 << 10))
                            #expect(try q.trySubmit(PendingRequest(), source: src, sourceLength: s.count, destination: dst,
                                                    destinationCapacity: 300 << 10, type: .deflate, level: 1, window: .size32K))
                        }
                    }
                    // The light client's requests name addresses its process does not map: each faults at once.
                    let nowhere: UInt64 = 0x10
                    for _ in 0..<10 {
                        #expect(try light.trySubmit(PendingRequest(), source: nowhere, sourceLength: 4096, destination: nowhere,
                                                    destinationCapacity: 4096, type: .deflate, level: 1, window: .size32K))
                    }
                    device.faults.stopAnswering = false
                    var done = [0, 0, 0, 0]
                    let deadline = wd_now_ns() + 30_000_000_000
                    while done.reduce(0, +) < 16 && wd_now_ns() < deadline {
                        for (i, q) in heavy.enumerated() { done[i] += q.reap { _ in } }
                        usleep(500)
                    }
                    let lightDone = light.reap { _ in }
                    let heavyDone = done.reduce(0, +)
                    #expect(heavyDone >= 16, "the device served \(heavyDone) of the four-queue client's requests in 30 s")
                    #expect(lightDone == 10, "\(lightDone) of the one-queue client's ten requests had completed when \(heavyDone) of the four-queue client's had")
                    // Drain before the buffers go away.
                    for (i, q) in heavy.enumerated() where done[i] < 10 {
                        try q.wait(until: { done[i] >= 10 }, deadline: wd_now_ns() + 30_000_000_000, timeoutMilliseconds: 30_000,
                                   mode: .interrupt) { _ in done[i] += 1 }
                    }
                }
            }
        }
    }

    @Test func registeredPoolBuffersAreReachedDirectly() throws {
        try withDevice { device in
            let c = try session(device, .zlib, .compress, level: 1)
            defer { c.close() }
            let binding = try device.iommu.bind()
            defer { binding.unbind() }
            let pool = try SharedBufferPool(binding: binding, bufferSize: 128 << 10, count: 4)
            let src = pool.buffer(pool.take()!), dst = pool.buffer(pool.take()!)
            let data = TestData.mixed(100_000)
            data.withUnsafeBytes { src.copyMemory(from: $0) }
            let n = try c.process(UnsafeRawBufferPointer(rebasing: src[0..<data.count]), into: dst)
            #expect(Zlib.decompress(Array(dst[0..<n]), .zlib, capacity: data.count) == data)
            // Route check: the device uses its own mapping of the pool, not a process copy.
            if case .direct = device.iommu.route(pasid: binding.pasid, address: UInt64(UInt(bitPattern: src.baseAddress)), length: data.count) {
            } else {
                Issue.record("pool buffer was not routed directly")
            }
            // A range running off the end of the pool is not direct.
            let end = UInt64(UInt(bitPattern: pool.buffer(3).baseAddress)) + UInt64(pool.bufferSize)
            if case .direct = device.iommu.route(pasid: binding.pasid, address: end - 10, length: 4096) {
                Issue.record("out-of-bounds range was routed into the pool")
            }
        }
    }
}
