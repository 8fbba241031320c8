/* storage.c — refcounted storage from a per-device allocator, plus the live
 * memory counters behind ,mem and the leak tests. */
#include <stdlib.h>

#include "tensor.h"

#include "config.h"
#ifdef MOELAB_HAVE_CUDA
#include "../kernels/cuda/cuda.h"
#endif

static moe_status cpu_alloc(void **ptr, size_t nbytes, void *ctx)
{
    (void)ctx;
    /* 64-byte alignment suits AVX-512 loads and BLAS. */
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    *ptr = aligned_alloc(64, rounded ? rounded : 64);
    return *ptr ? MOE_OK : MOE_ERR_NOMEM;
}

static void cpu_free(void *ptr, size_t nbytes, void *ctx)
{
    (void)nbytes;
    (void)ctx;
    free(ptr);
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
    s->refcount = 1;
    s->device = device;
    s->allocator = a;
    count_storage(device, (int64_t)nbytes, 1);
    *out = s;
    return MOE_OK;
}

void moe_storage_retain(moe_storage *s)
{
    __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
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
    w->base.refcount = 1;
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
    if (!s || __atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    count_storage(s->device, (int64_t)s->nbytes, -1);
    if (s->allocator) {
        s->allocator->free(s->data, s->nbytes, s->allocator->ctx);
    } else {
        wrapped_storage *w = (wrapped_storage *)s;
        if (w->free_fn) w->free_fn(s->data, w->ctx);
    }
    free(s);
}
