/* reduce.c — sum, mean, var, max/min (over a dim and over everything),
 * argmax and cumsum, each forward beside its backward.
 *
 * Dimension letters (as in kernels/cpu/reduce.h): O outer rows, R the
 * reduced extent, I inner columns. A reduction sees its input as a
 * contiguous [O R I] buffer: when the reduced dims form one run of the
 * layout this is the input itself (or its contiguous copy); otherwise the
 * reduced dims are permuted to the end first ([O R], I = 1).
 *
 * Dtypes: f32 and f64 compute natively, bf16 in f32 (result back to bf16);
 * sum and cumsum of integers and bool give i64; max/min keep the dtype;
 * mean and var need a floating dtype.
 *
 * Node parameters of every reduction here: iargs[0] input ndim,
 * iargs[1..8] input shape, iargs[9] bit mask of reduced dims, iargs[10]
 * keepdim, iargs[11] op extra (var: correction; cumsum: reverse);
 * dargs[0] the number of elements reduced into each output.
 *
 * Devices: the CPU loops or the CUDA kernels (kernels/cuda/reduce.cu) over
 * the same [O R I] buffer, chosen at the innermost call (core/device.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/reduce.h"
#include "../../kernels/cuda/reduce.h"
#include "device.h"
#include "internal.h"

enum { IA_NDIM = 0, IA_SHAPE = 1, IA_MASK = 9, IA_KEEPDIM = 10, IA_EXTRA = 11 };

/* ---- shared plumbing ------------------------------------------------------------------ */

typedef struct reduce_dims {
    bool red[MOE_MAX_DIMS];         /* input dims reduced */
    int nred;                        /* how many */
    int dims[MOE_MAX_DIMS];          /* their indices, ascending */
    int out_ndim;
    int64_t out_shape[MOE_MAX_DIMS]; /* keepdim: reduced dims are 1; else dropped */
    int64_t n;                       /* elements reduced into each output */
} reduce_dims;

/* Normalise DIMS (NDIMS == 0: all dims) of A; duplicates are an error. */
static moe_status parse_dims(const char *op, const moe_tensor *a, int ndims, const int *dims,
                             bool keepdim, reduce_dims *rd)
{
    memset(rd, 0, sizeof *rd);
    if (ndims < 0 || ndims > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_ARG, op, "%d dims given; expected 0 (all) to %d", ndims, MOE_MAX_DIMS);
    if (ndims > 0 && !dims) return moe_fail(MOE_ERR_ARG, op, "argument 'dims' is NULL");
    if (ndims == 0) {
        for (int d = 0; d < a->ndim; d++) rd->red[d] = true;
    }
    for (int i = 0; i < ndims; i++) {
        int d;
        MOE_TRY(moe_dim_normalize(op, a, dims[i], &d));
        if (a->ndim == 0) continue; /* dim 0 of a 0-d tensor: nothing to reduce */
        if (rd->red[d])
            return moe_fail(MOE_ERR_ARG, op, "dim %d appears more than once in the dims of %s",
                            dims[i], moe_shape_str(a));
        rd->red[d] = true;
    }
    rd->n = 1;
    for (int d = 0; d < a->ndim; d++) {
        if (rd->red[d]) {
            rd->dims[rd->nred++] = d;
            rd->n *= a->shape[d];
            if (keepdim) rd->out_shape[rd->out_ndim++] = 1;
        } else {
            rd->out_shape[rd->out_ndim++] = a->shape[d];
        }
    }
    return MOE_OK;
}

/* A contiguous tensor in dtype CD holding A as [O R I] for the reduced set
 * RED (ROWS: I must be 1). Size-1 dims do not affect the layout, so they
 * never force a copy. Call with grad mode off. */
static moe_status reduce_source(moe_tensor **src, moe_tensor *a, moe_dtype cd, const bool *red,
                                bool rows, int64_t *O, int64_t *R, int64_t *I)
{
    int state = 0; /* 0: before the reduced run, 1: in it, 2: after it */
    bool run = true;
    int64_t o = 1, r = 1, i = 1;
    for (int d = 0; d < a->ndim; d++) {
        int64_t s = a->shape[d];
        if (s == 1) continue;
        if (red[d]) {
            if (state == 2) run = false;
            state = 1;
            r *= s;
        } else if (state == 0) {
            o *= s;
        } else {
            state = 2;
            i *= s;
        }
    }
    if (run && !(rows && i != 1)) {
        *O = o, *R = r, *I = i;
        return moe_as_compute(src, a, cd);
    }
    int perm[MOE_MAX_DIMS], k = 0;
    for (int d = 0; d < a->ndim; d++)
        if (!red[d]) perm[k++] = d;
    for (int d = 0; d < a->ndim; d++)
        if (red[d]) perm[k++] = d;
    moe_tensor *p;
    MOE_TRY(moe_permute(&p, a, perm));
    moe_status st = moe_as_compute(src, p, cd);
    moe_tensor_release(p);
    *O = o * i, *R = r, *I = 1;
    return st;
}

/* Record OUT = op(A) with the reduction parameters (see the file comment). */
static moe_status record_reduce(moe_tensor *out, moe_tensor *a, const char *name,
                                moe_backward_fn bw, const reduce_dims *rd, bool keepdim,
                                int64_t extra, moe_tensor *saved)
{
    if (!moe_tensor_needs_grad(a)) return MOE_OK;
    moe_node *n;
    MOE_TRY(moe_node_new(&n, name, bw, 1, &a));
    moe_node_attach(n, out);
    n->iargs[IA_NDIM] = a->ndim;
    int64_t mask = 0;
    for (int d = 0; d < a->ndim; d++) {
        n->iargs[IA_SHAPE + d] = a->shape[d];
        if (rd->red[d]) mask |= (int64_t)1 << d;
    }
    n->iargs[IA_MASK] = mask;
    n->iargs[IA_KEEPDIM] = keepdim;
    n->iargs[IA_EXTRA] = extra;
    n->dargs[0] = (double)rd->n;
    if (saved) MOE_TRY(moe_node_save(n, saved));
    return MOE_OK;
}

/* The input shape with reduced dims set to 1, from a node. */
static void node_keep_shape(const moe_node *n, int64_t *keep)
{
    for (int d = 0; d < n->iargs[IA_NDIM]; d++)
        keep[d] = (n->iargs[IA_MASK] >> d) & 1 ? 1 : n->iargs[IA_SHAPE + d];
}

/* The reduced dims of a node as a list. */
static int node_dims(const moe_node *n, int *dims)
{
    int k = 0;
    for (int d = 0; d < n->iargs[IA_NDIM]; d++)
        if ((n->iargs[IA_MASK] >> d) & 1) dims[k++] = d;
    return k;
}

/* G (the output's shape) brought back to the input's: reshape to the
 * keepdim shape, expand, make contiguous. */
static moe_status expand_back(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    int nd = (int)n->iargs[IA_NDIM];
    int64_t keep[MOE_MAX_DIMS];
    node_keep_shape(n, keep);
    moe_tensor *gk, *e;
    MOE_TRY(moe_reshape(&gk, g, nd, keep));
    moe_status st = moe_expand(&e, gk, nd, &n->iargs[IA_SHAPE]);
    moe_tensor_release(gk);
    MOE_TRY(st);
    st = moe_contiguous(gin, e);
    moe_tensor_release(e);
    return st;
}

/* ---- sum / mean ---------------------------------------------------------------------------- */

static moe_status sum_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return expand_back(n, g, &gin[0]);
}

static moe_status mean_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *gs;
    MOE_TRY(moe_mul_scalar(&gs, g, 1.0 / n->dargs[0]));
    moe_status st = expand_back(n, gs, &gin[0]);
    moe_tensor_release(gs);
    return st;
}

static moe_status sum_impl(const char *op, moe_tensor **out, moe_tensor *a, int ndims,
                           const int *dims, bool keepdim, bool mean)
{
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    if (mean) MOE_CHECK_FLOAT(op, a);
    reduce_dims rd;
    MOE_TRY(parse_dims(op, a, ndims, dims, keepdim, &rd));
    bool fl = moe_dtype_is_float(a->dtype);
    moe_dtype cd = fl ? moe_dtype_compute(a->dtype) : MOE_I64;
    double scale = !mean ? 1.0 : rd.n ? 1.0 / (double)rd.n : NAN;
    moe_tensor *src = NULL, *res = NULL, *r = NULL;
    int64_t O, R, I;
    MOE_NO_GRAD_BEGIN;
    moe_status st = reduce_source(&src, a, cd, rd.red, false, &O, &R, &I);
    if (st == MOE_OK) st = moe_tensor_empty(&res, cd, a->device, rd.out_ndim, rd.out_shape);
    if (st == MOE_OK) {
        void *y = moe_tensor_data(res), *x = moe_tensor_data(src);
        if (moe_on_cuda(res)) st = MOE_CUDA(moe_cuda_sum(cd, y, x, O, R, I, scale));
        else st = moe_cpu_sum(cd, y, x, O, R, I, cd == MOE_I64 ? 1.0 : scale);
    }
    if (st == MOE_OK) st = moe_to_dtype(&r, res, fl ? a->dtype : MOE_I64);
    MOE_NO_GRAD_END;
    moe_tensor_release(src);
    moe_tensor_release(res);
    if (st == MOE_OK)
        st = record_reduce(r, a, op, mean ? mean_backward : sum_backward, &rd, keepdim, 0, NULL);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

moe_status moe_sum(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, bool keepdim)
{
    return sum_impl("sum", out, a, ndims, dims, keepdim, false);
}

moe_status moe_mean(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, bool keepdim)
{
    return sum_impl("mean", out, a, ndims, dims, keepdim, true);
}

/* ---- var --------------------------------------------------------------------------------- */

/* d var / dx = g * 2 (x - mean) / (N - correction). */
static moe_status var_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *x = n->saved[0], *m = NULL, *d = NULL, *gk = NULL, *p = NULL;
    int dims[MOE_MAX_DIMS], nd = node_dims(n, dims);
    int64_t keep[MOE_MAX_DIMS];
    node_keep_shape(n, keep);
    /* nd == 0 only for a 0-d input, where "all dims" is the same thing. */
    moe_status st = moe_mean(&m, x, nd, dims, true);
    if (st == MOE_OK) st = moe_sub(&d, x, m);
    if (st == MOE_OK) st = moe_reshape(&gk, g, (int)n->iargs[IA_NDIM], keep);
    if (st == MOE_OK) st = moe_mul(&p, d, gk);
    if (st == MOE_OK)
        st = moe_mul_scalar(&gin[0], p, 2.0 / (n->dargs[0] - (double)n->iargs[IA_EXTRA]));
    moe_tensor_release(m);
    moe_tensor_release(d);
    moe_tensor_release(gk);
    moe_tensor_release(p);
    return st;
}

moe_status moe_var(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, int correction,
                   bool keepdim)
{
    MOE_CHECK_NOT_NULL("var", out);
    *out = NULL;
    MOE_CHECK_NOT_NULL("var", a);
    MOE_CHECK_FLOAT("var", a);
    if (correction < 0)
        return moe_fail(MOE_ERR_ARG, "var", "correction must be >= 0, got %d", correction);
    reduce_dims rd;
    MOE_TRY(parse_dims("var", a, ndims, dims, keepdim, &rd));
    moe_dtype cd = moe_dtype_compute(a->dtype);
    moe_tensor *src = NULL, *res = NULL, *r = NULL;
    int64_t O, R, I;
    MOE_NO_GRAD_BEGIN;
    moe_status st = reduce_source(&src, a, cd, rd.red, true, &O, &R, &I);
    if (st == MOE_OK) st = moe_tensor_empty(&res, cd, a->device, rd.out_ndim, rd.out_shape);
    if (st == MOE_OK) {
        void *y = moe_tensor_data(res), *x = moe_tensor_data(src);
        if (moe_on_cuda(res)) st = MOE_CUDA(moe_cuda_var(cd, y, x, O, R, correction));
        else st = moe_cpu_var(cd, y, x, O, R, correction);
    }
    if (st == MOE_OK) st = moe_to_dtype(&r, res, a->dtype);
    MOE_NO_GRAD_END;
    moe_tensor_release(src);
    moe_tensor_release(res);
    if (st == MOE_OK) st = record_reduce(r, a, "var", var_backward, &rd, keepdim, correction, a);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- max / min / argmax ---------------------------------------------------------------------- */

/* O R I of a node whose reduced dims form one run (one dim, or all). */
static void node_ori(const moe_node *n, int64_t *O, int64_t *R, int64_t *I)
{
    int64_t o = 1, r = 1, i = 1;
    bool seen = false;
    for (int d = 0; d < n->iargs[IA_NDIM]; d++) {
        int64_t s = n->iargs[IA_SHAPE + d];
        if ((n->iargs[IA_MASK] >> d) & 1) {
            r *= s;
            seen = true;
        } else if (!seen) {
            o *= s;
        } else {
            i *= s;
        }
    }
    *O = o, *R = r, *I = i;
}

/* The gradient goes to the recorded arg-extreme (saved[0], [O I] i64). */
static moe_status extreme_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    int64_t O, R, I;
    node_ori(n, &O, &R, &I);
    moe_dtype cd = moe_dtype_compute(g->dtype);
    moe_tensor *gc = NULL, *z = NULL;
    moe_status st = moe_as_compute(&gc, g, cd);
    if (st == MOE_OK)
        st = moe_tensor_zeros(&z, cd, g->device, (int)n->iargs[IA_NDIM], &n->iargs[IA_SHAPE]);
    if (st == MOE_OK) {
        const int64_t *idx = moe_tensor_data(n->saved[0]);
        if (moe_on_cuda(z))
            st = MOE_CUDA(moe_cuda_scatter_dim(cd, moe_tensor_data(z), moe_tensor_data(gc), idx, O, R, I));
        else
            moe_cpu_scatter_dim(cd, moe_tensor_data(z), moe_tensor_data(gc), idx, O, R, I);
        if (st == MOE_OK) st = moe_to_dtype(&gin[0], z, g->dtype);
    }
    moe_tensor_release(gc);
    moe_tensor_release(z);
    return st;
}

/* Values (A's dtype; VALUES may be NULL) and i64 indices of the max/min of
 * A over the reduced set of RD, which is one dim or all dims. */
static moe_status extreme_impl(const char *op, moe_tensor **values, moe_tensor **indices,
                               moe_tensor *a, const reduce_dims *rd, bool keepdim, bool is_max)
{
    if (rd->n == 0)
        return moe_fail(MOE_ERR_SHAPE, op, "cannot reduce over an empty dim of shape %s",
                        moe_shape_str(a));
    moe_dtype cd = moe_dtype_is_float(a->dtype) ? moe_dtype_compute(a->dtype) : MOE_I64;
    moe_tensor *src = NULL, *val = NULL, *idx = NULL, *v = NULL;
    int64_t O, R, I;
    MOE_NO_GRAD_BEGIN;
    moe_status st = reduce_source(&src, a, cd, rd->red, false, &O, &R, &I);
    if (st == MOE_OK && values)
        st = moe_tensor_empty(&val, cd, a->device, rd->out_ndim, rd->out_shape);
    if (st == MOE_OK) st = moe_tensor_empty(&idx, MOE_I64, a->device, rd->out_ndim, rd->out_shape);
    if (st == MOE_OK) {
        void *y = val ? moe_tensor_data(val) : NULL, *x = moe_tensor_data(src);
        int64_t *k = moe_tensor_data(idx);
        if (moe_on_cuda(idx)) st = MOE_CUDA(moe_cuda_extreme(cd, y, k, x, O, R, I, is_max));
        else st = moe_cpu_extreme(cd, y, k, x, O, R, I, is_max);
    }
    if (st == MOE_OK && values) st = moe_to_dtype(&v, val, a->dtype);
    MOE_NO_GRAD_END;
    moe_tensor_release(src);
    moe_tensor_release(val);
    if (st == MOE_OK && v) st = record_reduce(v, a, op, extreme_backward, rd, keepdim, 0, idx);
    if (st != MOE_OK) {
        moe_tensor_release(v);
        moe_tensor_release(idx);
        return st;
    }
    if (indices && v && v->grad_fn) {
        /* the node keeps IDX; the caller gets a copy it may change freely */
        moe_tensor *c;
        st = moe_clone(&c, idx);
        moe_tensor_release(idx);
        if (st != MOE_OK) {
            moe_tensor_release(v);
            return st;
        }
        idx = c;
    }
    if (values) *values = v;
    if (indices) *indices = idx;
    else moe_tensor_release(idx);
    return MOE_OK;
}

static moe_status extreme_dim(const char *op, moe_tensor **values, moe_tensor **indices,
                              moe_tensor *a, int dim, bool keepdim, bool is_max)
{
    if (values) *values = NULL;
    if (indices) *indices = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    reduce_dims rd;
    MOE_TRY(parse_dims(op, a, 1, &dim, keepdim, &rd));
    return extreme_impl(op, values, indices, a, &rd, keepdim, is_max);
}

static moe_status extreme_all(const char *op, moe_tensor **out, moe_tensor *a, bool is_max)
{
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    reduce_dims rd;
    MOE_TRY(parse_dims(op, a, 0, NULL, false, &rd));
    return extreme_impl(op, out, NULL, a, &rd, false, is_max);
}

moe_status moe_max(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool keepdim)
{
    MOE_CHECK_NOT_NULL("tmax", values);
    return extreme_dim("tmax", values, indices, a, dim, keepdim, true);
}

moe_status moe_min(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool keepdim)
{
    MOE_CHECK_NOT_NULL("tmin", values);
    return extreme_dim("tmin", values, indices, a, dim, keepdim, false);
}

moe_status moe_max_all(moe_tensor **out, moe_tensor *a) { return extreme_all("tmax", out, a, true); }

moe_status moe_min_all(moe_tensor **out, moe_tensor *a) { return extreme_all("tmin", out, a, false); }

moe_status moe_argmax(moe_tensor **out, moe_tensor *a, int dim, bool keepdim)
{
    MOE_CHECK_NOT_NULL("argmax", out);
    return extreme_dim("argmax", NULL, out, a, dim, keepdim, true);
}

/* ---- cumsum -------------------------------------------------------------------------------- */

static moe_status cumsum_impl(moe_tensor **out, moe_tensor *a, int dim, bool reverse);

/* The gradient of a running sum is the running sum of G from the other end. */
static moe_status cumsum_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return cumsum_impl(&gin[0], g, (int)n->iargs[IA_EXTRA + 1], n->iargs[IA_EXTRA] == 0);
}

static moe_status cumsum_impl(moe_tensor **out, moe_tensor *a, int dim, bool reverse)
{
    MOE_CHECK_NOT_NULL("cumsum", out);
    *out = NULL;
    MOE_CHECK_NOT_NULL("cumsum", a);
    reduce_dims rd;
    MOE_TRY(parse_dims("cumsum", a, 1, &dim, true, &rd));
    int d = rd.nred ? rd.dims[0] : 0;
    bool fl = moe_dtype_is_float(a->dtype);
    moe_dtype cd = fl ? moe_dtype_compute(a->dtype) : MOE_I64;
    moe_tensor *src = NULL, *res = NULL, *r = NULL;
    int64_t O, R, I;
    MOE_NO_GRAD_BEGIN;
    moe_status st = reduce_source(&src, a, cd, rd.red, false, &O, &R, &I);
    if (st == MOE_OK) st = moe_tensor_empty(&res, cd, a->device, a->ndim, a->shape);
    if (st == MOE_OK) {
        void *y = moe_tensor_data(res), *x = moe_tensor_data(src);
        if (moe_on_cuda(res)) st = MOE_CUDA(moe_cuda_cumsum(cd, y, x, O, R, I, reverse));
        else moe_cpu_cumsum(cd, y, x, O, R, I, reverse);
        if (st == MOE_OK) st = moe_to_dtype(&r, res, fl ? a->dtype : MOE_I64);
    }
    MOE_NO_GRAD_END;
    moe_tensor_release(src);
    moe_tensor_release(res);
    if (st == MOE_OK) {
        st = record_reduce(r, a, "cumsum", cumsum_backward, &rd, true, reverse, NULL);
        if (st == MOE_OK && r->grad_fn) r->grad_fn->iargs[IA_EXTRA + 1] = d;
    }
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

moe_status moe_cumsum(moe_tensor **out, moe_tensor *a, int dim)
{
    return cumsum_impl(out, a, dim, false);
}
