#if canImport(Glibc)
import Glibc
#endif
import CFuse
import CWarpSys
import WarpFSCore

extension FUSEServer {
    /// The low-level operations WarpFS serves, one named function each (as
    /// libfuse's passthrough_hp does); libfuse answers the others (ENOSYS).
    /// Each turns the request into one call of `WarpFileSystem` and one
    /// reply (`Request`).
    static func operations() -> fuse_lowlevel_ops {
        var ops = fuse_lowlevel_ops()
        ops.`init`       = opInit
        // Names
        ops.lookup       = opLookup
        ops.forget       = opForget
        ops.forget_multi = opForgetMulti
        ops.mknod        = opMknod
        ops.mkdir        = opMkdir
        ops.symlink      = opSymlink
        ops.link         = opLink
        ops.unlink       = opUnlink
        ops.rmdir        = opRmdir
        ops.rename       = opRename
        ops.readlink     = opReadlink
        // Attributes
        ops.getattr      = opGetattr
        ops.setattr      = opSetattr
        ops.statfs       = opStatfs
        // Files
        ops.open         = opOpen
        ops.create       = opCreate
        ops.read         = opRead
        ops.write        = opWrite
        ops.flush        = opFlush
        ops.release      = opRelease
        ops.fsync        = opFsync
        ops.fallocate    = opFallocate
        ops.lseek        = opLseek
        // Directories
        ops.opendir      = opOpendir
        ops.readdir      = opReaddir
        ops.readdirplus  = opReaddirplus
        ops.releasedir   = opReleasedir
        ops.fsyncdir     = opFsyncdir
        // Extended attributes
        ops.setxattr     = opSetxattr
        ops.getxattr     = opGetxattr
        ops.listxattr    = opListxattr
        ops.removexattr  = opRemovexattr
        return ops
    }
}

// MARK: Session

/// INIT: the capabilities the mount asks for, and what the kernel granted
/// about ACLs told to the core.
private func opInit(_ userdata: UnsafeMutableRawPointer?, _ conn: UnsafeMutablePointer<fuse_conn_info>?) {
    let fs = Unmanaged<FUSEServer>.fromOpaque(userdata!).takeUnretainedValue().fs
    wf_init_conn(conn, fs.options.writebackCache ? 1 : 0, 1 << 20, fs.exportSupport ? 1 : 0)
    let acl = wf_init_acl(conn, fs.options.posixACL ? 1 : 0)
    fs.kernelGranted(posixACL: acl & 1 != 0, dontMask: acl & 2 != 0)
}

// MARK: Names

private func opLookup(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    serve(req) { r in r.replyEntry(try r.fs.lookup(parent: parent, name: cString(name))) }
}

private func opForget(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ lookups: UInt64) {
    let r = Request(req)
    r.fs.forget(ino, lookups)
    r.replyNone()
}

private func opForgetMulti(_ req: fuse_req_t?, _ count: Int, _ list: UnsafeMutablePointer<fuse_forget_data>?) {
    let r = Request(req)
    for i in 0..<count { r.fs.forget(list![i].ino, list![i].nlookup) }
    r.replyNone()
}

private func opMknod(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t, _ rdev: dev_t) {
    serve(req) { r in
        let mode = r.creationMode(parent: parent, mode)
        r.replyEntry(try r.fs.mknod(parent: parent, name: cString(name), mode: mode, rdev: rdev, caller: r.caller))
    }
}

private func opMkdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t) {
    serve(req) { r in
        let mode = r.creationMode(parent: parent, mode)
        r.replyEntry(try r.fs.mkdir(parent: parent, name: cString(name), mode: mode, caller: r.caller))
    }
}

private func opSymlink(_ req: fuse_req_t?, _ target: UnsafePointer<CChar>?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    serve(req) { r in r.replyEntry(try r.fs.symlink(parent: parent, name: cString(name), target: cString(target), caller: r.caller)) }
}

private func opLink(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ newParent: fuse_ino_t, _ newName: UnsafePointer<CChar>?) {
    serve(req) { r in r.replyEntry(try r.fs.link(ino, newParent: newParent, newName: cString(newName))) }
}

private func opUnlink(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    serve(req) { r in
        try r.fs.unlink(parent: parent, name: cString(name))
        r.replyOK()
    }
}

private func opRmdir(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    serve(req) { r in
        try r.fs.rmdir(parent: parent, name: cString(name))
        r.replyOK()
    }
}

private func opRename(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?,
                      _ newParent: fuse_ino_t, _ newName: UnsafePointer<CChar>?, _ flags: UInt32) {
    serve(req) { r in
        try r.fs.rename(parent: parent, name: cString(name), newParent: newParent, newName: cString(newName), flags: flags)
        r.replyOK()
    }
}

private func opReadlink(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
    serve(req) { r in fuse_reply_readlink(req, try r.fs.readlink(ino)) }
}

// MARK: Attributes

private func opGetattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in r.replyAttributes(try r.fs.getattr(ino)) }
}

/// SETATTR: the fields `toSet` names, as `AttributeChanges`.
private func opSetattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ attr: UnsafeMutablePointer<stat>?, _ toSet: Int32,
                       _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    let a = attr!.pointee
    var ch = WarpFileSystem.AttributeChanges()
    if toSet & FUSE_SET_ATTR_MODE != 0 { ch.mode = a.st_mode }
    if toSet & FUSE_SET_ATTR_UID != 0 { ch.uid = a.st_uid }
    if toSet & FUSE_SET_ATTR_GID != 0 { ch.gid = a.st_gid }
    if toSet & FUSE_SET_ATTR_SIZE != 0 { ch.size = UInt64(a.st_size) }
    let now = timespec(tv_sec: 0, tv_nsec: Int(WD_UTIME_NOW))
    if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 { ch.atime = now } else if toSet & FUSE_SET_ATTR_ATIME != 0 { ch.atime = a.st_atim }
    if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 { ch.mtime = now } else if toSet & FUSE_SET_ATTR_MTIME != 0 { ch.mtime = a.st_mtim }
    if toSet & FUSE_SET_ATTR_CTIME != 0 { ch.ctime = a.st_ctim }
    serve(req) { r in r.replyAttributes(try r.fs.setattr(ino, ch, caller: r.caller)) }
}

private func opStatfs(_ req: fuse_req_t?, _ ino: fuse_ino_t) {
    serve(req) { r in
        var st = try r.fs.statfs()
        fuse_reply_statfs(req, &st)
    }
}

// MARK: Files

/// OPEN: the core's handle goes into `fi.fh`; it is released again when
/// the kernel no longer waits for the reply (the opener was interrupted).
private func opOpen(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        let h = try r.fs.open(ino, flags: fi!.pointee.flags, caller: r.caller)
        keep(h, in: fi)
        wf_fi_set_keep_cache(fi, r.fs.options.keepCache ? 1 : 0)
        if fuse_reply_open(req, fi) != 0 { r.fs.release(h) }
    }
}

/// CREATE: as MKNOD of a regular file, then OPEN.
private func opCreate(_ req: fuse_req_t?, _ parent: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ mode: mode_t,
                      _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        let mode = r.creationMode(parent: parent, mode)
        let (e, h) = try r.fs.create(parent: parent, name: cString(name), mode: mode, flags: fi!.pointee.flags, caller: r.caller)
        keep(h, in: fi)
        wf_fi_set_keep_cache(fi, r.fs.options.keepCache ? 1 : 0)
        var p = entryParam(e, r.fs)
        if fuse_reply_create(req, &p, fi) != 0 { r.fs.release(h) }
    }
}

/// READ into one of the server's reused reply buffers.
private func opRead(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        let buf = r.server.replyBuffers.take(size)
        defer { r.server.replyBuffers.give(buf) }
        let n = try r.fs.read(handle(fi), offset: UInt64(off), count: size, into: buf.baseAddress!)
        fuse_reply_buf(req, buf.baseAddress!.assumingMemoryBound(to: CChar.self), n)
    }
}

/// WRITE: the kernel's write-back of cached pages carries no writer.
private func opWrite(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ data: UnsafePointer<CChar>?, _ size: Int, _ off: off_t,
                     _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        let writer = wf_fi_writepage(fi) != 0 ? nil : r.caller
        let n = try r.fs.write(handle(fi), offset: UInt64(off), count: size, from: UnsafeRawPointer(data!), caller: writer)
        fuse_reply_write(req, n)
    }
}

private func opFlush(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        try r.fs.flush(handle(fi))
        r.replyOK()
    }
}

private func opRelease(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    let r = Request(req)
    r.fs.release(handle(fi))
    r.replyOK()
}

private func opFsync(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        try r.fs.fsync(handle(fi), dataOnly: datasync != 0)
        r.replyOK()
    }
}

private func opFallocate(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ mode: Int32, _ off: off_t, _ length: off_t,
                         _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        try r.fs.fallocate(handle(fi), mode: mode, offset: UInt64(off), length: UInt64(length), caller: r.caller)
        r.replyOK()
    }
}

private func opLseek(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ off: off_t, _ whence: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in fuse_reply_lseek(req, off_t(try r.fs.lseek(handle(fi), offset: UInt64(off), whence: whence))) }
}

// MARK: Directories

private func opOpendir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        let h = try r.fs.opendir(ino)
        keep(h, in: fi)
        if fuse_reply_open(req, fi) != 0 { r.fs.releasedir(h) }
    }
}

private func opReaddir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    readDirectory(Request(req), ino, size, off, fi, plus: false)
}

private func opReaddirplus(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int, _ off: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    readDirectory(Request(req), ino, size, off, fi, plus: true)
}

/// READDIR and READDIRPLUS: the entries from `off` on that fit in `size`
/// bytes, each with the offset of the next. READDIRPLUS looks each name up
/// (a kernel lookup, given back when the entry does not fit); a name gone
/// since OPENDIR is left out.
private func readDirectory(_ r: Request, _ ino: fuse_ino_t, _ size: Int, _ off: off_t,
                           _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
    let entries = r.fs.readdir(handle(fi), offset: Int(off))
    let buf = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
    defer { buf.deallocate() }
    var pos = 0
    var index = Int(off)
    for e in entries {
        index += 1
        let dots = e.name == "." || e.name == ".."
        if plus {
            var p = fuse_entry_param()
            var looked: WarpFileSystem.Entry?
            if dots {
                p.attr.st_ino = ino_t(e.ino)
                p.attr.st_mode = mode_t(e.type) << 12
            } else {
                guard let en = try? r.fs.lookup(parent: ino, name: e.name) else { continue }
                looked = en
                p = entryParam(en, r.fs)
            }
            let n = fuse_add_direntry_plus(r.req, buf + pos, size - pos, e.name, &p, off_t(index))
            if n > size - pos {
                if let looked { r.fs.forget(looked.nodeID, 1) }
                break
            }
            pos += n
        } else {
            var st = stat()
            st.st_ino = ino_t(e.ino)
            st.st_mode = mode_t(e.type) << 12
            let n = fuse_add_direntry(r.req, buf + pos, size - pos, e.name, &st, off_t(index))
            if n > size - pos { break }
            pos += n
        }
    }
    fuse_reply_buf(r.req, buf, pos)
}

private func opReleasedir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    let r = Request(req)
    r.fs.releasedir(handle(fi))
    r.replyOK()
}

private func opFsyncdir(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ datasync: Int32, _ fi: UnsafeMutablePointer<fuse_file_info>?) {
    serve(req) { r in
        try r.fs.fsyncdir(handle(fi))
        r.replyOK()
    }
}

// MARK: Extended attributes

/// SETXATTR; an access ACL set by a caller outside the file's group also
/// drops set-group-ID (`accessACLWasSet`).
private func opSetxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?,
                        _ value: UnsafePointer<CChar>?, _ size: Int, _ flags: Int32) {
    serve(req) { r in
        let name = cString(name)
        try r.fs.setxattr(ino, name: name, value: UnsafeRawBufferPointer(start: value, count: size), flags: flags, caller: r.caller)
        if name == PosixACL.accessName { r.fs.accessACLWasSet(ino, caller: r.caller, groups: r.groups) }
        r.replyOK()
    }
}

private func opGetxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?, _ size: Int) {
    serve(req) { r in
        try r.replyXattr(size) { buf in try r.fs.getxattr(ino, name: cString(name), into: buf, caller: r.caller) }
    }
}

/// LISTXATTR: `trusted.*` names only for root.
private func opListxattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ size: Int) {
    serve(req) { r in
        try r.replyXattr(size) { buf in try r.fs.listxattr(ino, into: buf, trusted: r.caller.uid == 0) }
    }
}

private func opRemovexattr(_ req: fuse_req_t?, _ ino: fuse_ino_t, _ name: UnsafePointer<CChar>?) {
    serve(req) { r in
        try r.fs.removexattr(ino, name: cString(name), caller: r.caller)
        r.replyOK()
    }
}
