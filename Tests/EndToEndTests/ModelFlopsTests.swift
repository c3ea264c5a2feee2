import Foundation
import XCTest

/// MFU: model FLOP/s and their share of the cached, measured peak, in the progress line and the
/// final metrics record; the peak's cache is written once, reused, and replaced when stale or
/// broken, and a cache that cannot be written never stops a run.
final class ModelFlopsTests: XCTestCase {
    static let data = try! SmallData.write()
    static let flags = ["--batch-size", "12", "--steps", "40", "--val-batches", "2", "--samples", "0", "--log-every", "20", "--data", data]
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1

    /// Runs `train_dp -np 2` with `XDG_CACHE_HOME=cache`; returns stdout and the final record.
    func run(cache: String) throws -> (String, [String: Any]) {
        let (outcome, metrics) = try Launch.trained("train_dp", np: 2, Self.flags, environment: ["XDG_CACHE_HOME": cache], timeout: 120)
        return (outcome.stdout, try metrics.finalRecord())
    }

    func cachedPeak(_ cache: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: cache + "/parallelisms-swift/peak.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func testFinalRecordAndProgressLineReportMFU() throws {
        let cache = try Launch.temporaryDirectory().path
        let (first, record) = try run(cache: cache)
        XCTAssertTrue(first.contains("measured now"), first)
        let peak = try XCTUnwrap(cachedPeak(cache)["flops_per_second"] as? Double)
        XCTAssertGreaterThan(peak, 1e9)

        // 6·B·Σ in·out over the Linears: fc1 [16·16 × 64] and head [64 × vocab], B = 12.
        let flopsPerStep = 6.0 * 12 * Double(256 * 64 + 64 * Self.vocab)
        XCTAssertEqual(record["flops_per_step"] as? Double, flopsPerStep)
        let seconds = try XCTUnwrap(record["training_seconds"] as? Double)
        let steps = try XCTUnwrap(record["train_steps"] as? Int)
        let achieved = try XCTUnwrap(record["model_flops_per_second"] as? Double)
        XCTAssertEqual(achieved, flopsPerStep * Double(steps) / seconds, accuracy: 1e-9 * achieved)
        // The run multiplies the peak it measured; the cache file holds it as decimal text, which
        // may round its last digit (seen: …783.10951 against …783.1095).
        XCTAssertEqual(try XCTUnwrap(record["peak_flops_per_second"] as? Double), 2 * peak, accuracy: 1e-12 * peak,
                       "two ranks × the cached single-core peak")
        let mfu = try XCTUnwrap(record["mfu"] as? Double)
        XCTAssertEqual(mfu, achieved / (2 * peak), accuracy: 1e-12)
        let progress = first.split(separator: "\n").filter { $0.hasPrefix("step 20/40") || $0.hasPrefix("step 40/40") }
        XCTAssertEqual(progress.count, 2, first)
        XCTAssertTrue(progress.allSatisfy { $0.contains(" GFLOP/s  MFU ") && $0.hasSuffix("%") }, first)

        // The second run reads the cache.
        let (second, again) = try run(cache: cache)
        XCTAssertTrue(second.contains("(cached in \(cache)/parallelisms-swift/peak.json, measured "), second)
        XCTAssertFalse(second.contains("measured now"), second)
        XCTAssertEqual(try XCTUnwrap(again["peak_flops_per_second"] as? Double), 2 * peak, accuracy: 1e-12 * peak)
    }

    func testStaleOrBrokenCacheIsMeasuredAgain() throws {
        let cache = try Launch.temporaryDirectory().path
        _ = try run(cache: cache)
        var stale = try cachedPeak(cache)
        stale["cpu"] = "another CPU"
        stale["flops_per_second"] = 1.0
        let path = cache + "/parallelisms-swift/peak.json"
        try JSONSerialization.data(withJSONObject: stale).write(to: URL(fileURLWithPath: path))
        let (output, record) = try run(cache: cache)
        XCTAssertTrue(output.contains("measured now"), output)
        XCTAssertNotEqual(try cachedPeak(cache)["cpu"] as? String, "another CPU", "the stale cache is replaced")
        XCTAssertGreaterThan(record["peak_flops_per_second"] as? Double ?? 0, 1e9)

        try Data("not json".utf8).write(to: URL(fileURLWithPath: path))
        let (broken, _) = try run(cache: cache)
        XCTAssertTrue(broken.contains("measured now"), broken)

        // XDG_CACHE_HOME is a file: nothing can be cached, and the run goes on.
        let (unwritable, _) = try run(cache: path)
        XCTAssertTrue(unwritable.contains("not cached"), unwritable)
    }
}
