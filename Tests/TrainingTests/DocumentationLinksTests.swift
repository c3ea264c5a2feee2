import Foundation
import XCTest

/// The documentation's links hold: in README.md and docs/**/*.md, every relative link names a
/// file or folder that exists, every `#anchor` names a heading of the page it points to (GitHub's
/// anchors), a `#L<n>` into a source file stays inside it, and every `path:line` reference (such as
/// `Sources/Core/Model/LayerChain.swift:38`) names a file with at least that many lines. Moving
/// or shortening a file then fails here, not in a reader's browser.
final class DocumentationLinksTests: XCTestCase {
    /// The repository: this file is Tests/TrainingTests/DocumentationLinksTests.swift.
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// GitHub's anchor for a heading: lowercased, spaces to '-', every character dropped that is
    /// not a letter, a digit, '-' or '_'.
    static func anchor(_ heading: String) -> String {
        var out = ""
        for character in heading.lowercased() {
            if character == " " { out.append("-") }
            else if character == "-" || character == "_" || character.isLetter || character.isNumber { out.append(character) }
        }
        return out
    }

    /// The lines of `text` outside fenced code blocks, with their 1-based line numbers.
    static func proseLines(_ text: String) -> [(number: Int, text: String)] {
        var inFence = false
        var lines: [(Int, String)] = []
        for (index, line) in text.components(separatedBy: "\n").enumerated() {
            if line.trimmingCharacters(in: .whitespaces).hasPrefix("```") {
                inFence.toggle()
                continue
            }
            if !inFence { lines.append((index + 1, line)) }
        }
        return lines
    }

    /// The anchors of a Markdown page's headings, with GitHub's -1, -2 … for repeated ones.
    static func anchors(_ text: String) -> Set<String> {
        var seen: [String: Int] = [:]
        var result: Set<String> = []
        for (_, line) in proseLines(text) {
            guard let match = line.firstMatch(of: /^#{1,6}\s+(.+?)\s*#*\s*$/) else { continue }
            let base = anchor(String(match.1))
            let count = seen[base, default: 0]
            seen[base] = count + 1
            result.insert(count == 0 ? base : "\(base)-\(count)")
        }
        return result
    }

    static func lineCount(_ url: URL) -> Int? {
        guard let text = try? String(contentsOf: url, encoding: .utf8) else { return nil }
        let lines = text.components(separatedBy: "\n")
        return lines.last == "" ? lines.count - 1 : lines.count
    }

    static func markdownFiles() -> [URL] {
        var files = [root.appendingPathComponent("README.md")]
        let docs = root.appendingPathComponent("docs")
        if let walk = FileManager.default.enumerator(at: docs, includingPropertiesForKeys: nil) {
            for case let url as URL in walk where url.pathExtension == "md" { files.append(url) }
        }
        return files.sorted { $0.path < $1.path }
    }

    /// Every problem in one page's text, as "line: what".
    static func problems(in text: String, at page: URL, root: URL = root, anchorCache: inout [URL: Set<String>]) -> [String] {
        var problems: [String] = []
        let directory = page.deletingLastPathComponent()
        for (number, line) in proseLines(text) {
            // Links (inline code spans removed: a link shown as code is not a link).
            let prose = line.replacing(/`[^`]*`/, with: "")
            for match in prose.matches(of: /\]\(([^)\s]+)(?:\s+"[^"]*")?\)/) {
                let target = String(match.1)
                if target.hasPrefix("http://") || target.hasPrefix("https://") || target.hasPrefix("mailto:") { continue }
                let parts = target.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)
                let path = String(parts[0]), fragment = parts.count > 1 ? String(parts[1]) : nil
                if path.isEmpty {
                    if anchorCache[page] == nil { anchorCache[page] = anchors(text) }
                    if !anchorCache[page]!.contains(fragment ?? "") {
                        problems.append("\(number): link to '\(target)': no heading on this page with that anchor")
                    }
                    continue
                }
                let file = directory.appendingPathComponent(path).standardizedFileURL
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: file.path, isDirectory: &isDirectory) else {
                    problems.append("\(number): link to '\(target)': no file \(file.path)")
                    continue
                }
                guard let fragment else { continue }
                if isDirectory.boolValue {
                    problems.append("\(number): link to '\(target)': an anchor into a folder")
                } else if file.pathExtension == "md" {
                    if anchorCache[file] == nil {
                        anchorCache[file] = anchors((try? String(contentsOf: file, encoding: .utf8)) ?? "")
                    }
                    if !anchorCache[file]!.contains(fragment) {
                        problems.append("\(number): link to '\(target)': no heading with the anchor '#\(fragment)'")
                    }
                } else if let lineMatch = fragment.wholeMatch(of: /L(\d+)(?:-L(\d+))?/) {
                    let last = Int(lineMatch.2 ?? lineMatch.1)!
                    let count = lineCount(file) ?? 0
                    if last > count { problems.append("\(number): link to '\(target)': the file has \(count) lines") }
                } else {
                    problems.append("\(number): link to '\(target)': '#\(fragment)' is not a line anchor (#L<n>)")
                }
            }
            // path:line references, in code spans too.
            for match in line.matches(of: /((?:Sources|Tests|scripts|docs)\/[A-Za-z0-9_+.\/-]+\.[A-Za-z]+):(\d+)/) {
                let file = root.appendingPathComponent(String(match.1))
                let wanted = Int(match.2)!
                guard let count = lineCount(file) else {
                    problems.append("\(number): '\(match.0)': no file \(match.1)")
                    continue
                }
                if wanted < 1 || wanted > count {
                    problems.append("\(number): '\(match.0)': \(match.1) has \(count) lines")
                }
            }
        }
        return problems
    }

    func testAnchorsFollowGitHub() {
        XCTAssertEqual(Self.anchor("3D — `train_3d --tp T --dp D --pp P`"), "3d--train_3d---tp-t---dp-d---pp-p")
        XCTAssertEqual(Self.anchor("Mixture of experts — `--experts E`"), "mixture-of-experts----experts-e")
        XCTAssertEqual(Self.anchor("Scaling against the machine's limit"), "scaling-against-the-machines-limit")
        XCTAssertEqual(Self.anchors("# A\n```\n# not a heading\n```\n## A\n"), ["a", "a-1"])
    }

    func testTheCheckFindsBrokenLinks() throws {
        // A repository of its own: a page, a page it links to, a three-line source file.
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("links-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("docs"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: root.appendingPathComponent("Sources"), withIntermediateDirectories: true)
        try "# Flags\n## The data\n".write(to: root.appendingPathComponent("docs/flags.md"), atomically: true, encoding: .utf8)
        try "a\nb\nc\n".write(to: root.appendingPathComponent("Sources/A.swift"), atomically: true, encoding: .utf8)
        let page = root.appendingPathComponent("README.md")
        let text = """
            [gone](docs/no-such-page.md) [anchor](docs/flags.md#data) [line](Sources/A.swift#L4) `Sources/A.swift:4`
            ```
            [inside a code block](nowhere.md) Sources/A.swift:9
            ```
            [fine](docs/flags.md#the-data) [lines](Sources/A.swift#L1-L3) `Sources/A.swift:3` `[as code](nowhere.md)`
            [web](https://example.com/x.md) [folder](docs/) [here](#a-heading)

            ## A heading
            """
        var cache: [URL: Set<String>] = [:]
        let problems = Self.problems(in: text, at: page, root: root, anchorCache: &cache)
        XCTAssertEqual(problems.count, 4, "\(problems)")
        XCTAssertEqual(problems.filter { $0.hasPrefix("1: ") }.count, 4, "\(problems)")
    }

    func testEveryLinkAndLineReferenceResolves() throws {
        let pages = Self.markdownFiles()
        XCTAssertGreaterThan(pages.count, 10, "README.md and docs/ not found under \(Self.root.path)")
        var links = 0
        var cache: [URL: Set<String>] = [:]
        for page in pages {
            let text = try String(contentsOf: page, encoding: .utf8)
            links += text.matches(of: /\]\(/).count
            let relative = page.path.replacingOccurrences(of: Self.root.path + "/", with: "")
            for problem in Self.problems(in: text, at: page, anchorCache: &cache) {
                XCTFail("\(relative):\(problem)")
            }
        }
        XCTAssertGreaterThan(links, 100, "too few links found: is the link pattern still right?")
    }
}
