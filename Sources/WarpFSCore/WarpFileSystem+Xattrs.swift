#if canImport(Glibc)
import Glibc
#endif
import CWarpSys
import WarpFSFormat
import WarpDrive

// Extended attributes: the backing object's, minus the mount's own
// (`trusted.warpfs.*`); the control attributes of the mount root; and the
// glue for the POSIX ACLs the kernel enforces (their format: `PosixACL`).
extension WarpFileSystem {
    /// The backing object's `/proc/self/fd/N` path for the xattr calls. The
    /// kernel resolves it by jumping to the object the descriptor holds and
    /// follows no symlink after the jump, so on a symlink the calls reach the
    /// link itself, as the l*xattr calls do. (Linux 6.13's *xattrat calls
    /// refuse an `O_PATH` descriptor with AT_EMPTY_PATH: EBADF.) `user.*` on
    /// a symlink is refused by the kernel before the request is sent, as on ext4.
    private func xattrPath(_ node: Inode) -> String { node.procPath }

    /// Runs one xattr call on the backing object. The application gets the
    /// backing errno; running out of room (the backing file system's
    /// capacity for attributes is the mount's) is also logged, with the file.
    private func backingXattr<T: BinaryInteger>(_ what: String, _ node: Inode, _ name: String?, size: Int = 0, _ call: () -> T) throws -> T {
        do { return try sys(what, call) } catch let e as FSError {
            if [ENOSPC, EDQUOT, E2BIG, EIO].contains(e.errno) {
                let attribute = name.map { " '\($0)' (\(size) bytes)" } ?? ""
                Log.warning("\(displayName(node)): \(what)\(attribute): \(String(cString: strerror(e.errno))) from the backing file system")
            }
            throw e
        }
    }

    /// Attributes of backing objects that belong to the mount itself
    /// (`trusted.warpfs.*`: the file-handle key on the root, the recorded
    /// change time on files; `user.warpfs.packed`: a packed file's
    /// reference): not shown through the mount, not readable or writable
    /// through it, so no copy made through the mount (`cp -a`) carries them
    /// and nobody changes them (or forges a reference) under the mount.
    private func isMountPrivate(_ name: String) -> Bool {
        name.hasPrefix("trusted.warpfs.") || name == PackReference.attributeName
    }

    public func setxattr(_ id: UInt64, name: String, value: UnsafeRawBufferPointer, flags: Int32, caller: Caller) throws {
        if isMountPrivate(name) { throw FSError(EPERM, "\(name) belongs to the mount") }
        if isStatisticsAttribute(id, name) { throw refuseStatisticsChange() }
        if name == DirectoryProperties.interfaceName { return try setProperty(id, changes: value, caller: caller) }
        if id == 1 && name == WarpFileSystem.faultAttribute {
            guard mayControl(caller) else {
                throw FSError(EPERM, "\(WarpFileSystem.faultAttribute): uid \(caller.uid) may not inject faults (only root and uid \(mounter))")
            }
            let text = String(decoding: value, as: UTF8.self)
            return try controlFault(String(text.filter { $0 != " " && $0 != "\n" && $0 != "\0" }))
        }
        let node = try inode(id)
        try writable()
        try refuseACLIfOff(name)
        let path = xattrPath(node)
        _ = try backingXattr("setxattr", node, name, size: value.count) { CWarpSys.setxattr(path, name, value.baseAddress, value.count, flags) }
    }

    /// Size when `into` is empty, else the bytes copied (ERANGE if too small).
    public func getxattr(_ id: UInt64, name: String, into buf: UnsafeMutableRawBufferPointer, caller: Caller) throws -> Int {
        if isStatisticsAttribute(id, name) { return try readStatistics(into: buf) }
        if id == 1 && name == WarpFileSystem.deviceAttribute {
            guard mayControl(caller) else { throw FSError(EPERM) }
            let text = Array(deviceReport.utf8)
            if buf.count == 0 { return text.count }
            guard buf.count >= text.count else { throw FSError(ERANGE) }
            buf.copyBytes(from: text)
            return text.count
        }
        if isMountPrivate(name) { throw FSError(ENODATA) }
        if name == DirectoryProperties.interfaceName { return try getProperty(id, into: buf) }
        let node = try inode(id)
        try refuseACLIfOff(name)
        let path = xattrPath(node)
        do {
            return try backingXattr("getxattr", node, name) { CWarpSys.getxattr(path, name, buf.baseAddress, buf.count) }
        } catch let e as FSError where e.errno == EOPNOTSUPP && PosixACL.isACL(name) {
            // A backing file system without ACLs has none to give: the
            // kernel asks on every permission check, and must hear "none".
            throw FSError(ENODATA)
        }
    }

    /// Size when `into` is empty, else the bytes copied (ERANGE if too
    /// small). `trusted`: whether the caller may see `trusted.*` names
    /// (CAP_SYS_ADMIN on ext4; the backing call runs as root and lists them all).
    public func listxattr(_ id: UInt64, into buf: UnsafeMutableRawBufferPointer, trusted: Bool = true) throws -> Int {
        let node = try inode(id)
        let acls = aclsEnforced
        // Any node may carry the mount's own attributes: always filtered.
        return try filteredList(node, into: buf) {
            (acls || !PosixACL.isACL($0)) && (trusted || !$0.hasPrefix("trusted.")) && !isMountPrivate($0)
        }
    }

    /// listxattr keeping only the names `keep` accepts: the ACL attributes
    /// on a mount without ACLs (ext4 mounted noacl lists none), `trusted.*`
    /// for a caller other than root. The backing list is read whole (again
    /// if it grew in between), so a size query gives the filtered size.
    private func filteredList(_ node: Inode, into buf: UnsafeMutableRawBufferPointer, keep: (String) -> Bool) throws -> Int {
        var all: [UInt8] = []
        while true {
            let size = try sys("listxattr \(displayName(node))") { CWarpSys.listxattr(node.procPath, nil, 0) }
            all = [UInt8](repeating: 0, count: size)
            do {
                let n = try all.withUnsafeMutableBytes { list in
                    try sys("listxattr \(displayName(node))") {
                        CWarpSys.listxattr(node.procPath, list.baseAddress?.assumingMemoryBound(to: CChar.self), size)
                    }
                }
                all.removeSubrange(n...)
                break
            } catch let e as FSError where e.errno == ERANGE {
                continue  // the list grew since its size was asked
            }
        }
        var kept: [UInt8] = []
        for name in all.split(separator: 0) where keep(String(decoding: name, as: UTF8.self)) {
            kept += name
            kept.append(0)
        }
        if buf.count == 0 { return kept.count }
        guard buf.count >= kept.count else { throw FSError(ERANGE) }
        buf.copyBytes(from: kept)
        return kept.count
    }

    public func removexattr(_ id: UInt64, name: String, caller: Caller) throws {
        if isMountPrivate(name) { throw FSError(EPERM, "\(name) belongs to the mount") }
        if isStatisticsAttribute(id, name) { throw refuseStatisticsChange() }
        if name == DirectoryProperties.interfaceName { return try clearProperties(id, caller: caller) }
        let node = try inode(id)
        try writable()
        try refuseACLIfOff(name)
        let path = xattrPath(node)
        _ = try backingXattr("removexattr", node, name) { CWarpSys.removexattr(path, name) }
    }

    // MARK: Control attributes of the mount root

    /// Only root and the user who mounted may use the mount root's control
    /// attributes (`deviceAttribute`, `faultAttribute`): with `allow_other`
    /// other users reach the root too, and neither stopping the accelerator
    /// nor the counters of everyone's traffic is theirs. Others get EPERM.
    private func mayControl(_ caller: Caller) -> Bool { caller.uid == 0 || caller.uid == mounter }

    /// Read on the mount root: the accelerator's counters (not stored anywhere).
    public static let deviceAttribute = "user.warpfs.device"
    /// Written on the mount root with `-o fault_injection`: `error_rate=F`
    /// (a fraction of requests fail with an engine error), `hang` (the
    /// device stops answering), `resume`, `reset` (the device fences every
    /// queue; requests in flight fail). For testing error paths.
    public static let faultAttribute = "user.warpfs.fault"

    private func controlFault(_ command: String) throws {
        guard options.faultInjection, let device = device as? any FaultInjectingDevice else {
            throw FSError(EPERM, "\(WarpFileSystem.faultAttribute): fault injection is off (mount with -o fault_injection)")
        }
        let parts = command.split(separator: "=", maxSplits: 1).map(String.init)
        switch (parts[0], parts.count > 1 ? parts[1] : nil) {
        case ("error_rate", let v?):
            guard let rate = Double(v), (0...1).contains(rate) else {
                throw FSError(EINVAL, "\(WarpFileSystem.faultAttribute): error_rate=\(v): expected a fraction in 0...1")
            }
            device.faults.engineErrorRate = rate
        case ("hang", nil): device.faults.stopAnswering = true
        case ("resume", nil): device.faults.stopAnswering = false
        case ("reset", nil): device.reset()
        default:
            throw FSError(EINVAL, "\(WarpFileSystem.faultAttribute): unknown command '\(command)' (error_rate=F, hang, resume, reset)")
        }
        Log.info("fault injection: \(command)")
    }

    private var deviceReport: String {
        "\(device.statusSummary)\(codec.fallback.map { "; other algorithms: " + $0.statusSummary } ?? ""), "
            + "buffers set aside after time-outs=\(codec.quarantined.load(ordering: .relaxed))\n"
    }

    // MARK: POSIX ACLs

    /// What the kernel granted at FUSE init (bits of `aclState`).
    private static let aclsOn: UInt8 = 1, umaskHere: UInt8 = 2

    /// Called by the FUSE adapter at init with what the kernel granted:
    /// `posixACL` (the kernel enforces ACLs, FUSE_CAP_POSIX_ACL) and
    /// `dontMask` (the kernel leaves the umask to us, FUSE_CAP_DONT_MASK).
    public func kernelGranted(posixACL: Bool, dontMask: Bool) {
        aclState.store((posixACL ? Self.aclsOn : 0) | (dontMask ? Self.umaskHere : 0), ordering: .releasing)
        guard options.posixACL else { return }
        guard posixACL else {
            Log.warning("the kernel offers FUSE no POSIX ACL support: ACLs are off on this mount (setting one fails with EOPNOTSUPP)")
            return
        }
        var probe = [UInt8](repeating: 0, count: 1)
        if CWarpSys.getxattr(inodes.root.procPath, PosixACL.accessName, &probe, 0) < 0 && errno == EOPNOTSUPP {
            Log.info("the backing file system at \(backingPath) keeps no POSIX ACLs: none apply, and setting one fails with EOPNOTSUPP")
        }
    }

    /// Whether ACLs are enforced on this mount: asked for (not `-o noacl`)
    /// and granted by the kernel.
    public var aclsEnforced: Bool { aclState.load(ordering: .acquiring) & Self.aclsOn != 0 }

    /// ACL attributes on a mount without ACLs: EOPNOTSUPP, as ext4 mounted
    /// `noacl` answers (stored, they would have no effect).
    func refuseACLIfOff(_ name: String) throws {
        if PosixACL.isACL(name) && !aclsEnforced {
            throw FSError(EOPNOTSUPP, "\(name): POSIX ACLs are off on this mount")
        }
    }

    /// The mode to create a node with, from the mode and umask the kernel
    /// sent. With FUSE_CAP_DONT_MASK the kernel no longer applies the umask:
    /// as ext4 (`posix_acl_create`), a parent with a default ACL sets the
    /// permission bits from that ACL and `mode` and the umask is ignored;
    /// otherwise the umask applies. Without it, `mode` is already masked.
    /// The backing file system then creates the node with this mode and
    /// copies the default ACL itself (to the access ACL, and for a directory
    /// to its default ACL too), giving the same bits.
    public func creationMode(parent: UInt64, mode: mode_t, umask: mode_t) -> mode_t {
        guard aclState.load(ordering: .acquiring) & Self.umaskHere != 0 else { return mode }
        if mode & S_IFMT != S_IFLNK, let p = inodes.get(parent), let acl = defaultACL(p) {
            return acl.creationMode(mode)
        }
        return mode & ~(umask & 0o777)
    }

    /// After `caller` set an access ACL: a caller neither in the node's
    /// group nor root makes it lose the set-group-ID bit, as on ext4
    /// (posix_acl_update_mode). The kernel would tell us with
    /// FUSE_SETXATTR_ACL_KILL_SGID, which libfuse 3.14 cannot negotiate,
    /// and the backing file system sees only WarpFS, which is root. Root
    /// stands for CAP_FSETID, which the request does not carry.
    public func accessACLWasSet(_ id: UInt64, caller: Caller, groups: [gid_t]) {
        guard aclsEnforced, caller.uid != 0, let node = inodes.get(id) else { return }
        var st = stat()
        guard fstatat(node.fd, "", &st, Int32(WD_AT_EMPTY_PATH) | AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_ISGID != 0,
              st.st_gid != caller.gid, !groups.contains(st.st_gid) else { return }
        if fchmodat(AT_FDCWD, node.procPath, st.st_mode & 0o7777 & ~S_ISGID, 0) != 0 {
            Log.warning("\(displayName(node)): dropping set-group-ID after an ACL change: \(String(cString: strerror(errno)))")
        }
    }

    /// A directory's default ACL, nil when it has none (or the backing file
    /// system keeps none).
    func defaultACL(_ dir: Inode) -> PosixACL? {
        guard dir.isDirectory else { return nil }
        var buf = [UInt8](repeating: 0, count: 4096)
        var n = CWarpSys.getxattr(dir.procPath, PosixACL.defaultName, &buf, buf.count)
        if n < 0 && errno == ERANGE {
            let size = CWarpSys.getxattr(dir.procPath, PosixACL.defaultName, nil, 0)
            guard size > 0 else { return nil }
            buf = [UInt8](repeating: 0, count: size)
            n = CWarpSys.getxattr(dir.procPath, PosixACL.defaultName, &buf, buf.count)
        }
        guard n > 0 else { return nil }
        guard let acl = buf.withUnsafeBytes({ PosixACL(xattr: UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) else {
            Log.warning("\(displayName(dir)): \(PosixACL.defaultName) is not a version 2 ACL; new nodes in it get the umask")
            return nil
        }
        return acl
    }
}
