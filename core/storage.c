/* storage.c — refcounted storage from a per-device allocator, plus the live
 * memory counters behind ,mem and the leak tests. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "tensor.h"

#include "config.h"
#ifdef MOELAB_HAVE_CUDA
#include "../kernels/cuda/cuda.h"
#endif

/* Large host blocks are cached for reuse: fresh pages cost a page fault
 * each (a 64 MiB output loses over half its bandwidth to them). Only blocks
 * of at least CACHE_MIN bytes are cached; glibc's heap serves the smaller
 * ones (see tune_malloc), and caching them here too only pinned stale blocks
 * beside the heap's own free memory (a training step's resident size grew
 * by the cache's contents, step after step, at no gain in speed). Cached
 * blocks, rounded to CACHE_ROUND, go to a small list on free and are handed
 * back for an allocation that fits them with at most a quarter to spare (MoE
 * buffers change size a little every step, so an exact-size rule rarely
 * hits). A block keeps the size it was asked for, never more than it has.
 * When a freed block does not fit under MOELAB_CPU_CACHE_MB (default 1024)
 * MiB or in a free slot, the least recently cached blocks make room;
 * moe_allocator_empty_cache() returns it all to the system. */
#include <pthread.h>

#define CACHE_MIN ((size_t)32 << 20) /* smaller blocks: glibc's heap (tune_malloc) */
#define CACHE_ROUND ((size_t)64 << 10)
#define CACHE_SLOTS 64

static struct {
    pthread_mutex_t lock;
    void *ptr[CACHE_SLOTS];
    size_t size[CACHE_SLOTS];
    uint64_t when[CACHE_SLOTS]; /* insertion order, for eviction */
    uint64_t clock;
    size_t bytes, limit;
    bool limit_read;
} cpu_cache = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t cpu_block_size(size_t nbytes)
{
    if (nbytes >= CACHE_MIN) return (nbytes + CACHE_ROUND - 1) & ~(CACHE_ROUND - 1);
    size_t rounded = (nbytes + 63) & ~(size_t)63; /* 64-byte alignment: AVX-512, BLAS */
    return rounded ? rounded : 64;
}

#define HEAP_KEEP ((size_t)128 << 20) /* free heap memory glibc keeps mapped */

/* glibc's malloc, set once for blocks of tensor size: every block below
 * CACHE_MIN comes from the heap (a fixed mmap threshold, where glibc's own
 * starts at 128 KiB and only creeps up as mapped blocks are freed), and up to
 * HEAP_KEEP bytes of free heap stay mapped between steps instead of going
 * back to the kernel and faulting in again, page by page, in the next step.
 * In bench-train's steps this cut the page faults from about 241,000 to
 * 107,000 a run and the step time by about 5%, at the same peak resident
 * size. A process that sets glibc's own knobs (MALLOC_MMAP_THRESHOLD_,
 * MALLOC_TRIM_THRESHOLD_, or a glibc.malloc tunable in GLIBC_TUNABLES)
 * keeps its settings. */
static void tune_malloc(void)
{
#ifdef __GLIBC__
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_") ||
        (tunables && strstr(tunables, "glibc.malloc.")))
        return;
    mallopt(M_MMAP_THRESHOLD, (int)CACHE_MIN);
    mallopt(M_TRIM_THRESHOLD, (int)HEAP_KEEP);
#endif
}

static pthread_once_t malloc_tuned = PTHREAD_ONCE_INIT;

static moe_status cpu_alloc(void **ptr, size_t nbytes, void *ctx)
{
    (void)ctx;
    pthread_once(&malloc_tuned, tune_malloc);
    size_t size = cpu_block_size(nbytes);
    if (size >= CACHE_MIN) {
        pthread_mutex_lock(&cpu_cache.lock);
        int best = -1; /* the smallest cached block that fits, with ≤ 25% to spare */
        for (int i = 0; i < CACHE_SLOTS; i++)
            if (cpu_cache.ptr[i] && cpu_cache.size[i] >= size && cpu_cache.size[i] <= size + size / 4 &&
                (best < 0 || cpu_cache.size[i] < cpu_cache.size[best]))
                best = i;
        if (best >= 0) {
            *ptr = cpu_cache.ptr[best];
            cpu_cache.ptr[best] = NULL;
            cpu_cache.bytes -= cpu_cache.size[best];
            pthread_mutex_unlock(&cpu_cache.lock);
            return MOE_OK;
        }
        pthread_mutex_unlock(&cpu_cache.lock);
    }
    *ptr = aligned_alloc(64, size);
    return *ptr ? MOE_OK : MOE_ERR_NOMEM;
}

static void cpu_free(void *ptr, size_t nbytes, void *ctx)
{
    (void)ctx;
    size_t size = cpu_block_size(nbytes);
    if (size >= CACHE_MIN) {
        pthread_mutex_lock(&cpu_cache.lock);
        if (!cpu_cache.limit_read) {
            const char *env = getenv("MOELAB_CPU_CACHE_MB");
            cpu_cache.limit = (env ? (size_t)strtoull(env, NULL, 10) : 1024) << 20;
            cpu_cache.limit_read = true;
        }
        void *evicted[CACHE_SLOTS];
        int n_evicted = 0;
        if (size <= cpu_cache.limit) {
            int slot = -1;
            for (;;) {
                int oldest = -1;
                slot = -1;
                for (int i = 0; i < CACHE_SLOTS; i++) {
                    if (!cpu_cache.ptr[i]) slot = i;
                    else if (oldest < 0 || cpu_cache.when[i] < cpu_cache.when[oldest]) oldest = i;
                }
                if (slot >= 0 && cpu_cache.bytes + size <= cpu_cache.limit) break;
                /* full: the oldest block makes room (freed after the lock) */
                evicted[n_evicted++] = cpu_cache.ptr[oldest];
                cpu_cache.bytes -= cpu_cache.size[oldest];
                cpu_cache.ptr[oldest] = NULL;
            }
            cpu_cache.ptr[slot] = ptr;
            cpu_cache.size[slot] = size;
            cpu_cache.when[slot] = cpu_cache.clock++;
            cpu_cache.bytes += size;
            ptr = NULL;
        }
        pthread_mutex_unlock(&cpu_cache.lock);
        for (int i = 0; i < n_evicted; i++) free(evicted[i]);
    }
    free(ptr);
}

void moe_allocator_empty_cache(moe_device device)
{
#ifdef MOELAB_HAVE_CUDA
    if (device == MOE_CUDA) moe_cuda_empty_cache();
#endif
    if (device != MOE_CPU) return;
    pthread_mutex_lock(&cpu_cache.lock);
    for (int i = 0; i < CACHE_SLOTS; i++) {
        free(cpu_cache.ptr[i]);
        cpu_cache.ptr[i] = NULL;
    }
    cpu_cache.bytes = 0;
    pthread_mutex_unlock(&cpu_cache.lock);
}

static const moe_allocator cpu_allocator = {"cpu", cpu_alloc, cpu_free, NULL};
static const moe_allocator *allocators[MOE_DEVICE_COUNT] = {[MOE_CPU] = &cpu_allocator};
static const moe_allocator *const default_allocators[MOE_DEVICE_COUNT] = {[MOE_CPU] = &cpu_allocator};

static moe_memory_stats stats[MOE_DEVICE_COUNT];

int moe_device_count(moe_device device)
{
    if (device == MOE_CPU) return 1;
#ifdef MOELAB_HAVE_CUDA
    if (device == MOE_CUDA) return moe_cuda_device_count();
#endif
    return 0;
}

bool moe_built_with_cuda(void)
{
#ifdef MOELAB_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

const moe_allocator *moe_allocator_get(moe_device device)
{
    return device < MOE_DEVICE_COUNT ? allocators[device] : NULL;
}

void moe_allocator_set(moe_device device, const moe_allocator *allocator)
{
    if (device < MOE_DEVICE_COUNT)
        allocators[device] = allocator ? allocator : default_allocators[device];
}

/* Called from tensor.c to count live tensors. */
void moe_memory_count_tensor(moe_device device, int delta)
{
    __atomic_add_fetch(&stats[device].live_tensors, delta, __ATOMIC_RELAXED);
}

static void count_storage(moe_device device, int64_t nbytes, int delta)
{
    moe_memory_stats *s = &stats[device];
    __atomic_add_fetch(&s->live_storages, delta, __ATOMIC_RELAXED);
    int64_t now = __atomic_add_fetch(&s->live_bytes, delta * nbytes, __ATOMIC_RELAXED);
    int64_t peak = __atomic_load_n(&s->peak_bytes, __ATOMIC_RELAXED);
    while (now > peak &&
           !__atomic_compare_exchange_n(&s->peak_bytes, &peak, now, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED)) {
    }
}

void moe_memory_stats_get(moe_device device, moe_memory_stats *out)
{
    moe_memory_stats *s = &stats[device];
    out->live_tensors = __atomic_load_n(&s->live_tensors, __ATOMIC_RELAXED);
    out->live_storages = __atomic_load_n(&s->live_storages, __ATOMIC_RELAXED);
    out->live_bytes = __atomic_load_n(&s->live_bytes, __ATOMIC_RELAXED);
    out->peak_bytes = __atomic_load_n(&s->peak_bytes, __ATOMIC_RELAXED);
}

void moe_memory_peak_reset(moe_device device)
{
    __atomic_store_n(&stats[device].peak_bytes,
                     __atomic_load_n(&stats[device].live_bytes, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
}

moe_status moe_storage_new(moe_storage **out, moe_device device, size_t nbytes)
{
    *out = NULL;
    const moe_allocator *a = moe_allocator_get(device);
#ifdef MOELAB_HAVE_CUDA
    if (!a && device == MOE_CUDA) {
        MOE_TRY(moe_cuda_init());
        a = moe_allocator_get(device);
    }
#endif
    if (!a)
        return moe_fail(MOE_ERR_DEVICE, "alloc",
                        "no allocator for device %s (moelab was built without %s support)",
                        moe_device_name(device), moe_device_name(device));
    moe_storage *s = calloc(1, sizeof *s);
    if (!s) return moe_fail(MOE_ERR_NOMEM, "alloc", "out of host memory for a storage header");
    if (a->alloc(&s->data, nbytes, a->ctx) != MOE_OK) {
        free(s);
        return moe_fail(MOE_ERR_NOMEM, "alloc", "cannot allocate %zu bytes on %s", nbytes,
                        moe_device_name(device));
    }
    s->nbytes = nbytes;
    atomic_init(&s->refcount, 1);
    s->device = device;
    s->allocator = a;
    count_storage(device, (int64_t)nbytes, 1);
    *out = s;
    return MOE_OK;
}

void moe_storage_retain(moe_storage *s)
{
    atomic_fetch_add_explicit(&s->refcount, 1, memory_order_relaxed);
}

/* Borrowed storages (moe_tensor_wrap) keep their release callback here. */
typedef struct wrapped_storage {
    moe_storage base;
    void (*free_fn)(void *data, void *ctx);
    void *ctx;
} wrapped_storage;

moe_status moe_storage_wrap(moe_storage **out, void *data, size_t nbytes,
                            void (*free_fn)(void *, void *), void *ctx)
{
    wrapped_storage *w = calloc(1, sizeof *w);
    if (!w) return moe_fail(MOE_ERR_NOMEM, "wrap", "out of host memory");
    w->base.data = data;
    w->base.nbytes = nbytes;
    atomic_init(&w->base.refcount, 1);
    w->base.device = MOE_CPU;
    w->base.allocator = NULL;
    w->free_fn = free_fn;
    w->ctx = ctx;
    count_storage(MOE_CPU, (int64_t)nbytes, 1);
    *out = &w->base;
    return MOE_OK;
}

void moe_storage_release(moe_storage *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refcount, 1, memory_order_acq_rel) != 1) return;
    count_storage(s->device, (int64_t)s->nbytes, -1);
    if (s->allocator) {
        s->allocator->free(s->data, s->nbytes, s->allocator->ctx);
    } else {
        wrapped_storage *w = (wrapped_storage *)s;
        if (w->free_fn) w->free_fn(s->data, w->ctx);
    }
    free(s);
}
