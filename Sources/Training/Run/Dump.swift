import Core
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The dump format: "PSDUMP1\n", then a JSON header line with the model configuration (with
/// `experts` and `top_k` for a mixture of experts) and Ψ,
/// then Ψ little-endian float32 parameters and Ψ float32 gradients, canonical layout.
func writeDump(path: String, config: ModelConfig, parameters: [Float], gradients: [Float]) throws(UsageError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if fd < 0 { throw UsageError("cannot write dump '\(path)': \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    // With experts the header also names them (the canonical layout then holds routers and experts).
    let experts = config.experts.map { ",\"experts\":\($0.count),\"top_k\":\($0.topK)" } ?? ""
    let header = "PSDUMP1\n{\"vocab\":\(config.vocab),\"seq_len\":\(config.seqLen),\"emb\":\(config.emb),\"hidden\":\(config.hidden),\"layers\":\(config.layers)\(experts),\"count\":\(parameters.count)}\n"
    var bytes = Array(header.utf8)
    for array in [parameters, gradients] {
        array.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    if written != bytes.count { throw UsageError("short write to dump '\(path)'") }
}
