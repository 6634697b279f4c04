// The "hello world" of the WarpDrive layer: compress a file through an
// accelerator queue, then check the result with stock zlib's own
// `uncompress`. The queue is on the in-process emulated device, or on the
// one `warpdrived` serves when --device names its socket.
//
//   swift run warpdrive-hello [--device SOCKET] [--repeat N] [FILE]
//   (default FILE: this program's binary; --repeat compresses it N times)
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive

func eprint(_ message: String) {
    var m = message + "\n"
    m.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func readFile(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n == 0 { break }
        data += chunk[0..<n]
    }
    return data
}

var socketPath: String?
var repeats = 1
var path = CommandLine.arguments[0]
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--device":
        guard let v = args.popFirst() else { eprint("warpdrive-hello: --device needs a socket path"); exit(2) }
        socketPath = v
    case "--repeat":
        guard let v = args.popFirst(), let n = Int(v), n >= 1 else { eprint("warpdrive-hello: --repeat needs a count >= 1"); exit(2) }
        repeats = n
    default:
        path = a
    }
}

guard var data = readFile(path) else {
    eprint("warpdrive-hello: cannot read \(path): \(String(cString: strerror(errno)))")
    exit(1)
}
if data.count > ZipSQE.maxRequestBytes {
    print("\(path) is \(data.count) bytes; using its first 8 MiB (the device's request limit)")
    data = Array(data.prefix(ZipSQE.maxRequestBytes))
}

do {
    // The device: warpdrived's over its socket, or the one discovery picks (a warpdrive_zip uacce device, else the emulated one).
    let device: any AcceleratorDevice
    if let socketPath {
        let remote = try RemoteDevice(socket: socketPath)
        print("device \(remote.name) served by warpdrived (pid \(remote.daemonPID)) at \(socketPath)")
        device = remote
    } else {
        let registry = DeviceRegistry()
        let chosen = try registry.device(for: .zlib)
        if let a = (chosen as? EmulatedZipDevice)?.attributes ?? (chosen as? UacceDevice)?.currentAttributes {
            print("device \(a.name): api \(a.api), SVA \(a.supportsSVA), algorithms \(a.algorithms.joined(separator: ",")), "
                + "free queues \(a.availableInstances ?? 0)")
        }
        device = chosen
    }
    let session = try CompressionSession(device: device,
                                         configuration: SessionConfiguration(algorithm: .zlib, direction: .compress, level: 6))
    var compressed: [UInt8] = []
    for _ in 0..<repeats { compressed = try session.compress(data) }
    print("queue \(session.currentQueues[0].number) (PASID \(session.currentQueues[0].pasid)): "
        + "\(data.count) bytes -> \(compressed.count) bytes" + (repeats > 1 ? " (\(repeats) times)" : ""))

    // Check with stock zlib.
    var restored = [UInt8](repeating: 0, count: max(data.count, 1))
    var restoredLength = UInt(restored.count)
    let rc = uncompress(&restored, &restoredLength, compressed, UInt(compressed.count))
    guard rc == Z_OK, Int(restoredLength) == data.count, Array(restored.prefix(data.count)) == data else {
        print("MISMATCH: zlib's uncompress gave rc \(rc), \(restoredLength) bytes")
        exit(1)
    }
    var reference = [UInt8](repeating: 0, count: Int(compressBound(UInt(data.count))))
    var referenceLength = UInt(reference.count)
    _ = compress2(&reference, &referenceLength, data, UInt(data.count), 6)
    let identical = Array(reference.prefix(Int(referenceLength))) == compressed
    print("zlib's uncompress restores the input: OK; byte-identical to zlib's compress2: \(identical ? "yes" : "no")")
    print("queue counters: \(session.currentQueues[0].counters)")
    session.close()
    device.shutdown()
} catch {
    eprint("warpdrive-hello: \(error)")
    exit(1)
}
