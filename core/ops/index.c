/* index.c — gather, scatter_add, index_select, index_add and one_hot, each
 * forward beside its backward. Loops: kernels/cpu/index.c.
 *
 * Dimension letters (along the indexed dim DIM):
 *   P  product of the dims before DIM
 *   N  size of DIM in the data tensor
 *   M  number of index entries along DIM
 *   Q  product of the dims after DIM
 *   C  classes (one_hot)
 *
 * Index tensors may be i64 or i32 and any layout; they are turned into a
 * contiguous i64 copy and range-checked before any kernel runs, so a bad index
 * is an MOE_ERR_INDEX naming the value, where it sits and the valid range.
 *
 * Devices: each loop has a CUDA twin with the same contract
 * (kernels/cuda/index.cu), chosen at the innermost call (core/device.h); the
 * range check of a device index runs on the device and brings back only the
 * first bad position. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/index.h"
#include "../../kernels/cuda/index.h"
#include "device.h"
#include "internal.h"

static const int64_t one_dim[1] = {1}; /* a 0-d tensor seen as [1] */

static int64_t prod_dims(const int64_t *shape, int from, int to)
{
    int64_t p = 1;
    for (int k = from; k < to; k++) p *= shape[k];
    return p;
}

/* INDEX as a contiguous i64 tensor (the tensor itself when it already is one). */
static moe_status index_i64(const char *op, moe_tensor **out, moe_tensor *index)
{
    *out = NULL;
    MOE_CHECK_INTEGER(op, index);
    return moe_as_compute(out, index, MOE_I64);
}

/* Fail unless every entry of IDX (contiguous i64) is in [0, SIZE). WHAT names
 * the indexed thing ("dim 1 of shape [4 3]"). */
static moe_status check_range(const char *op, const moe_tensor *idx, int64_t size, const char *what)
{
    int64_t bad, value = 0;
    if (moe_on_cuda(idx)) {
        MOE_TRY(MOE_CUDA(moe_cuda_index_find_bad(moe_tensor_data(idx), moe_tensor_numel(idx), size, &bad,
                                                 &value)));
    } else {
        const int64_t *v = moe_tensor_data(idx);
        bad = moe_cpu_index_find_bad(v, moe_tensor_numel(idx), size);
        if (bad >= 0) value = v[bad];
    }
    if (bad < 0) return MOE_OK;
    int64_t pos[MOE_MAX_DIMS], rem = bad;
    for (int k = idx->ndim - 1; k >= 0; k--) {
        pos[k] = rem % idx->shape[k];
        rem /= idx->shape[k];
    }
    return moe_fail(MOE_ERR_INDEX, op, "index %lld at position %s is out of range [0, %lld) for %s",
                    (long long)value, moe_dims_str(idx->ndim, pos), (long long)size, what);
}

static moe_status check_range_dim(const char *op, const moe_tensor *idx, const moe_tensor *a, int d)
{
    char what[160];
    snprintf(what, sizeof what, "dim %d of shape %s", d, moe_shape_str(a));
    return check_range(op, idx, a->ndim ? a->shape[d] : 1, what);
}

/* See internal.h: shared with sort.c. */
void moe_node_keep_dim_shape(moe_node *n, int d, const moe_tensor *t)
{
    n->iargs[0] = d;
    n->iargs[1] = t->ndim;
    for (int i = 0; i < t->ndim; i++) n->iargs[2 + i] = t->shape[i];
}

/* A fresh contiguous copy of T in dtype C (never T itself: it gets written). */
static moe_status fresh_copy(moe_tensor **out, moe_tensor *t, moe_dtype c)
{
    MOE_TRY(moe_tensor_empty(out, c, t->device, t->ndim, t->shape));
    moe_status st = moe_copy_elements(*out, t);
    if (st != MOE_OK) {
        moe_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

/* Turn the compute-dtype result RES into dtype D, consuming RES. */
static moe_status finish_dtype(moe_tensor **out, moe_tensor *res, moe_dtype d)
{
    if (res->dtype == d) {
        *out = res;
        return MOE_OK;
    }
    moe_status st = moe_as_compute(out, res, d);
    moe_tensor_release(res);
    return st;
}

/* ---- gather ------------------------------------------------------------------ */

/* index.ndim == a.ndim and index fits inside a in every dim but D. */
static moe_status check_fits(const char *op, const moe_tensor *index, const char *iname,
                             const moe_tensor *t, const char *tname, int d)
{
    if (index->ndim != t->ndim)
        return moe_fail(MOE_ERR_SHAPE, op, "index %s and %s %s must have the same number of dims",
                        moe_shape_str(index), tname, moe_shape_str(t));
    for (int k = 0; k < t->ndim; k++)
        if (k != d && index->shape[k] > t->shape[k])
            return moe_fail(MOE_ERR_SHAPE, op, "%s %s is larger than %s %s in dim %d", iname,
                            moe_shape_str(index), tname, moe_shape_str(t), k);
    return MOE_OK;
}

typedef moe_status (*index_add_fn)(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index,
                                   moe_tensor *src);

/* da = ADD(zeros like a, dim, index, g): the gradient of an op that picked
 * elements of a by index goes back to where they came from. */
static moe_status add_into_zeros(moe_node *n, moe_tensor *g, moe_tensor **gin, index_add_fn add)
{
    moe_tensor *z;
    MOE_TRY(moe_tensor_zeros(&z, g->dtype, g->device, (int)n->iargs[1], &n->iargs[2]));
    moe_status st = add(&gin[0], z, (int)n->iargs[0], n->saved[0], g);
    moe_tensor_release(z);
    return st;
}

moe_status moe_gather_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return add_into_zeros(n, g, gin, moe_scatter_add);
}

moe_status moe_gather(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index)
{
    *out = NULL;
    MOE_CHECK_NOT_NULL("gather", a);
    MOE_CHECK_NOT_NULL("gather", index);
    MOE_CHECK_SAME_DEVICE("gather", a, index);
    int d;
    MOE_TRY(moe_dim_normalize("gather", a, dim, &d));
    MOE_TRY(check_fits("gather", index, "index", a, "input", d));
    moe_tensor *idx, *r = NULL;
    MOE_TRY(index_i64("gather", &idx, index));
    moe_status st = MOE_OK;
    MOE_TRYG(check_range_dim("gather", idx, a, d));
    MOE_TRYG(moe_tensor_empty(&r, a->dtype, a->device, idx->ndim, idx->shape));
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_gather(moe_tensor_data(r), moe_tensor_data(a), a->ndim ? a->strides : one_dim,
                                          moe_dtype_size(a->dtype), moe_tensor_data(idx), a->ndim ? a->ndim : 1,
                                          a->ndim ? idx->shape : one_dim, d)));
    else
        moe_cpu_gather(moe_tensor_data(r), moe_tensor_data(a), a->ndim ? a->strides : one_dim,
                       moe_dtype_size(a->dtype), moe_tensor_data(idx), a->ndim ? a->ndim : 1,
                       a->ndim ? idx->shape : one_dim, d);
    MOE_TRYG(moe_autograd_record(r, "gather", moe_gather_backward, 1, &a, 1, &idx, NULL, NULL));
    if (r->grad_fn) moe_node_keep_dim_shape(r->grad_fn, d, a);
done:
    moe_tensor_release(idx);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- scatter_add ---------------------------------------------------------------- */

static moe_status scatter_add_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    /* da = g;  dsrc = gather(g, dim, index), zero where src lies outside index */
    moe_tensor *idx = n->saved[0];
    if (n->inputs[0]) gin[0] = moe_tensor_retain(g);
    if (!n->inputs[1]) return MOE_OK;
    moe_tensor *gs, *z = NULL, *v = NULL;
    MOE_TRY(moe_gather(&gs, g, (int)n->iargs[0], idx));
    int nd = (int)n->iargs[1];
    if (nd == gs->ndim && memcmp(gs->shape, &n->iargs[2], sizeof(int64_t) * (size_t)nd) == 0) {
        gin[1] = gs;
        return MOE_OK;
    }
    moe_status st = MOE_OK;
    MOE_TRYG(moe_tensor_zeros(&z, g->dtype, g->device, nd, &n->iargs[2]));
    MOE_TRYG(moe_tensor_new_view(&v, z, z->storage, nd, gs->shape, z->strides, z->offset));
    MOE_TRYG(moe_tensor_copy_(v, gs));
    gin[1] = z;
    z = NULL;
done:
    moe_tensor_release(gs);
    moe_tensor_release(v);
    moe_tensor_release(z);
    return st;
}

moe_status moe_scatter_add(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index,
                           moe_tensor *src)
{
    const char *op = "scatter-add";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_NOT_NULL(op, index);
    MOE_CHECK_NOT_NULL(op, src);
    MOE_CHECK_SAME_DEVICE(op, a, index);
    MOE_CHECK_SAME_DEVICE(op, a, src);
    if (a->dtype != src->dtype)
        return moe_fail(MOE_ERR_DTYPE, op, "input is %s but src is %s; convert one first",
                        moe_dtype_name(a->dtype), moe_dtype_name(src->dtype));
    int d;
    MOE_TRY(moe_dim_normalize(op, a, dim, &d));
    MOE_TRY(check_fits(op, index, "index", a, "input", d));
    MOE_TRY(check_fits(op, index, "index", src, "src", -1));
    moe_tensor *idx, *res = NULL, *sc = NULL, *r = NULL;
    MOE_TRY(index_i64(op, &idx, index));
    moe_status st = MOE_OK;
    MOE_TRYG(check_range_dim(op, idx, a, d));
    moe_dtype c = moe_dtype_compute(a->dtype);
    MOE_TRYG(fresh_copy(&res, a, c));
    if (src->dtype == c)
        sc = moe_tensor_retain(src); /* the kernel reads it through its strides */
    else
        MOE_TRYG(moe_as_compute(&sc, src, c));
    int nd = a->ndim ? a->ndim : 1;
    const int64_t *rs = a->ndim ? res->strides : one_dim, *ss = a->ndim ? sc->strides : one_dim;
    const int64_t *ish = a->ndim ? idx->shape : one_dim;
    if (moe_on_cuda(res))
        MOE_TRYG(MOE_CUDA(moe_cuda_scatter_add(c, moe_tensor_data(res), rs, moe_tensor_data(sc), ss,
                                               moe_tensor_data(idx), nd, ish, d)));
    else
        moe_cpu_scatter_add(c, moe_tensor_data(res), rs, moe_tensor_data(sc), ss, moe_tensor_data(idx), nd, ish,
                            d);
    st = finish_dtype(&r, res, a->dtype);
    res = NULL;
    if (st != MOE_OK) goto done;
    MOE_TRYG(moe_autograd_record(r, op, scatter_add_backward, 2, (moe_tensor *[]){a, src}, 1, &idx,
                                 NULL, NULL));
    if (r->grad_fn) moe_node_keep_dim_shape(r->grad_fn, d, src);
done:
    moe_tensor_release(idx);
    moe_tensor_release(res);
    moe_tensor_release(sc);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- index_select ---------------------------------------------------------------- */

/* Common checks of index_select / index_add: A has a dim D; INDEX is 0-d or 1-D. */
static moe_status check_row_index(const char *op, moe_tensor *a, int dim, moe_tensor *index, int *d)
{
    MOE_CHECK_SAME_DEVICE(op, a, index);
    if (a->ndim == 0) return moe_fail(MOE_ERR_SHAPE, op, "cannot index rows of a 0-d tensor");
    MOE_TRY(moe_dim_normalize(op, a, dim, d));
    if (index->ndim > 1)
        return moe_fail(MOE_ERR_SHAPE, op, "index must be 0-d or 1-D, got shape %s",
                        moe_shape_str(index));
    return MOE_OK;
}

static moe_status index_select_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return add_into_zeros(n, g, gin, moe_index_add);
}

moe_status moe_index_select(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index)
{
    const char *op = "index-select";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_NOT_NULL(op, index);
    int d;
    MOE_TRY(check_row_index(op, a, dim, index, &d));
    moe_tensor *idx, *ac = NULL, *r = NULL;
    MOE_TRY(index_i64(op, &idx, index));
    moe_status st = MOE_OK;
    MOE_TRYG(check_range_dim(op, idx, a, d));
    MOE_TRYG(moe_as_compute(&ac, a, a->dtype)); /* contiguous, same dtype */
    int64_t sh[MOE_MAX_DIMS], M = moe_tensor_numel(idx);
    memcpy(sh, a->shape, sizeof(int64_t) * (size_t)a->ndim);
    sh[d] = M;
    MOE_TRYG(moe_tensor_empty(&r, a->dtype, a->device, a->ndim, sh));
    /* r [P M Q] ← a [P N Q] */
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_index_select(moe_tensor_data(r), moe_tensor_data(ac), moe_dtype_size(a->dtype),
                                                moe_tensor_data(idx), prod_dims(a->shape, 0, d), a->shape[d], M,
                                                prod_dims(a->shape, d + 1, a->ndim))));
    else
        moe_cpu_index_select(moe_tensor_data(r), moe_tensor_data(ac), moe_dtype_size(a->dtype),
                             moe_tensor_data(idx), prod_dims(a->shape, 0, d), a->shape[d], M,
                             prod_dims(a->shape, d + 1, a->ndim));
    MOE_TRYG(moe_autograd_record(r, op, index_select_backward, 1, &a, 1, &idx, NULL, NULL));
    if (r->grad_fn) moe_node_keep_dim_shape(r->grad_fn, d, a);
done:
    moe_tensor_release(idx);
    moe_tensor_release(ac);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- index_add ------------------------------------------------------------------- */

static moe_status index_add_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    /* da = g;  dsrc = index_select(g, dim, index) */
    if (n->inputs[0]) gin[0] = moe_tensor_retain(g);
    if (n->inputs[1]) MOE_TRY(moe_index_select(&gin[1], g, (int)n->iargs[0], n->saved[0]));
    return MOE_OK;
}

moe_status moe_index_add(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index,
                         moe_tensor *src)
{
    const char *op = "index-add";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_NOT_NULL(op, index);
    MOE_CHECK_NOT_NULL(op, src);
    int d;
    MOE_TRY(check_row_index(op, a, dim, index, &d));
    MOE_CHECK_SAME_DEVICE(op, a, src);
    if (a->dtype != src->dtype)
        return moe_fail(MOE_ERR_DTYPE, op, "input is %s but src is %s; convert one first",
                        moe_dtype_name(a->dtype), moe_dtype_name(src->dtype));
    int64_t M = moe_tensor_numel(index);
    bool fits = src->ndim == a->ndim;
    for (int k = 0; fits && k < a->ndim; k++) fits = src->shape[k] == (k == d ? M : a->shape[k]);
    if (!fits)
        return moe_fail(
            MOE_ERR_SHAPE, op,
            "src %s must match input %s except in dim %d, where it needs the %lld index entries",
            moe_shape_str(src), moe_shape_str(a), d, (long long)M);
    moe_tensor *idx, *res = NULL, *sc = NULL, *r = NULL;
    MOE_TRY(index_i64(op, &idx, index));
    moe_status st = MOE_OK;
    MOE_TRYG(check_range_dim(op, idx, a, d));
    moe_dtype c = moe_dtype_compute(a->dtype);
    MOE_TRYG(fresh_copy(&res, a, c));
    MOE_TRYG(moe_as_compute(&sc, src, c));
    int64_t P = prod_dims(a->shape, 0, d), N = a->shape[d], Q = prod_dims(a->shape, d + 1, a->ndim);
    /* res [P N Q] += src [P M Q] at rows idx [M] */
    if (moe_on_cuda(res)) {
        MOE_TRYG(MOE_CUDA(moe_cuda_index_add(c, moe_tensor_data(res), moe_tensor_data(sc), moe_tensor_data(idx),
                                             P, N, M, Q)));
    } else {
        bool ok = moe_cpu_index_add(c, moe_tensor_data(res), moe_tensor_data(sc), moe_tensor_data(idx), P, N, M,
                                    Q);
        if (!ok) {
            st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of scratch (%lld index entries into %lld rows)",
                          sizeof(int64_t) * (size_t)(N + 1 + M), (long long)M, (long long)N);
            goto done;
        }
    }
    st = finish_dtype(&r, res, a->dtype);
    res = NULL;
    if (st != MOE_OK) goto done;
    MOE_TRYG(moe_autograd_record(r, op, index_add_backward, 2, (moe_tensor *[]){a, src}, 1, &idx,
                                 NULL, NULL));
    if (r->grad_fn) r->grad_fn->iargs[0] = d;
done:
    moe_tensor_release(idx);
    moe_tensor_release(res);
    moe_tensor_release(sc);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- one_hot --------------------------------------------------------------------- */

moe_status moe_one_hot(moe_tensor **out, moe_tensor *index, int64_t num_classes)
{
    const char *op = "one-hot";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, index);
    if (num_classes < -1)
        return moe_fail(MOE_ERR_ARG, op, "num_classes must be >= 0 (or -1: infer), got %lld",
                        (long long)num_classes);
    if (index->ndim + 1 > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_SHAPE, op, "index %s already has %d dims; one more is too many",
                        moe_shape_str(index), MOE_MAX_DIMS);
    moe_tensor *idx, *r = NULL;
    int64_t *host = NULL;
    MOE_TRY(index_i64(op, &idx, index));
    moe_status st = MOE_OK;
    const int64_t *v = moe_tensor_data(idx);
    int64_t n = moe_tensor_numel(idx), C = num_classes;
    if (C == -1) { /* infer: max + 1 (negative values are caught below) */
        if (moe_on_cuda(idx) && n > 0) { /* the values, on the host */
            host = malloc(sizeof *host * (size_t)n);
            if (!host) {
                st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a host copy of %lld indices",
                              sizeof *host * (size_t)n, (long long)n);
                goto done;
            }
            MOE_TRYG(moe_bytes_to_host(host, v, sizeof *host * (size_t)n, idx->device));
            v = host;
        }
        C = moe_cpu_index_bound(v, n, 0, NULL);
    }
    char what[64];
    snprintf(what, sizeof what, "%lld classes", (long long)C);
    MOE_TRYG(check_range(op, idx, C, what));
    int64_t sh[MOE_MAX_DIMS];
    memcpy(sh, idx->shape, sizeof(int64_t) * (size_t)idx->ndim);
    sh[idx->ndim] = C;
    MOE_TRYG(moe_tensor_empty(&r, MOE_I64, index->device, idx->ndim + 1, sh));
    if (moe_on_cuda(r)) /* r [n C] */
        MOE_TRYG(MOE_CUDA(moe_cuda_one_hot(moe_tensor_data(r), moe_tensor_data(idx), n, C)));
    else
        moe_cpu_one_hot(moe_tensor_data(r), moe_tensor_data(idx), n, C);
done:
    free(host);
    moe_tensor_release(idx);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}
