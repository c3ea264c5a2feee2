import XCTest
@testable import Core

final class DataTests: XCTestCase {
    func testRowsAndVocabulary() throws {
        let text = "ab\ncab\n\n"
        let data = try Dataset(bytes: Array(text.utf8), seqLen: 2, name: "fixture")
        XCTAssertEqual(data.vocabulary.count, 4)  // boundary + a b c
        XCTAssertEqual(data.vocabulary.symbols, ["a", "b", "c"])
        XCTAssertEqual(data.lines, 2)
        // "ab" → (.. → a) (.a → b) (ab → .); "cab" → (.. → c) (.c → a) (ca → b) (ab → .)
        let expected: [([Int32], Int32)] = [
            ([0, 0], 1), ([0, 1], 2), ([1, 2], 0),
            ([0, 0], 3), ([0, 3], 1), ([3, 1], 2), ([1, 2], 0),
        ]
        // 7 examples: 6 train (⌊0.9·7⌋), 1 validation, in file order.
        XCTAssertEqual(data.train.count, 6)
        XCTAssertEqual(data.validation.count, 1)
        for (i, e) in expected.enumerated() {
            let got = i < 6 ? data.train.example(i) : data.validation.example(i - 6)
            XCTAssertEqual(got.context, e.0, "example \(i)")
            XCTAssertEqual(got.target, e.1, "example \(i)")
        }
    }

    func testLongLinesSlideAndCRLFIsAccepted() throws {
        let data = try Dataset(bytes: Array("abcd\r\nba\r\n".utf8), seqLen: 2, name: "fixture")
        XCTAssertEqual(data.vocabulary.symbols, ["a", "b", "c", "d"])
        // "abcd": targets a b c d . with contexts .. .a ab bc cd
        XCTAssertEqual(data.train.example(3).context, [2, 3])
        XCTAssertEqual(data.train.example(3).target, 4)
        XCTAssertEqual(data.train.example(4).context, [3, 4])
        XCTAssertEqual(data.train.example(4).target, 0)
        XCTAssertEqual(data.train.count + data.validation.count, 8)
    }

    func testUnicodeVocabulary() throws {
        let data = try Dataset(bytes: Array("zoë\nchloé\n".utf8), seqLen: 4, name: "fixture")
        XCTAssertEqual(data.vocabulary.decode([2, 3, 6, 0, 1]), "hlé")
        XCTAssertTrue(data.vocabulary.symbols.contains("ë"))
    }

    func testErrorsNameTheProblem() throws {
        XCTAssertThrowsError(try Dataset(bytes: [], seqLen: 3, name: "f")) { XCTAssertEqual($0 as? DataError, .empty(path: "f")) }
        XCTAssertThrowsError(try Dataset(bytes: Array("\n  \n\n".utf8), seqLen: 3, name: "f")) {
            XCTAssertEqual($0 as? DataError, .noExamples(path: "f"))
        }
        XCTAssertThrowsError(try Dataset(bytes: Array("ok\n".utf8) + [0xFF, 0xFE] + Array("\n".utf8), seqLen: 3, name: "f")) {
            XCTAssertEqual($0 as? DataError, .invalidUTF8(path: "f", line: 2))
        }
        XCTAssertThrowsError(try Dataset.load(path: "/nonexistent/words.txt", seqLen: 3)) {
            XCTAssertEqual("\($0)", "cannot read data file '/nonexistent/words.txt': No such file or directory")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ps-data-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        XCTAssertThrowsError(try Dataset.load(path: dir.path, seqLen: 3)) { XCTAssertTrue("\($0)".contains("directory")) }
        let file = dir.appendingPathComponent("w.txt")
        try Data("hello\nworld\n".utf8).write(to: file)
        let loaded = try Dataset.load(path: file.path, seqLen: 3)
        XCTAssertEqual(loaded.train.count + loaded.validation.count, 12)
    }
}
