#if canImport(Glibc)
import Glibc
#endif
import BenchSupport

// MARK: - Corpus

/// The blocks, and zlib's own stream of each block at the run's level and
/// format, with where the blocks came from.
final class Corpus: @unchecked Sendable {
    struct Source { var name: String; var files: Int; var bytes: Int }

    let blocks: ZlibBlocks
    let sources: [Source]

    var blockSize: Int { blocks.blockSize }
    var count: Int { blocks.count }
    /// Largest compressed stream of a block.
    var maxStream: Int { blocks.maxStream }
    var totalBytes: Int { blocks.totalBytes }
    var streamBytes: Int { blocks.streamBytes }
    var ratio: Double { blocks.ratio }

    func block(_ k: Int) -> UnsafeRawBufferPointer { blocks.block(k) }
    func stream(_ k: Int) -> UnsafeRawBufferPointer { blocks.stream(k) }

    /// Bytes taken from one file at most, so that one big library cannot make up the corpus.
    static let fileCap = 1 << 20

    private init(blocks: ZlibBlocks, sources: [Source]) {
        self.blocks = blocks; self.sources = sources
    }

    static func build(_ s: Settings) throws -> Corpus {
        let blockSize = s.blockSize
        let target = s.corpusBytes / blockSize * blockSize
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: target, alignment: 64)
        var filled = 0
        var sources: [Source] = []
        if !s.syntheticOnly {
            // Sources in this order, files in sorted order within each; each source
            // gets an equal share of what is left, each file at most `fileCap`.
            let kinds: [(String, () -> [String])] = [
                ("/usr/share/dict", { listFiles("/usr/share/dict", recursive: true) { _ in true } }),
                ("/usr/share/doc/**/copyright", { listFiles("/usr/share/doc", recursive: true) { $0 == "copyright" } }),
                ("/usr/lib/x86_64-linux-gnu/*.so*", { listFiles("/usr/lib/x86_64-linux-gnu", recursive: false) { $0.contains(".so") } }),
                ("/usr/bin/*", { listFiles("/usr/bin", recursive: false) { _ in true } }),
            ]
            var seen = Set<UInt64>()   // (dev, inode) hashes: symlinks and hard links are read once
            for (i, (name, list)) in kinds.enumerated() {
                let share = (target - filled) / (kinds.count - i)
                var taken = 0, files = 0
                for path in list() where taken < share {
                    var st = stat()
                    guard stat(path, &st) == 0, st.st_mode & 0o170000 == 0o100000, st.st_size > 0 else { continue }
                    guard seen.insert(UInt64(st.st_dev) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(st.st_ino)).inserted else { continue }
                    let n = readFile(path, into: plain.baseAddress! + filled + taken, limit: min(fileCap, share - taken))
                    if n > 0 { taken += n; files += 1 }
                }
                filled += taken
                sources.append(Source(name: name, files: files, bytes: taken))
            }
        }
        if filled < target {
            fillSynthetic(UnsafeMutableRawBufferPointer(rebasing: plain[filled..<target]))
            sources.append(Source(name: "synthetic (seeded words + random bytes)", files: 0, bytes: target - filled))
        }

        // zlib's stream of every block, checked once: it must inflate back.
        let check = Inflater(algorithm: s.algorithm, capacity: streamCapacity(blockSize))
        let blocks = try ZlibBlocks(taking: plain, blockSize: blockSize,
                                    level: s.level, windowBits: s.algorithm.windowBits) { k, blk, stream in
            if let why = check.mismatch(stream, original: blk) {
                throw BenchFailure("zlib baseline: block \(k) does not inflate back: \(why)")
            }
        }
        return Corpus(blocks: blocks, sources: sources)
    }

    /// ~2:1 compressible data (zlib level 1): words from a small fixed
    /// vocabulary, mixed with runs of random bytes, from a seeded xorshift.
    static func fillSynthetic(_ buf: UnsafeMutableRawBufferPointer) {
        let vocabulary: [[UInt8]] = """
            queue engine block ring doorbell phase completion submission address space the of and a to in is for \
            buffer device request stream window level zlib deflate inflate checksum page fault interrupt thread \
            kernel user memory shared register pool slot tag poll wait busy idle spin core data file header trailer
            """.split(separator: " ").map { Array($0.utf8) }
        let separators: [[UInt8]] = [[0x20], [0x20], [0x20], [0x2c, 0x20], [0x2e, 0x0a], [0x0a]]
        var rng = XorShift(seed: 0x5EED_0F_C0_4B_05)
        var p = 0
        let n = buf.count
        while p < n {
            let r = rng.next()
            if r % 16 < 3 {
                let run = 1 + Int((r >> 8) % 12)
                for _ in 0..<run where p < n { buf[p] = UInt8(truncatingIfNeeded: rng.next() >> 24); p += 1 }
            } else {
                let w = vocabulary[Int((r >> 16) % UInt64(vocabulary.count))]
                let sep = separators[Int((r >> 40) % UInt64(separators.count))]
                for b in w where p < n { buf[p] = b; p += 1 }
                for b in sep where p < n { buf[p] = b; p += 1 }
            }
        }
    }

    func summary(_ s: Settings) -> String {
        var lines: [String] = []
        lines.append("corpus: \(mib(totalBytes)) MiB in \(count) blocks of \(blockSize >> 10) KiB "
            + "(at most \(Corpus.fileCap >> 20) MiB per file, an equal share per source, sorted order):")
        for src in sources {
            lines.append("  " + pad(src.name, 44) + lpad(mib(src.bytes), 7) + " MiB"
                + (src.files > 0 ? "  (\(src.files) files)" : src.name.hasPrefix("synthetic") ? "" : "  (none readable)"))
        }
        var ratios = (0..<count).map { Double(blockSize) / Double(blocks.streamLength($0)) }
        ratios.sort()
        lines.append("  zlib level \(s.level) (\(s.algorithm.rawValue)) ratio \(fmt(ratio, 2)):1 over the blocks "
            + "(per block: min \(fmt(ratios.first!, 2)), median \(fmt(median(ratios), 2)), max \(fmt(ratios.last!, 2)))")
        return lines.joined(separator: "\n")
    }

    var json: JSON {
        .object([
            ("bytes", .int(totalBytes)), ("blocks", .int(count)), ("block_bytes", .int(blockSize)),
            ("compressed_bytes", .int(streamBytes)), ("zlib_ratio", .number(ratio)),
            ("sources", .array(sources.map { .object([("name", .string($0.name)), ("files", .int($0.files)), ("bytes", .int($0.bytes))]) })),
        ])
    }
}
