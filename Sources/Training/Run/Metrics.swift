#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A JSON Lines file written through a fixed buffer: one `write(2)` per 64 KiB, and no heap
/// allocation per record (numbers are formatted into Swift's inline small strings).
final class MetricsWriter {
    private let fd: Int32
    private let buffer: UnsafeMutablePointer<UInt8>
    private let capacity = 1 << 16
    private var used = 0

    init(path: String) throws(UsageError) {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if fd < 0 { throw UsageError("cannot write metrics file '\(path)': \(String(cString: strerror(errno)))") }
        buffer = .allocate(capacity: capacity)
    }

    deinit {
        flush()
        close(fd)
        buffer.deallocate()
    }

    func append(_ text: String) {
        var text = text
        text.withUTF8 { bytes in
            if used + bytes.count > capacity { flush() }
            if bytes.count > capacity {
                _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                return
            }
            (buffer + used).update(from: bytes.baseAddress!, count: bytes.count)
            used += bytes.count
        }
    }

    /// `{"step":N,"loss":X,"grad_norm":G,"aux_loss":A,"expert_imbalance":I}` followed by a newline
    /// (`grad_norm` when given; the last two with experts, `loss` then being cross-entropy + aux).
    func record(step: Int, loss: Float, gradientNorm: Float? = nil, experts: ExpertStatistics? = nil) {
        append("{\"step\":")
        append(step.description)
        append(",\"loss\":")
        append(loss.isFinite ? loss.description : "null")
        if let gradientNorm {
            append(",\"grad_norm\":")
            append(gradientNorm.isFinite ? gradientNorm.description : "null")
        }
        if let experts {
            append(",\"aux_loss\":")
            append(experts.auxiliaryLoss.isFinite ? experts.auxiliaryLoss.description : "null")
            append(",\"expert_imbalance\":")
            append(experts.imbalance.isFinite ? experts.imbalance.description : "null")
        }
        append("}\n")
    }

    /// `{"step":N,"val_loss":X}` followed by a newline (`--val-every`): N steps completed.
    func record(step: Int, validationLoss loss: Float) {
        append("{\"step\":")
        append(step.description)
        append(",\"val_loss\":")
        append(loss.isFinite ? loss.description : "null")
        append("}\n")
    }

    func flush() {
        var offset = 0
        while offset < used {
            let n = write(fd, buffer + offset, used - offset)
            if n <= 0 { break }
            offset += n
        }
        used = 0
    }
}
