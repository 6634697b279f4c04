import ArgumentParser
import WarpDrive
import WarpDriveDaemon
import WarpFSCore

/// `warpfs devices`: the accelerator devices this host offers with their
/// attributes, or one `warpdrived`'s device with live counters per queue and
/// per client (in the spirit of `uadk_tool` and `accel-config`).
struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List accelerator devices and their attributes, or a warpdrived's queues and clients.",
        discussion: """
        Without --device: the devices the registry knows on this host, the in-process emulated ZIP device \
        (as a mount would create it with default settings) and any uacce devices under /sys/class/uacce \
        (a mount without device= takes one whose api this client speaks, for the algorithms it offers). \
        With --device SOCKET: the attributes of that warpdrived's device, its totals, and tables of its open \
        queues and connected clients with their live counters (this command's own connection is one of \
        the clients).
        """)

    @Option(help: "Ask the warpdrived listening on this Unix socket.") var device: String?
    @Flag(help: "Print JSON instead of text.") var json = false
    @Option(help: .hidden) var sysfs = "/sys"

    func run() throws {
        if let socket = device {
            let report: DaemonReport
            do {
                report = try RemoteDevice(socket: socket).report()
            } catch {
                eprint("warpfs devices: \(error)")
                throw ExitCode(1)
            }
            print(json ? report.json(socket: socket) : report.render(socket: socket), terminator: json ? "\n" : "")
            return
        }
        // The device a mount creates with its default options.
        let emulated = EmulatedZipDevice(configuration: Accelerator.emulatedConfiguration(MountOptions()))
        defer { emulated.shutdown() }
        let registry = DeviceRegistry(emulated: [emulated], sysfsRoot: sysfs)
        var texts: [String] = []
        var objects: [String] = []
        for entry in registry.devices {
            let a = entry.attributes
            if let e = entry.emulated {
                let kind = "emulated, in-process"
                texts.append(ReportRendering.attributes(a, kind: kind, totalQueues: e.configuration.queues,
                                                        engines: e.configuration.engines))
                objects.append(ReportRendering.attributesJSON(a, kind: "emulated", totalQueues: e.configuration.queues,
                                                              engines: e.configuration.engines))
            } else {
                let path = entry.sysfsPath ?? ""
                // A device this client speaks is what a mount without device=
                // takes when it has the algorithm and a free queue (Accelerator.choose).
                let spoken = UacceDevice.supportedAPIs.contains(a.api)
                let use = spoken ? "a mount without device= may take it for what it offers" : "listed only"
                texts.append(ReportRendering.attributes(a, kind: "uacce, \(path); \(use)", totalQueues: nil, engines: nil))
                objects.append(ReportRendering.attributesJSON(a, kind: "uacce", totalQueues: nil, engines: nil,
                                                              extra: [("sysfs", ReportRendering.string(path)), ("driven", spoken ? "true" : "false")]))
            }
        }
        if json {
            print("{\"devices\":[" + objects.joined(separator: ",") + "]}")
        } else {
            print(texts.joined(separator: "\n"), terminator: "")
        }
    }
}
