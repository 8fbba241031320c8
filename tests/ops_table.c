/* ops_table.c — the rows of the op table (see ops_table.h).
 *
 * Adding an op to core/ops.h: write its op_ wrapper (the op on the views),
 * a build_ function with a few small cases (a broadcast, a transposed or
 * narrowed input where the op takes them, every option that changes the
 * backward), and a row in ot_rows; or, when it has no gradient, add its C
 * name to ot_not_differentiable. Values near a kink of the op (0 for abs
 * and relu, the bounds of clamp, ties of max and sort) would break a finite
 * difference: draw AWAY or DISTINCT values there. */
#include "ops_table.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- drawing leaves ------------------------------------------------------------- */

typedef enum vals_kind {
    V_UNIFORM,  /* uniform in [lo, hi) */
    V_AWAY,     /* in [lo, hi), at least 0.05 from every multiple of 0.25 */
    V_DISTINCT, /* a shuffle of well-spaced values in [-1, 1): no ties */
    V_INDEX,    /* i64 integers in [lo, hi) */
    V_MASK,     /* bool, about half true */
} vals_kind;

typedef struct vals {
    vals_kind kind;
    double lo, hi;
} vals;

#define U(lo, hi) ((vals){V_UNIFORM, (lo), (hi)})
#define AWAY(lo, hi) ((vals){V_AWAY, (lo), (hi)})
#define DISTINCT ((vals){V_DISTINCT, 0, 0})
#define INDEX(lo, hi) ((vals){V_INDEX, (lo), (hi)})
#define MASK ((vals){V_MASK, 0, 0})
#define S(...) ((int64_t[]){__VA_ARGS__})

static void draw(double *x, int64_t n, vals v, uint64_t seed)
{
    switch (v.kind) {
    case V_UNIFORM:
        for (int64_t i = 0; i < n; i++) x[i] = v.lo + (v.hi - v.lo) * moe_rng_uniform(seed, (uint64_t)i);
        break;
    case V_AWAY: {
        double cells = floor((v.hi - v.lo) / 0.25);
        for (int64_t i = 0; i < n; i++) {
            double j = floor(v.lo / 0.25) + floor(cells * moe_rng_uniform(seed, 2 * (uint64_t)i));
            x[i] = (j + 0.2 + 0.6 * moe_rng_uniform(seed, 2 * (uint64_t)i + 1)) * 0.25;
        }
        break;
    }
    case V_DISTINCT:
        /* rank i holds (i + 0.2 + 0.6u) * 2/n - 1: neighbours at least 0.8/n apart */
        for (int64_t i = 0; i < n; i++)
            x[i] = (i + 0.2 + 0.6 * moe_rng_uniform(seed, (uint64_t)i)) * 2.0 / (double)n - 1.0;
        for (int64_t i = n - 1; i > 0; i--) { /* Fisher–Yates */
            int64_t j = (int64_t)(moe_rng_uniform(seed + 1, (uint64_t)i) * (double)(i + 1));
            double t = x[i];
            x[i] = x[j];
            x[j] = t;
        }
        break;
    case V_INDEX:
        for (int64_t i = 0; i < n; i++) x[i] = v.lo + floor((v.hi - v.lo) * moe_rng_uniform(seed, (uint64_t)i));
        break;
    case V_MASK:
        for (int64_t i = 0; i < n; i++) x[i] = moe_rng_uniform(seed, (uint64_t)i) < 0.5;
        break;
    }
}

/* Append a leaf to case C: the op sees SHAPE through VIEW. */
static moe_status leaf(ot_case *c, ot_view view, moe_dtype dtype, int ndim, const int64_t *shape, vals v)
{
    if (c->n_in == OT_MAX_IN) return moe_fail(MOE_ERR_ARG, "op-table", "%s: more than %d inputs", c->what, OT_MAX_IN);
    int64_t ls[MOE_MAX_DIMS];
    memcpy(ls, shape, sizeof(int64_t) * (size_t)ndim);
    if (view == OT_TRANSPOSE) {
        int64_t t = ls[ndim - 1];
        ls[ndim - 1] = ls[ndim - 2];
        ls[ndim - 2] = t;
    } else if (view == OT_NARROW) {
        ls[ndim - 1] += 2;
    }
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= ls[i];
    double *x = malloc(sizeof(double) * (size_t)(n ? n : 1));
    if (!x) return moe_fail(MOE_ERR_NOMEM, "op-table", "out of memory for %lld doubles", (long long)n);
    draw(x, n, v, c->seed++ * 7919);
    moe_dtype dt = v.kind == V_INDEX ? MOE_I64 : v.kind == V_MASK ? MOE_BOOL : dtype;
    moe_tensor *d = NULL, *t = NULL;
    moe_status st = moe_tensor_from_data(&d, MOE_F64, MOE_CPU, ndim, ls, x);
    free(x);
    if (st == MOE_OK) st = moe_to_dtype(&t, d, dt);
    moe_tensor_release(d);
    if (st != MOE_OK) return st;
    c->view[c->n_in] = view;
    c->in[c->n_in++] = t;
    return MOE_OK;
}

/* Start case number *N in CASES. */
static moe_status new_case(ot_case *cases, int *n, ot_case **out, ot_op op, unsigned grad_mask,
                           const char *fmt, ...)
{
    if (*n == OT_MAX_CASES) return moe_fail(MOE_ERR_ARG, "op-table", "more than %d cases in a row", OT_MAX_CASES);
    ot_case *c = &cases[(*n)++];
    memset(c, 0, sizeof *c);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->what, sizeof c->what, fmt, ap);
    va_end(ap);
    c->op = op;
    c->grad_mask = grad_mask;
    c->seed = 101 + (uint64_t)*n;
    *out = c;
    return MOE_OK;
}

#define CASE(op, mask, ...) MOE_TRY(new_case(cases, n, &c, (op), (mask), __VA_ARGS__))
#define LEAF(view, ndim, shape, v) MOE_TRY(leaf(c, (view), dt, (ndim), (shape), (v)))

moe_status ot_run(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const ot_case *c = ctx;
    moe_tensor *v[OT_MAX_IN] = {0};
    moe_status st = MOE_OK;
    *out = NULL;
    for (int i = 0; i < c->n_in && st == MOE_OK; i++) {
        moe_tensor *t = in[i];
        if (c->view[i] == OT_TRANSPOSE)
            st = moe_transpose(&v[i], t, -2, -1);
        else if (c->view[i] == OT_NARROW)
            st = moe_narrow(&v[i], t, -1, 1, t->shape[t->ndim - 1] - 2);
        else
            v[i] = moe_tensor_retain(t);
    }
    if (st == MOE_OK) st = c->op(out, v, c);
    for (int i = 0; i < c->n_in; i++) moe_tensor_release(v[i]);
    return st;
}

void ot_cases_release(ot_case *cases, int n)
{
    for (int k = 0; k < n; k++)
        for (int i = 0; i < cases[k].n_in; i++) {
            moe_tensor_release(cases[k].in[i]);
            cases[k].in[i] = NULL;
        }
}

/* ---- elementwise ----------------------------------------------------------------- */

#define BINARY_OP(name)                                                                 \
    static moe_status op_##name(moe_tensor **out, moe_tensor **in, const ot_case *c)    \
    {                                                                                   \
        (void)c;                                                                        \
        return moe_##name(out, in[0], in[1]);                                           \
    }
BINARY_OP(add)
BINARY_OP(sub)
BINARY_OP(mul)
BINARY_OP(div)
BINARY_OP(pow)

/* Broadcasts (with a 0-d operand too) and strided operands. */
static moe_status binary_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op, vals a, vals b)
{
    ot_case *c;
    CASE(op, 3, "broadcast [2 1 3] with [4 3]");
    LEAF(OT_PLAIN, 3, S(2, 1, 3), a);
    LEAF(OT_PLAIN, 2, S(4, 3), b);
    CASE(op, 3, "[3 4] with a 0-d tensor");
    LEAF(OT_PLAIN, 2, S(3, 4), a);
    LEAF(OT_PLAIN, 0, S(0), b);
    CASE(op, 3, "transposed [3 4] with narrowed [3 4]");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), a);
    LEAF(OT_NARROW, 2, S(3, 4), b);
    CASE(op, 3, "narrowed [2 3 4] with transposed [3 1]");
    LEAF(OT_NARROW, 3, S(2, 3, 4), a);
    LEAF(OT_TRANSPOSE, 2, S(3, 1), b);
    return MOE_OK;
}

static moe_status build_add(ot_case *cases, int *n, moe_dtype dt) { return binary_cases(cases, n, dt, op_add, U(-2, 2), U(-2, 2)); }
static moe_status build_sub(ot_case *cases, int *n, moe_dtype dt) { return binary_cases(cases, n, dt, op_sub, U(-2, 2), U(-2, 2)); }
static moe_status build_mul(ot_case *cases, int *n, moe_dtype dt) { return binary_cases(cases, n, dt, op_mul, U(-2, 2), U(-2, 2)); }
static moe_status build_div(ot_case *cases, int *n, moe_dtype dt) { return binary_cases(cases, n, dt, op_div, U(-2, 2), U(0.5, 2)); }
static moe_status build_pow(ot_case *cases, int *n, moe_dtype dt) { return binary_cases(cases, n, dt, op_pow, U(0.5, 2), U(-1.5, 1.5)); }

#define SCALAR_OP(name)                                                                 \
    static moe_status op_##name(moe_tensor **out, moe_tensor **in, const ot_case *c)    \
    {                                                                                   \
        return moe_##name(out, in[0], c->darg[0]);                                      \
    }
SCALAR_OP(add_scalar)
SCALAR_OP(mul_scalar)
SCALAR_OP(rsub_scalar)
SCALAR_OP(rdiv_scalar)
SCALAR_OP(pow_scalar)

/* A plain, a transposed and a narrowed input, for each scalar in S (NS of them). */
static moe_status scalar_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op, vals a, int ns, const double *s)
{
    ot_case *c;
    for (int i = 0; i < ns; i++) {
        CASE(op, 1, "[3 4], s = %g", s[i]);
        LEAF(OT_PLAIN, 2, S(3, 4), a);
        c->darg[0] = s[i];
    }
    CASE(op, 1, "transposed [3 4], s = %g", s[0]);
    LEAF(OT_TRANSPOSE, 2, S(3, 4), a);
    c->darg[0] = s[0];
    CASE(op, 1, "narrowed [2 3], s = %g", s[0]);
    LEAF(OT_NARROW, 2, S(2, 3), a);
    c->darg[0] = s[0];
    return MOE_OK;
}

static moe_status build_add_scalar(ot_case *cases, int *n, moe_dtype dt)
{
    return scalar_cases(cases, n, dt, op_add_scalar, U(-2, 2), 1, (double[]){0.75});
}
static moe_status build_mul_scalar(ot_case *cases, int *n, moe_dtype dt)
{
    return scalar_cases(cases, n, dt, op_mul_scalar, U(-2, 2), 2, (double[]){-1.5, 0.0});
}
static moe_status build_rsub_scalar(ot_case *cases, int *n, moe_dtype dt)
{
    return scalar_cases(cases, n, dt, op_rsub_scalar, U(-2, 2), 1, (double[]){2.0});
}
static moe_status build_rdiv_scalar(ot_case *cases, int *n, moe_dtype dt)
{
    return scalar_cases(cases, n, dt, op_rdiv_scalar, U(0.5, 2), 2, (double[]){1.5, -0.5});
}
static moe_status build_pow_scalar(ot_case *cases, int *n, moe_dtype dt)
{
    return scalar_cases(cases, n, dt, op_pow_scalar, U(0.5, 2), 5, (double[]){2.0, 0.5, 3.0, -1.0, 0.0});
}

#define UNARY_OP(name)                                                                  \
    static moe_status op_##name(moe_tensor **out, moe_tensor **in, const ot_case *c)    \
    {                                                                                   \
        (void)c;                                                                        \
        return moe_##name(out, in[0]);                                                  \
    }
UNARY_OP(neg)
UNARY_OP(exp)
UNARY_OP(log)
UNARY_OP(sqrt)
UNARY_OP(rsqrt)
UNARY_OP(abs)
UNARY_OP(tanh)
UNARY_OP(sigmoid)
UNARY_OP(silu)
UNARY_OP(relu)

static moe_status unary_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op, vals a)
{
    ot_case *c;
    CASE(op, 1, "[2 3 4]");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), a);
    CASE(op, 1, "transposed [3 4]");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), a);
    CASE(op, 1, "narrowed [2 3]");
    LEAF(OT_NARROW, 2, S(2, 3), a);
    CASE(op, 1, "0-d");
    LEAF(OT_PLAIN, 0, S(0), a);
    return MOE_OK;
}

#define UNARY_BUILD(name, v)                                                            \
    static moe_status build_##name(ot_case *cases, int *n, moe_dtype dt)                \
    {                                                                                   \
        return unary_cases(cases, n, dt, op_##name, v);                                 \
    }
UNARY_BUILD(neg, U(-2, 2))
UNARY_BUILD(exp, U(-2, 2))
UNARY_BUILD(log, U(0.25, 3))
UNARY_BUILD(sqrt, U(0.25, 3))
UNARY_BUILD(rsqrt, U(0.25, 3))
UNARY_BUILD(abs, AWAY(-2, 2)) /* the kink at 0 */
UNARY_BUILD(tanh, U(-2, 2))
UNARY_BUILD(sigmoid, U(-3, 3))
UNARY_BUILD(silu, U(-3, 3))
UNARY_BUILD(relu, AWAY(-2, 2))

static moe_status op_gelu(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_gelu(out, in[0], (moe_gelu_kind)c->iarg[0]);
}

static moe_status build_gelu(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    for (int k = 0; k < MOE_GELU_KIND_COUNT; k++) {
        CASE(op_gelu, 1, "[3 4], kind %d", k);
        LEAF(OT_PLAIN, 2, S(3, 4), U(-3, 3));
        c->iarg[0] = k;
        CASE(op_gelu, 1, "transposed [3 4], kind %d", k);
        LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-3, 3));
        c->iarg[0] = k;
    }
    return MOE_OK;
}

static moe_status op_clamp(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_clamp(out, in[0], c->darg[0], c->darg[1]);
}

/* AWAY values keep off the bounds (multiples of 0.25). */
static moe_status build_clamp(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_clamp, 1, "[4 5] to [-0.5, 0.75]");
    LEAF(OT_PLAIN, 2, S(4, 5), AWAY(-1.5, 1.5));
    c->darg[0] = -0.5, c->darg[1] = 0.75;
    CASE(op_clamp, 1, "transposed [4 5] to [-inf, 0.25]");
    LEAF(OT_TRANSPOSE, 2, S(4, 5), AWAY(-1.5, 1.5));
    c->darg[0] = -INFINITY, c->darg[1] = 0.25;
    CASE(op_clamp, 1, "narrowed [3 4] to [-0.25, inf]");
    LEAF(OT_NARROW, 2, S(3, 4), AWAY(-1.5, 1.5));
    c->darg[0] = -0.25, c->darg[1] = INFINITY;
    return MOE_OK;
}

/* in: cond, a, b */
static moe_status op_where(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    (void)c;
    return moe_where(out, in[0], in[1], in[2]);
}

static moe_status build_where(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_where, 6, "cond [3 1], a [3 4], b [4]");
    LEAF(OT_PLAIN, 2, S(3, 1), MASK);
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(4), U(-2, 2));
    CASE(op_where, 6, "cond [3 4], transposed a [3 4], narrowed b [3 4]");
    LEAF(OT_PLAIN, 2, S(3, 4), MASK);
    LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-2, 2));
    LEAF(OT_NARROW, 2, S(3, 4), U(-2, 2));
    CASE(op_where, 6, "transposed cond [2 3], a [2 1], b 0-d");
    LEAF(OT_TRANSPOSE, 2, S(2, 3), MASK);
    LEAF(OT_PLAIN, 2, S(2, 1), U(-2, 2));
    LEAF(OT_PLAIN, 0, S(0), U(-2, 2));
    return MOE_OK;
}

static moe_status op_masked_fill(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_masked_fill(out, in[0], in[1], c->darg[0]);
}

static moe_status build_masked_fill(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_masked_fill, 1, "[3 4], mask [4]");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(4), MASK);
    c->darg[0] = -3.5;
    CASE(op_masked_fill, 1, "transposed [3 4], mask [3 1]");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(3, 1), MASK);
    c->darg[0] = 1.0;
    CASE(op_masked_fill, 1, "narrowed [2 3], mask [2 3]");
    LEAF(OT_NARROW, 2, S(2, 3), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(2, 3), MASK);
    c->darg[0] = 0.0;
    return MOE_OK;
}

/* A generator seeded afresh on every call: the same mask each time. */
static moe_status op_dropout(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    moe_rng rng;
    moe_rng_init(&rng, (uint64_t)c->iarg[0]);
    return moe_dropout(out, in[0], c->darg[0], c->iarg[1], &rng);
}

static moe_status build_dropout(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_dropout, 1, "[4 5], p = 0.3, training");
    LEAF(OT_PLAIN, 2, S(4, 5), U(-2, 2));
    c->darg[0] = 0.3, c->iarg[0] = 7, c->iarg[1] = 1;
    CASE(op_dropout, 1, "transposed [4 5], p = 0.5, training");
    LEAF(OT_TRANSPOSE, 2, S(4, 5), U(-2, 2));
    c->darg[0] = 0.5, c->iarg[0] = 8, c->iarg[1] = 1;
    CASE(op_dropout, 1, "[3 4], p = 0.3, evaluation");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    c->darg[0] = 0.3, c->iarg[0] = 9, c->iarg[1] = 0;
    return MOE_OK;
}

/* ---- reductions ----------------------------------------------------------------- */

/* iarg: number of dims, two dims, keepdim; darg[0]: var's correction */
static moe_status op_sum(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_sum(out, in[0], c->iarg[0], &c->iarg[1], c->iarg[3]);
}
static moe_status op_mean(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_mean(out, in[0], c->iarg[0], &c->iarg[1], c->iarg[3]);
}
static moe_status op_var(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_var(out, in[0], c->iarg[0], &c->iarg[1], (int)c->darg[0], c->iarg[3]);
}

static moe_status reduce_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op)
{
    static const struct {
        int ndims, d0, d1, keepdim, correction;
        ot_view view;
    } r[] = {{1, 1, 0, 0, 1, OT_PLAIN}, {1, -1, 0, 1, 0, OT_PLAIN}, {2, 0, 2, 0, 1, OT_PLAIN},
             {0, 0, 0, 0, 1, OT_PLAIN}, {1, 2, 0, 0, 1, OT_TRANSPOSE}, {2, 0, 1, 1, 0, OT_NARROW}};
    ot_case *c;
    for (size_t i = 0; i < sizeof r / sizeof *r; i++) {
        CASE(op, 1, "%s[2 3 4] over %d dims (%d %d)%s, correction %d",
             r[i].view == OT_TRANSPOSE ? "transposed " : r[i].view == OT_NARROW ? "narrowed " : "", r[i].ndims,
             r[i].d0, r[i].d1, r[i].keepdim ? " keepdim" : "", r[i].correction);
        LEAF(r[i].view, 3, S(2, 3, 4), U(-2, 2));
        c->iarg[0] = r[i].ndims, c->iarg[1] = r[i].d0, c->iarg[2] = r[i].d1, c->iarg[3] = r[i].keepdim;
        c->darg[0] = r[i].correction;
    }
    return MOE_OK;
}

static moe_status build_sum(ot_case *cases, int *n, moe_dtype dt) { return reduce_cases(cases, n, dt, op_sum); }
static moe_status build_mean(ot_case *cases, int *n, moe_dtype dt) { return reduce_cases(cases, n, dt, op_mean); }
static moe_status build_var(ot_case *cases, int *n, moe_dtype dt) { return reduce_cases(cases, n, dt, op_var); }

/* iarg: dim, keepdim, whether to ask for the indices too */
static moe_status extreme(moe_tensor **out, moe_tensor **in, const ot_case *c, bool is_max)
{
    moe_tensor *idx = NULL;
    moe_status st = (is_max ? moe_max : moe_min)(out, c->iarg[2] ? &idx : NULL, in[0], c->iarg[0], c->iarg[1]);
    moe_tensor_release(idx);
    return st;
}
static moe_status op_max(moe_tensor **out, moe_tensor **in, const ot_case *c) { return extreme(out, in, c, true); }
static moe_status op_min(moe_tensor **out, moe_tensor **in, const ot_case *c) { return extreme(out, in, c, false); }

/* DISTINCT values: no ties, so the arg-extreme does not move under a finite difference. */
static moe_status extreme_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op)
{
    ot_case *c;
    CASE(op, 1, "[3 4] along 1");
    LEAF(OT_PLAIN, 2, S(3, 4), DISTINCT);
    c->iarg[0] = 1, c->iarg[1] = 0, c->iarg[2] = 1;
    CASE(op, 1, "[2 3 4] along 0, keepdim");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), DISTINCT);
    c->iarg[0] = 0, c->iarg[1] = 1, c->iarg[2] = 0;
    CASE(op, 1, "transposed [3 4] along -1");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), DISTINCT);
    c->iarg[0] = -1, c->iarg[1] = 0, c->iarg[2] = 1;
    return MOE_OK;
}

static moe_status build_max(ot_case *cases, int *n, moe_dtype dt) { return extreme_cases(cases, n, dt, op_max); }
static moe_status build_min(ot_case *cases, int *n, moe_dtype dt) { return extreme_cases(cases, n, dt, op_min); }

UNARY_OP(max_all)
UNARY_OP(min_all)

static moe_status extreme_all_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op)
{
    ot_case *c;
    CASE(op, 1, "[3 4]");
    LEAF(OT_PLAIN, 2, S(3, 4), DISTINCT);
    CASE(op, 1, "transposed [2 5]");
    LEAF(OT_TRANSPOSE, 2, S(2, 5), DISTINCT);
    return MOE_OK;
}

static moe_status build_max_all(ot_case *cases, int *n, moe_dtype dt) { return extreme_all_cases(cases, n, dt, op_max_all); }
static moe_status build_min_all(ot_case *cases, int *n, moe_dtype dt) { return extreme_all_cases(cases, n, dt, op_min_all); }

/* iarg: dim, keepdim (logsumexp) */
static moe_status op_softmax(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_softmax(out, in[0], c->iarg[0]);
}
static moe_status op_log_softmax(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_log_softmax(out, in[0], c->iarg[0]);
}
static moe_status op_logsumexp(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_logsumexp(out, in[0], c->iarg[0], c->iarg[1]);
}
static moe_status op_cumsum(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_cumsum(out, in[0], c->iarg[0]);
}

/* Along the last dim, an inner dim, the first dim, and a strided input. */
static moe_status dim_cases(ot_case *cases, int *n, moe_dtype dt, ot_op op)
{
    static const struct {
        int dim, keepdim;
        ot_view view;
    } r[] = {{-1, 0, OT_PLAIN}, {1, 1, OT_PLAIN}, {0, 0, OT_PLAIN}, {2, 0, OT_TRANSPOSE}, {1, 1, OT_NARROW}};
    ot_case *c;
    for (size_t i = 0; i < sizeof r / sizeof *r; i++) {
        CASE(op, 1, "%s[2 3 4] along %d%s",
             r[i].view == OT_TRANSPOSE ? "transposed " : r[i].view == OT_NARROW ? "narrowed " : "", r[i].dim,
             r[i].keepdim ? " keepdim" : "");
        LEAF(r[i].view, 3, S(2, 3, 4), U(-3, 3));
        c->iarg[0] = r[i].dim, c->iarg[1] = r[i].keepdim;
    }
    return MOE_OK;
}

static moe_status build_softmax(ot_case *cases, int *n, moe_dtype dt) { return dim_cases(cases, n, dt, op_softmax); }
static moe_status build_log_softmax(ot_case *cases, int *n, moe_dtype dt) { return dim_cases(cases, n, dt, op_log_softmax); }
static moe_status build_logsumexp(ot_case *cases, int *n, moe_dtype dt) { return dim_cases(cases, n, dt, op_logsumexp); }
static moe_status build_cumsum(ot_case *cases, int *n, moe_dtype dt) { return dim_cases(cases, n, dt, op_cumsum); }

/* iarg: the target's ndim and up to three sizes */
static moe_status op_sum_to_shape(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    int64_t shape[3] = {c->iarg[1], c->iarg[2], c->iarg[3]};
    return moe_sum_to_shape(out, in[0], c->iarg[0], shape);
}

static moe_status build_sum_to_shape(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_sum_to_shape, 1, "[2 3 4] to [3 1]");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), U(-2, 2));
    c->iarg[0] = 2, c->iarg[1] = 3, c->iarg[2] = 1;
    CASE(op_sum_to_shape, 1, "[2 3 4] to [4]");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), U(-2, 2));
    c->iarg[0] = 1, c->iarg[1] = 4;
    CASE(op_sum_to_shape, 1, "transposed [2 3 4] to [1 3 1]");
    LEAF(OT_TRANSPOSE, 3, S(2, 3, 4), U(-2, 2));
    c->iarg[0] = 3, c->iarg[1] = 1, c->iarg[2] = 3, c->iarg[3] = 1;
    return MOE_OK;
}

/* ---- linear algebra ------------------------------------------------------------- */

BINARY_OP(matmul)
BINARY_OP(bmm)

static moe_status build_matmul(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_matmul, 3, "[3 4] @ [4 2]");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(4, 2), U(-1, 1));
    CASE(op_matmul, 3, "[4] @ [4 2]");
    LEAF(OT_PLAIN, 1, S(4), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(4, 2), U(-1, 1));
    CASE(op_matmul, 3, "[3 4] @ [4]");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 1, S(4), U(-1, 1));
    CASE(op_matmul, 3, "[2 3 4] @ [4 5] (batch broadcast)");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(4, 5), U(-1, 1));
    CASE(op_matmul, 3, "[2 1 3 4] @ [3 4 2]");
    LEAF(OT_PLAIN, 4, S(2, 1, 3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 3, S(3, 4, 2), U(-1, 1));
    CASE(op_matmul, 3, "transposed [3 4] @ transposed [4 2]");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-1, 1));
    LEAF(OT_TRANSPOSE, 2, S(4, 2), U(-1, 1));
    CASE(op_matmul, 3, "narrowed [2 3 4] @ narrowed [4 3]");
    LEAF(OT_NARROW, 3, S(2, 3, 4), U(-1, 1));
    LEAF(OT_NARROW, 2, S(4, 3), U(-1, 1));
    return MOE_OK;
}

static moe_status build_bmm(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_bmm, 3, "[2 3 4] @ [2 4 5]");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 3, S(2, 4, 5), U(-1, 1));
    CASE(op_bmm, 3, "transposed [2 3 4] @ narrowed [2 4 2]");
    LEAF(OT_TRANSPOSE, 3, S(2, 3, 4), U(-1, 1));
    LEAF(OT_NARROW, 3, S(2, 4, 2), U(-1, 1));
    return MOE_OK;
}

/* in: x, w, and bias when there are three */
static moe_status op_linear(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_linear(out, in[0], in[1], c->n_in > 2 ? in[2] : NULL);
}

static moe_status build_linear(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_linear, 7, "x [2 3 4], w [5 4], bias [5]");
    LEAF(OT_PLAIN, 3, S(2, 3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(5, 4), U(-1, 1));
    LEAF(OT_PLAIN, 1, S(5), U(-1, 1));
    CASE(op_linear, 3, "x [3 4], w [2 4], no bias");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(2, 4), U(-1, 1));
    CASE(op_linear, 7, "transposed x [3 4], transposed w [5 4], narrowed bias [5]");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-1, 1));
    LEAF(OT_TRANSPOSE, 2, S(5, 4), U(-1, 1));
    LEAF(OT_NARROW, 1, S(5), U(-1, 1));
    CASE(op_linear, 5, "x [4], w [3 4], bias [3]; w constant");
    LEAF(OT_PLAIN, 1, S(4), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(3, 4), U(-1, 1));
    LEAF(OT_PLAIN, 1, S(3), U(-1, 1));
    return MOE_OK;
}

/* ---- neural-net ops ------------------------------------------------------------- */

/* in: x and weight when there are two; darg[0]: eps */
static moe_status op_rms_norm(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_rms_norm(out, in[0], c->n_in > 1 ? in[1] : NULL, c->darg[0]);
}

static moe_status build_rms_norm(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_rms_norm, 3, "x [2 3 5], weight [5]");
    LEAF(OT_PLAIN, 3, S(2, 3, 5), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(5), U(0.5, 1.5));
    c->darg[0] = 1e-5;
    CASE(op_rms_norm, 1, "x [3 4], no weight, eps 0.1");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    c->darg[0] = 0.1;
    CASE(op_rms_norm, 3, "transposed x [4 3], narrowed weight [3]");
    LEAF(OT_TRANSPOSE, 2, S(4, 3), U(-2, 2));
    LEAF(OT_NARROW, 1, S(3), U(0.5, 1.5));
    c->darg[0] = 1e-6;
    return MOE_OK;
}

/* in: x, then weight and bias as iarg[0] and iarg[1] say; darg[0]: eps */
static moe_status op_layer_norm(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    moe_tensor *w = c->iarg[0] ? in[1] : NULL, *b = c->iarg[1] ? in[1 + c->iarg[0]] : NULL;
    return moe_layer_norm(out, in[0], w, b, c->darg[0]);
}

static moe_status build_layer_norm(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_layer_norm, 7, "x [2 3 5], weight [5], bias [5]");
    LEAF(OT_PLAIN, 3, S(2, 3, 5), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(5), U(0.5, 1.5));
    LEAF(OT_PLAIN, 1, S(5), U(-1, 1));
    c->iarg[0] = 1, c->iarg[1] = 1, c->darg[0] = 1e-5;
    CASE(op_layer_norm, 1, "x [3 4], eps 0.1");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    c->darg[0] = 0.1;
    CASE(op_layer_norm, 3, "transposed x [4 3], bias [3]");
    LEAF(OT_TRANSPOSE, 2, S(4, 3), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(3), U(-1, 1));
    c->iarg[1] = 1, c->darg[0] = 1e-5;
    CASE(op_layer_norm, 3, "narrowed x [3 4], weight [4]");
    LEAF(OT_NARROW, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(4), U(0.5, 1.5));
    c->iarg[0] = 1, c->darg[0] = 1e-5;
    return MOE_OK;
}

/* in: logits, targets; iarg[0]: the ignored target */
static moe_status op_cross_entropy(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_cross_entropy(out, in[0], in[1], c->iarg[0]);
}

/* Targets drawn from [-1, C): the -1s are ignored. */
static moe_status build_cross_entropy(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_cross_entropy, 1, "logits [6 5], some targets ignored");
    LEAF(OT_PLAIN, 2, S(6, 5), U(-3, 3));
    LEAF(OT_PLAIN, 1, S(6), INDEX(-1, 5));
    c->iarg[0] = -1;
    CASE(op_cross_entropy, 1, "transposed logits [4 3]");
    LEAF(OT_TRANSPOSE, 2, S(4, 3), U(-3, 3));
    LEAF(OT_PLAIN, 1, S(4), INDEX(0, 3));
    c->iarg[0] = -100;
    CASE(op_cross_entropy, 1, "narrowed logits [3 4]");
    LEAF(OT_NARROW, 2, S(3, 4), U(-3, 3));
    LEAF(OT_PLAIN, 1, S(3), INDEX(0, 4));
    c->iarg[0] = -100;
    return MOE_OK;
}

/* in: weight, ids */
BINARY_OP(embedding)

static moe_status build_embedding(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_embedding, 1, "weight [6 3], ids [2 4] (repeats)");
    LEAF(OT_PLAIN, 2, S(6, 3), U(-1, 1));
    LEAF(OT_PLAIN, 2, S(2, 4), INDEX(0, 6));
    CASE(op_embedding, 1, "transposed weight [5 4], ids [7]");
    LEAF(OT_TRANSPOSE, 2, S(5, 4), U(-1, 1));
    LEAF(OT_PLAIN, 1, S(7), INDEX(0, 5));
    CASE(op_embedding, 1, "narrowed weight [4 2], transposed ids [3 2]");
    LEAF(OT_NARROW, 2, S(4, 2), U(-1, 1));
    LEAF(OT_TRANSPOSE, 2, S(3, 2), INDEX(0, 4));
    return MOE_OK;
}

/* ---- indexing and shape --------------------------------------------------------- */

/* in: a, index (, src); iarg[0]: dim */
static moe_status op_gather(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_gather(out, in[0], c->iarg[0], in[1]);
}
static moe_status op_scatter_add(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_scatter_add(out, in[0], c->iarg[0], in[1], in[2]);
}
static moe_status op_index_select(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_index_select(out, in[0], c->iarg[0], in[1]);
}
static moe_status op_index_add(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_index_add(out, in[0], c->iarg[0], in[1], in[2]);
}

static moe_status build_gather(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_gather, 1, "[3 4] along 0, index [2 4]");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(2, 4), INDEX(0, 3));
    c->iarg[0] = 0;
    CASE(op_gather, 1, "transposed [3 4] along 1, index [3 6] (repeats)");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(3, 6), INDEX(0, 4));
    c->iarg[0] = 1;
    CASE(op_gather, 1, "narrowed [2 3 4] along -1, index [2 3 2]");
    LEAF(OT_NARROW, 3, S(2, 3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 3, S(2, 3, 2), INDEX(0, 4));
    c->iarg[0] = -1;
    return MOE_OK;
}

static moe_status build_scatter_add(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_scatter_add, 5, "[3 4] along 0, index [2 4], src [2 4]");
    LEAF(OT_PLAIN, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(2, 4), INDEX(0, 3));
    LEAF(OT_PLAIN, 2, S(2, 4), U(-2, 2));
    c->iarg[0] = 0;
    CASE(op_scatter_add, 5, "transposed [3 4] along 1, index [3 5] (repeats), narrowed src [3 5]");
    LEAF(OT_TRANSPOSE, 2, S(3, 4), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(3, 5), INDEX(0, 4));
    LEAF(OT_NARROW, 2, S(3, 5), U(-2, 2));
    c->iarg[0] = 1;
    return MOE_OK;
}

static moe_status build_index_select(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_index_select, 1, "[4 3] along 0, index [5] (repeats)");
    LEAF(OT_PLAIN, 2, S(4, 3), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(5), INDEX(0, 4));
    c->iarg[0] = 0;
    CASE(op_index_select, 1, "transposed [4 3] along 1, index [2]");
    LEAF(OT_TRANSPOSE, 2, S(4, 3), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(2), INDEX(0, 3));
    c->iarg[0] = 1;
    CASE(op_index_select, 1, "narrowed [2 3 4] along 1, narrowed index [4]");
    LEAF(OT_NARROW, 3, S(2, 3, 4), U(-2, 2));
    LEAF(OT_NARROW, 1, S(4), INDEX(0, 3));
    c->iarg[0] = 1;
    return MOE_OK;
}

static moe_status build_index_add(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_index_add, 5, "[4 3] along 0, index [5] (repeats), src [5 3]");
    LEAF(OT_PLAIN, 2, S(4, 3), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(5), INDEX(0, 4));
    LEAF(OT_PLAIN, 2, S(5, 3), U(-2, 2));
    c->iarg[0] = 0;
    CASE(op_index_add, 5, "transposed [4 3] along 1, index [4], transposed src [4 4]");
    LEAF(OT_TRANSPOSE, 2, S(4, 3), U(-2, 2));
    LEAF(OT_PLAIN, 1, S(4), INDEX(0, 3));
    LEAF(OT_TRANSPOSE, 2, S(4, 4), U(-2, 2));
    c->iarg[0] = 1;
    return MOE_OK;
}

/* in: the pieces; iarg[0]: dim */
static moe_status op_cat(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_cat(out, c->n_in, in, c->iarg[0]);
}
static moe_status op_stack(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_stack(out, c->n_in, in, c->iarg[0]);
}

static moe_status build_cat(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_cat, 7, "[2 3] [1 3] [4 3] along 0");
    LEAF(OT_PLAIN, 2, S(2, 3), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(1, 3), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(4, 3), U(-2, 2));
    c->iarg[0] = 0;
    CASE(op_cat, 3, "transposed [3 2], narrowed [3 4] along -1");
    LEAF(OT_TRANSPOSE, 2, S(3, 2), U(-2, 2));
    LEAF(OT_NARROW, 2, S(3, 4), U(-2, 2));
    c->iarg[0] = -1;
    CASE(op_cat, 2, "[2 2 3] (constant), [2 1 3], [2 0 3] (empty, constant) along 1");
    LEAF(OT_PLAIN, 3, S(2, 2, 3), U(-2, 2));
    LEAF(OT_PLAIN, 3, S(2, 1, 3), U(-2, 2));
    LEAF(OT_PLAIN, 3, S(2, 0, 3), U(-2, 2));
    c->iarg[0] = 1;
    return MOE_OK;
}

static moe_status build_stack(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_stack, 7, "three [2 3] along 0");
    LEAF(OT_PLAIN, 2, S(2, 3), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(2, 3), U(-2, 2));
    LEAF(OT_PLAIN, 2, S(2, 3), U(-2, 2));
    c->iarg[0] = 0;
    CASE(op_stack, 3, "transposed [2 3], narrowed [2 3] along -1");
    LEAF(OT_TRANSPOSE, 2, S(2, 3), U(-2, 2));
    LEAF(OT_NARROW, 2, S(2, 3), U(-2, 2));
    c->iarg[0] = -1;
    return MOE_OK;
}

/* iarg: dim, which piece to return, the two sizes */
static moe_status op_split(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    moe_tensor *pieces[2] = {0};
    int64_t sizes[2] = {c->iarg[2], c->iarg[3]};
    MOE_TRY(moe_split(pieces, in[0], 2, sizes, c->iarg[0]));
    *out = pieces[c->iarg[1]];
    moe_tensor_release(pieces[1 - c->iarg[1]]);
    return MOE_OK;
}

static moe_status build_split(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    for (int piece = 0; piece < 2; piece++) {
        CASE(op_split, 1, "[5 3] into 2 + 3 along 0, piece %d", piece);
        LEAF(OT_PLAIN, 2, S(5, 3), U(-2, 2));
        c->iarg[0] = 0, c->iarg[1] = piece, c->iarg[2] = 2, c->iarg[3] = 3;
    }
    CASE(op_split, 1, "transposed [3 5] into 1 + 4 along 1, piece 1");
    LEAF(OT_TRANSPOSE, 2, S(3, 5), U(-2, 2));
    c->iarg[0] = 1, c->iarg[1] = 1, c->iarg[2] = 1, c->iarg[3] = 4;
    return MOE_OK;
}

/* iarg: k, dim, largest (topk); dim, descending (sort) */
static moe_status op_topk(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    moe_tensor *idx = NULL;
    moe_status st = moe_topk(out, &idx, in[0], c->iarg[0], c->iarg[1], c->iarg[2]);
    moe_tensor_release(idx);
    return st;
}
static moe_status op_sort(moe_tensor **out, moe_tensor **in, const ot_case *c)
{
    return moe_sort(out, NULL, in[0], c->iarg[0], c->iarg[1]);
}

/* DISTINCT values: the order does not change under a finite difference. */
static moe_status build_topk(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_topk, 1, "[3 6] k 2 largest along 1");
    LEAF(OT_PLAIN, 2, S(3, 6), DISTINCT);
    c->iarg[0] = 2, c->iarg[1] = 1, c->iarg[2] = 1;
    CASE(op_topk, 1, "[5 3] k 3 smallest along 0");
    LEAF(OT_PLAIN, 2, S(5, 3), DISTINCT);
    c->iarg[0] = 3, c->iarg[1] = 0, c->iarg[2] = 0;
    CASE(op_topk, 1, "transposed [3 5] k 1 largest along -1");
    LEAF(OT_TRANSPOSE, 2, S(3, 5), DISTINCT);
    c->iarg[0] = 1, c->iarg[1] = -1, c->iarg[2] = 1;
    return MOE_OK;
}

static moe_status build_sort(ot_case *cases, int *n, moe_dtype dt)
{
    ot_case *c;
    CASE(op_sort, 1, "[3 5] descending along 1");
    LEAF(OT_PLAIN, 2, S(3, 5), DISTINCT);
    c->iarg[0] = 1, c->iarg[1] = 1;
    CASE(op_sort, 1, "[4 3] ascending along 0");
    LEAF(OT_PLAIN, 2, S(4, 3), DISTINCT);
    c->iarg[0] = 0, c->iarg[1] = 0;
    CASE(op_sort, 1, "narrowed [2 4] ascending along -1");
    LEAF(OT_NARROW, 2, S(2, 4), DISTINCT);
    c->iarg[0] = -1, c->iarg[1] = 0;
    return MOE_OK;
}

/* ---- the table ------------------------------------------------------------------ */

#define ROW(cname, sname, arity) {#cname, sname, arity, build_##cname}

const ot_row ot_rows[] = {
    /* elementwise */
    ROW(add, "add", 2),
    ROW(sub, "sub", 2),
    ROW(mul, "mul", 2),
    ROW(div, "div", 2),
    ROW(pow, "pow", 2),
    ROW(add_scalar, "add-scalar", 1),
    ROW(mul_scalar, "mul-scalar", 1),
    ROW(rsub_scalar, "rsub-scalar", 1),
    ROW(rdiv_scalar, "rdiv-scalar", 1),
    ROW(pow_scalar, "pow-scalar", 1),
    ROW(neg, "neg", 1),
    ROW(exp, "exp", 1),
    ROW(log, "log", 1),
    ROW(sqrt, "sqrt", 1),
    ROW(rsqrt, "rsqrt", 1),
    ROW(abs, "abs", 1),
    ROW(tanh, "tanh", 1),
    ROW(sigmoid, "sigmoid", 1),
    ROW(silu, "silu", 1),
    ROW(relu, "relu", 1),
    ROW(gelu, "gelu", 1),
    ROW(clamp, "clamp", 1),
    ROW(where, "where", 3),
    ROW(masked_fill, "masked-fill", 2),
    ROW(dropout, "dropout", 1),
    /* reductions */
    ROW(sum, "sum", 1),
    ROW(mean, "mean", 1),
    ROW(var, "var", 1),
    ROW(max, "max", 1),
    ROW(min, "min", 1),
    ROW(max_all, "max-all", 1),
    ROW(min_all, "min-all", 1),
    ROW(softmax, "softmax", 1),
    ROW(log_softmax, "log-softmax", 1),
    ROW(logsumexp, "logsumexp", 1),
    ROW(cumsum, "cumsum", 1),
    ROW(sum_to_shape, "sum-to-shape", 1),
    /* linear algebra */
    ROW(matmul, "matmul", 2),
    ROW(bmm, "bmm", 2),
    ROW(linear, "linear", 3),
    /* neural-net ops */
    ROW(rms_norm, "rms-norm", 2),
    ROW(layer_norm, "layer-norm", 3),
    ROW(cross_entropy, "cross-entropy", 2),
    ROW(embedding, "embedding", 2),
    /* indexing and shape */
    ROW(gather, "gather", 2),
    ROW(scatter_add, "scatter-add", 3),
    ROW(index_select, "index-select", 2),
    ROW(index_add, "index-add", 3),
    ROW(cat, "cat", -1),
    ROW(stack, "stack", -1),
    ROW(split, "split", 1),
    ROW(topk, "topk", 1),
    ROW(sort, "sort", 1),
};
const int ot_n_rows = (int)(sizeof ot_rows / sizeof *ot_rows);

const char *const ot_not_differentiable[] = {
    "compare_op", "compare_scalar", "count_nonfinite", "argmax", "one_hot", "argsort", "bincount", "histogram",
};
const int ot_n_not_differentiable = (int)(sizeof ot_not_differentiable / sizeof *ot_not_differentiable);
