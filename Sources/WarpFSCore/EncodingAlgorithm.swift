import WarpDrive
import WarpFSFormat

/// The one mapping between the format's block encodings and the
/// accelerator's stream formats (used by the file system, `fsck` and the
/// mount options). It lives here, not in `WarpFSFormat`, because the format
/// module knows nothing of WarpDrive.
extension BlockEncoding {
    /// The stream format a compressed encoding is decoded with; nil for
    /// `raw` and `zero`, which no engine decodes.
    var algorithm: CompressionAlgorithm? {
        switch self {
        case .deflate: .deflate
        case .zlib: .zlib
        case .gzip: .gzip
        case .zstd: .zstd
        case .lz4: .lz4
        case .raw, .zero: nil
        }
    }

    /// The encoding the format records for blocks compressed with `algorithm`.
    init(_ algorithm: CompressionAlgorithm) {
        switch algorithm {
        case .deflate: self = .deflate
        case .zlib: self = .zlib
        case .gzip: self = .gzip
        case .zstd: self = .zstd
        case .lz4: self = .lz4
        }
    }
}
