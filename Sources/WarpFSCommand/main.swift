// The `warpfs` command: mount a compressed directory, unmount it, and
// convert files of a backing directory offline.
import ArgumentParser

WarpFS.main()
