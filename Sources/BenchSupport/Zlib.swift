// zlib called directly: reused streams, and blocks with zlib's stream of each.
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

/// Room for one block's stream: the block plus deflate's worst-case growth and framing.
public func streamCapacity(_ blockSize: Int) -> Int { blockSize + blockSize / 512 + 1024 }

/// A deflate and an inflate stream, reused with deflateReset / inflateReset
/// (as an engine does), writing into `output`.
public final class ZStream: @unchecked Sendable {
    private let d = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    private let i = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    public let output: UnsafeMutableRawBufferPointer

    /// `windowBits` as for deflateInit2 / inflateInit2: 15 zlib, 31 gzip, -15 raw deflate.
    public init(level: Int, windowBits: Int32, capacity: Int) {
        d.initialize(to: z_stream())
        i.initialize(to: z_stream())
        let rd = wd_deflate_init2(d, Int32(level), windowBits, 8, Z_DEFAULT_STRATEGY)
        let ri = wd_inflate_init2(i, windowBits)
        if rd != Z_OK || ri != Z_OK { die("zlib: deflateInit2 returned \(rd), inflateInit2 returned \(ri)") }
        output = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit {
        deflateEnd(d); inflateEnd(i)
        d.deallocate(); i.deallocate(); output.deallocate()
    }

    /// Compresses `src` into `output`; returns the stream length.
    @inline(__always)
    public func compress(_ src: UnsafeRawBufferPointer) -> Int {
        deflateReset(d)
        let rc = deflate(feed(d, src), Z_FINISH)
        if rc != Z_STREAM_END { die("zlib: deflate returned \(rc)") }
        return output.count - Int(d.pointee.avail_out)
    }

    /// Inflates `src` into `output`; returns the bytes produced, or -1 when
    /// the stream is not one complete stream.
    @inline(__always)
    public func decompress(_ src: UnsafeRawBufferPointer) -> Int {
        inflateReset(i)
        let rc = inflate(feed(i, src), Z_FINISH)
        guard rc == Z_STREAM_END, i.pointee.avail_in == 0 else { return -1 }
        return output.count - Int(i.pointee.avail_out)
    }

    /// Points `z` at all of `src` and all of `output`.
    @inline(__always)
    private func feed(_ z: UnsafeMutablePointer<z_stream>, _ src: UnsafeRawBufferPointer) -> UnsafeMutablePointer<z_stream> {
        z.pointee.next_in = UnsafeMutablePointer(mutating: src.baseAddress!.assumingMemoryBound(to: UInt8.self))
        z.pointee.avail_in = UInt32(src.count)
        z.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        z.pointee.avail_out = UInt32(output.count)
        return z
    }
}

/// Equal blocks of plain data and zlib's stream of each, at one level and
/// format: what the zlib baselines compress and inflate.
public final class ZlibBlocks: @unchecked Sendable {
    public let blockSize: Int
    public let count: Int
    public let level: Int
    public let windowBits: Int32
    /// Largest stream of a block.
    public let maxStream: Int
    private let plain: UnsafeMutableRawBufferPointer
    private let packed: UnsafeMutableRawBufferPointer
    private let offsets: [Int]
    private let lengths: [Int]

    public var totalBytes: Int { count * blockSize }
    public var streamBytes: Int { lengths.reduce(0, +) }
    /// Plain bytes per stream byte over all blocks.
    public var ratio: Double { Double(totalBytes) / Double(streamBytes) }
    public func streamLength(_ k: Int) -> Int { lengths[k] }

    @inline(__always)
    public func block(_ k: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: plain[k * blockSize ..< (k + 1) * blockSize])
    }

    @inline(__always)
    public func stream(_ k: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: packed[offsets[k] ..< offsets[k] + lengths[k]])
    }

    /// Takes `plain` (allocated, freed with this object; its whole blocks
    /// are used) and compresses each block; `check` is given each block's
    /// index, plain bytes and stream, and may reject it by throwing.
    public init(taking plain: UnsafeMutableRawBufferPointer, blockSize: Int, level: Int, windowBits: Int32,
                check: (Int, UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void = { _, _, _ in }) rethrows {
        let count = plain.count / blockSize
        let cap = streamCapacity(blockSize)
        let packed = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, count * cap), alignment: 64)
        let z = ZStream(level: level, windowBits: windowBits, capacity: cap)
        var offsets: [Int] = [], lengths: [Int] = []
        var at = 0
        do {
            for k in 0..<count {
                let blk = UnsafeRawBufferPointer(rebasing: plain[k * blockSize ..< (k + 1) * blockSize])
                let n = z.compress(blk)
                let stream = UnsafeRawBufferPointer(rebasing: z.output[0..<n])
                try check(k, blk, stream)
                packed.baseAddress!.advanced(by: at).copyMemory(from: stream.baseAddress!, byteCount: n)
                offsets.append(at); lengths.append(n)
                at += n
            }
        } catch {
            plain.deallocate(); packed.deallocate()
            throw error
        }
        self.blockSize = blockSize; self.count = count; self.level = level; self.windowBits = windowBits
        self.plain = plain; self.packed = packed; self.offsets = offsets; self.lengths = lengths
        maxStream = lengths.max() ?? 0
    }

    /// `count` blocks cut from `pattern` repeated end to end.
    public convenience init(cycling pattern: [UInt8], count: Int, blockSize: Int, level: Int, windowBits: Int32) {
        precondition(!pattern.isEmpty)
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: count * blockSize, alignment: 64)
        var p = 0
        pattern.withUnsafeBytes { src in
            while p < plain.count {
                let n = min(src.count, plain.count - p)
                (plain.baseAddress! + p).copyMemory(from: src.baseAddress!, byteCount: n)
                p += n
            }
        }
        self.init(taking: plain, blockSize: blockSize, level: level, windowBits: windowBits) { _, _, _ in }
    }

    deinit { plain.deallocate(); packed.deallocate() }
}
