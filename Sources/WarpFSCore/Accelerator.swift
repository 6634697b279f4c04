#if canImport(Glibc)
import Glibc
#endif
import WarpDrive

/// Builds the accelerator every part of WarpFS compresses with, from one set
/// of options: the mount, `warpfs compress`/`decompress` and `warpfs fsck`
/// (and `warpfs bench`, through the mounts it starts) all get their device
/// and codec here, so `device=`, `engines=`, `queues=`, `algorithm=` and
/// `level=` mean the same everywhere.
///
/// - no `device=`: a kernel uacce device this client speaks that offers the
///   options' algorithm and has a free queue (`DeviceRegistry`), with the
///   in-process emulated device for the algorithms it lacks (a file's own
///   encoding may be another); without one, the in-process device alone.
/// - `device=emulated`, `fault_injection`, or a setting of the in-process
///   device (`engines=`, `deflate_engine=`, `queues=`): the in-process
///   emulated ZIP device with `engines` engine threads and `queues` queue
///   pairs.
/// - `device=NAME` (no `/`, and `/sys/class/uacce/NAME` exists): that
///   kernel uacce device (`UacceDevice`, the `warpdrive_zip` module), alone.
/// - `device=SOCKET`: a running `warpdrived`, reconnected after a daemon
///   restart (`ReconnectingDevice`); `engines=` and `queues=` are the
///   daemon's business then.
///
/// Callers that need more than queues ask the device for a capability
/// (`FaultInjectingDevice`, `makeBufferPool`), never for its concrete type.
public enum Accelerator {
    /// The devices options lead to, and a line saying which and why.
    public struct Choice {
        /// Where streams go (for the algorithms it offers).
        public let device: any AcceleratorDevice
        /// The in-process device for the algorithms `device` lacks (nil: none).
        public let fallback: (any AcceleratorDevice)?
        /// Which device serves what, for the mount's log.
        public let summary: String
    }

    /// The devices `options` lead to (see the type's description); the
    /// sysfs and device roots are where kernel devices are looked for.
    /// Throws with a message naming the option.
    public static func choose(_ options: MountOptions, sysfsRoot: String = "/sys", devRoot: String = "/dev") throws -> Choice {
        if let name = options.deviceSocket, name != MountOptions.emulatedDevice {
            let d = try named(name, sysfsRoot: sysfsRoot, devRoot: devRoot)
            // Named alone, it must run what new files are written with.
            guard d.offers(options.algorithm) else {
                throw FSError(EINVAL, "option 'device=\(name)': the device does not offer \(options.algorithm) (algorithm=\(options.algorithm)); "
                    + "without device= a mount takes the in-process device for what a kernel device lacks")
            }
            return Choice(device: d, fallback: nil, summary: d is UacceDevice ? "kernel uacce device \(d.name)" : "warpdrived at \(name)")
        }
        let emulated = EmulatedZipDevice(configuration: emulatedConfiguration(options))
        let inProcess = "in-process emulated device, \(options.engines) engines, deflate family by \(options.deflateEngine)"
        if options.deviceSocket != nil || options.faultInjection || !options.inProcessSettings.isEmpty {
            return Choice(device: emulated, fallback: nil, summary: inProcess)
        }
        let registry = DeviceRegistry(emulated: [], sysfsRoot: sysfsRoot, devRoot: devRoot)
        do {
            let kernel = try registry.device(for: options.algorithm)
            return Choice(device: kernel, fallback: emulated,
                          summary: "kernel uacce device \(kernel.name) for what it offers, the \(inProcess) for the rest")
        } catch {
            // Say why a kernel device this client speaks was passed over.
            let spoken = DeviceRegistry.scan(sysfsRoot: sysfsRoot).contains { UacceDevice.supportedAPIs.contains($0.1.api) }
            return Choice(device: emulated, fallback: nil, summary: inProcess + (spoken ? " (no kernel device taken: \(error))" : ""))
        }
    }

    /// The kernel device or daemon `device=NAME` names.
    private static func named(_ name: String, sysfsRoot: String, devRoot: String) throws -> any AcceleratorDevice {
        if !name.contains("/"), access(sysfsRoot + "/class/uacce/" + name, F_OK) == 0 {
            do { return try UacceDevice(name: name, sysfsRoot: sysfsRoot, devRoot: devRoot) } catch {
                throw FSError(EIO, "option 'device=\(name)': \(error)")
            }
        }
        do { return try ReconnectingDevice(socket: name) } catch {
            throw FSError(EIO, "option 'device=\(name)': \(error)")
        }
    }

    /// The in-process device's configuration for `options` (what
    /// `warpfs devices` shows for a mount's defaults).
    public static func emulatedConfiguration(_ options: MountOptions) -> EmulatedDeviceConfiguration {
        var configuration = EmulatedDeviceConfiguration(engines: options.engines)
        configuration.deflateEngine = options.deflateEngine
        // Each file with I/O in flight holds up to two queues (compress and
        // decompress) while it has requests in flight.
        configuration.queues = options.queues
        return configuration
    }

    /// The codec over `device` with the options' level and request
    /// time-out (the algorithm is each file's: its encoding). `poolBuffers` registered buffers of the block size
    /// (0: none, heap buffers only); `space` accounts for dirty blocks (the
    /// mount; nil offline).
    public static func codec(on device: any AcceleratorDevice, fallback: (any AcceleratorDevice)? = nil, _ options: MountOptions,
                             poolBuffers: Int = 0, space: SpaceAccount? = nil) -> BlockCodec {
        BlockCodec(device: device, fallback: fallback, level: options.level,
                   poolBufferSize: options.blockSize, poolBuffers: poolBuffers, space: space,
                   timeoutMilliseconds: options.engineTimeoutSeconds * 1000)
    }

    /// Device and codec in one step, for the offline tools.
    public static func codec(_ options: MountOptions, poolBuffers: Int = 0) throws -> BlockCodec {
        let c = try choose(options)
        return codec(on: c.device, fallback: c.fallback, options, poolBuffers: poolBuffers)
    }
}
