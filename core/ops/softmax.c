/* softmax.c — softmax, log_softmax and logsumexp along one dim, each
 * forward beside its backward.
 *
 * Dimension letters: O rows (all dims but the chosen one), N the chosen
 * dim. The kernels work on contiguous rows x [O N]: the chosen dim is
 * permuted to the end (free when it already is the last dim of a
 * contiguous tensor), and softmax results are permuted back and made
 * contiguous. All three subtract the row max first, so large inputs do not
 * overflow. bf16 computes in f32; integer inputs are refused.
 *
 * Node parameters: iargs[0] the normalised dim, iargs[1] keepdim
 * (logsumexp), iargs[2] the input ndim. */
#include <math.h>

#include "../../kernels/cpu/softmax.h"
#include "../../kernels/cuda/reduce.h"
#include "device.h"
#include "internal.h"

_Static_assert(MOE_CPU_SOFTMAX == 0 && MOE_CPU_LOG_SOFTMAX == 1 && MOE_CPU_LOGSUMEXP == 2,
               "moe_cuda_softmax takes the mode as these numbers");

static moe_status softmax_impl(const char *op, moe_tensor **out, moe_tensor *a, int dim,
                               bool keepdim, moe_cpu_softmax_mode mode, moe_backward_fn bw);

/* On the GPU, a backward over the last dim is one row kernel instead of
 * four ops (*DONE false: not this case, use the ops). */
static moe_status backward_rows_cuda(moe_node *n, moe_tensor *g, moe_tensor **gin, bool log,
                                     bool *done)
{
    moe_tensor *y = n->saved[0], *gc = NULL, *yc = NULL, *r = NULL;
    *done = false;
    if (!moe_on_cuda(y) || y->ndim == 0 || n->iargs[0] != y->ndim - 1 || !moe_tensor_same_shape(g, y))
        return MOE_OK;
    *done = true;
    moe_dtype cd = moe_dtype_compute(y->dtype);
    int64_t N = y->shape[y->ndim - 1], O = N ? moe_tensor_numel(y) / N : 0;
    moe_status st = moe_as_compute(&gc, g, cd); /* [O N] */
    if (st == MOE_OK) st = moe_as_compute(&yc, y, cd);
    if (st == MOE_OK) st = moe_tensor_empty(&r, cd, y->device, y->ndim, y->shape);
    if (st == MOE_OK)
        st = MOE_CUDA(moe_cuda_softmax_backward(cd, moe_tensor_data(r), moe_tensor_data(gc),
                                                moe_tensor_data(yc), O, N, log));
    if (st == MOE_OK) st = moe_to_dtype(&gin[0], r, y->dtype);
    moe_tensor_release(gc);
    moe_tensor_release(yc);
    moe_tensor_release(r);
    return st;
}

/* dx = y * (g - sum(g * y)) */
static moe_status softmax_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    bool done;
    MOE_TRY(backward_rows_cuda(n, g, gin, false, &done));
    if (done) return MOE_OK;
    moe_tensor *y = n->saved[0], *gy = NULL, *s = NULL, *d = NULL;
    int dim = (int)n->iargs[0];
    moe_status st = moe_mul(&gy, g, y);
    if (st == MOE_OK) st = moe_sum(&s, gy, 1, &dim, true);
    if (st == MOE_OK) st = moe_sub(&d, g, s);
    if (st == MOE_OK) st = moe_mul(&gin[0], y, d);
    moe_tensor_release(gy);
    moe_tensor_release(s);
    moe_tensor_release(d);
    return st;
}

/* dx = g - exp(y) * sum(g) */
static moe_status log_softmax_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    bool done;
    MOE_TRY(backward_rows_cuda(n, g, gin, true, &done));
    if (done) return MOE_OK;
    moe_tensor *y = n->saved[0], *p = NULL, *s = NULL, *ps = NULL;
    int dim = (int)n->iargs[0];
    moe_status st = moe_exp(&p, y);
    if (st == MOE_OK) st = moe_sum(&s, g, 1, &dim, true);
    if (st == MOE_OK) st = moe_mul(&ps, p, s);
    if (st == MOE_OK) st = moe_sub(&gin[0], g, ps);
    moe_tensor_release(p);
    moe_tensor_release(s);
    moe_tensor_release(ps);
    return st;
}

/* dx = g * softmax(x), g broadcast back over the reduced dim. */
static moe_status logsumexp_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *x = n->saved[0], *gk = NULL, *p = NULL;
    int dim = (int)n->iargs[0];
    moe_status st;
    if (n->iargs[1] || n->iargs[2] == 0) st = (gk = moe_tensor_retain(g), MOE_OK);
    else st = moe_unsqueeze(&gk, g, dim);
    if (st == MOE_OK) st = softmax_impl("softmax", &p, x, dim, false, MOE_CPU_SOFTMAX, softmax_backward);
    if (st == MOE_OK) st = moe_mul(&gin[0], gk, p);
    moe_tensor_release(gk);
    moe_tensor_release(p);
    return st;
}

static moe_status softmax_impl(const char *op, moe_tensor **out, moe_tensor *a, int dim,
                               bool keepdim, moe_cpu_softmax_mode mode, moe_backward_fn bw)
{
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_FLOAT(op, a);
    int d;
    MOE_TRY(moe_dim_normalize(op, a, dim, &d));
    int nd = a->ndim, perm[MOE_MAX_DIMS], inv[MOE_MAX_DIMS], k = 0;
    int64_t O = 1, N = nd ? a->shape[d] : 1;
    int64_t oshape[MOE_MAX_DIMS]; /* logsumexp's output shape */
    int ond = 0;
    for (int i = 0; i < nd; i++) {
        if (i != d) {
            perm[k++] = i;
            O *= a->shape[i];
            oshape[ond++] = a->shape[i];
        } else if (keepdim) {
            oshape[ond++] = 1;
        }
    }
    if (nd) perm[k++] = d;
    for (int i = 0; i < nd; i++) inv[perm[i]] = i;
    moe_dtype cd = moe_dtype_compute(a->dtype);
    moe_tensor *p = NULL, *src = NULL, *res = NULL, *back = NULL, *c = NULL, *r = NULL;
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_permute(&p, a, perm);
    if (st == MOE_OK) st = moe_as_compute(&src, p, cd); /* [O N] */
    if (st == MOE_OK) {
        if (mode == MOE_CPU_LOGSUMEXP) st = moe_tensor_empty(&res, cd, a->device, ond, oshape);
        else st = moe_tensor_empty(&res, cd, a->device, nd, p->shape);
    }
    if (st == MOE_OK) {
        if (moe_on_cuda(res))
            st = MOE_CUDA(moe_cuda_softmax(cd, moe_tensor_data(res), moe_tensor_data(src), O, N, (int)mode));
        else
            moe_cpu_softmax(cd, moe_tensor_data(res), moe_tensor_data(src), O, N, mode);
        if (st == MOE_OK && mode == MOE_CPU_LOGSUMEXP) {
            st = moe_to_dtype(&r, res, a->dtype);
        } else if (st == MOE_OK) {
            st = moe_permute(&back, res, inv);
            if (st == MOE_OK) st = moe_contiguous(&c, back);
            if (st == MOE_OK) st = moe_to_dtype(&r, c, a->dtype);
        }
    }
    MOE_NO_GRAD_END;
    moe_tensor_release(p);
    moe_tensor_release(src);
    moe_tensor_release(res);
    moe_tensor_release(back);
    moe_tensor_release(c);
    if (st == MOE_OK) {
        moe_tensor *saved = mode == MOE_CPU_LOGSUMEXP ? a : r;
        st = moe_autograd_record(r, op, bw, 1, &a, 1, &saved, NULL, NULL);
        if (st == MOE_OK && r->grad_fn) {
            r->grad_fn->iargs[0] = d;
            r->grad_fn->iargs[1] = keepdim;
            r->grad_fn->iargs[2] = nd;
        }
    }
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

moe_status moe_softmax(moe_tensor **out, moe_tensor *a, int dim)
{
    return softmax_impl("softmax", out, a, dim, false, MOE_CPU_SOFTMAX, softmax_backward);
}

moe_status moe_log_softmax(moe_tensor **out, moe_tensor *a, int dim)
{
    return softmax_impl("log-softmax", out, a, dim, false, MOE_CPU_LOG_SOFTMAX, log_softmax_backward);
}

moe_status moe_logsumexp(moe_tensor **out, moe_tensor *a, int dim, bool keepdim)
{
    return softmax_impl("logsumexp", out, a, dim, keepdim, MOE_CPU_LOGSUMEXP, logsumexp_backward);
}
