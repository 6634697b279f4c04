import ArgumentParser
import WarpFSCore

/// One `-o` argument of `warpfs mount`: a comma-separated option list,
/// parsed once all lists are read (`MountOptions.apply`). As an argument
/// type it lists `MountOptions.table`, so `--help`, the completion scripts
/// and warpfs(1) (generated from the same definition) show every option the
/// parser accepts, with the same words.
struct MountOptionList: ExpressibleByArgument {
    let text: String

    init?(argument: String) { text = argument }

    static var allValueStrings: [String] { MountOptions.table.map(\.label) }

    static var allValueDescriptions: [String: String] {
        Dictionary(uniqueKeysWithValues: MountOptions.table.map { ($0.label, $0.description) })
    }

    static var defaultCompletionKind: CompletionKind { .list(MountOptions.table.flatMap(\.completions)) }
}

/// The first arguments of the `mount(8)` form, `warpfs BACKING MOUNTPOINT
/// -o OPTIONS` (what mount.fuse3 runs for `-t fuse.warpfs`), are two
/// paths instead of a subcommand: that form gets `mount` put in front.
func withMountSubcommand(_ arguments: [String]) -> [String] {
    let names = Set(WarpFS.configuration.subcommands.map { $0._commandName } + ["help"])
    guard arguments.count >= 2, !names.contains(arguments[0]),
          !arguments[0].hasPrefix("-"), !arguments[1].hasPrefix("-") else { return arguments }
    return ["mount"] + arguments
}
