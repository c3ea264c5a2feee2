/// A number with a fixed count of decimals, for progress lines and tables.
func format(_ x: Float, _ decimals: Int) -> String {
    var scale: Float = 1
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (Double(x) * Double(scale)).rounded() / Double(scale)
    if decimals == 0 { return String(Int(rounded)) }
    var text = String(rounded)
    if let dot = text.firstIndex(of: ".") {
        let have = text.distance(from: dot, to: text.endIndex) - 1
        if have < decimals { text += String(repeating: "0", count: decimals - have) }
    }
    return text
}
