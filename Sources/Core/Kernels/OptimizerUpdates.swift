extension Kernels {
    // MARK: - Optimizer updates

    /// `p −= lr · (g + wd · p)` over `count` floats: full vectors, then one partial vector.
    /// (With `wd = 0` the product `wd · p` is skipped: `g + 0·p = g` for every finite `p`.)
    public static func sgd(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, count: Int,
                           learningRate: Float, weightDecay: Float) {
        let lr = Vector(repeating: learningRate), wd = Vector(repeating: weightDecay)
        let decay = weightDecay != 0
        @inline(always)
        func update(_ p: Vector, _ g: Vector) -> Vector { decay ? p - lr * (g + wd * p) : p - lr * g }
        var i = 0
        while i + 2 * width <= count {
            let p0 = load(p + i), p1 = load(p + i + width)
            let g0 = load(g + i), g1 = load(g + i + width)
            store(update(p0, g0), p + i)
            store(update(p1, g1), p + i + width)
            i += 2 * width
        }
        while i < count {
            let w = Swift.min(width, count - i)
            store(update(load(p + i, w), load(g + i, w)), p + i, w)
            i += width
        }
    }

    /// One Adam(W) update over `count` floats (see ``Optimizer``): `correction1 = 1/(1 − β₁ᵗ)`,
    /// `correction2 = 1/(1 − β₂ᵗ)`.
    public static func adam(_ p: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>,
                            _ m1: UnsafeMutablePointer<Float>, _ m2: UnsafeMutablePointer<Float>, count: Int,
                            learningRate: Float, beta1: Float, beta2: Float, correction1: Float, correction2: Float,
                            epsilon: Float, weightDecay: Float) {
        let lr = Vector(repeating: learningRate), wd = Vector(repeating: weightDecay)
        let b1 = Vector(repeating: beta1), b2 = Vector(repeating: beta2)
        let c1 = Vector(repeating: 1 - beta1), c2 = Vector(repeating: 1 - beta2)
        let k1 = Vector(repeating: correction1), k2 = Vector(repeating: correction2)
        let eps = Vector(repeating: epsilon)
        var i = 0
        while i < count {
            let w = Swift.min(width, count - i)
            let pv = load(p + i, w), gv = load(g + i, w)
            let m = b1 * load(m1 + i, w) + c1 * gv
            let v = b2 * load(m2 + i, w) + c2 * (gv * gv)
            let update = (m * k1) / ((v * k2).squareRoot() + eps)
            store(m, m1 + i, w)
            store(v, m2 + i, w)
            store(pv - lr * (update + wd * pv), p + i, w)
            i += width
        }
    }
}
