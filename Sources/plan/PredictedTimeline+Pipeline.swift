import Training

extension PredictedTimeline {
    /// A message between stages: sent when its producer ends, received when its consumer starts.
    struct Flow {
        var fromStage: Int
        var toStage: Int
        var sent: Double
        var received: Double
    }

    /// Each stage's compute events and the time its last action ends, and the messages.
    struct Pipeline {
        var events: [[Event]]
        var ends: [Double]
        var flows: [Flow]
    }

    /// Runs every stage's schedule against the others' (see the type's description). Forwards of
    /// micro-batch `m` through model chunk `g` wait for `g − 1`'s forward (held by the stage
    /// before, or the last stage for `g` a multiple of `N`), backwards for `g + 1`'s backward; a
    /// weight pass follows its input pass on the same stage.
    func simulatePipeline(stages n: Int, compute: Double) throws(UsageError) -> Pipeline {
        let layout = entry.layout, m = layout.shape.microBatches ?? 1, v = layout.shape.virtualStages, chunks = n * v
        let schedules = (0..<n).map { PipelineSchedule(layout.schedule, stage: $0, stages: n, microBatches: m, virtualStages: v) }
        let f = compute / Double(3 * m * v)
        var message = 0.0
        if let send = entry.communication.lazy.flatMap(\.transfers).first(where: { $0.kind == .send }) {
            message = try model.seconds(send, worldSize: layout.shape.ranks) / Double(max(1, send.calls))
        }
        // Completion times by micro-batch · chunks + chunk.
        var forwardDone: [Int: Double] = [:], backwardDone: [Int: Double] = [:]
        var next = [Int](repeating: 0, count: n), clock = [Double](repeating: 0, count: n)
        var result = Pipeline(events: Array(repeating: [], count: n), ends: [], flows: [])
        var progressed = true
        while progressed {
            progressed = false
            for s in 0..<n {
                while next[s] < schedules[s].actions.count {
                    let action = schedules[s].actions[next[s]]
                    let g = action.chunk * n + s, key = action.microBatch * chunks + g
                    // When the input is ready, and the stage and time it comes from (nil: this stage).
                    let input: (ready: Double, from: Int?)?
                    switch action.direction {
                    case .forward: input = g == 0 ? (0, nil) : forwardDone[key - 1].map { ($0, (g - 1) % n) }
                    case .backward, .inputGradient:
                        input = g == chunks - 1 ? forwardDone[key].map { ($0, nil) } : backwardDone[key + 1].map { ($0, (g + 1) % n) }
                    case .weightGradient: input = backwardDone[key].map { ($0, nil) }
                    }
                    guard let input else { break }
                    let arrival = input.ready + (input.from == nil ? 0 : message)
                    let start = max(clock[s], arrival)
                    let (name, category, duration): (String, String, Double) = switch action.direction {
                    case .forward: ("F", "forward", f)
                    case .backward: ("B", "backward", 2 * f)
                    case .inputGradient: ("B (input)", "backward", f)
                    case .weightGradient: ("W", "weight", f)
                    }
                    let label = "\(name) mb\(action.microBatch)" + (v > 1 ? " c\(action.chunk)" : "")
                    result.events[s].append(Event(name: label, category: category, start: start, duration: duration, thread: 0,
                                                  arguments: "\"micro_batch\":\(action.microBatch),\"chunk\":\(action.chunk),\"level\":\"micro-batch\""))
                    if let from = input.from, from != s { result.flows.append(Flow(fromStage: from, toStage: s, sent: input.ready - 1e-9, received: start)) }
                    clock[s] = start + duration
                    if action.direction == .forward { forwardDone[key] = clock[s] } else if action.direction != .weightGradient { backwardDone[key] = clock[s] }
                    next[s] += 1
                    progressed = true
                }
            }
        }
        guard (0..<n).allSatisfy({ next[$0] == schedules[$0].actions.count }) else {
            throw UsageError("the \(layout.schedule.rawValue) schedule's simulation stalled (no stage could go on)")
        }
        result.ends = clock
        return result
    }
}
