#if canImport(Glibc)
import Glibc
#endif
import Testing
import WarpFSCore

/// `MountOptions.table` is the parser's whole vocabulary, and what --help,
/// warpfs(1) (generated from --experimental-dump-help) and README show.
@Suite struct MountOptionTableTests {
    /// A valid value for every option that takes one; a new valued option
    /// must be added here, or the first test fails.
    static let samples: [String: String] = [
        "block_size": "16k", "blocksize": "128k", "algorithm": "zstd", "compression": "lz4", "level": "3",
        "engines": "3", "format_version": "2", "deflate_engine": "zlib", "cache_blocks": "8", "pack_delay": "0", "lock_timeout": "5", "memory": "64", "readahead": "0",
        "engine_timeout": "5", "queues": "16", "device": "/run/warpdrive.sock", "log": "/tmp/warpfs.log",
        "user": "alice", "comment": "kept by systemd",
    ]

    /// Every spelling of every entry: its `-o` item(s).
    static func items(_ spec: MountOptionSpec) -> [String] {
        spec.names.flatMap { name -> [String] in
            if spec.prefix { return [name + "systemd.automount", name + "foo=bar"] }
            switch spec.value {
            case .none: return [name]
            case .required: return [name + "=" + (samples[name] ?? "")]
            case .optional: return [name, name + "=" + (samples[name] ?? "")]
            }
        }
    }

    @Test func everyEntryIsParsedAsItsKindSays() throws {
        for spec in MountOptions.table {
            for item in Self.items(spec) {
                var o = MountOptions()
                switch spec.kind {
                case .warpfs, .generic:
                    #expect(throws: Never.self, "\(item)") { try o.apply(item) }
                case .ignored:
                    #expect(throws: Never.self, "\(item)") { try o.apply(item) }
                    #expect(o == MountOptions(), "\(item) is to be ignored but changed the options")
                case .refused:
                    let e = #expect(throws: (any Error).self) { try o.apply(item) }
                    #expect("\(e!)".contains("'\(item)' is not supported"), "\(e!)")
                }
            }
        }
    }

    @Test func unknownOptionsAndMisusedValuesAreNamed() {
        for (item, named) in [("colour=blue", "unknown mount option 'colour'"), ("nosync", "unknown mount option 'nosync'"),
                              ("x-", "unknown mount option 'x-'"), ("ro=1", "'ro' takes no value"),
                              ("level=", "'level' needs a value"), ("algorithm=zip", "algorithm=zip")] {
            var o = MountOptions()
            let e = #expect(throws: (any Error).self) { try o.apply("rw," + item) }
            #expect(e.map { "\($0)".contains(named) } ?? false, "\(item): \(String(describing: e))")
        }
        // The message lists the options there are, from the table.
        var o = MountOptions()
        let e = #expect(throws: (any Error).self) { try o.apply("colour=blue") }
        for name in ["block_size", "noexec", "x-*", "nofail"] { #expect("\(e!)".contains(name)) }
    }

    @Test func genericOptionsSetWhatTheySay() throws {
        let o = try MountOptions(lists: ["defaults,noexec,sync,noatime,ro,nofail,_netdev,x-systemd.automount,comment=x", "log=/tmp/l"])
        #expect(!o.executables && o.synchronous && o.readOnly && o.accessTimes == .noatime && o.logPath == "/tmp/l")
        let p = try MountOptions(lists: ["noexec,sync,ro,strictatime", "exec,async,rw,atime"])
        #expect(p.executables && !p.synchronous && !p.readOnly && p.accessTimes == .relatime)
    }

    /// What --help and warpfs(1) are made from (the -o argument of
    /// `warpfs mount` in --experimental-dump-help) is the table, entry for entry.
    @Test func dumpHelpListsTheTable() throws {
        let dir = makeTempDir()
        defer { removeTree(dir) }
        let r = runCommand([warpfsBinary, "--experimental-dump-help"])
        try #require(r.status == 0)
        try FileIO.write(dir + "/help.json", Array(r.output.utf8))
        let script = """
        import json, sys
        d = json.load(open(sys.argv[1]))
        m = [c for c in d["command"]["subcommands"] if c["commandName"] == "mount"][0]
        a = [x for x in m["arguments"] if x.get("valueName") == "options"][0]
        for v in a["allValues"]: print(v + "\\t" + a["allValueDescriptions"][v])
        """
        let rows = runCommand(["/usr/bin/python3", "-c", script, dir + "/help.json"])
        try #require(rows.status == 0, "\(rows.output)")
        #expect(rows.output == MountOptions.table.map { $0.label + "\t" + $0.description + "\n" }.joined())
    }

    /// README's options table names every spelling the parser accepts.
    @Test func readmeTableNamesEveryOption() throws {
        let readme = String(decoding: try FileIO.read(SystemIntegration.repositoryRoot + "/README.md"), as: UTF8.self)
        let lines = readme.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try #require(lines.firstIndex { $0.hasPrefix("| option | meaning | default |") })
        let table = lines[start...].prefix { $0.hasPrefix("|") }.joined(separator: "\n")
        for spec in MountOptions.table {
            for name in spec.names {
                let shown = spec.prefix ? "`\(name)*`" : "`\(name)"
                #expect(table.contains(shown), "README's options table lacks \(name)")
            }
        }
    }
}
