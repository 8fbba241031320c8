/* cuda.h — the C side of the CUDA backend: plain C, no CUDA types, so it is
 * included in every build (calls go through MOE_CUDA(), core/device.h). */
#ifndef MOELAB_CUDA_H
#define MOELAB_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_tensor moe_tensor;

/* Number of visible devices (0 when the driver or a GPU is missing). */
int moe_cuda_device_count(void);
/* Install the device allocator; fails with a clear message without a GPU. */
moe_status moe_cuda_init(void);
typedef enum { MOE_COPY_H2D, MOE_COPY_D2H, MOE_COPY_D2D } moe_copy_kind;
/* Ordered after the work queued on moe_cuda_stream(); returns once the
 * copy is complete (host buffers may be reused at once). */
moe_status moe_cuda_memcpy(void *dst, const void *src, size_t nbytes, moe_copy_kind kind);
/* Wait for all work queued on this thread's stream (timing, tests). */
moe_status moe_cuda_synchronize(void);
/* The process's cuBLAS handle, created on first use. */
moe_status moe_cublas_handle(void **handle);

/* ---- caching allocator (alloc.cu) ---------------------------------------
 * Blocks are rounded to size classes and kept on per-class free lists when
 * freed, so a training step that repeats its allocations never calls
 * cudaMalloc once warm. */
/* Give every cached free block back to the driver. */
void moe_cuda_empty_cache(void);
typedef struct moe_cuda_cache_stats {
    int64_t reserved_bytes; /* held from cudaMalloc: in use + cached */
    int64_t cached_bytes;   /* free blocks on the lists */
    int64_t device_mallocs; /* cudaMalloc calls so far */
    int64_t cache_hits;     /* allocations served from a free list */
} moe_cuda_cache_stats;
void moe_cuda_cache_stats_get(moe_cuda_cache_stats *out);

/* ---- copy and fill (copy.cu) --------------------------------------------
 * dst ← src: same shape (src may have zero strides), any dtypes, any
 * strides, both on the GPU. Fill: every element of T ← VALUE. */
moe_status moe_cuda_copy(moe_tensor *dst, const moe_tensor *src);
moe_status moe_cuda_fill(moe_tensor *t, double value);

#ifdef __cplusplus
}
#endif
#endif
