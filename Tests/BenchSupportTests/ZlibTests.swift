import BenchSupport
import Testing
import WarpDrive

/// zlib called directly, on a few small blocks (no device, no mount).
@Suite struct ZlibTests {
    static let pattern: [UInt8] = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 % 251 == 0 ? $0 * 7 : $0 % 13) }

    @Test func blocksCutFromARepeatedPattern() {
        let b = ZlibBlocks(cycling: Self.pattern, count: 5, blockSize: 4096, level: 1, windowBits: -15)
        #expect(b.count == 5 && b.totalBytes == 5 * 4096)
        for k in 0..<b.count {
            let blk = Array(b.block(k))
            #expect(blk == (0..<4096).map { Self.pattern[(k * 4096 + $0) % Self.pattern.count] })
        }
        #expect(b.ratio > 2)
        #expect(b.maxStream == (0..<b.count).map(b.streamLength).max())
        // Each stream inflates back to its block.
        let z = ZStream(level: 1, windowBits: -15, capacity: streamCapacity(4096))
        for k in 0..<b.count {
            let n = z.decompress(b.stream(k))
            #expect(n == 4096 && Array(z.output[0..<n]) == Array(b.block(k)))
        }
    }

    @Test func aRejectedBlockFailsTheBuild() {
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * 1024, alignment: 64)
        plain.initializeMemory(as: UInt8.self, repeating: 1)
        #expect(throws: BenchFailure.self) {
            _ = try ZlibBlocks(taking: plain, blockSize: 1024, level: 1, windowBits: 15) { k, _, _ in
                if k == 2 { throw BenchFailure("block 2") }
            }
        }
    }

    @Test func threadsDoTheWorkAskedAndCheckIt() throws {
        let b = ZlibBlocks(cycling: Self.pattern, count: 3, blockSize: 4096, level: 1, windowBits: 15)
        let z = ZlibThreads(threads: 2, blocks: b)
        try z.verify(.compress)
        try z.verify(.decompress)
        for d in [Direction.compress, .decompress] {
            let t = z.run(d, blocks: 7)
            #expect(t.bytes == 7 * 4096 && t.wallNs > 0)
        }
        let timed = z.run(.decompress, seconds: 0.02)
        #expect(timed.bytes > 0 && timed.bytes % 4096 == 0 && timed.wallNs >= 20_000_000)
    }
}
