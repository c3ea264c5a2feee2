import Core
import Distributed
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An executable of the suite: the shared flags plus a way to build its layout.
///
/// `launch()` is the whole program: parse and validate the flags, start MPI, then hand over to
/// the ``Trainer``. Any error becomes one line on stderr (printed by one rank) and a non-zero
/// exit status on every rank; no rank is left waiting.
public protocol TrainingCommand: ParsableCommand {
    var options: TrainingOptions { get }
    /// Builds this executable's layout. Throw a `UsageError` for a layout that cannot work.
    func makeLayout(_ context: TrainingContext) throws(UsageError) -> TrainingLayout
    /// The layout `makeLayout` builds on `ranks` ranks, as data: what the memory plan is made of.
    func layoutDescription(ranks: Int) -> LayoutDescription
}

extension TrainingCommand {
    /// The executable's name, as `--help` shows it.
    static var name: String { configuration.commandName ?? "train" }

    public static func launch() -> Never {
        let command: Self
        do {
            command = try Self.parse(Array(CommandLine.arguments.dropFirst()))
            // Whether the layout trains experts is its parallelism's fact (``LayoutFacts/trainsExperts``).
            if command.options.experts > 0 && !type(of: command.layoutDescription(ranks: 1).facts).trainsExperts {
                throw UsageError(Parallelisms.expertsUnsupported(by: name))
            }
        } catch {
            if Self.exitCode(for: error) == .success {
                print(Self.fullMessage(for: error))
                exitProcess(0)
            }
            // Under mpirun every rank got the same bad command line (flag checks run in
            // `validate()`, during parsing): rank 0 reports it. The ranks then meet in a barrier
            // before exiting, because mpirun ends the whole job as soon as one rank exits non-zero:
            // without it a fast rank 1 could get rank 0 killed before its line was written.
            let world = MPI.initialize()
            if world.rank == 0 {
                let message = Self.message(for: error).split(separator: "\n").joined(separator: " ")
                writeError("error: \(message) (see --help)")
            }
            world.barrier()
            MPI.finalize()
            exitProcess(64)
        }
        let world = MPI.initialize()
        Watchdog.start(timeout: command.options.timeout, rank: world.rank)
        let code = Trainer(command: command, world: world).run()
        MPI.finalize()
        exitProcess(code)
    }
}

/// Ends the process: the C library's `exit`, which `ParsableCommand.exit` hides inside the protocol.
private func exitProcess(_ code: Int32) -> Never { exit(code) }

/// Runs a step everywhere or fails everywhere: if any rank throws, the lowest failing rank prints
/// its message and every rank gets `nil`. One tiny allreduce; no rank can be left behind.
func agreeing<T>(_ world: Communicator, _ body: () throws -> T) -> T? {
    var result: T?
    var message = ""
    do { result = try body() } catch { message = "\(error)" }
    // Largest (size − rank) among failing ranks ⇒ the lowest failing rank.
    let flag = world.max(Int32(result == nil ? world.size - world.rank : 0))
    if flag == 0 { return result }
    if world.rank == world.size - Int(flag) { writeError("error: \(message)") }
    return nil
}
