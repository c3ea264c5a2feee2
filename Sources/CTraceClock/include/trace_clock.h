// The clocks of --trace (Sources/Tracing/Trace.swift).
#ifndef TRACE_CLOCK_H
#define TRACE_CLOCK_H

#include <stdint.h>
#include <time.h>

// CLOCK_MONOTONIC in nanoseconds: one clock for every process of a host.
static inline uint64_t trace_clock_monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

// The CPU's time-stamp counter where there is one (x86-64 `rdtsc`), else 0. About a third of
// the cost of clock_gettime through the vDSO, which reads the same counter and scales it.
static inline uint64_t trace_clock_counter(void) {
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
}

#endif
