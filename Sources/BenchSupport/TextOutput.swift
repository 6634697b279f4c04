// Numbers and fixed-width tables as the benches print them.
#if canImport(Glibc)
import Glibc
#endif

/// `x` with `digits` decimals (C's "%.*f"); "-" when not finite.
public func fmt(_ x: Double, _ digits: Int) -> String {
    guard x.isFinite else { return "-" }
    var buf = [CChar](repeating: 0, count: 64)
    _ = withVaList([Int32(digits), x]) { vsnprintf(&buf, 64, "%.*f", $0) }
    return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// `s` left-aligned in `w` characters; one space after it when it is as wide or wider.
public func pad(_ s: String, _ w: Int) -> String { s.count >= w ? s + " " : s + String(repeating: " ", count: w - s.count) }

/// `s` right-aligned in `w` characters; one space before it when it is as wide or wider.
public func lpad(_ s: String, _ w: Int) -> String { s.count >= w ? " " + s : String(repeating: " ", count: w - s.count) + s }

/// Columns of fixed widths: a header and the rows under it are laid out by
/// the same list, so they cannot drift apart.
public struct Columns: Sendable {
    public enum Column: Sendable {
        /// Left-aligned (`pad`).
        case left(Int)
        /// Right-aligned (`lpad`).
        case right(Int)
    }

    public let columns: [Column]

    public init(_ columns: [Column]) { self.columns = columns }

    /// One line: cell i in column i (cells past the last column are left out, missing cells are empty).
    public func line(_ cells: [String]) -> String {
        var s = ""
        for (i, c) in columns.enumerated() {
            let cell = i < cells.count ? cells[i] : ""
            switch c {
            case .left(let w): s += pad(cell, w)
            case .right(let w): s += lpad(cell, w)
            }
        }
        return s
    }
}
