#if canImport(Glibc)
import Glibc
#endif
import CWarpCodecs
import CWarpSys

/// The codec contexts of one engine: every library's compressor and
/// decompressor state, created on the engine's first request that needs it
/// and kept for the engine's lifetime, so a request allocates nothing.
/// Only the engine's own thread uses it.
///
/// Which library does what:
///
/// | request | compress | decompress |
/// |---|---|---|
/// | deflate, zlib, gzip with `DeflateEngine.zlib` | zlib `deflate` | zlib `inflate` |
/// | deflate, zlib, gzip with `DeflateEngine.isal` | ISA-L `isal_deflate_stateless` at levels 1...3, zlib at 0 and 4...9 | libdeflate `libdeflate_deflate_decompress_ex` |
/// | zstd | `ZSTD_compressCCtx` | `ZSTD_decompressDCtx` |
/// | lz4 | `LZ4_compress_fast_extState` (levels 1, 2), `LZ4_compress_HC_extStateHC` (3...12) | `LZ4_decompress_safe` |
///
/// All of them write at most the request's destination capacity; a
/// destination too small for the output is `destinationTooSmall`.
final class EngineCodecs {
    let deflateEngine: DeflateEngine

    // zlib: one deflate stream per level and window, one raw inflate stream.
    private var zlibDeflaters: [Int: UnsafeMutablePointer<z_stream>] = [:]
    private var zlibInflater: UnsafeMutablePointer<z_stream>?
    // ISA-L: one stream (its state is large: kept, re-initialised per
    // request by `isal_deflate_stateless_init`, which only sets fields) and
    // one level buffer per level that needs one.
    private var isalStream: UnsafeMutablePointer<isal_zstream>?
    private var isalLevelBuffers: [UnsafeMutableRawPointer?] = [nil, nil, nil, nil]
    // libdeflate: one decompressor.
    private var libdeflateDecompressor: OpaquePointer?
    // zstd: one compression and one decompression context.
    private var zstdC: OpaquePointer?
    private var zstdD: OpaquePointer?
    // lz4: the fast and the HC compressor's states.
    private var lz4State: UnsafeMutableRawPointer?
    private var lz4HCState: UnsafeMutableRawPointer?

    init(deflateEngine: DeflateEngine) {
        self.deflateEngine = deflateEngine
    }

    deinit {
        for (_, s) in zlibDeflaters { deflateEnd(s); s.deallocate() }
        if let s = zlibInflater { inflateEnd(s); s.deallocate() }
        isalStream?.deallocate()
        for b in isalLevelBuffers { b?.deallocate() }
        if let d = libdeflateDecompressor { libdeflate_free_decompressor(d) }
        if let c = zstdC { ZSTD_freeCCtx(c) }
        if let d = zstdD { ZSTD_freeDCtx(d) }
        lz4State?.deallocate()
        lz4HCState?.deallocate()
    }

    /// What one request did: bytes used and written, and its status.
    struct Result {
        var status: CompletionStatus
        var consumed = 0
        var produced = 0
        var endOfStream = false
    }

    // MARK: Compression

    /// Compresses `inLen` bytes at `input` into at most `outCap` bytes at
    /// `output` as `type` (raw deflate for deflate, zlib and gzip: the
    /// client writes their header and trailer).
    func compress(_ type: ZipSQE.RequestType, level: Int, windowBits: Int, _ input: UnsafeRawPointer, _ inLen: Int,
                  _ output: UnsafeMutableRawPointer, _ outCap: Int) -> Result {
        let produced: Int
        switch type {
        case .deflate, .zlib, .gzip:
            switch deflateEngine {
            case .zlib:
                produced = zlibDeflate(level: level, windowBits: windowBits, input, inLen, output, outCap)
            case .isal:
                produced = (1...3).contains(level)
                    ? isalDeflate(level: level, windowBits: windowBits, input, inLen, output, outCap)
                    : zlibDeflate(level: level, windowBits: windowBits, input, inLen, output, outCap)
            }
        case .zstd:
            produced = zstdCompress(level: level, input, inLen, output, outCap)
        case .lz4:
            produced = lz4Compress(level: level, input, inLen, output, outCap)
        }
        if produced == Self.doesNotFit { return Result(status: .destinationTooSmall) }
        if produced < 0 { return Result(status: .engineError) }
        return Result(status: produced > inLen ? .negativeCompression : .ok, consumed: inLen, produced: produced)
    }

    /// What a compressor returns when the output does not fit the destination.
    static let doesNotFit = -1
    /// What a compressor returns when its library failed otherwise (out of
    /// memory, say): the request fails with an engine error, the engine lives on.
    static let libraryFailed = -2

    /// zlib's deflate: bytes written, or `doesNotFit`.
    private func zlibDeflate(level: Int, windowBits: Int, _ input: UnsafeRawPointer, _ inLen: Int,
                             _ output: UnsafeMutableRawPointer, _ outCap: Int) -> Int {
        let key = level << 4 | windowBits
        let s: UnsafeMutablePointer<z_stream>
        if let existing = zlibDeflaters[key] {
            s = existing
            deflateReset(s)
        } else {
            s = .allocate(capacity: 1)
            s.initialize(to: z_stream())
            guard wd_deflate_init2(s, Int32(level), -Int32(windowBits), 8, Z_DEFAULT_STRATEGY) == Z_OK else {
                s.deallocate()
                return Self.libraryFailed
            }
            zlibDeflaters[key] = s
        }
        s.pointee.next_in = UnsafeMutablePointer(mutating: input.assumingMemoryBound(to: UInt8.self))
        s.pointee.avail_in = UInt32(inLen)
        s.pointee.next_out = output.assumingMemoryBound(to: UInt8.self)
        s.pointee.avail_out = UInt32(outCap)
        let rc = deflate(s, Z_FINISH)
        return rc == Z_STREAM_END ? outCap - Int(s.pointee.avail_out) : Self.doesNotFit
    }

    /// ISA-L's stateless deflate at level 1...3 with a window of at most
    /// 2^windowBits: bytes written, `doesNotFit` or `libraryFailed`.
    private func isalDeflate(level: Int, windowBits: Int, _ input: UnsafeRawPointer, _ inLen: Int,
                             _ output: UnsafeMutableRawPointer, _ outCap: Int) -> Int {
        let s: UnsafeMutablePointer<isal_zstream>
        if let existing = isalStream {
            s = existing
        } else {
            s = .allocate(capacity: 1)
            isalStream = s
        }
        let size = Int(wd_isal_level_buffer_size(Int32(level)))
        if isalLevelBuffers[level] == nil, size > 0 {
            isalLevelBuffers[level] = .allocate(byteCount: size, alignment: 64)
        }
        isal_deflate_stateless_init(s)
        s.pointee.next_in = UnsafeMutablePointer(mutating: input.assumingMemoryBound(to: UInt8.self))
        s.pointee.avail_in = UInt32(inLen)
        s.pointee.next_out = output.assumingMemoryBound(to: UInt8.self)
        s.pointee.avail_out = UInt32(outCap)
        s.pointee.level = UInt32(level)
        s.pointee.level_buf = isalLevelBuffers[level]?.assumingMemoryBound(to: UInt8.self)
        s.pointee.level_buf_size = UInt32(size)
        s.pointee.hist_bits = UInt16(windowBits)
        s.pointee.end_of_stream = 1
        s.pointee.flush = UInt16(NO_FLUSH)
        s.pointee.gzip_flag = UInt16(IGZIP_DEFLATE)
        let rc = isal_deflate_stateless(s)
        if rc == wd_isal_comp_ok() && s.pointee.avail_in == 0 { return Int(s.pointee.total_out) }
        // STATELESS_OVERFLOW: not even stored blocks fit. Other codes mean a
        // bad parameter, which the levels and windows checked before rule out.
        return rc == wd_isal_stateless_overflow() ? Self.doesNotFit : Self.libraryFailed
    }

    /// One zstd frame: bytes written, `doesNotFit` or `libraryFailed`.
    private func zstdCompress(level: Int, _ input: UnsafeRawPointer, _ inLen: Int,
                              _ output: UnsafeMutableRawPointer, _ outCap: Int) -> Int {
        if zstdC == nil { zstdC = ZSTD_createCCtx() }
        guard zstdC != nil else { return Self.libraryFailed }
        let r = ZSTD_compressCCtx(zstdC, output, outCap, input, inLen, Int32(level))
        if ZSTD_isError(r) != 0 { return wd_zstd_error_is_dst_too_small(r) != 0 ? Self.doesNotFit : Self.libraryFailed }
        return r
    }

    /// One lz4 block: the fast compressor at levels 1 and 2, HC at 3...12;
    /// bytes written or `doesNotFit` (lz4's only failure).
    private func lz4Compress(level: Int, _ input: UnsafeRawPointer, _ inLen: Int,
                             _ output: UnsafeMutableRawPointer, _ outCap: Int) -> Int {
        let src = input.assumingMemoryBound(to: CChar.self)
        let dst = output.assumingMemoryBound(to: CChar.self)
        let cap = Int32(min(outCap, Int(Int32.max)))
        let n: Int32
        if level < 3 {
            if lz4State == nil { lz4State = .allocate(byteCount: Int(LZ4_sizeofState()), alignment: 16) }
            n = LZ4_compress_fast_extState(lz4State, src, dst, Int32(inLen), cap, 1)
        } else {
            if lz4HCState == nil { lz4HCState = .allocate(byteCount: Int(LZ4_sizeofStateHC()), alignment: 16) }
            n = LZ4_compress_HC_extStateHC(lz4HCState, src, dst, Int32(inLen), cap, Int32(level))
        }
        return n <= 0 ? Self.doesNotFit : Int(n)
    }

    // MARK: Decompression

    /// Decompresses the whole stream of `inLen` bytes at `input` into at most
    /// `outCap` bytes at `output`. A request is a whole stream (flush
    /// `finish`): input that ends before the stream does is `corruptInput`.
    func decompress(_ type: ZipSQE.RequestType, _ input: UnsafeRawPointer, _ inLen: Int,
                    _ output: UnsafeMutableRawPointer, _ outCap: Int) -> Result {
        switch type {
        case .deflate, .zlib, .gzip:
            switch deflateEngine {
            case .zlib: return zlibInflate(input, inLen, output, outCap)
            case .isal: return libdeflateDecompress(input, inLen, output, outCap)
            }
        case .zstd:
            return zstdDecompress(input, inLen, output, outCap)
        case .lz4:
            return lz4Decompress(input, inLen, output, outCap)
        }
    }

    private func zlibInflate(_ input: UnsafeRawPointer, _ inLen: Int, _ output: UnsafeMutableRawPointer,
                             _ outCap: Int) -> Result {
        let s: UnsafeMutablePointer<z_stream>
        if let existing = zlibInflater {
            s = existing
            inflateReset(s)
        } else {
            s = .allocate(capacity: 1)
            s.initialize(to: z_stream())
            guard wd_inflate_init2(s, -15) == Z_OK else {
                s.deallocate()
                return Result(status: .engineError)
            }
            zlibInflater = s
        }
        s.pointee.next_in = UnsafeMutablePointer(mutating: input.assumingMemoryBound(to: UInt8.self))
        s.pointee.avail_in = UInt32(inLen)
        s.pointee.next_out = output.assumingMemoryBound(to: UInt8.self)
        s.pointee.avail_out = UInt32(outCap)
        let rc = inflate(s, Z_FINISH)
        var r = Result(status: .ok)
        r.consumed = inLen - Int(s.pointee.avail_in)
        r.produced = outCap - Int(s.pointee.avail_out)
        switch rc {
        case Z_STREAM_END:
            r.status = .endOfStream
            r.endOfStream = true
        case Z_BUF_ERROR where s.pointee.avail_out == 0, Z_OK where s.pointee.avail_out == 0:
            r.status = .destinationTooSmall
        case Z_BUF_ERROR, Z_OK:
            r.status = .corruptInput  // the input ends before the end of the stream
        default:
            r.status = .corruptInput
        }
        return r
    }

    private func libdeflateDecompress(_ input: UnsafeRawPointer, _ inLen: Int, _ output: UnsafeMutableRawPointer,
                                      _ outCap: Int) -> Result {
        if libdeflateDecompressor == nil {
            guard let d = libdeflate_alloc_decompressor() else { return Result(status: .engineError) }
            libdeflateDecompressor = d
        }
        var used = 0, written = 0
        let rc = libdeflate_deflate_decompress_ex(libdeflateDecompressor, input, inLen, output, outCap, &used, &written)
        switch rc {
        case LIBDEFLATE_SUCCESS:
            return Result(status: .endOfStream, consumed: used, produced: written, endOfStream: true)
        case LIBDEFLATE_INSUFFICIENT_SPACE:
            return Result(status: .destinationTooSmall)
        default:
            return Result(status: .corruptInput)
        }
    }

    private func zstdDecompress(_ input: UnsafeRawPointer, _ inLen: Int, _ output: UnsafeMutableRawPointer,
                                _ outCap: Int) -> Result {
        if zstdD == nil { zstdD = ZSTD_createDCtx() }
        guard zstdD != nil else { return Result(status: .engineError) }
        let r = ZSTD_decompressDCtx(zstdD, output, outCap, input, inLen)
        if ZSTD_isError(r) != 0 {
            return Result(status: wd_zstd_error_is_dst_too_small(r) != 0 ? .destinationTooSmall : .corruptInput)
        }
        return Result(status: .endOfStream, consumed: inLen, produced: r, endOfStream: true)
    }

    private func lz4Decompress(_ input: UnsafeRawPointer, _ inLen: Int, _ output: UnsafeMutableRawPointer,
                               _ outCap: Int) -> Result {
        let src = input.assumingMemoryBound(to: CChar.self)
        let dst = output.assumingMemoryBound(to: CChar.self)
        guard inLen <= Int(Int32.max) else { return Result(status: .badRequest) }
        let cap = Int32(min(outCap, Int(Int32.max)))
        let n = LZ4_decompress_safe(src, dst, Int32(inLen), cap)
        if n >= 0 { return Result(status: .endOfStream, consumed: inLen, produced: Int(n), endOfStream: true) }
        // lz4 reports one error for both; a block that still decodes to the
        // whole destination when stopped there wants a larger one.
        if cap > 0 && LZ4_decompress_safe_partial(src, dst, Int32(inLen), cap, cap) == cap {
            return Result(status: .destinationTooSmall)
        }
        return Result(status: .corruptInput)
    }

    // MARK: Checksums

    /// Adler-32 (zlib) or CRC-32 (gzip) of `n` bytes at `p`, by the engine's
    /// library: zlib's for the zlib engine, libdeflate's otherwise.
    func checksum(_ type: ZipSQE.RequestType, _ p: UnsafeRawPointer, _ n: Int) -> UInt32 {
        switch (type, deflateEngine) {
        case (.zlib, .zlib): UInt32(adler32(1, p.assumingMemoryBound(to: UInt8.self), UInt32(n)))
        case (.gzip, .zlib): UInt32(crc32(0, p.assumingMemoryBound(to: UInt8.self), UInt32(n)))
        case (.zlib, .isal): libdeflate_adler32(1, p, n)
        case (.gzip, .isal): libdeflate_crc32(0, p, n)
        default: 0
        }
    }
}
