// Everything of this target is static inline in include/trace_clock.h; SwiftPM wants a C file.
#include "trace_clock.h"
