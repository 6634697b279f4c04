import Testing
@testable import WarpFSCore

/// The set of allocated blocks (fallocate's reservations), without a mount.
@Suite struct BlockRangesTests {
    @Test func insertMergesOverlappingAndTouchingRanges() {
        var s = BlockRanges()
        s.insert(10..<20)
        s.insert(30..<40)
        #expect(s.ranges == [10..<20, 30..<40])
        s.insert(20..<25)                         // touches: one range
        #expect(s.ranges == [10..<25, 30..<40])
        s.insert(0..<5)
        s.insert(24..<31)                         // bridges two
        #expect(s.ranges == [0..<5, 10..<40])
        s.insert(7..<7)                           // empty: nothing
        #expect(s.ranges == [0..<5, 10..<40])
        #expect(s.count == 35)
        #expect(s.contains(4) && !s.contains(5) && s.contains(39) && !s.contains(40))
        #expect(s.count(in: 3..<12) == 4)
        #expect(s.count(in: 100..<200) == 0)
    }

    @Test func removingABlockSplitsItsRange() {
        var s = BlockRanges()
        s.insert(10..<20)
        let first = s.remove(15), again = s.remove(15)
        #expect(first && !again)
        #expect(s.ranges == [10..<15, 16..<20])
        let ends = (s.remove(10), s.remove(19))
        #expect(ends == (true, true))
        #expect(s.ranges == [11..<15, 16..<19])
        s.insert(15..<16)                         // given back
        #expect(s.ranges == [11..<19])
    }

    @Test func removingARangeCountsWhatWasThere() {
        var s = BlockRanges()
        s.insert(0..<10)
        s.insert(20..<30)
        let middle = s.remove(5..<25)
        #expect(middle == 10)
        #expect(s.ranges == [0..<5, 25..<30])
        let outside = s.remove(40..<50)
        #expect(outside == 0)
        let rest = s.remove(0..<Int.max)
        #expect(rest == 10)
        #expect(s.isEmpty)
    }
}
