#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Testing
@testable import WarpDrive

/// The ring formats, byte for byte: the typed SQE, CQE and doorbell fields
/// against entries built by hand from the layout in docs/warpdrive.md
/// (section 2), and every field's round trip at its bounds.
@Suite struct ProtocolTests {
    /// Every SQE field, named, from the field table.
    static let sqeFields: [(String, BitField<UInt32>)] = {
        typealias F = ZipSQE.Field
        return [("consumed", F.consumed), ("produced", F.produced), ("status", F.status), ("endOfStream", F.endOfStream),
                ("faultAddressLow", F.faultAddressLow), ("faultAddressHigh", F.faultAddressHigh), ("isize", F.isize),
                ("checksum", F.checksum), ("inputLength", F.inputLength), ("flush", F.flush), ("sqeType", F.sqeType),
                ("requestType", F.requestType), ("window", F.window), ("level", F.level),
                ("destinationCapacity", F.destinationCapacity), ("sourceAddressLow", F.sourceAddressLow),
                ("sourceAddressHigh", F.sourceAddressHigh), ("destinationAddressLow", F.destinationAddressLow),
                ("destinationAddressHigh", F.destinationAddressHigh), ("tag", F.tag)]
    }()

    /// The bytes of `sqe` as it sits in ring memory.
    static func bytes(_ sqe: ZipSQE) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: ZipSQE.size)
        b.withUnsafeMutableBytes { sqe.store(to: $0.baseAddress!) }
        return b
    }

    /// An SQE loaded from ring bytes.
    static func load(_ b: [UInt8]) -> ZipSQE {
        precondition(b.count == ZipSQE.size)
        return b.withUnsafeBytes { ZipSQE(loading: $0.baseAddress!) }
    }

    /// 128 zero bytes with little-endian dwords set at their indexes.
    static func entry(_ dwords: [Int: UInt32]) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: ZipSQE.size)
        for (i, v) in dwords { for k in 0..<4 { b[i * 4 + k] = UInt8(truncatingIfNeeded: v >> (8 * k)) } }
        return b
    }

    // MARK: SQE

    @Test func sqeFieldsOfOneWordDoNotOverlap() {
        let f = ProtocolTests.sqeFields
        for i in f.indices {
            for j in f.indices where j > i && f[i].1.word == f[j].1.word {
                let a = f[i].1.mask << f[i].1.shift, b = f[j].1.mask << f[j].1.shift
                #expect(a & b == 0, "\(f[i].0) and \(f[j].0) share bits of dword \(f[i].1.word)")
            }
        }
    }

    @Test func everySQEFieldRoundTripsItsBoundsWithoutTouchingTheRest() {
        for (name, field) in ProtocolTests.sqeFields {
            for background in [UInt8(0x00), 0xff, 0xa5] {
                let raw = [UInt8](repeating: background, count: ZipSQE.size)
                for value in [0, 1, field.mask >> 1, field.mask, 0x5a5a_5a5a & field.mask] {
                    var sqe = ProtocolTests.load(raw)
                    sqe[field] = value
                    let after = ProtocolTests.load(ProtocolTests.bytes(sqe))
                    #expect(after[field] == value, "\(name) = \(value)")
                    // Only the field's own bits differ from the background.
                    let b = ProtocolTests.bytes(sqe)
                    let bits = UInt64(field.mask) << field.shift
                    for k in 0..<ZipSQE.size where b[k] != background {
                        let inWord = k / 4 == field.word && (bits >> (8 * (k % 4))) & 0xff != 0
                        #expect(inWord, "\(name) = \(value) changed byte \(k)")
                    }
                }
                // A value wider than the field is cut to its width.
                var sqe = ProtocolTests.load(raw)
                sqe[field] = UInt32.max
                #expect(sqe[field] == field.mask, "\(name) cut")
            }
        }
    }

    @Test func typedClientFieldsRoundTripThroughRingMemory() {
        for type in ZipSQE.RequestType.allCases {
            for window in ZipSQE.Window.allCases {
                for level in [0, 1, 9, 255] {
                    var sqe = ZipSQE(type: type, window: window, level: level)
                    for (addr, len) in [(UInt64(0), UInt32(0)), (UInt64.max, UInt32.max), (0x0123_4567_89ab_cdef, 65536)] {
                        sqe.sourceAddress = addr
                        sqe.destinationAddress = ~addr
                        sqe.inputLength = len
                        sqe.destinationCapacity = ~len
                        sqe.tag = len ^ 0x1234
                        let back = ProtocolTests.load(ProtocolTests.bytes(sqe))
                        #expect(back == sqe)
                        #expect(back.requestType == type && back.window == window && back.level == level)
                        #expect(back.flush == .finish && back.sqeType == 3)
                        #expect(back.sourceAddress == addr && back.destinationAddress == ~addr)
                        #expect(back.inputLength == len && back.destinationCapacity == ~len && back.tag == len ^ 0x1234)
                    }
                }
            }
        }
        var sqe = ZipSQE(type: .gzip, window: .size4K, level: 1)
        sqe.flush = .sync
        #expect(ProtocolTests.load(ProtocolTests.bytes(sqe)).flush == .sync)
    }

    @Test func typedDeviceFieldsRoundTripThroughRingMemory() {
        for code in 0...255 {
            for eos in [false, true] {
                var sqe = ZipSQE()
                sqe.status = CompletionStatus(rawValue: UInt8(code))
                sqe.endOfStream = eos
                let back = ProtocolTests.load(ProtocolTests.bytes(sqe))
                #expect(back.status.rawValue == UInt8(code) && back.endOfStream == eos)
            }
        }
        for v in [UInt32(0), 1, 0x7fff_ffff, UInt32.max] {
            var sqe = ZipSQE()
            sqe.consumed = v; sqe.produced = ~v; sqe.isize = v ^ 0xffff; sqe.checksum = v &+ 7
            sqe.faultAddress = UInt64(v) << 32 | UInt64(~v)
            let back = ProtocolTests.load(ProtocolTests.bytes(sqe))
            #expect(back.consumed == v && back.produced == ~v && back.isize == v ^ 0xffff && back.checksum == v &+ 7)
            #expect(back.faultAddress == UInt64(v) << 32 | UInt64(~v))
        }
    }

    /// A request as the client writes it, byte for byte: dword 4 input
    /// length, dword 7 bit 25 flush (finish) and bits 31:28 SQE type 3,
    /// dword 9 type (7:0), window (15:12), level (23:16), dword 14
    /// capacity, dwords 18-21 addresses (low word first), dword 26 tag.
    @Test func aClientSQEIsTheDocumentedBytes() {
        var sqe = ZipSQE(type: .zlib, window: .size32K, level: 6)
        sqe.inputLength = 0x0001_0000
        sqe.destinationCapacity = 0x0002_0000
        sqe.sourceAddress = 0x0000_7f12_3456_7000
        sqe.destinationAddress = 0x0000_7f12_89ab_c000
        sqe.tag = 5
        let golden: [UInt8] = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                     // dwords 0-3
            0x00, 0x00, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x32, // 4: length; 7: 0x32000000
            0, 0, 0, 0, 0x02, 0x40, 0x06, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,         // 9: 0x00064002
            0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x02, 0x00, 0, 0, 0, 0,         // 14: capacity
            0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x70, 0x56, 0x34, 0x12, 0x7f, 0x00, 0x00, // 18/19: source
            0x00, 0xc0, 0xab, 0x89, 0x12, 0x7f, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, // 20/21: destination
            0, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x00, 0x00, 0x00, 0, 0, 0, 0,         // 26: tag
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                     // 28-31
        ]
        #expect(ProtocolTests.bytes(sqe) == golden)
        #expect(golden == ProtocolTests.entry([4: 0x0001_0000, 7: 1 << 25 | 3 << 28, 9: 2 | 4 << 12 | 6 << 16,
                                               14: 0x0002_0000, 18: 0x3456_7000, 19: 0x7f12, 20: 0x89ab_c000,
                                               21: 0x7f12, 26: 5]))
        let back = ProtocolTests.load(golden)
        #expect(back.requestType == .zlib && back.window == .size32K && back.level == 6 && back.flush == .finish)
        #expect(back.inputLength == 65536 && back.destinationCapacity == 131072 && back.tag == 5)
        #expect(back.sourceAddress == 0x7f12_3456_7000 && back.destinationAddress == 0x7f12_89ab_c000)
    }

    /// Results as the device writes them: dword 0 consumed, 1 produced,
    /// 3 status (7:0) and end of stream (bit 8), 24/25 fault address, 30
    /// isize, 31 checksum; nothing else in the entry is written.
    @Test func deviceResultsAreTheDocumentedBytesAndNothingElse() {
        let golden = ProtocolTests.entry([0: 1234, 1: 65536, 3: 0x113, 24: 0xdead_b000, 25: 0x7ffe, 30: 65536,
                                          31: 0x1234_5678])
        let back = ProtocolTests.load(golden)
        #expect(back.consumed == 1234 && back.produced == 65536 && back.isize == 65536 && back.checksum == 0x1234_5678)
        #expect(back.status == .endOfStream && back.endOfStream && back.status.isSuccess)
        #expect(back.faultAddress == 0x7ffe_dead_b000)

        var done = ZipSQE()
        done.consumed = 1234; done.produced = 65536; done.status = .endOfStream; done.endOfStream = true
        done.faultAddress = 0x7ffe_dead_b000; done.isize = 65536; done.checksum = 0x1234_5678
        // Over a slot full of a client's bytes: only the result dwords change, whole.
        var ring = [UInt8](repeating: 0xaa, count: ZipSQE.size)
        ring.withUnsafeMutableBytes { done.storeResults(to: $0.baseAddress!) }
        for i in 0..<32 {
            let word = Array(ring[i * 4 ..< i * 4 + 4])
            if [0, 1, 3, 24, 25, 30, 31].contains(i) {
                #expect(word == Array(golden[i * 4 ..< i * 4 + 4]), "dword \(i)")
            } else {
                #expect(word == [0xaa, 0xaa, 0xaa, 0xaa], "dword \(i) is the client's")
            }
        }
        #expect(ZipSQE.Field.resultWords.sorted() == [0, 1, 3, 24, 25, 30, 31])
    }

    @Test func codesNoTypeOrWindowHasDecodeAsNil() {
        for code in UInt32(0)...0xff {
            var sqe = ZipSQE()
            sqe[ZipSQE.Field.requestType] = code
            #expect((sqe.requestType != nil) == ((1...3).contains(code) || code == 0x10 || code == 0x11), "type \(code)")
        }
        for code in UInt32(0)...0xf {
            var sqe = ZipSQE()
            sqe[ZipSQE.Field.window] = code
            #expect(sqe.window?.rawValue == (code <= 4 ? UInt8(code) : nil), "window \(code)")
        }
    }

    @Test func windowsMapToZlibWindowBits() {
        #expect(ZipSQE.Window(windowBits: 11) == nil && ZipSQE.Window(windowBits: 16) == nil)
        #expect([12, 13, 14, 15].map { ZipSQE.Window(windowBits: $0)!.rawValue } == [0, 1, 2, 4])
        #expect(ZipSQE.Window.allCases.map(\.zlibWindowBits) == [12, 13, 14, 14, 15])
    }

    @Test func completionStatusCodes() {
        #expect([CompletionStatus.ok, .negativeCompression, .destinationTooSmall, .endOfStream, .badRequest, .corruptInput,
                 .engineError, .pageFault].map(\.rawValue) == [0x00, 0x0d, 0x0e, 0x13, 0x01, 0x02, 0x1e, 0x1f])
        let successes = (0...255).filter { CompletionStatus(rawValue: UInt8($0)).isSuccess }
        #expect(successes == [0x00, 0x0d, 0x13])
        #expect("\(CompletionStatus.pageFault)" == "0x1f")
    }

    // MARK: CQE and doorbell

    /// `u32 rsvd0; u16 cmd_id; u16 rsvd1; u16 sq_head; u16 sq_num; u16 rsvd2; u16 w7`, phase = w7 bit 0.
    @Test func aCQEIsTheDocumentedBytes() {
        for (head, number, phase) in [(UInt16(0), UInt16(0), UInt32(0)), (0x1234, 0x3ff, 1), (0xffff, 0xffff, 1)] {
            var ring = [UInt8](repeating: 0xaa, count: RingLayout.cqeSize)
            ring.withUnsafeMutableBytes { b in
                let cqe = CQE(b.baseAddress!)
                cqe.publish(sqHead: head, sqNumber: number, phase: phase)
                #expect(cqe.sqHead == head && cqe.phase() == phase)
            }
            let golden: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, UInt8(head & 0xff), UInt8(head >> 8), UInt8(number & 0xff),
                                   UInt8(number >> 8), 0, 0, UInt8(phase), 0]
            #expect(ring == golden)
        }
    }

    @Test func doorbellFieldsAtTheirBounds() {
        let top = Doorbell(queueNumber: 0x3ff, command: .cq, index: 0xffff, priority: 0xffff)
        #expect(top.raw == 0xffff_ffff_0000_13ff)
        #expect(Doorbell(raw: top.raw) == top)
        // A queue number wider than 10 bits is cut; the reserved bits 10-11 and 16-31 are not decoded.
        #expect(Doorbell(queueNumber: 0x7ff, command: .sq, index: 0).raw == 0x3ff)
        let d = Doorbell(raw: UInt64.max)
        #expect(d.queueNumber == 0x3ff && d.command == 0xf && d.index == 0xffff && d.priority == 0xffff)
        #expect(d.raw == 0xffff_ffff_0000_f3ff)
    }

    // MARK: The engine's decoding

    @Test func theEngineRefusesMalformedSQEsAndKeepsServing() throws {
        try withDevice { device in
            let q = try Queue.started(device: device, direction: .compress)
            defer { q.release() }
            let data = TestData.text(3000)
            var out = [UInt8](repeating: 0, count: 8192)
            try data.withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { d in
                    var good = ZipSQE(type: .deflate, window: .size32K, level: 1)
                    good.sourceAddress = UInt64(UInt(bitPattern: s.baseAddress))
                    good.inputLength = UInt32(s.count)
                    good.destinationAddress = UInt64(UInt(bitPattern: d.baseAddress))
                    good.destinationCapacity = UInt32(d.count)
                    var badType = good; badType[ZipSQE.Field.requestType] = 4
                    var badWindow = good; badWindow[ZipSQE.Field.window] = 5
                    var badLevel = good; badLevel.level = 10
                    var tooLong = good; tooLong.inputLength = UInt32(ZipSQE.maxRequestBytes + 1)
                    for (name, sqe, want) in [("type 4", badType, CompletionStatus.badRequest), ("window 5", badWindow, .badRequest),
                                              ("level 10", badLevel, .badRequest), ("8 MiB + 1", tooLong, .badRequest),
                                              ("good", good, .ok)] {
                        #expect(try q.trySubmit(PendingRequest(), sqe), "\(name)")
                        var got: PendingRequest?
                        try q.wait(until: { got != nil }, deadline: wd_now_ns() + 10_000_000_000, timeoutMilliseconds: 10_000,
                                   mode: .interrupt) { got = $0 }
                        #expect(got?.status == want, "\(name)")
                    }
                    // (the good request is the last: its output is what the destination holds)
                    #expect(Zlib.decompress(Array(d), .deflate, capacity: data.count) == data)
                }
            }
            #expect(q.counters.errors == 4)
        }
    }

    @Test func sessionsRefuseLevelsAndWindowsTheSQECannotCarry() {
        withDevice { device in
            for (level, bits) in [(10, 15), (-1, 15), (6, 11), (6, 16)] {
                var c = SessionConfiguration(algorithm: .zlib, direction: .compress, level: level)
                c.windowBits = bits
                #expect(throws: WarpDriveError.badRequest(status: 0x01)) { try CompressionSession(device: device, configuration: c) }
            }
        }
    }
}
