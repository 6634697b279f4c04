import Testing
@testable import WarpFSCore

/// The entropy check that sends random-looking blocks to storage raw,
/// without an engine: no mount, no device.
@Suite struct EntropyTests {
    static func random(_ n: Int, seed: UInt64 = 99) -> [UInt8] {
        var x = seed
        return (0..<n).map { _ -> UInt8 in x ^= x >> 12; x ^= x << 25; x ^= x >> 27; return UInt8(truncatingIfNeeded: x &* 0x2545F4914F6CDD1D >> 32) }
    }
    static func check(_ b: [UInt8]) -> Bool { b.withUnsafeBytes { EntropyCheck.looksIncompressible($0) } }

    @Test func randomBytesAreStoredRawWithoutCompressing() {
        let random = Self.random(65536)
        let text = Array(String(repeating: "the quick brown fox jumps over the lazy dog ", count: 1500).utf8.prefix(65536))
        let repeated = Array((0..<64).flatMap { _ in random.prefix(1024) })
        let halfZero = Array(random.prefix(32768)) + [UInt8](repeating: 0, count: 32768)
        #expect(Self.check(random))
        #expect(!Self.check(text))
        #expect(!Self.check(repeated))
        #expect(!Self.check(halfZero))
        #expect(!Self.check([UInt8](repeating: 0, count: 65536)))
    }

    /// Every block size the format allows, and the smallest a check samples.
    @Test func theCheckWorksAtEveryBlockSize() {
        for size in [EntropyCheck.minimumSize, 16384, 65536, 1 << 20] {
            #expect(Self.check(Self.random(size, seed: UInt64(size))), "\(size)")
            #expect(!Self.check([UInt8](repeating: 0x41, count: size)), "\(size)")
        }
        // Below the minimum nothing is skipped: the engine decides.
        #expect(!Self.check(Self.random(4096)))
        #expect(!Self.check(Self.random(EntropyCheck.minimumSize - 1)))
    }

    /// Random bytes repeating with a power-of-two period are long matches:
    /// the samples repeat, so the block goes to the engine.
    @Test func powerOfTwoPeriodsAreCaughtBySampling() {
        for period in [512, 2048, 4096, 8192] {
            let unit = Self.random(period, seed: UInt64(period))
            let block = Array((0..<(65536 / period)).flatMap { _ in unit })
            #expect(!Self.check(block), "period \(period)")
        }
    }

    /// Bytes from a small alphabet (hex, base64) have low entropy per byte:
    /// deflate's Huffman stage compresses them.
    @Test func smallAlphabetsAreCompressed() {
        let hexDigits = Array("0123456789abcdef".utf8)
        let base64 = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        let r = Self.random(65536, seed: 7)
        #expect(!Self.check(r.map { hexDigits[Int($0) & 15] }))
        #expect(!Self.check(r.map { base64[Int($0) & 63] }))
    }
}
