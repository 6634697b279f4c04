// warpdrive-codec-bench: every codec of the emulated device through the
// queue against the same codec called directly (Codecs.swift).
//
//   swift build -c release --product warpdrive-codec-bench
//   .build/release/warpdrive-codec-bench [--corpus-mib 128] [--engines 2] [--inflight 4,16]
//       [--seconds 1] [--trials 5] [--only isal-1,zstd-1,...] [--directions compress,decompress]
#if canImport(Glibc)
import Glibc
#endif
import WarpDrive

func warn(_ s: String) {
    let line = s + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

var settings = CodecBenchSettings()
var args = CommandLine.arguments.dropFirst()
@MainActor func value(_ name: String) -> String {
    guard let v = args.popFirst() else { warn("warpdrive-codec-bench: \(name) needs a value"); exit(64) }
    return v
}
func list(_ s: String) -> [String] { s.split(separator: ",").map(String.init) }
while let a = args.popFirst() {
    switch a {
    case "--corpus-mib": settings.corpusBytes = (Int(value(a)) ?? 128) << 20
    case "--engines": settings.engines = Int(value(a)) ?? 2
    case "--inflight": settings.inflight = list(value(a)).compactMap { Int($0) }
    case "--seconds": settings.seconds = Double(value(a)) ?? 1
    case "--trials": settings.trials = Int(value(a)) ?? 5
    case "--only": settings.only = list(value(a))
    case "--sources": settings.sources = list(value(a))
    case "--idle-spin": settings.idleSpinMicroseconds = Int(value(a))
    case "--directions": settings.directions = list(value(a)).map { $0.hasPrefix("d") ? .decompress : .compress }
    default:
        warn("usage: warpdrive-codec-bench [--corpus-mib N] [--engines E] [--inflight N,...] [--seconds S] [--trials T] "
             + "[--only \(CodecBench.all.map(\.name).joined(separator: ","))] [--sources DIR,...] [--directions compress,decompress] [--idle-spin US]")
        exit(a == "--help" || a == "-h" ? 0 : 64)
    }
}
do {
    try runCodecBench(settings)
} catch {
    warn("warpdrive-codec-bench: FAILED: \(error)")
    exit(2)
}
