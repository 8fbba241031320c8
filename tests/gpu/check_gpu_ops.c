/* check_gpu_ops.c — the core ops on the GPU against the CPU, forward and
 * backward, in f32 and bf16: creation and copies, element access, the
 * elementwise family (broadcast and strided inputs), reductions, the
 * softmax family, dropout, and the caching allocator; then every case of
 * the op table (tests/ops_table.c) in f64 and f32. Skips without a GPU
 * (MOELAB_GPU_TEST_ON_CPU=1 runs it CPU against CPU: see gpucheck.h). */
#include "gpucheck.h"

#include "../ops_table.h"

#include "config.h"
#ifdef MOELAB_HAVE_CUDA
#include "../../kernels/cuda/cuda.h"
#endif

static const moe_dtype dtypes[] = {MOE_F32, MOE_BF16};
#define N_DTYPES 2

typedef moe_status (*binary_fn)(moe_tensor **, moe_tensor *, moe_tensor *);
typedef moe_status (*unary_fn)(moe_tensor **, moe_tensor *);

/* ---- callbacks for gc_check ----------------------------------------------------- */

static moe_status run_binary(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return (*(binary_fn *)ctx)(out, in[0], in[1]);
}

/* The second input read through a transpose: a strided operand. */
static moe_status run_binary_t(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *bt;
    MOE_TRY(moe_transpose(&bt, in[1], 0, 1));
    moe_status st = (*(binary_fn *)ctx)(out, in[0], bt);
    moe_tensor_release(bt);
    return st;
}

static moe_status run_unary(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return (*(unary_fn *)ctx)(out, in[0]);
}

typedef struct scalar_case {
    const char *name;
    moe_status (*fn)(moe_tensor **, moe_tensor *, double);
    double s;
} scalar_case;

static moe_status run_scalar(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const scalar_case *c = ctx;
    return c->fn(out, in[0], c->s);
}

static moe_status run_clamp(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_clamp(out, in[0], -0.5, 0.7);
}

static moe_status run_gelu_tanh(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_gelu(out, in[0], MOE_GELU_TANH);
}

static moe_status run_gelu_erf(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_gelu(out, in[0], MOE_GELU_ERF);
}

/* compare(a > b) as the condition of where(a, b): a max in disguise. */
static moe_status run_where(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    moe_tensor *c;
    MOE_TRY(moe_compare_op(&c, in[0], in[1], MOE_GT));
    moe_status st = moe_where(out, c, in[0], in[1]);
    moe_tensor_release(c);
    return st;
}

static moe_status run_compare(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_compare_op(out, in[0], in[1], *(moe_compare *)ctx);
}

static moe_status run_masked_fill(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    moe_tensor *m;
    MOE_TRY(moe_compare_scalar(&m, in[1], 0.0, MOE_LT));
    moe_status st = moe_masked_fill(out, in[0], m, -3.5);
    moe_tensor_release(m);
    return st;
}

typedef struct reduce_case {
    int ndims;
    int dims[2];
    bool keepdim;
    int kind; /* 0 sum, 1 mean, 2 var, 3 max values, 4 min values, 5 max-all, 6 cumsum, 7 argmax */
} reduce_case;

static moe_status run_reduce(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const reduce_case *c = ctx;
    switch (c->kind) {
    case 0: return moe_sum(out, in[0], c->ndims, c->dims, c->keepdim);
    case 1: return moe_mean(out, in[0], c->ndims, c->dims, c->keepdim);
    case 2: return moe_var(out, in[0], c->ndims, c->dims, 1, c->keepdim);
    case 3: return moe_max(out, NULL, in[0], c->dims[0], c->keepdim);
    case 4: return moe_min(out, NULL, in[0], c->dims[0], c->keepdim);
    case 5: return moe_max_all(out, in[0]);
    case 6: return moe_cumsum(out, in[0], c->dims[0]);
    default: return moe_argmax(out, in[0], c->dims[0], c->keepdim);
    }
}

typedef struct softmax_case {
    int dim;
    int kind; /* 0 softmax, 1 log-softmax, 2 logsumexp */
} softmax_case;

static moe_status run_softmax(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const softmax_case *c = ctx;
    if (c->kind == 0) return moe_softmax(out, in[0], c->dim);
    if (c->kind == 1) return moe_log_softmax(out, in[0], c->dim);
    return moe_logsumexp(out, in[0], c->dim, false);
}

/* ---- creation, copies, element access ------------------------------------------------ */

START_TEST(test_creation)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        moe_tensor *c, *g;
        OK(moe_tensor_full(&c, dt, MOE_CPU, 2, SHAPE(33, 7), 1.3));
        OK(moe_tensor_full(&g, dt, gc_dev, 2, SHAPE(33, 7), 1.3));
        gc_compare("full", g, c, 0);
        RELEASE(c, g);
        OK(moe_tensor_arange(&c, dt, MOE_CPU, -2, 5, 0.25));
        OK(moe_tensor_arange(&g, dt, gc_dev, -2, 5, 0.25));
        gc_compare("arange", g, c, 0);
        RELEASE(c, g);
        OK(moe_tensor_eye(&c, dt, MOE_CPU, 5, 7));
        OK(moe_tensor_eye(&g, dt, gc_dev, 5, 7));
        gc_compare("eye", g, c, 0);
        RELEASE(c, g);
        moe_rng r1, r2;
        moe_rng_init(&r1, 9);
        moe_rng_init(&r2, 9);
        OK(moe_tensor_randn(&c, &r1, dt, MOE_CPU, 2, SHAPE(100, 3)));
        OK(moe_tensor_randn(&g, &r2, dt, gc_dev, 2, SHAPE(100, 3)));
        gc_compare("randn (same seed: equal bits)", g, c, 0);
        RELEASE(c, g);
    }
    moe_rng r1, r2;
    moe_rng_init(&r1, 5);
    moe_rng_init(&r2, 5);
    moe_tensor *c, *g;
    OK(moe_tensor_permutation(&c, &r1, MOE_CPU, 50));
    OK(moe_tensor_permutation(&g, &r2, gc_dev, 50));
    gc_compare("permutation", g, c, 0);
    RELEASE(c, g);
    OK(moe_tensor_randint(&c, &r1, MOE_I64, MOE_CPU, -4, 9, 1, SHAPE(64)));
    OK(moe_tensor_randint(&g, &r2, MOE_I64, gc_dev, -4, 9, 1, SHAPE(64)));
    gc_compare("randint", g, c, 0);
    RELEASE(c, g);
}
END_TEST

START_TEST(test_copies)
{
    moe_tensor *x = gc_uniform(MOE_F32, 3, SHAPE(6, 5, 4), 1, -3, 3), *xg = gc_to_dev(x);
    /* non-contiguous views made contiguous on the device */
    int perm[3] = {2, 0, 1};
    moe_tensor *pc, *pg, *cc, *cg;
    OK(moe_permute(&pc, x, perm));
    OK(moe_permute(&pg, xg, perm));
    OK(moe_contiguous(&cc, pc));
    OK(moe_contiguous(&cg, pg));
    ck_assert(moe_tensor_is_contiguous(cg));
    gc_compare("contiguous(permute)", cg, cc, 0);
    RELEASE(pc, pg, cc, cg);
    moe_tensor *nc, *ng;
    OK(moe_narrow(&nc, x, 1, 1, 3));
    OK(moe_narrow(&ng, xg, 1, 1, 3));
    OK(moe_clone(&cc, nc));
    OK(moe_clone(&cg, ng));
    gc_compare("clone(narrow)", cg, cc, 0);
    RELEASE(nc, ng, cc, cg);
    /* every dtype pair converts as on the host */
    moe_dtype all[] = {MOE_F32, MOE_F64, MOE_BF16, MOE_I32, MOE_I64, MOE_BOOL};
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 6; j++) {
            moe_tensor *ac, *ag, *bc, *bg;
            OK(moe_to_dtype(&ac, x, all[i]));
            OK(moe_to_dtype(&ag, xg, all[i]));
            OK(moe_to_dtype(&bc, ac, all[j]));
            OK(moe_to_dtype(&bg, ag, all[j]));
            char what[64];
            snprintf(what, sizeof what, "to-dtype %s -> %s", moe_dtype_name(all[i]), moe_dtype_name(all[j]));
            gc_compare(what, bg, bc, 0);
            RELEASE(ac, ag, bc, bg);
        }
    /* copy! with a broadcast source into a strided destination */
    moe_tensor *dc, *dg, *sc, *sg, *vc, *vg;
    OK(moe_tensor_zeros(&dc, MOE_BF16, MOE_CPU, 2, SHAPE(4, 6)));
    OK(moe_tensor_zeros(&dg, MOE_BF16, gc_dev, 2, SHAPE(4, 6)));
    sc = gc_uniform(MOE_F32, 1, SHAPE(4), 3, -1, 1);
    sg = gc_to_dev(sc);
    OK(moe_transpose(&vc, dc, 0, 1));
    OK(moe_transpose(&vg, dg, 0, 1));
    OK(moe_tensor_copy_(vc, sc));
    OK(moe_tensor_copy_(vg, sg));
    gc_compare("copy! broadcast into transpose", dg, dc, 0);
    OK(moe_tensor_fill_(vg, 2.5));
    OK(moe_tensor_fill_(vc, 2.5));
    gc_compare("fill! strided", dg, dc, 0);
    RELEASE(dc, dg, sc, sg, vc, vg);
    /* element access through the host */
    double v;
    OK(moe_tensor_get(xg, SHAPE(2, 3, 1), &v));
    double e;
    OK(moe_tensor_get(x, SHAPE(2, 3, 1), &e));
    ck_assert_msg(v == e, "tensor-ref on the device: %g, expected %g", v, e);
    OK(moe_tensor_set(xg, SHAPE(0, 0, 0), 7.25));
    OK(moe_tensor_get(xg, SHAPE(0, 0, 0), &v));
    ck_assert_msg(v == 7.25, "tensor-set then ref: %g", v);
    RELEASE(x, xg);
}
END_TEST

/* ---- elementwise ------------------------------------------------------------------ */

START_TEST(test_binary)
{
    static const struct {
        const char *name;
        binary_fn fn;
        bool positive; /* pow: a positive base */
    } ops[] = {{"add", moe_add, false}, {"sub", moe_sub, false}, {"mul", moe_mul, false},
               {"div", moe_div, false}, {"pow", moe_pow, true}};
    for (int k = 0; k < N_DTYPES; k++)
        for (size_t o = 0; o < sizeof ops / sizeof *ops; o++) {
            moe_dtype dt = dtypes[k];
            double lo = ops[o].positive ? 0.5 : -2;
            char name[64];
            /* broadcast [4 1 5] with [3 5] */
            moe_tensor *in[2] = {gc_uniform(dt, 3, SHAPE(4, 1, 5), 10 + o, lo, 2),
                                 gc_uniform(dt, 2, SHAPE(3, 5), 20 + o, 0.5, 2)};
            snprintf(name, sizeof name, "%s broadcast", ops[o].name);
            binary_fn f = ops[o].fn;
            gc_check(name, run_binary, &f, 2, in, 3, GC_TOL(dt));
            RELEASE(in[0], in[1]);
            /* a strided second operand, and a long flat pair */
            moe_tensor *in2[2] = {gc_uniform(dt, 2, SHAPE(37, 29), 30 + o, lo, 2),
                                  gc_uniform(dt, 2, SHAPE(29, 37), 40 + o, 0.5, 2)};
            snprintf(name, sizeof name, "%s transposed", ops[o].name);
            gc_check(name, run_binary_t, &f, 2, in2, 3, GC_TOL(dt));
            RELEASE(in2[0], in2[1]);
            moe_tensor *in3[2] = {gc_uniform(dt, 1, SHAPE(100003), 50 + o, lo, 2),
                                  gc_uniform(dt, 1, SHAPE(100003), 60 + o, 0.5, 2)};
            snprintf(name, sizeof name, "%s flat", ops[o].name);
            gc_check(name, run_binary, &f, 2, in3, 3, GC_TOL(dt));
            RELEASE(in3[0], in3[1]);
        }
}
END_TEST

START_TEST(test_unary)
{
    static const struct {
        const char *name;
        unary_fn fn;
        bool positive;
    } ops[] = {{"neg", moe_neg, false},         {"exp", moe_exp, false},   {"log", moe_log, true},
               {"sqrt", moe_sqrt, true},        {"rsqrt", moe_rsqrt, true}, {"abs", moe_abs, false},
               {"tanh", moe_tanh, false},       {"sigmoid", moe_sigmoid, false},
               {"silu", moe_silu, false},       {"relu", moe_relu, false}};
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        for (size_t o = 0; o < sizeof ops / sizeof *ops; o++) {
            moe_tensor *in[1] = {gc_uniform(dt, 2, SHAPE(37, 19), 70 + o, ops[o].positive ? 0.25 : -3, 3)};
            unary_fn f = ops[o].fn;
            gc_check(ops[o].name, run_unary, &f, 1, in, 1, GC_TOL(dt));
            /* strided input */
            moe_tensor *t;
            OK(moe_transpose(&t, in[0], 0, 1));
            char name[64];
            snprintf(name, sizeof name, "%s transposed", ops[o].name);
            moe_tensor *tin[1] = {t};
            gc_check(name, run_unary, &f, 1, tin, 1, GC_TOL(dt));
            RELEASE(in[0], t);
        }
        moe_tensor *in[1] = {gc_uniform(dt, 2, SHAPE(41, 13), 90, -3, 3)};
        gc_check("clamp", run_clamp, NULL, 1, in, 1, GC_TOL(dt));
        gc_check("gelu tanh", run_gelu_tanh, NULL, 1, in, 1, GC_TOL(dt));
        gc_check("gelu erf", run_gelu_erf, NULL, 1, in, 1, GC_TOL(dt));
        scalar_case sc[] = {{"add-scalar", moe_add_scalar, 0.75}, {"mul-scalar", moe_mul_scalar, -1.5},
                            {"rsub-scalar", moe_rsub_scalar, 2.0}, {"pow-scalar 2", moe_pow_scalar, 2.0},
                            {"pow-scalar 3", moe_pow_scalar, 3.0}};
        for (size_t i = 0; i < sizeof sc / sizeof *sc; i++) gc_check(sc[i].name, run_scalar, &sc[i], 1, in, 1, GC_TOL(dt));
        RELEASE(in[0]);
        moe_tensor *pos[1] = {gc_uniform(dt, 2, SHAPE(41, 13), 91, 0.5, 3)};
        scalar_case sp[] = {{"rdiv-scalar", moe_rdiv_scalar, 1.5}, {"pow-scalar 0.5", moe_pow_scalar, 0.5}};
        for (size_t i = 0; i < 2; i++) gc_check(sp[i].name, run_scalar, &sp[i], 1, pos, 1, GC_TOL(dt));
        RELEASE(pos[0]);
    }
}
END_TEST

START_TEST(test_select_compare)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        moe_tensor *in[2] = {gc_uniform(dt, 2, SHAPE(23, 17), 100, -1, 1),
                             gc_uniform(dt, 1, SHAPE(17), 101, -1, 1)};
        gc_check("where(a > b, a, b)", run_where, NULL, 2, in, 3, GC_TOL(dt));
        gc_check("masked-fill", run_masked_fill, NULL, 2, in, 1, GC_TOL(dt));
        for (int c = 0; c < MOE_COMPARE_COUNT; c++) {
            moe_compare cmp = (moe_compare)c;
            char name[32];
            snprintf(name, sizeof name, "compare %d", c);
            gc_check(name, run_compare, &cmp, 2, in, 0, 0);
        }
        RELEASE(in[0], in[1]);
    }
}
END_TEST

START_TEST(test_dropout_nonfinite)
{
    moe_tensor *x = gc_uniform(MOE_F32, 2, SHAPE(300, 70), 110, -1, 1), *xg = gc_to_dev(x), *c, *g;
    moe_rng r1, r2;
    moe_rng_init(&r1, 77);
    moe_rng_init(&r2, 77);
    OK(moe_dropout(&c, x, 0.3, true, &r1));
    OK(moe_dropout(&g, xg, 0.3, true, &r2));
    gc_compare("dropout (same mask)", g, c, 0);
    RELEASE(c, g);
    moe_tensor *big;
    OK(moe_tensor_full(&big, MOE_F32, gc_dev, 1, SHAPE(70000), 1.0));
    OK(moe_tensor_set(big, SHAPE(5), NAN));
    OK(moe_tensor_set(big, SHAPE(69999), INFINITY));
    OK(moe_tensor_set(big, SHAPE(40000), -INFINITY));
    int64_t nn, ni;
    OK(moe_count_nonfinite(big, &nn, &ni));
    ck_assert_msg(nn == 1 && ni == 2, "count-nonfinite: %lld NaN, %lld inf", (long long)nn, (long long)ni);
    RELEASE(big, x, xg);
}
END_TEST

/* ---- reductions and softmax ----------------------------------------------------------- */

START_TEST(test_reduce)
{
    reduce_case cases[] = {
        {1, {0}, false, 0}, {1, {1}, true, 0},  {1, {2}, false, 0}, {0, {0}, false, 0},
        {2, {0, 2}, false, 0}, {1, {1}, false, 1}, {0, {0}, false, 1}, {1, {2}, false, 2},
        {1, {1}, false, 3}, {1, {2}, true, 4},  {0, {0}, false, 5}, {1, {1}, false, 6},
        {1, {2}, false, 6},
    };
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        moe_tensor *in[1] = {gc_uniform(dt, 3, SHAPE(7, 300, 9), 120, -2, 2)};
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            char name[64];
            snprintf(name, sizeof name, "reduce kind %d dims %d:%d,%d%s", cases[i].kind, cases[i].ndims,
                     cases[i].dims[0], cases[i].dims[1], cases[i].keepdim ? " keep" : "");
            gc_check(name, run_reduce, &cases[i], 1, in, 1, GC_TOL(dt));
        }
        RELEASE(in[0]);
        /* one long row: the block reduction with many strides per thread */
        moe_tensor *row[1] = {gc_uniform(dt, 2, SHAPE(3, 100000), 121, -1, 1)};
        reduce_case s = {1, {1}, false, 0}, m = {1, {1}, false, 3};
        gc_check("sum long rows", run_reduce, &s, 1, row, 1, GC_TOL(dt));
        gc_check("max long rows", run_reduce, &m, 1, row, 1, GC_TOL(dt));
        RELEASE(row[0]);
    }
    /* indices are exact (f32 random values have no ties) */
    moe_tensor *x = gc_uniform(MOE_F32, 3, SHAPE(5, 130, 6), 122, -2, 2);
    reduce_case am[] = {{1, {1}, false, 7}, {1, {2}, true, 7}, {1, {0}, false, 7}};
    for (int i = 0; i < 3; i++) gc_check("argmax", run_reduce, &am[i], 1, &x, 0, 0);
    moe_tensor *ints;
    OK(moe_to_dtype(&ints, x, MOE_I64));
    reduce_case si = {1, {1}, false, 0};
    gc_check("sum of i64", run_reduce, &si, 1, &ints, 0, 0);
    RELEASE(x, ints);
}
END_TEST

START_TEST(test_softmax)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        moe_tensor *in[1] = {gc_uniform(dt, 3, SHAPE(6, 37, 11), 130, -4, 4)};
        for (int kind = 0; kind < 3; kind++)
            for (int dim = 0; dim < 3; dim++) {
                softmax_case c = {dim == 2 ? -1 : dim, kind};
                char name[48];
                snprintf(name, sizeof name, "%s dim %d", kind == 0 ? "softmax" : kind == 1 ? "log-softmax" : "logsumexp",
                         c.dim);
                gc_check(name, run_softmax, &c, 1, in, 1, GC_TOL(dt));
            }
        RELEASE(in[0]);
        moe_tensor *wide[1] = {gc_uniform(dt, 2, SHAPE(5, 5000), 131, -30, 30)};
        softmax_case c = {1, 0}, l = {1, 1};
        gc_check("softmax wide rows", run_softmax, &c, 1, wide, 1, GC_TOL(dt));
        gc_check("log-softmax wide rows", run_softmax, &l, 1, wide, 1, GC_TOL(dt));
        RELEASE(wide[0]);
    }
}
END_TEST

/* ---- the caching allocator ----------------------------------------------------------- */

START_TEST(test_allocator)
{
#ifdef MOELAB_HAVE_CUDA
    if (gc_dev != MOE_CUDA) return; /* the device allocator only */
    moe_memory_stats before, after;
    moe_cuda_cache_stats c0, c1, c2;
    moe_memory_stats_get(MOE_CUDA, &before);
    for (int round = 0; round < 4; round++) {
        if (round == 1) moe_cuda_cache_stats_get(&c0); /* warm after round 0 */
        moe_tensor *a, *b, *c;
        OK(moe_tensor_empty(&a, MOE_F32, MOE_CUDA, 1, SHAPE(3 << 20)));
        OK(moe_tensor_empty(&b, MOE_BF16, MOE_CUDA, 1, SHAPE(1000)));
        OK(moe_tensor_empty(&c, MOE_F32, MOE_CUDA, 1, SHAPE(257)));
        RELEASE(a, b, c);
    }
    moe_cuda_cache_stats_get(&c1);
    printf("  allocator: %lld cudaMalloc calls, %lld cache hits, %lld bytes reserved\n",
           (long long)c1.device_mallocs, (long long)c1.cache_hits, (long long)c1.reserved_bytes);
    ck_assert_msg(c1.device_mallocs == c0.device_mallocs, "steady state called cudaMalloc %lld times",
                  (long long)(c1.device_mallocs - c0.device_mallocs));
    ck_assert_int_eq(c1.cache_hits - c0.cache_hits, 9);
    moe_memory_stats_get(MOE_CUDA, &after);
    ck_assert_int_eq(after.live_bytes, before.live_bytes);
    ck_assert_int_eq(after.live_storages, before.live_storages);
    moe_allocator_empty_cache(MOE_CUDA);
    moe_cuda_cache_stats_get(&c2);
    ck_assert_int_eq(c2.cached_bytes, 0);
    ck_assert_int_eq(c2.reserved_bytes, c1.reserved_bytes - c1.cached_bytes);
#endif
}
END_TEST

/* ---- the op table -------------------------------------------------------------------- */

/* Every case of one row, in f64 and f32. An op with no kernel on the device
 * (its "no cuda kernel for OP yet" error) is reported and skipped. */
START_TEST(test_op_table)
{
    const ot_row *row = &ot_rows[_i];
    static const moe_dtype table_dtypes[] = {MOE_F64, MOE_F32};
    for (int d = 0; d < 2; d++) {
        ot_case cases[OT_MAX_CASES];
        int n = 0;
        moe_status st = row->build(cases, &n, table_dtypes[d]);
        if (st != MOE_OK) ot_cases_release(cases, n);
        ck_assert_msg(st == MOE_OK, "%s: building the cases failed: %s", row->name, moe_last_error());
        for (int k = 0; k < n; k++) {
            ot_case *c = &cases[k];
            moe_tensor *dev[OT_MAX_IN], *probe = NULL;
            for (int i = 0; i < c->n_in; i++) dev[i] = gc_to_dev(c->in[i]);
            st = ot_run(&probe, dev, c);
            for (int i = 0; i < c->n_in; i++) moe_tensor_release(dev[i]);
            moe_tensor_release(probe);
            if (st == MOE_ERR_DEVICE && strstr(moe_last_error(), "kernel for")) {
                printf("  %-40s skipped: %s\n", row->name, moe_last_error());
                break;
            }
            ck_assert_msg(st == MOE_OK, "%s: %s on %s failed: %s", row->name, c->what, moe_device_name(gc_dev),
                          moe_last_error());
            char name[160];
            snprintf(name, sizeof name, "%.40s: %.96s", row->name, c->what);
            gc_check(name, ot_run, c, c->n_in, c->in, c->grad_mask, GC_TOL(table_dtypes[d]));
        }
        ot_cases_release(cases, n);
    }
}
END_TEST

int main(void)
{
    int skip = gc_start("check_gpu_ops");
    if (skip) return skip;
    Suite *s = suite_create("gpu-ops");
    TCase *c = tcase_create("ops");
    tcase_set_timeout(c, 300);
    tcase_add_test(c, test_creation);
    tcase_add_test(c, test_copies);
    tcase_add_test(c, test_binary);
    tcase_add_test(c, test_unary);
    tcase_add_test(c, test_select_compare);
    tcase_add_test(c, test_dropout_nonfinite);
    tcase_add_test(c, test_reduce);
    tcase_add_test(c, test_softmax);
    tcase_add_test(c, test_allocator);
    suite_add_tcase(s, c);
    TCase *table = tcase_create("op table");
    tcase_set_timeout(table, 300);
    tcase_add_loop_test(table, test_op_table, 0, ot_n_rows);
    suite_add_tcase(s, table);
    return tu_run(s);
}
