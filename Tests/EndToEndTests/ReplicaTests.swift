import Foundation
import XCTest

/// Replicated parameters stay bit-identical across ranks through training: DP's full copies,
/// TP's replicated embedding and row-parallel head bias, and both in 3D. Each run trains 60 Adam
/// steps with `--check-replicas`, which fails the run if any copy differs in a single bit
/// (ReplicaCheckTests shows that it does), and reports how many copies it compared.
final class ReplicaTests: XCTestCase {
    static let data = try! SmallData.write()
    static let vocab = Set(SmallData.names.filter { $0 != "\n" }).count + 1

    func copies(_ executable: String, np: Int, _ flags: [String]) throws -> Int {
        let run = try Launch.run(executable, np: np, ["--data", Self.data, "--steps", "60", "--samples", "0", "--val-batches", "1",
                                                      "--optimizer", "adam", "--lr", "0.01", "--check-replicas"] + flags, timeout: 120)
        XCTAssertEqual(run.status, 0, "\(executable): \(run.stderr)")
        let line = try XCTUnwrap(run.stdout.split(separator: "\n").first { $0.hasPrefix("replicas: ") }, run.stdout)
        XCTAssertTrue(line.hasSuffix("all bit-identical"), String(line))
        return Int(line.split(separator: " ")[1])!
    }

    func testReplicatedParametersStayBitIdentical() throws {
        let (vocab, emb, seq, hidden) = (Self.vocab, 16, 16, 64)
        let psi = vocab * emb + (seq * emb * hidden + hidden) + (hidden * vocab + vocab)
        XCTAssertEqual(try copies("train_dp", np: 2, []), psi, "DP: rank 1 holds a second copy of everything")
        // TP-2, --layers 1: the embedding and the row-parallel head's bias are on both ranks.
        XCTAssertEqual(try copies("train_tp", np: 2, []), vocab * emb + vocab)
        // 3D 2 × 2 × 1: the same floats, each sharded over dp, so again held by two ranks each.
        XCTAssertEqual(try copies("train_3d", np: 4, ["--tp", "2", "--dp", "2"]), vocab * emb + vocab)
    }
}
