/* check_index.c — gather, scatter_add, index_select, index_add, cat, stack,
 * split and one_hot: hand-computed values (checked against torch 1.13),
 * dtypes, non-contiguous inputs, every out-of-range index as an error, and
 * finite-difference gradients in f64. */
#include "testutil.h"

/* Out-parameter of calls expected to fail (the op must leave it NULL). */
static moe_tensor *bad;

static moe_tensor *leaf(int ndim, const int64_t *shape, uint64_t seed)
{
    moe_tensor *t = tu_randn(MOE_F64, ndim, shape, seed);
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

static moe_tensor *a33(moe_dtype dt) /* [[1 2 3] [4 5 6] [7 8 9]] */
{
    return T(dt, 2, SHAPE(3, 3), 1, 2, 3, 4, 5, 6, 7, 8, 9);
}

/* ---- gather ------------------------------------------------------------------ */

START_TEST(test_gather_values)
{
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16, MOE_I64, MOE_I32};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        moe_tensor *a = a33(dts[i]), *r0, *r1;
        moe_tensor *i0 = T(MOE_I64, 2, SHAPE(2, 3), 2, 0, 1, 1, 1, 0);
        moe_tensor *i1 = T(MOE_I32, 2, SHAPE(3, 2), 0, 2, 1, 1, 2, 0);
        OK(moe_gather(&r0, a, 0, i0));
        ck_assert_int_eq(r0->dtype, dts[i]);
        ASSERT_SHAPE(r0, 2, 2, 3);
        ASSERT_VALUES(r0, 0, 7, 2, 6, 4, 5, 3);
        OK(moe_gather(&r1, a, -1, i1));
        ASSERT_SHAPE(r1, 2, 3, 2);
        ASSERT_VALUES(r1, 0, 1, 3, 5, 5, 9, 7);
        RELEASE(a, r0, r1, i0, i1);
    }
}
END_TEST

START_TEST(test_gather_noncontiguous)
{
    /* a.t() = [[1 4 7] [2 5 8] [3 6 9]]; index smaller than a in dim 0 */
    moe_tensor *a = a33(MOE_F64), *at, *r, *ix, *ixt, *r2;
    OK(moe_transpose(&at, a, 0, 1));
    moe_tensor *idx = T(MOE_I64, 2, SHAPE(2, 2), 0, 2, 1, 1);
    OK(moe_gather(&r, at, 1, idx));
    ASSERT_VALUES(r, 0, 1, 7, 5, 5);
    /* a transposed index */
    ix = T(MOE_I64, 2, SHAPE(2, 2), 2, 0, 1, 1); /* .t() = [[2 1] [0 1]] */
    OK(moe_transpose(&ixt, ix, 0, 1));
    OK(moe_gather(&r2, a, 0, ixt));
    ASSERT_VALUES(r2, 0, 7, 5, 1, 5);
    /* an expanded (stride 0) input */
    moe_tensor *row = T(MOE_F32, 1, SHAPE(3), 10, 20, 30), *ex, *r3;
    OK(moe_expand(&ex, row, 2, SHAPE(2, 3)));
    moe_tensor *i3 = T(MOE_I64, 2, SHAPE(2, 2), 2, 1, 0, 0);
    OK(moe_gather(&r3, ex, 1, i3));
    ASSERT_VALUES(r3, 0, 30, 20, 10, 10);
    RELEASE(a, at, r, idx, ix, ixt, r2, row, ex, r3, i3);
}
END_TEST

START_TEST(test_gather_errors)
{
    moe_tensor *a = a33(MOE_F64);
    bad = (moe_tensor *)1;
    moe_tensor *neg = T(MOE_I64, 2, SHAPE(2, 2), 0, -1, 1, 1);
    moe_tensor *big = T(MOE_I32, 2, SHAPE(2, 2), 0, 1, 2, 3);
    moe_tensor *fidx = T(MOE_F32, 2, SHAPE(2, 2), 0, 1, 1, 0);
    moe_tensor *one_d = T(MOE_I64, 1, SHAPE(2), 0, 1);
    moe_tensor *wide = T(MOE_I64, 2, SHAPE(2, 4), 0, 0, 0, 0, 0, 0, 0, 0);
    FAILS(moe_gather(&bad, a, 1, neg), MOE_ERR_INDEX,
          "gather: index -1 at position [0 1] is out of range [0, 3)");
    ck_assert_ptr_null(bad);
    FAILS(moe_gather(&bad, a, 0, big), MOE_ERR_INDEX, "index 3 at position [1 1]");
    FAILS(moe_gather(&bad, a, 0, big), MOE_ERR_INDEX, "dim 0 of shape [3 3]");
    FAILS(moe_gather(&bad, a, 0, fidx), MOE_ERR_DTYPE,
          "expected an i64 or i32 index tensor, got f32");
    FAILS(moe_gather(&bad, a, 0, one_d), MOE_ERR_SHAPE, "same number of dims");
    FAILS(moe_gather(&bad, a, 0, wide), MOE_ERR_SHAPE, "larger than input [3 3] in dim 1");
    FAILS(moe_gather(&bad, a, 2, neg), MOE_ERR_INDEX, "dim 2 out of range");
    RELEASE(a, neg, big, fidx, one_d, wide);
}
END_TEST

/* ---- scatter_add ------------------------------------------------------------------ */

START_TEST(test_scatter_add_values)
{
    /* duplicate targets accumulate */
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16, MOE_I64};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        moe_tensor *a = T(dts[i], 2, SHAPE(3, 2), 1, 1, 1, 1, 1, 1);
        moe_tensor *src = T(dts[i], 2, SHAPE(2, 2), 1, 2, 3, 4);
        moe_tensor *idx = T(MOE_I64, 2, SHAPE(2, 2), 0, 2, 0, 0), *r;
        OK(moe_scatter_add(&r, a, 0, idx, src));
        ck_assert_int_eq(r->dtype, dts[i]);
        ASSERT_VALUES(r, 0, 5, 5, 1, 1, 1, 3);
        ASSERT_VALUES(a, 0, 1, 1, 1, 1, 1, 1); /* out of place */
        RELEASE(a, src, idx, r);
    }
    /* dim 1; src wider than the index (its extra column is ignored) */
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 3), 1, 1, 1, 1, 1, 1);
    moe_tensor *src = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 9, 3, 4, 9);
    moe_tensor *idx = T(MOE_I32, 2, SHAPE(2, 2), 0, 0, 2, 1), *r;
    OK(moe_scatter_add(&r, a, 1, idx, src));
    ASSERT_VALUES(r, 0, 4, 1, 1, 1, 5, 4);
    RELEASE(a, src, idx, r);
}
END_TEST

START_TEST(test_scatter_add_errors)
{
    moe_tensor *a = T(MOE_F64, 2, SHAPE(3, 2), 0, 0, 0, 0, 0, 0);
    moe_tensor *src = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    moe_tensor *src32 = T(MOE_F32, 2, SHAPE(2, 2), 1, 2, 3, 4);
    moe_tensor *neg = T(MOE_I64, 2, SHAPE(2, 2), 0, 0, -2, 0);
    moe_tensor *big = T(MOE_I64, 2, SHAPE(2, 2), 0, 3, 0, 0);
    moe_tensor *big_src = T(MOE_I64, 2, SHAPE(3, 2), 0, 0, 0, 0, 0, 0);
    FAILS(moe_scatter_add(&bad, a, 0, neg, src), MOE_ERR_INDEX,
          "scatter-add: index -2 at position [1 0]");
    FAILS(moe_scatter_add(&bad, a, 0, big, src), MOE_ERR_INDEX,
          "index 3 at position [0 1] is out of range [0, 3)");
    FAILS(moe_scatter_add(&bad, a, 1, big, src), MOE_ERR_INDEX, "out of range [0, 2) for dim 1");
    FAILS(moe_scatter_add(&bad, a, 0, big_src, src), MOE_ERR_SHAPE, "larger than src");
    FAILS(moe_scatter_add(&bad, a, 0, neg, src32), MOE_ERR_DTYPE, "input is f64 but src is f32");
    RELEASE(a, src, src32, neg, big, big_src);
}
END_TEST

/* Large scatter_add / index_add run threaded; the result must equal a serial
 * sum in index order, bit for bit. */
START_TEST(test_scatter_index_add_deterministic)
{
    int64_t N = 50, M = 400, Q = 300;
    moe_tensor *a = tu_randn(MOE_F64, 2, SHAPE(N, Q), 1),
               *src = tu_randn(MOE_F64, 2, SHAPE(M, Q), 2);
    moe_tensor *idx, *r, *r2, *ix2;
    OK(moe_tensor_randint(&idx, NULL, MOE_I64, MOE_CPU, 0, N, 1, SHAPE(M)));
    OK(moe_index_add(&r, a, 0, idx, src));
    const double *av = moe_tensor_data(a), *sv = moe_tensor_data(src), *rv = moe_tensor_data(r);
    const int64_t *iv = moe_tensor_data(idx);
    double *ref = malloc(sizeof(double) * (size_t)(N * Q));
    memcpy(ref, av, sizeof(double) * (size_t)(N * Q));
    for (int64_t m = 0; m < M; m++)
        for (int64_t q = 0; q < Q; q++) ref[iv[m] * Q + q] += sv[m * Q + q];
    for (int64_t e = 0; e < N * Q; e++)
        ck_assert_msg(rv[e] == ref[e], "index_add element %lld", (long long)e);
    /* the same through scatter_add with an index broadcast along Q */
    moe_tensor *icol, *iexp;
    OK(moe_reshape(&icol, idx, 2, SHAPE(M, 1)));
    OK(moe_expand(&iexp, icol, 2, SHAPE(M, Q)));
    OK(moe_contiguous(&ix2, iexp));
    OK(moe_scatter_add(&r2, a, 0, ix2, src));
    rv = moe_tensor_data(r2);
    for (int64_t e = 0; e < N * Q; e++)
        ck_assert_msg(rv[e] == ref[e], "scatter_add element %lld", (long long)e);
    free(ref);
    RELEASE(a, src, idx, r, r2, icol, iexp, ix2);
}
END_TEST

/* ---- index_select / index_add --------------------------------------------------------- */

START_TEST(test_index_select_values)
{
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16, MOE_I64, MOE_I32};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        moe_tensor *a = a33(dts[i]), *r0, *r1;
        moe_tensor *idx = T(MOE_I64, 1, SHAPE(3), 2, 0, 2);
        OK(moe_index_select(&r0, a, 0, idx));
        ck_assert_int_eq(r0->dtype, dts[i]);
        ASSERT_VALUES(r0, 0, 7, 8, 9, 1, 2, 3, 7, 8, 9);
        OK(moe_index_select(&r1, a, 1, idx));
        ASSERT_VALUES(r1, 0, 3, 1, 3, 6, 4, 6, 9, 7, 9);
        RELEASE(a, r0, r1, idx);
    }
    /* non-contiguous input, i32 index, empty index */
    moe_tensor *a = a33(MOE_F64), *at, *r, *r2;
    moe_tensor *idx = T(MOE_I32, 1, SHAPE(2), 1, 0), *none;
    OK(moe_tensor_empty(&none, MOE_I64, MOE_CPU, 1, SHAPE(0)));
    OK(moe_transpose(&at, a, 0, 1));
    OK(moe_index_select(&r, at, 0, idx));
    ASSERT_VALUES(r, 0, 2, 5, 8, 1, 4, 7);
    OK(moe_index_select(&r2, a, 1, none));
    ASSERT_SHAPE(r2, 2, 3, 0);
    RELEASE(a, at, r, r2, idx, none);
}
END_TEST

START_TEST(test_index_add_values)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(3, 2), 0, 0, 0, 0, 0, 0), *r, *r1;
    moe_tensor *src = T(MOE_F32, 2, SHAPE(3, 2), 1, 2, 3, 4, 5, 6);
    moe_tensor *idx = T(MOE_I64, 1, SHAPE(3), 0, 2, 0);
    OK(moe_index_add(&r, a, 0, idx, src));
    ASSERT_VALUES(r, 0, 6, 8, 0, 0, 3, 4);
    moe_tensor *b = T(MOE_F64, 2, SHAPE(2, 3), 0, 0, 0, 0, 0, 0);
    moe_tensor *src1 = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4),
               *idx1 = T(MOE_I32, 1, SHAPE(2), 2, 2);
    OK(moe_index_add(&r1, b, 1, idx1, src1));
    ASSERT_VALUES(r1, 0, 0, 0, 3, 0, 0, 7);
    RELEASE(a, src, idx, r, b, src1, idx1, r1);
}
END_TEST

START_TEST(test_index_select_add_errors)
{
    moe_tensor *a = a33(MOE_F64);
    moe_tensor *neg = T(MOE_I64, 1, SHAPE(3), 0, 1, -1), *big = T(MOE_I64, 1, SHAPE(2), 5, 0);
    moe_tensor *two_d = T(MOE_I64, 2, SHAPE(1, 2), 0, 1), *fidx = T(MOE_F64, 1, SHAPE(1), 0);
    moe_tensor *src = T(MOE_F64, 2, SHAPE(3, 3), 1, 1, 1, 1, 1, 1, 1, 1, 1);
    moe_tensor *src2 = T(MOE_F64, 2, SHAPE(2, 3), 1, 1, 1, 1, 1, 1);
    FAILS(moe_index_select(&bad, a, 0, neg), MOE_ERR_INDEX,
          "index-select: index -1 at position [2] is out of range [0, 3)");
    FAILS(moe_index_select(&bad, a, 1, big), MOE_ERR_INDEX, "index 5 at position [0]");
    FAILS(moe_index_select(&bad, a, 0, two_d), MOE_ERR_SHAPE, "0-d or 1-D");
    FAILS(moe_index_select(&bad, a, 0, fidx), MOE_ERR_DTYPE, "got f64");
    FAILS(moe_index_add(&bad, a, 0, neg, src), MOE_ERR_INDEX,
          "index-add: index -1 at position [2]");
    FAILS(moe_index_add(&bad, a, 1, big, src2), MOE_ERR_SHAPE,
          "src [2 3] must match input [3 3] except in dim 1");
    FAILS(moe_index_add(&bad, a, 0, big, src2), MOE_ERR_INDEX,
          "index 5 at position [0] is out of range [0, 3)");
    RELEASE(a, neg, big, two_d, fidx, src, src2);
}
END_TEST

/* ---- cat / stack / split ------------------------------------------------------------------ */

START_TEST(test_cat_values)
{
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4), *b = T(MOE_F64, 2, SHAPE(1, 2), 5, 6);
    moe_tensor *c = T(MOE_F64, 2, SHAPE(2, 1), 7, 8), *r0, *r1, *r2;
    OK(moe_cat(&r0, 2, (moe_tensor *[]){a, b}, 0));
    ASSERT_SHAPE(r0, 2, 3, 2);
    ASSERT_VALUES(r0, 0, 1, 2, 3, 4, 5, 6);
    OK(moe_cat(&r1, 3, (moe_tensor *[]){a, c, a}, 1));
    ASSERT_SHAPE(r1, 2, 2, 5);
    ASSERT_VALUES(r1, 0, 1, 2, 7, 1, 2, 3, 4, 8, 3, 4);
    OK(moe_cat(&r2, 2, (moe_tensor *[]){c, a}, -1));
    ASSERT_VALUES(r2, 0, 7, 1, 2, 8, 3, 4);
    /* non-contiguous input and integer dtype */
    moe_tensor *at, *r3, *i1 = T(MOE_I32, 1, SHAPE(2), 1, 2), *i2 = T(MOE_I32, 1, SHAPE(1), 3), *r4;
    OK(moe_transpose(&at, a, 0, 1)); /* [[1 3] [2 4]] */
    OK(moe_cat(&r3, 2, (moe_tensor *[]){at, b}, 0));
    ASSERT_VALUES(r3, 0, 1, 3, 2, 4, 5, 6);
    OK(moe_cat(&r4, 2, (moe_tensor *[]){i1, i2}, 0));
    ck_assert_int_eq(r4->dtype, MOE_I32);
    ASSERT_VALUES(r4, 0, 1, 2, 3);
    RELEASE(a, b, c, r0, r1, r2, at, r3, i1, i2, r4);
}
END_TEST

START_TEST(test_cat_errors)
{
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4),
               *f = T(MOE_F32, 2, SHAPE(2, 2), 1, 2, 3, 4);
    moe_tensor *b = T(MOE_F64, 2, SHAPE(1, 3), 5, 6, 7), *v = T(MOE_F64, 1, SHAPE(2), 1, 2);
    moe_tensor *s = T(MOE_F64, 0, NULL, 1);
    FAILS(moe_cat(&bad, 2, (moe_tensor *[]){a, f}, 0), MOE_ERR_DTYPE,
          "cat: tensor 1 is f32 but tensor 0 is f64");
    FAILS(moe_cat(&bad, 2, (moe_tensor *[]){a, b}, 0), MOE_ERR_SHAPE,
          "tensor 1 has shape [1 3] but tensor 0 has [2 2]; they may differ only in dim 0");
    FAILS(moe_cat(&bad, 2, (moe_tensor *[]){a, v}, 0), MOE_ERR_SHAPE, "tensor 1 has shape [2]");
    FAILS(moe_cat(&bad, 2, (moe_tensor *[]){a, a}, 2), MOE_ERR_INDEX, "dim 2 out of range");
    FAILS(moe_cat(&bad, 0, (moe_tensor *[]){a}, 0), MOE_ERR_ARG, "at least one tensor");
    FAILS(moe_cat(&bad, 2, (moe_tensor *[]){s, s}, 0), MOE_ERR_SHAPE, "0-d");
    FAILS(moe_stack(&bad, 2, (moe_tensor *[]){a, b}, 0), MOE_ERR_SHAPE,
          "stack: tensor 1 has shape [1 3] but tensor 0 has [2 2]");
    FAILS(moe_stack(&bad, 2, (moe_tensor *[]){a, a}, 3), MOE_ERR_INDEX, "dim 3 out of range");
    RELEASE(a, f, b, v, s);
}
END_TEST

START_TEST(test_stack_values)
{
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4),
               *b = T(MOE_F64, 2, SHAPE(2, 2), 5, 6, 7, 8);
    moe_tensor *r0, *r1, *r2, *rs;
    OK(moe_stack(&r0, 2, (moe_tensor *[]){a, b}, 0));
    ASSERT_SHAPE(r0, 3, 2, 2, 2);
    ASSERT_VALUES(r0, 0, 1, 2, 3, 4, 5, 6, 7, 8);
    OK(moe_stack(&r1, 2, (moe_tensor *[]){a, b}, 1));
    ASSERT_SHAPE(r1, 3, 2, 2, 2);
    ASSERT_VALUES(r1, 0, 1, 2, 5, 6, 3, 4, 7, 8);
    OK(moe_stack(&r2, 2, (moe_tensor *[]){a, b}, -1));
    ASSERT_SHAPE(r2, 3, 2, 2, 2);
    ASSERT_VALUES(r2, 0, 1, 5, 2, 6, 3, 7, 4, 8);
    moe_tensor *s1 = T(MOE_I64, 0, NULL, 4), *s2 = T(MOE_I64, 0, NULL, -3);
    OK(moe_stack(&rs, 3, (moe_tensor *[]){s1, s2, s1}, 0));
    ASSERT_SHAPE(rs, 1, 3);
    ASSERT_VALUES(rs, 0, 4, -3, 4);
    RELEASE(a, b, r0, r1, r2, rs, s1, s2);
}
END_TEST

START_TEST(test_split_views)
{
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 5), 0, 1, 2, 3, 4, 5, 6, 7, 8, 9), *p[3];
    OK(moe_split(p, a, 3, SHAPE(2, 0, 3), 1));
    ASSERT_SHAPE(p[0], 2, 2, 2);
    ASSERT_SHAPE(p[1], 2, 2, 0);
    ASSERT_SHAPE(p[2], 2, 2, 3);
    ASSERT_VALUES(p[0], 0, 0, 1, 5, 6);
    ASSERT_VALUES(p[2], 0, 2, 3, 4, 7, 8, 9);
    ck_assert_ptr_eq(p[2]->storage, a->storage); /* views share storage */
    OK(moe_tensor_set(p[2], SHAPE(1, 0), 70));
    double v;
    OK(moe_tensor_get(a, SHAPE(1, 2), &v));
    ck_assert(v == 70);
    RELEASE(p[0], p[1], p[2]);
    OK(moe_split(p, a, 2, SHAPE(1, 1), -2));
    ASSERT_VALUES(p[1], 0, 5, 6, 70, 8, 9);
    RELEASE(p[0], p[1]);
    p[0] = (moe_tensor *)1;
    FAILS(moe_split(p, a, 2, SHAPE(2, 2), 1), MOE_ERR_SHAPE,
          "sizes [2 2] sum to 4 but dim 1 of [2 5] has size 5");
    ck_assert_ptr_null(p[0]);
    FAILS(moe_split(p, a, 2, SHAPE(6, -1), 1), MOE_ERR_ARG, "negative size -1");
    RELEASE(a);
}
END_TEST

START_TEST(test_one_hot)
{
    moe_tensor *idx = T(MOE_I64, 2, SHAPE(2, 2), 0, 2, 1, 2), *r, *r2;
    OK(moe_one_hot(&r, idx, 4));
    ck_assert_int_eq(r->dtype, MOE_I64);
    ck_assert(!r->requires_grad);
    ASSERT_SHAPE(r, 3, 2, 2, 4);
    ASSERT_VALUES(r, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0);
    moe_tensor *i32 = T(MOE_I32, 1, SHAPE(3), 1, 0, 1);
    OK(moe_one_hot(&r2, i32, -1)); /* infer: 2 classes */
    ASSERT_SHAPE(r2, 2, 3, 2);
    ASSERT_VALUES(r2, 0, 0, 1, 1, 0, 0, 1);
    moe_tensor *neg = T(MOE_I64, 1, SHAPE(2), 1, -3), *fl = T(MOE_F32, 1, SHAPE(1), 0);
    FAILS(moe_one_hot(&bad, idx, 2), MOE_ERR_INDEX,
          "one-hot: index 2 at position [0 1] is out of range [0, 2) for 2 classes");
    FAILS(moe_one_hot(&bad, neg, 4), MOE_ERR_INDEX, "index -3 at position [1]");
    FAILS(moe_one_hot(&bad, fl, 4), MOE_ERR_DTYPE, "got f32");
    FAILS(moe_one_hot(&bad, idx, -5), MOE_ERR_ARG, "num_classes");
    RELEASE(idx, r, i32, r2, neg, fl);
}
END_TEST

/* ---- gradients ---------------------------------------------------------------------- */

typedef struct {
    moe_tensor *idx;
    int dim;
} ictx;

static moe_status f_gather(moe_tensor **out, moe_tensor **in, void *ctx)
{
    ictx *c = ctx;
    return moe_gather(out, in[0], c->dim, c->idx);
}

static moe_status f_scatter_add(moe_tensor **out, moe_tensor **in, void *ctx)
{
    ictx *c = ctx;
    return moe_scatter_add(out, in[0], c->dim, c->idx, in[1]);
}

static moe_status f_index_select(moe_tensor **out, moe_tensor **in, void *ctx)
{
    ictx *c = ctx;
    return moe_index_select(out, in[0], c->dim, c->idx);
}

static moe_status f_index_add(moe_tensor **out, moe_tensor **in, void *ctx)
{
    ictx *c = ctx;
    return moe_index_add(out, in[0], c->dim, c->idx, in[1]);
}

START_TEST(test_grad_gather_scatter)
{
    moe_tensor *a = leaf(2, SHAPE(3, 4), 1);
    ictx c0 = {T(MOE_I64, 2, SHAPE(2, 4), 2, 0, 0, 1, 2, 2, 1, 0), 0};
    ictx c1 = {T(MOE_I32, 2, SHAPE(3, 3), 3, 3, 0, 1, 2, 1, 0, 0, 0), 1};
    GRADCHECK(f_gather, 1, &a, &c0);
    GRADCHECK(f_gather, 1, &a, &c1);
    /* scatter_add: both inputs, duplicates, and a src bigger than the index */
    moe_tensor *in[2] = {leaf(2, SHAPE(3, 4), 2), leaf(2, SHAPE(2, 4), 3)};
    GRADCHECK(f_scatter_add, 2, in, &c0);
    moe_tensor *in1[2] = {leaf(2, SHAPE(3, 4), 4), leaf(2, SHAPE(4, 5), 5)};
    GRADCHECK(f_scatter_add, 2, in1, &c1);
    RELEASE(a, c0.idx, c1.idx, in[0], in[1], in1[0], in1[1]);
}
END_TEST

START_TEST(test_grad_index_select_add)
{
    moe_tensor *a = leaf(3, SHAPE(3, 4, 2), 6);
    ictx c0 = {T(MOE_I64, 1, SHAPE(4), 2, 0, 2, 1), 0};
    ictx c1 = {T(MOE_I32, 1, SHAPE(5), 3, 3, 0, 1, 3), 1};
    GRADCHECK(f_index_select, 1, &a, &c0);
    GRADCHECK(f_index_select, 1, &a, &c1);
    moe_tensor *in0[2] = {leaf(3, SHAPE(3, 4, 2), 7), leaf(3, SHAPE(4, 4, 2), 8)};
    GRADCHECK(f_index_add, 2, in0, &c0);
    moe_tensor *in1[2] = {leaf(3, SHAPE(3, 4, 2), 9), leaf(3, SHAPE(3, 5, 2), 10)};
    GRADCHECK(f_index_add, 2, in1, &c1);
    RELEASE(a, c0.idx, c1.idx, in0[0], in0[1], in1[0], in1[1]);
}
END_TEST

static moe_status f_cat(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_cat(out, 3, in, *(int *)ctx);
}

static moe_status f_stack(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_stack(out, 3, in, *(int *)ctx);
}

/* More inputs than a node holds: a join of joins. */
static moe_status f_cat_many(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_cat(out, 19, in, 0);
}

static moe_status f_stack_many(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_stack(out, 19, in, 1);
}

static moe_status f_split_piece(moe_tensor **out, moe_tensor **in, void *ctx)
{
    int want = *(int *)ctx;
    moe_tensor *p[3];
    MOE_TRY(moe_split(p, in[0], 3, SHAPE(1, 3, 2), 1));
    for (int i = 0; i < 3; i++)
        if (i == want)
            *out = p[i];
        else
            moe_tensor_release(p[i]);
    return MOE_OK;
}

START_TEST(test_grad_join)
{
    int d0 = 0, d1 = 1, dm = -1;
    moe_tensor *cin[3] = {leaf(2, SHAPE(2, 3), 11), leaf(2, SHAPE(1, 3), 12),
                          leaf(2, SHAPE(2, 3), 13)};
    GRADCHECK(f_cat, 3, cin, &d0);
    moe_tensor *cin1[3] = {leaf(2, SHAPE(2, 1), 14), leaf(2, SHAPE(2, 3), 15),
                           leaf(2, SHAPE(2, 2), 16)};
    OK(moe_tensor_requires_grad_(cin1[1], false)); /* a constant among variables */
    GRADCHECK(f_cat, 3, cin1, &dm);
    moe_tensor *sin[3] = {leaf(2, SHAPE(2, 3), 17), leaf(2, SHAPE(2, 3), 18),
                          leaf(2, SHAPE(2, 3), 19)};
    GRADCHECK(f_stack, 3, sin, &d1);
    GRADCHECK(f_stack, 3, sin, &dm);
    moe_tensor *many[19];
    for (int i = 0; i < 19; i++) many[i] = leaf(2, SHAPE(i % 3 + 1, 2), 100 + (uint64_t)i);
    GRADCHECK(f_cat_many, 19, many, NULL);
    moe_tensor *same[19];
    for (int i = 0; i < 19; i++) same[i] = leaf(2, SHAPE(2, 2), 200 + (uint64_t)i);
    GRADCHECK(f_stack_many, 19, same, NULL);
    moe_tensor *big_out;
    OK(moe_stack(&big_out, 19, same, 1));
    ASSERT_SHAPE(big_out, 3, 2, 19, 2);
    ck_assert(big_out->requires_grad);
    moe_tensor *x = leaf(2, SHAPE(2, 6), 20);
    for (int i = 0; i < 3; i++) GRADCHECK(f_split_piece, 1, &x, &i);
    for (int i = 0; i < 3; i++) RELEASE(cin[i], cin1[i], sin[i]);
    for (int i = 0; i < 19; i++) RELEASE(many[i], same[i]);
    RELEASE(big_out, x);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("index");
    TCase *g = tcase_create("gather-scatter");
    tcase_add_test(g, test_gather_values);
    tcase_add_test(g, test_gather_noncontiguous);
    tcase_add_test(g, test_gather_errors);
    tcase_add_test(g, test_scatter_add_values);
    tcase_add_test(g, test_scatter_add_errors);
    tcase_add_test(g, test_scatter_index_add_deterministic);
    suite_add_tcase(s, g);
    TCase *ix = tcase_create("index-select-add");
    tcase_add_test(ix, test_index_select_values);
    tcase_add_test(ix, test_index_add_values);
    tcase_add_test(ix, test_index_select_add_errors);
    tcase_add_test(ix, test_one_hot);
    suite_add_tcase(s, ix);
    TCase *j = tcase_create("join");
    tcase_add_test(j, test_cat_values);
    tcase_add_test(j, test_cat_errors);
    tcase_add_test(j, test_stack_values);
    tcase_add_test(j, test_split_views);
    suite_add_tcase(s, j);
    TCase *gr = tcase_create("gradients");
    tcase_set_timeout(gr, 60);
    tcase_add_test(gr, test_grad_gather_scatter);
    tcase_add_test(gr, test_grad_index_select_add);
    tcase_add_test(gr, test_grad_join);
    suite_add_tcase(s, gr);
    return tu_run(s);
}
