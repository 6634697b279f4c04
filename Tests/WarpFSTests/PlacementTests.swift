import Testing
import WarpFSFormat
@testable import WarpFSCore

/// Payload placement in a group's region, as pure functions: no mount.
@Suite struct PlacementTests {
    @Test func firstFitStartsAtTheCursorAndSkipsUsedRuns() {
        #expect(PayloadPlacement.firstFit(pages: 2, used: [], cursor: 0, regionPages: 100) == 0)
        #expect(PayloadPlacement.firstFit(pages: 2, used: [], cursor: 40, regionPages: 100) == 40)
        let used = [5..<6, 0..<3]                                        // any order
        #expect(PayloadPlacement.firstFit(pages: 2, used: used, cursor: 0, regionPages: 100) == 3)
        #expect(PayloadPlacement.firstFit(pages: 3, used: used, cursor: 0, regionPages: 100) == 6)
        #expect(PayloadPlacement.firstFit(pages: 1, used: used, cursor: 2, regionPages: 100) == 3)
        #expect(PayloadPlacement.firstFit(pages: 2, used: [3..<3], cursor: 2, regionPages: 100) == 2)   // empty ranges name no page
    }

    @Test func firstFitWrapsOnceThenGivesUp() {
        // No room after the cursor: from the start of the region.
        #expect(PayloadPlacement.firstFit(pages: 4, used: [0..<2, 90..<98], cursor: 90, regionPages: 100) == 2)
        // No room anywhere.
        #expect(PayloadPlacement.firstFit(pages: 4, used: [0..<48, 50..<98], cursor: 0, regionPages: 100) == nil)
        #expect(PayloadPlacement.firstFit(pages: 101, used: [], cursor: 0, regionPages: 100) == nil)
        #expect(PayloadPlacement.firstFit(pages: 100, used: [], cursor: 7, regionPages: 100) == 0)
    }

    /// Blocks written in order, each placed at the cursor the previous one
    /// left, lie next to each other.
    @Test func payloadsWrittenInOrderArePacked() {
        var used: [Range<Int>] = []
        var cursor = 0
        for pages in [3, 1, 16, 2, 5] {
            let at = PayloadPlacement.firstFit(pages: pages, used: used, cursor: cursor, regionPages: 1024)!
            #expect(at == cursor)
            used.append(at..<(at + pages))
            cursor = at + pages
        }
        #expect(cursor == 27)
    }

    /// The region's promise (BlockLayout.regionPages): with the 31 other
    /// slots of a group holding payloads of at most a block each, anywhere,
    /// a payload of a whole block always fits, and never over another.
    @Test(arguments: [4096, 65536, 1 << 20])
    func aWholeBlockAlwaysFitsBesideThirtyOneOthers(blockSize: Int) {
        let layout = BlockLayout(blockSize: blockSize)
        let p = BlockLayout.pages(blockSize)
        var x: UInt64 = UInt64(blockSize)
        func next(_ n: Int) -> Int { x ^= x >> 12; x ^= x << 25; x ^= x >> 27; return Int((x &* 0x2545F4914F6CDD1D) >> 33) % n }
        for _ in 0..<200 {
            // Up to 31 payloads of 1...p pages, at random free places.
            var used: [Range<Int>] = []
            for _ in 0..<31 {
                let len = 1 + next(p)
                let start = next(layout.regionPages - len + 1)
                let r = start..<(start + len)
                if !used.contains(where: { $0.overlaps(r) }) { used.append(r) }
            }
            let cursor = next(layout.regionPages)
            guard let at = PayloadPlacement.firstFit(pages: p, used: used, cursor: cursor, regionPages: layout.regionPages) else {
                Issue.record("no place for \(p) pages among \(used)")
                return
            }
            let mine = at..<(at + p)
            #expect(mine.upperBound <= layout.regionPages)
            #expect(!used.contains { $0.overlaps(mine) })
        }
    }

    @Test func anOldVersionReleasesOnlyPagesNothingElseNames() {
        // The new version took pages 12..<14 of the old 10..<16; another slot names 15.
        #expect(PayloadPlacement.releasable(10..<16, keeping: 12..<14, others: [15..<16, 40..<50]) == [10..<12, 14..<15])
        #expect(PayloadPlacement.releasable(10..<16, keeping: 0..<0, others: []) == [10..<16])
        #expect(PayloadPlacement.releasable(10..<16, keeping: 8..<20, others: []) == [])
    }
}
