/* view.c — views and layout ops, each forward beside its backward.
 * Views share storage with their source; autograd sees them as ops. */
#include <math.h>
#include <stdlib.h>

#include "device.h"
#include "internal.h"

static moe_status record1(moe_tensor *out, const char *name, moe_backward_fn bw, moe_tensor *in,
                          moe_node **node)
{
    *node = NULL;
    if (!moe_tensor_needs_grad(in)) return MOE_OK;
    MOE_TRY(moe_node_new(node, name, bw, 1, &in));
    moe_node_attach(*node, out);
    return MOE_OK;
}

/* Input shape kept in iargs: [0] = ndim, [1..] = dims. */
static void keep_input_shape(moe_node *n, const moe_tensor *in)
{
    n->iargs[0] = in->ndim;
    for (int i = 0; i < in->ndim; i++) n->iargs[1 + i] = in->shape[i];
}

/* ---- reshape / view ---------------------------------------------------------- */

static moe_status reshape_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_reshape(&gin[0], g, (int)n->iargs[0], &n->iargs[1]);
}

static moe_status resolve_shape(const char *op, const moe_tensor *t, int ndim, const int64_t *shape,
                                int64_t *out)
{
    if (ndim < 0 || ndim > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_SHAPE, op, "%d dims requested; max is %d", ndim, MOE_MAX_DIMS);
    int infer = -1;
    int64_t known = 1, numel = moe_tensor_numel(t);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1) {
            if (infer >= 0) return moe_fail(MOE_ERR_SHAPE, op, "only one dim may be -1 in %s", moe_dims_str(ndim, shape));
            infer = i;
        } else if (shape[i] < 0) {
            return moe_fail(MOE_ERR_SHAPE, op, "negative size in %s", moe_dims_str(ndim, shape));
        } else {
            known *= shape[i];
        }
        out[i] = shape[i];
    }
    if (infer >= 0) {
        if (known == 0 || numel % known != 0)
            return moe_fail(MOE_ERR_SHAPE, op, "cannot reshape %s (%lld elements) to %s",
                            moe_shape_str(t), (long long)numel, moe_dims_str(ndim, shape));
        out[infer] = numel / known;
        known *= out[infer];
    }
    if (known != numel)
        return moe_fail(MOE_ERR_SHAPE, op, "cannot reshape %s (%lld elements) to %s (%lld elements)",
                        moe_shape_str(t), (long long)numel, moe_dims_str(ndim, shape), (long long)known);
    return MOE_OK;
}

/* Strides for viewing T as SHAPE without a copy, if possible (the usual
 * chunk-matching rule). */
static bool view_strides(const moe_tensor *t, int ndim, const int64_t *shape, int64_t *strides)
{
    if (moe_tensor_is_contiguous(t)) {
        moe_contiguous_strides(ndim, shape, strides);
        return true;
    }
    int64_t numel = moe_tensor_numel(t);
    if (numel == 0) {
        moe_contiguous_strides(ndim, shape, strides);
        return true;
    }
    int view_d = ndim - 1;
    int64_t chunk_base_stride = t->ndim ? t->strides[t->ndim - 1] : 1;
    int64_t tensor_numel = 1, view_numel = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        tensor_numel *= t->shape[d];
        if (d == 0 || (t->shape[d - 1] != 1 && t->strides[d - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                strides[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return false;
            if (d > 0) {
                chunk_base_stride = t->strides[d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

static moe_status reshape_impl(const char *op, moe_tensor **out, moe_tensor *t, int ndim,
                               const int64_t *shape, bool allow_copy)
{
    *out = NULL;
    int64_t sh[MOE_MAX_DIMS], strides[MOE_MAX_DIMS];
    MOE_TRY(resolve_shape(op, t, ndim, shape, sh));
    moe_tensor *r;
    if (view_strides(t, ndim, sh, strides)) {
        MOE_TRY(moe_tensor_new_view(&r, t, t->storage, ndim, sh, strides, t->offset));
    } else {
        if (!allow_copy)
            return moe_fail(MOE_ERR_SHAPE, op, "a %s tensor with strides %s cannot be viewed as %s; use reshape",
                            moe_shape_str(t), moe_dims_str(t->ndim, t->strides), moe_dims_str(ndim, sh));
        moe_tensor *c;
        MOE_NO_GRAD_BEGIN;
        moe_status st = moe_contiguous(&c, t);
        MOE_NO_GRAD_END;
        MOE_TRY(st);
        moe_contiguous_strides(ndim, sh, strides);
        st = moe_tensor_new_view(&r, c, c->storage, ndim, sh, strides, c->offset);
        moe_tensor_release(c);
        MOE_TRY(st);
    }
    moe_node *n;
    moe_status st = record1(r, op, reshape_backward, t, &n);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    if (n) keep_input_shape(n, t);
    *out = r;
    return MOE_OK;
}

moe_status moe_reshape(moe_tensor **out, moe_tensor *t, int ndim, const int64_t *shape)
{
    return reshape_impl("reshape", out, t, ndim, shape, true);
}

moe_status moe_view(moe_tensor **out, moe_tensor *t, int ndim, const int64_t *shape)
{
    return reshape_impl("view", out, t, ndim, shape, false);
}

moe_status moe_flatten(moe_tensor **out, moe_tensor *t)
{
    int64_t n = moe_tensor_numel(t);
    return moe_reshape(out, t, 1, &n);
}

moe_status moe_squeeze(moe_tensor **out, moe_tensor *t, int dim)
{
    int d;
    MOE_TRY(moe_dim_normalize("squeeze", t, dim, &d));
    if (t->ndim == 0 || t->shape[d] != 1)
        return moe_fail(MOE_ERR_SHAPE, "squeeze", "dim %d of shape %s is not 1", dim, moe_shape_str(t));
    int64_t sh[MOE_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < t->ndim; i++)
        if (i != d) sh[k++] = t->shape[i];
    return reshape_impl("squeeze", out, t, k, sh, true);
}

moe_status moe_unsqueeze(moe_tensor **out, moe_tensor *t, int dim)
{
    if (dim < 0) dim += t->ndim + 1;
    if (dim < 0 || dim > t->ndim || t->ndim >= MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_INDEX, "unsqueeze", "dim %d out of range for shape %s", dim, moe_shape_str(t));
    int64_t sh[MOE_MAX_DIMS];
    for (int i = 0, k = 0; i <= t->ndim; i++) sh[i] = i == dim ? 1 : t->shape[k++];
    return reshape_impl("unsqueeze", out, t, t->ndim + 1, sh, true);
}

/* ---- permute / transpose ------------------------------------------------------ */

static moe_status permute_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    int inv[MOE_MAX_DIMS];
    for (int i = 0; i < n->out_ndim; i++) inv[n->iargs[i]] = i;
    return moe_permute(&gin[0], g, inv);
}

moe_status moe_permute(moe_tensor **out, moe_tensor *t, const int *perm)
{
    *out = NULL;
    int64_t sh[MOE_MAX_DIMS], str[MOE_MAX_DIMS];
    bool seen[MOE_MAX_DIMS] = {0};
    for (int i = 0; i < t->ndim; i++) {
        int p = perm[i];
        if (p < 0 || p >= t->ndim || seen[p])
            return moe_fail(MOE_ERR_ARG, "permute", "not a permutation of %d dims (entry %d is %d)",
                            t->ndim, i, p);
        seen[p] = true;
        sh[i] = t->shape[p];
        str[i] = t->strides[p];
    }
    moe_tensor *r;
    MOE_TRY(moe_tensor_new_view(&r, t, t->storage, t->ndim, sh, str, t->offset));
    moe_node *n;
    moe_status st = record1(r, "permute", permute_backward, t, &n);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    if (n)
        for (int i = 0; i < t->ndim; i++) n->iargs[i] = perm[i];
    *out = r;
    return MOE_OK;
}

moe_status moe_transpose(moe_tensor **out, moe_tensor *t, int dim0, int dim1)
{
    int a, b;
    MOE_TRY(moe_dim_normalize("transpose", t, dim0, &a));
    MOE_TRY(moe_dim_normalize("transpose", t, dim1, &b));
    int perm[MOE_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++) perm[i] = i;
    if (t->ndim) {
        perm[a] = b;
        perm[b] = a;
    }
    return moe_permute(out, t, perm);
}

/* ---- narrow / select ------------------------------------------------------------ */

/* Scatter G into zeros shaped like the input at (dim, start): shared by the
 * backward of narrow and select. */
static moe_status place_into_zeros(moe_node *n, moe_tensor *g, int dim, int64_t start,
                                   int64_t length, bool dropped_dim, moe_tensor **gin)
{
    moe_tensor *z, *slot = NULL, *src = NULL;
    MOE_TRY(moe_tensor_zeros(&z, g->dtype, g->device, (int)n->iargs[0], &n->iargs[1]));
    moe_status st = moe_narrow(&slot, z, dim, start, length);
    if (st == MOE_OK) st = dropped_dim ? moe_unsqueeze(&src, g, dim) : (src = moe_tensor_retain(g), MOE_OK);
    if (st == MOE_OK) st = moe_tensor_copy_(slot, src);
    moe_tensor_release(slot);
    moe_tensor_release(src);
    if (st != MOE_OK) {
        moe_tensor_release(z);
        return st;
    }
    gin[0] = z;
    return MOE_OK;
}

static moe_status narrow_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return place_into_zeros(n, g, (int)n->iargs[MOE_MAX_DIMS + 1], n->iargs[MOE_MAX_DIMS + 2],
                            n->iargs[MOE_MAX_DIMS + 3], n->iargs[MOE_MAX_DIMS + 4] != 0, gin);
}

static moe_status narrow_impl(const char *op, moe_tensor **out, moe_tensor *t, int dim,
                              int64_t start, int64_t length, bool drop)
{
    *out = NULL;
    int d;
    MOE_TRY(moe_dim_normalize(op, t, dim, &d));
    if (t->ndim == 0) return moe_fail(MOE_ERR_SHAPE, op, "cannot slice a 0-d tensor");
    if (start < 0) start += t->shape[d];
    if (start < 0 || length < 0 || start + length > t->shape[d])
        return moe_fail(MOE_ERR_INDEX, op, "range [%lld, %lld) out of bounds for dim %d of shape %s",
                        (long long)start, (long long)(start + length), d, moe_shape_str(t));
    int64_t sh[MOE_MAX_DIMS], str[MOE_MAX_DIMS];
    int k = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (i == d && drop) continue;
        sh[k] = i == d ? length : t->shape[i];
        str[k++] = t->strides[i];
    }
    moe_tensor *r;
    MOE_TRY(moe_tensor_new_view(&r, t, t->storage, k, sh, str, t->offset + start * t->strides[d]));
    moe_node *n;
    moe_status st = record1(r, op, narrow_backward, t, &n);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    if (n) {
        keep_input_shape(n, t);
        n->iargs[MOE_MAX_DIMS + 1] = d;
        n->iargs[MOE_MAX_DIMS + 2] = start;
        n->iargs[MOE_MAX_DIMS + 3] = length;
        n->iargs[MOE_MAX_DIMS + 4] = drop;
    }
    *out = r;
    return MOE_OK;
}

moe_status moe_narrow(moe_tensor **out, moe_tensor *t, int dim, int64_t start, int64_t length)
{
    return narrow_impl("narrow", out, t, dim, start, length, false);
}

moe_status moe_select(moe_tensor **out, moe_tensor *t, int dim, int64_t index)
{
    return narrow_impl("select", out, t, dim, index, 1, true);
}

/* ---- expand ------------------------------------------------------------------------ */

static moe_status expand_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_sum_to_shape(&gin[0], g, (int)n->iargs[0], &n->iargs[1]);
}

moe_status moe_expand(moe_tensor **out, moe_tensor *t, int ndim, const int64_t *shape)
{
    *out = NULL;
    if (ndim < t->ndim || ndim > MOE_MAX_DIMS)
        return moe_fail(MOE_ERR_SHAPE, "expand", "cannot expand %s to %s", moe_shape_str(t),
                        moe_dims_str(ndim, shape));
    int64_t sh[MOE_MAX_DIMS], str[MOE_MAX_DIMS];
    int lead = ndim - t->ndim;
    for (int i = 0; i < ndim; i++) {
        int64_t want = shape[i];
        if (i < lead) {
            if (want < 0)
                return moe_fail(MOE_ERR_SHAPE, "expand", "size -1 not allowed for a new dim in %s",
                                moe_dims_str(ndim, shape));
            sh[i] = want;
            str[i] = 0;
            continue;
        }
        int64_t have = t->shape[i - lead];
        if (want == -1) want = have;
        if (have == want) {
            sh[i] = have;
            str[i] = t->strides[i - lead];
        } else if (have == 1) {
            sh[i] = want;
            str[i] = 0;
        } else {
            return moe_fail(MOE_ERR_SHAPE, "expand", "cannot expand %s to %s (dim %d: %lld vs %lld)",
                            moe_shape_str(t), moe_dims_str(ndim, shape), i, (long long)have,
                            (long long)want);
        }
    }
    moe_tensor *r;
    MOE_TRY(moe_tensor_new_view(&r, t, t->storage, ndim, sh, str, t->offset));
    moe_node *n;
    moe_status st = record1(r, "expand", expand_backward, t, &n);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    if (n) keep_input_shape(n, t);
    *out = r;
    return MOE_OK;
}

/* The backward of broadcasting: sum G over the dims that SHAPE broadcast. */
moe_status moe_sum_to_shape(moe_tensor **out, moe_tensor *g, int ndim, const int64_t *shape)
{
    *out = NULL;
    if (g->ndim == ndim && memcmp(g->shape, shape, sizeof(int64_t) * (size_t)ndim) == 0) {
        *out = moe_tensor_retain(g);
        return MOE_OK;
    }
    if (ndim > g->ndim)
        return moe_fail(MOE_ERR_SHAPE, "sum-to-shape", "cannot reduce %s to %s", moe_shape_str(g),
                        moe_dims_str(ndim, shape));
    int lead = g->ndim - ndim, dims[MOE_MAX_DIMS], nd = 0;
    for (int i = 0; i < g->ndim; i++) {
        if (i < lead) {
            dims[nd++] = i;
        } else if (shape[i - lead] == 1 && g->shape[i] != 1) {
            dims[nd++] = i;
        } else if (shape[i - lead] != g->shape[i]) {
            return moe_fail(MOE_ERR_SHAPE, "sum-to-shape", "cannot reduce %s to %s", moe_shape_str(g),
                            moe_dims_str(ndim, shape));
        }
    }
    moe_tensor *s;
    if (nd == 0) {
        s = moe_tensor_retain(g);
    } else {
        MOE_TRY(moe_sum(&s, g, nd, dims, true));
    }
    moe_status st = moe_reshape(out, s, ndim, shape);
    moe_tensor_release(s);
    return st;
}

/* ---- contiguous / clone / dtype / device -------------------------------------------- */

static moe_status identity_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    (void)n;
    gin[0] = moe_tensor_retain(g);
    return MOE_OK;
}

static moe_status copy_as(const char *op, moe_tensor **out, moe_tensor *t, moe_dtype dtype,
                          moe_backward_fn bw)
{
    *out = NULL;
    moe_tensor *r;
    MOE_TRY(moe_tensor_empty(&r, dtype, t->device, t->ndim, t->shape));
    moe_node *n = NULL;
    moe_status st = moe_copy_elements(r, t);
    if (st == MOE_OK) st = record1(r, op, bw, t, &n);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    if (n) n->iargs[0] = t->dtype;
    *out = r;
    return MOE_OK;
}

moe_status moe_contiguous(moe_tensor **out, moe_tensor *t)
{
    if (moe_tensor_is_contiguous(t)) {
        *out = moe_tensor_retain(t);
        return MOE_OK;
    }
    return copy_as("contiguous", out, t, t->dtype, identity_backward);
}

moe_status moe_clone(moe_tensor **out, moe_tensor *t)
{
    return copy_as("clone", out, t, t->dtype, identity_backward);
}

/* ---- values an integer dtype cannot hold ------------------------------------------- */

/* [LO, HI]: the doubles whose conversion to the integer DTYPE (truncating
 * toward zero) is defined; false for dtypes that take any value. */
static bool integer_range(moe_dtype dtype, double *lo, double *hi, const char **text)
{
    if (dtype == MOE_I32) {
        *lo = nextafter(-2147483649.0, 0.0);
        *hi = nextafter(2147483648.0, 0.0);
        *text = "[-2147483648, 2147483647]";
        return true;
    }
    if (dtype == MOE_I64) {
        *lo = -0x1p63;
        *hi = nextafter(0x1p63, 0.0);
        *text = "[-9223372036854775808, 9223372036854775807]";
        return true;
    }
    return false;
}

moe_status moe_dtype_check_value(const char *op, moe_dtype dtype, double value)
{
    double lo, hi;
    const char *text;
    if (integer_range(dtype, &lo, &hi, &text) && !(lo <= value && value <= hi))
        return moe_fail(MOE_ERR_VALUE, op, "value %g cannot be converted to %s (NaN, infinite or "
                        "outside %s)", value, moe_dtype_name(dtype), text);
    return MOE_OK;
}

/* The first element of T in (INSIDE) or out of [LO, HI], scanning a host copy
 * of a device tensor: -1 when none. */
static moe_status find_first(int64_t *at, double *value, const moe_tensor *t, double lo, double hi,
                             bool inside)
{
    moe_tensor *host = NULL;
    if (t->device != MOE_CPU) {
        MOE_NO_GRAD_BEGIN;
        moe_status st = moe_to_device(&host, (moe_tensor *)t, MOE_CPU);
        MOE_NO_GRAD_END;
        MOE_TRY(st);
        t = host;
    }
    *at = moe_cpu_find_first(t, lo, hi, inside, value);
    moe_tensor_release(host);
    return MOE_OK;
}

/* "[i j k]": the index of row-major position AT in T. */
static const char *index_str(const moe_tensor *t, int64_t at)
{
    int64_t index[MOE_MAX_DIMS];
    for (int k = t->ndim - 1; k >= 0; k--) {
        index[k] = at % t->shape[k];
        at /= t->shape[k];
    }
    return moe_dims_str(t->ndim, index);
}

moe_status moe_check_representable(const char *op, const moe_tensor *t, moe_dtype dtype)
{
    double lo, hi, v = 0;
    const char *text;
    int64_t at;
    if (!integer_range(dtype, &lo, &hi, &text) || t->dtype == dtype || t->dtype == MOE_BOOL ||
        (t->dtype == MOE_I32 && dtype == MOE_I64))
        return MOE_OK; /* every value fits */
    MOE_TRY(find_first(&at, &v, t, lo, hi, false));
    if (at >= 0)
        return moe_fail(MOE_ERR_VALUE, op, "element %s of the %s tensor %s is %g, which %s cannot hold "
                        "(NaN, infinite or outside %s)", index_str(t, at), moe_dtype_name(t->dtype),
                        moe_shape_str(t), v, moe_dtype_name(dtype), text);
    return MOE_OK;
}

moe_status moe_check_no_zero(const char *op, const moe_tensor *t)
{
    double v = 0;
    int64_t at;
    MOE_TRY(find_first(&at, &v, t, 0.0, 0.0, true));
    if (at >= 0)
        return moe_fail(MOE_ERR_VALUE, op, "integer division by zero: element %s of the %s divisor %s is 0",
                        index_str(t, at), moe_dtype_name(t->dtype), moe_shape_str(t));
    return MOE_OK;
}

static moe_status to_dtype_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_to_dtype(&gin[0], g, (moe_dtype)n->iargs[0]);
}

moe_status moe_to_dtype(moe_tensor **out, moe_tensor *t, moe_dtype dtype)
{
    if ((unsigned)dtype >= MOE_DTYPE_COUNT)
        return moe_fail(MOE_ERR_DTYPE, "to-dtype", "unknown dtype %d", (int)dtype);
    if (dtype == t->dtype) {
        *out = moe_tensor_retain(t);
        return MOE_OK;
    }
    if (moe_tensor_needs_grad(t) && !moe_dtype_is_float(dtype))
        return moe_fail(MOE_ERR_DTYPE, "to-dtype",
                        "converting a tensor that requires grad to %s would cut the graph; detach first",
                        moe_dtype_name(dtype));
    MOE_TRY(moe_check_representable("to-dtype", t, dtype));
    return copy_as("to-dtype", out, t, dtype, to_dtype_backward);
}

static moe_status to_device_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_to_device(&gin[0], g, (moe_device)n->iargs[0]);
}

moe_status moe_to_device(moe_tensor **out, moe_tensor *t, moe_device device)
{
    *out = NULL;
    if ((unsigned)device >= MOE_DEVICE_COUNT)
        return moe_fail(MOE_ERR_DEVICE, "to-device", "unknown device %d", (int)device);
    if (device == t->device) {
        *out = moe_tensor_retain(t);
        return MOE_OK;
    }
#ifdef MOELAB_HAVE_CUDA
    /* Make the source contiguous on its own device, then one memcpy across. */
    moe_tensor *src = NULL, *r = NULL;
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_contiguous(&src, t);
    MOE_NO_GRAD_END;
    if (st == MOE_OK) st = moe_tensor_empty(&r, t->dtype, device, t->ndim, t->shape);
    if (st == MOE_OK)
        st = moe_cuda_memcpy(moe_tensor_data(r), moe_tensor_data(src), moe_tensor_nbytes(r),
                             device == MOE_CUDA ? MOE_COPY_H2D : MOE_COPY_D2H);
    moe_tensor_release(src);
    if (st == MOE_OK && moe_tensor_needs_grad(t)) {
        moe_node *n;
        st = moe_node_new(&n, "to-device", to_device_backward, 1, &t);
        if (st == MOE_OK) {
            n->iargs[0] = t->device;
            moe_node_attach(n, r);
        }
    }
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
#else
    (void)to_device_backward;
    return moe_fail(MOE_ERR_DEVICE, "to-device",
                    "cannot move a tensor from %s to %s: moelab was built without CUDA support",
                    moe_device_name(t->device), moe_device_name(device));
#endif
}
