/// The release of WarpFS and WarpDrive: what `warpfs --version` and
/// `warpdrived --version` print, and the version `scripts/package` gives
/// the Debian package (it asks the built `warpfs`). The one place to bump.
public enum Release {
    public static let version = "0.1.0"
}
