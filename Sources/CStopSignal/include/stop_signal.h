// The stop request of a preempted job: which signal (SIGTERM or SIGINT) asked the process to stop.
//
// The handler does one thing, the only thing C allows a signal handler to do with shared state:
// it stores the signal number into a `volatile sig_atomic_t` (the first signal wins; both
// signals are blocked while it runs, so it never interrupts itself). Everything else — agreeing
// on a stop step with the other ranks, saving a checkpoint, exiting — happens in the training
// loop, which reads the flag once per step with `stop_signal_received`.
#ifndef STOP_SIGNAL_H
#define STOP_SIGNAL_H

/// Installs the recording handler for SIGTERM and SIGINT (SA_RESTART, so system calls in flight,
/// such as MPI's, resume instead of failing with EINTR). Returns 0, or -1 if `sigaction` failed.
int stop_signal_install(void);

/// Restores the default action (terminate) for SIGTERM and SIGINT. The recorded signal stays.
void stop_signal_restore_default(void);

/// The first SIGTERM or SIGINT received since `stop_signal_install`, or 0.
int stop_signal_received(void);

#endif
