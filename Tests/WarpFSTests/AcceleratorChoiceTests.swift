#if canImport(Glibc)
import Glibc
#endif
import Testing
import WarpDrive
@testable import WarpFSCore

/// Which device a mount compresses with (`Accelerator.choose`): a kernel
/// uacce device this client speaks when one offers the mount's algorithm
/// and has a free queue, the in-process device for what it lacks, and the
/// in-process device alone otherwise or when asked. A fixture sysfs tree
/// stands in for `/sys` (the VM test runs the real device: kernel/README.md).
@Suite struct AcceleratorChoiceTests {
    /// A sysfs and /dev fixture with one uacce device.
    final class Fixture {
        let root = makeTempDir("warpfs-choice")
        var sysfs: String { root + "/sys" }
        var dev: String { root + "/dev" }

        init(api: String = DeviceAttributes.apiWarpDriveZip, algorithms: String = "deflate\nzlib\ngzip\n", instances: Int = 4) throws {
            let d = sysfs + "/class/uacce/warpdrive_zip-0"
            #expect(runCommand(["/bin/mkdir", "-p", d, dev]).status == 0)
            try FileIO.write(d + "/api", Array((api + "\n").utf8))
            try FileIO.write(d + "/flags", Array("0\n".utf8))
            try FileIO.write(d + "/algorithms", Array(algorithms.utf8))
            try FileIO.write(d + "/available_instances", Array("\(instances)\n".utf8))
            try FileIO.write(d + "/region_mmio_size", Array("8192\n".utf8))
            try FileIO.write(d + "/region_dus_size", Array("4345856\n".utf8))
            try FileIO.write(dev + "/warpdrive_zip-0", [])
        }

        func choose(_ options: String) throws -> Accelerator.Choice {
            let o = try MountOptions(lists: options.isEmpty ? [] : [options])
            return try Accelerator.choose(o, sysfsRoot: sysfs, devRoot: dev)
        }

        func close() { removeTree(root) }
    }

    /// One request of a stream: a buffer in, a buffer out.
    struct One: BlockRequest {
        let engineInput: UnsafeRawBufferPointer
        let engineOutput: UnsafeMutableRawBufferPointer
    }

    static func shutdown(_ c: Accelerator.Choice) {
        c.device.shutdown()
        c.fallback?.shutdown()
    }

    @Test func aKernelDeviceThatFitsIsTakenWithTheInProcessOneForTheRest() throws {
        let f = try Fixture()
        defer { f.close() }
        let c = try f.choose("")
        defer { AcceleratorChoiceTests.shutdown(c) }
        #expect((c.device as? UacceDevice)?.devicePath == f.dev + "/warpdrive_zip-0")
        #expect(c.fallback is EmulatedZipDevice)
        #expect(c.summary.hasPrefix("kernel uacce device warpdrive_zip-0"), "\(c.summary)")
        // A file's own encoding decides per stream.
        let codec = Accelerator.codec(on: c.device, fallback: c.fallback, try MountOptions(lists: []))
        #expect(codec.device(for: .deflate) === c.device)
        #expect(codec.device(for: .gzip) === c.device)
        #expect(codec.device(for: .zstd) === c.fallback!)
        #expect(codec.device(for: .lz4) === c.fallback!)
    }

    @Test func aMountWhoseAlgorithmTheDeviceLacksStaysInProcess() throws {
        let f = try Fixture()
        defer { f.close() }
        let c = try f.choose("algorithm=zstd")
        defer { AcceleratorChoiceTests.shutdown(c) }
        #expect(c.device is EmulatedZipDevice)
        #expect(c.fallback == nil)
        #expect(c.summary.contains("warpdrive_zip-0 lacks zstd"), "\(c.summary)")
    }

    @Test func noFreeQueueNoNodeOrAnotherApiLeaveTheInProcessDevice() throws {
        for (fixture, why) in [(try Fixture(instances: 0), "no free queue"), (try Fixture(api: "hisi_qm_v2"), "")] {
            defer { fixture.close() }
            let c = try fixture.choose("")
            defer { AcceleratorChoiceTests.shutdown(c) }
            #expect(c.device is EmulatedZipDevice && c.fallback == nil)
            #expect(why.isEmpty ? !c.summary.contains("kernel") : c.summary.contains(why), "\(c.summary)")
        }
        let f = try Fixture()
        defer { f.close() }
        unlink(f.dev + "/warpdrive_zip-0")
        let c = try f.choose("")
        defer { AcceleratorChoiceTests.shutdown(c) }
        #expect(c.device is EmulatedZipDevice && c.summary.contains("no usable"), "\(c.summary)")
    }

    /// Named alone, a kernel device serves every stream: a mount whose
    /// algorithm it lacks is refused, and a file of another encoding gets
    /// a clear "not offered" (fsck: no verdict; a reader: EIO), never a
    /// malformed request that would read as damage.
    @Test func aKernelDeviceNamedAloneServesOnlyWhatItOffers() throws {
        let f = try Fixture()
        defer { f.close() }
        #expect(throws: FSError.self) { _ = try f.choose("device=warpdrive_zip-0,algorithm=zstd") }
        do { _ = try f.choose("device=warpdrive_zip-0,algorithm=lz4"); Issue.record("lz4 on a device without it was accepted") } catch let e as FSError {
            #expect(e.errno == EINVAL && e.message.contains("does not offer lz4"), "\(e)")
        }
        let c = try f.choose("device=warpdrive_zip-0")
        #expect(c.device is UacceDevice && c.fallback == nil)
        let codec = Accelerator.codec(on: c.device, fallback: c.fallback, try MountOptions(lists: []))
        do {
            _ = try codec.stream(.decompress, algorithm: .zstd, capacity: 1, of: One.self)
            Issue.record("a zstd stream on a device without zstd")
        } catch let e as WarpDriveError {
            #expect(RetryPolicy.saysNothingOfTheData(e) && "\(e)".contains("does not offer zstd"), "\(e)")
        }
    }

    /// A kernel device the mount took by itself that has gone (its node
    /// removed: `open` fails as after `rmmod`): the next stream goes to
    /// the in-process device instead of failing.
    @Test func aStreamGoesInProcessWhenTheChosenKernelDeviceIsGone() throws {
        let f = try Fixture()
        defer { f.close() }
        let c = try f.choose("")
        defer { AcceleratorChoiceTests.shutdown(c) }
        #expect(c.device is UacceDevice)
        unlink(f.dev + "/warpdrive_zip-0")
        let codec = Accelerator.codec(on: c.device, fallback: c.fallback, try MountOptions(lists: []), poolBuffers: 8)
        let s = try codec.stream(.compress, algorithm: .deflate, capacity: 1, of: One.self)
        #expect(s.session.device === c.fallback!)
        // And it compresses there.
        let input = Array(repeating: UInt8(ascii: "w"), count: 4096)
        let output = codec.takeBuffer(4096)
        try input.withUnsafeBytes { src in
            try s.submit(One(engineInput: src, engineOutput: output.bytes))
            let done = s.reap(minimum: 1)
            guard case .success(let n)? = done.first?.result else { Issue.record("\(done.map(\.result))"); return }
            #expect(n > 0 && n < 100)
        }
        codec.recycle(s)
    }

    @Test func emulatedFaultInjectionOrInProcessSettingsAskForTheInProcessDevice() throws {
        let f = try Fixture()
        defer { f.close() }
        for options in ["device=emulated", "fault_injection", "device=emulated,fault_injection", "engines=4", "deflate_engine=zlib", "queues=64"] {
            let c = try f.choose(options)
            defer { AcceleratorChoiceTests.shutdown(c) }
            #expect(c.device is FaultInjectingDevice && c.fallback == nil, "\(options)")
            #expect(c.summary.hasPrefix("in-process emulated device"), "\(options): \(c.summary)")
        }
    }
}
