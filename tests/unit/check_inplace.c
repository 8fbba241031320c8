/* check_inplace.c — in-place writes: storage version counters and the
 * backward that refuses changed saved tensors (through views and detached
 * aliases too), destinations whose elements share memory, values that an
 * integer dtype cannot hold, and backward called from inside a hook. */
#include "testutil.h"

START_TEST(test_every_write_bumps_the_version)
{
    moe_tensor *t = T(MOE_F64, 1, SHAPE(3), 1, 2, 3), *src = T(MOE_F64, 1, SHAPE(3), 4, 5, 6), *alias, *part;
    ck_assert_uint_eq(moe_tensor_version(t), 0);
    OK(moe_tensor_fill_(t, 7));
    ck_assert_uint_eq(moe_tensor_version(t), 1);
    OK(moe_tensor_copy_(t, src));
    ck_assert_uint_eq(moe_tensor_version(t), 2);
    OK(moe_tensor_set(t, (int64_t[]){1}, 9));
    ck_assert_uint_eq(moe_tensor_version(t), 3);
    /* views and detached aliases share the storage, so they share the counter */
    OK(moe_detach(&alias, t));
    OK(moe_narrow(&part, t, 0, 1, 2));
    OK(moe_tensor_fill_(part, 0));
    ck_assert_uint_eq(moe_tensor_version(alias), 4);
    ck_assert_uint_eq(moe_tensor_version(t), 4);
    ASSERT_VALUES(t, 0, 4, 0, 0);
    /* a failed write leaves values and version alone */
    moe_tensor *wide = T(MOE_F64, 1, SHAPE(4), 1, 2, 3, 4);
    FAILS(moe_tensor_copy_(t, wide), MOE_ERR_SHAPE, "do not broadcast");
    ck_assert_uint_eq(moe_tensor_version(t), 4);
    /* reading never bumps */
    moe_tensor *c;
    OK(moe_clone(&c, t));
    ck_assert_uint_eq(moe_tensor_version(t), 4);
    ck_assert_uint_eq(moe_tensor_version(c), 0);
    RELEASE(t, src, alias, part, wide, c);
}
END_TEST

/* y = sum(x * h): mul saves h, so writing h before backward would give a
 * gradient of the new h. */
START_TEST(test_backward_refuses_a_changed_saved_tensor)
{
    moe_tensor *x = T(MOE_F32, 1, SHAPE(2), 1, 2), *h = T(MOE_F32, 1, SHAPE(2), 1, 1), *p, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_mul(&p, x, h));
    OK(moe_sum(&y, p, 0, NULL, false));
    OK(moe_tensor_fill_(h, 5));
    FAILS(moe_backward(y, NULL, false), MOE_ERR_STATE, "saved by 'mul'");
    FAILS(moe_backward(y, NULL, false), MOE_ERR_STATE, "at version 1, expected version 0");
    ck_assert_ptr_null(x->grad);
    RELEASE(x, h, p, y);
}
END_TEST

START_TEST(test_through_a_detached_alias)
{
    moe_tensor *x = T(MOE_F64, 1, SHAPE(2), 1, 2), *h = T(MOE_F64, 1, SHAPE(2), 1, 1), *d, *p, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_mul(&p, x, h));
    OK(moe_sum(&y, p, 0, NULL, false));
    OK(moe_detach(&d, h));
    moe_tensor *src = T(MOE_F64, 1, SHAPE(2), 3, 4);
    OK(moe_tensor_copy_(d, src));
    FAILS(moe_backward(y, NULL, false), MOE_ERR_STATE, "modified by an in-place operation");
    RELEASE(x, h, d, p, y, src);
}
END_TEST

START_TEST(test_saved_output_and_retained_graph)
{
    /* exp saves its output: a write to the output (under no-grad) is caught,
     * but only after a first backward that saw the intact value */
    moe_tensor *x = T(MOE_F64, 1, SHAPE(2), 0, 1), *e, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_exp(&e, x));
    OK(moe_sum(&y, e, 0, NULL, false));
    OK(moe_backward(y, NULL, true));
    ASSERT_VALUES(x->grad, 1e-15, 1, M_E);
    bool prev = moe_grad_set_enabled(false);
    OK(moe_tensor_fill_(e, 0));
    moe_grad_set_enabled(prev);
    FAILS(moe_backward(y, NULL, true), MOE_ERR_STATE, "saved by 'exp'");
    ASSERT_VALUES(x->grad, 1e-15, 1, M_E); /* unchanged by the refused backward */
    RELEASE(x, e, y);
}
END_TEST

START_TEST(test_writes_to_unsaved_tensors_are_fine)
{
    /* add saves nothing: changing an operand afterwards does not matter */
    moe_tensor *x = T(MOE_F64, 1, SHAPE(2), 1, 2), *h = T(MOE_F64, 1, SHAPE(2), 1, 1), *p, *y;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_add(&p, x, h));
    OK(moe_sum(&y, p, 0, NULL, false));
    OK(moe_tensor_fill_(h, 5));
    OK(moe_backward(y, NULL, false));
    ASSERT_VALUES(x->grad, 0, 1, 1);
    RELEASE(x, h, p, y);
}
END_TEST

static moe_status backward_in_hook(moe_tensor **grad, void *ctx)
{
    moe_tensor *other = ctx;
    return moe_backward(other, NULL, true);
}

START_TEST(test_backward_inside_a_hook)
{
    moe_tensor *x = T(MOE_F64, 1, SHAPE(2), 1, 2), *y, *w = T(MOE_F64, 0, NULL, 3), *z;
    OK(moe_tensor_requires_grad_(x, true));
    OK(moe_tensor_requires_grad_(w, true));
    OK(moe_mul_scalar(&z, w, 2));
    OK(moe_tensor_register_hook(x, backward_in_hook, z, NULL, NULL));
    OK(moe_sum(&y, x, 0, NULL, false));
    FAILS(moe_backward(y, NULL, false), MOE_ERR_STATE, "inside a gradient hook, where gradient recording is off");
    ck_assert_ptr_null(w->grad);
    /* and outside the hook the same call works */
    OK(moe_backward(z, NULL, false));
    ASSERT_VALUES(w->grad, 0, 2);
    RELEASE(x, y, w, z);
}
END_TEST

START_TEST(test_overlapping_destination)
{
    moe_tensor *row = T(MOE_F64, 2, SHAPE(1, 2), 0, 0), *wide, *src = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 4);
    OK(moe_expand(&wide, row, 2, SHAPE(2, 2)));
    ck_assert(moe_tensor_has_overlap(wide));
    FAILS(moe_tensor_copy_(wide, src), MOE_ERR_ARG, "sharing memory");
    ASSERT_VALUES(row, 0, 0, 0);
    ck_assert_uint_eq(moe_tensor_version(row), 0);
    /* views that do not overlap are accepted */
    moe_tensor *m = T(MOE_F64, 2, SHAPE(2, 3), 0, 0, 0, 0, 0, 0), *tr, *cols, *one;
    OK(moe_transpose(&tr, m, 0, 1));
    OK(moe_narrow(&cols, m, 1, 1, 2));
    OK(moe_expand(&one, row, 2, SHAPE(1, 2))); /* expand to the same shape: no stride 0 used */
    ck_assert(!moe_tensor_has_overlap(m) && !moe_tensor_has_overlap(tr) && !moe_tensor_has_overlap(cols));
    ck_assert(!moe_tensor_has_overlap(one));
    OK(moe_tensor_copy_(cols, src));
    ASSERT_VALUES(m, 0, 0, 1, 2, 0, 3, 4);
    RELEASE(row, wide, src, m, tr, cols, one);
}
END_TEST

START_TEST(test_values_integers_cannot_hold)
{
    moe_tensor *f = T(MOE_F32, 1, SHAPE(3), NAN, INFINITY, 1e20), *r = NULL;
    FAILS(moe_to_dtype(&r, f, MOE_I32), MOE_ERR_VALUE, "element [0] of the f32 tensor [3] is nan");
    ck_assert_ptr_null(r);
    moe_tensor *g = T(MOE_F64, 2, SHAPE(2, 2), 1, 2, 3, 3e9);
    FAILS(moe_to_dtype(&r, g, MOE_I32), MOE_ERR_VALUE, "element [1 1] of the f64 tensor [2 2] is 3e+09");
    OK(moe_to_dtype(&r, g, MOE_I64)); /* 3e9 fits an i64 */
    ASSERT_VALUES(r, 0, 1, 2, 3, 3e9);
    moe_tensor_release(r);
    moe_tensor *i64 = T(MOE_I64, 1, SHAPE(2), 7, 4294967296.0);
    FAILS(moe_to_dtype(&r, i64, MOE_I32), MOE_ERR_VALUE, "element [1] of the i64 tensor [2] is 4.29497e+09");
    moe_tensor *big = T(MOE_F64, 1, SHAPE(2), -9223372036854775808.0, 9223372036854775808.0);
    FAILS(moe_to_dtype(&r, big, MOE_I64), MOE_ERR_VALUE, "element [1]");
    /* the edges that do fit, truncated toward zero */
    moe_tensor *edge = T(MOE_F64, 1, SHAPE(3), -2147483648.9, 2147483647.9, -1.5);
    OK(moe_to_dtype(&r, edge, MOE_I32));
    ASSERT_VALUES(r, 0, -2147483648.0, 2147483647.0, -1);
    moe_tensor_release(r);
    /* full and fill */
    FAILS(moe_tensor_full(&r, MOE_I64, MOE_CPU, 1, SHAPE(2), 1e30), MOE_ERR_VALUE, "value 1e+30 cannot be converted to i64");
    ck_assert_ptr_null(r);
    FAILS(moe_tensor_full(&r, MOE_I32, MOE_CPU, 1, SHAPE(2), NAN), MOE_ERR_VALUE, "value nan cannot be converted to i32");
    moe_tensor *t;
    OK(moe_tensor_full(&t, MOE_I32, MOE_CPU, 1, SHAPE(2), -7));
    FAILS(moe_tensor_fill_(t, 1e10), MOE_ERR_VALUE, "i32");
    FAILS(moe_tensor_fill_(t, -INFINITY), MOE_ERR_VALUE, "value -inf");
    FAILS(moe_tensor_set(t, (int64_t[]){0}, 3e9), MOE_ERR_VALUE, "3e+09");
    ASSERT_VALUES(t, 0, -7, -7);
    ck_assert_uint_eq(moe_tensor_version(t), 0);
    /* copy! converts too */
    moe_tensor *half = T(MOE_F64, 1, SHAPE(2), 1.5, NAN);
    FAILS(moe_tensor_copy_(t, half), MOE_ERR_VALUE, "tensor-copy!: element [1] of the f64 tensor [2] is nan");
    ASSERT_VALUES(t, 0, -7, -7);
    RELEASE(f, g, i64, big, edge, t, half);
}
END_TEST

START_TEST(test_integer_division_by_zero)
{
    moe_tensor *d = T(MOE_I64, 1, SHAPE(3), 2, 0, 4), *r = NULL;
    FAILS(moe_rdiv_scalar(&r, d, 8), MOE_ERR_VALUE, "integer division by zero: element [1] of the i64 divisor [3] is 0");
    ck_assert_ptr_null(r);
    moe_tensor *ok = T(MOE_I32, 1, SHAPE(2), 2, -4);
    OK(moe_rdiv_scalar(&r, ok, 8));
    ASSERT_VALUES(r, 0, 4, -2);
    RELEASE(d, ok, r);
}
END_TEST

static Suite *inplace_suite(void)
{
    Suite *s = suite_create("inplace");
    TCase *c = tcase_create("versions");
    tcase_add_test(c, test_every_write_bumps_the_version);
    tcase_add_test(c, test_backward_refuses_a_changed_saved_tensor);
    tcase_add_test(c, test_through_a_detached_alias);
    tcase_add_test(c, test_saved_output_and_retained_graph);
    tcase_add_test(c, test_writes_to_unsaved_tensors_are_fine);
    tcase_add_test(c, test_backward_inside_a_hook);
    suite_add_tcase(s, c);
    c = tcase_create("checked writes");
    tcase_add_test(c, test_overlapping_destination);
    tcase_add_test(c, test_values_integers_cannot_hold);
    tcase_add_test(c, test_integer_division_by_zero);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(inplace_suite()); }
