#if canImport(Glibc)
import Glibc
#endif
import CWarpCodecs
import CWarpSys
import Synchronization
import Testing
@testable import WarpDrive

/// The device's codecs: every algorithm round trips at its levels, its
/// output is the standard format that the format's own library reads, the
/// device advertises what it serves, and faults reach callers of every codec.
@Suite struct CodecTests {
    static let inputs: [(String, [UInt8])] = [
        ("empty", []),
        ("one byte", [0x41]),
        ("incompressible 64 KiB", TestData.random(64 << 10, seed: 21)),
        ("zeros 256 KiB", [UInt8](repeating: 0, count: 256 << 10)),
        ("text 100 KiB", TestData.text(100 << 10, seed: 22)),
        ("mixed 300 KiB", TestData.mixed(300 << 10, seed: 23)),
    ]

    /// A few levels of each algorithm: its ends and the ones between that change the library or its mode.
    static func someLevels(_ a: CompressionAlgorithm) -> [Int] {
        switch a {
        case .deflate, .zlib, .gzip: [0, 1, 2, 3, 4, 6, 9]
        case .zstd: [1, 3, 9, 19]
        case .lz4: [1, 2, 3, 9, 12]
        }
    }

    static func device(_ engine: DeflateEngine = .isal) -> EmulatedDeviceConfiguration {
        var c = EmulatedDeviceConfiguration(engines: 2)
        c.deflateEngine = engine
        return c
    }

    @Test(arguments: CompressionAlgorithm.allCases)
    func everyLevelRoundTripsAndTheFormatsOwnLibraryReadsIt(_ a: CompressionAlgorithm) throws {
        try withDevice(Self.device()) { device in
            let d = try session(device, a, .decompress)
            defer { d.close() }
            for level in Self.someLevels(a) {
                let c = try session(device, a, .compress, level: level)
                defer { c.close() }
                for (name, data) in Self.inputs {
                    let stream = try c.compress(data)
                    #expect(stream.count <= a.compressBound(data.count), "\(a) \(level) \(name)")
                    #expect(try d.decompress(stream, capacity: data.count) == data, "\(a) level \(level) \(name)")
                    #expect(Reference.decompress(stream, a, capacity: data.count) == data,
                            "\(a) level \(level) \(name): the reference decoder cannot read it")
                }
            }
        }
    }

    /// ISA-L's blocks are standard deflate: stock zlib inflates every one,
    /// and its window limit holds (zlib inflating into a small output buffer
    /// with the window of the header refuses any match from further back).
    @Test(arguments: [CompressionAlgorithm.deflate, .zlib, .gzip])
    func stockZlibInflatesISALBlocksWithinTheirWindow(_ a: CompressionAlgorithm) throws {
        try withDevice(Self.device(.isal)) { device in
            let data = TestData.mixed(200 << 10, seed: 31) + TestData.text(60 << 10, seed: 32)
            for level in 0...9 {
                for bits in 12...15 {
                    var cfg = SessionConfiguration(algorithm: a, direction: .compress, level: level)
                    cfg.windowBits = bits
                    let c = try CompressionSession(device: device, configuration: cfg)
                    defer { c.close() }
                    let stream = try c.compress(data)
                    #expect(Zlib.inflateInChunks(stream, a, windowBits: bits) == data, "\(a) level \(level) window \(bits)")
                }
            }
        }
    }

    @Test func theDefaultEngineIsISALAndTheZlibEngineMatchesZlibAtEveryLevel() throws {
        #expect(EmulatedDeviceConfiguration().deflateEngine == .isal)
        let data = TestData.mixed(100 << 10, seed: 41)
        try withDevice(Self.device(.zlib)) { device in
            for level in 0...9 {
                let c = try session(device, .gzip, .compress, level: level)
                defer { c.close() }
                #expect(try c.compress(data) == Zlib.compress(data, .gzip, level: level), "level \(level)")
            }
        }
        // ISA-L takes levels 1...3 (its own bytes); zlib's bytes elsewhere.
        try withDevice(Self.device(.isal)) { device in
            for level in 0...9 {
                let c = try session(device, .zlib, .compress, level: level)
                defer { c.close() }
                let same = try c.compress(data) == Zlib.compress(data, .zlib, level: level)
                #expect(same == !(1...3).contains(level), "level \(level)")
            }
        }
    }

    @Test func theDeviceAdvertisesItsAlgorithmsAndRefusesOthers() throws {
        try withDevice { device in
            #expect(device.attributes.algorithms == ["deflate", "zlib", "gzip", "zstd", "lz4"])
        }
        var cfg = Self.device()
        cfg.algorithms = [.deflate, .zlib, .gzip]
        try withDevice(cfg) { device in
            #expect(device.attributes.algorithms == ["deflate", "zlib", "gzip"])
            let c = try session(device, .zstd, .compress, level: 3)
            defer { c.close() }
            #expect(throws: WarpDriveError.badRequest(status: CompletionStatus.badRequest.rawValue)) {
                _ = try c.compress(TestData.text(1000))
            }
            let z = try session(device, .zlib, .compress, level: 1)
            defer { z.close() }
            #expect(try Zlib.decompress(z.compress(TestData.text(1000)), .zlib, capacity: 1000) == TestData.text(1000))
        }
    }

    @Test func levelsOutsideAnAlgorithmsRangeAreRefused() throws {
        try withDevice { device in
            for (a, bad) in [(CompressionAlgorithm.zstd, 0), (.zstd, 20), (.lz4, 0), (.lz4, 13), (.gzip, 10)] {
                #expect(throws: WarpDriveError.badRequest(status: 0x01), "\(a) \(bad)") {
                    try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: a, direction: .compress, level: bad))
                }
                // A decompressing session takes any level: it means nothing there.
                let d = try CompressionSession(device: device, configuration: SessionConfiguration(algorithm: a, direction: .decompress, level: bad))
                d.close()
            }
            // The engine checks too: an SQE carrying zstd level 20 is a bad request.
            let q = try Queue.started(device: device, direction: .compress)
            defer { q.release() }
            var src = TestData.text(100), dst = [UInt8](repeating: 0, count: 1024)
            let r = try src.withUnsafeMutableBytes { s in
                try dst.withUnsafeMutableBytes { d in
                    try Hostile.submit(q, type: .zstd, level: 20, s.baseAddress!, s.count, d.baseAddress!, d.count)
                }
            }
            #expect(r.status == .badRequest)
        }
    }

    @Test(arguments: CompressionAlgorithm.allCases)
    func engineErrorsAndResetReachCallersOfEveryCodec(_ a: CompressionAlgorithm) throws {
        try withDevice(Self.device()) { device in
            let level = a.levels.lowerBound + 1
            let c = try session(device, a, .compress, level: level)
            let d = try session(device, a, .decompress)
            defer { c.close(); d.close() }
            let data = TestData.mixed(40_000, seed: 51)
            let good = try c.compress(data)
            device.faults.seed(7)
            device.faults.engineErrorRate = 0.3
            var errors = 0
            for i in 0..<120 {
                do {
                    if i % 2 == 0 {
                        #expect(try d.decompress(c.compress(data), capacity: data.count) == data)
                    } else {
                        #expect(try d.decompress(good, capacity: data.count) == data)
                    }
                } catch let e as WarpDriveError {
                    guard case .engineError = e else { Issue.record("\(a): \(e)"); continue }
                    errors += 1
                }
            }
            #expect(errors > 15 && errors < 100, "\(a): \(errors) engine errors of 120-180 requests")
            device.faults.engineErrorRate = 0
            // Reset with requests in flight: they fail, fresh queues serve.
            device.faults.stopAnswering = true
            let results = Mutex<[Result<Int, WarpDriveError>]>([])
            let async = try session(device, a, .compress, level: level) { _, r in results.withLock { $0.append(r) } }
            defer { async.close() }
            var out = [UInt8](repeating: 0, count: 4 * a.compressBound(data.count))
            let slot = a.compressBound(data.count)
            try data.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { o in
                    for i in 0..<4 {
                        try async.submit(s, into: UnsafeMutableRawBufferPointer(rebasing: o[i * slot ..< (i + 1) * slot]), tag: UInt64(i))
                    }
                }
            }
            device.reset()
            device.faults.stopAnswering = false
            try async.poll(minimum: 4)
            let rs = results.withLock { $0 }
            #expect(rs.count == 4 && rs.allSatisfy { if case .failure(.deviceReset) = $0 { true } else { false } }, "\(a): \(rs)")
            #expect(try Reference.decompress(async.compress(data), a, capacity: data.count) == data)
            // The sessions that were idle see the reset at their next request, then get fresh queues.
            #expect(throws: WarpDriveError.self) { try c.compress(data) }
            #expect(throws: WarpDriveError.self) { try d.decompress(good, capacity: data.count) }
            #expect(try d.decompress(c.compress(data), capacity: data.count) == data)
        }
    }

    // MARK: Hostile input

    /// Every decoder meets truncated streams, bombs (more output than the
    /// destination holds) and garbage: the request completes, with an error
    /// status where the format can tell, never writing past the destination
    /// length (guard bytes after it stay as they were), in bounded time.
    /// Seeded: a failure names the seed and case that reproduce it.
    @Test(arguments: [(CompressionAlgorithm.deflate, DeflateEngine.isal), (.zlib, .isal), (.gzip, .isal),
                      (.deflate, .zlib), (.gzip, .zlib), (.zstd, .isal), (.lz4, .isal)])
    func decodersMeetHostileInput(_ a: CompressionAlgorithm, _ engine: DeflateEngine) throws {
        let seed: UInt64 = 0x5eed_0000 | UInt64(a.requestType.rawValue) << 4 | (engine == .zlib ? 1 : 0)
        var g = SeededGenerator(seed: seed)
        let t0 = wd_now_ns()
        try withDevice(Self.device(engine)) { device in
            let c = try session(device, a, .compress, level: a == .lz4 ? 1 : a.levels.lowerBound + 1)
            let q = try Queue.started(device: device, direction: .decompress)
            defer { c.close(); q.release() }
            let binding = try device.iommu.bind()
            defer { binding.unbind() }
            let pool = try SharedBufferPool(binding: binding, bufferSize: (1 << 20) + 4096, count: 2)
            var cases = 0
            for round in 0..<24 {
                let n = Int(g.next() % UInt64(200 << 10)) + 1
                let data = round % 3 == 0 ? TestData.text(n, seed: g.next()) : TestData.mixed(n, seed: g.next())
                let full = try c.compress(data)
                let body = Hostile.body(full, a)
                func check(_ kind: String, _ input: [UInt8], capacity: Int, mustFail: Bool,
                           sameAs reference: (([UInt8]) -> [UInt8]?)? = nil) throws {
                    for registered in [false, true] {
                        let r = try Hostile.decode(q, a, input, capacity: capacity, pool: registered ? pool : nil)
                        cases += 1
                        let what = "\(a)/\(engine) seed \(seed) round \(round) \(kind) \(registered ? "pool" : "heap") (\(input.count) -> \(capacity))"
                        #expect(r.guardIntact, "\(what): wrote past the destination")
                        #expect(r.produced <= capacity, "\(what): produced \(r.produced)")
                        if mustFail {
                            #expect(!r.status.isSuccess, "\(what): status \(r.status)")
                        } else if r.status.isSuccess, let reference {
                            #expect(reference(input) == r.output, "\(what): decoded other bytes than the reference decoder")
                        }
                    }
                }
                // Truncated. An lz4 block cut at a sequence boundary is itself a
                // valid, shorter block (lz4 carries no size): the caller's size check catches it.
                for cut in [1, 2, Int(g.next() % UInt64(max(1, body.count - 1))) + 1] where cut < body.count {
                    let t = Array(body.prefix(body.count - cut))
                    let r = try Hostile.decode(q, a, t, capacity: data.count, pool: nil)
                    #expect(r.guardIntact, "\(a) seed \(seed) round \(round) truncated by \(cut)")
                    if a == .lz4 {
                        #expect(!r.status.isSuccess || r.produced < data.count, "\(a) seed \(seed) round \(round) truncated by \(cut)")
                    } else {
                        #expect(!r.status.isSuccess, "\(a) seed \(seed) round \(round) truncated by \(cut): status \(r.status)")
                    }
                    try check("truncated", t, capacity: data.count, mustFail: a != .lz4)
                }
                // Bombs: valid streams that decode past the destination length.
                try check("one byte short", body, capacity: data.count - 1, mustFail: true)
                try check("half", body, capacity: data.count / 2, mustFail: true)
                try check("no room", body, capacity: 0, mustFail: data.count > 0)
                // Garbage: random bytes, and the stream with flipped bytes. A
                // deflate or lz4 decoder may find some garbage valid (neither
                // format has redundancy to tell); then it must agree with the
                // format's reference decoder. zstd frames start with a magic number.
                let junk = TestData.random(Int(g.next() % 4096) + 1, seed: g.next())
                let reference = { (x: [UInt8]) in Reference.decompressBody(x, a, capacity: data.count) }
                try check("garbage", junk, capacity: data.count, mustFail: a == .zstd, sameAs: reference)
                var flipped = body
                for _ in 0..<(1 + Int(g.next() % 4)) where !flipped.isEmpty {
                    flipped[Int(g.next() % UInt64(flipped.count))] ^= UInt8(truncatingIfNeeded: g.next() | 1)
                }
                try check("flipped", flipped, capacity: data.count, mustFail: false, sameAs: reference)
            }
            // A bomb proper: 8 MiB of zeros into 64 KiB.
            let zeros = [UInt8](repeating: 0, count: ZipSQE.maxRequestBytes)
            let bomb = Hostile.body(try c.compress(zeros), a)
            try Hostile.decode(q, a, bomb, capacity: 64 << 10, pool: pool).expectError("\(a) 8 MiB bomb")
            try Hostile.decode(q, a, bomb, capacity: 64 << 10, pool: nil).expectError("\(a) 8 MiB bomb, heap")
            #expect(cases > 200)
            #expect(q.counters.errors > 0)
        }
        #expect(wd_now_ns() - t0 < 120_000_000_000, "hostile input took over 2 minutes")
    }
}

/// Raw decode requests for the hostile-input test.
enum Hostile {
    static let guardBytes = 64
    static let guardByte: UInt8 = 0xa5

    struct Outcome {
        var status: CompletionStatus
        var produced: Int
        var output: [UInt8]
        var guardIntact: Bool

        func expectError(_ what: String) {
            #expect(!status.isSuccess, "\(what): status \(status)")
            #expect(guardIntact, "\(what): wrote past the destination")
        }
    }

    /// The device's part of a stream: the deflate body of a zlib or gzip stream, else all of it.
    static func body(_ stream: [UInt8], _ a: CompressionAlgorithm) -> [UInt8] {
        switch a {
        case .zlib: Array(stream[2..<(stream.count - 4)])
        case .gzip: Array(stream[10..<(stream.count - 8)])
        default: stream
        }
    }

    /// One SQE, waited for.
    static func submit(_ q: WarpDrive.Queue, type: ZipSQE.RequestType, level: Int, _ src: UnsafeRawPointer, _ n: Int,
                       _ dst: UnsafeMutableRawPointer, _ cap: Int) throws -> PendingRequest {
        #expect(try q.trySubmit(PendingRequest(), source: UInt64(UInt(bitPattern: src)), sourceLength: n,
                                destination: UInt64(UInt(bitPattern: dst)), destinationCapacity: cap,
                                type: type, level: level, window: .size32K))
        var got: PendingRequest?
        try q.wait(until: { got != nil }, deadline: wd_now_ns() + 30_000_000_000, timeoutMilliseconds: 30_000, mode: .interrupt) { got = $0 }
        return got!
    }

    /// Decodes `input` into a destination of `capacity` bytes followed by
    /// guard bytes: in heap memory (the device copies through the process)
    /// or in a registered pool (the device writes directly).
    static func decode(_ q: WarpDrive.Queue, _ a: CompressionAlgorithm, _ input: [UInt8], capacity: Int,
                       pool: SharedBufferPool?) throws -> Outcome {
        let level = a.levels.lowerBound
        if let pool {
            let src = pool.buffer(0), dst = pool.buffer(1)
            precondition(input.count <= src.count && capacity + guardBytes <= dst.count)
            input.withUnsafeBytes { src.copyMemory(from: $0) }
            memset(dst.baseAddress!, Int32(guardByte), capacity + guardBytes)
            let r = try submit(q, type: a.requestType, level: level, src.baseAddress!, input.count, dst.baseAddress!, capacity)
            let intact = dst[capacity ..< capacity + guardBytes].allSatisfy { $0 == guardByte }
            return Outcome(status: r.status, produced: r.produced, output: Array(dst[0..<min(r.produced, capacity)]), guardIntact: intact)
        }
        var src = input + [0]  // never empty, so it has an address
        var dst = [UInt8](repeating: guardByte, count: capacity + guardBytes)
        let r = try src.withUnsafeMutableBytes { s in
            try dst.withUnsafeMutableBytes { d in
                try submit(q, type: a.requestType, level: level, s.baseAddress!, input.count, d.baseAddress!, capacity)
            }
        }
        let intact = dst[capacity...].allSatisfy { $0 == guardByte }
        return Outcome(status: r.status, produced: r.produced, output: Array(dst[0..<min(r.produced, capacity)]), guardIntact: intact)
    }
}

/// Each format's own library, called directly: what the device's output must be readable by.
enum Reference {
    /// A whole stream as a session writes it.
    static func decompress(_ stream: [UInt8], _ a: CompressionAlgorithm, capacity: Int) -> [UInt8]? {
        switch a {
        case .deflate, .zlib, .gzip: Zlib.decompress(stream, a, capacity: capacity)
        case .zstd, .lz4: decompressBody(stream, a, capacity: capacity)
        }
    }

    /// The device's part of a stream (raw deflate for the deflate family).
    static func decompressBody(_ body: [UInt8], _ a: CompressionAlgorithm, capacity: Int) -> [UInt8]? {
        if a == .deflate || a == .zlib || a == .gzip { return Zlib.decompress(body, .deflate, capacity: capacity) }
        var out = [UInt8](repeating: 0, count: max(capacity, 1))
        var src = body + [0]  // never empty, so it has an address
        let n: Int? = src.withUnsafeMutableBytes { s in
            out.withUnsafeMutableBytes { d -> Int? in
                if a == .zstd {
                    let r = ZSTD_decompress(d.baseAddress, capacity, s.baseAddress, body.count)
                    return ZSTD_isError(r) != 0 ? nil : r
                }
                let r = LZ4_decompress_safe(s.baseAddress!.assumingMemoryBound(to: CChar.self),
                                            d.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(body.count), Int32(capacity))
                return r < 0 ? nil : Int(r)
            }
        }
        return n.map { Array(out.prefix($0)) }
    }
}

extension Zlib {
    /// Inflates with the window `windowBits` into 512-byte output pieces, so
    /// that every match reaching further back than the window is an error.
    static func inflateInChunks(_ data: [UInt8], _ a: CompressionAlgorithm, windowBits bits: Int) -> [UInt8]? {
        var s = z_stream()
        let wb: Int32 = a == .deflate ? -Int32(bits) : a == .gzip ? Int32(bits) + 16 : Int32(bits)
        precondition(wd_inflate_init2(&s, wb) == Z_OK)
        defer { inflateEnd(&s) }
        var result: [UInt8] = []
        var piece = [UInt8](repeating: 0, count: 512)
        var src = data + [0]
        return src.withUnsafeMutableBytes { srcBuf -> [UInt8]? in
            s.next_in = srcBuf.baseAddress!.assumingMemoryBound(to: UInt8.self)
            s.avail_in = UInt32(data.count)
            while true {
                let (rc, got): (Int32, Int) = piece.withUnsafeMutableBytes { p in
                    s.next_out = p.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    s.avail_out = UInt32(p.count)
                    let rc = inflate(&s, Z_NO_FLUSH)
                    return (rc, p.count - Int(s.avail_out))
                }
                result += piece[0..<got]
                if rc == Z_STREAM_END { return result }
                if rc != Z_OK { return nil }
            }
        }
    }
}
