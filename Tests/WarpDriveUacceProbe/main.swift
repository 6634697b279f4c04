#if canImport(Glibc)
import Glibc
#endif
import WarpDrive

// warpdrive-uacce-probe [NAME]: drives a warpdrive_zip uacce device (default:
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
    if CommandLine.arguments.count > 1 {
        device = try UacceDevice(name: CommandLine.arguments[1])
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
print("uacce probe took \(Int((now() - t0) * 1000)) ms")
print(failures == 0 ? "UACCE_PROBE PASS" : "UACCE_PROBE FAIL (\(failures) failed)")
exit(failures == 0 ? 0 : 1)
