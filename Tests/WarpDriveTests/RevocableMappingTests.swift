#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import Synchronization
import Testing
@testable import WarpDrive

/// A shared mapping of a memfd of `pages` pages filled with 0xAB whose file
/// can be truncated to 0: every access then raises a real SIGBUS, as after
/// the kernel revoked a device mapping (unmap_mapping_range).
final class TruncatableMapping {
    let fd: Int32
    let mapping: SharedMapping

    init(pages: Int) throws {
        let size = pages * RevocableMappingTests.page
        fd = wd_memfd_create("revocable-test")
        try #require(fd >= 0)
        try #require(ftruncate(fd, off_t(size)) == 0)
        mapping = try SharedMapping(fd: fd, size: size)
        memset(mapping.base, 0xAB, size)
    }

    /// Makes every later access to the mapping raise SIGBUS.
    func revoke() { precondition(ftruncate(fd, 0) == 0) }

    /// The 32-bit word at `offset`, loaded through C so the access happens here.
    func word(_ offset: Int) -> UInt32 {
        wd_load_acquire_u32((mapping.base + offset).assumingMemoryBound(to: UInt32.self))
    }

    /// The file's size (revocation must not write to the file).
    var fileSize: Int {
        var st = stat()
        return fstat(fd, &st) == 0 ? Int(st.st_size) : -1
    }

    deinit { close(fd) }
}

/// How a child process ended.
enum ChildEnd: Equatable {
    case exited(Int32)
    case signaled(Int32)
    case timedOut
}

/// Revocable mappings: a SIGBUS inside a registered mapping replaces it with
/// zero memory and sets its stop words; any other SIGBUS still goes to the
/// previous action. In-process cases use real SIGBUSes on truncated memfd
/// mappings; the cases whose right outcome is death run `warpdrive-probe
/// sigbus ...`. Serialized: the slot table and the revocation counter are
/// process-wide.
@Suite(.serialized) struct RevocableMappingTests {
    static let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let probe = builtProductsDirectory + "/warpdrive-probe"

    /// Where a DUS region's stop words are: the last 8 bytes of its ring part.
    var stopOffset: Int { 2 * Self.page - 8 }

    // MARK: In-process

    @Test func revokedMappingReadsZerosAndStopWordsOne() throws {
        let m = try TruncatableMapping(pages: 4)
        try m.mapping.makeRevocable(stopWordsAt: stopOffset)
        #expect(m.mapping.isRevocable)
        let before = wd_revocable_revocations()
        m.revoke()
        #expect(m.word(0) == 0)
        #expect(wd_revocable_revocations() == before + 1)
        #expect(m.word(stopOffset) == 1)
        #expect(m.word(stopOffset + 4) == 1)
        let others = stride(from: 0, to: m.mapping.size, by: 4).filter { $0 != stopOffset && $0 != stopOffset + 4 }
        #expect(others.allSatisfy { m.word($0) == 0 })
        #expect(wd_revocable_revocations() == before + 1, "later accesses do not fault again")
        #expect(m.fileSize == 0, "the zero memory is private, not the file")
    }

    @Test func revokedMappingWithoutStopWordsReadsZeros() throws {
        let m = try TruncatableMapping(pages: 2)
        try m.mapping.makeRevocable(stopWordsAt: nil)
        let before = wd_revocable_revocations()
        m.revoke()
        #expect(m.mapping.buffer.allSatisfy { $0 == 0 })
        #expect(wd_revocable_revocations() == before + 1)
    }

    @Test func writesAfterRevocationWork() throws {
        let m = try TruncatableMapping(pages: 2)
        try m.mapping.makeRevocable(stopWordsAt: stopOffset)
        let before = wd_revocable_revocations()
        m.revoke()
        // The first access is a write: it faults, the mapping is replaced,
        // and the write lands in the new memory.
        wd_store_release_u32((m.mapping.base + 64).assumingMemoryBound(to: UInt32.self), 0xDEAD_BEEF)
        #expect(wd_revocable_revocations() == before + 1)
        #expect(m.word(64) == 0xDEAD_BEEF)
        #expect(m.word(stopOffset) == 1)
        memset(m.mapping.base + Self.page, 0x5A, Self.page - 8)
        #expect(m.mapping.buffer[Self.page..<(2 * Self.page - 8)].allSatisfy { $0 == 0x5A })
        #expect(m.fileSize == 0)
        var byte: UInt8 = 0
        #expect(pread(m.fd, &byte, 1, 64) == 0, "nothing was written to the file")
        #expect(wd_revocable_revocations() == before + 1)
    }

    @Test func onlyTheFaultingMappingIsReplaced() throws {
        let a = try TruncatableMapping(pages: 2)
        let b = try TruncatableMapping(pages: 2)
        try a.mapping.makeRevocable(stopWordsAt: stopOffset)
        try b.mapping.makeRevocable(stopWordsAt: stopOffset)
        let before = wd_revocable_revocations()
        a.revoke()
        #expect(a.word(8) == 0)
        #expect(a.word(stopOffset) == 1)
        #expect(b.word(8) == 0xABAB_ABAB, "b is still the file's memory")
        #expect(b.word(stopOffset) == 0xABAB_ABAB, "b's stop words were not touched")
        #expect(wd_revocable_revocations() == before + 1)
        b.revoke()
        #expect(b.word(8) == 0)
        #expect(b.word(stopOffset + 4) == 1)
        #expect(wd_revocable_revocations() == before + 2)
    }

    @Test func concurrentFaultsReplaceOnce() throws {
        let m = try TruncatableMapping(pages: 8)
        try m.mapping.makeRevocable(stopWordsAt: stopOffset)
        let before = wd_revocable_revocations()
        m.revoke()
        let threads = 8
        let arrived = Atomic<Int>(0)
        let nonZero = Atomic<Int>(0)
        let base = UInt(bitPattern: m.mapping.base)
        let size = m.mapping.size
        let stop = stopOffset
        runThreads(threads) { i in
            arrived.add(1, ordering: .acquiringAndReleasing)
            while arrived.load(ordering: .acquiring) < threads { wd_cpu_relax() }
            let p = UnsafeMutableRawPointer(bitPattern: base)!
            for offset in stride(from: (i * 4) % Self.page, to: size, by: Self.page) where offset != stop && offset != stop + 4 {
                if wd_load_acquire_u32((p + offset).assumingMemoryBound(to: UInt32.self)) != 0 {
                    nonZero.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(nonZero.load(ordering: .relaxed) == 0)
        #expect(wd_revocable_revocations() == before + 1, "one replacement however many threads faulted")
        #expect(m.word(stopOffset) == 1 && m.word(stopOffset + 4) == 1)
    }

    @Test func slotsCanBeRemovedAndAddedAgain() throws {
        let m = try TruncatableMapping(pages: 2)
        let base = m.mapping.base, size = m.mapping.size
        #expect(wd_revocable_add(base, size, -1) == 0)
        #expect(wd_revocable_add(base, size, -1) == -1 && errno == EEXIST, "a range is registered once")
        #expect(wd_revocable_add(base + Self.page, Self.page, -1) == -1 && errno == EEXIST, "ranges do not overlap")
        wd_revocable_remove(base)
        wd_revocable_remove(base)   // a second remove is a no-op
        #expect(wd_revocable_add(base, size, Int(stopOffset)) == 0)
        wd_revocable_remove(base)

        // Through SharedMapping: registered once; the slot comes back on deinit.
        try m.mapping.makeRevocable(stopWordsAt: stopOffset)
        #expect(throws: WarpDriveError.self) { try m.mapping.makeRevocable(stopWordsAt: nil) }
        let before = wd_revocable_revocations()
        m.revoke()
        #expect(m.word(0) == 0 && m.word(stopOffset) == 1)
        #expect(wd_revocable_revocations() == before + 1)
        for _ in 0..<(2 * Int(WD_REVOCABLE_SLOTS)) {
            let other = try TruncatableMapping(pages: 1)
            try other.mapping.makeRevocable(stopWordsAt: nil)
        }
    }

    @Test func fullTableRefusesWithENOSPC() throws {
        let slots = Int(WD_REVOCABLE_SLOTS)
        let length = (slots + 1) * Self.page
        let region = try #require(mmap(nil, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(region != MAP_FAILED)
        defer { munmap(region, length) }
        var added = 0
        var error: Int32 = 0
        for i in 0...slots {
            if wd_revocable_add(region + i * Self.page, Self.page, -1) == 0 { added += 1 } else { error = errno; break }
        }
        #expect(added == slots)
        #expect(error == ENOSPC)
        wd_revocable_remove(region)
        #expect(wd_revocable_add(region + slots * Self.page, Self.page, -1) == 0, "a removed slot is free again")
        for i in 1...slots { wd_revocable_remove(region + i * Self.page) }
        #expect(wd_revocable_add(region, Self.page, -1) == 0)
        wd_revocable_remove(region)
    }

    @Test func badArgumentsAreRefused() throws {
        let m = try TruncatableMapping(pages: 2)
        let base = m.mapping.base, size = m.mapping.size
        func refused(_ b: UnsafeMutableRawPointer, _ l: Int, _ stop: Int) -> Bool {
            errno = 0
            return wd_revocable_add(b, l, stop) == -1 && errno == EINVAL
        }
        #expect(refused(base, size, size - 7), "stop words past the end")
        #expect(refused(base, size, size), "stop words past the end")
        #expect(refused(base, size, -2))
        #expect(refused(base, size, 2), "stop words not 4-byte aligned")
        #expect(refused(base + 8, Self.page, -1), "base not page-aligned")
        #expect(refused(base, Self.page + 8, -1), "length not a multiple of the page")
        #expect(refused(base, 0, -1), "empty range")
        #expect(wd_revocable_add(base, size, size - 8) == 0, "the last 8 bytes are fine")
        wd_revocable_remove(base)
        do {
            try m.mapping.makeRevocable(stopWordsAt: size - 4)
            Issue.record("a stop offset 4 bytes from the end was accepted")
        } catch WarpDriveError.system(_, let e) {
            #expect(e == EINVAL)
        }
        #expect(!m.mapping.isRevocable)
        try m.mapping.makeRevocable(stopWordsAt: size - 8)
        #expect(m.mapping.isRevocable)
    }

    // MARK: Child processes (the right outcome may be death)

    /// Runs `warpdrive-probe sigbus KIND` with SIGBUS at its default action
    /// and `SWIFT_BACKTRACE=backtrace`; returns how it ended and its output.
    func runProbe(_ kind: String, backtrace: String = "enable=no") throws -> (end: ChildEnd, output: String) {
        var template = Array("/tmp/warpdrive-sigbus-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        try #require(fd >= 0)
        close(fd)
        let outputPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { unlink(outputPath) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_TRUNC, 0)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        wd_spawn_close_from(&actions, 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), bus = sigset_t()
        sigemptyset(&none)
        sigemptyset(&bus)
        sigaddset(&bus, SIGBUS)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &bus)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var environment: [String] = []
        var e = environ
        while let entry = e.pointee {
            let s = String(cString: entry)
            if !s.hasPrefix("SWIFT_BACKTRACE=") { environment.append(s) }
            e += 1
        }
        environment.append("SWIFT_BACKTRACE=" + backtrace)
        let arguments: [String] = [probe, "sigbus", kind]
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, probe, &actions, &attr, argv, envp)
        try #require(rc == 0, "posix_spawn \(probe): \(rc)")

        var end = ChildEnd.timedOut
        let deadline = wd_now_ns() + 60_000_000_000
        while true {
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                let low = st & 0x7f
                end = low == 0 ? .exited((st >> 8) & 0xff) : .signaled(low)
                break
            }
            if wd_now_ns() >= deadline {
                kill(pid, SIGKILL)
                waitpid(pid, nil, 0)
                break
            }
            usleep(5_000)
        }
        return (end, readFile(outputPath) ?? "")
    }

    @Test func guardedChildSurvivesRevocation() throws {
        let r = try runProbe("guarded")
        #expect(r.end == .exited(0), "\(r.output)")
        #expect(r.output.contains("GUARDED rx=1 tx=1 zeros=yes revocations=1"), "\(r.output)")
    }

    @Test func unregisteredMappingStillDiesBySIGBUS() throws {
        let r = try runProbe("unguarded")
        #expect(r.end == .signaled(SIGBUS), "\(r.output)")
        #expect(r.output.contains("TOUCHING") && !r.output.contains("SURVIVED"), "\(r.output)")
    }

    @Test func unregisteredMappingDiesBySIGBUSAfterSwiftBacktrace() throws {
        let r = try runProbe("unguarded", backtrace: "enable=yes,interactive=no,symbolicate=off,timeout=20s")
        #expect(r.end == .signaled(SIGBUS), "\(r.output)")
        // The runtime's handler ran and its backtracer finished: it reads
        // memory through a thread that must be able to catch its own SIGBUS.
        #expect(r.output.contains("Program crashed: Bus error"), "\(r.output)")
        #expect(!r.output.contains("SURVIVED"), "\(r.output)")
    }

    @Test func removedMappingStillDiesBySIGBUS() throws {
        let r = try runProbe("removed")
        #expect(r.end == .signaled(SIGBUS), "\(r.output)")
        #expect(!r.output.contains("SURVIVED"), "\(r.output)")
    }

    @Test func sentSIGBUSStillKills() throws {
        let r = try runProbe("sent")
        #expect(r.end == .signaled(SIGBUS), "\(r.output)")
        #expect(!r.output.contains("SURVIVED"), "\(r.output)")
    }

    @Test func previousHandlerIsChained() throws {
        let r = try runProbe("chained")
        #expect(r.end == .exited(7), "\(r.output)")
        #expect(r.output.contains("CHAINED address=yes"), "\(r.output)")
    }
}
