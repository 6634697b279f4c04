import Testing
import WarpFSFormat
@testable import WarpFSCore

/// Payload placement in a group's region, as pure functions: no mount.
@Suite struct PlacementTests {
    @Test func firstFitTakesTheLowestRunThatHoldsThePayload() {
        #expect(PayloadPlacement.firstFit(length: 2, unit: 1, used: [], regionSize: 100) == 0)
        let used = [5..<6, 0..<3]                                        // any order
        #expect(PayloadPlacement.firstFit(length: 2, unit: 1, used: used, regionSize: 100) == 3)
        #expect(PayloadPlacement.firstFit(length: 3, unit: 1, used: used, regionSize: 100) == 6)
        #expect(PayloadPlacement.firstFit(length: 2, unit: 1, used: [3..<3], regionSize: 100) == 0)   // empty ranges take nothing
        #expect(PayloadPlacement.firstFit(length: 4, unit: 1, used: [0..<2, 90..<98], regionSize: 100) == 2)
        // No room anywhere.
        #expect(PayloadPlacement.firstFit(length: 4, unit: 1, used: [0..<48, 50..<98], regionSize: 100) == nil)
        #expect(PayloadPlacement.firstFit(length: 101, unit: 1, used: [], regionSize: 100) == nil)
        #expect(PayloadPlacement.firstFit(length: 100, unit: 1, used: [], regionSize: 100) == 0)
    }

    /// Version 2 places whole pages: a start is a multiple of the unit.
    @Test func firstFitKeepsTheUnit() {
        #expect(PayloadPlacement.firstFit(length: 4096, unit: 4096, used: [0..<4096], regionSize: 1 << 20) == 4096)
        #expect(PayloadPlacement.firstFit(length: 4096, unit: 4096, used: [0..<100], regionSize: 1 << 20) == 4096)
        #expect(PayloadPlacement.firstFit(length: 8192, unit: 4096, used: [0..<4096, 8192..<12288], regionSize: 1 << 20) == 12288)
    }

    /// Blocks written in order lie next to each other, byte for byte in
    /// version 3; a dropped version's bytes are used again first.
    @Test func payloadsWrittenInOrderArePacked() {
        var used: [Range<Int>] = []
        var end = 0
        for length in [3000, 1, 16000, 2048, 5] {
            let at = PayloadPlacement.firstFit(length: length, unit: 1, used: used, regionSize: 1 << 22)!
            #expect(at == end)
            used.append(at..<(at + length))
            end = at + length
        }
        #expect(end == 21054)
        // The first payload's older version dropped: a new one that fits goes there.
        used.removeFirst()
        #expect(PayloadPlacement.firstFit(length: 2900, unit: 1, used: used, regionSize: 1 << 22) == 0)
        #expect(PayloadPlacement.firstFit(length: 3001, unit: 1, used: used, regionSize: 1 << 22) == 21054)
    }

    /// The region's promise (BlockLayout.regionSize): with the 31 other
    /// slots of a group holding payloads of at most a block each, anywhere,
    /// a payload of a whole block always fits, and never over another.
    @Test(arguments: [(4096, UInt16(2)), (65536, 2), (1 << 20, 2), (4096, 3), (65536, 3), (1 << 20, 3)])
    func aWholeBlockAlwaysFitsBesideThirtyOneOthers(blockSize: Int, version: UInt16) {
        let layout = BlockLayout(blockSize: blockSize, version: version)
        let unit = layout.placementUnit
        var x: UInt64 = UInt64(blockSize) + UInt64(version)
        func next(_ n: Int) -> Int { x ^= x >> 12; x ^= x << 25; x ^= x >> 27; return Int((x &* 0x2545F4914F6CDD1D) >> 33) % n }
        for _ in 0..<200 {
            // Up to 31 payloads of 1...blockSize bytes, at random free places.
            var used: [Range<Int>] = []
            for _ in 0..<31 {
                let len = layout.footprintLength(1 + next(blockSize))
                let start = next((layout.regionSize - len) / unit + 1) * unit
                let r = start..<(start + len)
                if !used.contains(where: { $0.overlaps(r) }) { used.append(r) }
            }
            guard let at = PayloadPlacement.firstFit(length: blockSize, unit: unit, used: used, regionSize: layout.regionSize) else {
                Issue.record("no place for \(blockSize) bytes among \(used)")
                return
            }
            let mine = at..<(at + blockSize)
            #expect(at % unit == 0 && mine.upperBound <= layout.regionSize)
            #expect(!used.contains { $0.overlaps(mine) })
        }
    }
}
