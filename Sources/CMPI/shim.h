// OpenMPI's handles (MPI_COMM_WORLD, MPI_FLOAT, MPI_SUM, ...) are macros that
// expand to addresses of global structs; Swift's importer cannot see them.
// These static inline functions hand them to Swift as OpaquePointers.
#ifndef CMPI_SHIM_H
#define CMPI_SHIM_H

#include <mpi.h>

static inline MPI_Comm cmpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Comm cmpi_comm_null(void) { return MPI_COMM_NULL; }

static inline MPI_Datatype cmpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype cmpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype cmpi_int32(void) { return MPI_INT32_T; }
static inline MPI_Datatype cmpi_int64(void) { return MPI_INT64_T; }

static inline MPI_Op cmpi_op_sum(void) { return MPI_SUM; }
static inline MPI_Op cmpi_op_max(void) { return MPI_MAX; }

static inline void *cmpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Status *cmpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request cmpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Errhandler cmpi_errors_return(void) { return MPI_ERRORS_RETURN; }

static inline int cmpi_success(void) { return MPI_SUCCESS; }
static inline int cmpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int cmpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int cmpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }

// The watchdog's shared word (Sources/Distributed/Watchdog.swift): the main thread publishes
// the operation in flight with a release store, the watchdog thread reads it with an acquire
// load. Plain 64-bit words and compiler builtins: no allocation, no lock, one instruction each
// on x86-64 and arm64.
static inline void cmpi_store_release(unsigned long long *word, unsigned long long value) {
    __atomic_store_n(word, value, __ATOMIC_RELEASE);
}
static inline unsigned long long cmpi_load_acquire(const unsigned long long *word) {
    return __atomic_load_n(word, __ATOMIC_ACQUIRE);
}

#endif
