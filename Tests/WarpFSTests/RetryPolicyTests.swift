import Testing
import WarpDrive
@testable import WarpFSCore

/// The block pipeline's one retry policy, without a mount or a device.
@Suite struct RetryPolicyTests {
    static let second: UInt64 = 1_000_000_000
    let policy = RetryPolicy(timeoutMilliseconds: 1000)
    let reset = WarpDriveError.deviceReset(device: "zip0", queue: 3)
    let engine = WarpDriveError.engineError(device: "zip0", queue: 3, status: 0x40)
    let timeout = WarpDriveError.timedOut(device: "zip0", queue: 3, milliseconds: 1000)

    @Test func failuresOfTheDataAreFinal() {
        var r = RetryPolicy.Record(firstSent: 0)
        for e: WarpDriveError in [.corruptData("x"), .destinationTooSmall(capacity: 1), .badRequest(status: 3),
                                  .checksumMismatch(expected: 1, actual: 2), .requestTooLarge(bytes: 9, limit: 8)] {
            #expect(!RetryPolicy.isDeviceFailure(e))
            #expect(!policy.retry(after: e, &r, now: 1))
        }
        #expect(r == RetryPolicy.Record(firstSent: 0))     // nothing counted
    }

    @Test func aRequestsOwnFailuresUseUpItsTries() {
        var r = RetryPolicy.Record(firstSent: 0)
        #expect(policy.retry(after: engine, &r, now: 10))
        #expect(policy.retry(after: engine, &r, now: 20))
        #expect(!policy.retry(after: engine, &r, now: 30))   // the third failure is the last try's
        #expect(r.failures == 3)
    }

    /// Time-outs at 1, 2 and 3 time-outs: three tries, as the hung-device test expects.
    @Test func timeOutsGetThreeTriesWithinTheBound() {
        var r = RetryPolicy.Record(firstSent: 0)
        #expect(policy.retry(after: timeout, &r, now: 1 * Self.second + 1))
        #expect(policy.retry(after: timeout, &r, now: 2 * Self.second + 2))
        #expect(!policy.retry(after: timeout, &r, now: 3 * Self.second + 3))
    }

    /// A reset is the device's event: any number of them within the bound
    /// cost the request no try, and its own failures still get theirs.
    @Test func resetsUseUpNoTries() {
        var r = RetryPolicy.Record(firstSent: 0)
        for i in 1...20 { #expect(policy.retry(after: reset, &r, now: UInt64(i) * 20_000_000)) }
        #expect(r.resets == 20 && r.failures == 0)
        #expect(policy.retry(after: engine, &r, now: Self.second))
        #expect(policy.retry(after: reset, &r, now: Self.second + 1))
        #expect(policy.retry(after: engine, &r, now: Self.second + 2))
        #expect(!policy.retry(after: engine, &r, now: Self.second + 3))
    }

    /// A device that keeps resetting: nothing is sent again once attempts x
    /// the time-out have passed since the first try.
    @Test func aDeviceThatKeepsResettingEndsInAnError() {
        #expect(policy.bound == UInt64(RetryPolicy.attempts) * Self.second)
        var r = RetryPolicy.Record(firstSent: 5 * Self.second)
        #expect(policy.retry(after: reset, &r, now: 5 * Self.second + policy.bound - 1))
        #expect(!policy.retry(after: reset, &r, now: 5 * Self.second + policy.bound))
        var late = RetryPolicy.Record(firstSent: 0)
        #expect(!policy.retry(after: engine, &late, now: policy.bound + 1))  // the bound holds for every failure
    }

    @Test func theDeviceFailuresAreTheRetriedOnes() {
        let device: [WarpDriveError] = [reset, engine, timeout, .queueFull(queue: 1), .pageFault(pasid: 1, address: 2),
                                        .system(call: "mmap", errno: 12)]
        for e in device { #expect(RetryPolicy.isDeviceFailure(e), "\(e)") }
        #expect(!RetryPolicy.isDeviceFailure(.busy(device: "zip0")))
        #expect(!RetryPolicy.isDeviceFailure(.noDevice("gone")))
    }

    /// A device gone or full is not retried at once, but says nothing of
    /// the data either (fsck must not call a block damaged for it).
    @Test func aDeviceThatIsGoneSaysNothingOfTheData() {
        let gone: [WarpDriveError] = [.deviceRemoved(device: "warpdrive_zip-0"), .daemonUnavailable(socket: "/s", reason: "x"),
                                      .busy(device: "zip0"), .deviceIsolated(device: "zip0"), .noDevice("gone")]
        var r = RetryPolicy.Record(firstSent: 0)
        for e in gone {
            #expect(RetryPolicy.saysNothingOfTheData(e), "\(e)")
            #expect(!policy.retry(after: e, &r, now: 1), "\(e)")
        }
        #expect(RetryPolicy.saysNothingOfTheData(engine) && RetryPolicy.saysNothingOfTheData(reset))
        #expect(!RetryPolicy.saysNothingOfTheData(.corruptData("x")) && !RetryPolicy.saysNothingOfTheData(.checksumMismatch(expected: 1, actual: 2)))
    }
}
