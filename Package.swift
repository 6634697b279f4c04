// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "WarpFS",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "WarpDrive", targets: ["WarpDrive"]),
        .executable(name: "warpdrive-bench", targets: ["WarpDriveBench"]),
        .executable(name: "warpdrive-hello", targets: ["WarpDriveHello"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // Linux calls Swift cannot see (variadics, macros), atomics on shared
        // memory, and zlib's macro entry points, as small C functions.
        .target(
            name: "CWarpSys",
            linkerSettings: [.linkedLibrary("z")]
        ),
        // The accelerator queue layer: discovery, queues and rings, PASID and
        // IOMMU emulation, the emulated ZIP device, and the client sessions.
        .target(
            name: "WarpDrive",
            dependencies: ["CWarpSys"]
        ),
        .executableTarget(
            name: "WarpDriveBench",
            dependencies: [
                "WarpDrive", "CWarpSys",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "WarpDriveHello",
            dependencies: ["WarpDrive", "CWarpSys"],
            path: "Examples/WarpDriveHello"
        ),
        .testTarget(
            name: "WarpDriveTests",
            dependencies: ["WarpDrive", "CWarpSys"]
        ),
    ]
)
