extension TrainingOptions {
    /// The steps `--trace` records by default: 3 warm-up steps, then 10 (counted from 1).
    static let defaultTraceSteps = 4...13

    /// The window of `--trace` as 0-based step indices (the progress line's step `n` is index
    /// `n − 1`), clipped to `--steps`; nil without `--trace`.
    public var traceWindow: ClosedRange<Int>? {
        guard trace != nil else { return nil }
        let counted = traceStepsText.flatMap(Self.parseTraceSteps) ?? Self.defaultTraceSteps
        let last = min(counted.upperBound, steps), first = min(counted.lowerBound, last)
        return (first - 1)...(last - 1)
    }

    /// `A:B` with 1 ≤ A ≤ B, or nil.
    static func parseTraceSteps(_ text: String) -> ClosedRange<Int>? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let a = Int(parts[0]), let b = Int(parts[1]), a >= 1, b >= a else { return nil }
        return a...b
    }

    /// `--trace-steps` needs `--trace`, must read `A:B` with 1 ≤ A ≤ B, and must start within
    /// `--steps` (its end is clipped to it).
    func validateTrace() throws(UsageError) {
        guard let text = traceStepsText else { return }
        guard let window = Self.parseTraceSteps(text) else {
            throw UsageError("--trace-steps must be two step counts A:B with 1 ≤ A ≤ B, e.g. 4:13 (got '\(text)')")
        }
        if trace == nil { throw UsageError("--trace-steps needs --trace (the file to write)") }
        if window.lowerBound > steps {
            throw UsageError("--trace-steps \(text) starts beyond --steps \(steps): nothing would be recorded")
        }
    }
}
