import WarpFSFormat

// The block index: what each block's two slots hold (rebuilt from the slot
// headers on open, changed by every store and sync).

extension CompressedFile {
    /// Per block: what each of its two slots holds, which is newest, and
    /// which holds the last durable version.
    struct Entry {
        var slot: (SlotHeader?, SlotHeader?) = (nil, nil)
        var current: Int? = nil
        var durable: Int? = nil

        func header(_ s: Int) -> SlotHeader? { s == 0 ? slot.0 : slot.1 }
        mutating func set(_ s: Int, _ h: SlotHeader?) { if s == 0 { slot.0 = h } else { slot.1 = h } }
        var newest: SlotHeader? { current.flatMap { header($0) } }
        var isHole: Bool { newest == nil || newest!.encoding == .zero }
        var hasStale: Bool { slot.0 != nil && slot.1 != nil }
        var isEmpty: Bool { slot.0 == nil && slot.1 == nil && current == nil && durable == nil }
    }

    /// The entries of a file's blocks, stored only for blocks that have a
    /// slot: a sparse terabyte costs nothing, and a header claiming an
    /// absurd size cannot make the index allocate for it.
    struct BlockIndex {
        /// Blocks covered by the logical size.
        private(set) var count = 0
        private var stored: [Int: Entry] = [:]

        subscript(b: Int) -> Entry {
            get { stored[b] ?? Entry() }
            set { stored[b] = newValue.isEmpty ? nil : newValue }
        }
        mutating func grow(to n: Int) { count = max(count, n) }
        /// Forgets blocks from `n` on (their slots must already be cleared).
        mutating func shrink(to n: Int) {
            count = n
            for b in stored.keys where b >= n { stored[b] = nil }
        }
        /// Blocks with an entry at or after `b` (in no particular order).
        func populated(from b: Int) -> [Int] { stored.keys.filter { $0 >= b } }
    }
}
