/* check_sort.c — topk, sort, argsort, bincount and histogram: hand-computed
 * values (checked against torch 1.13), ties toward the lower index, NaN
 * ordering, other dims and dtypes, errors, and finite-difference gradients of
 * the selected values in f64. */
#include "testutil.h"

/* Out-parameter of calls expected to fail (the op must leave it NULL). */
static moe_tensor *bad;

static moe_tensor *leaf(int ndim, const int64_t *shape, uint64_t seed)
{
    moe_tensor *t = tu_randn(MOE_F64, ndim, shape, seed);
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

/* ---- topk -------------------------------------------------------------------- */

START_TEST(test_topk_ties)
{
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16, MOE_I64, MOE_I32};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        moe_tensor *a = T(dts[i], 1, SHAPE(4), 1, 3, 3, 2), *v, *ix;
        OK(moe_topk(&v, &ix, a, 2, 0, true));
        ck_assert_int_eq(v->dtype, dts[i]);
        ck_assert_int_eq(ix->dtype, MOE_I64);
        ASSERT_VALUES(v, 0, 3, 3);
        ASSERT_VALUES(ix, 0, 1, 2);
        RELEASE(v, ix);
        OK(moe_topk(&v, &ix, a, 3, -1, false));
        ASSERT_VALUES(v, 0, 1, 2, 3);
        ASSERT_VALUES(ix, 0, 0, 3, 1);
        RELEASE(a, v, ix);
    }
    /* smallest with ties; all equal */
    moe_tensor *b = T(MOE_F32, 1, SHAPE(4), 2, 1, 1, 3),
               *c = T(MOE_F32, 1, SHAPE(5), 7, 7, 7, 7, 7);
    moe_tensor *v, *ix;
    OK(moe_topk(&v, &ix, b, 2, 0, false));
    ASSERT_VALUES(v, 0, 1, 1);
    ASSERT_VALUES(ix, 0, 1, 2);
    RELEASE(v, ix);
    OK(moe_topk(&v, &ix, c, 3, 0, true));
    ASSERT_VALUES(ix, 0, 0, 1, 2);
    RELEASE(v, ix);
    OK(moe_topk(&v, &ix, c, 3, 0, false));
    ASSERT_VALUES(ix, 0, 0, 1, 2);
    RELEASE(b, c, v, ix);
}
END_TEST

START_TEST(test_topk_dims)
{
    /* along dim 0 of [[1 5] [4 2] [3 6]] */
    moe_tensor *a = T(MOE_F64, 2, SHAPE(3, 2), 1, 5, 4, 2, 3, 6), *v, *ix;
    OK(moe_topk(&v, &ix, a, 2, 0, true));
    ASSERT_SHAPE(v, 2, 2, 2);
    ASSERT_VALUES(v, 0, 4, 6, 3, 5);
    ASSERT_VALUES(ix, 0, 1, 2, 2, 0);
    RELEASE(v, ix);
    /* along dim 1 of a transposed view: rows [1 4 3] and [5 2 6] */
    moe_tensor *at;
    OK(moe_transpose(&at, a, 0, 1));
    OK(moe_topk(&v, &ix, at, 1, 1, false));
    ASSERT_SHAPE(v, 2, 2, 1);
    ASSERT_VALUES(v, 0, 1, 2);
    ASSERT_VALUES(ix, 0, 0, 1);
    RELEASE(v, ix);
    /* middle dim of a 3-d tensor */
    moe_tensor *x = T(MOE_F32, 3, SHAPE(2, 3, 2), 1, 9, 5, 3, 2, 7, 0, 4, 8, 8, 6, 1), *v3, *i3;
    OK(moe_topk(&v3, &i3, x, 2, 1, true));
    ASSERT_SHAPE(v3, 3, 2, 2, 2);
    ASSERT_VALUES(v3, 0, 5, 9, 2, 7, 8, 8, 6, 4);
    ASSERT_VALUES(i3, 0, 1, 0, 2, 2, 1, 1, 2, 0);
    /* k = 0 → empty; k = size */
    moe_tensor *v0, *i0;
    OK(moe_topk(&v0, &i0, a, 0, 1, true));
    ASSERT_SHAPE(v0, 2, 3, 0);
    ASSERT_SHAPE(i0, 2, 3, 0);
    RELEASE(v0, i0);
    OK(moe_topk(&v0, &i0, a, 3, 0, true));
    ASSERT_VALUES(v0, 0, 4, 6, 3, 5, 1, 2);
    RELEASE(a, at, x, v3, i3, v0, i0);
}
END_TEST

START_TEST(test_topk_nan_and_errors)
{
    moe_tensor *a = T(MOE_F64, 1, SHAPE(4), 1, NAN, 3, -INFINITY), *v, *ix;
    OK(moe_topk(&v, &ix, a, 2, 0, true)); /* NaN is the largest */
    ASSERT_VALUES(v, 0, NAN, 3);
    ASSERT_VALUES(ix, 0, 1, 2);
    RELEASE(v, ix);
    OK(moe_topk(&v, &ix, a, 3, 0, false));
    ASSERT_VALUES(v, 0, -INFINITY, 1, 3);
    ASSERT_VALUES(ix, 0, 3, 0, 2);
    RELEASE(v, ix);
    moe_tensor *b = tu_randn(MOE_F32, 2, SHAPE(3, 8), 1);
    bad = ix = (moe_tensor *)1;
    FAILS(moe_topk(&bad, &ix, b, 9, 1, true), MOE_ERR_ARG, "topk: k (9) larger than dim size (8)");
    ck_assert_ptr_null(bad);
    ck_assert_ptr_null(ix);
    FAILS(moe_topk(&bad, &ix, b, 4, 0, true), MOE_ERR_ARG, "k (4) larger than dim size (3)");
    FAILS(moe_topk(&bad, &ix, b, -1, 1, true), MOE_ERR_ARG, "k (-1) must not be negative");
    FAILS(moe_topk(&bad, &ix, b, 1, 2, true), MOE_ERR_INDEX, "dim 2 out of range");
    RELEASE(a, b);
}
END_TEST

/* Brute-force top-k of one row: repeatedly take the best unused element,
 * ties to the lower index. */
static void ref_topk(const float *x, int64_t E, int64_t K, bool largest, float *v, int64_t *ix)
{
    bool used[512] = {0};
    for (int64_t k = 0; k < K; k++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++) {
            if (used[e]) continue;
            if (best < 0 || (largest ? x[e] > x[best] : x[e] < x[best])) best = e;
        }
        used[best] = true;
        v[k] = x[best];
        ix[k] = best;
    }
}

START_TEST(test_topk_router_shapes)
{
    /* the router's shape (threaded), a small-k and a large-k path, with ties */
    struct {
        int64_t T, E, K;
        bool largest;
    } cases[] = {
        {2048, 64, 8, true}, {300, 40, 20, true}, {17, 256, 2, false}, {64, 100, 100, false}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int64_t Tn = cases[c].T, E = cases[c].E, K = cases[c].K;
        moe_tensor *x, *xr, *v, *ix;
        OK(moe_tensor_randint(&xr, NULL, MOE_I64, MOE_CPU, 0, 50, 2, SHAPE(Tn, E)));
        OK(moe_to_dtype(&x, xr, MOE_F32)); /* many ties */
        OK(moe_topk(&v, &ix, x, K, -1, cases[c].largest));
        ASSERT_SHAPE(v, 2, Tn, K);
        const float *xv = moe_tensor_data(x), *vv = moe_tensor_data(v);
        const int64_t *iv = moe_tensor_data(ix);
        float rv[512];
        int64_t ri[512];
        for (int64_t t = 0; t < Tn; t++) {
            ref_topk(xv + t * E, E, K, cases[c].largest, rv, ri);
            for (int64_t k = 0; k < K; k++) {
                ck_assert_msg(vv[t * K + k] == rv[k] && iv[t * K + k] == ri[k],
                              "case %zu row %lld slot %lld: got (%g, %lld), expected (%g, %lld)", c,
                              (long long)t, (long long)k, vv[t * K + k], (long long)iv[t * K + k],
                              rv[k], (long long)ri[k]);
            }
        }
        RELEASE(x, xr, v, ix);
    }
}
END_TEST

/* ---- sort / argsort ----------------------------------------------------------------- */

START_TEST(test_sort_stable)
{
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16, MOE_I64, MOE_I32};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        moe_tensor *a = T(dts[i], 1, SHAPE(5), 3, 1, 2, 1, 3), *v, *ix;
        OK(moe_sort(&v, &ix, a, 0, false));
        ck_assert_int_eq(v->dtype, dts[i]);
        ASSERT_VALUES(v, 0, 1, 1, 2, 3, 3);
        ASSERT_VALUES(ix, 0, 1, 3, 2, 0, 4);
        RELEASE(v, ix);
        OK(moe_sort(&v, &ix, a, -1, true));
        ASSERT_VALUES(v, 0, 3, 3, 2, 1, 1);
        ASSERT_VALUES(ix, 0, 0, 4, 2, 1, 3);
        RELEASE(a, v, ix);
    }
    /* NaN last ascending, first descending; indices may be NULL */
    moe_tensor *n = T(MOE_F64, 1, SHAPE(4), NAN, 2, NAN, -1), *v, *ix;
    OK(moe_sort(&v, &ix, n, 0, false));
    ASSERT_VALUES(v, 0, -1, 2, NAN, NAN);
    ASSERT_VALUES(ix, 0, 3, 1, 0, 2);
    RELEASE(v, ix);
    OK(moe_sort(&v, NULL, n, 0, true));
    ASSERT_VALUES(v, 0, NAN, NAN, 2, -1);
    RELEASE(n, v);
}
END_TEST

START_TEST(test_sort_dims_and_long_rows)
{
    /* along dim 0 of [[3 1] [1 2] [2 0]] and of its transpose */
    moe_tensor *a = T(MOE_F32, 2, SHAPE(3, 2), 3, 1, 1, 2, 2, 0), *v, *ix, *at, *as;
    OK(moe_sort(&v, &ix, a, 0, false));
    ASSERT_VALUES(v, 0, 1, 0, 2, 1, 3, 2);
    ASSERT_VALUES(ix, 0, 1, 2, 2, 0, 0, 1);
    RELEASE(v, ix);
    OK(moe_transpose(&at, a, 0, 1)); /* [[3 1 2] [1 2 0]] */
    OK(moe_sort(&v, &ix, at, 1, true));
    ASSERT_VALUES(v, 0, 3, 2, 1, 2, 1, 0);
    ASSERT_VALUES(ix, 0, 0, 2, 1, 1, 0, 2);
    OK(moe_argsort(&as, at, 1, true));
    ck_assert_int_eq(as->dtype, MOE_I64);
    ck_assert(!as->requires_grad);
    ASSERT_VALUES(as, 0, 0, 2, 1, 1, 0, 2);
    RELEASE(a, v, ix, at, as);
    /* long rows (the merge path), few distinct values: stability per row */
    int64_t R = 40, E = 1000;
    moe_tensor *xr, *x;
    OK(moe_tensor_randint(&xr, NULL, MOE_I64, MOE_CPU, 0, 5, 2, SHAPE(R, E)));
    OK(moe_to_dtype(&x, xr, MOE_F64));
    for (int desc = 0; desc < 2; desc++) {
        OK(moe_sort(&v, &ix, x, 1, desc));
        const double *xv = moe_tensor_data(x), *vv = moe_tensor_data(v);
        const int64_t *iv = moe_tensor_data(ix);
        for (int64_t r = 0; r < R; r++)
            for (int64_t e = 0; e < E; e++) {
                int64_t p = r * E + e;
                ck_assert(vv[p] == xv[r * E + iv[p]]);
                if (e == 0) continue;
                bool ordered = desc ? vv[p - 1] >= vv[p] : vv[p - 1] <= vv[p];
                ck_assert_msg(ordered, "row %lld not sorted at %lld", (long long)r, (long long)e);
                if (vv[p - 1] == vv[p])
                    ck_assert_msg(iv[p - 1] < iv[p], "unstable at %lld", (long long)p);
            }
        RELEASE(v, ix);
    }
    RELEASE(xr, x);
}
END_TEST

/* ---- bincount / histogram -------------------------------------------------------------- */

START_TEST(test_bincount)
{
    moe_tensor *x = T(MOE_I64, 1, SHAPE(4), 1, 1, 3, 0), *x32 = T(MOE_I32, 1, SHAPE(4), 1, 1, 3, 0);
    moe_tensor *r, *r2, *r3, *r4, *r5, *empty;
    OK(moe_bincount(&r, x, NULL, 0));
    ck_assert_int_eq(r->dtype, MOE_I64);
    ASSERT_VALUES(r, 0, 1, 2, 0, 1);
    OK(moe_bincount(&r2, x32, NULL, 6));
    ASSERT_VALUES(r2, 0, 1, 2, 0, 1, 0, 0);
    moe_tensor *w = T(MOE_F64, 1, SHAPE(4), 0.5, 1, 2, 0.25),
               *wf = T(MOE_F32, 1, SHAPE(4), 0.5, 1, 2, 0.25);
    OK(moe_bincount(&r3, x, w, 2));
    ck_assert_int_eq(r3->dtype, MOE_F64);
    ASSERT_VALUES(r3, 0, 0.25, 1.5, 0, 2);
    OK(moe_bincount(&r4, x, wf, 5));
    ck_assert_int_eq(r4->dtype, MOE_F32);
    ASSERT_VALUES(r4, 0, 0.25, 1.5, 0, 2, 0);
    OK(moe_tensor_empty(&empty, MOE_I64, MOE_CPU, 1, SHAPE(0)));
    OK(moe_bincount(&r5, empty, NULL, 3));
    ASSERT_VALUES(r5, 0, 0, 0, 0);
    moe_tensor *neg = T(MOE_I64, 1, SHAPE(3), 0, -2, 1), *fl = T(MOE_F32, 1, SHAPE(1), 1);
    moe_tensor *two = T(MOE_I64, 2, SHAPE(1, 2), 0, 1), *w3 = T(MOE_F64, 1, SHAPE(3), 1, 1, 1);
    FAILS(moe_bincount(&bad, neg, NULL, 0), MOE_ERR_VALUE,
          "bincount: negative value -2 at position 1");
    FAILS(moe_bincount(&bad, fl, NULL, 0), MOE_ERR_DTYPE, "got f32");
    FAILS(moe_bincount(&bad, two, NULL, 0), MOE_ERR_SHAPE, "1-D");
    FAILS(moe_bincount(&bad, x, w3, 0), MOE_ERR_SHAPE, "weights [3]");
    FAILS(moe_bincount(&bad, x, NULL, -1), MOE_ERR_ARG, "minlength");
    RELEASE(x, x32, r, r2, r3, r4, r5, empty, w, wf, neg, fl, two, w3);
}
END_TEST

START_TEST(test_histogram)
{
    moe_tensor *a = T(MOE_F32, 1, SHAPE(7), 1, 2, 1, 4, 2.5, 5, -1), *r, *r2, *r3, *r4;
    OK(moe_histogram(&r, a, 4, 0, 4)); /* 4 == hi → last bin; 5 and -1 ignored */
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 0, 0, 2, 2, 1);
    moe_tensor *b = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    OK(moe_histogram(&r2, b, 3, 0, 0)); /* lo == hi: the data's range [1, 4] */
    ck_assert_int_eq(r2->dtype, MOE_F64);
    ASSERT_VALUES(r2, 0, 1, 1, 2);
    moe_tensor *e = T(MOE_F64, 1, SHAPE(5), 0, 1, 2, 3, 4); /* values on the edges */
    OK(moe_histogram(&r3, e, 4, 0, 4));
    ASSERT_VALUES(r3, 0, 1, 1, 1, 2);
    moe_tensor *c = T(MOE_F64, 1, SHAPE(3), 2, 2, NAN);
    OK(moe_histogram(&r4, c, 2, 0, 0)); /* constant data: [1, 3]; NaN skipped */
    ASSERT_VALUES(r4, 0, 0, 2);
    moe_tensor *i = T(MOE_I64, 1, SHAPE(1), 1);
    FAILS(moe_histogram(&bad, a, 0, 0, 1), MOE_ERR_ARG, "bins (0)");
    FAILS(moe_histogram(&bad, a, 2, 3, 1), MOE_ERR_ARG, "lo (3) must not be greater than hi (1)");
    FAILS(moe_histogram(&bad, i, 2, 0, 1), MOE_ERR_DTYPE, "floating");
    RELEASE(a, r, b, r2, e, r3, c, r4, i);
}
END_TEST

/* ---- gradients ---------------------------------------------------------------------------- */

typedef struct {
    int64_t k;
    int dim;
    bool flag;
} sctx;

static moe_status f_topk(moe_tensor **out, moe_tensor **in, void *ctx)
{
    sctx *c = ctx;
    moe_tensor *ix;
    MOE_TRY(moe_topk(out, &ix, in[0], c->k, c->dim, c->flag));
    moe_tensor_release(ix);
    return MOE_OK;
}

static moe_status f_sort(moe_tensor **out, moe_tensor **in, void *ctx)
{
    sctx *c = ctx;
    return moe_sort(out, NULL, in[0], c->dim, c->flag);
}

START_TEST(test_grad_topk_sort)
{
    /* random normals are distinct, so the selection is stable under ±eps */
    moe_tensor *a = leaf(2, SHAPE(4, 6), 1), *b = leaf(3, SHAPE(2, 5, 3), 2);
    sctx c[] = {{3, 1, true}, {2, 0, false}, {6, -1, true}};
    for (size_t i = 0; i < 3; i++) GRADCHECK(f_topk, 1, &a, &c[i]);
    sctx cb = {2, 1, true};
    GRADCHECK(f_topk, 1, &b, &cb);
    sctx s[] = {{0, 1, false}, {0, 0, true}};
    for (size_t i = 0; i < 2; i++) GRADCHECK(f_sort, 1, &a, &s[i]);
    sctx sb = {0, 1, true};
    GRADCHECK(f_sort, 1, &b, &sb);
    RELEASE(a, b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sort");
    TCase *t = tcase_create("topk");
    tcase_add_test(t, test_topk_ties);
    tcase_add_test(t, test_topk_dims);
    tcase_add_test(t, test_topk_nan_and_errors);
    tcase_add_test(t, test_topk_router_shapes);
    suite_add_tcase(s, t);
    TCase *so = tcase_create("sort");
    tcase_add_test(so, test_sort_stable);
    tcase_add_test(so, test_sort_dims_and_long_rows);
    suite_add_tcase(s, so);
    TCase *c = tcase_create("counting");
    tcase_add_test(c, test_bincount);
    tcase_add_test(c, test_histogram);
    suite_add_tcase(s, c);
    TCase *g = tcase_create("gradients");
    tcase_set_timeout(g, 60);
    tcase_add_test(g, test_grad_topk_sort);
    suite_add_tcase(s, g);
    return tu_run(s);
}
