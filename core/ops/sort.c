/* sort.c — topk, sort, argsort (forward beside backward), and the counting
 * ops bincount and histogram (no grad). Loops: kernels/cpu/index.c.
 *
 * Dimension letters:
 *   R  rows: every dim but the one sorted, flattened
 *   E  size of the sorted dim
 *   K  entries kept per row (top-k; E for a full sort)
 *   C  bins (bincount, histogram)
 *
 * Ordering (all ops): NaN is larger than every number, and equal values keep
 * their index order, ascending or descending — so top-k ties go to the lower
 * index. The sorted dim is moved last (a view), made contiguous in the compute
 * dtype (f32 for f32/bf16, f64 otherwise, integers included), sorted row by
 * row, and the results are laid back out in the input's dim order.
 *
 * Devices: topk/sort/argsort run the CUDA row sort (kernels/cuda/sort.cu, one
 * block per row, the same total order) on GPU tensors; bincount and
 * histogram are CPU only for now. */
#include <math.h>
#include <string.h>

#include "../../kernels/cpu/index.h"
#include "../../kernels/cuda/sort.h"
#include "device.h"
#include "internal.h"

/* ---- topk / sort / argsort ---------------------------------------------------- */

/* Sorted K entries of every row along DIM (FULL: K = the dim size). FIRST_BIG:
 * largest first (topk largest, descending sort). VALUES or INDICES may be NULL. */
static moe_status order_impl(const char *op, moe_tensor **values, moe_tensor **indices,
                             moe_tensor *a, int64_t k, int dim, bool first_big, bool full)
{
    if (values) *values = NULL;
    if (indices) *indices = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    int d, nd = a->ndim;
    MOE_TRY(moe_dim_normalize(op, a, dim, &d));
    int64_t E = nd ? a->shape[d] : 1;
    if (full) k = E;
    if (k < 0) return moe_fail(MOE_ERR_ARG, op, "k (%lld) must not be negative", (long long)k);
    if (k > E)
        return moe_fail(MOE_ERR_ARG, op,
                        "k (%lld) larger than dim size (%lld) of dim %d of shape %s", (long long)k,
                        (long long)E, d, moe_shape_str(a));
    if (nd == 0 && k != 1)
        return moe_fail(MOE_ERR_ARG, op, "k (%lld) must be 1 for a 0-d tensor", (long long)k);
    moe_dtype c = moe_dtype_compute(a->dtype);

    /* psh/pstr: A with DIM moved last; rsh: the result in that order */
    int64_t psh[MOE_MAX_DIMS], pstr[MOE_MAX_DIMS], rsh[MOE_MAX_DIMS];
    int pos_of[MOE_MAX_DIMS]; /* where input dim j sits in the moved order */
    for (int j = 0, p = 0; j < nd; j++)
        if (j != d) pos_of[j] = p++;
    if (nd) pos_of[d] = nd - 1;
    for (int j = 0; j < nd; j++) {
        psh[pos_of[j]] = a->shape[j];
        pstr[pos_of[j]] = a->strides[j];
    }
    memcpy(rsh, psh, sizeof(int64_t) * (size_t)nd);
    if (nd) rsh[nd - 1] = k;
    bool moved = nd > 1 && d != nd - 1;
    int64_t R = 1;
    for (int j = 0; j + 1 < nd; j++) R *= psh[j];

    moe_status st = MOE_OK;
    moe_tensor *pv = NULL, *x = NULL, *vr = NULL, *ir = NULL, *vals = NULL, *idxs = NULL, *scratch = NULL;
    if (moved)
        MOE_TRYG(moe_tensor_new_view(&pv, a, a->storage, nd, psh, pstr, a->offset));
    else
        pv = moe_tensor_retain(a);
    MOE_TRYG(moe_as_compute(&x, pv, c)); /* x [R E] */
    bool want_vals = values != NULL || !full; /* topk's kernel always writes values */
    if (want_vals) MOE_TRYG(moe_tensor_empty(&vr, c, a->device, nd, rsh)); /* vr [R K] */
    MOE_TRYG(moe_tensor_empty(&ir, MOE_I64, a->device, nd, rsh)); /* ir [R K] */
    bool ok = true;
    void *vp = vr ? moe_tensor_data(vr) : NULL;
    if (moe_on_cuda(ir)) {
        size_t sb = 0; /* bytes for rows too long for shared memory */
        MOE_TRYG(MOE_CUDA(moe_cuda_sort_scratch_bytes(c, R, E, &sb)));
        if (sb > 0) MOE_TRYG(moe_tensor_empty(&scratch, MOE_I32, a->device, 1, (int64_t[]){(int64_t)(sb + 3) / 4}));
        MOE_TRYG(MOE_CUDA(moe_cuda_sort_rows(c, vp, moe_tensor_data(ir), moe_tensor_data(x), R, E, k,
                                             first_big, scratch ? moe_tensor_data(scratch) : NULL)));
    } else
        ok = full ? moe_cpu_sort(c, vp, moe_tensor_data(ir), moe_tensor_data(x), R, E, first_big)
                  : moe_cpu_topk(c, vp, moe_tensor_data(ir), moe_tensor_data(x), R, E, k, first_big);
    if (!ok) {
        st = moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of sort scratch per thread (rows of %lld)",
                      (size_t)(2 * E + 1) * 2 * sizeof(int64_t), (long long)E);
        goto done;
    }

    /* back to the input's dim order: view the results with DIM in place */
    if (moved) {
        int64_t osh[MOE_MAX_DIMS], ostr[MOE_MAX_DIMS];
        moe_tensor *view;
        for (int j = 0; j < nd; j++) {
            osh[j] = rsh[pos_of[j]];
            ostr[j] = ir->strides[pos_of[j]];
        }
        MOE_TRYG(moe_tensor_new_view(&view, ir, ir->storage, nd, osh, ostr, ir->offset));
        st = moe_as_compute(&idxs, view, MOE_I64);
        moe_tensor_release(view);
        if (st != MOE_OK) goto done;
        if (vr) {
            MOE_TRYG(moe_tensor_new_view(&view, vr, vr->storage, nd, osh, ostr, vr->offset));
            st = moe_as_compute(&vals, view, a->dtype);
            moe_tensor_release(view);
            if (st != MOE_OK) goto done;
        }
    } else {
        idxs = moe_tensor_retain(ir);
        if (vr) MOE_TRYG(moe_as_compute(&vals, vr, a->dtype));
    }
    if (vals) {
        /* the values are a gather of a along d: each kept value's gradient
         * goes back to the position it came from */
        MOE_TRYG(moe_autograd_record(vals, op, moe_gather_backward, 1, &a, 1, &idxs, NULL, NULL));
        if (vals->grad_fn) moe_node_keep_dim_shape(vals->grad_fn, d, a);
    }
done:
    moe_tensor_release(scratch);
    moe_tensor_release(pv);
    moe_tensor_release(x);
    moe_tensor_release(vr);
    moe_tensor_release(ir);
    if (st != MOE_OK) {
        moe_tensor_release(vals);
        moe_tensor_release(idxs);
        return st;
    }
    if (values)
        *values = vals;
    else
        moe_tensor_release(vals);
    if (indices)
        *indices = idxs;
    else
        moe_tensor_release(idxs);
    return MOE_OK;
}

moe_status moe_topk(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int64_t k, int dim,
                    bool largest)
{
    return order_impl("topk", values, indices, a, k, dim, largest, false);
}

moe_status moe_sort(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim,
                    bool descending)
{
    return order_impl("sort", values, indices, a, 0, dim, descending, true);
}

moe_status moe_argsort(moe_tensor **out, moe_tensor *a, int dim, bool descending)
{
    if (!out) return moe_fail(MOE_ERR_ARG, "argsort", "argument 'out' is NULL");
    return order_impl("argsort", NULL, out, a, 0, dim, descending, true);
}

/* ---- bincount ------------------------------------------------------------------ */

moe_status moe_bincount(moe_tensor **out, moe_tensor *input, moe_tensor *weights, int64_t minlength)
{
    const char *op = "bincount";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, input);
    MOE_CHECK_CPU(op, input);
    if (input->dtype != MOE_I64 && input->dtype != MOE_I32)
        return moe_fail(MOE_ERR_DTYPE, op, "expected an i64 or i32 input, got %s",
                        moe_dtype_name(input->dtype));
    if (input->ndim != 1)
        return moe_fail(MOE_ERR_SHAPE, op, "input must be 1-D, got shape %s", moe_shape_str(input));
    if (minlength < 0)
        return moe_fail(MOE_ERR_ARG, op, "minlength (%lld) must not be negative",
                        (long long)minlength);
    int64_t n = input->shape[0];
    if (weights) {
        MOE_CHECK_CPU(op, weights);
        if (weights->ndim != 1 || weights->shape[0] != n)
            return moe_fail(MOE_ERR_SHAPE, op, "weights %s must be 1-D like input %s",
                            moe_shape_str(weights), moe_shape_str(input));
    }
    moe_status st = MOE_OK;
    moe_tensor *x = NULL, *w = NULL, *sums = NULL, *r = NULL;
    MOE_TRYG(moe_as_compute(&x, input, MOE_I64)); /* x [n] */
    const int64_t *xv = moe_tensor_data(x);
    int64_t bad, C = moe_cpu_index_bound(xv, n, minlength, &bad);
    if (bad >= 0) {
        st = moe_fail(MOE_ERR_VALUE, op, "negative value %lld at position %lld; counts need non-negative integers",
                      (long long)xv[bad], (long long)bad);
        goto done;
    }
    if (!weights) {
        MOE_TRYG(moe_tensor_empty(&r, MOE_I64, input->device, 1, &C)); /* r [C] */
        moe_cpu_bincount(moe_tensor_data(r), xv, n, C);
    } else {
        moe_dtype od = weights->dtype == MOE_F32 || weights->dtype == MOE_BF16 ? MOE_F32 : MOE_F64;
        MOE_TRYG(moe_as_compute(&w, weights, MOE_F64)); /* w [n] */
        MOE_TRYG(moe_tensor_empty(&sums, MOE_F64, input->device, 1, &C)); /* sums [C] */
        moe_cpu_bincount_weighted(moe_tensor_data(sums), xv, moe_tensor_data(w), n, C);
        MOE_TRYG(moe_as_compute(&r, sums, od));
    }
done:
    moe_tensor_release(x);
    moe_tensor_release(w);
    moe_tensor_release(sums);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- histogram ------------------------------------------------------------------- */

moe_status moe_histogram(moe_tensor **out, moe_tensor *a, int64_t bins, double lo, double hi)
{
    const char *op = "histogram";
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_CPU(op, a);
    MOE_CHECK_FLOAT(op, a);
    if (bins <= 0)
        return moe_fail(MOE_ERR_ARG, op, "bins (%lld) must be positive", (long long)bins);
    if (isnan(lo) || isnan(hi) || lo > hi)
        return moe_fail(MOE_ERR_ARG, op, "lo (%g) must not be greater than hi (%g)", lo, hi);
    moe_status st = MOE_OK;
    moe_tensor *x = NULL, *counts = NULL, *r = NULL;
    MOE_TRYG(moe_as_compute(&x, a, MOE_F64)); /* x [n] */
    const double *xv = moe_tensor_data(x);
    int64_t n = moe_tensor_numel(x);
    if (lo == hi) moe_cpu_histogram_range(xv, n, &lo, &hi); /* the data's range */
    if (!isfinite(lo) || !isfinite(hi)) {
        st = moe_fail(MOE_ERR_VALUE, op, "range [%g, %g] is not finite; pass explicit bounds", lo,
                      hi);
        goto done;
    }
    if (lo == hi) {
        lo -= 1;
        hi += 1;
    }
    MOE_TRYG(moe_tensor_empty(&counts, MOE_I64, a->device, 1, &bins)); /* counts [C] */
    moe_cpu_histogram(moe_tensor_data(counts), xv, n, bins, lo, hi);
    MOE_TRYG(moe_as_compute(&r, counts, a->dtype));
done:
    moe_tensor_release(x);
    moe_tensor_release(counts);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}
