import CWarpSys

/// Little-endian 32-bit word access to a region of shared ring memory.
@usableFromInline
struct Words {
    @usableFromInline let base: UnsafeMutableRawPointer
    @inlinable init(_ base: UnsafeMutableRawPointer) { self.base = base }
    @inlinable subscript(_ i: Int) -> UInt32 {
        get { base.load(fromByteOffset: i * 4, as: UInt32.self).littleEndian }
        nonmutating set { base.storeBytes(of: newValue.littleEndian, toByteOffset: i * 4, as: UInt32.self) }
    }
    @inlinable func pointer(_ i: Int) -> UnsafeMutablePointer<UInt32> {
        (base + i * 4).assumingMemoryBound(to: UInt32.self)
    }
    @inlinable func loadAcquire(_ i: Int) -> UInt32 { wd_load_acquire_u32(pointer(i)) }
    @inlinable func storeRelease(_ i: Int, _ v: UInt32) { wd_store_release_u32(pointer(i), v) }
}
