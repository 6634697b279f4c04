#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CWarpSys
import WarpDrive
import WarpFSCore
import WarpFSFormat

/// Shared by `compress` and `decompress`: walks the paths, converts each
/// regular file through a temporary file and an atomic rename, keeping
/// mode, owner, times and extended attributes.
struct Converter {
    let toCompressed: Bool
    let options: MountOptions
    let codec: BlockCodec
    var converted = 0, skipped = 0, failed = 0

    init(toCompressed: Bool, options: MountOptions) {
        self.toCompressed = toCompressed
        self.options = options
        let device = EmulatedZipDevice(configuration: EmulatedDeviceConfiguration(engines: options.engines))
        codec = BlockCodec(device: device, algorithm: options.algorithm, level: options.level)
    }

    mutating func walk(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else {
            eprint("warpfs: \(path): \(String(cString: strerror(errno)))")
            failed += 1
            return
        }
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            guard let d = opendir(path) else { failed += 1; return }
            var names: [String] = []
            while let e = readdir(d) {
                let n = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if n != "." && n != ".." && !n.hasSuffix(".warpfs-tmp") { names.append(n) }
            }
            closedir(d)
            for n in names.sorted() { walk(path + "/" + n) }
        case S_IFREG:
            do {
                if try convert(path, st) { converted += 1 } else { skipped += 1 }
            } catch {
                eprint("warpfs: \(path): \(error)")
                failed += 1
            }
        default:
            break
        }
    }

    /// Converts one file; false when it already has the wanted form.
    func convert(_ path: String, _ st: stat) throws -> Bool {
        let src = open(path, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw FSError.last("open") }
        var srcOwned = true
        defer { if srcOwned { close(src) } }
        let kind = try CompressedFile.kind(fd: src, name: path)
        switch (kind, toCompressed) {
        case (.compressed, true), (.plain, false): return false
        default: break
        }
        let tmp = path + ".warpfs-tmp"
        let dst = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 0o7777)
        guard dst >= 0 else { throw FSError.last("create \(tmp)") }
        do {
            let chunk = 1 << 20
            let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 4096)
            defer { buf.deallocate() }
            if toCompressed {
                let out = try CompressedFile.create(fd: dup(dst), name: tmp, codec: codec, blockSize: options.blockSize, encoding: options.encoding)
                var off = 0
                while true {
                    let n = try preadAll(src, buf, chunk, off)
                    if n == 0 { break }
                    try out.write(offset: UInt64(off), count: n, from: buf)
                    off += n
                }
                try out.sync()
            } else {
                srcOwned = false
                let input = try CompressedFile.open(fd: src, name: path, codec: codec)
                var off: UInt64 = 0
                while off < input.size {
                    let n = try input.read(offset: off, count: chunk, into: buf)
                    var done = 0
                    while done < n {
                        let w = pwrite(dst, buf + done, n - done, off_t(off) + off_t(done))
                        guard w > 0 else { throw FSError.last("write \(tmp)") }
                        done += w
                    }
                    off += UInt64(n)
                }
                guard ftruncate(dst, off_t(input.size)) == 0, fsync(dst) == 0 else { throw FSError.last("write \(tmp)") }
            }
            copyMetadata(from: path, st, to: dst)
            close(dst)
            guard rename(tmp, path) == 0 else { throw FSError.last("rename \(tmp)") }
            return true
        } catch {
            close(dst)
            unlink(tmp)
            throw error
        }
    }

    private func preadAll(_ fd: Int32, _ buf: UnsafeMutableRawPointer, _ n: Int, _ off: Int) throws -> Int {
        var done = 0
        while done < n {
            let r = pread(fd, buf + done, n - done, off_t(off + done))
            if r < 0 { if errno == EINTR { continue }; throw FSError.last("read") }
            if r == 0 { break }
            done += r
        }
        return done
    }

    private func copyMetadata(from path: String, _ st: stat, to fd: Int32) {
        _ = fchown(fd, st.st_uid, st.st_gid)
        _ = fchmod(fd, st.st_mode & 0o7777)
        var names = [CChar](repeating: 0, count: 65536)
        let n = llistxattr(path, &names, names.count)
        if n > 0 {
            var value = [UInt8](repeating: 0, count: 65536)
            for raw in names[0..<n].split(separator: 0) {
                let name = String(decoding: raw.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                let len = lgetxattr(path, name, &value, value.count)
                if len >= 0 { _ = fsetxattr(fd, name, value, len, 0) }
            }
        }
        var times = [st.st_atim, st.st_mtim]
        _ = futimens(fd, &times)
    }
}

struct ConvertOptions: ParsableArguments {
    @Option(name: .short, help: "Options as for mount: block_size, algorithm, level, engines.") var o: [String] = []
    @Argument(help: "Files or directories (walked recursively) of a backing directory, not mounted.") var paths: [String]

    func mountOptions() throws -> MountOptions {
        var m = MountOptions()
        for list in o {
            do { try m.apply(list) } catch { throw ValidationError("\(error)") }
        }
        return m
    }
}

struct Compress: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Convert plain files of a backing directory to WarpFS containers (offline).")
    @OptionGroup var options: ConvertOptions

    func run() throws {
        var c = Converter(toCompressed: true, options: try options.mountOptions())
        // Engines stop while the device is still held (see EmulatedZipDevice.shutdown).
        defer { c.codec.device.shutdown() }
        for p in options.paths { c.walk(p) }
        print("compressed \(c.converted) file(s), \(c.skipped) already compressed, \(c.failed) failed")
        if c.failed > 0 { throw ExitCode(1) }
    }
}

struct Decompress: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Convert WarpFS containers of a backing directory back to plain files (offline).")
    @OptionGroup var options: ConvertOptions

    func run() throws {
        var c = Converter(toCompressed: false, options: try options.mountOptions())
        defer { c.codec.device.shutdown() }
        for p in options.paths { c.walk(p) }
        print("decompressed \(c.converted) file(s), \(c.skipped) already plain, \(c.failed) failed")
        if c.failed > 0 { throw ExitCode(1) }
    }
}
