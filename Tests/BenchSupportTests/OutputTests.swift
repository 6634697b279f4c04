import BenchSupport
import Testing

@Suite struct TextOutputTests {
    @Test func fixedDecimals() {
        #expect(fmt(3.14159, 2) == "3.14")
        #expect(fmt(1234.5678, 1) == "1234.6")
        #expect(fmt(7, 0) == "7")
        #expect(fmt(0.9996, 3) == "1.000")
        #expect(fmt(.nan, 2) == "-")
        #expect(fmt(.infinity, 1) == "-")
    }

    @Test func padding() {
        #expect(pad("ab", 4) == "ab  ")
        #expect(pad("abcd", 4) == "abcd ")
        #expect(pad("abcdef", 4) == "abcdef ")
        #expect(lpad("ab", 4) == "  ab")
        #expect(lpad("abcd", 4) == " abcd")
        #expect(lpad("median µs", 10) == " median µs")   // µ is one character
    }

    @Test func columnsLayOutHeaderAndRowsAlike() {
        let c = Columns([.left(6), .right(5), .right(8)])
        let header = c.line(["name", "n", "MB/s"])
        let row = c.line(["zlib", "2", "263.2"])
        #expect(header == "name      n    MB/s")
        #expect(row == "zlib      2   263.2")
        #expect(header.count == row.count)
        // A cell as wide as its column keeps one space on its inner side.
        #expect(c.line(["abcdef", "12345", "x"]) == "abcdef  12345       x")
        // Missing cells are empty, extra cells are left out.
        #expect(c.line(["a"]) == "a     " + String(repeating: " ", count: 13))
        #expect(c.line(["a", "1", "2", "extra"]) == c.line(["a", "1", "2"]))
    }
}

@Suite struct JSONTests {
    @Test func escaping() {
        #expect(JSON.quote("plain") == "\"plain\"")
        #expect(JSON.quote("a\"b\\c") == #""a\"b\\c""#)
        #expect(JSON.quote("l1\nl2\tx") == #""l1\nl2\tx""#)
        #expect(JSON.quote("\u{1}\u{1f}") == #""\u0001\u001f""#)
        #expect(JSON.quote("µs / MB/s") == "\"µs / MB/s\"")
    }

    @Test func layout() {
        let v = JSON.object([
            ("name", .string("x")), ("n", .int(3)), ("ok", .bool(true)), ("ratio", .number(0.5)), ("bad", .number(.nan)),
            ("trials", .array([.number(1.5), .int(2)])),
            ("rows", .array([.object([("a", .int(1))])])),
            ("empty", .array([])),
        ])
        #expect(v.render() == """
            {
              "name": "x",
              "n": 3,
              "ok": true,
              "ratio": 0.5,
              "bad": null,
              "trials": [1.5, 2],
              "rows": [
                {
                  "a": 1
                }
              ],
              "empty": []
            }
            """)
    }

    @Test func oneLineValues() {
        let row = JSON.line(.object([("w", .string("seq")), ("runs", .array([.object([("mbps", .number(1.25))]), .object([])]))]))
        let v = JSON.object([("x", .line(.object([("a", .number(2)), ("b", .bool(false))]))), ("results", .array([row, row]))])
        #expect(v.render() == """
            {
              "x": {"a": 2.0, "b": false},
              "results": [
                {"w": "seq", "runs": [{"mbps": 1.25}, {}]},
                {"w": "seq", "runs": [{"mbps": 1.25}, {}]}
              ]
            }
            """)
    }
}
