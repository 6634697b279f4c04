/// Where one field of a ring format lives: bits `bits` (low...high, as the
/// hardware manuals write `high:low`) of word `word`. Every field's position
/// is written once, in its format's field table (`ZipSQE.Field`,
/// `CQE.Field`, `Doorbell.Field`), and both the side that encodes and the
/// side that decodes go through it.
struct BitField<Word: FixedWidthInteger & UnsignedInteger & Sendable>: Sendable {
    /// Index of the word in its entry (0 for one-word formats).
    let word: Int
    /// Lowest bit of the field.
    let shift: Int
    /// The field's value bits, unshifted (`width` ones).
    let mask: Word

    init(word: Int = 0, bits: ClosedRange<Int>) {
        precondition(bits.lowerBound >= 0 && bits.upperBound < Word.bitWidth)
        self.word = word
        shift = bits.lowerBound
        mask = Word.max >> (Word.bitWidth - bits.count)
    }

    /// The field's value in word `w`.
    @inline(__always) func get(_ w: Word) -> Word { (w >> shift) & mask }

    /// Sets the field in `w` to `v`, cut to the field's width; other bits are kept.
    @inline(__always) func set(_ v: Word, in w: inout Word) { w = w & ~(mask << shift) | (v & mask) << shift }
}
