// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "WarpFS",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "warpfs", targets: ["WarpFSCommand"]),
        .library(name: "WarpDrive", targets: ["WarpDrive"]),
        .library(name: "WarpFSCore", targets: ["WarpFSCore"]),
        .executable(name: "warpdrive-bench", targets: ["WarpDriveBench"]),
        .executable(name: "warpdrive-codec-bench", targets: ["WarpDriveCodecBench"]),
        .executable(name: "warpdrive-hello", targets: ["WarpDriveHello"]),
        .executable(name: "warpdrive-load", targets: ["WarpDriveLoad"]),
        .executable(name: "warpdrived", targets: ["warpdrived"]),
        .executable(name: "warpdrive-probe", targets: ["WarpDriveProbe"]),
        .executable(name: "warpdrive-uacce-probe", targets: ["WarpDriveUacceProbe"]),
        .library(name: "WarpDriveDaemon", targets: ["WarpDriveDaemon"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // The log's front end; its handlers implement log(event:), new in 1.16.
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
    ],
    targets: [
        // Linux calls Swift cannot see (variadics, macros), atomics on shared
        // memory, and zlib's macro entry points, as small C functions.
        .target(
            name: "CWarpSys",
            linkerSettings: [.linkedLibrary("z")]
        ),
        // The codec libraries of the emulated ZIP device's engines (Debian:
        // libisal-dev, libdeflate-dev, libzstd-dev, liblz4-dev), with small
        // inline helpers for the macros Swift cannot import.
        .target(
            name: "CWarpCodecs",
            linkerSettings: [
                .linkedLibrary("isal"), .linkedLibrary("deflate"),
                .linkedLibrary("zstd"), .linkedLibrary("lz4"),
            ]
        ),
        // libfuse3's low-level API with its macros and bitfields as functions.
        .target(
            name: "CFuse",
            linkerSettings: [.linkedLibrary("fuse3")]
        ),
        // The accelerator queue layer: discovery, queues and rings, PASID and
        // IOMMU emulation, the emulated ZIP device, and the client sessions.
        .target(
            name: "WarpDrive",
            dependencies: ["CWarpSys", "CWarpCodecs"]
        ),
        // warpdrived's server: the emulated device shared over a Unix socket;
        // and the status report's rendering (`warpdrived --info`, `warpfs devices`).
        .target(
            name: "WarpDriveDaemon",
            dependencies: ["WarpDrive", "CWarpSys"]
        ),
        // The `warpdrived` command.
        .executableTarget(
            name: "warpdrived",
            dependencies: [
                "WarpDriveDaemon", "WarpDrive",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The on-disk container format: headers, slots, checksums. Pure, fuzzable.
        .target(
            name: "WarpFSFormat",
            dependencies: ["CWarpSys"]
        ),
        // The file system: inodes, open files, block store, caches; no FUSE.
        .target(
            name: "WarpFSCore",
            dependencies: ["WarpDrive", "WarpFSFormat", "CWarpSys", .product(name: "Logging", package: "swift-log")]
        ),
        // The FUSE low-level operations table, forwarding to WarpFSCore.
        .target(
            name: "FUSEAdapter",
            dependencies: ["WarpFSCore", "CFuse", "CWarpSys"]
        ),
        // What `warpdrive-bench` and `warpfs bench` share: zlib called
        // directly on N threads, medians and percentiles, tables and JSON.
        .target(
            name: "BenchSupport",
            dependencies: ["WarpDrive", "CWarpSys"]
        ),
        // The `warpfs` command: mount, unmount, compress, decompress.
        .executableTarget(
            name: "WarpFSCommand",
            dependencies: [
                "FUSEAdapter", "WarpFSCore", "WarpFSFormat", "WarpDrive", "WarpDriveDaemon", "CWarpSys", "BenchSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "WarpDriveBench",
            dependencies: [
                "WarpDrive", "CWarpSys", "BenchSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Every codec of the emulated device through the queue against the
        // same library called directly.
        .executableTarget(
            name: "WarpDriveCodecBench",
            dependencies: ["WarpDrive", "CWarpSys", "CWarpCodecs"]
        ),
        .executableTarget(
            name: "WarpDriveHello",
            dependencies: ["WarpDrive", "CWarpSys"],
            path: "Examples/WarpDriveHello"
        ),
        .executableTarget(
            name: "WarpDriveLoad",
            dependencies: ["WarpDrive", "CWarpSys"],
            path: "Examples/WarpDriveLoad"
        ),
        // A warpdrived client the daemon's security tests run as an
        // unprivileged user (fork and exec, pid reuse, queue caps); and the
        // SIGBUS cases of revocable mappings whose right outcome is death.
        .executableTarget(
            name: "WarpDriveProbe",
            dependencies: ["WarpDrive", "CWarpSys"],
            path: "Tests/WarpDriveProbe"
        ),
        // Runs in the VM test (scripts/vm-test): the Swift backend against
        // the warpdrive_zip kernel module.
        .executableTarget(
            name: "WarpDriveUacceProbe",
            dependencies: ["WarpDrive"],
            path: "Tests/WarpDriveUacceProbe"
        ),
        // What both test targets use: processes, real unprivileged users.
        .target(
            name: "TestSupport",
            dependencies: ["CWarpSys", "BenchSupport"],
            path: "Tests/TestSupport"
        ),
        .testTarget(
            name: "WarpDriveTests",
            dependencies: ["WarpDrive", "CWarpSys", "CWarpCodecs", "TestSupport"]
        ),
        // The benches' pure parts: no device, no mount.
        .testTarget(
            name: "BenchSupportTests",
            dependencies: ["BenchSupport", "WarpDrive"]
        ),
        .testTarget(
            name: "WarpFSTests",
            dependencies: ["WarpFSCore", "WarpFSFormat", "WarpDrive", "CWarpSys", "WarpFSCommand", "TestSupport"]
        ),
    ]
)
