// The `warpfs` command: mount a compressed directory, unmount it, and
// convert files of a backing directory offline.
import ArgumentParser

Fsck.mainIfInvoked()   // fsck(8) exit statuses, usage errors included
WarpFS.main(withMountSubcommand(Array(CommandLine.arguments.dropFirst())))
