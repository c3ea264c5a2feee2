// Heap-allocation counter for the "no allocation inside a training step" test.
//
// Built by the test (cc -shared -fPIC -O2 scripts/alloccount.c -o alloccount.so -ldl) and loaded
// with LD_PRELOAD into the training executables (mpirun -x LD_PRELOAD=...). It counts calls to
// malloc/calloc/realloc/posix_memalign/aligned_alloc made on the main thread whose call stack has
// no frame inside the MPI libraries (allocations inside MPI itself, and MPI's own threads, do not
// count), and at exit writes the count to
// $ALLOC_COUNT_DIR/<world rank> (<pid> outside mpirun; executables named train* only). Run the same job for two step counts: equal counts mean the steps
// allocate nothing.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static unsigned long counted;
static __thread int busy;
static int ready;

// dlsym may itself call calloc: serve those from a static arena.
static char bootstrap[1 << 16];
static size_t bootstrap_used;

static void *bootstrap_alloc(size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (bootstrap_used + n > sizeof bootstrap) return NULL;
    void *p = bootstrap + bootstrap_used;
    bootstrap_used += n;
    return p;
}

static int is_mpi(const char *path) {
    return path && (strstr(path, "openmpi") || strstr(path, "libmpi") || strstr(path, "libopen-") ||
                    strstr(path, "pmix") || strstr(path, "libevent") || strstr(path, "hwloc") ||
                    strstr(path, "mca_") || strstr(path, "libuc"));
}

// dladdr scans every loaded object, and a run makes tens of thousands of counted calls with 24
// frames each: remember each return address's answer (a direct-mapped cache; code addresses
// never move once loaded, and a collision only costs another dladdr).
#define CACHE_SIZE 8192
static void *cached_address[CACHE_SIZE];
static signed char cached_answer[CACHE_SIZE];

static int frame_is_mpi(void *address) {
    size_t slot = ((size_t)address >> 2) % CACHE_SIZE;
    if (cached_address[slot] == address) return cached_answer[slot];
    Dl_info info;
    int answer = dladdr(address, &info) ? is_mpi(info.dli_fname) : 0;
    cached_address[slot] = address;
    cached_answer[slot] = (signed char)answer;
    return answer;
}

static void count(void) {
    // Only the main thread runs training steps; MPI's progress threads (PMIx, libevent) allocate
    // on their own schedule and belong to "MPI itself".
    if (!ready || busy || syscall(SYS_gettid) != getpid()) return;
    busy = 1;
    void *frames[24];
    int n = backtrace(frames, 24);
    int inside = 0;
    for (int i = 1; i < n && !inside; i++) {
        inside = frame_is_mpi(frames[i]);
    }
    if (!inside) __atomic_add_fetch(&counted, 1, __ATOMIC_RELAXED);
    busy = 0;
}

// Resolves the real functions on first use: other libraries' constructors (Foundation's, for
// one) may allocate before ours runs. While dlsym itself allocates, it is served from the
// static arena.
static int resolving;

static void resolve(void) {
    if (real_malloc || resolving) return;
    resolving = 1;
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    resolving = 0;
}

__attribute__((constructor)) static void start(void) {
    resolve();
    void *warm[1];
    busy = 1;
    backtrace(warm, 1);  // loads libgcc_s once, outside any count
    busy = 0;
    ready = 1;
}

__attribute__((destructor)) static void finish(void) {
    const char *dir = getenv("ALLOC_COUNT_DIR");
    if (!dir) return;
    // Only the training executables report (not helpers that MPI may start, which inherit the
    // environment).
    char exe[4096];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return;
    exe[len] = 0;
    const char *name = strrchr(exe, '/');
    if (strncmp(name ? name + 1 : exe, "train", 5) != 0) return;
    char path[4096];
    // Named by the MPI world rank (Open MPI sets it in each rank's environment), else the pid.
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    if (rank) snprintf(path, sizeof path, "%s/%s", dir, rank);
    else snprintf(path, sizeof path, "%s/%d", dir, (int)getpid());
    busy = 1;
    FILE *f = fopen(path, "w");
    if (f) { fprintf(f, "%lu\n", counted); fclose(f); }
}

void *malloc(size_t n) {
    resolve();
    if (!real_malloc) return bootstrap_alloc(n);
    count();
    return real_malloc(n);
}

void *calloc(size_t a, size_t b) {
    resolve();
    if (!real_calloc) { void *p = bootstrap_alloc(a * b); if (p) memset(p, 0, a * b); return p; }
    count();
    return real_calloc(a, b);
}

void *realloc(void *p, size_t n) {
    resolve();
    count();
    return real_realloc(p, n);
}

void free(void *p) {
    static void (*real_free)(void *);
    if ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof bootstrap) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}

int posix_memalign(void **out, size_t alignment, size_t n) {
    resolve();
    count();
    return real_posix_memalign(out, alignment, n);
}

void *aligned_alloc(size_t alignment, size_t n) {
    resolve();
    count();
    return real_aligned_alloc(alignment, n);
}
