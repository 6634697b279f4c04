import BenchSupport
import Testing

@Suite struct StatsTests {
    @Test func medianOfOddAndEvenCounts() {
        #expect(median([3, 1, 2]) == 2)
        #expect(median([4, 1, 3, 2]) == 2.5)
        #expect(median([7]) == 7)
        #expect(median([]).isNaN)
    }

    @Test func nearestRankPercentile() {
        let xs = (1...100).map(Double.init)
        #expect(percentileSorted(xs, 0.99) == 99)
        #expect(percentileSorted(xs, 0.5) == 50)
        #expect(percentileSorted(xs, 0) == 1)
        #expect(percentileSorted(xs, 1) == 100)
        #expect(percentileSorted([1, 2, 3, 4], 0.5) == 2)
        #expect(percentileSorted([], 0.5).isNaN)
    }

    /// `warpfs bench`'s rule: index ⌊p·n⌋, so its p50 of an even count is the upper middle value.
    @Test func indexFloorPercentile() {
        let xs = (1...1000).map(Double.init)
        #expect(percentileSorted(xs, 0.99, rule: .indexFloor) == 991)
        #expect(percentileSorted(xs, 0.99, rule: .nearestRank) == 990)
        #expect(percentileSorted([1, 2, 3, 4], 0.5, rule: .indexFloor) == 3)
        #expect(percentileSorted([1, 2, 3], 0.5, rule: .indexFloor) == 2)
        #expect(percentileSorted([5], 0.99, rule: .indexFloor) == 5)
        #expect(percentileSorted(xs, 1, rule: .indexFloor) == 1000)
        #expect(percentileSorted([], 0.5, rule: .indexFloor).isNaN)
    }

    @Test func trialRates() {
        let t = Trial(bytes: 500_000_000, wallNs: 2_000_000_000, cpuNs: 1_000_000_000)
        #expect(t.mbps == 250)
        #expect(t.cpuPerGB == 2)
        #expect(t.engineBusyNs == 0)
    }

    @Test func xorShiftIsTheSameSequenceEveryRun() {
        var a = XorShift(seed: 1)
        #expect([a.next(), a.next(), a.next()] == [0x47e4_ce4b_896c_dd1d, 0xabcf_a6a8_e079_651d, 0xb9d1_0d8f_eb73_1f57])
        var even = XorShift(seed: 0), one = XorShift(seed: 1)
        #expect(even.next() == one.next())
    }
}
