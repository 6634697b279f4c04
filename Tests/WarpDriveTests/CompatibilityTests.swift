import CWarpSys
import Testing
@testable import WarpDrive

/// Output through the queue is byte-for-byte zlib's with the zlib engine,
/// and zlib's streams decompress through it, with either deflate engine.
@Suite struct CompatibilityTests {
    /// The reference device: zlib compresses and decompresses.
    static var zlibEngine: EmulatedDeviceConfiguration {
        var c = EmulatedDeviceConfiguration(engines: 2)
        c.deflateEngine = .zlib
        return c
    }

    static let inputs: [(String, [UInt8])] = [
        ("empty", []),
        ("one byte", [0x41]),
        ("tiny", Array("hello, accelerator".utf8)),
        ("incompressible 256 KiB", TestData.random(256 << 10, seed: 7)),
        ("zeros 1 MiB", [UInt8](repeating: 0, count: 1 << 20)),
        ("text 300 KiB", TestData.text(300 << 10)),
        ("mixed 1 MiB", TestData.mixed(1 << 20)),
    ]

    @Test(arguments: Zlib.algorithms)
    func compressedBytesEqualZlib(_ a: CompressionAlgorithm) throws {
        try withDevice(Self.zlibEngine) { device in
            for level in [0, 1, 6, 9] {
                let s = try session(device, a, .compress, level: level)
                defer { s.close() }
                for (name, data) in Self.inputs {
                    let ours = try s.compress(data)
                    let reference = Zlib.compress(data, a, level: level)
                    #expect(ours == reference, "\(a) level \(level) \(name): \(ours.count) vs zlib \(reference.count) bytes")
                    #expect(Zlib.decompress(ours, a, capacity: data.count) == data, "\(a) \(name): zlib cannot inflate it")
                }
            }
        }
    }

    @Test(arguments: Zlib.algorithms, DeflateEngine.allCases)
    func decompressesZlibStreams(_ a: CompressionAlgorithm, _ engine: DeflateEngine) throws {
        var c = EmulatedDeviceConfiguration(engines: 2)
        c.deflateEngine = engine
        try withDevice(c) { device in
            let s = try session(device, a, .decompress)
            defer { s.close() }
            for (name, data) in Self.inputs {
                for level in [1, 6, 9] {
                    let stream = Zlib.compress(data, a, level: level)
                    let back = try s.decompress(stream, capacity: data.count)
                    #expect(back == data, "\(a) \(name) level \(level)")
                }
            }
        }
    }

    @Test func maximumSizeRequest() throws {
        try withDevice(Self.zlibEngine) { device in
            let data = TestData.mixed(ZipSQE.maxRequestBytes, seed: 11)
            let c = try session(device, .zlib, .compress, level: 1)
            let d = try session(device, .zlib, .decompress)
            defer { c.close(); d.close() }
            let stream = try c.compress(data)
            #expect(stream == Zlib.compress(data, .zlib, level: 1))
            #expect(try d.decompress(stream, capacity: data.count) == data)
            // One byte over the limit is refused before it reaches the device.
            #expect(throws: WarpDriveError.requestTooLarge(bytes: data.count + 1, limit: ZipSQE.maxRequestBytes)) {
                _ = try c.compress(data + [0])
            }
        }
    }

    @Test func gzipWithOptionalHeaderFields() throws {
        try withDevice { device in
            let data = TestData.text(10_000)
            var stream = Zlib.compress(data, .gzip, level: 6)
            // Add FNAME and FCOMMENT as gzip(1) writes them.
            stream[3] = 8 | 16
            stream.insert(contentsOf: Array("file.txt\0a comment\0".utf8), at: 10)
            let s = try session(device, .gzip, .decompress)
            defer { s.close() }
            #expect(try s.decompress(stream, capacity: data.count) == data)
        }
    }

    @Test func destinationTooSmall() throws {
        try withDevice { device in
            let data = TestData.random(64 << 10)
            let c = try session(device, .zlib, .compress)
            defer { c.close() }
            var small = [UInt8](repeating: 0, count: 1024)
            #expect(throws: WarpDriveError.destinationTooSmall(capacity: 1024)) {
                _ = try data.withUnsafeBytes { s in try small.withUnsafeMutableBytes { try c.process(s, into: $0) } }
            }
            let d = try session(device, .zlib, .decompress)
            defer { d.close() }
            #expect(throws: WarpDriveError.destinationTooSmall(capacity: 1000)) {
                _ = try d.decompress(Zlib.compress(data, .zlib, level: 1), capacity: 1000)
            }
            // The queue keeps serving after a failed request.
            #expect(try d.decompress(Zlib.compress(data, .zlib, level: 1), capacity: data.count) == data)
        }
    }

    @Test func corruptStreamsAreErrorsNotGarbage() throws {
        try withDevice { device in
            let data = TestData.text(50_000)
            let good = Zlib.compress(data, .zlib, level: 6)
            let d = try session(device, .zlib, .decompress)
            defer { d.close() }
            var badTrailer = good
            badTrailer[badTrailer.count - 1] ^= 1
            #expect {
                _ = try d.decompress(badTrailer, capacity: data.count)
            } throws: { e in
                if case WarpDriveError.checksumMismatch = e { return true }
                return false
            }
            var badBody = good
            badBody[40] ^= 0xff
            #expect(throws: WarpDriveError.self) { _ = try d.decompress(badBody, capacity: data.count) }
            let truncated = Array(good.prefix(good.count / 2))
            #expect(throws: WarpDriveError.self) { _ = try d.decompress(truncated, capacity: data.count) }
            #expect(throws: WarpDriveError.self) { _ = try d.decompress([0x78, 0x9c], capacity: 10) }
            #expect(try d.decompress(good, capacity: data.count) == data)
        }
    }
}
