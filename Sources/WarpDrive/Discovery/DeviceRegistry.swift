#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CWarpSys

/// Lists accelerator devices: the emulated ZIP device(s) this process runs,
/// and real uacce devices found under `<sysfsRoot>/class/uacce`.
///
/// `device(for:)` prefers a uacce device whose `api` this client speaks
/// (`UacceDevice.supportedAPIs`: this project's `warpdrive_zip` module) and
/// whose node exists, then the emulated devices. Other uacce devices (e.g. a
/// HiSilicon `hisi_qm_v2` device) are listed, not driven.
public final class DeviceRegistry: Sendable {
    /// One listed device.
    public struct Entry: Sendable {
        /// The device's attributes (live for emulated devices, read once for sysfs ones).
        public var attributes: DeviceAttributes
        /// The emulated device, or nil for a real uacce device.
        public var emulated: EmulatedZipDevice?
        /// The sysfs directory of a real device.
        public var sysfsPath: String?
    }

    private let emulated: [EmulatedZipDevice]
    /// Where sysfs is mounted (a fixture tree in tests).
    public let sysfsRoot: String
    /// Where device nodes are (`/dev`).
    public let devRoot: String

    /// A registry with the given emulated devices (empty to disable
    /// emulation) and real devices read from `sysfsRoot`.
    public init(emulated: [EmulatedZipDevice], sysfsRoot: String = "/sys", devRoot: String = "/dev") {
        self.emulated = emulated
        self.sysfsRoot = sysfsRoot
        self.devRoot = devRoot
    }

    /// A registry with one emulated ZIP device built from `configuration`.
    public convenience init(configuration: EmulatedDeviceConfiguration = .init(), sysfsRoot: String = "/sys") {
        self.init(emulated: [EmulatedZipDevice(configuration: configuration)], sysfsRoot: sysfsRoot)
    }

    /// Every device: emulated first, then uacce devices from sysfs by name.
    public var devices: [Entry] {
        emulated.map { Entry(attributes: $0.attributes, emulated: $0, sysfsPath: nil) }
            + DeviceRegistry.scan(sysfsRoot: sysfsRoot).map { Entry(attributes: $0.1, emulated: nil, sysfsPath: $0.0) }
    }

    /// The first drivable, non-isolated device offering `algorithm` with a
    /// free instance: a uacce device this client speaks first, then the
    /// emulated ones.
    public func device(for algorithm: CompressionAlgorithm) throws -> any AcceleratorDevice {
        var reasons: [String] = []
        for (path, a) in DeviceRegistry.scan(sysfsRoot: sysfsRoot) {
            guard UacceDevice.supportedAPIs.contains(a.api) else { continue }
            if a.isolated { reasons.append("\(a.name) is isolated"); continue }
            if !a.algorithms.contains(algorithm.rawValue) { reasons.append("\(a.name) lacks \(algorithm)"); continue }
            if (a.availableInstances ?? 0) == 0 { reasons.append("\(a.name) has no free queue"); continue }
            if access(devRoot + "/" + a.name, R_OK | W_OK) != 0 { reasons.append("\(a.name) has no usable \(devRoot)/\(a.name)"); continue }
            if let d = try? UacceDevice(sysfsPath: path, devRoot: devRoot) { return d }
        }
        for d in emulated {
            let a = d.attributes
            if a.isolated { reasons.append("\(a.name) is isolated"); continue }
            if !a.algorithms.contains(algorithm.rawValue) { reasons.append("\(a.name) lacks \(algorithm)"); continue }
            if (a.availableInstances ?? 0) == 0 { reasons.append("\(a.name) has no free queue"); continue }
            return d
        }
        throw WarpDriveError.noDevice(reasons.isEmpty ? "no uacce device this client speaks and no emulated device is enabled" : reasons.joined(separator: "; "))
    }

    /// Reads `<root>/class/uacce/*/` attributes. Unreadable attributes are
    /// left nil or default; a device without `api` is skipped.
    public static func scan(sysfsRoot: String) -> [(String, DeviceAttributes)] {
        let dir = sysfsRoot + "/class/uacce"
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = String(cString: wd_dirent_name(e))
            if name.hasPrefix(".") { continue }
            names.append(name)
        }
        return names.sorted().compactMap { name in
            let path = dir + "/" + name
            return readAttributes(sysfsPath: path).map { (path, $0) }
        }
    }

    /// The attributes of the uacce device whose sysfs directory is
    /// `sysfsPath` (`.../class/uacce/<name>`), or nil without an `api`.
    public static func readAttributes(sysfsPath path: String) -> DeviceAttributes? {
        let name = String(path.split(separator: "/").last ?? "")
        func read(_ attr: DeviceAttributes.File) -> String? {
            guard let f = fopen(path + "/" + attr.rawValue, "r") else { return nil }
            defer { fclose(f) }
            var buf = [CChar](repeating: 0, count: 4096)
            let n = fread(&buf, 1, buf.count - 1, f)
            let bytes = buf[0..<n].map { UInt8(bitPattern: $0) }
            return String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: " \n\t")
        }
        guard let api = read(.api), !api.isEmpty else { return nil }
        return DeviceAttributes(
            name: name, api: api, flags: read(.flags).flatMap { UInt32($0) } ?? 0,
            algorithms: (read(.algorithms) ?? "").split(whereSeparator: { $0 == "\n" || $0 == " " }).map(String.init),
            availableInstances: read(.availableInstances).flatMap { Int($0) },
            queueDepth: nil,
            regionMMIOSize: read(.regionMMIOSize).flatMap { Int($0) },
            regionDUSSize: read(.regionDUSSize).flatMap { Int($0) },
            isolated: read(.isolate) == "1",
            isolateStrategy: read(.isolateStrategy).flatMap { Int($0) } ?? 0,
            numaNode: read(.numaNode).flatMap { Int($0) } ?? -1)
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = Substring(self)
        while let f = s.first, chars.contains(f) { s = s.dropFirst() }
        while let l = s.last, chars.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
