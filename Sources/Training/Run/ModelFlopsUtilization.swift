import Core

/// Model FLOPs utilisation (MFU): the share of the hardware's arithmetic the model gets.
///
///     model FLOP/s = model FLOPs per step (6·B·Σ in·out, ``BlockPlan/trainingFlops(batchSize:)``) ÷ seconds per step
///     MFU          = model FLOP/s ÷ (one core's measured peak × ranks)
///
/// Model FLOPs are the model's arithmetic, not the hardware's: what a layout adds (replicated
/// work, communication, pipeline bubbles) lowers MFU instead of raising the count. The peak is
/// this machine's, measured (``MachinePeak``); with more ranks than cores the denominator counts
/// cores the ranks do not have, so MFU reads low there, as it should.
struct ModelFlopsUtilization {
    let flopsPerStep: Double
    let peak: MachinePeak
    let ranks: Int

    /// The denominator: peak FLOP/s of `ranks` cores.
    var peakFlopsPerSecond: Double { peak.flopsPerSecond * Double(ranks) }

    /// The start-up line.
    var summary: String {
        "MFU: \(format(Float(flopsPerStep / 1e6), 3)) model MFLOP per step (6·B·Σ in·out) against "
            + "\(ranks) × \(format(Float(peak.flopsPerSecond / 1e9), 1)) GFLOP/s per core (\(peak.source))"
    }

    /// `  149.2 GFLOP/s  MFU 58.1%` for the progress line.
    func progressText(secondsPerStep: Double) -> String {
        let achieved = flopsPerStep / secondsPerStep
        return "  \(format(Float(achieved / 1e9), 1)) GFLOP/s  MFU \(format(Float(100 * achieved / peakFlopsPerSecond), 1))%"
    }

    /// The final line and the final metrics record's keys, over `steps` steps in `seconds`.
    func report(steps: Int, seconds: Double) -> (line: String, json: String) {
        guard steps > 0, seconds > 0 else {
            return ("model FLOP/s: no training steps ran", "\"model_flops_per_second\":null,\"mfu\":null,\"peak_flops_per_second\":\(peakFlopsPerSecond)")
        }
        let achieved = flopsPerStep * Double(steps) / seconds
        let mfu = achieved / peakFlopsPerSecond
        return ("model FLOP/s over the training steps: \(format(Float(achieved / 1e9), 2)) G, MFU \(format(Float(100 * mfu), 2))% "
                + "of \(ranks) × \(format(Float(peak.flopsPerSecond / 1e9), 1)) GFLOP/s",
                "\"model_flops_per_second\":\(achieved),\"mfu\":\(mfu),\"peak_flops_per_second\":\(peakFlopsPerSecond),"
                + "\"flops_per_step\":\(flopsPerStep)")
    }
}
