/// zlib (RFC 1950) and gzip (RFC 1952) headers and trailers (raw deflate,
/// zstd and lz4 have none: the device's output is the whole stream). The ZIP
/// hardware emits and consumes raw deflate plus a checksum; the user-space
/// driver writes and strips these, so that the bytes equal zlib's own
/// `deflateInit2` output at the same level (window 32K, memLevel 8).
enum StreamFraming {
    /// Header bytes written before the device's output when compressing.
    static func headerLength(_ a: CompressionAlgorithm) -> Int {
        switch a { case .deflate, .zstd, .lz4: 0; case .zlib: 2; case .gzip: 10 }
    }

    /// Trailer bytes after the device's output.
    static func trailerLength(_ a: CompressionAlgorithm) -> Int {
        switch a { case .deflate, .zstd, .lz4: 0; case .zlib: 4; case .gzip: 8 }
    }

    /// Writes the header zlib's deflate writes for `level` and `windowBits`.
    static func writeHeader(_ a: CompressionAlgorithm, level: Int, windowBits: Int, to p: UnsafeMutableRawPointer) {
        switch a {
        case .deflate, .zstd, .lz4:
            break
        case .zlib:
            let cmf = UInt32((windowBits - 8) << 4 | 8)
            let levelFlags: UInt32 = level < 2 ? 0 : level < 6 ? 1 : level == 6 ? 2 : 3
            var flg = levelFlags << 6
            flg += 31 - (cmf << 8 | flg) % 31
            p.storeBytes(of: UInt8(cmf), as: UInt8.self)
            (p + 1).storeBytes(of: UInt8(flg), as: UInt8.self)
        case .gzip:
            let xfl: UInt8 = level == 9 ? 2 : level < 2 ? 4 : 0
            let bytes: [UInt8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]
            for (i, b) in bytes.enumerated() { (p + i).storeBytes(of: b, as: UInt8.self) }
        }
    }

    /// Writes the trailer for the device's checksum and input size.
    static func writeTrailer(_ a: CompressionAlgorithm, checksum: UInt32, isize: UInt32, to p: UnsafeMutableRawPointer) {
        switch a {
        case .deflate, .zstd, .lz4:
            break
        case .zlib:
            p.storeBytes(of: checksum.bigEndian, as: UInt32.self)
        case .gzip:
            p.storeBytes(of: checksum.littleEndian, as: UInt32.self)
            (p + 4).storeBytes(of: isize.littleEndian, as: UInt32.self)
        }
    }

    /// The parts of a compressed stream: where the raw deflate body is and
    /// what the trailer says.
    struct Parsed {
        var bodyOffset: Int
        var bodyLength: Int
        var checksum: UInt32
        var isize: UInt32
    }

    /// Parses header and trailer of a single-member stream.
    static func parse(_ a: CompressionAlgorithm, _ s: UnsafeRawBufferPointer) throws -> Parsed {
        let n = s.count
        switch a {
        case .deflate, .zstd, .lz4:
            // zstd frames carry their own sizes (and checksum when asked);
            // an lz4 block is the whole request.
            return Parsed(bodyOffset: 0, bodyLength: n, checksum: 0, isize: 0)
        case .zlib:
            guard n >= 6 else { throw WarpDriveError.corruptData("zlib stream of \(n) bytes is shorter than header and trailer") }
            let cmf = UInt32(s[0]), flg = UInt32(s[1])
            guard cmf & 0xf == 8, cmf >> 4 <= 7 else { throw WarpDriveError.corruptData("zlib header: not deflate with a window of at most 32K") }
            guard (cmf << 8 | flg) % 31 == 0 else { throw WarpDriveError.corruptData("zlib header check bits are wrong") }
            guard flg & 0x20 == 0 else { throw WarpDriveError.corruptData("zlib preset dictionaries are not supported") }
            let c = UInt32(s[n - 4]) << 24 | UInt32(s[n - 3]) << 16 | UInt32(s[n - 2]) << 8 | UInt32(s[n - 1])
            return Parsed(bodyOffset: 2, bodyLength: n - 6, checksum: c, isize: 0)
        case .gzip:
            guard n >= 18 else { throw WarpDriveError.corruptData("gzip stream of \(n) bytes is shorter than header and trailer") }
            guard s[0] == 0x1f, s[1] == 0x8b, s[2] == 8 else { throw WarpDriveError.corruptData("gzip header: bad magic or method") }
            let flags = s[3]
            guard flags & 0xe0 == 0 else { throw WarpDriveError.corruptData("gzip header: reserved flag bits set") }
            var i = 10
            let end = n - 8
            if flags & 4 != 0 {  // FEXTRA
                guard i + 2 <= end else { throw WarpDriveError.corruptData("gzip header: truncated extra field") }
                i += 2 + (Int(s[i]) | Int(s[i + 1]) << 8)
            }
            for bit: UInt8 in [8, 16] where flags & bit != 0 {  // FNAME, FCOMMENT
                while i < end && s[i] != 0 { i += 1 }
                i += 1
            }
            if flags & 2 != 0 { i += 2 }  // FHCRC
            guard i <= end else { throw WarpDriveError.corruptData("gzip header runs past the end of the stream") }
            let c = UInt32(s[end]) | UInt32(s[end + 1]) << 8 | UInt32(s[end + 2]) << 16 | UInt32(s[end + 3]) << 24
            let z = UInt32(s[end + 4]) | UInt32(s[end + 5]) << 8 | UInt32(s[end + 6]) << 16 | UInt32(s[end + 7]) << 24
            return Parsed(bodyOffset: i, bodyLength: end - i, checksum: c, isize: z)
        }
    }
}
