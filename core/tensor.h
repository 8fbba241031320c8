/* tensor.h — a tensor is a view (shape, strides, offset) on refcounted storage.
 *
 * Ownership: every function that hands out a tensor (`moe_tensor **out`)
 * gives the caller one reference; drop it with moe_tensor_release(). Views
 * keep their storage alive. Strides and offsets count elements, not bytes. */
#ifndef MOELAB_TENSOR_H
#define MOELAB_TENSOR_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_MAX_DIMS 8

/* Reference counts are C11 atomics: tensors, storages and autograd nodes may
 * be retained and released from several threads at once (Guile threads, the
 * collector's finalizer thread, threads-backend ranks). C++ code (the CUDA
 * kernels) sees a plain int of the same size and never touches them. */
#ifdef __cplusplus
#define MOE_ATOMIC(type) type
#else
#define MOE_ATOMIC(type) _Atomic(type)
#endif

typedef struct moe_node moe_node;
typedef struct moe_hook moe_hook;

/* Allocator behind a device: one vtable per device, replaceable (tests,
 * caching CUDA allocator). */
typedef struct moe_allocator {
    const char *name;
    moe_status (*alloc)(void **ptr, size_t nbytes, void *ctx);
    void (*free)(void *ptr, size_t nbytes, void *ctx);
    void *ctx;
} moe_allocator;

typedef struct moe_storage {
    void *data;
    size_t nbytes;
    MOE_ATOMIC(int) refcount;
    moe_device device;
    const moe_allocator *allocator; /* NULL: memory borrowed, not freed */
    uint64_t version; /* bumped by every in-place write; autograd checks it */
} moe_storage;

typedef struct moe_tensor {
    moe_storage *storage;
    int64_t offset; /* elements */
    int64_t shape[MOE_MAX_DIMS];
    int64_t strides[MOE_MAX_DIMS]; /* elements */
    int ndim;
    moe_dtype dtype;
    moe_device device;
    MOE_ATOMIC(int) refcount;
    /* autograd */
    bool requires_grad;
    /* accumulated gradient of a leaf (or NULL); while backward passes may run
     * on other threads, read it with moe_tensor_grad (core/autograd.h) */
    struct moe_tensor *grad;
    moe_node *grad_fn;       /* node that produced this tensor (NULL: leaf) */
    moe_hook *hooks;         /* gradient hooks of a leaf */
} moe_tensor;

/* ---- allocators and storage ------------------------------------------- */
const moe_allocator *moe_allocator_get(moe_device device);
/* Install an allocator for a device (NULL restores the default). */
void moe_allocator_set(moe_device device, const moe_allocator *allocator);
/* Give cached free blocks of DEVICE back to the system (the CPU allocator
 * keeps large blocks for reuse, see storage.c; the CUDA one every freed
 * block, see kernels/cuda/alloc.cu). */
void moe_allocator_empty_cache(moe_device device);
moe_status moe_storage_new(moe_storage **out, moe_device device, size_t nbytes);
void moe_storage_retain(moe_storage *s);
void moe_storage_release(moe_storage *s);

/* Devices of a kind usable now (cpu: 1; cuda: visible GPUs, 0 without a
 * CUDA build or a GPU). */
int moe_device_count(moe_device device);
/* True when this build includes the CUDA backend. */
bool moe_built_with_cuda(void);

/* Live tensors and storage bytes per device (for ,mem and leak tests). */
typedef struct moe_memory_stats {
    int64_t live_tensors;
    int64_t live_storages;
    int64_t live_bytes;
    int64_t peak_bytes;
} moe_memory_stats;
void moe_memory_stats_get(moe_device device, moe_memory_stats *out);
void moe_memory_peak_reset(moe_device device);

/* ---- lifetime ------------------------------------------------------------ */
moe_tensor *moe_tensor_retain(moe_tensor *t);
void moe_tensor_release(moe_tensor *t); /* NULL is fine */

/* ---- creation (results are contiguous, requires_grad false) --------------- */
moe_status moe_tensor_empty(moe_tensor **out, moe_dtype dtype, moe_device device,
                            int ndim, const int64_t *shape);
moe_status moe_tensor_zeros(moe_tensor **out, moe_dtype dtype, moe_device device,
                            int ndim, const int64_t *shape);
moe_status moe_tensor_ones(moe_tensor **out, moe_dtype dtype, moe_device device,
                           int ndim, const int64_t *shape);
moe_status moe_tensor_full(moe_tensor **out, moe_dtype dtype, moe_device device,
                           int ndim, const int64_t *shape, double value);
/* Empty tensor with the dtype, device and shape of T. */
moe_status moe_tensor_empty_like(moe_tensor **out, const moe_tensor *t);
moe_status moe_tensor_zeros_like(moe_tensor **out, const moe_tensor *t);
/* Copy NUMEL(shape) elements of DTYPE from host memory. */
moe_status moe_tensor_from_data(moe_tensor **out, moe_dtype dtype, moe_device device,
                                int ndim, const int64_t *shape, const void *data);
/* Wrap host memory without copying; FREE_FN (may be NULL) runs when the last
 * view goes away. */
moe_status moe_tensor_wrap(moe_tensor **out, moe_dtype dtype, int ndim, const int64_t *shape,
                           void *data, void (*free_fn)(void *data, void *ctx), void *ctx);
/* [start, end) by step, like Python's range. */
moe_status moe_tensor_arange(moe_tensor **out, moe_dtype dtype, moe_device device,
                             double start, double end, double step);
moe_status moe_tensor_eye(moe_tensor **out, moe_dtype dtype, moe_device device,
                          int64_t n, int64_t m);
moe_status moe_tensor_scalar(moe_tensor **out, moe_dtype dtype, moe_device device, double v);

/* ---- random numbers -------------------------------------------------------
 * Counter-based: element i of a draw depends only on (seed, offset + i), so
 * results are identical for any thread count. A generator hands out
 * consecutive counter ranges. */
typedef struct moe_rng {
    uint64_t seed;
    uint64_t offset;
} moe_rng;
void moe_rng_init(moe_rng *rng, uint64_t seed);
/* The process-wide default generator (seeded with 0 at start). */
moe_rng *moe_rng_default(void);
void moe_manual_seed(uint64_t seed);
/* rng may be NULL: the default generator. */
moe_status moe_tensor_rand(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device,
                           int ndim, const int64_t *shape); /* U[0,1) */
moe_status moe_tensor_randn(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device,
                            int ndim, const int64_t *shape); /* N(0,1) */
moe_status moe_tensor_randint(moe_tensor **out, moe_rng *rng, moe_dtype dtype, moe_device device,
                              int64_t low, int64_t high, int ndim, const int64_t *shape);
moe_status moe_tensor_permutation(moe_tensor **out, moe_rng *rng, moe_device device, int64_t n);
/* Uniform double in [0,1) for counter value I of SEED (the primitive). */
double moe_rng_uniform(uint64_t seed, uint64_t i);

/* ---- inspection ------------------------------------------------------------ */
int64_t moe_tensor_numel(const moe_tensor *t);
size_t moe_tensor_nbytes(const moe_tensor *t); /* numel * dtype size */
bool moe_tensor_is_contiguous(const moe_tensor *t);
/* Pointer to element 0 (host tensors: dereferenceable). */
void *moe_tensor_data(const moe_tensor *t);
bool moe_tensor_same_shape(const moe_tensor *a, const moe_tensor *b);
/* "[4 8]" in a rotating thread-local buffer: safe for a few uses per printf. */
const char *moe_shape_str(const moe_tensor *t);
const char *moe_dims_str(int ndim, const int64_t *shape);
/* Normalise a possibly negative dim; fails naming OP when out of range. */
moe_status moe_dim_normalize(const char *op, const moe_tensor *t, int dim, int *out);

/* Element access by index (slow; for tests, bindings, printing). */
moe_status moe_tensor_get(const moe_tensor *t, const int64_t *index, double *out);
moe_status moe_tensor_set(moe_tensor *t, const int64_t *index, double value);
/* The single value of a one-element tensor. */
moe_status moe_tensor_item(const moe_tensor *t, double *out);
/* Copy all elements, in row-major order, converted to double / to DTYPE. */
moe_status moe_tensor_to_doubles(const moe_tensor *t, double *out);
moe_status moe_tensor_to_host(const moe_tensor *t, moe_dtype dtype, void *out);

/* ---- in-place (not recorded by autograd; refused on a tensor that requires
 * grad while grad mode is on) ------------------------------------------------ */
moe_status moe_tensor_fill_(moe_tensor *t, double value);
/* dst ← src, broadcasting src to dst's shape and converting dtype. DST must
 * not have elements sharing memory (an expanded view): that is an error. */
moe_status moe_tensor_copy_(moe_tensor *dst, const moe_tensor *src);

/* Version counter of T's storage, shared by every view and detached alias
 * of it. Each in-place write (fill, copy, element set, in-place collectives,
 * the router's expert-bias update) bumps it; autograd records it when a node
 * saves a tensor and refuses a backward that would read a changed one. Code
 * that writes through moe_tensor_data() into a tensor that may have been
 * saved calls moe_tensor_bump_version() after the write. */
uint64_t moe_tensor_version(const moe_tensor *t);
void moe_tensor_bump_version(moe_tensor *t);
/* True when two elements of T share memory (a stride-0 dim of size > 1, as
 * made by expand, or overlapping strides): writing through T is ambiguous. */
bool moe_tensor_has_overlap(const moe_tensor *t);

/* ---- views and layout (differentiable; share storage where possible) ------ */
/* Reshape: one dim may be -1. A view when strides allow, else a copy. */
moe_status moe_reshape(moe_tensor **out, moe_tensor *t, int ndim, const int64_t *shape);
/* Like reshape but fails instead of copying. */
moe_status moe_view(moe_tensor **out, moe_tensor *t, int ndim, const int64_t *shape);
moe_status moe_transpose(moe_tensor **out, moe_tensor *t, int dim0, int dim1);
moe_status moe_permute(moe_tensor **out, moe_tensor *t, const int *perm);
moe_status moe_narrow(moe_tensor **out, moe_tensor *t, int dim, int64_t start, int64_t length);
/* Index one position of DIM and drop the dim. */
moe_status moe_select(moe_tensor **out, moe_tensor *t, int dim, int64_t index);
/* Broadcast size-1 dims (and new leading dims) to SHAPE without copying. */
moe_status moe_expand(moe_tensor **out, moe_tensor *t, int ndim, const int64_t *shape);
moe_status moe_squeeze(moe_tensor **out, moe_tensor *t, int dim);
moe_status moe_unsqueeze(moe_tensor **out, moe_tensor *t, int dim);
moe_status moe_flatten(moe_tensor **out, moe_tensor *t);
/* T itself (retained) when already contiguous, else a contiguous copy. */
moe_status moe_contiguous(moe_tensor **out, moe_tensor *t);
moe_status moe_clone(moe_tensor **out, moe_tensor *t);
/* Convert dtype (differentiable between float dtypes). */
moe_status moe_to_dtype(moe_tensor **out, moe_tensor *t, moe_dtype dtype);
/* Move between devices (differentiable). */
moe_status moe_to_device(moe_tensor **out, moe_tensor *t, moe_device device);

/* Broadcast shapes A and B (numpy rules) into OUT_SHAPE/OUT_NDIM. */
moe_status moe_broadcast_shapes(const char *op, int a_ndim, const int64_t *a_shape, int b_ndim,
                                const int64_t *b_shape, int *out_ndim, int64_t *out_shape);

#ifdef __cplusplus
}
#endif
#endif
