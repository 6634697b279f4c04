#if canImport(Glibc)
import Glibc
#endif
import BenchSupport
import Testing

@Suite struct FilesTests {
    func makeDir() -> String {
        var t = Array("/tmp/bench-support-test-XXXXXX".utf8CString)
        return String(cString: mkdtemp(&t)!)
    }

    @Test func writeFileReplacesTheFile() throws {
        let dir = makeDir()
        defer { unlink(dir + "/f"); rmdir(dir) }
        try writeFile(dir + "/f", "a longer first text\n")
        try writeFile(dir + "/f", "{}\n")
        var buf = [UInt8](repeating: 0, count: 64)
        let fd = open(dir + "/f", O_RDONLY)
        let n = read(fd, &buf, 64)
        close(fd)
        #expect(String(decoding: buf[0..<max(0, n)], as: UTF8.self) == "{}\n")
        #expect(throws: BenchFailure.self) { try writeFile(dir, "x") }
    }

    @Test func directoryNamesLeaveOutDotAndDotDot() throws {
        let dir = makeDir()
        defer { unlink(dir + "/b"); rmdir(dir + "/a"); rmdir(dir) }
        #expect(directoryNames(dir) == [])
        mkdir(dir + "/a", 0o755)
        try writeFile(dir + "/b", "")
        #expect(directoryNames(dir)?.sorted() == ["a", "b"])
        #expect(directoryNames(dir + "/missing") == nil)
    }
}
