#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import WarpDrive

@Suite struct DiscoveryTests {
    func write(_ path: String, _ text: String) {
        let f = fopen(path, "w")!
        fputs(text, f)
        fclose(f)
    }

    @Test func readsUacceAttributesFromAFixtureTree() throws {
        var template = Array("/tmp/warpdrive-sysfs-XXXXXX".utf8CString)
        let root = String(cString: mkdtemp(&template)!)
        defer { _ = system("rm -rf '\(root)'") }
        for (name, isolate) in [("hisi_zip-0", "0"), ("hisi_zip-1", "1")] {
            let d = root + "/class/uacce/" + name
            _ = system("mkdir -p '\(d)/device'")
            write(d + "/api", "hisi_qm_v2\n")
            write(d + "/flags", "1\n")
            write(d + "/algorithms", "zlib\ngzip\n")
            write(d + "/available_instances", "254\n")
            write(d + "/region_mmio_size", "8192\n")
            write(d + "/region_dus_size", "151552\n")
            write(d + "/isolate", isolate + "\n")
            write(d + "/isolate_strategy", "10\n")
            write(d + "/device/numa_node", "1\n")
        }
        _ = system("mkdir -p '\(root)/class/uacce/broken'")  // no api: skipped
        let found = DeviceRegistry.scan(sysfsRoot: root)
        #expect(found.map(\.1.name) == ["hisi_zip-0", "hisi_zip-1"])
        let a = found[0].1
        #expect(a.api == "hisi_qm_v2" && a.supportsSVA && a.algorithms == ["zlib", "gzip"])
        #expect(a.availableInstances == 254 && a.regionDUSSize == 151552 && a.numaNode == 1)
        #expect(!a.isolated && a.isolateStrategy == 10)
        #expect(found[1].1.isolated)

        try withDevice { device throws in
            let registry = DeviceRegistry(emulated: [device], sysfsRoot: root)
            let all = registry.devices
            #expect(all.map(\.attributes.name) == [device.name, "hisi_zip-0", "hisi_zip-1"])
            #expect(all[0].attributes.api == "hisi_qm_v2" && all[0].attributes.availableInstances == 64)
            // Real devices are listed, not driven: selection returns the emulated one.
            let chosen = try registry.device(for: .gzip)
            #expect(chosen === device)
        }
        #expect(DeviceRegistry(emulated: [], sysfsRoot: root).devices.count == 2)
        #expect(throws: WarpDriveError.self) { _ = try DeviceRegistry(emulated: [], sysfsRoot: root).device(for: .zlib) }
    }

    @Test func prefersAUacceDeviceThisClientSpeaks() throws {
        var template = Array("/tmp/warpdrive-sysfs-XXXXXX".utf8CString)
        let root = String(cString: mkdtemp(&template)!)
        defer { _ = system("rm -rf '\(root)'") }
        func device(_ name: String, api: String, instances: Int) {
            let d = root + "/class/uacce/" + name
            _ = system("mkdir -p '\(d)' '\(root)/dev'")
            write(d + "/api", api + "\n")
            write(d + "/flags", "0\n")
            write(d + "/algorithms", "deflate zlib gzip\n")
            write(d + "/available_instances", "\(instances)\n")
            write(d + "/region_mmio_size", "8192\n")
            write(d + "/region_dus_size", "4345856\n")
            write(root + "/dev/" + name, "")
        }
        device("hisi_zip-0", api: "hisi_qm_v2", instances: 4)
        device("warpdrive_zip-0", api: DeviceAttributes.apiWarpDriveZip, instances: 4)
        try withDevice { emulated throws in
            let registry = DeviceRegistry(emulated: [emulated], sysfsRoot: root, devRoot: root + "/dev")
            let chosen = try registry.device(for: .gzip)
            #expect((chosen as? UacceDevice)?.name == "warpdrive_zip-0")
            #expect((chosen as? UacceDevice)?.devicePath == root + "/dev/warpdrive_zip-0")
            // Not offered by the module: the emulated device.
            #expect(try registry.device(for: .zstd) === emulated)
        }
        // No free instance: the emulated device.
        write(root + "/class/uacce/warpdrive_zip-0/available_instances", "0\n")
        try withDevice { emulated throws in
            #expect(try DeviceRegistry(emulated: [emulated], sysfsRoot: root, devRoot: root + "/dev").device(for: .gzip) === emulated)
        }
        #expect(throws: WarpDriveError.self) { _ = try UacceDevice(name: "hisi_zip-0", sysfsRoot: root, devRoot: root + "/dev") }
    }

    @Test func emulatedDeviceAttributesFollowConfiguration() {
        var c = EmulatedDeviceConfiguration(engines: 3, queues: 5, queueDepth: 64)
        c.isolateThreshold = 7
        c.id = 2
        let d = EmulatedZipDevice(configuration: c, iommu: IOMMU())
        defer { d.shutdown() }
        let a = d.attributes
        #expect(a.name == "warpdrive_zip_emu-2")
        #expect(a.availableInstances == 5 && a.queueDepth == 64 && a.isolateStrategy == 7)
        #expect(a.regionDUSSize == RingLayout(depth: 64).dusSize && a.regionMMIOSize == 8192)
        #expect(d.engineBusyNanoseconds.count == 3)
    }
}
