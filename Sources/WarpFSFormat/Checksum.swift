import CWarpSys

/// CRC-32C (Castagnoli) of a byte range: the format's checksum for headers
/// and stored block payloads. Computed with the CPU's CRC32 instruction where
/// there is one (it runs on every block read, so speed matters).
@inlinable
public func crc32Checksum(_ p: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
    guard let base = p.baseAddress, p.count > 0 else { return seed }
    return wd_crc32c(seed, base, p.count)
}

/// Little-endian field access on a byte buffer, bounds-checked by the caller.
@usableFromInline
struct LE {
    @usableFromInline let p: UnsafeMutableRawPointer
    @inlinable init(_ p: UnsafeMutableRawPointer) { self.p = p }
    @inlinable func u8(_ o: Int) -> UInt8 { p.load(fromByteOffset: o, as: UInt8.self) }
    @inlinable func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    @inlinable func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    @inlinable func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    @inlinable func set(_ o: Int, _ v: UInt8) { p.storeBytes(of: v, toByteOffset: o, as: UInt8.self) }
    @inlinable func set(_ o: Int, _ v: UInt16) { p.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt16.self) }
    @inlinable func set(_ o: Int, _ v: UInt32) { p.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt32.self) }
    @inlinable func set(_ o: Int, _ v: UInt64) { p.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt64.self) }
}
