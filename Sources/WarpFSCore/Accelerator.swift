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
/// - `device=SOCKET`: a running `warpdrived`, reconnected after a daemon
///   restart (`ReconnectingDevice`); `engines=` and `queues=` are the
///   daemon's business then.
/// - `device=NAME` (no `/`, and `/sys/class/uacce/NAME` exists): that
///   kernel uacce device (`UacceDevice`, the `warpdrive_zip` module).
/// - otherwise the in-process emulated ZIP device with `engines` engine
///   threads and `queues` queue pairs.
///
/// Callers that need more than queues ask the device for a capability
/// (`FaultInjectingDevice`, `makeBufferPool`), never for its concrete type.
public enum Accelerator {
    /// The device `options` name. Throws with a message naming the option.
    public static func device(_ options: MountOptions) throws -> any AcceleratorDevice {
        if let socket = options.deviceSocket {
            if !socket.contains("/"), access("/sys/class/uacce/" + socket, F_OK) == 0 {
                do { return try UacceDevice(name: socket) } catch {
                    throw FSError(EIO, "option 'device=\(socket)': \(error)")
                }
            }
            do { return try ReconnectingDevice(socket: socket) } catch {
                throw FSError(EIO, "option 'device=\(socket)': \(error)")
            }
        }
        return EmulatedZipDevice(configuration: emulatedConfiguration(options))
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
    public static func codec(on device: any AcceleratorDevice, _ options: MountOptions,
                             poolBuffers: Int = 0, space: SpaceAccount? = nil) -> BlockCodec {
        BlockCodec(device: device, level: options.level,
                   poolBufferSize: options.blockSize, poolBuffers: poolBuffers, space: space,
                   timeoutMilliseconds: options.engineTimeoutSeconds * 1000)
    }

    /// Device and codec in one step, for the offline tools.
    public static func codec(_ options: MountOptions, poolBuffers: Int = 0) throws -> BlockCodec {
        codec(on: try device(options), options, poolBuffers: poolBuffers)
    }
}
