#if canImport(Glibc)
import Glibc
#endif
import CWarpSys

// MARK: - zlib called directly

/// A deflate and an inflate stream, reused with deflateReset / inflateReset.
final class ZStream: @unchecked Sendable {
    private let d = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    private let i = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
    let output: UnsafeMutableRawBufferPointer

    init(level: Int, windowBits: Int32, capacity: Int) {
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
    func compress(_ src: UnsafeRawBufferPointer) -> Int {
        deflateReset(d)
        d.pointee.next_in = UnsafeMutablePointer(mutating: src.baseAddress!.assumingMemoryBound(to: UInt8.self))
        d.pointee.avail_in = UInt32(src.count)
        d.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        d.pointee.avail_out = UInt32(output.count)
        let rc = deflate(d, Z_FINISH)
        if rc != Z_STREAM_END { die("zlib: deflate returned \(rc)") }
        return output.count - Int(d.pointee.avail_out)
    }

    /// Inflates `src` into `output`; returns the bytes produced, or -1 when
    /// the stream is not one complete stream.
    @inline(__always)
    func decompress(_ src: UnsafeRawBufferPointer) -> Int {
        inflateReset(i)
        i.pointee.next_in = UnsafeMutablePointer(mutating: src.baseAddress!.assumingMemoryBound(to: UInt8.self))
        i.pointee.avail_in = UInt32(src.count)
        i.pointee.next_out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        i.pointee.avail_out = UInt32(output.count)
        let rc = inflate(i, Z_FINISH)
        guard rc == Z_STREAM_END, i.pointee.avail_in == 0 else { return -1 }
        return output.count - Int(i.pointee.avail_out)
    }
}

/// Checks that a compressed stream inflates back to the original: zlib's
/// `uncompress` for the zlib format, an inflate stream for gzip and raw deflate.
final class Inflater {
    let algorithm: AlgorithmOption
    private let z: ZStream
    private let scratch: UnsafeMutableRawBufferPointer

    init(algorithm: AlgorithmOption, capacity: Int) {
        self.algorithm = algorithm
        z = ZStream(level: 1, windowBits: algorithm.windowBits, capacity: capacity)
        scratch = .allocate(byteCount: capacity, alignment: 64)
    }

    deinit { scratch.deallocate() }

    /// nil when `stream` inflates to exactly `original`, else what is wrong.
    func mismatch(_ stream: UnsafeRawBufferPointer, original: UnsafeRawBufferPointer) -> String? {
        let produced: Int
        let at: UnsafeRawPointer
        if algorithm == .zlib {
            var len = uLongf(scratch.count)
            let rc = uncompress(scratch.baseAddress!.assumingMemoryBound(to: UInt8.self), &len,
                                stream.baseAddress!.assumingMemoryBound(to: UInt8.self), uLong(stream.count))
            guard rc == Z_OK else { return "zlib uncompress returned \(rc) for a \(stream.count)-byte stream" }
            produced = Int(len)
            at = UnsafeRawPointer(scratch.baseAddress!)
        } else {
            produced = z.decompress(stream)
            guard produced >= 0 else { return "zlib inflate (\(algorithm.rawValue)) rejected the \(stream.count)-byte stream" }
            at = UnsafeRawPointer(z.output.baseAddress!)
        }
        guard produced == original.count else { return "inflates to \(produced) bytes, expected \(original.count)" }
        if memcmp(at, original.baseAddress!, produced) != 0 { return "inflates to different bytes than the original" }
        return nil
    }
}
