import Distributed
import Tracing

extension Trainer {
    /// `--trace`'s recorder, made before the first step (collective): `.some(nil)` without the
    /// flag, nil (on every rank) when rank 0 cannot write the file.
    func makeTracer() -> Tracer?? {
        guard let path = options.trace, let window = options.traceWindow else { return .some(nil) }
        guard let tracer = agreeing(world, { () throws -> Tracer in
            try Tracer(path: path, window: window, options: options, world: world)
        }) else { return nil }
        return .some(tracer)
    }

    /// After the training steps (collective): writes the trace, prints where each rank's time went
    /// and adds the figures to the final metrics record. False (on every rank) when the file
    /// cannot be written.
    func finishTracing(_ tracer: Tracer?, _ session: inout Session) -> Bool {
        guard let tracer else { return true }
        guard let report = agreeing(world, { () throws -> TraceReport? in try tracer.finish(world: world) }) else { return false }
        if let report {
            for line in report.lines { say(line) }
            session.summary += "," + report.json
        }
        return true
    }
}
