/* check_reduce.c — sum, mean, var, max/min, argmax, cumsum and the softmax
 * family: hand-computed values over several dims, keepdim, non-contiguous
 * inputs, dtypes, errors, finite-difference gradients, determinism. */
#include <omp.h>
#include <string.h>

#include "testutil.h"

#define M23 T(MOE_F32, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6)

static moe_tensor *arange24(moe_dtype dt) /* [2 3 4] = 0 … 23 */
{
    moe_tensor *a, *r;
    OK(moe_tensor_arange(&a, dt, MOE_CPU, 0, 24, 1));
    OK(moe_reshape(&r, a, 3, SHAPE(2, 3, 4)));
    moe_tensor_release(a);
    return r;
}

/* ---- sum ------------------------------------------------------------------------------ */

START_TEST(sum_dims)
{
    moe_tensor *x = M23, *y;
    OK(moe_sum(&y, x, 0, NULL, false));
    ASSERT_SHAPE(y, 0);
    ck_assert_int_eq(y->dtype, MOE_F32);
    ASSERT_VALUES(y, 0, 21);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 1, (int[]){0}, false));
    ASSERT_SHAPE(y, 1, 3);
    ASSERT_VALUES(y, 0, 5, 7, 9);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 1, (int[]){0}, true));
    ASSERT_SHAPE(y, 2, 1, 3);
    ASSERT_VALUES(y, 0, 5, 7, 9);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 1, (int[]){1}, false));
    ASSERT_SHAPE(y, 1, 2);
    ASSERT_VALUES(y, 0, 6, 15);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 1, (int[]){-1}, true));
    ASSERT_SHAPE(y, 2, 2, 1);
    ASSERT_VALUES(y, 0, 6, 15);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 2, (int[]){1, 0}, true));
    ASSERT_SHAPE(y, 2, 1, 1);
    ASSERT_VALUES(y, 0, 21);
    moe_tensor_release(y);
    moe_tensor_release(x);
}
END_TEST

START_TEST(sum_3d)
{
    moe_tensor *x = arange24(MOE_F64), *y;
    /* dims 0 and 2: not one run, reduced via a permuted copy */
    OK(moe_sum(&y, x, 2, (int[]){0, 2}, false));
    ASSERT_SHAPE(y, 1, 3);
    ASSERT_VALUES(y, 0, 60, 92, 124);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 2, (int[]){0, -1}, true));
    ASSERT_SHAPE(y, 3, 1, 3, 1);
    ASSERT_VALUES(y, 0, 60, 92, 124);
    moe_tensor_release(y);
    /* the middle dim: [O R I] with I > 1 */
    OK(moe_sum(&y, x, 1, (int[]){1}, false));
    ASSERT_SHAPE(y, 2, 2, 4);
    ASSERT_VALUES(y, 0, 12, 15, 18, 21, 48, 51, 54, 57);
    moe_tensor_release(y);
    OK(moe_sum(&y, x, 2, (int[]){1, 2}, true));
    ASSERT_SHAPE(y, 3, 2, 1, 1);
    ASSERT_VALUES(y, 0, 66, 210);
    moe_tensor_release(y);
    moe_tensor_release(x);
}
END_TEST

START_TEST(sum_noncontiguous)
{
    moe_tensor *x = M23, *t, *y, *row, *e;
    OK(moe_transpose(&t, x, 0, 1)); /* [3 2] = [[1 4] [2 5] [3 6]] */
    OK(moe_sum(&y, t, 1, (int[]){1}, false));
    ASSERT_VALUES(y, 0, 5, 7, 9);
    moe_tensor_release(y);
    OK(moe_sum(&y, t, 1, (int[]){0}, false));
    ASSERT_VALUES(y, 0, 6, 15);
    moe_tensor_release(y);
    /* expanded (zero strides) */
    OK(moe_narrow(&row, x, 0, 1, 1)); /* [1 3] = 4 5 6 */
    OK(moe_expand(&e, row, 2, SHAPE(4, 3)));
    OK(moe_sum(&y, e, 1, (int[]){0}, false));
    ASSERT_VALUES(y, 0, 16, 20, 24);
    moe_tensor_release(y);
    OK(moe_sum(&y, e, 0, NULL, false));
    ASSERT_VALUES(y, 0, 60);
    RELEASE(y, e, row, t, x);
}
END_TEST

START_TEST(sum_dtypes)
{
    moe_tensor *b = T(MOE_BF16, 1, SHAPE(3), 1, 2, 3.5), *y;
    OK(moe_sum(&y, b, 0, NULL, false));
    ck_assert_int_eq(y->dtype, MOE_BF16);
    ASSERT_VALUES(y, 0, 6.5);
    moe_tensor_release(y);
    moe_tensor *i = T(MOE_I64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    OK(moe_sum(&y, i, 1, (int[]){0}, false));
    ck_assert_int_eq(y->dtype, MOE_I64);
    ASSERT_VALUES(y, 0, 4, 6);
    moe_tensor_release(y);
    /* beyond 2^53: exact in i64 */
    moe_tensor *big = T(MOE_I64, 1, SHAPE(2), 9007199254740993.0, 0);
    int64_t *bp = moe_tensor_data(big);
    bp[0] = ((int64_t)1 << 53) + 1;
    bp[1] = 2;
    OK(moe_sum(&y, big, 0, NULL, false));
    ck_assert(*(int64_t *)moe_tensor_data(y) == ((int64_t)1 << 53) + 3);
    moe_tensor_release(y);
    moe_tensor *i32 = T(MOE_I32, 1, SHAPE(3), -1, 5, 7);
    OK(moe_sum(&y, i32, 0, NULL, false));
    ck_assert_int_eq(y->dtype, MOE_I64);
    ASSERT_VALUES(y, 0, 11);
    moe_tensor_release(y);
    moe_tensor *bo = T(MOE_BOOL, 1, SHAPE(4), 1, 0, 1, 1);
    OK(moe_sum(&y, bo, 0, NULL, false));
    ck_assert_int_eq(y->dtype, MOE_I64);
    ASSERT_VALUES(y, 0, 3);
    moe_tensor_release(y);
    RELEASE(b, i, big, i32, bo);
}
END_TEST

START_TEST(sum_edge)
{
    moe_tensor *s, *y, *z;
    OK(moe_tensor_scalar(&s, MOE_F64, MOE_CPU, 2.5));
    OK(moe_sum(&y, s, 0, NULL, false));
    ASSERT_SHAPE(y, 0);
    ASSERT_VALUES(y, 0, 2.5);
    moe_tensor_release(y);
    OK(moe_sum(&y, s, 1, (int[]){0}, true));
    ASSERT_SHAPE(y, 0);
    ASSERT_VALUES(y, 0, 2.5);
    moe_tensor_release(y);
    OK(moe_tensor_zeros(&z, MOE_F32, MOE_CPU, 2, SHAPE(0, 3)));
    OK(moe_sum(&y, z, 1, (int[]){0}, false));
    ASSERT_SHAPE(y, 1, 3);
    ASSERT_VALUES(y, 0, 0, 0, 0);
    moe_tensor_release(y);
    OK(moe_sum(&y, z, 1, (int[]){1}, false));
    ASSERT_SHAPE(y, 1, 0);
    RELEASE(y, z, s);
}
END_TEST

START_TEST(sum_long_rows)
{
    /* rows longer than one chunk; all-sum of 100000 ones; 3 rows of 20000 */
    moe_tensor *o, *y, *o3;
    OK(moe_tensor_ones(&o, MOE_F32, MOE_CPU, 1, SHAPE(100000)));
    OK(moe_sum(&y, o, 0, NULL, false));
    ASSERT_VALUES(y, 0, 100000);
    moe_tensor_release(y);
    OK(moe_tensor_full(&o3, MOE_F64, MOE_CPU, 2, SHAPE(3, 20000), 0.5));
    OK(moe_sum(&y, o3, 1, (int[]){1}, false));
    ASSERT_VALUES(y, 0, 10000, 10000, 10000);
    moe_tensor_release(y);
    OK(moe_sum(&y, o3, 1, (int[]){0}, false)); /* 20000 columns */
    ASSERT_SHAPE(y, 1, 20000);
    double v;
    OK(moe_tensor_get(y, (int64_t[]){19999}, &v));
    ck_assert(v == 1.5);
    RELEASE(y, o3, o);
}
END_TEST

START_TEST(sum_backward_values)
{
    moe_tensor *x = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 3, 4, 5, 6), *y, *g;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_sum(&y, x, 1, (int[]){1}, false));
    g = T(MOE_F64, 1, SHAPE(2), 1, 2);
    OK(moe_backward(y, g, false));
    ASSERT_SHAPE(x->grad, 2, 2, 3);
    ASSERT_VALUES(x->grad, 0, 1, 1, 1, 2, 2, 2);
    RELEASE(y, g);
    moe_tensor_zero_grad(x);
    OK(moe_sum(&y, x, 0, NULL, false));
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(x->grad, 0, 1, 1, 1, 1, 1, 1);
    RELEASE(y, x);
}
END_TEST

START_TEST(sum_determinism)
{
    /* bit-identical with 1 and 2 threads; close to an f64 reference */
    moe_rng rng;
    moe_rng_init(&rng, 7);
    moe_tensor *x, *y1, *y2, *x64, *ref;
    OK(moe_tensor_rand(&x, &rng, MOE_F32, MOE_CPU, 1, SHAPE(1 << 20)));
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    OK(moe_sum(&y1, x, 0, NULL, false));
    omp_set_num_threads(2);
    OK(moe_sum(&y2, x, 0, NULL, false));
    omp_set_num_threads(saved);
    ck_assert(memcmp(moe_tensor_data(y1), moe_tensor_data(y2), sizeof(float)) == 0);
    OK(moe_to_dtype(&x64, x, MOE_F64));
    OK(moe_sum(&ref, x64, 0, NULL, false));
    double a, b;
    OK(moe_tensor_item(y1, &a));
    OK(moe_tensor_item(ref, &b));
    ck_assert_msg(fabs(a - b) <= 1e-6 * fabs(b), "f32 sum %.9g vs f64 %.9g", a, b);
    ck_assert(fabs(b - (1 << 19)) < 2000); /* mean 0.5 */
    RELEASE(x, y1, y2, x64, ref);
}
END_TEST

START_TEST(sum_errors)
{
    moe_tensor *x = M23, *y = (moe_tensor *)1;
    FAILS(moe_sum(&y, x, 1, (int[]){2}, false), MOE_ERR_INDEX, "out of range");
    ck_assert_ptr_null(y);
    FAILS(moe_sum(&y, x, 1, (int[]){-3}, false), MOE_ERR_INDEX, "out of range");
    FAILS(moe_sum(&y, x, 2, (int[]){0, 0}, false), MOE_ERR_ARG, "more than once");
    FAILS(moe_sum(&y, x, 2, (int[]){1, -1}, false), MOE_ERR_ARG, "more than once");
    FAILS(moe_sum(&y, x, -1, NULL, false), MOE_ERR_ARG, "dims");
    moe_tensor_release(x);
}
END_TEST

/* ---- mean / var ------------------------------------------------------------------------ */

START_TEST(mean_values)
{
    moe_tensor *x = M23, *y, *t, *d;
    OK(moe_mean(&y, x, 1, (int[]){0}, false));
    ck_assert_int_eq(y->dtype, MOE_F32);
    ASSERT_VALUES(y, 1e-6, 2.5, 3.5, 4.5);
    moe_tensor_release(y);
    OK(moe_mean(&y, x, 1, (int[]){1}, true));
    ASSERT_SHAPE(y, 2, 2, 1);
    ASSERT_VALUES(y, 1e-6, 2, 5);
    moe_tensor_release(y);
    OK(moe_mean(&y, x, 0, NULL, false));
    ASSERT_VALUES(y, 1e-6, 3.5);
    moe_tensor_release(y);
    OK(moe_transpose(&t, x, 0, 1));
    OK(moe_mean(&y, t, 1, (int[]){-1}, false));
    ASSERT_VALUES(y, 1e-6, 2.5, 3.5, 4.5);
    moe_tensor_release(y);
    OK(moe_to_dtype(&d, x, MOE_F64));
    OK(moe_mean(&y, d, 2, (int[]){0, 1}, false));
    ck_assert_int_eq(y->dtype, MOE_F64);
    ASSERT_VALUES(y, 1e-15, 3.5);
    moe_tensor_release(y);
    RELEASE(t, d, x);
}
END_TEST

START_TEST(mean_edge)
{
    moe_tensor *z, *y, *i, *b;
    OK(moe_tensor_zeros(&z, MOE_F32, MOE_CPU, 2, SHAPE(2, 0)));
    OK(moe_mean(&y, z, 1, (int[]){1}, false));
    ASSERT_SHAPE(y, 1, 2);
    ASSERT_VALUES(y, 0, NAN, NAN);
    moe_tensor_release(y);
    b = T(MOE_BF16, 1, SHAPE(4), 1, 2, 3, 4);
    OK(moe_mean(&y, b, 0, NULL, false));
    ck_assert_int_eq(y->dtype, MOE_BF16);
    ASSERT_VALUES(y, 0, 2.5);
    moe_tensor_release(y);
    i = T(MOE_I64, 1, SHAPE(2), 1, 2);
    FAILS(moe_mean(&y, i, 0, NULL, false), MOE_ERR_DTYPE, "floating");
    FAILS(moe_mean(&y, b, 1, (int[]){1}, false), MOE_ERR_INDEX, "out of range");
    RELEASE(z, i, b);
}
END_TEST

START_TEST(var_values)
{
    moe_tensor *x = T(MOE_F64, 2, SHAPE(2, 4), 1, 2, 3, 4, 2, 4, 6, 8), *y, *t, *f;
    OK(moe_var(&y, x, 1, (int[]){1}, 1, false));
    ASSERT_VALUES(y, 1e-12, 1.6666666666666667, 6.666666666666667);
    moe_tensor_release(y);
    OK(moe_var(&y, x, 1, (int[]){-1}, 0, true));
    ASSERT_SHAPE(y, 2, 2, 1);
    ASSERT_VALUES(y, 1e-12, 1.25, 5);
    moe_tensor_release(y);
    OK(moe_var(&y, x, 1, (int[]){0}, 0, false));
    ASSERT_VALUES(y, 1e-12, 0.25, 1, 2.25, 4);
    moe_tensor_release(y);
    OK(moe_var(&y, x, 0, NULL, 1, false));
    ASSERT_VALUES(y, 1e-12, 5.357142857142857);
    moe_tensor_release(y);
    OK(moe_var(&y, x, 2, (int[]){0, 1}, 0, false));
    ASSERT_VALUES(y, 1e-12, 4.6875);
    moe_tensor_release(y);
    OK(moe_transpose(&t, x, 0, 1));
    OK(moe_to_dtype(&f, t, MOE_F32));
    OK(moe_var(&y, f, 1, (int[]){0}, 1, false));
    ck_assert_int_eq(y->dtype, MOE_F32);
    ASSERT_VALUES(y, 1e-5, 1.6666666666666667, 6.666666666666667);
    moe_tensor_release(y);
    moe_tensor *z = arange24(MOE_F64);
    OK(moe_var(&y, z, 2, (int[]){0, 2}, 1, false));
    ASSERT_VALUES(y, 1e-12, 42.57142857142857, 42.57142857142857, 42.57142857142857);
    moe_tensor_release(y);
    FAILS(moe_var(&y, x, 1, (int[]){0}, -1, false), MOE_ERR_ARG, "correction");
    FAILS(moe_var(&y, x, 1, (int[]){5}, 1, false), MOE_ERR_INDEX, "out of range");
    RELEASE(x, t, f, z);
}
END_TEST

/* ---- max / min / argmax ----------------------------------------------------------------- */

START_TEST(max_min_dim)
{
    moe_tensor *x = T(MOE_F32, 2, SHAPE(2, 3), 1, 5, 5, 7, 2, 7), *v, *i;
    OK(moe_max(&v, &i, x, 1, false));
    ASSERT_SHAPE(v, 1, 2);
    ck_assert_int_eq(i->dtype, MOE_I64);
    ASSERT_VALUES(v, 0, 5, 7);
    ASSERT_VALUES(i, 0, 1, 0); /* ties: the lower index */
    RELEASE(v, i);
    OK(moe_max(&v, &i, x, 0, true));
    ASSERT_SHAPE(v, 2, 1, 3);
    ASSERT_SHAPE(i, 2, 1, 3);
    ASSERT_VALUES(v, 0, 7, 5, 7);
    ASSERT_VALUES(i, 0, 1, 0, 1);
    RELEASE(v, i);
    OK(moe_min(&v, &i, x, -1, false));
    ASSERT_VALUES(v, 0, 1, 2);
    ASSERT_VALUES(i, 0, 0, 1);
    RELEASE(v, i);
    OK(moe_min(&v, NULL, x, 0, false));
    ASSERT_VALUES(v, 0, 1, 2, 5);
    moe_tensor_release(v);
    /* transposed: [3 2] = [[1 7] [5 2] [5 7]] */
    moe_tensor *t;
    OK(moe_transpose(&t, x, 0, 1));
    OK(moe_max(&v, &i, t, 0, false));
    ASSERT_VALUES(v, 0, 5, 7);
    ASSERT_VALUES(i, 0, 1, 0);
    RELEASE(v, i);
    OK(moe_min(&v, &i, t, 1, false));
    ASSERT_VALUES(v, 0, 1, 2, 5);
    ASSERT_VALUES(i, 0, 0, 1, 0);
    RELEASE(v, i);
    /* errors name the Scheme procedures, tmax and tmin */
    FAILS(moe_max(&v, &i, t, 2, false), MOE_ERR_INDEX, "tmax: ");
    FAILS(moe_min(&v, &i, t, 2, false), MOE_ERR_INDEX, "tmin: ");
    RELEASE(t, x);
}
END_TEST

START_TEST(max_min_dtypes)
{
    moe_tensor *x = T(MOE_I64, 2, SHAPE(2, 3), 3, 3, 3, -4, 9, -4), *v, *i;
    OK(moe_max(&v, &i, x, 1, false));
    ck_assert_int_eq(v->dtype, MOE_I64);
    ASSERT_VALUES(v, 0, 3, 9);
    ASSERT_VALUES(i, 0, 0, 1);
    RELEASE(v, i);
    OK(moe_min(&v, &i, x, 1, false));
    ASSERT_VALUES(v, 0, 3, -4);
    ASSERT_VALUES(i, 0, 0, 0);
    RELEASE(v, i);
    moe_tensor *d = T(MOE_F64, 1, SHAPE(4), 0.5, NAN, 2, NAN);
    OK(moe_max(&v, &i, d, 0, false));
    ck_assert(isnan(*(double *)moe_tensor_data(v)));
    ASSERT_VALUES(i, 0, 1);
    RELEASE(v, i);
    moe_tensor *b = T(MOE_BF16, 2, SHAPE(2, 2), 1.5, -2, 8, 4);
    OK(moe_min(&v, &i, b, 0, false));
    ck_assert_int_eq(v->dtype, MOE_BF16);
    ASSERT_VALUES(v, 0, 1.5, -2);
    ASSERT_VALUES(i, 0, 0, 0);
    RELEASE(v, i, x, d, b);
}
END_TEST

START_TEST(max_all_argmax)
{
    moe_tensor *x = T(MOE_F32, 2, SHAPE(2, 3), 1, 5, 5, 7, -2, 7), *y, *i, *t;
    OK(moe_max_all(&y, x));
    ASSERT_SHAPE(y, 0);
    ASSERT_VALUES(y, 0, 7);
    moe_tensor_release(y);
    OK(moe_min_all(&y, x));
    ASSERT_VALUES(y, 0, -2);
    moe_tensor_release(y);
    OK(moe_argmax(&i, x, 1, false));
    ck_assert_int_eq(i->dtype, MOE_I64);
    ck_assert(!i->requires_grad);
    ASSERT_VALUES(i, 0, 1, 0);
    moe_tensor_release(i);
    OK(moe_argmax(&i, x, 0, true));
    ASSERT_SHAPE(i, 2, 1, 3);
    ASSERT_VALUES(i, 0, 1, 0, 1);
    moe_tensor_release(i);
    OK(moe_transpose(&t, x, 0, 1));
    OK(moe_argmax(&i, t, -1, false));
    ASSERT_VALUES(i, 0, 1, 0, 1);
    moe_tensor_release(i);
    moe_tensor *bo = T(MOE_BOOL, 1, SHAPE(3), 0, 1, 1), *ib = T(MOE_I32, 1, SHAPE(3), 4, -9, 4);
    OK(moe_max_all(&y, bo));
    ck_assert_int_eq(y->dtype, MOE_BOOL);
    ASSERT_VALUES(y, 0, 1);
    moe_tensor_release(y);
    OK(moe_min_all(&y, ib));
    ck_assert_int_eq(y->dtype, MOE_I32);
    ASSERT_VALUES(y, 0, -9);
    moe_tensor_release(y);
    RELEASE(x, t, bo, ib);
}
END_TEST

START_TEST(max_long_rows)
{
    /* the winner and a later tie sit in different chunks */
    moe_tensor *z, *y, *i;
    OK(moe_tensor_zeros(&z, MOE_F32, MOE_CPU, 2, SHAPE(2, 30000)));
    float *p = moe_tensor_data(z);
    p[9000] = 1, p[25000] = 1;
    p[30000 + 20000] = -3, p[30000 + 29999] = -3;
    OK(moe_argmax(&i, z, 1, false));
    ASSERT_VALUES(i, 0, 9000, 0);
    moe_tensor_release(i);
    OK(moe_min(&y, &i, z, 1, false));
    ASSERT_VALUES(y, 0, 0, -3);
    ASSERT_VALUES(i, 0, 0, 20000);
    RELEASE(y, i);
    OK(moe_max_all(&y, z));
    ASSERT_VALUES(y, 0, 1);
    moe_tensor_release(y);
    moe_tensor_release(z);
}
END_TEST

START_TEST(max_backward_values)
{
    moe_tensor *x = T(MOE_F64, 1, SHAPE(4), 3, 1, 3, -1), *y, *v;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_max_all(&y, x));
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(x->grad, 0, 1, 0, 0, 0); /* the first extreme */
    moe_tensor_release(y);
    moe_tensor_zero_grad(x);
    OK(moe_min_all(&y, x));
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(x->grad, 0, 0, 0, 0, 1);
    moe_tensor_release(y);
    moe_tensor *m = T(MOE_F64, 2, SHAPE(2, 3), 1, 5, 5, 7, 2, 7), *g = T(MOE_F64, 1, SHAPE(2), 10, 20);
    OK(moe_tensor_requires_grad_(m, true));
    moe_tensor *i;
    OK(moe_max(&v, &i, m, 1, false));
    ASSERT_VALUES(i, 0, 1, 0);
    OK(moe_tensor_fill_(i, 2)); /* the caller's indices are its own */
    OK(moe_backward(v, g, false));
    ASSERT_VALUES(m->grad, 0, 0, 10, 0, 20, 0, 0);
    RELEASE(v, i, x, m, g);
}
END_TEST

START_TEST(max_errors)
{
    moe_tensor *x = M23, *e, *v = NULL, *i = NULL;
    FAILS(moe_max(&v, &i, x, 2, false), MOE_ERR_INDEX, "out of range");
    ck_assert_ptr_null(v);
    ck_assert_ptr_null(i);
    FAILS(moe_min(&v, NULL, x, -3, false), MOE_ERR_INDEX, "out of range");
    FAILS(moe_argmax(&i, x, 7, false), MOE_ERR_INDEX, "out of range");
    OK(moe_tensor_zeros(&e, MOE_F32, MOE_CPU, 2, SHAPE(3, 0)));
    FAILS(moe_max(&v, &i, e, 1, false), MOE_ERR_SHAPE, "empty");
    FAILS(moe_max_all(&v, e), MOE_ERR_SHAPE, "empty");
    OK(moe_max(&v, &i, e, 0, false)); /* reducing the non-empty dim is fine */
    ASSERT_SHAPE(v, 1, 0);
    RELEASE(v, i, e, x);
}
END_TEST

/* ---- softmax family ----------------------------------------------------------------------- */

START_TEST(softmax_values)
{
    moe_tensor *x = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 3, 1, 1, 1), *y, *s;
    OK(moe_softmax(&y, x, 1));
    ASSERT_SHAPE(y, 2, 2, 3);
    ASSERT_VALUES(y, 1e-15, 0.09003057317038045, 0.2447284710547976, 0.6652409557748218,
                  1.0 / 3, 1.0 / 3, 1.0 / 3);
    OK(moe_sum(&s, y, 1, (int[]){-1}, false));
    ASSERT_VALUES(s, 1e-15, 1, 1);
    RELEASE(y, s);
    OK(moe_softmax(&y, x, 0));
    ck_assert(moe_tensor_is_contiguous(y));
    ASSERT_VALUES(y, 1e-15, 0.5, 0.7310585786300049, 0.8807970779778823, 0.5, 0.2689414213699951,
                  0.11920292202211755);
    moe_tensor_release(y);
    /* f32, transposed input: softmax over dim 1 of xᵀ is softmax over dim 0 of x */
    moe_tensor *f, *t;
    OK(moe_to_dtype(&f, x, MOE_F32));
    OK(moe_transpose(&t, f, 0, 1));
    OK(moe_softmax(&y, t, -1));
    ck_assert_int_eq(y->dtype, MOE_F32);
    ASSERT_SHAPE(y, 2, 3, 2);
    ASSERT_VALUES(y, 1e-6, 0.5, 0.5, 0.7310585786300049, 0.2689414213699951, 0.8807970779778823,
                  0.11920292202211755);
    moe_tensor_release(y);
    /* large values do not overflow */
    moe_tensor *big = T(MOE_F32, 1, SHAPE(3), 1000, 1001, 1002);
    OK(moe_softmax(&y, big, 0));
    ASSERT_VALUES(y, 1e-6, 0.09003057317038045, 0.2447284710547976, 0.6652409557748218);
    moe_tensor_release(y);
    moe_tensor *b = T(MOE_BF16, 1, SHAPE(2), 0, 0);
    OK(moe_softmax(&y, b, 0));
    ck_assert_int_eq(y->dtype, MOE_BF16);
    ASSERT_VALUES(y, 0, 0.5, 0.5);
    moe_tensor_release(y);
    RELEASE(x, f, t, big, b);
}
END_TEST

START_TEST(softmax_rows_sum_to_one)
{
    moe_tensor *x = tu_randn(MOE_F32, 2, SHAPE(64, 1000), 3), *y, *s, *x3, *y3, *s3;
    OK(moe_softmax(&y, x, 1));
    OK(moe_sum(&s, y, 1, (int[]){1}, false));
    double v[64];
    OK(moe_tensor_to_doubles(s, v));
    for (int i = 0; i < 64; i++) ck_assert_msg(fabs(v[i] - 1) < 1e-5, "row %d sums to %g", i, v[i]);
    x3 = tu_randn(MOE_F64, 3, SHAPE(4, 5, 6), 4);
    OK(moe_softmax(&y3, x3, 1));
    OK(moe_sum(&s3, y3, 1, (int[]){1}, false));
    double w[24];
    OK(moe_tensor_to_doubles(s3, w));
    for (int i = 0; i < 24; i++) ck_assert(fabs(w[i] - 1) < 1e-14);
    RELEASE(x, y, s, x3, y3, s3);
    /* f32 against f64 over wide values and row lengths 1…9 (vector tails) */
    for (int64_t n = 1; n <= 9; n++) {
        moe_tensor *d = tu_randn(MOE_F64, 2, SHAPE(5, n), 100 + (uint64_t)n), *d10, *f, *yf, *yd;
        OK(moe_mul_scalar(&d10, d, 20));
        OK(moe_to_dtype(&f, d10, MOE_F32));
        for (int k = 0; k < 3; k++) {
            moe_tensor *fd;
            OK(moe_to_dtype(&fd, f, MOE_F64)); /* the same inputs, exactly */
            if (k == 0) {
                OK(moe_softmax(&yf, f, 1));
                OK(moe_softmax(&yd, fd, 1));
            } else if (k == 1) {
                OK(moe_log_softmax(&yf, f, 1));
                OK(moe_log_softmax(&yd, fd, 1));
            } else {
                OK(moe_logsumexp(&yf, f, 1, false));
                OK(moe_logsumexp(&yd, fd, 1, false));
            }
            tu_assert_close(yf, yd, 1e-6, 1e-6, "f32 softmax family vs f64");
            RELEASE(fd, yf, yd);
        }
        RELEASE(d, d10, f);
    }
}
END_TEST

START_TEST(log_softmax_values)
{
    moe_tensor *x = T(MOE_F32, 1, SHAPE(2), 1000, 1001), *y;
    OK(moe_log_softmax(&y, x, 0));
    ASSERT_VALUES(y, 1e-6, -1.3132616875182228, -0.31326168751822286);
    moe_tensor_release(y);
    moe_tensor *d = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 3, 1, 1, 1);
    OK(moe_log_softmax(&y, d, 1));
    ASSERT_VALUES(y, 1e-14, -2.4076059644443806, -1.4076059644443804, -0.4076059644443804,
                  -1.0986122886681098, -1.0986122886681098, -1.0986122886681098);
    moe_tensor_release(y);
    OK(moe_log_softmax(&y, d, 0));
    ASSERT_VALUES(y, 1e-14, -0.6931471805599453, -0.31326168751822286, -0.12692801104297263,
                  -0.6931471805599453, -1.3132616875182228, -2.1269280110429727);
    moe_tensor_release(y);
    moe_tensor *n = T(MOE_F64, 1, SHAPE(3), -INFINITY, 0, 0);
    OK(moe_log_softmax(&y, n, 0));
    ASSERT_VALUES(y, 1e-15, -INFINITY, -0.6931471805599453, -0.6931471805599453);
    RELEASE(y, x, d, n);
}
END_TEST

START_TEST(logsumexp_values)
{
    moe_tensor *x = T(MOE_F64, 2, SHAPE(2, 3), 1, 2, 3, 1, 1, 1), *y;
    OK(moe_logsumexp(&y, x, 1, false));
    ASSERT_SHAPE(y, 1, 2);
    ASSERT_VALUES(y, 1e-14, 3.4076059644443806, 2.09861228866811);
    moe_tensor_release(y);
    OK(moe_logsumexp(&y, x, 0, true));
    ASSERT_SHAPE(y, 2, 1, 3);
    ASSERT_VALUES(y, 1e-14, 1.6931471805599454, 2.313261687518223, 3.1269280110429727);
    moe_tensor_release(y);
    moe_tensor *n = T(MOE_F32, 2, SHAPE(3, 3), -INFINITY, 0, -INFINITY, -INFINITY, -INFINITY,
                      -INFINITY, 1000, 1000, -INFINITY);
    OK(moe_logsumexp(&y, n, -1, false));
    ASSERT_VALUES(y, 1e-4, 0, -INFINITY, 1000.6931471805599);
    moe_tensor_release(y);
    moe_tensor *s;
    OK(moe_tensor_scalar(&s, MOE_F64, MOE_CPU, 4));
    OK(moe_logsumexp(&y, s, 0, false));
    ASSERT_SHAPE(y, 0);
    ASSERT_VALUES(y, 0, 4);
    RELEASE(y, x, n, s);
}
END_TEST

START_TEST(softmax_errors)
{
    moe_tensor *i = T(MOE_I64, 1, SHAPE(3), 1, 2, 3), *x = M23, *y = (moe_tensor *)1;
    FAILS(moe_softmax(&y, i, 0), MOE_ERR_DTYPE, "floating");
    ck_assert_ptr_null(y);
    FAILS(moe_log_softmax(&y, i, 0), MOE_ERR_DTYPE, "i64");
    FAILS(moe_logsumexp(&y, i, 0, false), MOE_ERR_DTYPE, "floating");
    FAILS(moe_softmax(&y, x, 2), MOE_ERR_INDEX, "out of range");
    FAILS(moe_log_softmax(&y, x, -3), MOE_ERR_INDEX, "out of range");
    FAILS(moe_logsumexp(&y, x, 5, true), MOE_ERR_INDEX, "out of range");
    RELEASE(i, x);
}
END_TEST

/* ---- cumsum ------------------------------------------------------------------------------ */

START_TEST(cumsum_values)
{
    moe_tensor *x = M23, *y, *t, *i;
    OK(moe_cumsum(&y, x, 1));
    ASSERT_SHAPE(y, 2, 2, 3);
    ASSERT_VALUES(y, 0, 1, 3, 6, 4, 9, 15);
    moe_tensor_release(y);
    OK(moe_cumsum(&y, x, 0));
    ASSERT_VALUES(y, 0, 1, 2, 3, 5, 7, 9);
    moe_tensor_release(y);
    OK(moe_cumsum(&y, x, -1));
    ASSERT_VALUES(y, 0, 1, 3, 6, 4, 9, 15);
    moe_tensor_release(y);
    OK(moe_transpose(&t, x, 0, 1)); /* [[1 4] [2 5] [3 6]] */
    OK(moe_cumsum(&y, t, 0));
    ASSERT_VALUES(y, 0, 1, 4, 3, 9, 6, 15);
    moe_tensor_release(y);
    i = T(MOE_I32, 1, SHAPE(4), 1, -2, 3, 10);
    OK(moe_cumsum(&y, i, 0));
    ck_assert_int_eq(y->dtype, MOE_I64);
    ASSERT_VALUES(y, 0, 1, -1, 2, 12);
    moe_tensor_release(y);
    moe_tensor *z = arange24(MOE_F64);
    OK(moe_cumsum(&y, z, 1));
    double v[24];
    OK(moe_tensor_to_doubles(y, v));
    ck_assert(v[4] == 4 + 0 && v[8 + 3] == 3 + 7 + 11 && v[12 + 8 + 1] == 13 + 17 + 21);
    moe_tensor_release(y);
    FAILS(moe_cumsum(&y, x, 2), MOE_ERR_INDEX, "out of range");
    RELEASE(x, t, i, z);
}
END_TEST

/* ---- gradients ------------------------------------------------------------------------------ */

enum { G_SUM, G_MEAN, G_VAR, G_MAX, G_MIN, G_MAX_ALL, G_MIN_ALL, G_SOFTMAX, G_LOG_SOFTMAX,
       G_LOGSUMEXP, G_CUMSUM };

typedef struct gctx {
    int op;
    int ndims;
    int dims[MOE_MAX_DIMS];
    bool keepdim;
    int correction;
    bool transpose; /* feed the op xᵀ (dims 0 and 1 swapped) */
} gctx;

static moe_status gfn(moe_tensor **out, moe_tensor **in, void *ctx)
{
    gctx *c = ctx;
    moe_tensor *x;
    if (c->transpose) MOE_TRY(moe_transpose(&x, in[0], 0, 1));
    else x = moe_tensor_retain(in[0]);
    moe_status st;
    switch (c->op) {
    case G_SUM: st = moe_sum(out, x, c->ndims, c->dims, c->keepdim); break;
    case G_MEAN: st = moe_mean(out, x, c->ndims, c->dims, c->keepdim); break;
    case G_VAR: st = moe_var(out, x, c->ndims, c->dims, c->correction, c->keepdim); break;
    case G_MAX: st = moe_max(out, NULL, x, c->dims[0], c->keepdim); break;
    case G_MIN: st = moe_min(out, NULL, x, c->dims[0], c->keepdim); break;
    case G_MAX_ALL: st = moe_max_all(out, x); break;
    case G_MIN_ALL: st = moe_min_all(out, x); break;
    case G_SOFTMAX: st = moe_softmax(out, x, c->dims[0]); break;
    case G_LOG_SOFTMAX: st = moe_log_softmax(out, x, c->dims[0]); break;
    case G_LOGSUMEXP: st = moe_logsumexp(out, x, c->dims[0], c->keepdim); break;
    default: st = moe_cumsum(out, x, c->dims[0]); break;
    }
    moe_tensor_release(x);
    return st;
}

static void gradcheck(gctx c, int ndim, const int64_t *shape, uint64_t seed, const char *what)
{
    moe_tensor *x = tu_randn(MOE_F64, ndim, shape, seed);
    OK(moe_tensor_requires_grad_(x, true));
    tu_gradcheck(gfn, 1, &x, &c, 1e-6, 1e-6, what);
    moe_tensor_release(x);
}

START_TEST(grad_sum_mean)
{
    const int64_t *s3 = SHAPE(2, 3, 4);
    gradcheck((gctx){G_SUM, 0, {0}, false, 0, false}, 3, s3, 1, "sum all");
    gradcheck((gctx){G_SUM, 1, {1}, false, 0, false}, 3, s3, 2, "sum dim 1");
    gradcheck((gctx){G_SUM, 2, {0, 2}, true, 0, false}, 3, s3, 3, "sum dims 0 2 keepdim");
    gradcheck((gctx){G_SUM, 1, {0}, false, 0, true}, 2, SHAPE(3, 4), 4, "sum transposed");
    gradcheck((gctx){G_MEAN, 0, {0}, false, 0, false}, 3, s3, 5, "mean all");
    gradcheck((gctx){G_MEAN, 1, {-1}, true, 0, false}, 3, s3, 6, "mean dim -1 keepdim");
    gradcheck((gctx){G_MEAN, 2, {0, 1}, false, 0, false}, 3, s3, 7, "mean dims 0 1");
}
END_TEST

START_TEST(grad_var)
{
    const int64_t *s3 = SHAPE(2, 3, 4);
    gradcheck((gctx){G_VAR, 1, {1}, false, 1, false}, 3, s3, 8, "var dim 1");
    gradcheck((gctx){G_VAR, 1, {-1}, true, 0, false}, 3, s3, 9, "var dim -1 keepdim corr 0");
    gradcheck((gctx){G_VAR, 2, {0, 2}, false, 1, false}, 3, s3, 10, "var dims 0 2");
    gradcheck((gctx){G_VAR, 0, {0}, false, 1, false}, 3, s3, 11, "var all");
    gradcheck((gctx){G_VAR, 1, {0}, false, 1, true}, 2, SHAPE(3, 4), 12, "var transposed");
}
END_TEST

START_TEST(grad_max_min)
{
    const int64_t *s3 = SHAPE(2, 3, 4);
    gradcheck((gctx){G_MAX, 1, {1}, false, 0, false}, 3, s3, 13, "max dim 1");
    gradcheck((gctx){G_MAX, 1, {-1}, true, 0, false}, 3, s3, 14, "max dim -1 keepdim");
    gradcheck((gctx){G_MIN, 1, {0}, false, 0, false}, 3, s3, 15, "min dim 0");
    gradcheck((gctx){G_MIN, 1, {1}, false, 0, true}, 2, SHAPE(3, 4), 16, "min transposed");
    gradcheck((gctx){G_MAX_ALL, 0, {0}, false, 0, false}, 3, s3, 17, "max all");
    gradcheck((gctx){G_MIN_ALL, 0, {0}, false, 0, true}, 2, SHAPE(3, 4), 18, "min all transposed");
}
END_TEST

START_TEST(grad_softmax)
{
    const int64_t *s3 = SHAPE(2, 3, 4);
    for (int d = -1; d < 3; d++) {
        char what[64];
        snprintf(what, sizeof what, "softmax dim %d", d);
        gradcheck((gctx){G_SOFTMAX, 1, {d}, false, 0, false}, 3, s3, 20 + (uint64_t)d, what);
        snprintf(what, sizeof what, "log_softmax dim %d", d);
        gradcheck((gctx){G_LOG_SOFTMAX, 1, {d}, false, 0, false}, 3, s3, 30 + (uint64_t)d, what);
        snprintf(what, sizeof what, "logsumexp dim %d", d);
        gradcheck((gctx){G_LOGSUMEXP, 1, {d}, d == 1, 0, false}, 3, s3, 40 + (uint64_t)d, what);
    }
    gradcheck((gctx){G_SOFTMAX, 1, {1}, false, 0, true}, 2, SHAPE(3, 4), 50, "softmax transposed");
}
END_TEST

START_TEST(grad_cumsum)
{
    const int64_t *s3 = SHAPE(2, 3, 4);
    for (int d = -1; d < 3; d++)
        gradcheck((gctx){G_CUMSUM, 1, {d}, false, 0, false}, 3, s3, 60 + (uint64_t)d, "cumsum");
    gradcheck((gctx){G_CUMSUM, 1, {0}, false, 0, true}, 2, SHAPE(3, 4), 70, "cumsum transposed");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reduce");
    TCase *tc = tcase_create("sum");
    tcase_add_test(tc, sum_dims);
    tcase_add_test(tc, sum_3d);
    tcase_add_test(tc, sum_noncontiguous);
    tcase_add_test(tc, sum_dtypes);
    tcase_add_test(tc, sum_edge);
    tcase_add_test(tc, sum_long_rows);
    tcase_add_test(tc, sum_backward_values);
    tcase_add_test(tc, sum_determinism);
    tcase_add_test(tc, sum_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("mean-var");
    tcase_add_test(tc, mean_values);
    tcase_add_test(tc, mean_edge);
    tcase_add_test(tc, var_values);
    suite_add_tcase(s, tc);
    tc = tcase_create("max-min");
    tcase_add_test(tc, max_min_dim);
    tcase_add_test(tc, max_min_dtypes);
    tcase_add_test(tc, max_all_argmax);
    tcase_add_test(tc, max_long_rows);
    tcase_add_test(tc, max_backward_values);
    tcase_add_test(tc, max_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("softmax");
    tcase_add_test(tc, softmax_values);
    tcase_add_test(tc, softmax_rows_sum_to_one);
    tcase_add_test(tc, log_softmax_values);
    tcase_add_test(tc, logsumexp_values);
    tcase_add_test(tc, softmax_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("cumsum");
    tcase_add_test(tc, cumsum_values);
    suite_add_tcase(s, tc);
    tc = tcase_create("gradients");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, grad_sum_mean);
    tcase_add_test(tc, grad_var);
    tcase_add_test(tc, grad_max_min);
    tcase_add_test(tc, grad_softmax);
    tcase_add_test(tc, grad_cumsum);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
