#if canImport(Glibc)
import Glibc
#endif
import Testing
import WarpFSCore

extension SystemIntegration {
    /// `scripts/package` builds this tree's Debian package; dpkg installs it,
    /// `mount -t fuse.warpfs` mounts with the installed /usr/bin/warpfs, and
    /// `dpkg -r` and `--purge` leave nothing behind. Root only; skipped (with
    /// the reason printed) where a warpfs is already installed, which the
    /// test will not replace or remove.
    @Suite struct PackageTests {
        /// What `dpkg -L warpfs` must list, and nothing else.
        static let expectedFiles: Set<String> = [
            "/.", "/usr", "/usr/bin", "/usr/bin/warpfs", "/usr/bin/warpdrived",
            "/usr/share", "/usr/share/man", "/usr/share/man/man1", "/usr/share/man/man1/warpfs.1.gz",
            "/usr/share/man/man8", "/usr/share/man/man8/warpdrived.8.gz",
            "/usr/share/bash-completion", "/usr/share/bash-completion/completions",
            "/usr/share/bash-completion/completions/warpfs", "/usr/share/bash-completion/completions/warpdrived",
            "/usr/share/zsh", "/usr/share/zsh/vendor-completions",
            "/usr/share/zsh/vendor-completions/_warpfs", "/usr/share/zsh/vendor-completions/_warpdrived",
            "/usr/share/doc", "/usr/share/doc/warpfs", "/usr/share/doc/warpfs/copyright", "/usr/share/doc/warpfs/changelog.gz",
        ]
        /// What the package alone put there: gone after removal.
        static let ownFiles = expectedFiles.filter { $0.contains("warp") }

        /// The PATH systemd and a login shell give mount(8).
        static let systemPath = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

        static func installed() -> Bool {
            runCommand(["/usr/bin/dpkg-query", "-W", "-f=${Status}", "warpfs"]).output.contains("install ok installed")
        }

        @Test func buildInstallMountRemove() throws {
            guard runsAsRoot("Debian package") else { return }
            if Self.installed() || FileIO.exists("/usr/bin/warpfs") || FileIO.exists("/usr/bin/warpdrived") {
                print("Debian package: skipped, a warpfs is already installed on this machine")
                return
            }
            MountHelper.remove()   // one a killed test run left would take mount(8)'s place
            if FileIO.exists(MountHelper.path) {
                print("Debian package: skipped, \(MountHelper.path) would stand in for mount.fuse3")
                return
            }
            let dir = makeTempDir("warpfs-package")
            defer { removeTree(dir) }
            let built = runCommand([SystemIntegration.repositoryRoot + "/scripts/package", "--output", dir])
            try #require(built.status == 0, "scripts/package failed:\n\(built.output.suffix(4000))")
            let deb = try #require(built.output.split(separator: "\n").last.map(String.init))
            #expect(deb.hasPrefix(dir + "/warpfs_") && deb.hasSuffix(".deb"), "\(deb)")
            let version = runCommand([warpfsBinary, "--version"]).output
            #expect(runCommand(["/usr/bin/dpkg-deb", "-f", deb, "Version"]).output == version)
            let depends = runCommand(["/usr/bin/dpkg-deb", "-f", deb, "Depends"]).output
            for dependency in ["fuse3", "libfuse3-3", "libzstd1", "libisal2", "libc6"] {
                #expect(depends.contains(dependency), "Depends: \(depends)")
            }
            #expect(!depends.contains("swift"), "Depends: \(depends)")

            defer {
                _ = runCommand(["/usr/bin/dpkg", "--purge", "warpfs"])
                #expect(!Self.installed())
            }
            let install = runCommand(["/usr/bin/dpkg", "-i", deb])
            try #require(install.status == 0, "dpkg -i:\n\(install.output)")
            let listed = Set(runCommand(["/usr/bin/dpkg", "-L", "warpfs"]).output.split(separator: "\n").map(String.init))
            #expect(listed == Self.expectedFiles, "extra: \(listed.subtracting(Self.expectedFiles)), missing: \(Self.expectedFiles.subtracting(listed))")
            #expect(runCommand(["/usr/bin/warpfs", "--version"]).output == version)
            #expect(runCommand(["/usr/bin/warpdrived", "--version"]).output == version)
            for exe in ["/usr/bin/warpfs", "/usr/bin/warpdrived"] {
                let libraries = runCommand(["/usr/bin/ldd", exe]).output
                #expect(!libraries.contains("swift") && !libraries.contains("not found"), "\(exe): \(libraries)")
            }
            try checkManualAndCompletions()
            try mountWithTheInstalledWarpfs()

            let remove = runCommand(["/usr/bin/dpkg", "-r", "warpfs"])
            #expect(remove.status == 0, "dpkg -r:\n\(remove.output)")
            #expect(runCommand(["/usr/bin/dpkg", "-L", "warpfs"]).status != 0)
            let purge = runCommand(["/usr/bin/dpkg", "--purge", "warpfs"])
            #expect(purge.status == 0, "dpkg --purge:\n\(purge.output)")
            #expect(runCommand(["/usr/bin/dpkg-query", "-W", "warpfs"]).status != 0)
            for file in Self.ownFiles { #expect(!FileIO.exists(file), "\(file) is left behind") }
        }

        /// warpfs(1) names every mount option of the table; the completion
        /// scripts load.
        func checkManualAndCompletions() throws {
            #expect(runCommand(["/usr/bin/man", "-w", "warpfs"]).output == "/usr/share/man/man1/warpfs.1.gz\n")
            #expect(runCommand(["/usr/bin/man", "-w", "8", "warpdrived"]).output == "/usr/share/man/man8/warpdrived.8.gz\n")
            let page = runCommand(["/bin/sh", "-c", "zcat /usr/share/man/man1/warpfs.1.gz"]).output
            for spec in MountOptions.table {
                #expect(page.contains("\"\(spec.label)\"") || page.contains(" \(spec.label)\n"), "warpfs(1) lacks \(spec.label)")
            }
            for command in ["mount", "unmount", "compress", "decompress", "fsck", "bench", "devices"] {
                #expect(page.contains(".It Em \(command)\n"), "warpfs(1) lacks the subcommand \(command)")
            }
            let rendered = runCommand(["/bin/sh", "-c", "MANWIDTH=200 man warpdrived 2>&1"]).output
            #expect(rendered.contains("--socket") && rendered.contains("--deflate-engine"), "\(rendered.prefix(2000))")
            let bash = runCommand(["/bin/bash", "-c", "source /usr/share/bash-completion/completions/warpfs && complete -p warpfs"])
            #expect(bash.status == 0 && bash.output.contains("_warpfs"), "\(bash.output)")
            #expect(try FileIO.read("/usr/share/zsh/vendor-completions/_warpfs").starts(with: Array("#compdef warpfs".utf8)))
        }

        /// mount(8) with the PATH systemd gives it: mount.fuse3 runs the
        /// installed /usr/bin/warpfs.
        func mountWithTheInstalledWarpfs() throws {
            let root = makeTempDir()
            let backing = relocate("/b", under: root), mnt = relocate("/m", under: root)
            defer { forceUnmount(mnt); removeTree(root) }
            let r = runCommand(["/usr/bin/env", "-i", Self.systemPath, "/bin/mount", "-t", "fuse.warpfs", backing, mnt, "-o", "algorithm=lz4,nofail"])
            #expect(r.status == 0, "\(r.output)")
            let server = try #require(servers(of: mnt).first)
            #expect(server.exe == "/usr/bin/warpfs")
            try writeAndRead(mnt, backing)
            let u = runCommand(["/usr/bin/env", "-i", Self.systemPath, "/bin/umount", mnt])
            #expect(u.status == 0, "\(u.output)")
            #expect(!isMounted(mnt))
            waitForExit([server.pid])
        }
    }
}
