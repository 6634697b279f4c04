#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
@testable import WarpDrive

@Suite struct FaultTests {
    @Test func engineErrorsAreReportedAndCounted() throws {
        try withDevice { device in
            let c = try session(device, .zlib, .compress)
            defer { c.close() }
            let data = TestData.text(2000)
            device.faults.engineErrorRate = 1
            #expect {
                _ = try c.compress(data)
            } throws: { e in
                if case WarpDriveError.engineError = e { return true }
                return false
            }
            device.faults.engineErrorRate = 0.3
            device.faults.seed(42)
            var errors = 0
            for _ in 0..<200 {
                do { #expect(try c.compress(data) == Zlib.compress(data, .zlib, level: 6)) } catch { errors += 1 }
            }
            #expect(errors > 20 && errors < 120)
            #expect(c.currentQueues[0].counters.errors == UInt64(errors + 1))
            device.faults.engineErrorRate = 0
            #expect(try c.compress(data) == Zlib.compress(data, .zlib, level: 6))
        }
    }

    @Test func resetFailsInFlightRequestsAndNewQueuesWork() throws {
        try withDevice { device in
            let results = Mutex<[Result<Int, WarpDriveError>]>([])
            let c = try session(device, .zlib, .compress) { _, r in results.withLock { $0.append(r) } }
            defer { c.close() }
            let data = TestData.text(2000)
            var out = [UInt8](repeating: 0, count: 4 * 4096)
            device.faults.stopAnswering = true
            try data.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { d in
                    for i in 0..<4 {
                        try c.submit(s, into: UnsafeMutableRawBufferPointer(rebasing: d[i * 4096 ..< (i + 1) * 4096]), tag: UInt64(i))
                    }
                }
            }
            let oldQueue = c.currentQueues[0]
            device.reset()
            device.faults.stopAnswering = false
            try c.poll(minimum: 4)
            let rs = results.withLock { $0 }
            #expect(rs.count == 4)
            for r in rs { #expect(r == .failure(.deviceReset(device: device.name, queue: oldQueue.number))) }
            // The session replaces the dead queue; the device serves it.
            #expect(try c.compress(data) == Zlib.compress(data, .zlib, level: 6))
            #expect(c.currentQueues[0] !== oldQueue)
        }
    }

    @Test func resetSeenAtTheNextSubmission() throws {
        try withDevice { device in
            let c = try session(device, .deflate, .compress)
            defer { c.close() }
            let data = TestData.text(500)
            _ = try c.compress(data)
            device.reset()
            #expect(throws: WarpDriveError.self) { _ = try c.compress(data) }
            #expect(try c.compress(data) == Zlib.compress(data, .deflate, level: 6))
        }
    }

    @Test func aDeviceThatStopsAnsweringTimesOutInsteadOfHanging() throws {
        try withDevice { device in
            let c = try session(device, .zlib, .compress, timeoutMs: 300)
            defer { c.close() }
            let data = TestData.text(3000)
            device.faults.stopAnswering = true
            let t0 = wd_now_ns()
            #expect {
                _ = try c.compress(data)
            } throws: { e in
                if case WarpDriveError.timedOut(_, _, 300) = e { return true }
                return false
            }
            let waited = (wd_now_ns() - t0) / 1_000_000
            #expect(waited >= 300)
            device.faults.stopAnswering = false
            #expect(try c.compress(data) == Zlib.compress(data, .zlib, level: 6))
        }
    }

    @Test func isolationAfterTheErrorThreshold() throws {
        var cfg = EmulatedDeviceConfiguration(engines: 1)
        cfg.isolateThreshold = 3
        try withDevice(cfg) { device in
            let registry = DeviceRegistry(emulated: [device], sysfsRoot: "/nonexistent")
            let chosen = try registry.device(for: .zlib)
            #expect(chosen === device)
            let c = try session(device, .zlib, .compress)
            defer { c.close() }
            device.faults.engineErrorRate = 1
            for _ in 0..<3 { _ = try? c.compress([1, 2, 3]) }
            #expect(device.isIsolated)
            #expect(device.attributes.isolated)
            #expect(throws: WarpDriveError.self) { _ = try registry.device(for: .zlib) }
            #expect(throws: WarpDriveError.deviceIsolated(device: device.name)) { _ = try Queue(device: device) }
            #expect(throws: WarpDriveError.self) { _ = try c.compress([1, 2, 3]) }
            device.faults.engineErrorRate = 0
            device.reset()
            #expect(!device.isIsolated)
            #expect(try c.compress([1, 2, 3]) == Zlib.compress([1, 2, 3], .zlib, level: 6))
        }
    }

    @Test func instancesRunOutAndComeBack() throws {
        var cfg = EmulatedDeviceConfiguration(engines: 1)
        cfg.queues = 3
        try withDevice(cfg) { device in
            #expect(device.attributes.availableInstances == 3)
            var open = try (0..<3).map { _ in try Queue.started(device: device, direction: .compress) }
            #expect(device.attributes.availableInstances == 0)
            #expect(throws: WarpDriveError.busy(device: device.name)) { _ = try Queue(device: device) }
            #expect(device.totals.busyRejections == 1)
            open.removeLast().release()
            #expect(device.attributes.availableInstances == 1)
            let again = try Queue.started(device: device, direction: .decompress)
            #expect(device.attributes.availableInstances == 0)
            again.release()
            for q in open { q.release() }
            #expect(device.attributes.availableInstances == 3)
        }
    }
}
