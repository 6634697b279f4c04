// warpdrive-probe: a warpdrived client for the daemon's security tests,
// run as an unprivileged user by Tests/WarpDriveTests/DaemonSecurityTests;
// and the SIGBUS cases of Tests/WarpDriveTests/RevocableMappingTests whose
// right outcome is the process dying.
//
//   warpdrive-probe roundtrip SOCKET INPUT OUTPUT
//       zlib level 1 through the daemon; OUTPUT gets the stream; the daemon
//       decompresses it back and the result is checked ("roundtrip OK").
//   warpdrive-probe fork-exec SOCKET ADDRFILE PROGRAM [ARGS...]
//       opens a queue, forks; this process execs PROGRAM (a set-user-ID
//       program in the test) while the child, holding the connection, waits
//       for "SOURCE LENGTH DESTINATION CAPACITY" in ADDRFILE and asks the
//       daemon to compress the source bytes into the destination, both
//       addresses of the process its queue is bound to (its parent).
//   warpdrive-probe exit-early SOCKET ADDRFILE
//       the same, but this process exits instead (its pid can be reused).
//   warpdrive-probe queues SOCKET N
//       opens N queues on one connection; prints how many it got.
//   warpdrive-probe sigbus guarded
//       maps a memfd of 4 pages, registers it as revocable with stop words at
//       2 pages - 8, truncates the memfd to 0 (every access now raises
//       SIGBUS, as after a device's revocation) and reads it: prints
//       "GUARDED rx=1 tx=1 zeros=yes revocations=1" and exits 0.
//   warpdrive-probe sigbus unguarded
//       registers one truncated mapping (so the handler is installed), then
//       reads a different truncated mapping that is not registered: must
//       die by SIGBUS (prints "TOUCHING" first, "SURVIVED" and exit 3 if not).
//   warpdrive-probe sigbus removed
//       registers a mapping, unregisters it, truncates and reads it: must
//       die by SIGBUS.
//   warpdrive-probe sigbus sent
//       registers a mapping, then sends itself SIGBUS with kill(2): must die
//       by SIGBUS.
//   warpdrive-probe sigbus chained
//       installs its own SIGBUS handler first, then registers a mapping and
//       reads an unregistered truncated one: its handler runs and prints
//       "CHAINED address=yes" (the fault's address), then _exit(7).
//
// Results are lines on stdout: "RESULT ok produced=N" when the daemon
// served the request, "RESULT fault ..." when it failed.
#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpDrive

func say(_ s: String) {
    var line = s + "\n"
    line.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
}

func fail(_ s: String) -> Never {
    say("ERROR " + s)
    exit(2)
}

func readFile(_ path: String) -> [UInt8]? {
    guard let f = fopen(path, "rb") else { return nil }
    defer { fclose(f) }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = fread(&chunk, 1, chunk.count, f)
        if n == 0 { break }
        data += chunk[0..<n]
    }
    return data
}

func session(_ device: RemoteDevice, _ a: CompressionAlgorithm, _ d: Direction) throws -> CompressionSession {
    var c = SessionConfiguration(algorithm: a, direction: d, level: 1)
    c.timeoutMilliseconds = 30_000
    return try CompressionSession(device: device, configuration: c)
}

/// Opens a compressing and a decompressing session, checks them on a small
/// buffer, forks; the parent runs `parent` (exec or exit), the child reads
/// the target address from `addrFile` and submits it.
func forkAndProbe(socket: String, addrFile: String, parent: () -> Never) -> Never {
    do {
        let device = try RemoteDevice(socket: socket)
        let c = try session(device, .deflate, .compress)
        let d = try session(device, .deflate, .decompress)
        let sample = Array("a legitimate request before the fork ".utf8) + [UInt8](repeating: 42, count: 200)
        guard try d.decompress(try c.compress(sample), capacity: sample.count) == sample else { fail("sample round trip") }
        say("READY pid=\(getpid())")
        let child = fork()
        if child < 0 { fail("fork: \(errno)") }
        if child > 0 { parent() }
        // Child: wait for the addresses the harness found in the process
        // now bound to the queue (the exec'd parent, or whoever took its pid).
        var fields: [UInt64] = []
        for _ in 0..<3000 {
            if let text = readFile(addrFile).map({ String(decoding: $0, as: UTF8.self) }) {
                fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
                if fields.count >= 4 { break }
            }
            usleep(10_000)
        }
        guard fields.count >= 4, fields[1] > 0, fields[1] < 1 << 20, fields[3] < 1 << 20 else { fail("no addresses in \(addrFile)") }
        // Source and destination both in that address space: a request the
        // daemon serves reads its memory and writes the result into it.
        let src = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(fields[0])), count: Int(fields[1]))
        let dst = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: UInt(fields[2])), count: Int(fields[3]))
        do {
            let produced = try c.process(src, into: dst)
            say("RESULT ok produced=\(produced)")
        } catch {
            say("RESULT fault \(error)")
        }
        exit(0)
    } catch {
        fail("\(error)")
    }
}

let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

/// A shared mapping of a fresh memfd of `pages` pages filled with 0xAB;
/// `truncate` shrinks the file to 0 so that every access raises SIGBUS.
struct MemfdMapping {
    let fd: Int32
    let base: UnsafeMutableRawPointer
    let length: Int

    init(pages: Int) {
        length = pages * pageSize
        fd = wd_memfd_create("warpdrive-probe-sigbus")
        guard fd >= 0, ftruncate(fd, off_t(length)) == 0 else { fail("memfd: \(errno)") }
        guard let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { fail("mmap: \(errno)") }
        base = p
        memset(base, 0xAB, length)
    }

    func truncate() {
        guard ftruncate(fd, 0) == 0 else { fail("ftruncate: \(errno)") }
    }

    func register(stopOffset: Int) {
        guard wd_revocable_add(base, length, stopOffset) == 0 else { fail("wd_revocable_add: \(errno)") }
    }

    /// The 32-bit word at `offset` (an acquire load the compiler keeps).
    func word(_ offset: Int) -> UInt32 {
        wd_load_acquire_u32((base + offset).assumingMemoryBound(to: UInt32.self))
    }
}

/// The fault address the chained handler saw, for its report.
nonisolated(unsafe) var chainedExpected: UInt = 0

/// The `sigbus` subcommands (see the header).
func sigbusProbe(_ kind: String) -> Never {
    switch kind {
    case "guarded":
        let m = MemfdMapping(pages: 4)
        let stop = 2 * pageSize - 8
        m.register(stopOffset: stop)
        m.truncate()
        let rx = m.word(stop), tx = m.word(stop + 4)
        var zeros = true
        for offset in stride(from: 0, to: m.length, by: 4) where offset != stop && offset != stop + 4 {
            if m.word(offset) != 0 { zeros = false }
        }
        say("GUARDED rx=\(rx) tx=\(tx) zeros=\(zeros ? "yes" : "no") revocations=\(wd_revocable_revocations())")
        exit(0)
    case "unguarded":
        let guarded = MemfdMapping(pages: 1)
        guarded.register(stopOffset: -1)
        let other = MemfdMapping(pages: 2)
        other.truncate()
        say("TOUCHING")
        _ = other.word(pageSize)
        say("SURVIVED")
        exit(3)
    case "removed":
        let m = MemfdMapping(pages: 2)
        m.register(stopOffset: -1)
        wd_revocable_remove(m.base)
        m.truncate()
        say("TOUCHING")
        _ = m.word(0)
        say("SURVIVED")
        exit(3)
    case "sent":
        let m = MemfdMapping(pages: 1)
        m.register(stopOffset: -1)
        say("SENDING")
        kill(getpid(), SIGBUS)
        usleep(100_000)
        say("SURVIVED")
        exit(3)
    case "chained":
        var sa = sigaction()
        sa.__sigaction_handler.sa_sigaction = { _, info, _ in
            let match = UInt(bitPattern: info?.pointee._sifields._sigfault.si_addr) == chainedExpected
            say("CHAINED address=\(match ? "yes" : "no")")
            _exit(7)
        }
        sa.sa_flags = SA_SIGINFO
        sigemptyset(&sa.sa_mask)
        guard sigaction(SIGBUS, &sa, nil) == 0 else { fail("sigaction: \(errno)") }
        let guarded = MemfdMapping(pages: 1)
        guarded.register(stopOffset: -1)
        let other = MemfdMapping(pages: 2)
        other.truncate()
        chainedExpected = UInt(bitPattern: other.base + pageSize)
        say("TOUCHING")
        _ = other.word(pageSize)
        say("SURVIVED")
        exit(3)
    default:
        fail("usage: sigbus guarded|unguarded|removed|sent|chained")
    }
}

var args = Array(CommandLine.arguments.dropFirst())
guard let mode = args.first else { fail("usage: warpdrive-probe MODE SOCKET ...") }
args.removeFirst()
switch mode {
case "roundtrip":
    guard args.count == 3, let input = readFile(args[1]) else { fail("usage: roundtrip SOCKET INPUT OUTPUT") }
    do {
        let device = try RemoteDevice(socket: args[0])
        let c = try session(device, .zlib, .compress)
        let d = try session(device, .zlib, .decompress)
        let z = try c.compress(input)
        guard let f = fopen(args[2], "wb") else { fail("cannot write \(args[2])") }
        _ = z.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
        fclose(f)
        guard try d.decompress(z, capacity: input.count) == input else { fail("decompressed bytes differ") }
        say("roundtrip OK \(input.count) -> \(z.count)")
    } catch {
        fail("\(error)")
    }
case "fork-exec":
    guard args.count >= 3 else { fail("usage: fork-exec SOCKET ADDRFILE PROGRAM [ARGS...]") }
    let program = Array(args[2...])
    forkAndProbe(socket: args[0], addrFile: args[1]) {
        let argv = program.map { strdup($0) } + [nil]
        execv(program[0], argv)
        fail("exec \(program[0]): \(errno)")
    }
case "exit-early":
    guard args.count == 2 else { fail("usage: exit-early SOCKET ADDRFILE") }
    forkAndProbe(socket: args[0], addrFile: args[1]) { _exit(0) }
case "queues":
    guard args.count == 2, let n = Int(args[1]) else { fail("usage: queues SOCKET N") }
    do {
        let device = try RemoteDevice(socket: args[0])
        var held: [any DeviceQueue] = []
        for _ in 0..<n {
            do { held.append(try device.openDeviceQueue()) } catch { say("REFUSED \(error)"); break }
        }
        say("OPENED \(held.count)")
        held.forEach { $0.put() }
    } catch {
        fail("\(error)")
    }
case "sigbus":
    guard args.count == 1 else { fail("usage: sigbus guarded|unguarded|removed|sent|chained") }
    sigbusProbe(args[0])
default:
    fail("unknown mode \(mode)")
}
