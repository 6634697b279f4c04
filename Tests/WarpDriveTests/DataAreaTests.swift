import Testing
@testable import WarpDrive

/// The first-fit allocator `Queue` copies buffers through for a device that
/// addresses DUS offsets (`UacceDevice`).
@Suite struct DataAreaTests {
    @Test func allocatesFirstFitAndMergesFreedRanges() {
        var a = DataAreaAllocator(start: 4096, end: 4096 + 1024)
        let x = a.allocate(100), y = a.allocate(64), z = a.allocate(1)
        #expect(x == 4096 && y == 4096 + 128 && z == 4096 + 192)
        #expect(a.allocate(1024) == nil)
        a.release(4096 + 128, 64)
        #expect(a.allocate(65) == 4096 + 256)  // the 64-byte hole is too small
        #expect(a.allocate(64) == 4096 + 128)  // and now filled
        a.release(4096, 100); a.release(4096 + 128, 64); a.release(4096 + 192, 1); a.release(4096 + 256, 65)
        #expect(a.allocate(1024) == 4096)      // everything merged back
        #expect(a.allocate(1) == nil)
    }

    @Test func anEmptyAreaHasNothing() {
        var a = DataAreaAllocator(start: 100, end: 100)
        #expect(a.allocate(1) == nil)
    }
}
