// warpdrive-load: keeps a device busy compressing the 64 KiB blocks of a
// file with K requests in flight for S seconds, then prints the bytes done
// and the time taken. Several of these on one `warpdrived` measure what the
// daemon serves to that many client processes (scripts/measure-daemon).
//
//   warpdrive-load [--device SOCKET] [--seconds S] [--inflight K] FILE
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import WarpDrive

func fail(_ message: String) -> Never {
    var line = "warpdrive-load: " + message + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(1)
}

var socketPath: String?
var seconds = 3.0
var inflight = 16
var path: String?
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--device":
        guard let v = args.popFirst() else { fail("--device needs a socket path") }
        socketPath = v
    case "--seconds":
        guard let v = args.popFirst().flatMap(Double.init), v > 0 else { fail("--seconds needs a positive number") }
        seconds = v
    case "--inflight":
        guard let v = args.popFirst().flatMap(Int.init), v > 0 else { fail("--inflight needs a positive number") }
        inflight = v
    default: path = a
    }
}
guard let path else { fail("usage: warpdrive-load [--device SOCKET] [--seconds S] [--inflight K] FILE") }
let fd = open(path, O_RDONLY)
guard fd >= 0 else { fail("cannot open \(path)") }
let block = 64 << 10
var data = [UInt8](repeating: 0, count: 8 << 20)
let got = data.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
close(fd)
guard got >= block else { fail("\(path) has less than one block") }
let blocks = got / block

do {
    let device: any AcceleratorDevice
    if let socketPath {
        device = try RemoteDevice(socket: socketPath)
    } else {
        device = EmulatedZipDevice(configuration: EmulatedDeviceConfiguration(engines: 2))
    }
    defer { device.shutdown() }
    final class Done: Sendable { let count = Atomic<Int>(0); let failed = Atomic<Int>(0) }
    let done = Done()
    let session = try CompressionSession(device: device,
                                         configuration: SessionConfiguration(algorithm: .deflate, direction: .compress, level: 1)) { _, r in
        done.count.add(1, ordering: .relaxed)
        if case .failure = r { done.failed.add(1, ordering: .relaxed) }
    }
    var out = [UInt8](repeating: 0, count: inflight * (block + 4096))
    let start = wd_now_ns()
    let end = start + UInt64(seconds * 1e9)
    var submitted = 0
    try data.withUnsafeBytes { src in
        try out.withUnsafeMutableBytes { dst in
            while wd_now_ns() < end {
                while submitted - done.count.load(ordering: .relaxed) < inflight {
                    let slot = submitted % inflight, b = submitted % blocks
                    try session.submit(UnsafeRawBufferPointer(rebasing: src[(b * block)..<((b + 1) * block)]),
                                       into: UnsafeMutableRawBufferPointer(rebasing: dst[(slot * (block + 4096))..<((slot + 1) * (block + 4096))]),
                                       tag: UInt64(submitted))
                    submitted += 1
                }
                try session.poll(minimum: 1)
            }
            while done.count.load(ordering: .relaxed) < submitted { try session.poll(minimum: submitted - done.count.load(ordering: .relaxed)) }
        }
    }
    let elapsed = Double(wd_now_ns() - start) / 1e9
    session.close()
    guard done.failed.load(ordering: .relaxed) == 0 else { fail("\(done.failed.load(ordering: .relaxed)) requests failed") }
    print("bytes \(submitted * block) seconds \(elapsed)")
} catch {
    fail("\(error)")
}
