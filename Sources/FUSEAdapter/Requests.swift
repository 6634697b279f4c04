#if canImport(Glibc)
import Glibc
#endif
import CFuse
import WarpFSCore

/// One request from the kernel as an operation sees it: the file system it
/// is for, who sent it, and its reply. Every operation gives exactly one
/// reply: one of the `reply…` functions, or `fail` with the error's errno.
struct Request {
    let req: fuse_req_t?
    let server: FUSEServer

    init(_ req: fuse_req_t?) {
        self.req = req
        server = Unmanaged<FUSEServer>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    var fs: WarpFileSystem { server.fs }

    /// Who sent the request.
    var caller: WarpFileSystem.Caller {
        let c = fuse_req_ctx(req)!.pointee
        return WarpFileSystem.Caller(uid: c.uid, gid: c.gid, pid: c.pid)
    }

    /// The caller's supplementary groups (read by libfuse from /proc).
    var groups: [gid_t] {
        var list = [gid_t](repeating: 0, count: 64)
        var n = fuse_req_getgroups(req, Int32(list.count), &list)
        if n > Int32(list.count) {
            list = [gid_t](repeating: 0, count: Int(n))
            n = fuse_req_getgroups(req, Int32(list.count), &list)
        }
        return n > 0 ? Array(list.prefix(min(Int(n), list.count))) : []
    }

    /// The mode to create a node with under `parent`, from the mode and the
    /// caller's umask the kernel sent (`WarpFileSystem.creationMode`).
    func creationMode(parent: fuse_ino_t, _ mode: mode_t) -> mode_t {
        fs.creationMode(parent: parent, mode: mode, umask: fuse_req_ctx(req)!.pointee.umask)
    }

    // MARK: Replies

    func fail(_ error: Error) {
        let errno = (error as? FSError)?.errno ?? EIO
        fs.statistics.noteErrorReply(errno)
        fuse_reply_err(req, errno)
    }

    func replyOK() { fuse_reply_err(req, 0) }

    /// For FORGET, which gets no answer.
    func replyNone() { fuse_reply_none(req) }

    func replyEntry(_ e: WarpFileSystem.Entry) {
        var p = entryParam(e, fs)
        fuse_reply_entry(req, &p)
    }

    func replyAttributes(_ st: stat) {
        var st = st
        fuse_reply_attr(req, &st, fs.attributeTimeout)
    }

    /// A GETXATTR or LISTXATTR of `size` bytes: the size needed when `size`
    /// is 0, else the bytes `fill` copies into a buffer of `size` bytes.
    func replyXattr(_ size: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Int) throws {
        if size == 0 {
            fuse_reply_xattr(req, try fill(UnsafeMutableRawBufferPointer(start: nil, count: 0)))
            return
        }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
        defer { buf.deallocate() }
        let n = try fill(buf)
        fuse_reply_buf(req, buf.baseAddress!.assumingMemoryBound(to: CChar.self), n)
    }
}

/// Runs operation `body` for `req`; an error it throws is the reply.
@inline(__always)
func serve(_ req: fuse_req_t?, _ body: (Request) throws -> Void) {
    let r = Request(req)
    do { try body(r) } catch { r.fail(error) }
}

/// What the kernel caches of a looked-up name: the node's attributes for
/// the attribute timeout, the name for the entry timeout.
func entryParam(_ e: WarpFileSystem.Entry, _ fs: WarpFileSystem) -> fuse_entry_param {
    var p = fuse_entry_param()
    p.ino = e.nodeID
    p.generation = e.generation
    p.attr = e.attributes
    p.attr_timeout = fs.attributeTimeout
    p.entry_timeout = fs.entryTimeout
    return p
}

/// A name or path the kernel sent.
func cString(_ p: UnsafePointer<CChar>?) -> String { String(cString: p!) }

/// The core's handle of an open file or directory, kept in `fi.fh`.
func handle(_ fi: UnsafeMutablePointer<fuse_file_info>?) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer(bitPattern: UInt(fi!.pointee.fh))!
}

func keep(_ handle: UnsafeMutableRawPointer, in fi: UnsafeMutablePointer<fuse_file_info>?) {
    fi!.pointee.fh = UInt64(UInt(bitPattern: handle))
}
