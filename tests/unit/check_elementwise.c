/* check_elementwise.c — the elementwise op family: binary ops with
 * broadcasting and promotion, scalar ops, unary maps, where / masked_fill /
 * comparisons, dropout, and finite-difference gradient checks.
 * Expected numbers were computed by hand or with torch 1.13 (f64). */
#include <omp.h>

#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------ */

typedef moe_status (*bin_fn)(moe_tensor **, moe_tensor *, moe_tensor *);
typedef moe_status (*un_fn)(moe_tensor **, moe_tensor *);
typedef struct {
    bin_fn f;
} bin_ctx;
typedef struct {
    un_fn f;
} un_ctx;

static moe_status gc_bin(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return ((bin_ctx *)ctx)->f(out, in[0], in[1]);
}

static moe_status gc_un(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return ((un_ctx *)ctx)->f(out, in[0]);
}

/* A leaf f64 tensor requiring grad. */
static moe_tensor *leaf(moe_tensor *t)
{
    OK(moe_tensor_requires_grad_(t, true));
    return t;
}

/* Seeded normal values mapped into [lo, lo + 1.5) (for log, sqrt, pow bases, divisors). */
static moe_tensor *positive(int ndim, const int64_t *shape, uint64_t seed, double lo)
{
    moe_tensor *t = tu_randn(MOE_F64, ndim, shape, seed);
    double *p = moe_tensor_data(t);
    for (int64_t i = 0; i < moe_tensor_numel(t); i++) p[i] = lo + 1.5 / (1 + exp(-p[i]));
    return t;
}

/* Reference: expected[i] = f(a[i], b[i]) over the broadcast of A and B. */
static void check_against_reference(moe_tensor *got, moe_tensor *a, moe_tensor *b,
                                    double (*f)(double, double), double atol)
{
    moe_tensor *ea, *eb;
    OK(moe_expand(&ea, a, got->ndim, got->shape));
    OK(moe_expand(&eb, b, got->ndim, got->shape));
    int64_t n = moe_tensor_numel(got);
    double *va = malloc(sizeof(double) * (size_t)n), *vb = malloc(sizeof(double) * (size_t)n);
    OK(moe_tensor_to_doubles(ea, va));
    OK(moe_tensor_to_doubles(eb, vb));
    for (int64_t i = 0; i < n; i++) {
        va[i] = f(va[i], vb[i]); /* exact in double for one add/mul of floats */
        if (got->dtype == MOE_F32) va[i] = (float)va[i];
    }
    tu_assert_values(got, (int)n, va, atol, 0, "reference");
    free(va);
    free(vb);
    RELEASE(ea, eb);
}

static double ref_add(double x, double y) { return x + y; }
static double ref_mul(double x, double y) { return x * y; }
static double ref_sub(double x, double y) { return x - y; }

/* ---- binary ops --------------------------------------------------------------------------- */

START_TEST(test_binary_values)
{
    moe_dtype dts[2] = {MOE_F32, MOE_F64};
    for (int k = 0; k < 2; k++) {
        moe_dtype d = dts[k];
        moe_tensor *a = T(d, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
        moe_tensor *b = T(d, 2, SHAPE(2, 3), 10, 20, 30, 40, 50, 60);
        moe_tensor *r;
        OK(moe_add(&r, a, b));
        ck_assert_int_eq(r->dtype, d);
        ASSERT_SHAPE(r, 2, 2, 3);
        ASSERT_VALUES(r, 0, 11, 22, 33, 44, 55, 66);
        moe_tensor_release(r);
        OK(moe_sub(&r, a, b));
        ASSERT_VALUES(r, 0, -9, -18, -27, -36, -45, -54);
        moe_tensor_release(r);
        OK(moe_mul(&r, a, b));
        ASSERT_VALUES(r, 0, 10, 40, 90, 160, 250, 360);
        moe_tensor_release(r);
        OK(moe_div(&r, b, a));
        ASSERT_VALUES(r, 0, 10, 10, 10, 10, 10, 10);
        moe_tensor_release(r);
        OK(moe_div(&r, a, b));
        ASSERT_VALUES(r, 1e-7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1);
        moe_tensor_release(r);
        RELEASE(a, b);

        moe_tensor *x = T(d, 1, SHAPE(3), 1.5, 2, 3), *y = T(d, 1, SHAPE(3), 2, 0.5, -1);
        OK(moe_pow(&r, x, y));
        ASSERT_VALUES(r, 1e-7, 2.25, 1.4142135623730951, 0.3333333333333333);
        RELEASE(r, x, y);
    }
}
END_TEST

START_TEST(test_binary_broadcast)
{
    /* [2 3] + [3] */
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    moe_tensor *v = T(MOE_F64, 1, SHAPE(3), 10, 20, 30), *r;
    OK(moe_add(&r, a, v));
    ASSERT_SHAPE(r, 2, 2, 3);
    ASSERT_VALUES(r, 0, 11, 22, 33, 14, 25, 36);
    moe_tensor_release(r);
    OK(moe_sub(&r, v, a)); /* [3] - [2 3] */
    ASSERT_VALUES(r, 0, 9, 18, 27, 6, 15, 24);
    moe_tensor_release(r);

    /* [2 1] * [1 3] → [2 3] */
    moe_tensor *c = T(MOE_F32, 2, SHAPE(2, 1), 2, 3), *row = T(MOE_F32, 2, SHAPE(1, 3), 1, 10, 100);
    OK(moe_mul(&r, c, row));
    ASSERT_SHAPE(r, 2, 2, 3);
    ASSERT_VALUES(r, 0, 2, 20, 200, 3, 30, 300);
    moe_tensor_release(r);

    /* 0-d scalar on either side */
    moe_tensor *s;
    OK(moe_tensor_scalar(&s, MOE_F64, MOE_CPU, 2));
    OK(moe_div(&r, a, s));
    ASSERT_SHAPE(r, 2, 2, 3);
    ASSERT_VALUES(r, 0, 0.5, 1, 1.5, 2, 2.5, 3);
    moe_tensor_release(r);
    OK(moe_pow(&r, s, v));
    ASSERT_VALUES(r, 0, 1024, 1048576, 1073741824);
    moe_tensor_release(r);
    moe_tensor *s2;
    OK(moe_tensor_scalar(&s2, MOE_F64, MOE_CPU, 5));
    OK(moe_mul(&r, s, s2));
    ck_assert_int_eq(r->ndim, 0);
    ASSERT_VALUES(r, 0, 10);
    RELEASE(r, a, v, c, row, s, s2);
}
END_TEST

START_TEST(test_binary_noncontiguous)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6), *at, *r;
    OK(moe_transpose(&at, a, 0, 1)); /* [3 2]: 1 4 / 2 5 / 3 6 */
    ck_assert(!moe_tensor_is_contiguous(at));
    moe_tensor *b = T(MOE_F32, 2, SHAPE(3, 2), 10, 20, 30, 40, 50, 60);
    OK(moe_add(&r, at, b));
    ASSERT_SHAPE(r, 2, 3, 2);
    ASSERT_VALUES(r, 0, 11, 24, 32, 45, 53, 66);
    moe_tensor_release(r);
    OK(moe_mul(&r, at, at));
    ASSERT_VALUES(r, 0, 1, 16, 4, 25, 9, 36);
    moe_tensor_release(r);

    /* narrowed columns [2 2] of a: 2 3 / 5 6, with a broadcast row */
    moe_tensor *n, *w = T(MOE_F32, 1, SHAPE(2), 100, 1000);
    OK(moe_narrow(&n, a, 1, 1, 2));
    OK(moe_sub(&r, n, w));
    ASSERT_VALUES(r, 0, -98, -997, -95, -994);
    moe_tensor_release(r);
    /* transposed f64 input converted from f32 (mixed dtypes) */
    moe_tensor *d = T(MOE_F64, 1, SHAPE(2), 0.5, 0.25);
    OK(moe_mul(&r, at, d));
    ck_assert_int_eq(r->dtype, MOE_F64);
    ASSERT_VALUES(r, 0, 0.5, 1, 1, 1.25, 1.5, 1.5);
    RELEASE(r, a, at, b, n, w, d);
}
END_TEST

START_TEST(test_binary_large_paths)
{
    /* Long rows (column blocks), many short rows, transposed big operands:
     * each against a reference computed in doubles. */
    moe_tensor *a = tu_randn(MOE_F64, 2, SHAPE(3, 70001), 1), *b = tu_randn(MOE_F64, 1, SHAPE(70001), 2), *r;
    OK(moe_add(&r, a, b));
    check_against_reference(r, a, b, ref_add, 0);
    moe_tensor_release(r);
    OK(moe_mul(&r, b, a));
    check_against_reference(r, b, a, ref_mul, 0);
    RELEASE(r, a, b);

    a = tu_randn(MOE_F64, 3, SHAPE(20000, 3, 1), 3);
    b = tu_randn(MOE_F64, 2, SHAPE(1, 5), 4);
    OK(moe_sub(&r, a, b)); /* [20000 3 5] */
    ASSERT_SHAPE(r, 3, 20000, 3, 5);
    check_against_reference(r, a, b, ref_sub, 0);
    RELEASE(r, a, b);

    moe_tensor *big = tu_randn(MOE_F32, 2, SHAPE(300, 400), 5), *bt, *c = tu_randn(MOE_F32, 2, SHAPE(400, 300), 6);
    OK(moe_transpose(&bt, big, 0, 1));
    OK(moe_add(&r, bt, c));
    check_against_reference(r, bt, c, ref_add, 0);
    RELEASE(r, big, bt, c);

    /* same-shape contiguous f32, the flat path, above the threading threshold */
    a = tu_randn(MOE_F32, 1, SHAPE(1 << 17), 7);
    b = tu_randn(MOE_F32, 1, SHAPE(1 << 17), 8);
    OK(moe_add(&r, a, b));
    check_against_reference(r, a, b, ref_add, 0);
    RELEASE(r, a, b);
}
END_TEST

START_TEST(test_binary_dtypes)
{
    /* bf16: computed in f32, rounded to bf16 (1 + 2^-8 ties to even → 1) */
    moe_tensor *a = T(MOE_BF16, 1, SHAPE(3), 1, 1, 100), *b = T(MOE_BF16, 1, SHAPE(3), 0.00390625, 0.005, 1), *r;
    OK(moe_add(&r, a, b));
    ck_assert_int_eq(r->dtype, MOE_BF16);
    ASSERT_VALUES(r, 0, 1.0, 1.0078125, 101);
    RELEASE(r, a, b);

    /* integers stay integers for add/sub/mul */
    moe_tensor *i = T(MOE_I64, 1, SHAPE(3), 1, -2, 3000000000), *j = T(MOE_I64, 1, SHAPE(3), 5, 7, 1);
    OK(moe_add(&r, i, j));
    ck_assert_int_eq(r->dtype, MOE_I64);
    ASSERT_VALUES(r, 0, 6, 5, 3000000001);
    moe_tensor_release(r);
    moe_tensor *k = T(MOE_I32, 2, SHAPE(2, 1), 2, -3);
    OK(moe_mul(&r, k, j)); /* i32 * i64 → i64, [2 3] */
    ck_assert_int_eq(r->dtype, MOE_I64);
    ASSERT_VALUES(r, 0, 10, 14, 2, -15, -21, -3);
    moe_tensor_release(r);
    moe_tensor *k2 = T(MOE_I32, 1, SHAPE(2), 7, 9);
    OK(moe_sub(&r, k, k2));
    ck_assert_int_eq(r->dtype, MOE_I32);
    ASSERT_VALUES(r, 0, -5, -7, -10, -12);
    moe_tensor_release(r);

    /* promotion: i64 + f32 → f32; f32 * f64 → f64; bf16 + f32 → f32 */
    moe_tensor *f = T(MOE_F32, 1, SHAPE(3), 0.5, 0.25, 0.125);
    OK(moe_add(&r, i, f));
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 0, 1.5, -1.75, 3000000000.0f);
    moe_tensor_release(r);
    moe_tensor *g = T(MOE_F64, 1, SHAPE(3), 0.1, 0.2, 0.3);
    OK(moe_mul(&r, f, g));
    ck_assert_int_eq(r->dtype, MOE_F64);
    ASSERT_VALUES(r, 1e-17, 0.05, 0.05, 0.0375);
    moe_tensor_release(r);
    moe_tensor *h = T(MOE_BF16, 1, SHAPE(3), 1, 2, 3);
    OK(moe_add(&r, h, f));
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 0, 1.5, 2.25, 3.125);
    moe_tensor_release(r);
    /* int / int needs floats; float / int is fine */
    FAILS(moe_div(&r, i, j), MOE_ERR_DTYPE, "floating");
    ck_assert_ptr_null(r);
    FAILS(moe_pow(&r, k, k), MOE_ERR_DTYPE, "floating");
    OK(moe_div(&r, f, j));
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 0, 0.1f, 0.25f / 7, 0.125);
    RELEASE(r, i, j, k, k2, f, g, h);
}
END_TEST

START_TEST(test_binary_empty)
{
    moe_tensor *a, *b = T(MOE_F32, 1, SHAPE(3), 1, 2, 3), *r;
    OK(moe_tensor_empty(&a, MOE_F32, MOE_CPU, 2, SHAPE(0, 3)));
    OK(moe_add(&r, a, b));
    ASSERT_SHAPE(r, 2, 0, 3);
    moe_tensor_release(r);
    OK(moe_exp(&r, a));
    ASSERT_SHAPE(r, 2, 0, 3);
    moe_tensor_release(r);
    OK(moe_compare_op(&r, b, a, MOE_LT));
    ASSERT_SHAPE(r, 2, 0, 3);
    RELEASE(r, a, b);
}
END_TEST

START_TEST(test_binary_errors)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6), *b = T(MOE_F32, 1, SHAPE(4), 1, 2, 3, 4);
    moe_tensor *r = (moe_tensor *)1;
    FAILS(moe_add(&r, a, b), MOE_ERR_SHAPE, "do not broadcast");
    ck_assert_ptr_null(r);
    FAILS(moe_mul(&r, a, b), MOE_ERR_SHAPE, "[2 3]");
    FAILS(moe_sub(&r, a, b), MOE_ERR_SHAPE, "sub");
    FAILS(moe_add(&r, a, NULL), MOE_ERR_ARG, "NULL");
    FAILS(moe_compare_op(&r, a, b, MOE_EQ), MOE_ERR_SHAPE, "do not broadcast");
    RELEASE(a, b);
}
END_TEST

/* ---- scalar ops ------------------------------------------------------------------------------ */

START_TEST(test_scalar_ops)
{
    moe_dtype dts[2] = {MOE_F32, MOE_F64};
    for (int k = 0; k < 2; k++) {
        moe_tensor *a = T(dts[k], 1, SHAPE(4), 1, 2, 4, -0.5), *r;
        OK(moe_add_scalar(&r, a, 1.5));
        ck_assert_int_eq(r->dtype, dts[k]);
        ASSERT_VALUES(r, 0, 2.5, 3.5, 5.5, 1);
        moe_tensor_release(r);
        OK(moe_mul_scalar(&r, a, -2));
        ASSERT_VALUES(r, 0, -2, -4, -8, 1);
        moe_tensor_release(r);
        OK(moe_rsub_scalar(&r, a, 10));
        ASSERT_VALUES(r, 0, 9, 8, 6, 10.5);
        moe_tensor_release(r);
        OK(moe_rdiv_scalar(&r, a, 2));
        ASSERT_VALUES(r, 0, 2, 1, 0.5, -4);
        moe_tensor_release(r);
        OK(moe_pow_scalar(&r, a, 2));
        ASSERT_VALUES(r, 0, 1, 4, 16, 0.25);
        moe_tensor_release(r);
        OK(moe_pow_scalar(&r, a, 3));
        ASSERT_VALUES(r, 1e-6, 1, 8, 64, -0.125);
        moe_tensor_release(r);
        OK(moe_pow_scalar(&r, a, 0.5));
        ASSERT_VALUES(r, 1e-7, 1, 1.4142135623730951, 2, NAN);
        RELEASE(r, a);
    }
    /* integers: integral scalars keep the dtype, others give f32 */
    moe_tensor *i = T(MOE_I32, 1, SHAPE(3), 1, 2, 3), *r;
    OK(moe_add_scalar(&r, i, 5));
    ck_assert_int_eq(r->dtype, MOE_I32);
    ASSERT_VALUES(r, 0, 6, 7, 8);
    moe_tensor_release(r);
    OK(moe_mul_scalar(&r, i, 0.5));
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 0, 0.5, 1, 1.5);
    moe_tensor_release(r);
    OK(moe_pow_scalar(&r, i, 2));
    ck_assert_int_eq(r->dtype, MOE_I32);
    ASSERT_VALUES(r, 0, 1, 4, 9);
    moe_tensor_release(r);
    OK(moe_rdiv_scalar(&r, i, 1));
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 1e-7, 1, 0.5, 0.3333333333333333);
    moe_tensor_release(r);
    /* bf16 rounds the result */
    moe_tensor *b = T(MOE_BF16, 1, SHAPE(2), 1, 3);
    OK(moe_mul_scalar(&r, b, 1.0 / 3));
    ck_assert_int_eq(r->dtype, MOE_BF16);
    ASSERT_VALUES(r, 0, 0.333984375, 1);
    /* non-contiguous */
    moe_tensor *m = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4), *mt, *r2;
    OK(moe_transpose(&mt, m, 0, 1));
    OK(moe_add_scalar(&r2, mt, 10));
    ASSERT_VALUES(r2, 0, 11, 13, 12, 14);
    RELEASE(r, r2, i, b, m, mt);
}
END_TEST

/* ---- unary maps -------------------------------------------------------------------------------- */

START_TEST(test_unary_values)
{
    moe_dtype dts[2] = {MOE_F32, MOE_F64};
    for (int k = 0; k < 2; k++) {
        moe_dtype d = dts[k];
        double tol = d == MOE_F32 ? 2e-7 : 1e-15;
        moe_tensor *x = T(d, 1, SHAPE(6), -2, -0.5, 0, 0.5, 1, 3);
        moe_tensor *y = T(d, 1, SHAPE(6), 0.25, 1, 2, 4, 9, 0.5);
        moe_tensor *r;
        OK(moe_neg(&r, x));
        ASSERT_VALUES(r, 0, 2, 0.5, 0, -0.5, -1, -3);
        moe_tensor_release(r);
        OK(moe_abs(&r, x));
        ASSERT_VALUES(r, 0, 2, 0.5, 0, 0.5, 1, 3);
        moe_tensor_release(r);
        OK(moe_relu(&r, x));
        ASSERT_VALUES(r, 0, 0, 0, 0, 0.5, 1, 3);
        moe_tensor_release(r);
        OK(moe_exp(&r, x));
        tu_assert_values(r, 6, (double[]){0.1353352832366127, 0.6065306597126334, 1.0, 1.6487212707001282, 2.718281828459045, 20.085536923187668}, 0, tol * 4, "exp");
        moe_tensor_release(r);
        OK(moe_tanh(&r, x));
        ASSERT_VALUES(r, tol, -0.9640275800758169, -0.46211715726000974, 0.0, 0.46211715726000974, 0.7615941559557649, 0.9950547536867305);
        moe_tensor_release(r);
        OK(moe_sigmoid(&r, x));
        ASSERT_VALUES(r, tol, 0.11920292202211755, 0.3775406687981454, 0.5, 0.6224593312018546, 0.7310585786300049, 0.9525741268224334);
        moe_tensor_release(r);
        OK(moe_silu(&r, x));
        ASSERT_VALUES(r, 2 * tol, -0.2384058440442351, -0.1887703343990727, 0.0, 0.3112296656009273, 0.7310585786300049, 2.8577223804672998);
        moe_tensor_release(r);
        OK(moe_gelu(&r, x, MOE_GELU_ERF));
        ASSERT_VALUES(r, 2 * tol, -0.04550026389635842, -0.15426876936299344, 0.0, 0.34573123063700656, 0.841344746068543, 2.99595030590511);
        moe_tensor_release(r);
        OK(moe_gelu(&r, x, MOE_GELU_TANH));
        ASSERT_VALUES(r, 2 * tol, -0.04540230591222494, -0.15428599017485606, 0.0, 0.34571400982514394, 0.8411919906082768, 2.996362607918227);
        moe_tensor_release(r);
        OK(moe_clamp(&r, x, -1, 0.75));
        ASSERT_VALUES(r, 0, -1, -0.5, 0, 0.5, 0.75, 0.75);
        moe_tensor_release(r);
        OK(moe_clamp(&r, x, -INFINITY, 0));
        ASSERT_VALUES(r, 0, -2, -0.5, 0, 0, 0, 0);
        moe_tensor_release(r);
        OK(moe_log(&r, y));
        ASSERT_VALUES(r, tol, -1.3862943611198906, 0.0, 0.6931471805599453, 1.3862943611198906, 2.1972245773362196, -0.6931471805599453);
        moe_tensor_release(r);
        OK(moe_sqrt(&r, y));
        ASSERT_VALUES(r, tol, 0.5, 1.0, 1.4142135623730951, 2.0, 3.0, 0.7071067811865476);
        moe_tensor_release(r);
        OK(moe_rsqrt(&r, y));
        ASSERT_VALUES(r, tol, 2.0, 1.0, 0.7071067811865475, 0.5, 0.3333333333333333, 1.414213562373095);
        RELEASE(r, x, y);
    }
    /* f32 really computes in f32 */
    moe_tensor *x = T(MOE_F32, 1, SHAPE(2), 1, 3), *r;
    OK(moe_exp(&r, x));
    ASSERT_VALUES(r, 0, 2.7182817459106445, 20.08553695678711);
    RELEASE(r, x);
    /* special values */
    x = T(MOE_F64, 1, SHAPE(4), -INFINITY, INFINITY, NAN, -1);
    OK(moe_sigmoid(&r, x));
    ASSERT_VALUES(r, 0, 0, 1, NAN, 0.2689414213699951);
    moe_tensor_release(r);
    OK(moe_relu(&r, x));
    ASSERT_VALUES(r, 0, 0, INFINITY, NAN, 0);
    moe_tensor_release(r);
    OK(moe_log(&r, x));
    ASSERT_VALUES(r, 0, NAN, INFINITY, NAN, NAN);
    RELEASE(r, x);
}
END_TEST

START_TEST(test_unary_dtypes_layouts)
{
    /* bf16 in, bf16 out, rounded */
    moe_tensor *b = T(MOE_BF16, 1, SHAPE(3), 1, 2, 0.5), *r;
    OK(moe_exp(&r, b));
    ck_assert_int_eq(r->dtype, MOE_BF16);
    ASSERT_VALUES(r, 0, 2.71875, 7.375, 1.6484375);
    moe_tensor_release(r);
    OK(moe_sqrt(&r, b));
    ASSERT_VALUES(r, 0, 1, 1.4140625, 0.70703125);
    RELEASE(r, b);
    /* integers: neg/abs/relu/clamp keep the dtype; float maps refuse */
    moe_tensor *i = T(MOE_I64, 1, SHAPE(4), -3, 0, 2, 7);
    OK(moe_neg(&r, i));
    ck_assert_int_eq(r->dtype, MOE_I64);
    ASSERT_VALUES(r, 0, 3, 0, -2, -7);
    moe_tensor_release(r);
    OK(moe_abs(&r, i));
    ASSERT_VALUES(r, 0, 3, 0, 2, 7);
    moe_tensor_release(r);
    OK(moe_relu(&r, i));
    ASSERT_VALUES(r, 0, 0, 0, 2, 7);
    moe_tensor_release(r);
    OK(moe_clamp(&r, i, -1, 5));
    ck_assert_int_eq(r->dtype, MOE_I64);
    ASSERT_VALUES(r, 0, -1, 0, 2, 5);
    moe_tensor_release(r);
    r = (moe_tensor *)1;
    FAILS(moe_log(&r, i), MOE_ERR_DTYPE, "expected a floating dtype, got i64");
    ck_assert_ptr_null(r);
    FAILS(moe_exp(&r, i), MOE_ERR_DTYPE, "exp");
    FAILS(moe_gelu(&r, i, MOE_GELU_ERF), MOE_ERR_DTYPE, "gelu");
    moe_tensor *f = T(MOE_F32, 1, SHAPE(2), 1, 2);
    FAILS(moe_gelu(&r, f, (moe_gelu_kind)7), MOE_ERR_ARG, "gelu kind");
    FAILS(moe_clamp(&r, f, 2, 1), MOE_ERR_ARG, "clamp");
    RELEASE(i, f);
    /* transposed and narrowed inputs */
    moe_tensor *m = T(MOE_F64, 2, SHAPE(2, 3), 1, 4, 9, 16, 25, 36), *mt, *n;
    OK(moe_transpose(&mt, m, 0, 1));
    OK(moe_sqrt(&r, mt));
    ASSERT_SHAPE(r, 2, 3, 2);
    ASSERT_VALUES(r, 0, 1, 4, 2, 5, 3, 6);
    moe_tensor_release(r);
    OK(moe_narrow(&n, m, 1, 1, 2));
    OK(moe_neg(&r, n));
    ASSERT_VALUES(r, 0, -4, -9, -25, -36);
    moe_tensor_release(r);
    /* a 0-d tensor */
    moe_tensor *s;
    OK(moe_tensor_scalar(&s, MOE_F64, MOE_CPU, 4));
    OK(moe_rsqrt(&r, s));
    ck_assert_int_eq(r->ndim, 0);
    ASSERT_VALUES(r, 0, 0.5);
    RELEASE(r, m, mt, n, s);
}
END_TEST

/* ---- where / masked_fill / comparisons / non-finite ------------------------------------------ */

START_TEST(test_where_masked_fill)
{
    moe_tensor *c = T(MOE_BOOL, 2, SHAPE(2, 1), 1, 0);
    moe_tensor *a = T(MOE_F32, 1, SHAPE(3), 1, 2, 3), *b, *r;
    OK(moe_tensor_scalar(&b, MOE_F64, MOE_CPU, -1));
    OK(moe_where(&r, c, a, b)); /* [2 1] ? [3] : [] → [2 3] f64 */
    ASSERT_SHAPE(r, 2, 2, 3);
    ck_assert_int_eq(r->dtype, MOE_F64);
    ASSERT_VALUES(r, 0, 1, 2, 3, -1, -1, -1);
    moe_tensor_release(r);
    moe_tensor *c3 = T(MOE_BOOL, 1, SHAPE(3), 0, 1, 0), *a2 = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    moe_tensor *a2t, *b2 = T(MOE_F32, 2, SHAPE(3, 2), 10, 20, 30, 40, 50, 60), *c2;
    OK(moe_transpose(&a2t, a2, 0, 1)); /* 1 4 / 2 5 / 3 6 */
    OK(moe_unsqueeze(&c2, c3, 1));     /* [3 1]: 0 / 1 / 0 */
    OK(moe_where(&r, c2, a2t, b2));
    ASSERT_VALUES(r, 0, 10, 20, 2, 5, 50, 60);
    moe_tensor_release(r);
    /* integer where stays integer */
    moe_tensor *ia = T(MOE_I64, 1, SHAPE(3), 7, 8, 9), *ib = T(MOE_I64, 1, SHAPE(3), -7, -8, -9);
    OK(moe_where(&r, c3, ia, ib));
    ck_assert_int_eq(r->dtype, MOE_I64);
    ASSERT_VALUES(r, 0, -7, 8, -9);
    moe_tensor_release(r);
    r = (moe_tensor *)1;
    FAILS(moe_where(&r, a, a, b), MOE_ERR_DTYPE, "condition must be bool, got f32");
    ck_assert_ptr_null(r);
    moe_tensor *c4 = T(MOE_BOOL, 1, SHAPE(4), 1, 0, 1, 0);
    FAILS(moe_where(&r, c4, a, b), MOE_ERR_SHAPE, "do not broadcast");

    /* masked_fill: mask broadcast along rows */
    OK(moe_masked_fill(&r, a2, c3, -5));
    ASSERT_SHAPE(r, 2, 2, 3);
    ck_assert_int_eq(r->dtype, MOE_F32);
    ASSERT_VALUES(r, 0, 1, -5, 3, 4, -5, 6);
    moe_tensor_release(r);
    OK(moe_masked_fill(&r, a2t, c2, INFINITY));
    ASSERT_VALUES(r, 0, 1, 4, INFINITY, INFINITY, 3, 6);
    moe_tensor_release(r);
    moe_tensor *bm = T(MOE_BF16, 1, SHAPE(3), 1, 2, 3);
    OK(moe_masked_fill(&r, bm, c3, 0.1));
    ck_assert_int_eq(r->dtype, MOE_BF16);
    ASSERT_VALUES(r, 0, 1, 0.10009765625, 3);
    moe_tensor_release(r);
    FAILS(moe_masked_fill(&r, a, c, 0), MOE_ERR_SHAPE, "does not broadcast to the input [3]");
    FAILS(moe_masked_fill(&r, a, a, 0), MOE_ERR_DTYPE, "mask must be bool");
    RELEASE(c, a, b, c3, a2, a2t, b2, c2, ia, ib, c4, bm);
}
END_TEST

START_TEST(test_compare)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6);
    moe_tensor *b = T(MOE_I64, 1, SHAPE(3), 2, 2, 5), *r;
    static const double expect[MOE_COMPARE_COUNT][6] = {
        {0, 1, 0, 0, 0, 0}, /* eq */
        {1, 0, 1, 1, 1, 1}, /* ne */
        {1, 0, 1, 0, 0, 0}, /* lt */
        {1, 1, 1, 0, 0, 0}, /* le */
        {0, 0, 0, 1, 1, 1}, /* gt */
        {0, 1, 0, 1, 1, 1}, /* ge */
    };
    for (int c = 0; c < MOE_COMPARE_COUNT; c++) {
        OK(moe_compare_op(&r, a, b, (moe_compare)c));
        ck_assert_int_eq(r->dtype, MOE_BOOL);
        ck_assert(!r->requires_grad);
        tu_assert_values(r, 6, expect[c], 0, 0, "compare");
        moe_tensor_release(r);
    }
    OK(moe_compare_scalar(&r, a, 3.5, MOE_GT));
    ASSERT_VALUES(r, 0, 0, 0, 0, 1, 1, 1);
    moe_tensor_release(r);
    moe_tensor *at;
    OK(moe_transpose(&at, a, 0, 1)); /* 1 4 / 2 5 / 3 6 */
    OK(moe_compare_scalar(&r, at, 2, MOE_LE));
    ASSERT_VALUES(r, 0, 1, 0, 1, 0, 0, 0);
    moe_tensor_release(r);
    /* f32 compares against the scalar rounded to f32 */
    moe_tensor *p = T(MOE_F32, 1, SHAPE(1), 0.1);
    OK(moe_compare_scalar(&r, p, 0.1, MOE_EQ));
    ASSERT_VALUES(r, 0, 1);
    moe_tensor_release(r);
    moe_tensor *n = T(MOE_F64, 1, SHAPE(2), NAN, 1);
    OK(moe_compare_op(&r, n, n, MOE_EQ));
    ASSERT_VALUES(r, 0, 0, 1);
    moe_tensor_release(r);
    OK(moe_compare_op(&r, n, n, MOE_NE));
    ASSERT_VALUES(r, 0, 1, 0);
    moe_tensor_release(r);
    FAILS(moe_compare_scalar(&r, a, 1, (moe_compare)9), MOE_ERR_ARG, "unknown comparison");
    /* requires-grad inputs give no-grad bool outputs */
    moe_tensor *g = leaf(T(MOE_F64, 1, SHAPE(2), 1, 2));
    OK(moe_compare_scalar(&r, g, 1.5, MOE_LT));
    ck_assert(!r->requires_grad);
    ASSERT_VALUES(r, 0, 1, 0);
    RELEASE(r, a, b, at, p, n, g);
}
END_TEST

START_TEST(test_count_nonfinite)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 1, NAN, INFINITY, -INFINITY, NAN, 0);
    int64_t nn = -1, ni = -1;
    OK(moe_count_nonfinite(a, &nn, &ni));
    ck_assert_int_eq(nn, 2);
    ck_assert_int_eq(ni, 2);
    moe_tensor *n;
    OK(moe_narrow(&n, a, 1, 0, 2));
    OK(moe_count_nonfinite(n, &nn, &ni));
    ck_assert_int_eq(nn, 2);
    ck_assert_int_eq(ni, 1);
    moe_tensor *b = T(MOE_BF16, 1, SHAPE(2), NAN, 1e38);
    moe_tensor *bb;
    OK(moe_mul_scalar(&bb, b, 100)); /* overflows to inf */
    OK(moe_count_nonfinite(bb, &nn, &ni));
    ck_assert_int_eq(nn, 1);
    ck_assert_int_eq(ni, 1);
    moe_tensor *i = T(MOE_I64, 1, SHAPE(2), 1, 2);
    OK(moe_count_nonfinite(i, &nn, &ni));
    ck_assert_int_eq(nn + ni, 0);
    moe_tensor *big;
    OK(moe_tensor_zeros(&big, MOE_F64, MOE_CPU, 1, SHAPE(100000)));
    double *p = moe_tensor_data(big);
    for (int k = 0; k < 100000; k += 1000) p[k] = k % 3000 ? NAN : -INFINITY;
    OK(moe_count_nonfinite(big, &nn, &ni));
    ck_assert_int_eq(nn, 66);
    ck_assert_int_eq(ni, 34);
    RELEASE(a, n, b, bb, i, big);
}
END_TEST

/* ---- dropout --------------------------------------------------------------------------------- */

START_TEST(test_dropout_identity)
{
    moe_tensor *a = T(MOE_F32, 1, SHAPE(4), 1, 2, 3, 4), *r;
    moe_rng rng;
    moe_rng_init(&rng, 7);
    OK(moe_dropout(&r, a, 0.0, true, &rng));
    ASSERT_VALUES(r, 0, 1, 2, 3, 4);
    moe_tensor_release(r);
    OK(moe_dropout(&r, a, 0.9, false, &rng));
    ASSERT_VALUES(r, 0, 1, 2, 3, 4);
    moe_tensor_release(r);
    ck_assert_uint_eq(rng.offset, 0);
    OK(moe_dropout(&r, a, 1.0, true, &rng));
    ASSERT_VALUES(r, 0, 0, 0, 0, 0);
    ck_assert_uint_eq(rng.offset, 4);
    moe_tensor_release(r);
    FAILS(moe_dropout(&r, a, 1.5, true, &rng), MOE_ERR_ARG, "outside [0, 1]");
    FAILS(moe_dropout(&r, a, NAN, true, &rng), MOE_ERR_ARG, "dropout");
    moe_tensor *i = T(MOE_I64, 1, SHAPE(2), 1, 2);
    FAILS(moe_dropout(&r, i, 0.5, true, &rng), MOE_ERR_DTYPE, "floating");
    RELEASE(a, i);
}
END_TEST

static void dropout_with_threads(int threads, uint64_t seed, moe_tensor *a, double *out)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    int prev = omp_get_max_threads();
    omp_set_num_threads(threads);
    moe_tensor *r;
    OK(moe_dropout(&r, a, 0.3, true, &rng));
    omp_set_num_threads(prev);
    OK(moe_tensor_to_doubles(r, out));
    moe_tensor_release(r);
}

START_TEST(test_dropout_statistics)
{
    const int64_t n = 100000;
    const double p = 0.3;
    moe_tensor *a;
    OK(moe_tensor_ones(&a, MOE_F32, MOE_CPU, 1, &n));
    double *v1 = malloc(sizeof(double) * n), *v2 = malloc(sizeof(double) * n), *v3 = malloc(sizeof(double) * n);
    dropout_with_threads(1, 42, a, v1);
    dropout_with_threads(2, 42, a, v2);
    dropout_with_threads(2, 43, a, v3);
    int64_t zeros = 0, diff = 0, other = 0;
    float keep = (float)(1.0 / (1.0 - p));
    for (int64_t i = 0; i < n; i++) {
        zeros += v1[i] == 0;
        if (v1[i] != 0 && v1[i] != (double)keep) other++;
        ck_assert_msg(v1[i] == v2[i], "element %lld differs between 1 and 2 threads", (long long)i);
        diff += (v1[i] == 0) != (v3[i] == 0);
    }
    double frac = (double)zeros / (double)n;
    ck_assert_msg(fabs(frac - p) < 0.01, "fraction of zeros %g, expected about %g", frac, p);
    ck_assert_int_eq(other, 0); /* survivors scaled by exactly 1/(1-p) in f32 */
    ck_assert_msg(diff > n / 4, "seeds 42 and 43 gave nearly the same mask (%lld differ)", (long long)diff);

    /* same generator: consecutive draws differ, and the offset advances by n */
    moe_rng rng;
    moe_rng_init(&rng, 42);
    moe_tensor *r1, *r2;
    OK(moe_dropout(&r1, a, p, true, &rng));
    ck_assert_uint_eq(rng.offset, (uint64_t)n);
    OK(moe_dropout(&r2, a, p, true, &rng));
    ck_assert_uint_eq(rng.offset, 2 * (uint64_t)n);
    OK(moe_tensor_to_doubles(r1, v3));
    for (int64_t i = 0; i < n; i++) ck_assert(v3[i] == v1[i]); /* same seed, same mask */
    OK(moe_tensor_to_doubles(r2, v3));
    diff = 0;
    for (int64_t i = 0; i < n; i++) diff += v3[i] != v1[i];
    ck_assert(diff > n / 4);
    /* the default generator works and is reseedable */
    moe_manual_seed(42);
    moe_tensor *r3;
    OK(moe_dropout(&r3, a, p, true, NULL));
    ASSERT_CLOSE(r3, r1, 0);
    /* f64, non-contiguous input: same mask for the same counters */
    moe_tensor *b, *b2, *bt, *r4;
    OK(moe_tensor_ones(&b, MOE_F64, MOE_CPU, 2, SHAPE(2, 3)));
    OK(moe_transpose(&bt, b, 0, 1));
    moe_rng_init(&rng, 42);
    OK(moe_dropout(&r4, bt, 0.5, true, &rng));
    ASSERT_SHAPE(r4, 2, 3, 2);
    OK(moe_tensor_to_doubles(r4, v3));
    OK(moe_tensor_ones(&b2, MOE_F64, MOE_CPU, 1, SHAPE(6)));
    moe_rng_init(&rng, 42);
    moe_tensor *r5;
    OK(moe_dropout(&r5, b2, 0.5, true, &rng));
    tu_assert_values(r5, 6, v3, 0, 0, "dropout layout");
    for (int i = 0; i < 6; i++) ck_assert(v3[i] == 0 || v3[i] == 2);
    free(v1);
    free(v2);
    free(v3);
    RELEASE(a, r1, r2, r3, b, b2, bt, r4, r5);
}
END_TEST

START_TEST(test_dropout_grad)
{
    moe_tensor *a = leaf(T(MOE_F64, 1, SHAPE(8), 1, 2, 3, 4, 5, 6, 7, 8)), *r, *w;
    moe_rng rng;
    moe_rng_init(&rng, 5);
    OK(moe_dropout(&r, a, 0.5, true, &rng));
    ck_assert(r->requires_grad);
    OK(moe_tensor_ones(&w, MOE_F64, MOE_CPU, 1, SHAPE(8)));
    OK(moe_backward(r, w, false));
    /* gradient = mask * 2 = r / a */
    double rv[8], gv[8];
    OK(moe_tensor_to_doubles(r, rv));
    OK(moe_tensor_to_doubles(a->grad, gv));
    int kept = 0;
    for (int i = 0; i < 8; i++) {
        ck_assert(gv[i] == rv[i] / (i + 1));
        ck_assert(gv[i] == 0 || gv[i] == 2);
        kept += gv[i] != 0;
    }
    ck_assert(kept > 0 && kept < 8);
    RELEASE(a, r, w);
}
END_TEST

/* ---- gradients ------------------------------------------------------------------------------- */

START_TEST(test_grad_binary_same_shape)
{
    bin_fn fns[5] = {moe_add, moe_sub, moe_mul, moe_div, moe_pow};
    const char *names[5] = {"add", "sub", "mul", "div", "pow"};
    for (int k = 0; k < 5; k++) {
        moe_tensor *in[2] = {leaf(positive(2, SHAPE(2, 3), 10 + k, 0.5)),
                             leaf(k >= 3 ? positive(2, SHAPE(2, 3), 20 + k, 0.5)
                                         : tu_randn(MOE_F64, 2, SHAPE(2, 3), 20 + k))};
        bin_ctx c = {fns[k]};
        tu_gradcheck(gc_bin, 2, in, &c, 1e-6, 1e-6, names[k]);
        /* only one side requiring grad */
        OK(moe_tensor_requires_grad_(in[0], false));
        tu_gradcheck(gc_bin, 2, in, &c, 1e-6, 1e-6, names[k]);
        ck_assert_ptr_null(in[0]->grad);
        RELEASE(in[0], in[1]);
    }
}
END_TEST

START_TEST(test_grad_binary_broadcast)
{
    bin_fn fns[5] = {moe_add, moe_sub, moe_mul, moe_div, moe_pow};
    const char *names[5] = {"add", "sub", "mul", "div", "pow"};
    for (int k = 0; k < 5; k++) {
        bin_ctx c = {fns[k]};
        /* [2 3] op [3] */
        moe_tensor *in[2] = {leaf(positive(2, SHAPE(2, 3), 30 + k, 0.5)), leaf(positive(1, SHAPE(3), 40 + k, 0.5))};
        tu_gradcheck(gc_bin, 2, in, &c, 1e-6, 1e-6, names[k]);
        ASSERT_SHAPE(in[1]->grad, 1, 3);
        RELEASE(in[0], in[1]);
        /* [2 1] op [1 3] */
        moe_tensor *in2[2] = {leaf(positive(2, SHAPE(2, 1), 50 + k, 0.5)), leaf(positive(2, SHAPE(1, 3), 60 + k, 0.5))};
        tu_gradcheck(gc_bin, 2, in2, &c, 1e-6, 1e-6, names[k]);
        ASSERT_SHAPE(in2[0]->grad, 2, 2, 1);
        ASSERT_SHAPE(in2[1]->grad, 2, 1, 3);
        RELEASE(in2[0], in2[1]);
        /* 0-d op [2 2] */
        moe_tensor *s;
        OK(moe_tensor_scalar(&s, MOE_F64, MOE_CPU, 1.3));
        moe_tensor *in3[2] = {leaf(s), leaf(positive(2, SHAPE(2, 2), 70 + k, 0.5))};
        tu_gradcheck(gc_bin, 2, in3, &c, 1e-6, 1e-6, names[k]);
        ck_assert_int_eq(in3[0]->grad->ndim, 0);
        RELEASE(in3[0], in3[1]);
    }
}
END_TEST

START_TEST(test_grad_binary_values)
{
    /* hand-computed: d(a*b)/da = b, d(a/b)/db = -a/b², mixed dtypes give each input its own dtype */
    moe_tensor *a = leaf(T(MOE_F32, 1, SHAPE(2), 3, 4)), *b = leaf(T(MOE_F64, 1, SHAPE(2), 2, -1)), *r, *w;
    OK(moe_div(&r, a, b));
    ck_assert_int_eq(r->dtype, MOE_F64);
    OK(moe_tensor_ones(&w, MOE_F64, MOE_CPU, 1, SHAPE(2)));
    OK(moe_backward(r, w, false));
    ck_assert_int_eq(a->grad->dtype, MOE_F32);
    ck_assert_int_eq(b->grad->dtype, MOE_F64);
    ASSERT_VALUES(a->grad, 0, 0.5, -1);
    ASSERT_VALUES(b->grad, 0, -0.75, -4);
    RELEASE(r, a, b);
    /* pow at a = 0: d/db = 0, d/da = b * 0^(b-1) */
    a = leaf(T(MOE_F64, 1, SHAPE(2), 0, 2));
    b = leaf(T(MOE_F64, 1, SHAPE(2), 2, 3));
    OK(moe_pow(&r, a, b));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(a->grad, 0, 0, 12);
    ASSERT_VALUES(b->grad, 1e-15, 0, 8 * log(2.0));
    RELEASE(r, a, b, w);
    /* an integer base with a float exponent: d/db = 2^b log 2 */
    moe_tensor *ib = T(MOE_I64, 1, SHAPE(2), 2, 0);
    b = leaf(T(MOE_F64, 1, SHAPE(2), 3, 2));
    OK(moe_pow(&r, ib, b));
    ASSERT_VALUES(r, 0, 8, 0);
    OK(moe_tensor_ones(&w, MOE_F64, MOE_CPU, 1, SHAPE(2)));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(b->grad, 1e-15, 8 * log(2.0), 0);
    RELEASE(r, ib, b, w);
    /* bf16 inputs get bf16 gradients */
    a = leaf(T(MOE_BF16, 1, SHAPE(2), 1.5, 2));
    b = leaf(T(MOE_BF16, 1, SHAPE(2), 3, 0.5));
    OK(moe_mul(&r, a, b));
    OK(moe_tensor_ones(&w, MOE_BF16, MOE_CPU, 1, SHAPE(2)));
    OK(moe_backward(r, w, false));
    ck_assert_int_eq(a->grad->dtype, MOE_BF16);
    ASSERT_VALUES(a->grad, 0, 3, 0.5);
    ASSERT_VALUES(b->grad, 0, 1.5, 2);
    RELEASE(r, a, b, w);
}
END_TEST

START_TEST(test_grad_unary)
{
    un_fn fns[] = {moe_neg, moe_exp, moe_tanh, moe_sigmoid, moe_silu, moe_abs, moe_relu};
    const char *names[] = {"neg", "exp", "tanh", "sigmoid", "silu", "abs", "relu"};
    for (int k = 0; k < 7; k++) {
        moe_tensor *in[1] = {leaf(T(MOE_F64, 2, SHAPE(2, 4), -2.5, -1, -0.3, 0.2, 0.7, 1.1, 2, 3.5))};
        un_ctx c = {fns[k]};
        tu_gradcheck(gc_un, 1, in, &c, 1e-6, 1e-6, names[k]);
        moe_tensor_release(in[0]);
    }
    un_fn pos[] = {moe_log, moe_sqrt, moe_rsqrt};
    const char *pnames[] = {"log", "sqrt", "rsqrt"};
    for (int k = 0; k < 3; k++) {
        moe_tensor *in[1] = {leaf(positive(2, SHAPE(3, 3), 80 + k, 0.2))};
        un_ctx c = {pos[k]};
        tu_gradcheck(gc_un, 1, in, &c, 1e-6, 1e-6, pnames[k]);
        moe_tensor_release(in[0]);
    }
}
END_TEST

typedef struct {
    int which;
    double s;
} param_ctx;

static moe_status gc_param(moe_tensor **out, moe_tensor **in, void *ctx)
{
    const param_ctx *c = ctx;
    switch (c->which) {
    case 0: return moe_gelu(out, in[0], MOE_GELU_ERF);
    case 1: return moe_gelu(out, in[0], MOE_GELU_TANH);
    case 2: return moe_clamp(out, in[0], -0.5, c->s);
    case 3: return moe_add_scalar(out, in[0], c->s);
    case 4: return moe_mul_scalar(out, in[0], c->s);
    case 5: return moe_rsub_scalar(out, in[0], c->s);
    case 6: return moe_rdiv_scalar(out, in[0], c->s);
    case 7: return moe_pow_scalar(out, in[0], c->s);
    default: return MOE_ERR_ARG;
    }
}

START_TEST(test_grad_param_maps)
{
    param_ctx cases[] = {{0, 0}, {1, 0}, {2, 0.8}, {2, INFINITY}, {3, 2.5}, {4, -1.5}, {5, 3},
                         {6, 2}, {7, 2}, {7, 3}, {7, 0.5}, {7, -1.5}, {7, 0}, {7, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        moe_tensor *in[1] = {leaf(T(MOE_F64, 1, SHAPE(6), 0.3, 0.7, 1.2, 1.9, 2.4, 0.55))};
        if (cases[k].which <= 2) { /* these take any sign */
            double *p = moe_tensor_data(in[0]);
            p[0] = -2.1;
            p[1] = -0.6;
            p[2] = -0.2;
        }
        char what[64];
        snprintf(what, sizeof what, "param map %d (s = %g)", cases[k].which, cases[k].s);
        tu_gradcheck(gc_param, 1, in, &cases[k], 1e-6, 1e-6, what);
        moe_tensor_release(in[0]);
    }
}
END_TEST

START_TEST(test_grad_kinks)
{
    /* abs and relu at 0 → 0; clamp passes at the bounds themselves */
    moe_tensor *x = leaf(T(MOE_F64, 1, SHAPE(5), -1, 0, 1, -0.5, 0.5)), *r, *w;
    OK(moe_tensor_ones(&w, MOE_F64, MOE_CPU, 1, SHAPE(5)));
    OK(moe_abs(&r, x));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(x->grad, 0, -1, 0, 1, -1, 1);
    moe_tensor_release(r);
    moe_tensor_zero_grad(x);
    OK(moe_relu(&r, x));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(x->grad, 0, 0, 0, 1, 0, 1);
    moe_tensor_release(r);
    moe_tensor_zero_grad(x);
    OK(moe_clamp(&r, x, -0.5, 0.5));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(x->grad, 0, 0, 1, 0, 1, 1);
    moe_tensor_release(r);
    moe_tensor_zero_grad(x);
    /* exp's backward uses its output: g * exp(x) */
    OK(moe_exp(&r, x));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(x->grad, 1e-15, exp(-1), 1, exp(1), exp(-0.5), exp(0.5));
    RELEASE(r, x, w);
    /* bf16 unary gradient stays bf16 */
    x = leaf(T(MOE_BF16, 1, SHAPE(2), 0.5, -2));
    OK(moe_tensor_ones(&w, MOE_BF16, MOE_CPU, 1, SHAPE(2)));
    OK(moe_sigmoid(&r, x));
    OK(moe_backward(r, w, false));
    ck_assert_int_eq(x->grad->dtype, MOE_BF16);
    ASSERT_VALUES(x->grad, 0.002, 0.2350037122015945, 0.10499358540350652);
    RELEASE(r, x, w);
}
END_TEST

static moe_status gc_where(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_where(out, (moe_tensor *)ctx, in[0], in[1]);
}

static moe_status gc_masked(moe_tensor **out, moe_tensor **in, void *ctx)
{
    return moe_masked_fill(out, in[0], (moe_tensor *)ctx, 7.5);
}

static moe_status gc_dropout(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_rng rng;
    moe_rng_init(&rng, 99); /* same mask at every call */
    return moe_dropout(out, in[0], 0.4, true, &rng);
}

START_TEST(test_grad_select)
{
    moe_tensor *cond = T(MOE_BOOL, 2, SHAPE(2, 3), 1, 0, 1, 0, 0, 1);
    moe_tensor *in[2] = {leaf(tu_randn(MOE_F64, 2, SHAPE(2, 3), 91)), leaf(tu_randn(MOE_F64, 2, SHAPE(2, 3), 92))};
    GRADCHECK(gc_where, 2, in, cond);
    RELEASE(in[0], in[1]);
    /* broadcast: a [3], b 0-d, cond [2 3] */
    moe_tensor *s;
    OK(moe_tensor_scalar(&s, MOE_F64, MOE_CPU, 0.4));
    moe_tensor *in2[2] = {leaf(tu_randn(MOE_F64, 1, SHAPE(3), 93)), leaf(s)};
    GRADCHECK(gc_where, 2, in2, cond);
    ASSERT_SHAPE(in2[0]->grad, 1, 3);
    RELEASE(in2[0], in2[1]);
    /* hand values: gradient to a where cond, to b elsewhere */
    moe_tensor *a = leaf(T(MOE_F64, 1, SHAPE(3), 1, 2, 3)), *b = leaf(T(MOE_F64, 2, SHAPE(2, 1), 4, 5)), *r, *w;
    OK(moe_where(&r, cond, a, b));
    OK(moe_tensor_ones(&w, MOE_F64, MOE_CPU, 2, SHAPE(2, 3)));
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(a->grad, 0, 1, 0, 2);
    ASSERT_VALUES(b->grad, 0, 1, 2);
    RELEASE(a, b, r);
    /* masked_fill: zero where masked */
    moe_tensor *mask = T(MOE_BOOL, 1, SHAPE(3), 0, 1, 0);
    moe_tensor *in3[1] = {leaf(tu_randn(MOE_F64, 2, SHAPE(2, 3), 94))};
    GRADCHECK(gc_masked, 1, in3, mask);
    OK(moe_masked_fill(&r, in3[0], mask, -1));
    moe_tensor_zero_grad(in3[0]);
    OK(moe_backward(r, w, false));
    ASSERT_VALUES(in3[0]->grad, 0, 1, 0, 1, 1, 0, 1);
    RELEASE(r, w, in3[0], mask, cond);
}
END_TEST

/* Ops on views: mul of a transposed input with a broadcast row, silu of a
 * narrowed input. */
static moe_status gc_views(moe_tensor **out, moe_tensor **in, void *ctx)
{
    moe_tensor *t, *n, *m;
    MOE_TRY(moe_transpose(&t, in[0], 0, 1)); /* [3 2] */
    moe_status st = moe_mul(&m, t, in[1]);   /* [3 2] * [2] */
    moe_tensor_release(t);
    MOE_TRY(st);
    st = moe_narrow(&n, m, 0, 1, 2); /* [2 2] */
    moe_tensor_release(m);
    MOE_TRY(st);
    st = moe_silu(out, n);
    moe_tensor_release(n);
    return st;
}

START_TEST(test_grad_views)
{
    moe_tensor *in[2] = {leaf(tu_randn(MOE_F64, 2, SHAPE(2, 3), 96)), leaf(tu_randn(MOE_F64, 1, SHAPE(2), 97))};
    GRADCHECK(gc_views, 2, in, NULL);
    double g[6]; /* column 0 of in[0] was narrowed away: zero gradient there */
    OK(moe_tensor_to_doubles(in[0]->grad, g));
    ck_assert(g[0] == 0 && g[3] == 0 && g[1] != 0 && g[4] != 0);
    RELEASE(in[0], in[1]);
}
END_TEST

START_TEST(test_grad_dropout)
{
    moe_tensor *in[1] = {leaf(tu_randn(MOE_F64, 2, SHAPE(4, 5), 95))};
    GRADCHECK(gc_dropout, 1, in, NULL);
    moe_tensor_release(in[0]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("elementwise");
    TCase *tc = tcase_create("binary");
    tcase_add_test(tc, test_binary_values);
    tcase_add_test(tc, test_binary_broadcast);
    tcase_add_test(tc, test_binary_noncontiguous);
    tcase_add_test(tc, test_binary_large_paths);
    tcase_add_test(tc, test_binary_dtypes);
    tcase_add_test(tc, test_binary_empty);
    tcase_add_test(tc, test_binary_errors);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("unary");
    tcase_add_test(tc, test_scalar_ops);
    tcase_add_test(tc, test_unary_values);
    tcase_add_test(tc, test_unary_dtypes_layouts);
    suite_add_tcase(s, tc);

    tc = tcase_create("select");
    tcase_add_test(tc, test_where_masked_fill);
    tcase_add_test(tc, test_compare);
    tcase_add_test(tc, test_count_nonfinite);
    suite_add_tcase(s, tc);

    tc = tcase_create("dropout");
    tcase_add_test(tc, test_dropout_identity);
    tcase_add_test(tc, test_dropout_statistics);
    tcase_add_test(tc, test_dropout_grad);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("grad");
    tcase_add_test(tc, test_grad_binary_same_shape);
    tcase_add_test(tc, test_grad_binary_broadcast);
    tcase_add_test(tc, test_grad_binary_values);
    tcase_add_test(tc, test_grad_unary);
    tcase_add_test(tc, test_grad_param_maps);
    tcase_add_test(tc, test_grad_kinks);
    tcase_add_test(tc, test_grad_select);
    tcase_add_test(tc, test_grad_views);
    tcase_add_test(tc, test_grad_dropout);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
