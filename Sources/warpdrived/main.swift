// warpdrived: one emulated ZIP accelerator shared by many client processes
// over a Unix socket (see docs/warpdrive.md, "warpdrived").
//
//   warpdrived --socket /run/warpdrive.sock [--engines N] [--queues N]
//              [--socket-mode 0660 --socket-group warpdrive]
//              [--max-clients N] [--max-clients-per-user N] [--max-queues-per-user N]
//   warpdrived --info --socket /run/warpdrive.sock [--json]   (ask a running one)
//
// Runs in the foreground; SIGTERM or SIGINT stops it cleanly (clients'
// queues are reset and released, the socket file is removed).
import ArgumentParser
import WarpDrive
import WarpDriveDaemon
#if canImport(Glibc)
import Glibc
#endif

@main
struct Warpdrived: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "warpdrived",
        abstract: "Serve the emulated ZIP accelerator's queues to other processes over a Unix socket.",
        discussion: """
        Runs in the foreground until SIGTERM or SIGINT, which stop it cleanly: every client's queues are reset and \
        released and the socket file is removed. Clients connect with RemoteDevice(socket:) or, for a WarpFS mount, \
        warpfs mount -o device=SOCKET. With --info it does not serve but prints the report of the warpdrived already \
        serving --socket. See docs/warpdrive.md, "warpdrived".
        """,
        version: Release.version)

    @Option(help: "Path of the Unix socket to listen on.") var socket: String
    @Option(help: "Engine threads of the emulated device.") var engines: Int = 2
    @Option(help: "Queue pairs (instances) the device offers in all.") var queues: Int = 64
    @Option(help: "What compresses deflate, zlib and gzip: isal (ISA-L where it has the level, zlib elsewhere) or zlib (the reference, byte for byte stock zlib's output).")
    var deflateEngine: String = "isal"
    @Option(help: "Ring depth of every queue.") var depth: Int = 1024
    @Option(help: "Mode of the socket file, in octal: who may connect (write permission). Default 0600: the daemon's user only.")
    var socketMode: String = "0600"
    @Option(help: "Group of the socket file (name or number), for a mode such as 0660. Default: the daemon's group.")
    var socketGroup: String?
    @Option(help: "Connections served at once, all users together; each is a thread.") var maxClients: Int = 256
    @Option(help: "Connections one uid may hold at once.") var maxClientsPerUser: Int = 64
    @Option(help: "Queues one uid may hold at once, all its connections together. Default: three quarters of --queues.")
    var maxQueuesPerUser: Int?
    @Flag(help: "Do not serve: print the report of the warpdrived already serving --socket (attributes, queues, clients).")
    var info = false
    @Flag(help: "With --info: print the report as JSON.") var json = false

    func validate() throws {
        guard (1...64).contains(engines) else { throw ValidationError("--engines must be 1...64") }
        guard DeflateEngine(rawValue: deflateEngine) != nil else {
            throw ValidationError("--deflate-engine must be one of " + DeflateEngine.allCases.map(\.rawValue).joined(separator: ", "))
        }
        guard (1...1024).contains(queues) else { throw ValidationError("--queues must be 1...1024") }
        guard depth >= 2 && depth <= 32768 && depth & (depth - 1) == 0 else {
            throw ValidationError("--depth must be a power of two in 2...32768")
        }
        guard !socket.isEmpty, socket.utf8.count < 108 else { throw ValidationError("--socket must be a path of at most 107 bytes") }
        guard let m = UInt32(socketMode, radix: 8), m <= 0o777 else { throw ValidationError("--socket-mode must be octal, at most 0777") }
        if let g = socketGroup, groupID(g) == nil { throw ValidationError("--socket-group: no group \(g)") }
        guard (1...4096).contains(maxClients) else { throw ValidationError("--max-clients must be 1...4096") }
        guard (1...4096).contains(maxClientsPerUser) else { throw ValidationError("--max-clients-per-user must be 1...4096") }
        if let q = maxQueuesPerUser, !(1...1024).contains(q) { throw ValidationError("--max-queues-per-user must be 1...1024") }
    }

    /// A group named or numbered `g`.
    func groupID(_ g: String) -> gid_t? {
        if let n = UInt32(g), n != UInt32.max { return n }
        return getgrnam(g).map { $0.pointee.gr_gid }
    }

    func run() throws {
        if info {
            do {
                let report = try RemoteDevice(socket: socket).report()
                print(json ? report.json(socket: socket) : report.render(socket: socket), terminator: json ? "\n" : "")
            } catch {
                var line = "warpdrived --info: \(error)\n"
                line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
                throw ExitCode(1)
            }
            return
        }
        // Block the stop signals in every thread (engines and clients inherit
        // the mask); this thread takes them with sigwait.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        signal(SIGPIPE, SIG_IGN)

        var c = EmulatedDeviceConfiguration(engines: engines)
        c.deflateEngine = DeflateEngine(rawValue: deflateEngine)!
        c.queues = queues
        c.queueDepth = depth
        var limits = DaemonServer.Limits()
        limits.socketMode = UInt32(socketMode, radix: 8)!
        limits.socketGroup = socketGroup.flatMap(groupID)
        limits.maxClients = maxClients
        limits.maxClientsPerUser = maxClientsPerUser
        limits.maxQueuesPerUser = maxQueuesPerUser
        let server: DaemonServer
        do {
            server = try DaemonServer(socketPath: socket, configuration: c, limits: limits)
        } catch {
            // A runtime failure (socket in use, no permission), not a usage error.
            var line = "warpdrived: \(error)\n"
            line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            throw ExitCode(1)
        }
        final class Box: @unchecked Sendable { let s: DaemonServer; init(_ s: DaemonServer) { self.s = s } }
        var acceptor = pthread_t()
        let box = Unmanaged.passRetained(Box(server))
        pthread_create(&acceptor, nil, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().s.run()
            return nil
        }, box.toOpaque())
        print("warpdrived \(getpid()): \(server.device.name) on \(socket) (mode \(socketMode)"
            + "\(socketGroup.map { ", group \($0)" } ?? "")), \(engines) engines (deflate by \(deflateEngine)), \(queues) queues of depth \(depth); "
            + "at most \(maxClients) connections, \(maxClientsPerUser) per user, "
            + "\(limits.queuesPerUser(device: queues)) queues per user")
        fflush(nil)
        var sig: Int32 = 0
        sigwait(&stopSignals, &sig)
        server.stop()
        pthread_join(acceptor, nil)
        print("warpdrived \(getpid()): stopped on signal \(sig); \(server.device.totals)")
        fflush(nil)
    }
}
