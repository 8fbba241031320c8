/* check_gpu_nn.c — the nn, index, join and sort ops on the GPU against the
 * CPU, forward and backward, f32 and bf16: rms_norm, layer_norm,
 * cross_entropy (with ignored targets), embedding; gather, scatter_add,
 * index_select, index_add, one_hot; cat and stack; topk, sort and argsort
 * with ties, NaN, rows longer than shared memory, and indices compared
 * exactly. Skips without a GPU (MOELAB_GPU_TEST_ON_CPU=1: see gpucheck.h). */
#include "gpucheck.h"

#include "config.h"

static const moe_dtype dtypes[] = {MOE_F32, MOE_BF16};
#define N_DTYPES 2

/* Integer tensor of SHAPE with values in [lo, hi) (i64, CPU). */
static moe_tensor *ints(int nd, const int64_t *shape, int64_t lo, int64_t hi, uint64_t seed)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *t;
    OK(moe_tensor_randint(&t, &rng, MOE_I64, MOE_CPU, lo, hi, nd, shape));
    return t;
}

/* Values with many ties: integers in [lo, hi) as DTYPE. */
static moe_tensor *tied(moe_dtype dt, int nd, const int64_t *shape, int64_t lo, int64_t hi, uint64_t seed)
{
    moe_tensor *i = ints(nd, shape, lo, hi, seed), *r;
    OK(moe_to_dtype(&r, i, dt));
    moe_tensor_release(i);
    return r;
}

/* ---- nn ------------------------------------------------------------------------------- */

static moe_status run_rms(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_rms_norm(out, in[0], in[1], 1e-6);
}

static moe_status run_rms_plain(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_rms_norm(out, in[0], NULL, 1e-6);
}

static moe_status run_ln(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_layer_norm(out, in[0], in[1], in[2], 1e-5);
}

static moe_status run_ln_plain(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_layer_norm(out, in[0], NULL, NULL, 1e-5);
}

static moe_status run_ce(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_cross_entropy(out, in[0], in[1], *(int64_t *)ctx);
}

static moe_status run_embedding(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_embedding(out, in[0], in[1]);
}

START_TEST(test_norms)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        double tol = GC_TOL(dt);
        moe_tensor *a[2] = {gc_uniform(dt, 2, SHAPE(5, 37), 1, -2, 2), gc_uniform(dt, 1, SHAPE(37), 2, 0.5, 1.5)};
        gc_check("rms_norm [5 37] w", run_rms, NULL, 2, a, 3, tol);
        moe_tensor *b[1] = {gc_uniform(dt, 3, SHAPE(3, 4, 300), 3, -2, 2)};
        gc_check("rms_norm [3 4 300] no w", run_rms_plain, NULL, 1, b, 1, tol);
        moe_tensor *c[2] = {gc_uniform(dt, 2, SHAPE(70, 1), 4, -2, 2), gc_uniform(dt, 1, SHAPE(1), 5, 0.5, 1.5)};
        gc_check("rms_norm [70 1] w (chunks of rows)", run_rms, NULL, 2, c, 3, tol);
        moe_tensor *d[3] = {gc_uniform(dt, 2, SHAPE(66, 50), 6, -2, 2), gc_uniform(dt, 1, SHAPE(50), 7, 0.5, 1.5),
                            gc_uniform(dt, 1, SHAPE(50), 8, -1, 1)};
        gc_check("layer_norm [66 50] w b", run_ln, NULL, 3, d, 7, tol);
        moe_tensor *e[1] = {gc_uniform(dt, 1, SHAPE(1000), 9, -2, 2)};
        gc_check("layer_norm [1000] (one row)", run_ln_plain, NULL, 1, e, 1, tol);
        RELEASE(a[0], a[1], b[0], c[0], c[1], d[0], d[1], d[2], e[0]);
    }
}
END_TEST

START_TEST(test_cross_entropy_embedding)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        double tol = GC_TOL(dt);
        int64_t ignore = -100;
        moe_tensor *a[2] = {gc_uniform(dt, 2, SHAPE(9, 13), 10, -3, 3),
                            T(MOE_I64, 1, SHAPE(9), 0, 12, -100, 3, 3, 7, -100, 1, 5)};
        gc_check("cross_entropy [9 13] (2 ignored)", run_ce, &ignore, 2, a, 1, tol);
        moe_tensor *b[2] = {gc_uniform(dt, 2, SHAPE(300, 1000), 11, -5, 5), ints(1, SHAPE(300), 0, 1000, 12)};
        gc_check("cross_entropy [300 1000]", run_ce, &ignore, 2, b, 1, tol);
        moe_tensor *c[2] = {gc_uniform(dt, 2, SHAPE(1, 1), 13, -3, 3), T(MOE_I32, 1, SHAPE(1), 0)};
        gc_check("cross_entropy [1 1] (i32 targets)", run_ce, &ignore, 2, c, 1, tol);
        moe_tensor *e[2] = {gc_uniform(dt, 2, SHAPE(11, 6), 14, -1, 1), ints(2, SHAPE(3, 40), 0, 11, 15)};
        gc_check("embedding [11 6] ids [3 40] (repeats)", run_embedding, NULL, 2, e, 1, tol);
        RELEASE(a[0], a[1], b[0], b[1], c[0], c[1], e[0], e[1]);
    }
}
END_TEST

/* ---- index ------------------------------------------------------------------------------- */

typedef struct idx_case {
    int kind; /* 0 gather, 1 scatter_add, 2 index_select, 3 index_add */
    int dim;
} idx_case;

static moe_status run_index(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const idx_case *c = ctx;
    switch (c->kind) {
    case 0: return moe_gather(out, in[0], c->dim, in[1]);
    case 1: return moe_scatter_add(out, in[0], c->dim, in[1], in[2]);
    case 2: return moe_index_select(out, in[0], c->dim, in[1]);
    default: return moe_index_add(out, in[0], c->dim, in[1], in[2]);
    }
}

START_TEST(test_index_ops)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        double tol = GC_TOL(dt);
        idx_case g0 = {0, 0}, g1 = {0, -1}, s0 = {1, 0}, s1 = {1, 1}, i0 = {2, 0}, i1 = {2, 1}, a1 = {3, 1}, a0 = {3, 0};
        moe_tensor *x = gc_uniform(dt, 2, SHAPE(5, 7), 20, -1, 1);
        moe_tensor *ga[2] = {x, ints(2, SHAPE(4, 7), 0, 5, 21)};
        gc_check("gather dim 0 [5 7] idx [4 7]", run_index, &g0, 2, ga, 1, tol);
        moe_tensor *gb[2] = {x, ints(2, SHAPE(5, 9), 0, 7, 22)};
        gc_check("gather dim -1 [5 7] idx [5 9]", run_index, &g1, 2, gb, 1, tol);
        moe_tensor *sa[3] = {gc_uniform(dt, 2, SHAPE(5, 4), 23, -1, 1), ints(2, SHAPE(6, 4), 0, 5, 24),
                             gc_uniform(dt, 2, SHAPE(6, 4), 25, -1, 1)};
        gc_check("scatter_add dim 0 [5 4] idx [6 4]", run_index, &s0, 3, sa, 5, tol);
        moe_tensor *sb[3] = {gc_uniform(dt, 3, SHAPE(2, 3, 20), 26, -1, 1), ints(3, SHAPE(2, 2, 20), 0, 3, 27),
                             gc_uniform(dt, 3, SHAPE(2, 3, 25), 28, -1, 1)};
        gc_check("scatter_add dim 1 [2 3 20] idx [2 2 20] src larger", run_index, &s1, 3, sb, 5, tol);
        moe_tensor *ia[2] = {x, T(MOE_I64, 1, SHAPE(6), 4, 0, 0, 2, 4, 1)};
        gc_check("index_select dim 0 [5 7] (repeats)", run_index, &i0, 2, ia, 1, tol);
        moe_tensor *ib[2] = {x, T(MOE_I32, 1, SHAPE(3), 6, 0, 6)};
        gc_check("index_select dim 1 [5 7] (i32)", run_index, &i1, 2, ib, 1, tol);
        moe_tensor *aa[3] = {gc_uniform(dt, 3, SHAPE(2, 5, 3), 29, -1, 1), T(MOE_I64, 1, SHAPE(7), 4, 0, 4, 4, 1, 0, 2),
                             gc_uniform(dt, 3, SHAPE(2, 7, 3), 30, -1, 1)};
        gc_check("index_add dim 1 [2 5 3] (repeats)", run_index, &a1, 3, aa, 5, tol);
        moe_tensor *ab[3] = {gc_uniform(dt, 2, SHAPE(50, 33), 31, -1, 1), ints(1, SHAPE(400), 0, 50, 32),
                             gc_uniform(dt, 2, SHAPE(400, 33), 33, -1, 1)};
        gc_check("index_add dim 0 [50 33] idx [400]", run_index, &a0, 3, ab, 5, tol);
        RELEASE(x, ga[1], gb[1], sa[0], sa[1], sa[2], sb[0], sb[1], sb[2], ia[1], ib[1], aa[0], aa[1], aa[2], ab[0], ab[1],
                ab[2]);
    }
}
END_TEST

START_TEST(test_one_hot_and_bad_index)
{
    moe_tensor *idx = ints(2, SHAPE(3, 5), 0, 6, 40), *ig = gc_to_dev(idx), *c, *g;
    OK(moe_one_hot(&c, idx, 8));
    OK(moe_one_hot(&g, ig, 8));
    gc_compare("one_hot [3 5] C=8", g, c, 0);
    RELEASE(c, g);
    OK(moe_one_hot(&c, idx, -1));
    OK(moe_one_hot(&g, ig, -1));
    gc_compare("one_hot [3 5] C inferred", g, c, 0);
    RELEASE(c, g);
    /* an index out of range names the value and where it sits, on both devices */
    moe_tensor *x = gc_uniform(MOE_F32, 2, SHAPE(4, 3), 41, -1, 1), *xg = gc_to_dev(x);
    moe_tensor *bad = T(MOE_I64, 2, SHAPE(2, 3), 0, 1, 2, 3, 9, 0), *badg = gc_to_dev(bad);
    FAILS(moe_gather(&g, xg, 0, badg), MOE_ERR_INDEX, "index 9 at position [1 1]");
    FAILS(moe_gather(&c, x, 0, bad), MOE_ERR_INDEX, "index 9 at position [1 1]");
    RELEASE(idx, ig, x, xg, bad, badg);
}
END_TEST

/* ---- join ------------------------------------------------------------------------------------ */

typedef struct join_case {
    bool stack;
    int dim;
} join_case;

static moe_status run_join(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const join_case *c = ctx;
    return c->stack ? moe_stack(out, 3, in, c->dim) : moe_cat(out, 3, in, c->dim);
}

START_TEST(test_join)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        join_case c0 = {false, 0}, c1 = {false, -1}, st1 = {true, 1};
        moe_tensor *a[3] = {gc_uniform(dt, 2, SHAPE(2, 5), 50, -1, 1), gc_uniform(dt, 2, SHAPE(1, 5), 51, -1, 1),
                            gc_uniform(dt, 2, SHAPE(4, 5), 52, -1, 1)};
        gc_check("cat dim 0 [2|1|4 5]", run_join, &c0, 3, a, 7, 0);
        moe_tensor *b[3] = {gc_uniform(dt, 2, SHAPE(3, 2), 53, -1, 1), gc_uniform(dt, 2, SHAPE(3, 17), 54, -1, 1),
                            gc_uniform(dt, 2, SHAPE(3, 1), 55, -1, 1)};
        gc_check("cat dim -1 [3 2|17|1]", run_join, &c1, 3, b, 7, 0);
        moe_tensor *s[3] = {gc_uniform(dt, 2, SHAPE(4, 6), 56, -1, 1), gc_uniform(dt, 2, SHAPE(4, 6), 57, -1, 1),
                            gc_uniform(dt, 2, SHAPE(4, 6), 58, -1, 1)};
        gc_check("stack dim 1 3x[4 6]", run_join, &st1, 3, s, 7, 0);
        RELEASE(a[0], a[1], a[2], b[0], b[1], b[2], s[0], s[1], s[2]);
    }
#ifdef MOELAB_HAVE_CUDA
    if (gc_dev == MOE_CUDA) {
        moe_tensor *h = gc_uniform(MOE_F32, 1, SHAPE(3), 59, -1, 1), *d = gc_to_dev(h), *r;
        moe_tensor *mixed[2] = {h, d};
        FAILS(moe_cat(&r, 2, mixed, 0), MOE_ERR_DEVICE, "tensor 1 is on cuda");
        RELEASE(h, d);
    }
#endif
}
END_TEST

/* ---- sort --------------------------------------------------------------------------------------- */

typedef struct order_case {
    int kind; /* 0 topk, 1 sort, 2 argsort */
    int64_t k;
    int dim;
    bool big;
    bool want_indices;
} order_case;

static moe_status run_order(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const order_case *c = ctx;
    moe_tensor *v = NULL, *i = NULL;
    moe_status st;
    if (c->kind == 2) return moe_argsort(out, in[0], c->dim, c->big);
    if (c->kind == 0)
        st = moe_topk(&v, &i, in[0], c->k, c->dim, c->big);
    else
        st = moe_sort(&v, &i, in[0], c->dim, c->big);
    if (st != MOE_OK) return st;
    *out = c->want_indices ? i : v;
    moe_tensor_release(c->want_indices ? v : i);
    return MOE_OK;
}

/* Values (with their gradient) and indices of one ordering case. */
static void order_check(const char *name, order_case c, moe_tensor *x, double tol)
{
    char what[160];
    moe_tensor *in[1] = {x};
    c.want_indices = false;
    snprintf(what, sizeof what, "%s values", name);
    if (c.kind != 2) gc_check(what, run_order, &c, 1, in, 1, tol);
    c.want_indices = true;
    snprintf(what, sizeof what, "%s indices", name);
    gc_check(what, run_order, &c, 1, in, 0, 0);
}

START_TEST(test_sort_ties)
{
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        moe_tensor *x = tied(dt, 2, SHAPE(33, 40), -3, 4, 60); /* 7 values in a row of 40: ties everywhere */
        order_check("topk k=5 largest dim -1 (ties)", (order_case){0, 5, -1, true, false}, x, 0);
        order_check("topk k=5 smallest dim 0 (ties)", (order_case){0, 5, 0, false, false}, x, 0);
        order_check("sort descending dim -1 (ties)", (order_case){1, 0, -1, true, false}, x, 0);
        order_check("sort ascending dim 0 (ties)", (order_case){1, 0, 0, false, false}, x, 0);
        order_check("argsort descending (ties)", (order_case){2, 0, 1, true, false}, x, 0);
        moe_tensor *r = gc_uniform(dt, 3, SHAPE(4, 3, 257), 61, -1, 1);
        order_check("topk k=8 of 257", (order_case){0, 8, -1, true, false}, r, 0);
        order_check("topk k=0", (order_case){0, 0, -1, true, false}, r, 0);
        order_check("sort dim 1 (middle)", (order_case){1, 0, 1, false, false}, r, 0);
        RELEASE(x, r);
    }
}
END_TEST

START_TEST(test_sort_nan_and_long_rows)
{
    /* NaN sorts above every number; -0 and +0 tie and keep index order */
    moe_tensor *x = T(MOE_F32, 2, SHAPE(2, 6), 1, NAN, -0.0, 0.0, NAN, -2, 3, 0.0, -0.0, INFINITY, NAN, -INFINITY);
    order_check("sort descending (NaN, ±0)", (order_case){1, 0, -1, true, false}, x, 0);
    order_check("sort ascending (NaN, ±0)", (order_case){1, 0, -1, false, false}, x, 0);
    order_check("topk k=3 (NaN first)", (order_case){0, 3, -1, true, false}, x, 0);
    RELEASE(x);
    for (int k = 0; k < N_DTYPES; k++) {
        moe_dtype dt = dtypes[k];
        /* 4096 entries fill shared memory exactly; 5000 go through the scratch */
        moe_tensor *a = tied(dt, 2, SHAPE(3, 4096), -50, 50, 62), *b = tied(dt, 2, SHAPE(3, 5000), -50, 50, 63);
        order_check("sort row of 4096 (ties)", (order_case){1, 0, -1, true, false}, a, 0);
        order_check("topk k=20 of 5000 (scratch)", (order_case){0, 20, -1, false, false}, b, 0);
        order_check("argsort row of 5000 (scratch)", (order_case){2, 0, -1, false, false}, b, 0);
        RELEASE(a, b);
    }
    moe_tensor *d = tied(MOE_F64, 2, SHAPE(2, 5000), -9, 9, 64), *one = gc_uniform(MOE_F32, 2, SHAPE(5, 1), 65, -1, 1);
    order_check("sort f64 row of 5000 (scratch)", (order_case){1, 0, -1, true, false}, d, 0);
    order_check("sort rows of 1", (order_case){1, 0, -1, true, false}, one, 0);
    RELEASE(d, one);
}
END_TEST

int main(void)
{
    int skip = gc_start("check_gpu_nn");
    if (skip) return skip;
    Suite *s = suite_create("gpu-nn");
    TCase *c = tcase_create("nn");
    tcase_set_timeout(c, 300);
    tcase_add_test(c, test_norms);
    tcase_add_test(c, test_cross_entropy_embedding);
    tcase_add_test(c, test_index_ops);
    tcase_add_test(c, test_one_hot_and_bad_index);
    tcase_add_test(c, test_join);
    tcase_add_test(c, test_sort_ties);
    tcase_add_test(c, test_sort_nan_and_long_rows);
    suite_add_tcase(s, c);
    return tu_run(s);
}
