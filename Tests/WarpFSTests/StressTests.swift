#if canImport(Glibc)
import Glibc
#endif
import Testing

/// A short run of `scripts/stress` (several processes on private and shared
/// files, then verification through the mount and after a remount) against
/// the binary under test.
@Suite(.serialized) struct StressTests {
    /// The repository root: three levels above this file.
    static let repositoryRoot: String = {
        let parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        return parts.dropLast(3).joined(separator: "/")
    }()

    @Test(arguments: ["", "block_size=16k,cache_blocks=8"])
    func shortStressRunPasses(options: String) throws {
        var args = [Self.repositoryRoot + "/scripts/stress", "--seconds", "8", "--procs", "3", "--warpfs", warpfsBinary]
        if !options.isEmpty { args += ["--options", options] }
        let (status, output) = runCommand(args)
        #expect(status == 0, "scripts/stress \(options) exited with \(status):\n\(output)")
    }
}
