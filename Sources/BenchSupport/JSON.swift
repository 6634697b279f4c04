// A minimal JSON value and writer.
import WarpDrive

/// A JSON value whose objects keep their keys in the order given.
/// Rendered with two-space indentation, one member or element per line,
/// except arrays of numbers and `.line` values, which take one line.
public indirect enum JSON: Sendable {
    case number(Double), int(Int), string(String), bool(Bool), array([JSON]), object([(String, JSON)])
    /// The value on one line: `{"a": 1, "b": [2, 3]}`.
    case line(JSON)

    /// The text; `indent` is the indentation of the line the value starts on.
    /// Numbers that are not finite are `null`.
    public func render(_ indent: String = "") -> String {
        switch self {
        case .number(let x): return x.isFinite ? "\(x)" : "null"
        case .int(let i): return "\(i)"
        case .bool(let b): return b ? "true" : "false"
        case .string(let s): return JSON.quote(s)
        case .line(let v): return v.renderLine()
        case .array(let xs):
            if xs.allSatisfy({ if case .number = $0 { return true }; if case .int = $0 { return true }; return false }) {
                return "[" + xs.map { $0.render() }.joined(separator: ", ") + "]"
            }
            let inner = indent + "  "
            return "[\n" + xs.map { inner + $0.render(inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let fields):
            let inner = indent + "  "
            return "{\n" + fields.map { inner + JSON.quote($0.0) + ": " + $0.1.render(inner) }.joined(separator: ",\n")
                + "\n" + indent + "}"
        }
    }

    private func renderLine() -> String {
        switch self {
        case .array(let xs): return "[" + xs.map { $0.renderLine() }.joined(separator: ", ") + "]"
        case .object(let fields):
            return "{" + fields.map { JSON.quote($0.0) + ": " + $0.1.renderLine() }.joined(separator: ", ") + "}"
        case .line(let v): return v.renderLine()
        default: return render()
        }
    }

    /// A JSON string literal (the same quoting as `warpfs devices --json`).
    public static func quote(_ s: String) -> String { JSONLiteral.string(s) }
}
