/* binary.c — elementwise ops of two or three tensors: add, sub, mul, div,
 * pow (broadcasting, dtype promotion), where, masked_fill and comparisons.
 * Each forward sits beside its backward.
 *
 * Dimension letters: O the broadcast output shape; A, B the input shapes.
 *
 * Dtypes: the result dtype is moe_dtype_promote(a, b); the loop runs in its
 * compute dtype (f32 for f32/bf16, f64 otherwise) and the result is converted
 * back when the two differ (bf16 rounds, integers are exact below 2^53).
 * Inputs already in the compute dtype are read in place with their strides
 * (broadcast dims have stride 0); others are converted once, unexpanded.
 *
 * Devices: CPU loops (kernels/cpu/elementwise.c) or CUDA kernels
 * (kernels/cuda/elementwise.cu) at the innermost call, as core/device.h
 * describes; both operands must be on one device. */
#include <assert.h>
#include <string.h>

#include "../../kernels/cpu/elementwise.h"
#include "../../kernels/cuda/elementwise.h"
#include "device.h"
#include "internal.h"

/* ---- shared plumbing ------------------------------------------------------------ */

/* T in compute dtype CT: T itself (retained, any strides) when already CT,
 * else a contiguous converted copy of T's own shape. */
static moe_status operand(moe_tensor **out, moe_tensor *t, moe_dtype ct)
{
    if (t->dtype == ct) {
        *out = moe_tensor_retain(t);
        return MOE_OK;
    }
    return moe_as_compute(out, t, ct);
}

/* Reduce G (of the output shape) to the shape and dtype of input IN: the
 * backward of broadcasting and promotion. Takes over G. */
static moe_status to_input(moe_tensor **out, moe_tensor *g, const moe_tensor *in)
{
    *out = NULL;
    moe_tensor *s;
    moe_status st = moe_sum_to_shape(&s, g, in->ndim, in->shape);
    moe_tensor_release(g);
    MOE_TRY(st);
    if (s->dtype == in->dtype) {
        *out = s;
        return MOE_OK;
    }
    st = moe_to_dtype(out, s, in->dtype);
    moe_tensor_release(s);
    return st;
}

static moe_status check_pair(const char *op, moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    if (!out) return moe_fail(MOE_ERR_ARG, op, "argument 'out' is NULL");
    *out = NULL;
    MOE_CHECK_NOT_NULL(op, a);
    MOE_CHECK_NOT_NULL(op, b);
    MOE_CHECK_SAME_DEVICE(op, a, b);
    return MOE_OK;
}

/* ---- the arithmetic family ---------------------------------------------------- */

/* O = a op b in compute dtype, returned in the promoted dtype (not recorded). */
static moe_status binary_compute(const char *op, moe_binop kind, moe_tensor **out,
                                 moe_tensor *a, moe_tensor *b)
{
    moe_dtype rt = moe_dtype_promote(a->dtype, b->dtype);
    if ((kind == MOE_BIN_DIV || kind == MOE_BIN_POW) && !moe_dtype_is_float(rt))
        return moe_fail(MOE_ERR_DTYPE, op,
                        "expected a floating dtype, got %s and %s (convert with to-dtype first)",
                        moe_dtype_name(a->dtype), moe_dtype_name(b->dtype));
    int nd;
    int64_t shape[MOE_MAX_DIMS]; /* [O] */
    MOE_TRY(moe_broadcast_shapes(op, a->ndim, a->shape, b->ndim, b->shape, &nd, shape));
    moe_dtype ct = moe_dtype_compute(rt);
    moe_tensor *ac = NULL, *bc = NULL, *r = NULL;
    moe_status st;
    MOE_TRYG(operand(&ac, a, ct));
    MOE_TRYG(operand(&bc, b, ct));
    MOE_TRYG(moe_tensor_empty(&r, ct, a->device, nd, shape)); /* [O] */
    moe_iter it;
    const moe_tensor *ins[2] = {ac, bc};
    moe_iter_init(&it, nd, shape, 2, ins);
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_binary(kind, ct, moe_tensor_data(r), moe_tensor_data(ac),
                                          moe_tensor_data(bc), &it)));
    else
        moe_cpu_binary(kind, ct, moe_tensor_data(r), moe_tensor_data(ac), moe_tensor_data(bc), &it);
    st = moe_from_compute(out, r, rt);
    r = NULL;
done:
    moe_tensor_release(ac);
    moe_tensor_release(bc);
    moe_tensor_release(r);
    return st;
}

/* Forward + record: SAVE_MASK bit 0 saves a, bit 1 b, bit 2 the output. */
static moe_status binary_op(const char *op, moe_binop kind, moe_backward_fn bw,
                            unsigned save_mask, moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    MOE_TRY(check_pair(op, out, a, b));
    moe_tensor *r;
    MOE_TRY(binary_compute(op, kind, &r, a, b));
    moe_tensor *ins[2] = {a, b}, *saved[3];
    int ns = 0;
    if (save_mask & 1) saved[ns++] = a;
    if (save_mask & 2) saved[ns++] = b;
    if (save_mask & 4) saved[ns++] = r;
    moe_status st = moe_autograd_record(r, op, bw, 2, ins, ns, saved, NULL, NULL);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

static moe_status add_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    for (int i = 0; i < 2; i++)
        if (n->inputs[i]) MOE_TRY(to_input(&gin[i], moe_tensor_retain(g), n->inputs[i]));
    return MOE_OK;
}

moe_status moe_add(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return binary_op("add", MOE_BIN_ADD, add_backward, 0, out, a, b);
}

static moe_status sub_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    if (n->inputs[0]) MOE_TRY(to_input(&gin[0], moe_tensor_retain(g), n->inputs[0]));
    if (n->inputs[1]) {
        moe_tensor *ng;
        MOE_TRY(moe_neg(&ng, g));
        MOE_TRY(to_input(&gin[1], ng, n->inputs[1]));
    }
    return MOE_OK;
}

moe_status moe_sub(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return binary_op("sub", MOE_BIN_SUB, sub_backward, 0, out, a, b);
}

/* saved: a, b */
static moe_status mul_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    for (int i = 0; i < 2; i++) {
        if (!n->inputs[i]) continue;
        moe_tensor *t; /* [O] */
        MOE_TRY(moe_mul(&t, g, n->saved[1 - i]));
        MOE_TRY(to_input(&gin[i], t, n->inputs[i]));
    }
    return MOE_OK;
}

moe_status moe_mul(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return binary_op("mul", MOE_BIN_MUL, mul_backward, 1 | 2, out, a, b);
}

/* saved: b, out. da = g / b; db = -(g / b) * out. */
static moe_status div_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *q, *t = NULL, *nt; /* [O] */
    MOE_TRY(moe_div(&q, g, n->saved[0]));
    moe_status st = MOE_OK;
    if (n->inputs[1]) {
        st = moe_mul(&t, q, n->saved[1]);
        if (st == MOE_OK) {
            st = moe_neg(&nt, t);
            moe_tensor_release(t);
            if (st == MOE_OK) st = to_input(&gin[1], nt, n->inputs[1]);
        }
    }
    if (st == MOE_OK && n->inputs[0]) return to_input(&gin[0], q, n->inputs[0]);
    moe_tensor_release(q);
    return st;
}

moe_status moe_div(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return binary_op("div", MOE_BIN_DIV, div_backward, 2 | 4, out, a, b);
}

/* saved: a, b, out. da = g * b * a^(b-1); db = g * out * log(a) (0 where a == 0). */
static moe_status pow_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *a = n->saved[0], *b = n->saved[1], *y = n->saved[2];
    moe_tensor *t1 = NULL, *t2 = NULL, *t3 = NULL, *zero = NULL;
    moe_status st = MOE_OK;
    if (n->inputs[0]) {
        MOE_TRYG(moe_add_scalar(&t1, b, -1.0));
        MOE_TRYG(moe_pow(&t2, a, t1));
        moe_tensor_release(t1);
        t1 = NULL;
        MOE_TRYG(moe_mul(&t1, t2, b));
        moe_tensor_release(t2);
        t2 = NULL;
        MOE_TRYG(moe_mul(&t2, g, t1));
        moe_tensor_release(t1);
        t1 = NULL;
        st = to_input(&gin[0], t2, n->inputs[0]);
        t2 = NULL;
        if (st != MOE_OK) goto done;
    }
    if (n->inputs[1]) {
        if (moe_dtype_is_float(a->dtype)) { /* an integer base needs a float log */
            MOE_TRYG(moe_log(&t1, a));
        } else {
            MOE_TRYG(moe_to_dtype(&t3, a, y->dtype));
            MOE_TRYG(moe_log(&t1, t3));
            moe_tensor_release(t3);
            t3 = NULL;
        }
        MOE_TRYG(moe_mul(&t2, y, t1));
        moe_tensor_release(t1);
        t1 = NULL;
        MOE_TRYG(moe_compare_scalar(&zero, a, 0.0, MOE_EQ));
        MOE_TRYG(moe_masked_fill(&t3, t2, zero, 0.0)); /* a broadcast to [O] */
        moe_tensor_release(t2);
        t2 = NULL;
        MOE_TRYG(moe_mul(&t2, g, t3));
        st = to_input(&gin[1], t2, n->inputs[1]);
        t2 = NULL;
    }
done:
    moe_tensor_release(t1);
    moe_tensor_release(t2);
    moe_tensor_release(t3);
    moe_tensor_release(zero);
    return st;
}

moe_status moe_pow(moe_tensor **out, moe_tensor *a, moe_tensor *b)
{
    return binary_op("pow", MOE_BIN_POW, pow_backward, 1 | 2 | 4, out, a, b);
}

/* ---- where / masked_fill ---------------------------------------------------------- */

/* saved: cond. da = cond ? g : 0, db = cond ? 0 : g, each reduced to its input. */
static moe_status where_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *zero, *t;
    MOE_TRY(moe_tensor_scalar(&zero, g->dtype, g->device, 0.0));
    moe_status st = MOE_OK;
    for (int i = 0; i < 2 && st == MOE_OK; i++) {
        if (!n->inputs[i]) continue;
        st = moe_where(&t, n->saved[0], i == 0 ? g : zero, i == 0 ? zero : g);
        if (st == MOE_OK) st = to_input(&gin[i], t, n->inputs[i]);
    }
    moe_tensor_release(zero);
    return st;
}

moe_status moe_where(moe_tensor **out, moe_tensor *cond, moe_tensor *a, moe_tensor *b)
{
    MOE_TRY(check_pair("where", out, a, b));
    MOE_CHECK_NOT_NULL("where", cond);
    MOE_CHECK_SAME_DEVICE("where", cond, a);
    if (cond->dtype != MOE_BOOL)
        return moe_fail(MOE_ERR_DTYPE, "where", "condition must be bool, got %s (compare first)",
                        moe_dtype_name(cond->dtype));
    int nd0, nd;
    int64_t s0[MOE_MAX_DIMS], shape[MOE_MAX_DIMS]; /* [O] */
    MOE_TRY(moe_broadcast_shapes("where", a->ndim, a->shape, b->ndim, b->shape, &nd0, s0));
    MOE_TRY(moe_broadcast_shapes("where", cond->ndim, cond->shape, nd0, s0, &nd, shape));
    moe_dtype rt = moe_dtype_promote(a->dtype, b->dtype), ct = moe_dtype_compute(rt);
    moe_tensor *ac = NULL, *bc = NULL, *r = NULL, *res = NULL;
    moe_status st;
    MOE_TRYG(operand(&ac, a, ct));
    MOE_TRYG(operand(&bc, b, ct));
    MOE_TRYG(moe_tensor_empty(&r, ct, a->device, nd, shape));
    moe_iter it;
    const moe_tensor *ins[3] = {cond, ac, bc};
    moe_iter_init(&it, nd, shape, 3, ins);
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_where(ct, moe_tensor_data(r), moe_tensor_data(cond),
                                         moe_tensor_data(ac), moe_tensor_data(bc), &it)));
    else
        moe_cpu_where(ct, moe_tensor_data(r), moe_tensor_data(cond), moe_tensor_data(ac), moe_tensor_data(bc),
                      &it);
    st = moe_from_compute(&res, r, rt);
    r = NULL;
    if (st != MOE_OK) goto done;
    moe_tensor *inputs[2] = {a, b};
    MOE_TRYG(moe_autograd_record(res, "where", where_backward, 2, inputs, 1, &cond, NULL, NULL));
    *out = res;
    res = NULL;
done:
    moe_tensor_release(ac);
    moe_tensor_release(bc);
    moe_tensor_release(r);
    moe_tensor_release(res);
    return st;
}

/* saved: mask. da = mask ? 0 : g. */
static moe_status masked_fill_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_masked_fill(&gin[0], g, n->saved[0], 0.0);
}

moe_status moe_masked_fill(moe_tensor **out, moe_tensor *a, moe_tensor *mask, double value)
{
    MOE_TRY(check_pair("masked-fill", out, a, mask));
    if (mask->dtype != MOE_BOOL)
        return moe_fail(MOE_ERR_DTYPE, "masked-fill", "mask must be bool, got %s",
                        moe_dtype_name(mask->dtype));
    int nd;
    int64_t shape[MOE_MAX_DIMS];
    MOE_TRY(moe_broadcast_shapes("masked-fill", a->ndim, a->shape, mask->ndim, mask->shape, &nd,
                                 shape));
    if (nd != a->ndim || memcmp(shape, a->shape, sizeof(int64_t) * (size_t)nd) != 0)
        return moe_fail(MOE_ERR_SHAPE, "masked-fill", "mask %s does not broadcast to the input %s",
                        moe_shape_str(mask), moe_shape_str(a));
    moe_dtype ct = moe_dtype_compute(a->dtype);
    moe_tensor *ac = NULL, *r = NULL, *res = NULL;
    moe_status st;
    MOE_TRYG(operand(&ac, a, ct));
    MOE_TRYG(moe_tensor_empty(&r, ct, a->device, a->ndim, a->shape));
    moe_iter it;
    const moe_tensor *ins[2] = {ac, mask};
    moe_iter_init(&it, a->ndim, a->shape, 2, ins);
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_masked_fill(ct, moe_tensor_data(r), moe_tensor_data(ac),
                                               moe_tensor_data(mask), value, &it)));
    else
        moe_cpu_masked_fill(ct, moe_tensor_data(r), moe_tensor_data(ac), moe_tensor_data(mask), value, &it);
    st = moe_from_compute(&res, r, a->dtype);
    r = NULL;
    if (st != MOE_OK) goto done;
    MOE_TRYG(moe_autograd_record(res, "masked-fill", masked_fill_backward, 1, &a, 1, &mask, NULL, NULL));
    *out = res;
    res = NULL;
done:
    moe_tensor_release(ac);
    moe_tensor_release(r);
    moe_tensor_release(res);
    return st;
}

/* ---- comparisons (no grad) --------------------------------------------------------- */

static_assert((int)MOE_CMP_COUNT == (int)MOE_COMPARE_COUNT, "compare enums differ");

moe_status moe_compare_op(moe_tensor **out, moe_tensor *a, moe_tensor *b, moe_compare cmp)
{
    MOE_TRY(check_pair("compare", out, a, b));
    if ((unsigned)cmp >= MOE_COMPARE_COUNT)
        return moe_fail(MOE_ERR_ARG, "compare", "unknown comparison %d", (int)cmp);
    int nd;
    int64_t shape[MOE_MAX_DIMS]; /* [O] */
    MOE_TRY(moe_broadcast_shapes("compare", a->ndim, a->shape, b->ndim, b->shape, &nd, shape));
    moe_dtype ct = moe_dtype_compute(moe_dtype_promote(a->dtype, b->dtype));
    moe_tensor *ac = NULL, *bc = NULL, *r = NULL;
    moe_status st;
    MOE_TRYG(operand(&ac, a, ct));
    MOE_TRYG(operand(&bc, b, ct));
    MOE_TRYG(moe_tensor_empty(&r, MOE_BOOL, a->device, nd, shape));
    moe_iter it;
    const moe_tensor *ins[2] = {ac, bc};
    moe_iter_init(&it, nd, shape, 2, ins);
    if (moe_on_cuda(r))
        MOE_TRYG(MOE_CUDA(moe_cuda_compare((moe_cmp)cmp, ct, moe_tensor_data(r), moe_tensor_data(ac),
                                           moe_tensor_data(bc), &it)));
    else
        moe_cpu_compare((moe_cmp)cmp, ct, moe_tensor_data(r), moe_tensor_data(ac), moe_tensor_data(bc), &it);
    *out = r;
    r = NULL;
done:
    moe_tensor_release(ac);
    moe_tensor_release(bc);
    moe_tensor_release(r);
    return st;
}

moe_status moe_compare_scalar(moe_tensor **out, moe_tensor *a, double s, moe_compare cmp)
{
    if (!out) return moe_fail(MOE_ERR_ARG, "compare", "argument 'out' is NULL");
    *out = NULL;
    MOE_CHECK_NOT_NULL("compare", a);
    moe_tensor *sc;
    MOE_TRY(moe_tensor_scalar(&sc, moe_dtype_compute(a->dtype), a->device, s));
    moe_status st = moe_compare_op(out, a, sc, cmp);
    moe_tensor_release(sc);
    return st;
}
