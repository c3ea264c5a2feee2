#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Generates text from a model whose batch size is 1.
///
/// Starts from an all-boundary context, draws each next token from `softmax(logits / T)`, slides
/// the context, and stops at the boundary token (or after `maxLength` characters).
public func generateSamples(model: Model, vocabulary: Vocabulary, count: Int, temperature: Float,
                            seed: UInt64, maxLength: Int = 100) -> [String] {
    precondition(model.batchSize == 1)
    var rng = SplitMix64(seed: seed, stream: RandomStream.samples.rawValue, index: 0)
    let seqLen = model.config.seqLen
    let vocab = model.config.vocab
    var probabilities = [Float](repeating: 0, count: vocab)
    var samples: [String] = []
    for _ in 0..<count {
        let context = model.tokens.value
        context.update(repeating: 0, count: seqLen)
        var ids: [Int32] = []
        while ids.count < maxLength {
            model.chain.forwardLayers()
            let logits = model.logits.value
            var m = -Float.infinity
            for j in 0..<vocab { m = max(m, logits[j] / temperature) }
            var z: Float = 0
            for j in 0..<vocab {
                probabilities[j] = expf(logits[j] / temperature - m)
                z += probabilities[j]
            }
            let u = rng.unit() * z
            var next = vocab - 1
            var cumulative: Float = 0
            for j in 0..<vocab {
                cumulative += probabilities[j]
                if u < cumulative { next = j; break }
            }
            if next == 0 { break }
            ids.append(Int32(next))
            for s in 0..<(seqLen - 1) { context[s] = context[s + 1] }
            context[seqLen - 1] = Float(next)
        }
        samples.append(vocabulary.decode(ids))
    }
    return samples
}
