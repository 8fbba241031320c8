/* rope.c — rotary position embeddings: the tables, the forward and its
 * backward (the inverse rotation). Loops: kernels/cpu/rope.c.
 *
 * Dimension letters: B batch, S sequence, N heads, hd head dim, P = hd/2.
 * Node: saved[0], saved[1] the tables; iargs[0..3] B S N hd. */
#include <math.h>

#include "../../kernels/cpu/rope.h"
#include "internal.h"
#include "rope.h"

moe_status moe_rope_tables(moe_tensor **cos_out, moe_tensor **sin_out, int64_t max_seq, int64_t hd,
                           double theta)
{
    static const char *op = "rope";
    *cos_out = *sin_out = NULL;
    if (hd < 2 || hd % 2)
        return moe_fail(MOE_ERR_ARG, op, "the head dim must be even and >= 2 (rotate-half pairs), got %lld",
                        (long long)hd);
    if (max_seq < 1) return moe_fail(MOE_ERR_ARG, op, "max-seq must be >= 1, got %lld", (long long)max_seq);
    if (!(theta > 0)) return moe_fail(MOE_ERR_ARG, op, "theta must be > 0, got %g", theta);
    int64_t P = hd / 2, shape[2] = {max_seq, P};
    moe_tensor *c, *s;
    MOE_TRY(moe_tensor_empty(&c, MOE_F64, MOE_CPU, 2, shape));
    moe_status st = moe_tensor_empty(&s, MOE_F64, MOE_CPU, 2, shape);
    if (st != MOE_OK) {
        moe_tensor_release(c);
        return st;
    }
    double *cd = moe_tensor_data(c), *sd = moe_tensor_data(s);
    for (int64_t i = 0; i < P; i++) {
        double freq = pow(theta, -2.0 * (double)i / (double)hd);
        for (int64_t pos = 0; pos < max_seq; pos++) {
            double a = (double)pos * freq;
            cd[pos * P + i] = cos(a);
            sd[pos * P + i] = sin(a);
        }
    }
    *cos_out = c;
    *sin_out = s;
    return MOE_OK;
}

/* X (compute dtype, contiguous [B S N hd]) turned forward or back into a fresh
 * tensor of dtype ODT. */
static moe_status rotate(moe_tensor **out, moe_tensor *x, moe_tensor *cos, moe_tensor *sin,
                         bool inverse, moe_dtype odt)
{
    moe_dtype cd = moe_dtype_compute(x->dtype);
    moe_tensor *cx = NULL, *r = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_as_compute(&cx, x, cd));
    MOE_TRYG(moe_tensor_empty(&r, cd, MOE_CPU, x->ndim, x->shape));
    moe_cpu_rope(cd, moe_tensor_data(r), moe_tensor_data(cx), moe_tensor_data(cos), moe_tensor_data(sin),
                 x->shape[0], x->shape[1], x->shape[2], x->shape[3], inverse);
    st = moe_from_compute(out, r, odt); /* takes R over */
    r = NULL;
done:
    moe_tensor_release(cx);
    moe_tensor_release(r);
    return st;
}

static moe_status rope_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return rotate(&gin[0], g, n->saved[0], n->saved[1], true, n->inputs[0]->dtype);
}

moe_status moe_rope(moe_tensor **out, moe_tensor *x, moe_tensor *cos, moe_tensor *sin)
{
    static const char *op = "rope";
    MOE_CHECK_NOT_NULL(op, out);
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, x);
    MOE_CHECK_NOT_NULL(op, cos);
    MOE_CHECK_NOT_NULL(op, sin);
    MOE_CHECK_FLOAT(op, x);
    MOE_CHECK_CPU(op, x);
    if (x->ndim != 4 || x->shape[3] % 2)
        return moe_fail(MOE_ERR_SHAPE, op, "input must be [B S N hd] with an even hd, got %s", moe_shape_str(x));
    int64_t S = x->shape[1], P = x->shape[3] / 2;
    for (int i = 0; i < 2; i++) {
        moe_tensor *t = i ? sin : cos;
        if (t->dtype != MOE_F64 || t->device != MOE_CPU || t->ndim != 2 || !moe_tensor_is_contiguous(t) ||
            t->shape[0] < S || t->shape[1] != P)
            return moe_fail(MOE_ERR_SHAPE, op,
                            "the %s table must be a contiguous f64 cpu [>=%lld %lld] tensor (from rope tables), got %s %s",
                            i ? "sin" : "cos", (long long)S, (long long)P, moe_dtype_name(t->dtype),
                            moe_shape_str(t));
    }
    moe_tensor *r;
    MOE_NO_GRAD_BEGIN;
    moe_status st = rotate(&r, x, cos, sin, false, x->dtype);
    MOE_NO_GRAD_END;
    MOE_TRY(st);
    moe_tensor *saved[2] = {cos, sin};
    st = moe_autograd_record(r, op, rope_backward, 1, &x, 2, saved, NULL, NULL);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}
