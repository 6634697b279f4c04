#if canImport(Glibc)
import Glibc
#endif

/// Which blocks are stored raw without spending an engine on them: a pure
/// estimate on a sample of the block (the heuristic of btrfs's
/// `compress_heuristic`).
enum EntropyCheck {
    /// Blocks smaller than this are always sent to the engine.
    static let minimumSize = 8192
    /// Shannon entropy, in bits per byte, above which no codec would save
    /// the 6.25% a compressed block must save to be stored compressed (a
    /// 4096-byte sample of random bytes measures about 7.95).
    static let threshold = 7.8

    /// Entropy estimate on a sample: 4096 bytes taken across the block in
    /// 64 runs of 64 bytes. True when the sample looks random (entropy above
    /// `threshold`) and its runs do not repeat (repeated runs are long
    /// matches that compress even when the bytes look random).
    static func looksIncompressible(_ data: UnsafeRawBufferPointer) -> Bool {
        guard data.count >= minimumSize else { return false }
        var counts = [Int](repeating: 0, count: 256)
        // Sample offsets are multiples of 512 bytes, so data repeating with
        // a power-of-two period shows up as repeated samples below.
        let runs = 64, run = 64
        let stride = max(512, (data.count - run) / (runs - 1) / 512 * 512)
        var n = 0
        for r in 0..<runs where r * stride + run <= data.count {
            let base = r * stride
            for i in 0..<run { counts[Int(data[base + i])] += 1 }
            n += run
        }
        // Repeated runs (long matches) compress even when bytes look random.
        var distinct = Set<UInt64>()
        var samples = 0
        for r in 0..<runs where r * stride + 8 <= data.count {
            distinct.insert(data.loadUnaligned(fromByteOffset: r * stride, as: UInt64.self))
            samples += 1
        }
        if distinct.count < samples * 3 / 4 { return false }
        var h = 0.0
        for c in counts where c > 0 {
            let p = Double(c) / Double(n)
            h -= p * log2(p)
        }
        return h > threshold
    }
}
