#if canImport(Glibc)
import Glibc
#endif

/// A real unprivileged account for permission tests. `ensure` creates it
/// (a system user with its own group, no home, no login shell) the first
/// time any test asks for it, so a fresh machine needs no set-up by hand.
public struct TestUser: Sendable, CustomStringConvertible {
    public let name: String
    public let uid: uid_t
    public let gid: gid_t

    /// Failure to create or find the account.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The account `name`, created with `useradd` if it does not exist.
    /// Must run as root (tests that use it are root-only anyway).
    public static func ensure(_ name: String = "warpfs-test") throws -> TestUser {
        if let u = lookup(name) { return u }
        let r = runCommand(["/usr/sbin/useradd", "--system", "--no-create-home", "--user-group",
                            "--shell", "/usr/sbin/nologin", name])
        // Another test process may have created it meanwhile (exit 9: name in use).
        if let u = lookup(name) { return u }
        throw Failure(description: "useradd \(name) failed (\(r.status)): \(r.output)")
    }

    /// A group `name` (created with `groupadd` if missing) and its gid.
    public static func ensureGroup(_ name: String) throws -> gid_t {
        if let g = getgrnam(name) { return g.pointee.gr_gid }
        let r = runCommand(["/usr/sbin/groupadd", "--system", name])
        if let g = getgrnam(name) { return g.pointee.gr_gid }
        throw Failure(description: "groupadd \(name) failed (\(r.status)): \(r.output)")
    }

    /// Makes the account a member of `group` (supplementary).
    public func join(_ group: String) throws {
        let r = runCommand(["/usr/sbin/usermod", "-a", "-G", group, name])
        guard r.status == 0 else { throw Failure(description: "usermod -a -G \(group) \(name): \(r.output)") }
    }

    private static func lookup(_ name: String) -> TestUser? {
        guard let p = getpwnam(name) else { return nil }
        return TestUser(name: name, uid: p.pointee.pw_uid, gid: p.pointee.pw_gid)
    }

    /// `args` prefixed so that they run as this user: real and effective
    /// ids, the user's own supplementary groups, no capabilities.
    public func command(_ args: [String]) -> [String] {
        ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--init-groups", "--inh-caps=-all", "--"] + args
    }

    /// Runs `args` as this user (see `command`).
    public func run(_ args: [String]) -> (status: Int32, output: String) { runCommand(command(args)) }

    /// Runs a shell snippet as this user with `umask` set first.
    public func shell(_ script: String, umask: String = "022") -> (status: Int32, output: String) {
        run(["/bin/sh", "-c", "umask \(umask); " + script])
    }

    public var description: String { "\(name) (\(uid):\(gid))" }
}

/// Makes every directory from `path` up to `/` searchable by others, so an
/// unprivileged test user can reach a temporary directory made with mode 0700.
public func openPathForOthers(_ path: String) {
    var p = path
    while !p.isEmpty && p != "/" {
        var st = stat()
        if stat(p, &st) == 0 && st.st_mode & 0o001 == 0 { chmod(p, (st.st_mode & 0o7777) | 0o055) }
        guard let slash = p.lastIndex(of: "/") else { break }
        p = String(p[..<slash])
    }
}
