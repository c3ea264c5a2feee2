import Core
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The dump format: "PSDUMP1\n", then a JSON header line with the model configuration and Ψ,
/// then Ψ little-endian float32 parameters and Ψ float32 gradients, canonical layout.
func writeDump(path: String, config: ModelConfig, parameters: [Float], gradients: [Float]) throws(UsageError) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    if fd < 0 { throw UsageError("cannot write dump '\(path)': \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let header = "PSDUMP1\n{\"vocab\":\(config.vocab),\"seq_len\":\(config.seqLen),\"emb\":\(config.emb),\"hidden\":\(config.hidden),\"layers\":\(config.layers),\"count\":\(parameters.count)}\n"
    var bytes = Array(header.utf8)
    for array in [parameters, gradients] {
        array.withUnsafeBytes { bytes.append(contentsOf: $0) }
    }
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    if written != bytes.count { throw UsageError("short write to dump '\(path)'") }
}
