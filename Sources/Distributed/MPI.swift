import CMPI

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The MPI runtime: start-up, shutdown, and the one way out when something goes wrong.
///
/// `Distributed` is the only module that touches MPI. Every call's return code is checked:
/// communicators are switched to `MPI_ERRORS_RETURN`, and a failure becomes one line on stderr
/// followed by `MPI_Abort` of the whole job, so no rank is left waiting in a collective.
public enum MPI {
    /// Which threads may call MPI (`MPI_Init_thread`'s level).
    public enum ThreadUse: Sendable {
        /// Only the main thread (the ``Watchdog``'s thread never calls MPI): the training executables.
        case funneled
        /// Any thread, one at a time: a communication thread that runs collectives while the main
        /// thread computes, the two handing over so that their MPI calls never overlap.
        case serialized
    }

    /// Initialises MPI once per process (a second call is a no-op) and returns the world.
    /// A library that cannot give `threads` ends the process with one line.
    @discardableResult
    public static func initialize(threads: ThreadUse = .funneled) -> Communicator {
        var started: Int32 = 0
        MPI_Initialized(&started)
        if started == 0 {
            // OpenMPI's shared-memory transport copies large messages with Linux CMA
            // (`process_vm_readv`) by default; on these machines that is several times slower than
            // its copy through shared memory, worst for buffers just written (gradients). Measured
            // with `collectives` (README). An explicit setting (`--mca` or the variable) wins.
            setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0)
            var provided: Int32 = 0
            // Funneled: the process has a second thread (the ``Watchdog``'s), which never calls MPI.
            let required = threads == .funneled ? cmpi_thread_funneled() : cmpi_thread_serialized()
            let rc = MPI_Init_thread(nil, nil, required, &provided)
            if rc != cmpi_success() {
                writeError("error: MPI_Init failed (code \(rc))")
                exit(1)
            }
            if provided < required {
                writeError("error: this MPI library cannot let \(threads == .funneled ? "a funneled" : "a serialized") thread call MPI (MPI_Init_thread gave level \(provided))")
                exit(1)
            }
        }
        let world = Communicator.world
        MPI_Comm_set_errhandler(world.handle, cmpi_errors_return())
        return world
    }

    /// Whether `initialize()` has run in this process.
    public static var isInitialized: Bool {
        var started: Int32 = 0
        MPI_Initialized(&started)
        return started != 0
    }

    /// Shuts MPI down (once; later calls are no-ops).
    public static func finalize() {
        var started: Int32 = 0, finished: Int32 = 0
        MPI_Initialized(&started)
        MPI_Finalized(&finished)
        if started != 0 && finished == 0 {
            // OpenMPI's finalize waits for every rank (a fence): a rank that never gets there stalls it.
            Watchdog.phase = .shutdown
            // Its return code is not acted on: after MPI_Finalize no MPI call, MPI_Abort included, is allowed.
            MPICall.watched(WatchedCall(.finalize, on: .world), "MPI_Finalize") {
                _ = MPI_Finalize()
                return cmpi_success()
            }
        }
    }

    /// Prints `message` on stderr and aborts every rank of the job with exit code `code`.
    public static func abort(_ message: String, code: Int32 = 1) -> Never {
        writeError(message)
        if isInitialized {
            MPI_Abort(cmpi_comm_world(), code)
        }
        exit(code)
    }

    /// Wall-clock seconds (MPI_Wtime), monotonic on every platform MPI supports.
    @inline(__always)
    public static func time() -> Double { MPI_Wtime() }

    /// Turns a failed MPI return code into an abort naming the call.
    @inline(__always)
    static func check(_ rc: Int32, _ call: StaticString) {
        if rc != cmpi_success() { fail(rc, call) }
    }

    @inline(never)
    static func fail(_ rc: Int32, _ call: StaticString) -> Never {
        var buffer = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
        var length: Int32 = 0
        MPI_Error_string(rc, &buffer, &length)
        let text = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        abort("error: \(call) failed: \(text)")
    }
}

/// Writes one line to file descriptor 2 without touching Foundation's non-Sendable `stderr`.
public func writeError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    text.utf8CString.withUnsafeBufferPointer { buffer in
        _ = write(2, buffer.baseAddress, buffer.count - 1)
    }
}
