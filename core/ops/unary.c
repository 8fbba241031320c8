/* unary.c — elementwise maps of one tensor: neg, exp, log, sqrt, rsqrt, abs,
 * tanh, sigmoid, silu, relu, gelu, clamp, the tensor-scalar ops, dropout and
 * the non-finite count. Each forward sits beside its backward.
 *
 * Dimension letters: X the input shape (= the output shape).
 *
 * All maps share one forward (unary_op) and one backward (unary_backward):
 * the kernel computes gin = g * f'(x) from the saved input x and/or the
 * saved output y in a single pass (kernels/cpu/elementwise.c). Dtypes: f32
 * and f64 natively, bf16 through f32; integer tensors are accepted by the
 * maps that keep integers integers (neg, abs, relu, clamp, and the scalar
 * ops with an integral scalar); the others fail with a dtype error.
 * Devices: the CPU loops or their CUDA twins (kernels/cuda/elementwise.cu),
 * chosen at the innermost call (core/device.h). */
#include <math.h>

#include "../../kernels/cpu/elementwise.h"
#include "../../kernels/cuda/elementwise.h"
#include "device.h"
#include "internal.h"

/* What a map's backward reads. */
enum { NEEDS_X = 1, NEEDS_Y = 2 };

typedef struct unary_info {
    const char *name;
    bool float_only;
    unsigned needs;
} unary_info;

static const unary_info unary_table[MOE_UNOP_COUNT] = {
    [MOE_UN_NEG] = {"neg", false, 0},
    [MOE_UN_EXP] = {"exp", true, NEEDS_Y},
    [MOE_UN_LOG] = {"log", true, NEEDS_X},
    [MOE_UN_SQRT] = {"sqrt", true, NEEDS_Y},
    [MOE_UN_RSQRT] = {"rsqrt", true, NEEDS_Y},
    [MOE_UN_ABS] = {"abs", false, NEEDS_X},
    [MOE_UN_TANH] = {"tanh", true, NEEDS_Y},
    [MOE_UN_SIGMOID] = {"sigmoid", true, NEEDS_Y},
    [MOE_UN_SILU] = {"silu", true, NEEDS_X},
    [MOE_UN_RELU] = {"relu", false, NEEDS_X},
    [MOE_UN_GELU_ERF] = {"gelu", true, NEEDS_X},
    [MOE_UN_GELU_TANH] = {"gelu", true, NEEDS_X},
    [MOE_UN_CLAMP] = {"clamp", false, NEEDS_X},
    [MOE_UN_ADD_S] = {"add-scalar", false, 0},
    [MOE_UN_MUL_S] = {"mul-scalar", false, 0},
    [MOE_UN_RSUB_S] = {"rsub-scalar", false, 0},
    [MOE_UN_RDIV_S] = {"rdiv-scalar", false, NEEDS_X},
    [MOE_UN_POW_S] = {"pow-scalar", false, NEEDS_X},
};

/* node: iargs[0] = op, iargs[1] = saved index of x (or -1), iargs[2] = of y;
 * dargs[0..1] = the op's parameters. */
static moe_status unary_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *in = n->inputs[0];
    if (!in) return MOE_OK;
    moe_unop op = (moe_unop)n->iargs[0];
    moe_dtype ct = moe_dtype_compute(in->dtype);
    moe_tensor *gc = NULL, *xc = NULL, *yc = NULL, *r = NULL;
    moe_status st;
    MOE_TRYG(moe_as_compute(&gc, g, ct));
    if (n->iargs[1] >= 0) MOE_TRYG(moe_as_compute(&xc, n->saved[n->iargs[1]], ct));
    if (n->iargs[2] >= 0) MOE_TRYG(moe_as_compute(&yc, n->saved[n->iargs[2]], ct));
    MOE_TRYG(moe_tensor_empty(&r, ct, in->device, in->ndim, in->shape)); /* [X] */
    int64_t numel = moe_tensor_numel(r);
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_unary_grad(op, n->dargs, ct, moe_tensor_data(r), moe_tensor_data(gc),
                                              xc ? moe_tensor_data(xc) : NULL,
                                              yc ? moe_tensor_data(yc) : NULL, numel)));
    else
        moe_cpu_unary_grad(op, n->dargs, ct, moe_tensor_data(r), moe_tensor_data(gc),
                           xc ? moe_tensor_data(xc) : NULL, yc ? moe_tensor_data(yc) : NULL, numel);
    st = moe_from_compute(&gin[0], r, in->dtype);
    r = NULL;
done:
    moe_tensor_release(gc);
    moe_tensor_release(xc);
    moe_tensor_release(yc);
    moe_tensor_release(r);
    return st;
}

/* out = f(a) with parameters P[2], returned in dtype RT. */
static moe_status unary_op(moe_unop op, const double *p, moe_dtype rt, moe_tensor **out,
                           moe_tensor *a)
{
    const unary_info *info = &unary_table[op];
    moe_dtype ct = moe_dtype_compute(rt);
    moe_tensor *ac = NULL, *r = NULL, *res = NULL;
    moe_node *node = NULL;
    moe_status st;
    if (a->dtype == ct) ac = moe_tensor_retain(a); /* read in place, any strides */
    else MOE_TRYG(moe_as_compute(&ac, a, ct));
    MOE_TRYG(moe_tensor_empty(&r, ct, a->device, a->ndim, a->shape)); /* [X] */
    moe_iter it;
    const moe_tensor *ins[1] = {ac};
    moe_iter_init(&it, a->ndim, a->shape, 1, ins);
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_unary(op, p, ct, moe_tensor_data(r), moe_tensor_data(ac), &it)));
    else
        moe_cpu_unary(op, p, ct, moe_tensor_data(r), moe_tensor_data(ac), &it);
    st = moe_from_compute(&res, r, rt);
    r = NULL;
    if (st != MOE_OK) goto done;
    if (moe_tensor_needs_grad(a)) {
        MOE_TRYG(moe_node_new(&node, info->name, unary_backward, 1, &a));
        moe_node_attach(node, res); /* res now holds the node reference */
        node->iargs[0] = op;
        node->iargs[1] = node->iargs[2] = -1;
        node->dargs[0] = p[0];
        node->dargs[1] = p[1];
        if (info->needs & NEEDS_X) {
            node->iargs[1] = node->n_saved;
            MOE_TRYG(moe_node_save(node, a));
        }
        if (info->needs & NEEDS_Y) {
            node->iargs[2] = node->n_saved;
            MOE_TRYG(moe_node_save(node, res));
        }
    }
    *out = res;
    res = NULL;
done:
    moe_tensor_release(ac);
    moe_tensor_release(r);
    moe_tensor_release(res);
    return st;
}

static moe_status check_one(const char *op, moe_tensor **out, moe_tensor *a)
{
    if (!out) return moe_fail(MOE_ERR_ARG, op, "argument 'out' is NULL");
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    return MOE_OK;
}

/* A parameterless map. */
static moe_status map(moe_unop op, moe_tensor **out, moe_tensor *a)
{
    const char *name = unary_table[op].name;
    MOE_TRY(check_one(name, out, a));
    if (unary_table[op].float_only) MOE_CHECK_FLOAT(name, a);
    const double p[2] = {0, 0};
    return unary_op(op, p, a->dtype, out, a);
}

moe_status moe_neg(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_NEG, out, a); }
moe_status moe_exp(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_EXP, out, a); }
moe_status moe_log(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_LOG, out, a); }
moe_status moe_sqrt(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_SQRT, out, a); }
moe_status moe_rsqrt(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_RSQRT, out, a); }
moe_status moe_abs(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_ABS, out, a); }
moe_status moe_tanh(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_TANH, out, a); }
moe_status moe_sigmoid(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_SIGMOID, out, a); }
moe_status moe_silu(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_SILU, out, a); }
moe_status moe_relu(moe_tensor **out, moe_tensor *a) { return map(MOE_UN_RELU, out, a); }

moe_status moe_gelu(moe_tensor **out, moe_tensor *a, moe_gelu_kind kind)
{
    MOE_TRY(check_one("gelu", out, a));
    if (kind == MOE_GELU_ERF) return map(MOE_UN_GELU_ERF, out, a);
    if (kind == MOE_GELU_TANH) return map(MOE_UN_GELU_TANH, out, a);
    return moe_fail(MOE_ERR_ARG, "gelu", "unknown gelu kind %d (expected erf or tanh)", (int)kind);
}

moe_status moe_clamp(moe_tensor **out, moe_tensor *a, double lo, double hi)
{
    MOE_TRY(check_one("clamp", out, a));
    if (isnan(lo) || isnan(hi) || lo > hi)
        return moe_fail(MOE_ERR_ARG, "clamp", "bounds [%g, %g] are not an interval", lo, hi);
    const double p[2] = {lo, hi};
    return unary_op(MOE_UN_CLAMP, p, a->dtype, out, a);
}

/* ---- tensor-scalar ops -------------------------------------------------------------
 * A floating tensor keeps its dtype (the scalar is rounded to it). An integer
 * or bool tensor keeps an integer dtype when the result stays integral (add,
 * mul, rsub and pow with a non-negative exponent, by an integral scalar; bool
 * becomes i64) and becomes f32 otherwise. */

static moe_status scalar_op(moe_unop op, moe_tensor **out, moe_tensor *a, double s)
{
    const char *name = unary_table[op].name;
    MOE_TRY(check_one(name, out, a));
    moe_dtype rt = a->dtype;
    if (!moe_dtype_is_float(rt)) {
        bool integral = isfinite(s) && s == floor(s);
        bool stays = integral && (op == MOE_UN_ADD_S || op == MOE_UN_MUL_S || op == MOE_UN_RSUB_S ||
                                  (op == MOE_UN_POW_S && s >= 0));
        rt = !stays ? MOE_F32 : rt == MOE_BOOL ? MOE_I64 : rt;
    }
    const double p[2] = {s, 0};
    return unary_op(op, p, rt, out, a);
}

moe_status moe_add_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return scalar_op(MOE_UN_ADD_S, out, a, s);
}

moe_status moe_mul_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return scalar_op(MOE_UN_MUL_S, out, a, s);
}

moe_status moe_rsub_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return scalar_op(MOE_UN_RSUB_S, out, a, s);
}

moe_status moe_rdiv_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    if (out) *out = NULL;
    MOE_CHECK_NOT_NULL("rdiv-scalar", a);
    if (!moe_dtype_is_float(a->dtype)) MOE_TRY(moe_check_no_zero("rdiv-scalar", a));
    return scalar_op(MOE_UN_RDIV_S, out, a, s);
}

moe_status moe_pow_scalar(moe_tensor **out, moe_tensor *a, double s)
{
    return scalar_op(MOE_UN_POW_S, out, a, s);
}

/* ---- dropout --------------------------------------------------------------------------
 * The mask is never stored: element i survives when
 * moe_rng_uniform(seed, base + i) >= p, so the backward regenerates it from
 * (seed, base) kept in the node. Counter-based draws make the mask the same
 * for any thread count. */

/* node: iargs[0] = seed, iargs[1] = base; dargs[0] = p, dargs[1] = scale. */
static moe_status dropout_apply(moe_tensor **out, moe_tensor *a, moe_dtype rt, uint64_t seed,
                                uint64_t base, double p, double scale)
{
    moe_dtype ct = moe_dtype_compute(rt);
    moe_tensor *ac, *r;
    MOE_TRY(moe_as_compute(&ac, a, ct));
    moe_status st = moe_tensor_empty(&r, ct, a->device, a->ndim, a->shape); /* [X] */
    if (st != MOE_OK) {
        moe_tensor_release(ac);
        return st;
    }
    int64_t numel = moe_tensor_numel(r);
    if (moe_on_cuda(r))
        st = MOE_CUDA(moe_cuda_dropout(ct, moe_tensor_data(r), moe_tensor_data(ac), numel, seed, base,
                                       p, scale));
    else
        moe_cpu_dropout(ct, moe_tensor_data(r), moe_tensor_data(ac), numel, seed, base, p, scale);
    moe_tensor_release(ac);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    return moe_from_compute(out, r, rt);
}

static moe_status dropout_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *in = n->inputs[0];
    if (!in) return MOE_OK;
    return dropout_apply(&gin[0], g, in->dtype, (uint64_t)n->iargs[0], (uint64_t)n->iargs[1],
                         n->dargs[0], n->dargs[1]);
}

moe_status moe_dropout(moe_tensor **out, moe_tensor *a, double p, bool training, moe_rng *rng)
{
    MOE_TRY(check_one("dropout", out, a));
    MOE_CHECK_FLOAT("dropout", a);
    if (!(p >= 0.0 && p <= 1.0))
        return moe_fail(MOE_ERR_ARG, "dropout", "probability %g is outside [0, 1]", p);
    if (!training || p == 0.0) {
        *out = moe_tensor_retain(a);
        return MOE_OK;
    }
    if (!rng) rng = moe_rng_default();
    int64_t numel = moe_tensor_numel(a);
    uint64_t seed = rng->seed;
    uint64_t base = __atomic_fetch_add(&rng->offset, (uint64_t)numel, __ATOMIC_RELAXED);
    double scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
    moe_tensor *res;
    MOE_TRY(dropout_apply(&res, a, a->dtype, seed, base, p, scale));
    if (moe_tensor_needs_grad(a)) {
        moe_node *node;
        moe_status st = moe_node_new(&node, "dropout", dropout_backward, 1, &a);
        if (st != MOE_OK) {
            moe_tensor_release(res);
            return st;
        }
        moe_node_attach(node, res);
        node->iargs[0] = (int64_t)seed;
        node->iargs[1] = (int64_t)base;
        node->dargs[0] = p;
        node->dargs[1] = scale;
    }
    *out = res;
    return MOE_OK;
}

/* ---- non-finite count (no grad) ----------------------------------------------------- */

moe_status moe_count_nonfinite(const moe_tensor *a, int64_t *nan_count, int64_t *inf_count)
{
    MOE_CHECK_NOT_NULL("count-nonfinite", a);
    int64_t nn = 0, ni = 0;
    if (moe_dtype_is_float(a->dtype)) {
        moe_dtype ct = moe_dtype_compute(a->dtype);
        moe_tensor *ac;
        MOE_TRY(moe_as_compute(&ac, (moe_tensor *)a, ct));
        int64_t numel = moe_tensor_numel(ac);
        moe_status st = MOE_OK;
        if (moe_on_cuda(ac))
            st = MOE_CUDA(moe_cuda_count_nonfinite(ct, moe_tensor_data(ac), numel, &nn, &ni));
        else
            moe_cpu_count_nonfinite(ct, moe_tensor_data(ac), numel, &nn, &ni);
        moe_tensor_release(ac);
        MOE_TRY(st);
    }
    if (nan_count) *nan_count = nn;
    if (inf_count) *inf_count = ni;
    return MOE_OK;
}
