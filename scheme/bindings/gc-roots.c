/* gc-roots.c — keep Guile's collector out of the big numeric libraries.
 *
 * Guile's collector (BDW-GC) scans the writable data of every loaded shared
 * library for pointers, at every collection. The libraries behind moelab
 * are large and hold no Scheme objects: cuBLASLt alone carries ~200 MB of
 * data and bss, which made each collection take ~60 ms and touched all those
 * pages. Since tensors report their native memory to the collector
 * (scm_gc_register_allocation), collections are frequent, so moelab tells
 * the collector to skip those libraries.
 *
 * The hook is looked up at run time (it lives in libgc, which libguile
 * links), so no libgc headers or link flags are needed; without it nothing
 * changes. Only libraries known to hold no Scheme objects are skipped;
 * libguile-moelab itself is still scanned (and protects its own globals). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <string.h>

#include "bindings.h"

typedef int (*has_static_roots_fn)(const char *dlpi_name, void *section_start, size_t section_size);
typedef void (*register_fn)(has_static_roots_fn callback);

/* File-name prefixes (after the last '/') of libraries never scanned. */
static const char *const skipped[] = {
    "libmoelab.so",  "libopenblas", "libblas.so",  "libcblas.so",  "liblapack.so", "libgomp.so",
    "libcublas",     "libcudart",   "libcuda.so",  "libnccl",      "libnvrtc",     "libnvJitLink",
    "libcusparse",   "libcufft",    "libcurand",   "libcudnn",     "libmpi.so",    "libopen-pal",
    "libopen-rte",   "libpmix",     "libhwloc",    "libucp",       "libucs",       "libuct",
};

static int scan_library(const char *dlpi_name, void *section_start, size_t section_size)
{
    (void)section_start;
    (void)section_size;
    if (!dlpi_name) return 1;
    const char *base = strrchr(dlpi_name, '/');
    base = base ? base + 1 : dlpi_name;
    for (size_t i = 0; i < sizeof skipped / sizeof *skipped; i++)
        if (strncmp(base, skipped[i], strlen(skipped[i])) == 0) return 0;
    return 1;
}

void moelab_init_gc_roots(void)
{
    register_fn reg = (register_fn)dlsym(RTLD_DEFAULT, "GC_register_has_static_roots_callback");
    if (reg) reg(scan_library);
}
