/// Marsaglia's xorshift64* generator: the benches' data and offsets, the
/// same from run to run.
public struct XorShift: Sendable {
    public var x: UInt64
    /// An even seed is made odd (a zero state would stay zero).
    public init(seed: UInt64) { x = seed | 1 }
    public mutating func next() -> UInt64 {
        x ^= x >> 12; x ^= x << 25; x ^= x >> 27
        return x &* 0x2545_F491_4F6C_DD1D
    }
}
