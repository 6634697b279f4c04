#if canImport(Glibc)
import Glibc
#endif
import BenchSupport

/// Runs `args` (an absolute path first) to completion and returns its exit
/// code (128 + the signal when a signal ended it) and what it wrote to
/// stdout and stderr together. The child gets no descriptors but 0-2 and
/// no blocked signals (`runCapturing`, shared with the benchmarks).
public func runCommand(_ args: [String]) -> (status: Int32, output: String) {
    let r = runCapturing(args[0], Array(args.dropFirst()))
    return (r.status, r.output)
}
