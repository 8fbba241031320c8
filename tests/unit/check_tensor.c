/* check_tensor.c — tensors: creation, dtypes, views, copies, RNG, errors. */
#include <omp.h>
#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "testutil.h"

START_TEST(test_zeros_ones_full)
{
    moe_tensor *z, *o, *f;
    OK(moe_tensor_zeros(&z, MOE_F32, MOE_CPU, 2, SHAPE(2, 3)));
    OK(moe_tensor_ones(&o, MOE_I64, MOE_CPU, 1, SHAPE(3)));
    OK(moe_tensor_full(&f, MOE_F64, MOE_CPU, 0, NULL, 2.5));
    ASSERT_SHAPE(z, 2, 2, 3);
    ASSERT_VALUES(z, 0, 0, 0, 0, 0, 0, 0);
    ASSERT_VALUES(o, 0, 1, 1, 1);
    ck_assert_int_eq(f->ndim, 0);
    ck_assert_int_eq(moe_tensor_numel(f), 1);
    double v;
    OK(moe_tensor_item(f, &v));
    ck_assert_double_eq(v, 2.5);
    ck_assert(moe_tensor_is_contiguous(z));
    ck_assert_int_eq(z->strides[0], 3);
    ck_assert_int_eq(z->strides[1], 1);
    RELEASE(z, o, f);
}
END_TEST

START_TEST(test_arange_eye)
{
    moe_tensor *a, *b, *e;
    OK(moe_tensor_arange(&a, MOE_I64, MOE_CPU, 0, 5, 1));
    ASSERT_VALUES(a, 0, 0, 1, 2, 3, 4);
    OK(moe_tensor_arange(&b, MOE_F32, MOE_CPU, 1, 0, -0.25));
    ASSERT_VALUES(b, 0, 1, 0.75, 0.5, 0.25);
    OK(moe_tensor_eye(&e, MOE_F64, MOE_CPU, 2, 3));
    ASSERT_VALUES(e, 0, 1, 0, 0, 0, 1, 0);
    moe_tensor *bad = NULL;
    FAILS(moe_tensor_arange(&bad, MOE_F32, MOE_CPU, 0, 1, 0), MOE_ERR_ARG, "non-zero step");
    ck_assert_ptr_null(bad);
    RELEASE(a, b, e);
}
END_TEST

START_TEST(test_dtype_traits_and_bf16)
{
    ck_assert_int_eq(moe_dtype_size(MOE_BF16), 2);
    ck_assert_int_eq(moe_dtype_size(MOE_I64), 8);
    ck_assert_int_eq(moe_dtype_size(MOE_BOOL), 1);
    ck_assert_str_eq(moe_dtype_name(MOE_BF16), "bf16");
    moe_dtype d;
    ck_assert(moe_dtype_parse("i32", &d) && d == MOE_I32);
    ck_assert(!moe_dtype_parse("f16", &d));
    ck_assert_int_eq(moe_dtype_promote(MOE_I64, MOE_F32), MOE_F32);
    ck_assert_int_eq(moe_dtype_promote(MOE_BF16, MOE_F32), MOE_F32);
    ck_assert_int_eq(moe_dtype_promote(MOE_BOOL, MOE_I32), MOE_I32);
    /* bf16 keeps 8 mantissa bits; rounding is to nearest even. */
    ck_assert_float_eq(moe_bf16_to_f32(moe_f32_to_bf16(1.0f)), 1.0f);
    ck_assert_float_eq(moe_bf16_to_f32(moe_f32_to_bf16(1.00390625f)), 1.0f);   /* tie → even */
    ck_assert_float_eq(moe_bf16_to_f32(moe_f32_to_bf16(1.01171875f)), 1.015625f); /* tie → even (up) */
    ck_assert_float_eq(moe_bf16_to_f32(moe_f32_to_bf16(3.14159265f)), 3.140625f);
    ck_assert(isnan(moe_bf16_to_f32(moe_f32_to_bf16(NAN))));
    ck_assert(isinf(moe_bf16_to_f32(moe_f32_to_bf16(INFINITY))));
}
END_TEST

START_TEST(test_from_data_get_set)
{
    float data[6] = {1, 2, 3, 4, 5, 6};
    moe_tensor *t;
    OK(moe_tensor_from_data(&t, MOE_F32, MOE_CPU, 2, SHAPE(2, 3), data));
    double v;
    OK(moe_tensor_get(t, SHAPE(1, 2), &v));
    ck_assert_double_eq(v, 6);
    OK(moe_tensor_set(t, SHAPE(0, 1), -7));
    ASSERT_VALUES(t, 0, 1, -7, 3, 4, 5, 6);
    ck_assert_float_eq(data[1], 2); /* from_data copied */
    FAILS(moe_tensor_get(t, SHAPE(2, 0), &v), MOE_ERR_INDEX, "index 2 out of range for dim 0 of shape [2 3]");
    FAILS(moe_tensor_item(t, &v), MOE_ERR_SHAPE, "tensor-item: needs a one-element tensor");
    RELEASE(t);
}
END_TEST

static int wrap_freed;
static void wrap_free(void *data, void *ctx)
{
    (void)data;
    *(int *)ctx += 1;
}

START_TEST(test_wrap_borrows)
{
    double data[4] = {1, 2, 3, 4};
    moe_tensor *t, *v;
    wrap_freed = 0;
    OK(moe_tensor_wrap(&t, MOE_F64, 2, SHAPE(2, 2), data, wrap_free, &wrap_freed));
    OK(moe_transpose(&v, t, 0, 1));
    moe_tensor_release(t);
    ck_assert_int_eq(wrap_freed, 0); /* the view keeps the storage */
    data[1] = 20;
    ASSERT_VALUES(v, 0, 1, 3, 20, 4);
    moe_tensor_release(v);
    ck_assert_int_eq(wrap_freed, 1);
}
END_TEST

START_TEST(test_views_share_storage)
{
    moe_tensor *a, *tr, *n, *s, *r, *u, *q, *e, *p;
    a = T(MOE_F64, 2, SHAPE(2, 3), 0, 1, 2, 3, 4, 5);
    OK(moe_transpose(&tr, a, 0, 1));
    ASSERT_SHAPE(tr, 2, 3, 2);
    ck_assert(!moe_tensor_is_contiguous(tr));
    ck_assert_ptr_eq(tr->storage, a->storage);
    ASSERT_VALUES(tr, 0, 0, 3, 1, 4, 2, 5);
    OK(moe_narrow(&n, a, 1, 1, 2));
    ASSERT_VALUES(n, 0, 1, 2, 4, 5);
    OK(moe_select(&s, a, 0, 1));
    ASSERT_SHAPE(s, 1, 3);
    ASSERT_VALUES(s, 0, 3, 4, 5);
    OK(moe_reshape(&r, a, 2, SHAPE(3, -1)));
    ASSERT_SHAPE(r, 2, 3, 2);
    ck_assert_ptr_eq(r->storage, a->storage);
    OK(moe_unsqueeze(&u, a, 1));
    ASSERT_SHAPE(u, 3, 2, 1, 3);
    OK(moe_squeeze(&q, u, 1));
    ASSERT_SHAPE(q, 2, 2, 3);
    int perm[3] = {2, 0, 1};
    OK(moe_permute(&p, u, perm));
    ASSERT_SHAPE(p, 3, 3, 2, 1);
    ASSERT_VALUES(p, 0, 0, 3, 1, 4, 2, 5);
    moe_tensor *row = T(MOE_F64, 2, SHAPE(1, 3), 7, 8, 9);
    OK(moe_expand(&e, row, 3, SHAPE(2, 2, 3)));
    ck_assert_int_eq(e->strides[0], 0);
    ck_assert_int_eq(e->strides[1], 0);
    ASSERT_VALUES(e, 0, 7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8, 9);
    /* writing through a view is seen by the base */
    OK(moe_tensor_fill_(n, -1));
    ASSERT_VALUES(a, 0, 0, -1, -1, 3, -1, -1);
    RELEASE(a, tr, n, s, r, u, q, e, p, row);
}
END_TEST

START_TEST(test_reshape_copies_when_needed)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 0, 1, 2, 3, 4, 5), *t, *r, *v, *c;
    OK(moe_transpose(&t, a, 0, 1));
    FAILS(moe_view(&v, t, 1, SHAPE(6)), MOE_ERR_SHAPE, "use reshape");
    OK(moe_reshape(&r, t, 1, SHAPE(6)));
    ck_assert_ptr_ne(r->storage, a->storage);
    ASSERT_VALUES(r, 0, 0, 3, 1, 4, 2, 5);
    OK(moe_contiguous(&c, t));
    ck_assert(moe_tensor_is_contiguous(c));
    ASSERT_VALUES(c, 0, 0, 3, 1, 4, 2, 5);
    FAILS(moe_reshape(&v, a, 2, SHAPE(4, -1)), MOE_ERR_SHAPE, "cannot reshape [2 3]");
    FAILS(moe_reshape(&v, a, 2, SHAPE(-1, -1)), MOE_ERR_SHAPE, "only one dim may be -1");
    RELEASE(a, t, r, c);
}
END_TEST

START_TEST(test_view_errors)
{
    moe_tensor *a = T(MOE_F32, 2, SHAPE(2, 3), 0, 1, 2, 3, 4, 5), *o = NULL;
    FAILS(moe_transpose(&o, a, 0, 2), MOE_ERR_INDEX, "dim 2 out of range for a 2-d tensor of shape [2 3]");
    FAILS(moe_narrow(&o, a, 1, 2, 2), MOE_ERR_INDEX, "range [2, 4) out of bounds for dim 1");
    FAILS(moe_select(&o, a, 0, 5), MOE_ERR_INDEX, "out of bounds");
    FAILS(moe_squeeze(&o, a, 0), MOE_ERR_SHAPE, "dim 0 of shape [2 3] is not 1");
    FAILS(moe_expand(&o, a, 2, SHAPE(4, 3)), MOE_ERR_SHAPE, "cannot expand [2 3] to [4 3]");
    int bad[2] = {0, 0};
    FAILS(moe_permute(&o, a, bad), MOE_ERR_ARG, "not a permutation");
    ck_assert_ptr_null(o);
    FAILS(moe_tensor_empty(&o, MOE_F32, MOE_CPU, 9, SHAPE(1, 1, 1, 1, 1, 1, 1, 1, 1)), MOE_ERR_SHAPE,
          "moelab supports 0 to 8");
    FAILS(moe_tensor_empty(&o, MOE_F32, MOE_CPU, 2, SHAPE(2, -3)), MOE_ERR_SHAPE, "negative size -3");
    FAILS(moe_tensor_empty(&o, MOE_F32, MOE_CUDA, 1, SHAPE(2)), MOE_ERR_DEVICE, "cuda");
    RELEASE(a);
}
END_TEST

START_TEST(test_copy_between_dtypes)
{
    moe_tensor *a = T(MOE_F64, 2, SHAPE(2, 2), 1.5, -2.25, 3.999, 1e6), *f, *b, *i, *back;
    OK(moe_to_dtype(&f, a, MOE_F32));
    ck_assert_int_eq(f->dtype, MOE_F32);
    ASSERT_VALUES(f, 1e-3, 1.5, -2.25, 3.999, 1e6);
    OK(moe_to_dtype(&b, a, MOE_BF16));
    ASSERT_VALUES(b, 0, 1.5, -2.25, 4.0, 999424); /* 1e6 → nearest bf16 */
    OK(moe_to_dtype(&i, a, MOE_I32));
    ASSERT_VALUES(i, 0, 1, -2, 3, 1000000); /* truncation toward zero */
    OK(moe_to_dtype(&back, b, MOE_F64));
    ASSERT_VALUES(back, 0, 1.5, -2.25, 4.0, 999424);
    /* copy_ broadcasts and converts */
    moe_tensor *dst, *row = T(MOE_I64, 1, SHAPE(2), 7, 8);
    OK(moe_tensor_zeros(&dst, MOE_F32, MOE_CPU, 2, SHAPE(3, 2)));
    OK(moe_tensor_copy_(dst, row));
    ASSERT_VALUES(dst, 0, 7, 8, 7, 8, 7, 8);
    FAILS(moe_tensor_copy_(row, dst), MOE_ERR_SHAPE, "does not broadcast");
    RELEASE(a, f, b, i, back, dst, row);
}
END_TEST

START_TEST(test_clone_is_independent)
{
    moe_tensor *a = T(MOE_F32, 1, SHAPE(3), 1, 2, 3), *c;
    OK(moe_clone(&c, a));
    OK(moe_tensor_fill_(a, 0));
    ASSERT_VALUES(c, 0, 1, 2, 3);
    RELEASE(a, c);
}
END_TEST

START_TEST(test_rng_reproducible)
{
    moe_rng r1, r2;
    moe_rng_init(&r1, 7);
    moe_rng_init(&r2, 7);
    moe_tensor *a, *b, *c, *d;
    int64_t n = 100000;
    omp_set_num_threads(1);
    OK(moe_tensor_randn(&a, &r1, MOE_F64, MOE_CPU, 1, &n));
    omp_set_num_threads(2);
    OK(moe_tensor_randn(&b, &r2, MOE_F64, MOE_CPU, 1, &n));
    ASSERT_CLOSE(a, b, 0); /* bit-identical whatever the thread count */
    /* the generator advanced: the next draw differs */
    OK(moe_tensor_randn(&c, &r1, MOE_F64, MOE_CPU, 1, &n));
    double x, y;
    OK(moe_tensor_get(a, SHAPE(0), &x));
    OK(moe_tensor_get(c, SHAPE(0), &y));
    ck_assert(x != y);
    /* moments of N(0,1) and U[0,1) */
    double *v = moe_tensor_data(a), m = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) m += v[i];
    m /= (double)n;
    for (int64_t i = 0; i < n; i++) s2 += (v[i] - m) * (v[i] - m);
    s2 /= (double)n;
    ck_assert_msg(fabs(m) < 0.02 && fabs(s2 - 1) < 0.03, "randn mean %g var %g", m, s2);
    OK(moe_tensor_rand(&d, &r1, MOE_F32, MOE_CPU, 1, &n));
    float *u = moe_tensor_data(d);
    double um = 0;
    for (int64_t i = 0; i < n; i++) {
        ck_assert(u[i] >= 0 && u[i] < 1);
        um += u[i];
    }
    ck_assert_msg(fabs(um / (double)n - 0.5) < 0.01, "rand mean %g", um / (double)n);
    RELEASE(a, b, c, d);
}
END_TEST

/* Counter 68036746 of stream 0 draws 0.99999998432769255, below 1 in double
 * but 1.0 once rounded to f32: rand must still stay below 1. */
START_TEST(test_rand_f32_below_one)
{
    moe_rng r;
    moe_rng_init(&r, 0);
    r.offset = 68036746;
    moe_tensor *t;
    int64_t n = 1;
    OK(moe_tensor_rand(&t, &r, MOE_F32, MOE_CPU, 1, &n));
    float u = *(float *)moe_tensor_data(t);
    ck_assert_msg(u < 1.0f && u > 0.9999f, "rand f32 drew %.9g", (double)u);
    RELEASE(t);
}
END_TEST

START_TEST(test_randint_permutation)
{
    moe_rng r;
    moe_rng_init(&r, 3);
    moe_tensor *a, *p;
    OK(moe_tensor_randint(&a, &r, MOE_I64, MOE_CPU, -2, 3, 1, SHAPE(1000)));
    int64_t *v = moe_tensor_data(a);
    int seen[5] = {0};
    for (int i = 0; i < 1000; i++) {
        ck_assert(v[i] >= -2 && v[i] < 3);
        seen[v[i] + 2] = 1;
    }
    for (int i = 0; i < 5; i++) ck_assert(seen[i]);
    OK(moe_tensor_permutation(&p, &r, MOE_CPU, 50));
    int64_t *q = moe_tensor_data(p);
    int hit[50] = {0};
    for (int i = 0; i < 50; i++) hit[q[i]]++;
    for (int i = 0; i < 50; i++) ck_assert_int_eq(hit[i], 1);
    moe_tensor *bad = NULL;
    FAILS(moe_tensor_randint(&bad, &r, MOE_I64, MOE_CPU, 3, 3, 1, SHAPE(2)), MOE_ERR_ARG, "empty range [3, 3)");
    FAILS(moe_tensor_randn(&bad, &r, MOE_I64, MOE_CPU, 1, SHAPE(2)), MOE_ERR_DTYPE, "floating dtype");
    FAILS(moe_tensor_permutation(&bad, &r, MOE_CPU, -1), MOE_ERR_ARG, "randperm: negative length -1");
    RELEASE(a, p);
}
END_TEST

/* The first CPU tensor sets glibc's mmap threshold to 32 MiB (storage.c's
 * tune_malloc): an 8 MiB block then comes from the heap, not a mapping of
 * its own. Untuned, glibc's threshold starts at 128 KiB and maps it (the
 * test runs in a fresh process, so nothing before it raised that). */
START_TEST(test_malloc_tuned_for_tensors)
{
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("GLIBC_TUNABLES") || getenv("MALLOC_TRIM_THRESHOLD_"))
        return; /* the process keeps its own settings */
    moe_tensor *t;
    OK(moe_tensor_zeros(&t, MOE_F32, MOE_CPU, 1, SHAPE(16)));
    struct mallinfo2 before = mallinfo2();
    void *p = malloc((size_t)8 << 20);
    ck_assert_ptr_nonnull(p);
    struct mallinfo2 during = mallinfo2();
    free(p);
    RELEASE(t);
    if (before.arena == 0 && during.arena == 0) return; /* a malloc without statistics (valgrind) */
    ck_assert_uint_eq(during.hblks, before.hblks);
#endif
}
END_TEST

START_TEST(test_memory_stats_no_leak)
{
    moe_memory_stats before, during, after;
    moe_memory_stats_get(MOE_CPU, &before);
    moe_tensor *a, *v;
    OK(moe_tensor_zeros(&a, MOE_F32, MOE_CPU, 1, SHAPE(1024)));
    OK(moe_narrow(&v, a, 0, 10, 10));
    moe_memory_stats_get(MOE_CPU, &during);
    ck_assert_int_eq(during.live_tensors - before.live_tensors, 2);
    ck_assert_int_eq(during.live_storages - before.live_storages, 1);
    ck_assert_int_eq(during.live_bytes - before.live_bytes, 4096);
    RELEASE(a, v);
    moe_memory_stats_get(MOE_CPU, &after);
    ck_assert_int_eq(after.live_tensors, before.live_tensors);
    ck_assert_int_eq(after.live_bytes, before.live_bytes);
}
END_TEST

START_TEST(test_inplace_refused_on_grad_tensor)
{
    moe_tensor *a = T(MOE_F32, 1, SHAPE(2), 1, 2);
    OK(moe_tensor_requires_grad_(a, true));
    FAILS(moe_tensor_fill_(a, 0), MOE_ERR_STATE, "requires grad");
    bool prev = moe_grad_set_enabled(false);
    OK(moe_tensor_fill_(a, 0)); /* allowed under no-grad (optimizer updates) */
    moe_grad_set_enabled(prev);
    ASSERT_VALUES(a, 0, 0, 0);
    moe_tensor *i = T(MOE_I64, 1, SHAPE(1), 1);
    FAILS(moe_tensor_requires_grad_(i, true), MOE_ERR_DTYPE, "only floating tensors");
    RELEASE(a, i);
}
END_TEST

START_TEST(test_error_messages)
{
    moe_clear_error();
    ck_assert_str_eq(moe_last_error(), "");
    moe_fail(MOE_ERR_SHAPE, "demo", "bad %d", 3);
    ck_assert_str_eq(moe_last_error(), "demo: bad 3");
    ck_assert_int_eq(moe_last_status(), MOE_ERR_SHAPE);
    ck_assert_str_eq(moe_status_name(MOE_ERR_INDEX), "index out of range");
    /* the one status → symbol table (the Scheme bindings raise these) */
    ck_assert_str_eq(moe_status_symbol_name(MOE_ERR_NOMEM), "nomem");
    ck_assert_str_eq(moe_status_symbol_name(MOE_STATUS_COUNT), "?");
    moe_status parsed = MOE_OK;
    ck_assert(moe_status_symbol_parse("unsupported", &parsed) && parsed == MOE_ERR_UNSUPPORTED);
    ck_assert(!moe_status_symbol_parse("shape error", &parsed) && parsed == MOE_ERR_UNSUPPORTED);
    ck_assert_str_eq(moe_dims_str(3, SHAPE(4, 0, 2)), "[4 0 2]");
    ck_assert_str_eq(moe_dims_str(0, NULL), "[]");
}
END_TEST

static Suite *tensor_suite(void)
{
    Suite *s = suite_create("tensor");
    TCase *c = tcase_create("create");
    tcase_add_test(c, test_zeros_ones_full);
    tcase_add_test(c, test_arange_eye);
    tcase_add_test(c, test_dtype_traits_and_bf16);
    tcase_add_test(c, test_from_data_get_set);
    tcase_add_test(c, test_wrap_borrows);
    suite_add_tcase(s, c);
    c = tcase_create("views");
    tcase_add_test(c, test_views_share_storage);
    tcase_add_test(c, test_reshape_copies_when_needed);
    tcase_add_test(c, test_view_errors);
    tcase_add_test(c, test_copy_between_dtypes);
    tcase_add_test(c, test_clone_is_independent);
    suite_add_tcase(s, c);
    c = tcase_create("rng");
    tcase_add_test(c, test_rng_reproducible);
    tcase_add_test(c, test_rand_f32_below_one);
    tcase_add_test(c, test_randint_permutation);
    suite_add_tcase(s, c);
    c = tcase_create("memory-errors");
    tcase_add_test(c, test_memory_stats_no_leak);
    tcase_add_test(c, test_malloc_tuned_for_tensors);
    tcase_add_test(c, test_inplace_refused_on_grad_tensor);
    tcase_add_test(c, test_error_messages);
    suite_add_tcase(s, c);
    return s;
}

int main(void) { return tu_run(tensor_suite()); }
