/* join.c — cat, stack and split, each forward beside its backward.
 *
 * cat and stack copy every input into its slot of a fresh output (a view of
 * the output along DIM) with the strided copy kernel; their backwards hand
 * each input the matching slice of the gradient (narrow for cat, select for
 * stack). split returns narrow views, differentiable through narrow.
 *
 * A node has at most MOE_NODE_MAX_INPUTS inputs, so a differentiable join of
 * more tensors is built as a join of joins of at most that many: cat is
 * associative along one dim, and a stack of groups is a cat of stacks.
 *
 * Devices: the copies go through moe_copy_elements (core/device.h), so a join
 * of GPU tensors runs the CUDA strided copy; all inputs share one device. */
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "internal.h"

/* Node parameters: iargs[0..n] = start offsets along DIM (iargs[n] = total),
 * iargs[JOIN_DIM] = dim, iargs[JOIN_STACK] = 1 for stack. */
#define JOIN_DIM (MOE_NODE_MAX_INPUTS + 1)
#define JOIN_STACK (MOE_NODE_MAX_INPUTS + 2)

static moe_status join_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    int dim = (int)n->iargs[JOIN_DIM];
    for (int i = 0; i < n->n_inputs; i++) {
        if (!n->inputs[i]) continue;
        if (n->iargs[JOIN_STACK])
            MOE_TRY(moe_select(&gin[i], g, dim, i));
        else
            MOE_TRY(moe_narrow(&gin[i], g, dim, n->iargs[i], n->iargs[i + 1] - n->iargs[i]));
    }
    return MOE_OK;
}

/* Validate the inputs; the normalised dim goes to *D. */
static moe_status join_check(const char *op, int n, moe_tensor *const *ts, int dim, bool stack,
                             int *d)
{
    if (n < 1) return moe_fail(MOE_ERR_ARG, op, "needs at least one tensor, got %d", n);
    if (!ts) return moe_fail(MOE_ERR_ARG, op, "argument 'tensors' is NULL");
    for (int i = 0; i < n; i++)
        if (!ts[i]) return moe_fail(MOE_ERR_ARG, op, "tensor %d is NULL", i);
    const moe_tensor *t0 = ts[0];
    if (stack) {
        int nd = t0->ndim + 1;
        if (nd > MOE_MAX_DIMS)
            return moe_fail(MOE_ERR_SHAPE, op, "stacking %s tensors needs more than %d dims",
                            moe_shape_str(t0), MOE_MAX_DIMS);
        if (dim < -nd || dim >= nd)
            return moe_fail(MOE_ERR_INDEX, op,
                            "dim %d out of range for stacking %s tensors (%d to %d)", dim,
                            moe_shape_str(t0), -nd, nd - 1);
        *d = dim < 0 ? dim + nd : dim;
    } else {
        if (t0->ndim == 0)
            return moe_fail(MOE_ERR_SHAPE, op, "cannot concatenate 0-d tensors; use stack");
        MOE_TRY(moe_dim_normalize(op, t0, dim, d));
    }
    for (int i = 0; i < n; i++) {
        const moe_tensor *t = ts[i];
        if (t->device != t0->device)
            return moe_fail(MOE_ERR_DEVICE, op, "tensor %d is on %s but tensor 0 is on %s; move it first",
                            i, moe_device_name(t->device), moe_device_name(t0->device));
        if (t->dtype != t0->dtype)
            return moe_fail(MOE_ERR_DTYPE, op, "tensor %d is %s but tensor 0 is %s; convert first",
                            i, moe_dtype_name(t->dtype), moe_dtype_name(t0->dtype));
        bool same = t->ndim == t0->ndim;
        for (int k = 0; same && k < t->ndim; k++)
            same = t->shape[k] == t0->shape[k] || (!stack && k == *d);
        if (!same) {
            if (stack)
                return moe_fail(MOE_ERR_SHAPE, op,
                                "tensor %d has shape %s but tensor 0 has %s; all must match", i,
                                moe_shape_str(t), moe_shape_str(t0));
            return moe_fail(
                MOE_ERR_SHAPE, op,
                "tensor %d has shape %s but tensor 0 has %s; they may differ only in dim %d", i,
                moe_shape_str(t), moe_shape_str(t0), *d);
        }
    }
    return MOE_OK;
}

/* Join already-checked inputs with normalised dim D. */
static moe_status join_run(const char *op, moe_tensor **out, int n, moe_tensor *const *ts, int d,
                           bool stack)
{
    *out = NULL;
    moe_status st = MOE_OK;
    if (n > MOE_NODE_MAX_INPUTS && moe_any_needs_grad(n, ts)) {
        /* a join of joins, each small enough for one node */
        int groups = (n + MOE_NODE_MAX_INPUTS - 1) / MOE_NODE_MAX_INPUTS;
        moe_tensor **parts = calloc((size_t)groups, sizeof *parts);
        if (!parts) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of partial results (%d groups)",
                                      sizeof *parts * (size_t)groups, groups);
        for (int g = 0; g < groups && st == MOE_OK; g++) {
            int first = g * MOE_NODE_MAX_INPUTS;
            int len = n - first < MOE_NODE_MAX_INPUTS ? n - first : MOE_NODE_MAX_INPUTS;
            st = join_run(op, &parts[g], len, ts + first, d, stack);
        }
        if (st == MOE_OK) st = join_run(op, out, groups, parts, d, false);
        for (int g = 0; g < groups; g++) moe_tensor_release(parts[g]);
        free(parts);
        return st;
    }
    const moe_tensor *t0 = ts[0];
    int64_t sh[MOE_MAX_DIMS], offs[MOE_NODE_MAX_INPUTS + 1];
    int nd = stack ? t0->ndim + 1 : t0->ndim;
    for (int k = 0, j = 0; k < nd; k++) sh[k] = stack && k == d ? n : t0->shape[j++];
    if (!stack) {
        sh[d] = 0;
        for (int i = 0; i < n; i++) sh[d] += ts[i]->shape[d];
    }
    moe_tensor *r;
    MOE_TRY(moe_tensor_empty(&r, t0->dtype, t0->device, nd, sh));
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        const moe_tensor *t = ts[i];
        int64_t vstr[MOE_MAX_DIMS];
        for (int k = 0, j = 0; k < nd; k++)
            if (!stack || k != d) vstr[j++] = r->strides[k];
        moe_tensor *slot;
        /* the slot of input i: its shape, the output's strides */
        st = moe_tensor_new_view(&slot, r, r->storage, t->ndim, t->shape, vstr,
                                 r->offset + start * r->strides[d]);
        if (st != MOE_OK) break;
        st = moe_copy_elements(slot, t);
        moe_tensor_release(slot);
        if (st != MOE_OK) break;
        if (i <= MOE_NODE_MAX_INPUTS) offs[i] = start;
        start += stack ? 1 : t->shape[d];
    }
    if (st == MOE_OK && n <= MOE_NODE_MAX_INPUTS) {
        offs[n] = start;
        st = moe_autograd_record(r, op, join_backward, n, ts, 0, NULL, NULL, NULL);
        if (st == MOE_OK && r->grad_fn) {
            for (int i = 0; i <= n; i++) r->grad_fn->iargs[i] = offs[i];
            r->grad_fn->iargs[JOIN_DIM] = d;
            r->grad_fn->iargs[JOIN_STACK] = stack;
        }
    }
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

moe_status moe_cat(moe_tensor **out, int n, moe_tensor *const *tensors, int dim)
{
    *out = NULL;
    int d;
    MOE_TRY(join_check("cat", n, tensors, dim, false, &d));
    return join_run("cat", out, n, tensors, d, false);
}

moe_status moe_stack(moe_tensor **out, int n, moe_tensor *const *tensors, int dim)
{
    *out = NULL;
    int d;
    MOE_TRY(join_check("stack", n, tensors, dim, true, &d));
    return join_run("stack", out, n, tensors, d, true);
}

/* ---- split ---------------------------------------------------------------------- */

moe_status moe_split(moe_tensor **outs, moe_tensor *a, int n, const int64_t *sizes, int dim)
{
    const char *op = "split";
    if (!outs) return moe_fail(MOE_ERR_ARG, op, "argument 'outs' is NULL");
    for (int i = 0; i < n; i++) outs[i] = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    if (n < 0) return moe_fail(MOE_ERR_ARG, op, "negative number of pieces %d", n);
    if (n > 0 && !sizes) return moe_fail(MOE_ERR_ARG, op, "argument 'sizes' is NULL");
    if (a->ndim == 0) return moe_fail(MOE_ERR_SHAPE, op, "cannot split a 0-d tensor");
    int d;
    MOE_TRY(moe_dim_normalize(op, a, dim, &d));
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (sizes[i] < 0)
            return moe_fail(MOE_ERR_ARG, op, "piece %d has negative size %lld", i,
                            (long long)sizes[i]);
        total += sizes[i];
    }
    if (total != a->shape[d])
        return moe_fail(MOE_ERR_SHAPE, op, "sizes %s sum to %lld but dim %d of %s has size %lld",
                        n <= MOE_MAX_DIMS ? moe_dims_str(n, sizes) : "(of the pieces)",
                        (long long)total, d, moe_shape_str(a), (long long)a->shape[d]);
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        moe_status st = moe_narrow(&outs[i], a, d, start, sizes[i]);
        if (st != MOE_OK) {
            for (int j = 0; j < i; j++) {
                moe_tensor_release(outs[j]);
                outs[j] = NULL;
            }
            return st;
        }
        start += sizes[i];
    }
    return MOE_OK;
}
