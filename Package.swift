// swift-tools-version:6.0
// parallelisms-swift: every way a language model is trained in parallel, in Swift on MPI.

import PackageDescription
import Foundation

/// Code generation for the hot targets.
///
/// `swift build -c release` builds for the CPU it runs on (`-march=native`: AVX-512 where the
/// machine has it), so the SIMD kernels use the widest registers and real FMA instructions.
/// For a cluster whose nodes differ, build a portable binary instead:
///
///     PARALLELISMS_PORTABLE=1 swift build -c release     # x86-64-v3: AVX2 + FMA
///
/// Without any `-march`, Swift emits SSE2 only and turns every fused multiply-add into a call to
/// `fmaf`, which is an order of magnitude slower.
let environment = ProcessInfo.processInfo.environment
let portable = environment["PARALLELISMS_PORTABLE"].map { !$0.isEmpty && $0 != "0" } ?? false
#if arch(x86_64)
let cpuFlags = ["-Xcc", portable ? "-march=x86-64-v3" : "-march=native"]
#else
let cpuFlags: [String] = []
#endif

/// `-fno-math-errno`: Swift's `Float.squareRoot()` is a C shim (`__builtin_sqrtf`) that clang
/// compiles with glibc's default `-fmath-errno`, so every square root — even a `SIMD16<Float>`'s —
/// becomes a scalar `vsqrtss` plus a branch to `sqrtf` to set `errno` for a negative input. Nothing
/// here reads `errno` after a square root; without it, a SIMD square root is one `vsqrtps`. The
/// result is the same correctly rounded square root (IEEE 754), bit for bit.
let native: [SwiftSetting] = [.unsafeFlags(cpuFlags + ["-Xcc", "-fno-math-errno"])]
    + (portable ? [.define("PARALLELISMS_AVX2")] : [])  // 16 vector registers: smaller tiles (Kernels)

/// `Core` (the kernels and the layers that call them) is built `-Ounchecked`, without
/// exclusivity checks: its loops index raw pointers, and the checks cost there (see the README's
/// speed section for the measurement). Everything else — `Training`, `Distributed`, the
/// executables — is built with plain `-O`, so its preconditions (layout and buffer sizes, MPI
/// bookkeeping) stay in the release binaries the tests run.
let hot: [SwiftSetting] = native
    + [.unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked"], .when(configuration: .release))]

/// The kernels' module also turns off LLVM's runtime loop unrolling. The matrix micro-kernel
/// keeps 24 accumulators, 4 vectors of B and a broadcast in 29 of the 32 vector registers; a
/// loop unrolled twice hoists the second step's broadcasts and spills accumulators to the stack
/// on every step (measured: 2× slower). The kernels unroll by hand where it pays.
let kernels: [SwiftSetting] = hot + [.unsafeFlags(["-Xllvm", "-unroll-runtime=false"])]

let package = Package(
    name: "parallelisms-swift",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "train", targets: ["train"]),
        .executable(name: "train_dp", targets: ["train_dp"]),
        .executable(name: "train_fsdp", targets: ["train_fsdp"]),
        .executable(name: "train_tp", targets: ["train_tp"]),
        .executable(name: "train_pp", targets: ["train_pp"]),
        .executable(name: "train_3d", targets: ["train_3d"]),
        .executable(name: "train_ep", targets: ["train_ep"]),
        .executable(name: "train_diloco", targets: ["train_diloco"]),
        .executable(name: "peak", targets: ["peak"]),
        .executable(name: "collectives", targets: ["collectives"]),
        .executable(name: "plan", targets: ["plan"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi",
            providers: [.apt(["libopenmpi-dev"]), .brew(["open-mpi"])]
        ),
        // The recorder behind --trace, shared by Core (compute events) and Distributed (MPI calls).
        .target(name: "CTraceClock"),
        .target(name: "Tracing", dependencies: ["CTraceClock"], swiftSettings: native),
        .target(name: "Distributed", dependencies: ["CMPI", "Tracing"], swiftSettings: native),
        .target(name: "Core", dependencies: ["Tracing"], swiftSettings: kernels),
        .target(name: "CStopSignal"),
        .target(
            name: "Training",
            dependencies: [
                "Core", "Distributed", "CStopSignal",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: native
        ),
        .executableTarget(name: "train", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_dp", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_fsdp", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_tp", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_pp", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_3d", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_ep", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "train_diloco", dependencies: ["Training"], swiftSettings: native),
        .executableTarget(name: "peak", dependencies: ["Core"], swiftSettings: hot),
        .executableTarget(name: "collectives", dependencies: ["Core", "Distributed"], swiftSettings: native),
        // The planner: no MPI run, only the memory and communication plans and the cost model.
        .executableTarget(
            name: "plan",
            dependencies: ["Training", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: native
        ),
        .testTarget(name: "CoreTests", dependencies: ["Core"], swiftSettings: hot),
        .testTarget(name: "TrainingTests", dependencies: ["Training"]),
        .testTarget(name: "EndToEndTests"),
    ]
)
