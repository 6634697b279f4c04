import Synchronization

/// A pool of fixed-size buffers in shared memory, registered with an address
/// space so the device reaches them without copying (the way a driver
/// registers memory with the IOMMU). Buffers outside a pool still work: the
/// device copies them through the bound process instead.
public final class SharedBufferPool: @unchecked Sendable {
    /// Bytes per buffer.
    public let bufferSize: Int
    /// Number of buffers.
    public let count: Int
    private let file: SharedMemoryFile
    private let clientMapping: SharedMapping
    private let region: RegisteredRegion
    private let binding: SVABinding
    private let free: Mutex<[Int]>

    /// Creates `count` buffers of `bufferSize` bytes registered for `binding`.
    public init(binding: SVABinding, bufferSize: Int, count: Int) throws {
        precondition(bufferSize > 0 && count > 0)
        let stride = (bufferSize + 63) / 64 * 64
        self.bufferSize = bufferSize
        self.count = count
        self.binding = binding
        file = try SharedMemoryFile(name: "warpdrive-pool", size: stride * count)
        clientMapping = try file.map()
        let deviceMapping = try file.map()
        region = RegisteredRegion(clientAddress: UInt64(UInt(bitPattern: clientMapping.base)),
                                  length: file.size, deviceMapping: deviceMapping)
        free = Mutex(Array((0..<count).reversed()))
        strideBytes = stride
        binding.iommu.register(region, pasid: binding.pasid)
    }

    private let strideBytes: Int

    /// The buffer with index `i` (0..<count).
    public func buffer(_ i: Int) -> UnsafeMutableRawBufferPointer {
        precondition(i >= 0 && i < count)
        return UnsafeMutableRawBufferPointer(start: clientMapping.base + i * strideBytes, count: bufferSize)
    }

    /// Takes a free buffer's index, or nil when all are in use.
    public func take() -> Int? { free.withLock { $0.popLast() } }

    /// Returns a buffer taken with `take()`.
    public func give(_ i: Int) { free.withLock { $0.append(i) } }

    deinit { binding.iommu.unregister(region, pasid: binding.pasid) }
}
