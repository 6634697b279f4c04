#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
@testable import WarpDrive

@Suite struct RingTests {
    @Test func doorbellWordFormat() {
        let d = Doorbell(queueNumber: 0x3ff, command: .cq, index: 0x1234, priority: 7)
        #expect(d.raw == 0x3ff | 1 << 12 | 0x1234 << 32 | 7 << 48)
        #expect(Doorbell(raw: d.raw) == d)
        #expect(Doorbell(queueNumber: 5, command: .sq, index: 9).raw == 5 | 9 << 32)
    }

    @Test func layoutMatchesTheQM() {
        let l = RingLayout(depth: 1024)
        #expect(l.cqOffset == 1024 * 128)
        #expect(l.statusOffset == 1024 * 128 + 1024 * 16)
        #expect(l.dusSize == l.statusOffset + 4096)
        #expect(l.txStopOffset == l.dusSize - 4 && l.rxStopOffset == l.dusSize - 8)
    }

    @Test func wrapsAndFlipsPhaseOverThousandsOfRequests() throws {
        var c = EmulatedDeviceConfiguration(engines: 2, queueDepth: 8)
        c.queues = 4
        try withDevice(c) { device in
            let comp = try session(device, .deflate, .compress, level: 1)
            let dec = try session(device, .deflate, .decompress)
            defer { comp.close(); dec.close() }
            for i in 0..<3000 {
                let data = TestData.text(100 + i % 700, seed: UInt64(i))
                let z = try comp.compress(data)
                #expect(try dec.decompress(z, capacity: data.count) == data)
            }
            let p = comp.currentQueues[0].ringPosition
            // 3000 completions through an 8-entry CQ: the phase flipped 375 times.
            #expect(p.phaseFlips == 3000 / 8)
            #expect(p.sqHead == p.sqTail)
            #expect(comp.currentQueues[0].counters.requests == 3000)
        }
    }

    @Test func asyncKeepsTheSmallRingFullAndCompletesInOrder() throws {
        let c = EmulatedDeviceConfiguration(engines: 2, queueDepth: 8)
        try withDevice(c) { device in
            let order = Mutex<[UInt64]>([])
            let s = try session(device, .zlib, .compress, level: 1) { tag, result in
                if case .success = result { order.withLock { $0.append(tag) } }
            }
            defer { s.close() }
            let data = TestData.mixed(16 << 10)
            var outs = [[UInt8]](repeating: [UInt8](repeating: 0, count: 20 << 10), count: 7)
            let total = 4000
            var next: UInt64 = 0
            try data.withUnsafeBytes { src in
                while next < total || s.outstanding > 0 {
                    while next < total && s.outstanding < 7 {
                        try outs[Int(next % 7)].withUnsafeMutableBytes { try s.submit(src, into: $0, tag: next) }
                        next += 1
                    }
                    try s.poll(minimum: 1)
                }
            }
            let got = order.withLock { $0 }
            #expect(got == Array(0..<UInt64(total)))  // one queue: completions in submission order
            #expect(s.currentQueues[0].ringPosition.phaseFlips == total / 8)
        }
    }

    @Test func fullRingRefusesTheEighthRequestOfEight() throws {
        let c = EmulatedDeviceConfiguration(engines: 1, queueDepth: 8)
        try withDevice(c) { device in
            let done = Atomic<Int>(0)
            let s = try session(device, .zlib, .compress) { _, r in
                if case .success = r { done.add(1, ordering: .relaxed) }
            }
            defer { s.close() }
            device.faults.stopAnswering = true
            let data = TestData.text(1000)
            var out = [UInt8](repeating: 0, count: 7 * 2048)
            try data.withUnsafeBytes { src in
                try out.withUnsafeMutableBytes { dst in
                    for i in 0..<7 {
                        try s.trySubmit(src, into: UnsafeMutableRawBufferPointer(rebasing: dst[i * 2048 ..< (i + 1) * 2048]), tag: UInt64(i))
                    }
                    // One slot is always free: capacity is depth - 1.
                    #expect(throws: WarpDriveError.queueFull(queue: s.currentQueues[0].number)) {
                        try s.trySubmit(src, into: UnsafeMutableRawBufferPointer(rebasing: dst[0..<2048]), tag: 99)
                    }
                }
            }
            #expect(s.currentQueues[0].counters.busyRejections == 1)
            #expect(device.totals.busyRejections == 1)
            device.faults.stopAnswering = false
            try s.poll(minimum: 7)
            #expect(done.load(ordering: .relaxed) == 7)
            let z = Zlib.compress(data, .zlib, level: 6)
            for i in 0..<7 { #expect(Array(out[i * 2048 ..< i * 2048 + z.count]) == z) }
        }
    }

    @Test func stateMachineErrors() throws {
        try withDevice { device in
            let q = try Queue(device: device)
            #expect(q.state == .initialized)
            #expect(throws: WarpDriveError.self) { try q.start() }  // regions not mapped yet
            try q.map(.mmio)
            #expect(throws: WarpDriveError.alreadyMapped(region: "mmio")) { try q.map(.mmio) }
            try q.map(.dus)
            try q.setContext(.decompress)
            try q.start()
            #expect(q.state == .started)
            #expect(throws: WarpDriveError.invalidState(operation: "START_Q", state: "STARTED")) { try q.start() }
            #expect(throws: WarpDriveError.invalidState(operation: "SET_QP_CTX", state: "STARTED")) { try q.setContext(.compress) }
            #expect(throws: WarpDriveError.alreadyMapped(region: "dus")) { try q.map(.dus) }
            q.release()
            #expect(q.state == .released)
            #expect(throws: WarpDriveError.invalidState(operation: "mmap", state: "ZOMBIE")) { try q.map(.mmio) }
            #expect(throws: WarpDriveError.invalidState(operation: "START_Q", state: "ZOMBIE")) { try q.start() }
            q.release()  // idempotent
        }
    }

    @Test func concurrentSubmittersShareASession() throws {
        try withDevice { device in
            let c = try session(device, .gzip, .compress, level: 1, queues: 2)
            let d = try session(device, .gzip, .decompress, queues: 2)
            defer { c.close(); d.close() }
            let failures = Atomic<Int>(0)
            runThreads(4) { t in
                for i in 0..<150 {
                    let data = TestData.mixed(1000 + (t * 977 + i * 131) % 40_000, seed: UInt64(t * 1000 + i))
                    do {
                        let z = try c.compress(data)
                        if try d.decompress(z, capacity: data.count) != data { failures.add(1, ordering: .relaxed) }
                    } catch { failures.add(1, ordering: .relaxed) }
                }
            }
            #expect(failures.load(ordering: .relaxed) == 0)
            #expect(device.totals.requests == 4 * 150 * 2)
        }
    }

    @Test func busyPollingWorksToo() throws {
        try withDevice { device in
            let c = try session(device, .zlib, .compress, mode: .busyPoll)
            defer { c.close() }
            let data = TestData.text(5000)
            for _ in 0..<100 { #expect(try c.compress(data) == Zlib.compress(data, .zlib, level: 6)) }
        }
    }

    @Test func notificationFDBecomesReadable() throws {
        try withDevice { device in
            let q = try Queue.started(device: device, direction: .compress)
            defer { q.release() }
            q.setFDNotification(true)
            #expect(wd_poll_in(q.notificationFD, 0) == 0)
            let data = TestData.text(4000)
            var out = [UInt8](repeating: 0, count: 8000)
            try data.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { d in
                    let ok = try q.trySubmit(PendingRequest(), source: UInt64(UInt(bitPattern: s.baseAddress)), sourceLength: s.count,
                                             destination: UInt64(UInt(bitPattern: d.baseAddress)), destinationCapacity: d.count,
                                             type: .deflate, level: 1, window: .size24K)
                    #expect(ok)
                    #expect(wd_poll_in(q.notificationFD, 5000) == 1)
                }
            }
            var status: CompletionStatus?
            q.reap { status = $0.status }
            #expect(status == CompletionStatus.ok)
        }
    }
}
