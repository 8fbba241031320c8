/* internal.h — shared between core files; not installed. */
#ifndef MOELAB_INTERNAL_H
#define MOELAB_INTERNAL_H

#include "autograd.h"
#include "ops.h"
#include "tensor.h"

/* storage.c */
void moe_memory_count_tensor(moe_device device, int delta);
moe_status moe_storage_wrap(moe_storage **out, void *data, size_t nbytes,
                            void (*free_fn)(void *, void *), void *ctx);

/* tensor.c: a fresh tensor header viewing STORAGE (retained). */
moe_status moe_tensor_new_view(moe_tensor **out, const moe_tensor *like, moe_storage *storage,
                               int ndim, const int64_t *shape, const int64_t *strides,
                               int64_t offset);
void moe_contiguous_strides(int ndim, const int64_t *shape, int64_t *strides);

/* Element byte pointer of T at flat element offset OFF into its storage. */
/* The out-of-memory error of OP: how many bytes it asked for, and for what. */
static inline moe_status moe_fail_nomem(const char *op, size_t bytes, const char *what)
{
    return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %s (%zu bytes)", what, bytes);
}

static inline char *moe_storage_ptr(const moe_tensor *t, int64_t off)
{
    return (char *)t->storage->data + off * (int64_t)moe_dtype_size(t->dtype);
}

/* ---- argument checks that name the op ----------------------------------- */
#define MOE_CHECK_NOT_NULL(op, t)                                                   \
    do {                                                                            \
        if (!(t)) return moe_fail(MOE_ERR_ARG, op, "argument '%s' is NULL", #t);    \
    } while (0)

/* The mark of an op with CPU kernels only (see core/device.h): a tensor on
 * another device gets a clear error. Drop it when the op gets a CUDA kernel. */
#define MOE_CHECK_CPU(op, t)                                                        \
    do {                                                                            \
        if ((t)->device != MOE_CPU)                                                 \
            return moe_fail(MOE_ERR_DEVICE, op, "no %s kernel for %s yet",          \
                            moe_device_name((t)->device), (op));                    \
    } while (0)

#define MOE_CHECK_SAME_DEVICE(op, a, b)                                             \
    do {                                                                            \
        if ((a)->device != (b)->device)                                             \
            return moe_fail(MOE_ERR_DEVICE, op, "tensors on different devices: %s and %s", \
                            moe_device_name((a)->device), moe_device_name((b)->device)); \
    } while (0)

#define MOE_CHECK_FLOAT(op, t)                                                      \
    do {                                                                            \
        if (!moe_dtype_is_float((t)->dtype))                                        \
            return moe_fail(MOE_ERR_DTYPE, op, "expected a floating dtype, got %s", \
                            moe_dtype_name((t)->dtype));                            \
    } while (0)

#define MOE_CHECK_INTEGER(op, t)                                                    \
    do {                                                                            \
        if ((t)->dtype != MOE_I64 && (t)->dtype != MOE_I32)                         \
            return moe_fail(MOE_ERR_DTYPE, op, "expected an i64 or i32 index tensor, got %s", \
                            moe_dtype_name((t)->dtype));                            \
    } while (0)

/* A contiguous tensor in the compute dtype of T (f32 for f32/bf16, else f64):
 * T itself (retained) when it already is one. Not recorded by autograd. */
moe_status moe_as_compute(moe_tensor **out, moe_tensor *t, moe_dtype compute);
/* The other way: the result in dtype RT from a fresh compute-dtype buffer R
 * (takes over R; R itself when it already has dtype RT). */
moe_status moe_from_compute(moe_tensor **out, moe_tensor *r, moe_dtype rt);

/* autograd.c: add G into the accumulated gradient of LEAF (taking over G),
 * under the leaf's lock so that concurrent backward passes sum exactly. When
 * the leaf has no gradient yet, G is kept as is if FRESH (a new tensor of the
 * leaf's dtype and shape that nobody else holds) or if it turns out to be
 * the caller's alone, else copied; a gradient that the leaf alone holds is
 * added to in place. */
moe_status moe_grad_accumulate(moe_tensor *leaf, moe_tensor *g, bool fresh);

/* Run an op body with grad mode off (backward functions compose ops). */
#define MOE_NO_GRAD_BEGIN bool moe_prev_grad_ = moe_grad_set_enabled(false)
#define MOE_NO_GRAD_END moe_grad_set_enabled(moe_prev_grad_)

/* core/ops/index.c, shared with sort.c: keep DIM and T's shape in a node
 * (iargs[0] = dim, [1] = ndim, [2..] = shape), and the backward of a gather
 * recorded that way (saved[0] the index): scatter-add g into zeros. */
void moe_node_keep_dim_shape(moe_node *n, int d, const moe_tensor *t);
moe_status moe_gather_backward(moe_node *n, moe_tensor *g, moe_tensor **gin);

/* The strided copy, fill and range search on the CPU (kernels/cpu/copy.c). */
#include "../kernels/cpu/copy.h"
/* The counter-based random bits, shared with the CUDA kernels. */
#include "../kernels/rng.h"

/* ---- values that an integer dtype cannot hold (core/view.c) ------------------ */
/* Fails naming OP when VALUE (NaN, infinite, or out of range) has no
 * DTYPE counterpart; floating and bool dtypes take any value. */
moe_status moe_dtype_check_value(const char *op, moe_dtype dtype, double value);
/* The same for every element of T converted to DTYPE: the error names the
 * first offending value and its index. */
moe_status moe_check_representable(const char *op, const moe_tensor *t, moe_dtype dtype);
/* Fails naming OP when the integer tensor T (a divisor) holds a zero. */
moe_status moe_check_no_zero(const char *op, const moe_tensor *t);

#endif
