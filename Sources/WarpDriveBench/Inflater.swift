// Checking a stream against its original with zlib.
#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import CWarpSys

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
