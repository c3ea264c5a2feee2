/// A byte buffer of fixed capacity that JSON text is appended to without allocating: static
/// strings and small strings are copied byte by byte, integers and times written digit by digit.
/// So formatting a trace costs the same few allocations whatever its number of events (which
/// the allocation test relies on: a longer window must not allocate more).
struct TraceText {
    private(set) var bytes: UnsafeMutablePointer<UInt8>
    let capacity: Int
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = capacity
        bytes = .allocate(capacity: capacity)
    }

    func deallocate() { bytes.deallocate() }

    /// Whether `n` more bytes fit (callers reserve a bound per event and check once per event).
    func fits(_ n: Int) -> Bool { count + n <= capacity }

    mutating func append(_ byte: UInt8) {
        guard count < capacity else { return }
        bytes[count] = byte
        count += 1
    }

    mutating func append(_ text: StaticString) {
        text.withUTF8Buffer { for byte in $0 { append(byte) } }
    }

    mutating func append(_ text: String) {
        for byte in text.utf8 { append(byte) }
    }

    mutating func append(_ value: Int) {
        if value < 0 { append(UInt8(ascii: "-")) }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = value.magnitude, k = 0
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[k] = UInt8(ascii: "0") + UInt8(n % 10)
                n /= 10
                k += 1
            } while n > 0
            for i in stride(from: k - 1, through: 0, by: -1) { append(d[i]) }
        }
    }

    /// Nanoseconds as microseconds with three decimals.
    mutating func appendMicroseconds(_ ns: Int64) {
        if ns < 0 { append(UInt8(ascii: "-")) }
        let magnitude = Int(ns.magnitude)
        append(magnitude / 1000)
        append(UInt8(ascii: "."))
        let fraction = magnitude % 1000
        append(UInt8(ascii: "0") + UInt8(fraction / 100))
        append(UInt8(ascii: "0") + UInt8(fraction / 10 % 10))
        append(UInt8(ascii: "0") + UInt8(fraction % 10))
    }
}
