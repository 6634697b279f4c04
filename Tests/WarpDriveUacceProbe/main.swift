#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import WarpDrive

// warpdrive-uacce-probe [NAME] [--faults MODULE.ko]: drives a warpdrive_zip uacce device (default:
// the one DeviceRegistry picks) through UacceDevice and CompressionSession:
// deflate, zlib and gzip round trips of buffers outside the data area
// (copied through it), many requests in flight, a buffer too large for the
// data area. Prints "ok - ..." / "not ok - ..." and a last line
// "UACCE_PROBE PASS" or "UACCE_PROBE FAIL (n failed)". Exit 0 on PASS.

nonisolated(unsafe) var failures = 0
func check(_ ok: Bool, _ what: String) {
    print("\(ok ? "ok" : "not ok") - \(what)")
    fflush(nil)
    if !ok { failures += 1 }
}
func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}

/// Text-like bytes that compress, different per seed.
func sample(_ n: Int, seed: Int) -> [UInt8] {
    let words = ["warp", "drive", "queue", "ring", "doorbell", "uacce", "deflate", "page", "fault", "phase"]
    var out: [UInt8] = []
    out.reserveCapacity(n + 16)
    var x = UInt64(seed &* 2654435761 &+ 1)
    while out.count < n {
        x = x &* 6364136223846793005 &+ 1442695040888963407
        out += Array(words[Int(x >> 33) % words.count].utf8)
        out.append(x & 0x100 == 0 ? 32 : 10)
    }
    return Array(out.prefix(n))
}

let t0 = now()
let device: UacceDevice
do {
    // Arguments: [NAME] [--faults MODULE.ko], in any order.
    var names: [String] = []
    var rest = CommandLine.arguments.dropFirst()
    while let a = rest.popFirst() {
        if a == "--faults" { _ = rest.popFirst() } else { names.append(a) }
    }
    if let name = names.first {
        device = try UacceDevice(name: name)
    } else {
        let chosen = try DeviceRegistry(emulated: []).device(for: .gzip)
        guard let d = chosen as? UacceDevice else { throw WarpDriveError.noDevice("registry picked \(chosen.name)") }
        device = d
    }
} catch {
    print("not ok - no uacce device: \(error)")
    print("UACCE_PROBE FAIL (no device)")
    exit(1)
}
check(device.attributes.api == DeviceAttributes.apiWarpDriveZip && !device.attributes.supportsSVA,
      "DeviceRegistry picked \(device.name) (api \(device.attributes.api), flags \(device.attributes.flags))")
let instances = device.currentAttributes.availableInstances ?? -1

for algorithm in [CompressionAlgorithm.deflate, .zlib, .gzip] {
    do {
        let c = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: algorithm, direction: .compress))
        let d = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: algorithm, direction: .decompress))
        defer { c.close(); d.close() }
        for (size, seed) in [(0, 1), (1, 2), (4096, 3), (65536, 4), (1 << 20, 5)] {
            let data = sample(size, seed: seed)
            let z = try c.compress(data)
            let back = try d.decompress(z, capacity: size)
            check(back == data && (size < 4096 || z.count < size),
                  "\(algorithm) \(size) bytes -> \(z.count) -> \(back.count), same bytes")
        }
    } catch {
        check(false, "\(algorithm) round trip: \(error)")
    }
}

// Asynchronous: many requests in flight on one queue, buffers outside the
// data area, the data area shared by all of them.
do {
    let n = 300
    let inputs = (0..<n).map { sample(8192 + $0 * 7, seed: 100 + $0) }
    let bound = CompressionAlgorithm.zlib.compressBound(8192 + n * 7)
    let outs = UnsafeMutableRawPointer.allocate(byteCount: n * bound, alignment: 64)
    defer { outs.deallocate() }
    final class Results: @unchecked Sendable { var sizes: [Int?]; init(_ n: Int) { sizes = Array(repeating: nil, count: n) } }
    let results = Results(n)
    let c = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .zlib, direction: .compress)) { tag, r in
        results.sizes[Int(tag)] = try? r.get()
    }
    let d = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .zlib, direction: .decompress))
    defer { c.close(); d.close() }
    for i in 0..<n {
        try inputs[i].withUnsafeBytes { s in
            try c.submit(s, into: UnsafeMutableRawBufferPointer(start: outs + i * bound, count: bound), tag: UInt64(i))
        }
    }
    while c.outstanding > 0 { try c.poll(minimum: 1) }
    var same = 0
    for i in 0..<n {
        guard let size = results.sizes[i] else { continue }
        let z = Array(UnsafeRawBufferPointer(start: outs + i * bound, count: size))
        if (try? d.decompress(z, capacity: inputs[i].count)) == inputs[i] { same += 1 }
    }
    check(same == n, "\(n) asynchronous zlib requests in flight: \(same) round trips with the same bytes")
} catch {
    check(false, "asynchronous requests: \(error)")
}

// A request that cannot fit the data area is refused, not stuck.
do {
    let c = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .deflate, direction: .compress))
    defer { c.close() }
    let big = sample(min(ZipSQE.maxRequestBytes, max(device.attributes.regionDUSSize ?? 0, 1 << 20)), seed: 9)
    do {
        _ = try c.compress(big)
        check(false, "\(big.count) bytes (more than the data area) are refused")
    } catch WarpDriveError.requestTooLarge {
        check(true, "\(big.count) bytes (more than the data area) are refused with requestTooLarge")
    }
} catch {
    check(false, "the large request: \(error)")
}

check(device.currentAttributes.availableInstances == instances, "every instance is back (\(instances))")

// Faults from the kernel, seen through the backend as the emulator's are
// (`--faults MODULE.ko`: the module file, to load again after its removal).
if let i = CommandLine.arguments.firstIndex(of: "--faults"), i + 1 < CommandLine.arguments.count {
    faultChecks(device, module: CommandLine.arguments[i + 1])
}

print("uacce probe took \(Int((now() - t0) * 1000)) ms")
print(failures == 0 ? "UACCE_PROBE PASS" : "UACCE_PROBE FAIL (\(failures) failed)")
exit(failures == 0 ? 0 : 1)

/// Writes `value` to the sysfs file `path`; true when it took it.
func writeSysfs(_ path: String, _ value: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return value.withCString { write(fd, $0, strlen($0)) } == value.utf8.count
}

/// Runs a program and returns its exit status (-1 if it did not start).
func run(_ argv: [String]) -> Int32 {
    var pid: pid_t = 0
    var cargs = argv.map { strdup($0) } + [nil]
    defer { for a in cargs { free(a) } }
    guard posix_spawnp(&pid, argv[0], nil, nil, &cargs, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

func faultChecks(_ device: UacceDevice, module: String) {
    let data = sample(65536, seed: 77)
    let badAddress = "/sys/module/warpdrive_zip/parameters/bad_address_requests"
    let reset = device.sysfsPath + "/device/reset"

    // A request with a bad address: a page fault naming it, as the
    // emulator's IOMMU reports one; the queue keeps serving.
    do {
        let c = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .deflate, direction: .compress))
        defer { c.close() }
        _ = try c.compress(data)
        check(writeSysfs(badAddress, "1"), "bad_address_requests takes 1")
        do {
            _ = try c.compress(data)
            check(false, "a request with a bad address fails")
        } catch let WarpDriveError.pageFault(pasid, address) {
            let dus = UInt64(device.currentAttributes.regionDUSSize ?? 0)
            check(pasid == 0 && address >= dus, "a request with a bad address is pageFault(pasid 0, 0x\(String(address, radix: 16)))")
        }
        check(try c.compress(data).count > 0 && c.currentQueues.allSatisfy { !$0.hasFailed },
              "the same queue serves the next request")
    } catch {
        check(false, "bad address: \(error)")
    }

    // A reset with requests in flight: each fails with deviceReset (or had
    // completed before it); the session's next request gets a new queue.
    do {
        final class Outcomes: Sendable {
            let list = Mutex<[Result<Int, WarpDriveError>]>([])
        }
        let outcomes = Outcomes()
        let c = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .zlib, direction: .compress, level: 9)) { _, r in
            outcomes.list.withLock { $0.append(r) }
        }
        let d = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .zlib, direction: .decompress))
        defer { c.close(); d.close() }
        // 256 KiB each: the 4 MiB data area holds about seven with their
        // outputs, so a handful are in flight when the reset comes.
        let big = sample(256 << 10, seed: 78)
        let bound = CompressionAlgorithm.zlib.compressBound(big.count)
        let n = 24
        let outs = UnsafeMutableRawPointer.allocate(byteCount: n * bound, alignment: 64)
        defer { outs.deallocate() }
        let before = c.currentQueues[0]
        for i in 0..<n {
            try big.withUnsafeBytes { s in
                try c.submit(s, into: UnsafeMutableRawBufferPointer(start: outs + i * bound, count: bound), tag: UInt64(i))
            }
        }
        let inFlight = c.currentQueues[0].inFlight
        check(writeSysfs(reset, "1"), "reset written with \(inFlight) of \(n) requests of 256 KiB in flight")
        let t = now()
        while c.outstanding > 0 { _ = try? c.poll(minimum: 1) }
        let list = outcomes.list.withLock { $0 }
        let resets = list.filter { $0 == .failure(.deviceReset(device: device.name, queue: before.number)) }.count
        let done = list.filter { if case .success = $0 { return true } else { return false } }.count
        check(list.count == n && resets + done == n && resets > 0,
              "every request ends: \(done) completed, \(resets) failed with deviceReset, in \(Int((now() - t) * 1000)) ms")
        let z = try c.compress(data)
        check(c.currentQueues[0] !== before, "the session's next request gets a new queue")
        // d's queue, started and idle, was fenced too: it says so at its
        // next submission, and d's request after that gets a new queue.
        do {
            _ = try d.decompress(z, capacity: data.count)
            check(false, "an idle queue fenced by the reset reports it")
        } catch WarpDriveError.deviceReset {
            check(true, "an idle queue fenced by the reset reports deviceReset at its next submission")
        }
        check(try d.decompress(z, capacity: data.count) == data, "then that session round-trips on a new queue")
    } catch {
        check(false, "reset: \(error)")
    }

    // The device removed under an open, started queue: the backend's
    // mappings are revoked (a SIGBUS the client survives), requests fail
    // with deviceRemoved, no new queue opens; loading the module again,
    // the same session works.
    do {
        let c = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .gzip, direction: .compress))
        let d = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .gzip, direction: .decompress))
        defer { c.close(); d.close() }
        _ = try c.compress(data)
        check(run(["rmmod", "warpdrive_zip"]) == 0, "rmmod warpdrive_zip with two queues open and mapped")
        let t = now()
        do {
            _ = try c.compress(data)
            check(false, "a request after the removal fails")
        } catch WarpDriveError.deviceRemoved(let name) {
            check(name == device.name, "a request after the removal fails with deviceRemoved, in \(Int((now() - t) * 1000)) ms")
        }
        do {
            _ = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: .gzip, direction: .compress))
            check(false, "no queue opens on the removed device")
        } catch WarpDriveError.deviceRemoved {
            check(true, "a new session on the removed device fails with deviceRemoved")
        }
        do {
            _ = try c.compress(data)
            check(false, "the failed session fails again")
        } catch WarpDriveError.deviceRemoved {
            check(true, "so does the next request of the failed session")
        }
        check(run(["insmod", module]) == 0, "insmod \(module) again")
        let z = try c.compress(data)
        check(true, "the failed session opens a new queue on the device loaded again")
        // d's queue, idle through the removal, learns of it at its next
        // submission (as a queue learns of a reset), then d opens a new one.
        do {
            _ = try d.decompress(z, capacity: data.count)
            check(false, "a queue left from before the removal reports it")
        } catch WarpDriveError.deviceRemoved {
            check(true, "a queue left from before the removal reports deviceRemoved at its next submission")
        }
        check(try d.decompress(z, capacity: data.count) == data, "then that session round-trips on a new queue")
    } catch {
        check(false, "removal: \(error)")
    }
}
