/* check_matmul.c — matmul, bmm, linear: values, layouts, dtypes, errors,
 * gradients. */
#include <omp.h>

#include "testutil.h"

/* Naive reference for a 2-D product, f64. */
static moe_tensor *ref_mm2(const moe_tensor *a, const moe_tensor *b)
{
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    moe_tensor *c;
    OK(moe_tensor_zeros(&c, MOE_F64, MOE_CPU, 2, SHAPE(m, n)));
    double *cv = moe_tensor_data(c);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++)
            for (int64_t p = 0; p < k; p++) {
                double x, y;
                OK(moe_tensor_get(a, SHAPE(i, p), &x));
                OK(moe_tensor_get(b, SHAPE(p, j), &y));
                cv[i * n + j] += x * y;
            }
    return c;
}

/* The same reference from the operands' values in logical order: fast
 * enough for products of a few million multiply-adds. */
static moe_tensor *ref_mm2_fast(const moe_tensor *a, const moe_tensor *b)
{
    int64_t m = a->shape[0], k = a->shape[1], n = b->shape[1];
    double *av = malloc(sizeof *av * (size_t)(m * k)), *bv = malloc(sizeof *bv * (size_t)(k * n));
    ck_assert_ptr_nonnull(av);
    ck_assert_ptr_nonnull(bv);
    OK(moe_tensor_to_doubles(a, av));
    OK(moe_tensor_to_doubles(b, bv));
    moe_tensor *c;
    OK(moe_tensor_zeros(&c, MOE_F64, MOE_CPU, 2, SHAPE(m, n)));
    double *cv = moe_tensor_data(c);
    for (int64_t i = 0; i < m; i++)
        for (int64_t p = 0; p < k; p++)
            for (int64_t j = 0; j < n; j++) cv[i * n + j] += av[i * k + p] * bv[p * n + j];
    free(av);
    free(bv);
    return c;
}

/* ---- values ------------------------------------------------------------------- */

START_TEST(test_2x3_at_3x2)
{
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16};
    for (int i = 0; i < 3; i++) {
        moe_tensor *a = T(dts[i], 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
        moe_tensor *b = T(dts[i], 2, SHAPE(3, 2), 7, 8, 9, 10, 11, 12);
        moe_tensor *c;
        OK(moe_matmul(&c, a, b));
        ck_assert_int_eq(c->dtype, dts[i]);
        ASSERT_SHAPE(c, 2, 2, 2);
        ASSERT_VALUES(c, 0, 58, 64, 139, 154);
        RELEASE(a, b, c);
    }
}
END_TEST

START_TEST(test_vectors)
{
    moe_tensor *u = T(MOE_F64, 1, SHAPE(3), 1, 2, 3), *v = T(MOE_F64, 1, SHAPE(3), 4, 5, 6);
    moe_tensor *m23 = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    moe_tensor *w = T(MOE_F64, 1, SHAPE(2), 1, 2), *x = T(MOE_F64, 1, SHAPE(3), 1, 0, -1);
    moe_tensor *dot, *vm, *mv;
    OK(moe_matmul(&dot, u, v)); /* 1-D · 1-D → 0-d */
    ck_assert_int_eq(dot->ndim, 0);
    ASSERT_VALUES(dot, 0, 32);
    OK(moe_matmul(&vm, w, m23)); /* [2] @ [2 3] → [3] */
    ASSERT_SHAPE(vm, 1, 3);
    ASSERT_VALUES(vm, 0, 9, 12, 15);
    OK(moe_matmul(&mv, m23, x)); /* [2 3] @ [3] → [2] */
    ASSERT_SHAPE(mv, 1, 2);
    ASSERT_VALUES(mv, 0, -2, -2);
    RELEASE(u, v, m23, w, x, dot, vm, mv);

    /* 1-D against a batch: [3] @ [2 3 2] → [2 2], [2 2 3] @ [3] → [2 2] */
    moe_tensor *bt = T(MOE_F32, 3, SHAPE(2, 3, 2), 1, 2, 3, 4, 5, 6, 1, 0, 0, 1, 1, 1);
    moe_tensor *r = T(MOE_F32, 1, SHAPE(3), 1, 1, 2), *o;
    OK(moe_matmul(&o, r, bt));
    ASSERT_SHAPE(o, 2, 2, 2);
    ASSERT_VALUES(o, 0, 14, 18, 3, 3);
    moe_tensor *bl = T(MOE_F32, 3, SHAPE(2, 2, 3), 1, 2, 3, 4, 5, 6, 1, 0, 0, 1, 1, 1), *o2;
    OK(moe_matmul(&o2, bl, r));
    ASSERT_SHAPE(o2, 2, 2, 2);
    ASSERT_VALUES(o2, 0, 9, 21, 1, 4);
    RELEASE(bt, r, o, bl, o2);
}
END_TEST

START_TEST(test_batched_broadcast)
{
    moe_tensor *a = tu_randn(MOE_F64, 4, SHAPE(2, 1, 3, 4), 1);
    moe_tensor *b = tu_randn(MOE_F64, 3, SHAPE(3, 4, 5), 2);
    moe_tensor *c;
    OK(moe_matmul(&c, a, b));
    ASSERT_SHAPE(c, 4, 2, 3, 3, 5);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++) {
            moe_tensor *ai, *ai0, *bj, *ci, *cij, *ref;
            OK(moe_select(&ai, a, 0, i));
            OK(moe_select(&ai0, ai, 0, 0));
            OK(moe_select(&bj, b, 0, j));
            OK(moe_select(&ci, c, 0, i));
            OK(moe_select(&cij, ci, 0, j));
            ref = ref_mm2(ai0, bj);
            ASSERT_CLOSE(cij, ref, 1e-12);
            RELEASE(ai, ai0, bj, ci, cij, ref);
        }
    RELEASE(a, b, c);

    /* A shared right operand folds the batch into one GEMM: same numbers. */
    moe_tensor *x = tu_randn(MOE_F32, 3, SHAPE(4, 3, 6), 3), *w = tu_randn(MOE_F32, 2, SHAPE(6, 2), 4);
    moe_tensor *y;
    OK(moe_matmul(&y, x, w));
    ASSERT_SHAPE(y, 3, 4, 3, 2);
    for (int i = 0; i < 4; i++) {
        moe_tensor *xi, *yi, *ref;
        OK(moe_select(&xi, x, 0, i));
        OK(moe_select(&yi, y, 0, i));
        ref = ref_mm2(xi, w);
        tu_assert_close(yi, ref, 1e-5, 1e-5, "folded batch");
        RELEASE(xi, yi, ref);
    }
    RELEASE(x, w, y);
}
END_TEST

START_TEST(test_bmm_values)
{
    moe_tensor *a = T(MOE_F64, 3, SHAPE(2, 1, 2), 1, 2, 3, 4);
    moe_tensor *b = T(MOE_F64, 3, SHAPE(2, 2, 2), 1, 0, 0, 1, 2, 1, 1, 2);
    moe_tensor *c;
    OK(moe_bmm(&c, a, b));
    ASSERT_SHAPE(c, 3, 2, 1, 2);
    ASSERT_VALUES(c, 0, 1, 2, 10, 11);
    RELEASE(a, b, c);
}
END_TEST

START_TEST(test_empty_dims)
{
    moe_tensor *a, *b, *c;
    OK(moe_tensor_empty(&a, MOE_F32, MOE_CPU, 2, SHAPE(2, 0)));
    OK(moe_tensor_empty(&b, MOE_F32, MOE_CPU, 2, SHAPE(0, 3)));
    OK(moe_matmul(&c, a, b)); /* K = 0: zeros */
    ASSERT_SHAPE(c, 2, 2, 3);
    ASSERT_VALUES(c, 0, 0, 0, 0, 0, 0, 0);
    moe_tensor *e = tu_randn(MOE_F32, 2, SHAPE(3, 2), 1), *d;
    OK(moe_matmul(&d, b, e)); /* M = 0: an empty result */
    ASSERT_SHAPE(d, 2, 0, 2);
    RELEASE(a, b, c, e, d);
}
END_TEST

/* ---- layouts ------------------------------------------------------------------------ */

START_TEST(test_transposed_views)
{
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_BF16};
    for (int i = 0; i < 3; i++) {
        moe_tensor *a0 = tu_randn(dts[i], 2, SHAPE(5, 3), 10), *b0 = tu_randn(dts[i], 2, SHAPE(4, 5), 11);
        moe_tensor *at, *bt, *ac, *bc, *c1, *c2, *c3, *c4;
        OK(moe_transpose(&at, a0, 0, 1)); /* [3 5], strides (1 3) */
        OK(moe_transpose(&bt, b0, 0, 1)); /* [5 4], strides (1 5) */
        OK(moe_contiguous(&ac, at));
        OK(moe_contiguous(&bc, bt));
        OK(moe_matmul(&c1, at, bt));
        OK(moe_matmul(&c2, ac, bc));
        OK(moe_matmul(&c3, at, bc));
        OK(moe_matmul(&c4, ac, bt));
        ASSERT_SHAPE(c1, 2, 3, 4);
        double tol = dts[i] == MOE_BF16 ? 2e-2 : dts[i] == MOE_F32 ? 1e-5 : 1e-12;
        tu_assert_close(c1, c2, tol, tol, "trans @ trans");
        tu_assert_close(c3, c2, tol, tol, "trans @ plain");
        tu_assert_close(c4, c2, tol, tol, "plain @ trans");
        RELEASE(a0, b0, at, bt, ac, bc, c1, c2, c3, c4);
    }
}
END_TEST

/* Products big enough that gemm.c splits them over the threads, by rows
 * (M >= N) and by columns (M < N), with sizes that are not whole tiles and
 * transposed operands: every block lands where it belongs. */
START_TEST(test_split_over_threads)
{
    int saved = omp_get_max_threads();
    omp_set_num_threads(2);
    const int64_t sizes[][3] = {{300, 96, 200}, {200, 96, 300}, {70, 512, 64}};
    moe_dtype dts[] = {MOE_F32, MOE_F64};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 3; i++) {
            int64_t m = sizes[i][0], k = sizes[i][1], n = sizes[i][2];
            moe_tensor *a = tu_randn(dts[d], 2, SHAPE(m, k), 40 + i);
            moe_tensor *b = tu_randn(dts[d], 2, SHAPE(k, n), 50 + i);
            moe_tensor *a0 = tu_randn(dts[d], 2, SHAPE(k, m), 60 + i);
            moe_tensor *b0 = tu_randn(dts[d], 2, SHAPE(n, k), 70 + i);
            moe_tensor *at, *bt, *c1, *c2, *r1, *r2;
            OK(moe_transpose(&at, a0, 0, 1)); /* [m k] stored transposed */
            OK(moe_transpose(&bt, b0, 0, 1)); /* [k n] stored transposed */
            OK(moe_matmul(&c1, a, b));
            OK(moe_matmul(&c2, at, bt));
            r1 = ref_mm2_fast(a, b);
            r2 = ref_mm2_fast(at, bt);
            double tol = dts[d] == MOE_F32 ? 1e-4 : 1e-12;
            tu_assert_close(c1, r1, tol, tol, "split plain @ plain");
            tu_assert_close(c2, r2, tol, tol, "split trans @ trans");
            RELEASE(a, b, a0, b0, at, bt, c1, c2, r1, r2);
        }
    omp_set_num_threads(saved);
}
END_TEST

START_TEST(test_no_copies_for_views)
{
    /* Transposed views go straight to BLAS: the only new memory is the result. */
    moe_tensor *a0 = tu_randn(MOE_F32, 2, SHAPE(32, 64), 1), *b0 = tu_randn(MOE_F32, 2, SHAPE(48, 32), 2);
    moe_tensor *at, *bt, *c;
    OK(moe_transpose(&at, a0, 0, 1)); /* [64 32] */
    OK(moe_transpose(&bt, b0, 0, 1)); /* [32 48] */
    moe_memory_stats before, after;
    moe_memory_peak_reset(MOE_CPU);
    moe_memory_stats_get(MOE_CPU, &before);
    OK(moe_matmul(&c, at, bt));
    moe_memory_stats_get(MOE_CPU, &after);
    ck_assert_int_eq(after.peak_bytes - before.live_bytes, 64 * 48 * 4);
    moe_tensor *ref, *ac, *bc;
    OK(moe_contiguous(&ac, at));
    OK(moe_contiguous(&bc, bt));
    OK(moe_matmul(&ref, ac, bc));
    tu_assert_close(c, ref, 1e-5, 1e-5, "views vs contiguous");
    /* linear reads W [N K] as Wᵀ in place, and folds x's leading dims into M */
    moe_tensor *x = tu_randn(MOE_F32, 3, SHAPE(2, 16, 32), 3), *y;
    moe_memory_peak_reset(MOE_CPU);
    moe_memory_stats_get(MOE_CPU, &before);
    OK(moe_linear(&y, x, b0, NULL));
    moe_memory_stats_get(MOE_CPU, &after);
    ASSERT_SHAPE(y, 3, 2, 16, 48);
    ck_assert_int_eq(after.peak_bytes - before.live_bytes, 2 * 16 * 48 * 4);
    RELEASE(a0, b0, at, bt, c, ref, ac, bc, x, y);
}
END_TEST

START_TEST(test_strided_operands)
{
    /* Neither stride is 1 (a select of the last dim) and a zero-stride
     * (expanded) operand: both are copied, same numbers. */
    moe_tensor *x = tu_randn(MOE_F64, 3, SHAPE(3, 4, 2), 5), *xs, *xc;
    OK(moe_select(&xs, x, 2, 1)); /* [3 4], strides (8 2) */
    OK(moe_contiguous(&xc, xs));
    moe_tensor *row = T(MOE_F64, 2, SHAPE(1, 5), 1, 2, 3, 4, 5), *ex, *exc;
    OK(moe_expand(&ex, row, 2, SHAPE(4, 5))); /* strides (0 1) */
    OK(moe_contiguous(&exc, ex));
    moe_tensor *c1, *c2;
    OK(moe_matmul(&c1, xs, ex));
    OK(moe_matmul(&c2, xc, exc));
    ASSERT_CLOSE(c1, c2, 1e-12);
    RELEASE(x, xs, xc, row, ex, exc, c1, c2);
}
END_TEST

/* ---- linear --------------------------------------------------------------------------- */

START_TEST(test_linear_values)
{
    moe_tensor *x = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    moe_tensor *w = T(MOE_F32, 2, SHAPE(2, 3), 1, 0, -1, 0.5, 0.5, 0.5);
    moe_tensor *b = T(MOE_F32, 1, SHAPE(2), 10, 20);
    moe_tensor *y, *y0;
    OK(moe_linear(&y, x, w, b));
    ASSERT_SHAPE(y, 2, 2, 2);
    ASSERT_VALUES(y, 0, 8, 23, 8, 27.5);
    OK(moe_linear(&y0, x, w, NULL));
    ASSERT_VALUES(y0, 0, -2, 3, -2, 7.5);
    RELEASE(x, w, b, y, y0);

    /* 3-D x: the same as the 2-D rows; 1-D x: one row. */
    moe_tensor *x3 = tu_randn(MOE_F64, 3, SHAPE(2, 3, 4), 6), *w3 = tu_randn(MOE_F64, 2, SHAPE(5, 4), 7);
    moe_tensor *b3 = tu_randn(MOE_F64, 1, SHAPE(5), 8), *x2, *y3, *y2, *y3r;
    OK(moe_linear(&y3, x3, w3, b3));
    ASSERT_SHAPE(y3, 3, 2, 3, 5);
    OK(moe_reshape(&x2, x3, 2, SHAPE(6, 4)));
    OK(moe_linear(&y2, x2, w3, b3));
    OK(moe_reshape(&y3r, y3, 2, SHAPE(6, 5)));
    ASSERT_CLOSE(y3r, y2, 1e-12);
    moe_tensor *x1, *y1, *y2row;
    OK(moe_select(&x1, x2, 0, 4));
    OK(moe_linear(&y1, x1, w3, b3));
    ASSERT_SHAPE(y1, 1, 5);
    OK(moe_select(&y2row, y2, 0, 4));
    ASSERT_CLOSE(y1, y2row, 1e-12);
    RELEASE(x3, w3, b3, x2, y3, y2, y3r, x1, y1, y2row);
}
END_TEST

/* ---- errors ------------------------------------------------------------------------------ */

START_TEST(test_errors)
{
    moe_tensor *a = tu_randn(MOE_F32, 2, SHAPE(4, 8), 1), *b = tu_randn(MOE_F32, 2, SHAPE(7, 3), 2);
    moe_tensor *out = (moe_tensor *)1;
    FAILS(moe_matmul(&out, a, b), MOE_ERR_SHAPE, "matmul: inner dimensions differ: [4 8] @ [7 3]");
    ck_assert_ptr_null(out);
    moe_tensor *ia, *s0;
    OK(moe_tensor_zeros(&ia, MOE_I64, MOE_CPU, 2, SHAPE(8, 2)));
    FAILS(moe_matmul(&out, a, ia), MOE_ERR_DTYPE, "i64");
    FAILS(moe_bmm(&out, ia, a), MOE_ERR_DTYPE, "bmm");
    OK(moe_tensor_scalar(&s0, MOE_F32, MOE_CPU, 2));
    FAILS(moe_matmul(&out, s0, a), MOE_ERR_SHAPE, "at least 1 dim");
    FAILS(moe_matmul(&out, a, s0), MOE_ERR_SHAPE, "[4 8] @ []");

    moe_tensor *p = tu_randn(MOE_F32, 3, SHAPE(2, 3, 4), 3), *q = tu_randn(MOE_F32, 3, SHAPE(3, 4, 5), 4);
    FAILS(moe_matmul(&out, p, q), MOE_ERR_SHAPE, "batch dims do not broadcast: [2 3 4] @ [3 4 5]");
    FAILS(moe_bmm(&out, p, q), MOE_ERR_SHAPE, "bmm: batch sizes differ");
    FAILS(moe_bmm(&out, a, b), MOE_ERR_SHAPE, "expected [B M K] @ [B K N]");
    moe_tensor *q2 = tu_randn(MOE_F32, 3, SHAPE(2, 5, 4), 5);
    FAILS(moe_bmm(&out, p, q2), MOE_ERR_SHAPE, "bmm: inner dimensions differ: [2 3 4] @ [2 5 4]");

    moe_tensor *w = tu_randn(MOE_F32, 2, SHAPE(3, 7), 6), *bias = tu_randn(MOE_F32, 1, SHAPE(4), 7);
    FAILS(moe_linear(&out, a, w, NULL), MOE_ERR_SHAPE, "linear: input [4 8] does not fit weight [3 7]");
    FAILS(moe_linear(&out, a, p, NULL), MOE_ERR_SHAPE, "weight must be [out in]");
    moe_tensor *w8 = tu_randn(MOE_F32, 2, SHAPE(3, 8), 8);
    FAILS(moe_linear(&out, a, w8, bias), MOE_ERR_SHAPE, "bias [4] does not match weight [3 8]");
    FAILS(moe_linear(&out, ia, w8, NULL), MOE_ERR_DTYPE, "linear");
    ck_assert_ptr_null(out);
    RELEASE(a, b, ia, s0, p, q, q2, w, bias, w8);
}
END_TEST

/* ---- gradients ------------------------------------------------------------------------------ */

static moe_status f_matmul(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_matmul(out, in[0], in[1]);
}

static moe_status f_matmul_tt(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx; /* transposed views of both inputs */
    moe_tensor *at, *bt;
    MOE_TRY(moe_transpose(&at, in[0], 0, 1));
    moe_status st = moe_transpose(&bt, in[1], -1, -2);
    if (st == MOE_OK) st = moe_matmul(out, at, bt);
    moe_tensor_release(at);
    moe_tensor_release(bt);
    return st;
}

static moe_status f_bmm(moe_tensor **out, moe_tensor **in, void *ctx)
{
    (void)ctx;
    return moe_bmm(out, in[0], in[1]);
}

static moe_status f_linear(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_linear(out, in[0], in[1], ctx ? in[2] : NULL);
}

static void gradcheck_pair(tu_fn fn, int nda, const int64_t *sa, int ndb, const int64_t *sb,
                           uint64_t seed)
{
    moe_tensor *in[2] = {tu_randn(MOE_F64, nda, sa, seed), tu_randn(MOE_F64, ndb, sb, seed + 1)};
    OK(moe_tensor_requires_grad_(in[0], true));
    OK(moe_tensor_requires_grad_(in[1], true));
    GRADCHECK(fn, 2, in, NULL);
    /* one side only */
    OK(moe_tensor_requires_grad_(in[0], false));
    GRADCHECK(fn, 2, in, NULL);
    RELEASE(in[0], in[1]);
}

START_TEST(test_grad_matmul)
{
    gradcheck_pair(f_matmul, 2, SHAPE(3, 4), 2, SHAPE(4, 2), 20);
    gradcheck_pair(f_matmul, 4, SHAPE(2, 1, 3, 4), 3, SHAPE(3, 4, 5), 21); /* broadcast batch */
    gradcheck_pair(f_matmul, 3, SHAPE(2, 3, 4), 2, SHAPE(4, 2), 22);       /* shared right */
    gradcheck_pair(f_matmul, 2, SHAPE(3, 4), 3, SHAPE(2, 4, 2), 23);       /* shared left */
    gradcheck_pair(f_matmul, 1, SHAPE(4), 1, SHAPE(4), 24);                /* dot */
    gradcheck_pair(f_matmul, 1, SHAPE(4), 2, SHAPE(4, 3), 25);             /* vec @ mat */
    gradcheck_pair(f_matmul, 2, SHAPE(3, 4), 1, SHAPE(4), 26);             /* mat @ vec */
    gradcheck_pair(f_matmul, 1, SHAPE(4), 3, SHAPE(2, 4, 3), 27);          /* vec @ batch */
    gradcheck_pair(f_matmul, 3, SHAPE(2, 3, 4), 1, SHAPE(4), 28);          /* batch @ vec */
    gradcheck_pair(f_matmul_tt, 2, SHAPE(4, 3), 2, SHAPE(2, 4), 29);       /* transposed views */
}
END_TEST

START_TEST(test_grad_bmm)
{
    gradcheck_pair(f_bmm, 3, SHAPE(2, 3, 4), 3, SHAPE(2, 4, 5), 30);
}
END_TEST

START_TEST(test_grad_linear)
{
    int64_t xs[2][3] = {{3, 4}, {2, 3, 4}};
    int xnd[2] = {2, 3};
    for (int c = 0; c < 2; c++) {
        moe_tensor *in[3] = {tu_randn(MOE_F64, xnd[c], xs[c], 40 + c), tu_randn(MOE_F64, 2, SHAPE(5, 4), 42),
                             tu_randn(MOE_F64, 1, SHAPE(5), 43)};
        for (int i = 0; i < 3; i++) OK(moe_tensor_requires_grad_(in[i], true));
        GRADCHECK(f_linear, 3, in, (void *)1); /* with bias */
        moe_tensor_zero_grad(in[2]);
        GRADCHECK(f_linear, 2, in, NULL); /* without */
        RELEASE(in[0], in[1], in[2]);
    }
    /* 1-D x */
    moe_tensor *in[3] = {tu_randn(MOE_F64, 1, SHAPE(4), 44), tu_randn(MOE_F64, 2, SHAPE(5, 4), 45),
                         tu_randn(MOE_F64, 1, SHAPE(5), 46)};
    for (int i = 0; i < 3; i++) OK(moe_tensor_requires_grad_(in[i], true));
    GRADCHECK(f_linear, 3, in, (void *)1);
    RELEASE(in[0], in[1], in[2]);
}
END_TEST

START_TEST(test_grad_dtypes)
{
    /* f32 and bf16 gradients come back in the input dtype with the f64 values. */
    moe_dtype dts[] = {MOE_F32, MOE_BF16};
    for (int i = 0; i < 2; i++) {
        moe_tensor *a = T(dts[i], 2, SHAPE(2, 2), 1, 2, 3, 4), *b = T(dts[i], 2, SHAPE(2, 2), 1, 0, 2, 1);
        OK(moe_tensor_requires_grad_(a, true));
        OK(moe_tensor_requires_grad_(b, true));
        moe_tensor *c, *g = T(dts[i], 2, SHAPE(2, 2), 1, 1, 1, 1);
        OK(moe_matmul(&c, a, b));
        OK(moe_backward(c, g, false));
        ck_assert_int_eq(a->grad->dtype, dts[i]);
        ASSERT_VALUES(a->grad, 0, 1, 3, 1, 3); /* g @ bᵀ */
        ASSERT_VALUES(b->grad, 0, 4, 4, 6, 6); /* aᵀ @ g */
        RELEASE(a, b, c, g);
    }
    /* mixed f32 @ f64: an f64 result, each gradient in its input's dtype */
    moe_tensor *a = T(MOE_F32, 2, SHAPE(1, 2), 1, 2), *b = T(MOE_F64, 2, SHAPE(2, 1), 3, 4), *c;
    OK(moe_tensor_requires_grad_(a, true));
    OK(moe_tensor_requires_grad_(b, true));
    OK(moe_matmul(&c, a, b));
    ck_assert_int_eq(c->dtype, MOE_F64);
    ASSERT_VALUES(c, 0, 11);
    OK(moe_backward(c, NULL, false));
    ck_assert_int_eq(a->grad->dtype, MOE_F32);
    ck_assert_int_eq(b->grad->dtype, MOE_F64);
    ASSERT_VALUES(a->grad, 0, 3, 4);
    ASSERT_VALUES(b->grad, 0, 1, 2);
    RELEASE(a, b, c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("matmul");
    TCase *tv = tcase_create("values");
    tcase_add_test(tv, test_2x3_at_3x2);
    tcase_add_test(tv, test_vectors);
    tcase_add_test(tv, test_batched_broadcast);
    tcase_add_test(tv, test_bmm_values);
    tcase_add_test(tv, test_empty_dims);
    suite_add_tcase(s, tv);
    TCase *tl = tcase_create("layouts");
    tcase_add_test(tl, test_transposed_views);
    tcase_add_test(tl, test_no_copies_for_views);
    tcase_add_test(tl, test_split_over_threads);
    tcase_add_test(tl, test_strided_operands);
    suite_add_tcase(s, tl);
    TCase *tn = tcase_create("linear");
    tcase_add_test(tn, test_linear_values);
    suite_add_tcase(s, tn);
    TCase *te = tcase_create("errors");
    tcase_add_test(te, test_errors);
    suite_add_tcase(s, te);
    TCase *tg = tcase_create("grad");
    tcase_set_timeout(tg, 60);
    tcase_add_test(tg, test_grad_matmul);
    tcase_add_test(tg, test_grad_bmm);
    tcase_add_test(tg, test_grad_linear);
    tcase_add_test(tg, test_grad_dtypes);
    suite_add_tcase(s, tg);
    return tu_run(s);
}
