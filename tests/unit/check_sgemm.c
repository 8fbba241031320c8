/* check_sgemm.c — moelab's own f32 GEMM (kernels/cpu/sgemm.c): values
 * against an f64 reference for every transpose, edge and block size, BLAS's
 * alpha/beta rules, the same bits on any number of threads, and the same
 * bits from either kernel and with op(B) packed ahead. Every test runs on each kernel the CPU has
 * (AVX-512 and AVX2, or AVX2 alone; valgrind hides AVX-512).
 *
 * Where the CPU gives no kernel, the program says so and exits 77
 * (skipped). */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#include "../../kernels/cpu/gemm.h"
#include "../../kernels/cpu/sgemm.h"
#include "testutil.h"

/* Deterministic values in [-1, 1) (the library's counter-based draws). */
static float *filled(int64_t n, uint64_t seed)
{
    float *p = malloc(sizeof *p * (size_t)(n > 0 ? n : 1));
    ck_assert_ptr_nonnull(p);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(2.0 * moe_rng_uniform(seed, (uint64_t)i) - 1.0);
    return p;
}

/* One product: operands stored as TA/TB say, with leading dims PAD wider
 * than they need to be; C starts as NaN when beta is 0 (it must not be
 * read), else as values. Checked element by element against the f64
 * product within 4·k·ε of Σ|alpha a b| + |beta c|. */
static void check_one(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, float beta)
{
    const int64_t pad = 3;
    int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    float *a = filled((ta ? k : m) * lda, 1 + m), *b = filled((tb ? n : k) * ldb, 2 + n);
    float *c = filled(m * ldc, 3 + k), *c0 = malloc(sizeof *c0 * (size_t)(m * ldc + 1));
    ck_assert_ptr_nonnull(c0);
    if (beta == 0.0f)
        for (int64_t i = 0; i < m * ldc; i++) c[i] = NAN;
    memcpy(c0, c, sizeof *c * (size_t)(m * ldc));
    ck_assert(moe_cpu_sgemm_native(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double ref = 0, mag = 0;
            for (int64_t p = 0; p < k; p++) {
                double x = ta ? a[p * lda + i] : a[i * lda + p];
                double y = tb ? b[j * ldb + p] : b[p * ldb + j];
                ref += x * y;
                mag += fabs(x * y);
            }
            ref *= alpha;
            mag *= fabs(alpha);
            if (beta != 0.0f) {
                ref += (double)beta * c0[i * ldc + j];
                mag += fabs((double)beta * c0[i * ldc + j]);
            }
            double got = c[i * ldc + j], tol = 4.0 * (double)(k + 2) * FLT_EPSILON * mag + 1e-30;
            if (!(fabs(got - ref) <= tol))
                ck_abort_msg("%c%c m %lld n %lld k %lld alpha %g beta %g: C[%lld][%lld] = %.9g, "
                             "f64 %.9g",
                             ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)m, (long long)n,
                             (long long)k, alpha, beta, (long long)i, (long long)j, got, ref);
        }
        for (int64_t j = n; j < ldc; j++) /* the padding of C is left alone */
            ck_assert(memcmp(&c[i * ldc + j], &c0[i * ldc + j], sizeof *c) == 0);
    }
    free(a);
    free(b);
    free(c);
    free(c0);
}

/* Shapes around the micro-tiles (12 x 32 and 6 x 16), the inner block
 * (256), a unit of rows (48), the inner run packed at a time (4096), the
 * column run that keeps the packed block within its cap, few rows with a
 * long inner dim (a weight's gradient: with A stored transposed, read
 * direct), a direct product small enough to be read in place (attention's,
 * 32 x 64 over 256 keys) and rows of A a multiple of 4 KiB long (copied
 * first); the larger ones go over the team. */
static const int64_t shapes[][3] = {
    {1, 1, 1},      {11, 31, 7},    {12, 32, 256},   {13, 33, 257},  {47, 64, 48},
    {49, 70, 600},  {100, 65, 513}, {37, 300, 4500}, {250, 40, 130}, {3, 200, 700},
    {29, 40, 1024}, {5, 15, 9},     {6, 16, 256},    {7, 17, 255},   {17, 8, 1030},
    {32, 64, 256},
};

START_TEST(test_values_every_transpose)
{
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int t = 0; t < 4; t++)
            check_one(t & 2, t & 1, shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, 0.0f);
}
END_TEST

START_TEST(test_alpha_beta)
{
    const float ab[][2] = {{0.5f, 0.0f}, {1.0f, 1.0f}, {-2.0f, 0.25f}, {1.0f, -1.0f}};
    for (size_t i = 0; i < sizeof ab / sizeof ab[0]; i++)
        for (int t = 0; t < 4; t++) {
            check_one(t & 2, t & 1, 13, 33, 257, ab[i][0], ab[i][1]);
            check_one(t & 2, t & 1, 100, 65, 513, ab[i][0], ab[i][1]);
            check_one(t & 2, t & 1, 30, 40, 2100, ab[i][0], ab[i][1]); /* many inner blocks */
            check_one(t & 2, t & 1, 32, 48, 200, ab[i][0], ab[i][1]); /* direct: in place */
        }
}
END_TEST

/* K = 0 or alpha = 0: C = beta C, A and B not read (here NaN); beta 0
 * clears C even where it held NaN. */
START_TEST(test_empty_inner_and_zero_alpha)
{
    float a[6], b[6], c[6];
    for (int i = 0; i < 6; i++) a[i] = b[i] = NAN;
    for (int i = 0; i < 6; i++) c[i] = (float)i;
    ck_assert(moe_cpu_sgemm_native(false, false, 2, 3, 0, 1.0f, a, 1, b, 3, 0.5f, c, 3));
    for (int i = 0; i < 6; i++) ck_assert_float_eq(c[i], 0.5f * (float)i);
    ck_assert(moe_cpu_sgemm_native(false, false, 2, 3, 2, 0.0f, a, 2, b, 3, 2.0f, c, 3));
    for (int i = 0; i < 6; i++) ck_assert_float_eq(c[i], (float)i);
    for (int i = 0; i < 6; i++) c[i] = NAN;
    ck_assert(moe_cpu_sgemm_native(true, true, 2, 3, 0, 1.0f, a, 2, b, 1, 0.0f, c, 3));
    for (int i = 0; i < 6; i++) ck_assert_float_eq(c[i], 0.0f);
    ck_assert(moe_cpu_sgemm_native(false, false, 0, 3, 2, 1.0f, a, 2, b, 3, 0.0f, c, 3)); /* no rows */
}
END_TEST

/* The product on 1, 2 and 3 threads, and on one thread inside a parallel
 * region (the per-expert schedule), has the same bits; moe_cpu_sgemm, the
 * dispatcher, runs this kernel. Shapes: many rows, few rows (the team also
 * cuts the panels), more than one packed inner run; under valgrind (about
 * 50 times slower) smaller ones that still go over the team. */
START_TEST(test_same_bits_any_threads)
{
    static const int64_t full[][3] = {{2048, 256, 256}, {40, 256, 2048}, {300, 96, 5000}};
    static const int64_t small[][3] = {{400, 64, 256}, {20, 96, 1100}, {30, 40, 4200}};
    _Static_assert(sizeof small == sizeof full, "as many small shapes as full ones");
    const int64_t(*big)[3] = RUNNING_ON_VALGRIND ? small : full;
    int saved = omp_get_max_threads();
    for (size_t s = 0; s < sizeof full / sizeof full[0]; s++)
        for (int t = 0; t < 4; t++) {
            bool ta = t & 2, tb = t & 1;
            int64_t m = big[s][0], n = big[s][1], k = big[s][2];
            int64_t lda = ta ? m : k, ldb = tb ? k : n;
            float *a = filled(m * k, 7), *b = filled(k * n, 8);
            float *want = filled(m * n, 9), *got = malloc(sizeof *got * (size_t)(m * n));
            ck_assert_ptr_nonnull(got);
            omp_set_num_threads(1);
            ck_assert(moe_cpu_sgemm_native(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, want, n));
            for (int nt = 2; nt <= 4; nt++) {
                memset(got, 0xff, sizeof *got * (size_t)(m * n));
                if (nt <= 3) {
                    omp_set_num_threads(nt);
                    moe_cpu_sgemm(ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, got, n);
                } else {
                    omp_set_num_threads(2);
#pragma omp parallel num_threads(2)
                    if (omp_get_thread_num() == 1)
                        ck_assert(moe_cpu_sgemm_native(ta, tb, m, n, k, 1.0f, a, lda, b, ldb,
                                                       0.0f, got, n));
                }
                if (memcmp(want, got, sizeof *got * (size_t)(m * n)) != 0)
                    ck_abort_msg("%c%c m %lld n %lld k %lld: %s differs from 1 thread",
                                 ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)m, (long long)n,
                                 (long long)k, nt <= 3 ? "a team" : "inside a region");
            }
            free(a);
            free(b);
            free(want);
            free(got);
        }
    omp_set_num_threads(saved);
}
END_TEST

/* The AVX-512 and AVX2 kernels give the same bits (each element of C the
 * same chain of FMAs over each inner block, in the same order), packed and
 * direct, with edges in every direction and more than one inner block.
 * Skipped on a CPU without AVX-512. */
START_TEST(test_kernels_agree)
{
    const char *was = moe_cpu_sgemm_native_kernel();
    if (!moe_cpu_sgemm_native_select("avx512")) {
        printf("check_sgemm: kernels agree: skipped: no AVX-512 here\n");
        return;
    }
    static const int64_t sh[][3] = {{2048, 256, 256}, {41, 77, 600}, {300, 96, 5000}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
        for (int t = 0; t < 4; t++) {
            bool ta = t & 2, tb = t & 1;
            int64_t m = sh[s][0], n = sh[s][1], k = sh[s][2];
            int64_t lda = ta ? m : k, ldb = tb ? k : n;
            float *a = filled(m * k, 17), *b = filled(k * n, 18);
            float *c512 = filled(m * n, 19), *c2 = malloc(sizeof *c2 * (size_t)(m * n));
            ck_assert_ptr_nonnull(c2);
            memcpy(c2, c512, sizeof *c2 * (size_t)(m * n));
            ck_assert(moe_cpu_sgemm_native_select("avx512"));
            ck_assert(moe_cpu_sgemm_native(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c512, n));
            ck_assert(moe_cpu_sgemm_native_select("avx2"));
            ck_assert(moe_cpu_sgemm_native(ta, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, c2, n));
            if (memcmp(c512, c2, sizeof *c2 * (size_t)(m * n)) != 0)
                ck_abort_msg("%c%c m %lld n %lld k %lld: the AVX2 kernel's bits differ",
                             ta ? 'T' : 'N', tb ? 'T' : 'N', (long long)m, (long long)n,
                             (long long)k);
            free(a);
            free(b);
            free(c512);
            free(c2);
        }
    ck_assert(moe_cpu_sgemm_native_select(was));
}
END_TEST

/* op(B) packed ahead (moe_cpu_sgemm_pack), then multiplied: the bits of
 * the product packing it itself, for B stored either way, with edges,
 * more than one inner run and more than one column run (37 x 300 over
 * 4500); the packing stays within moe_cpu_sgemm_pack_floats. */
START_TEST(test_packed_b)
{
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int tb = 0; tb < 2; tb++) {
            int64_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
            int64_t lda = k + 1, ldb = (tb ? k : n) + 2, ldc = n + 3;
            size_t floats = moe_cpu_sgemm_pack_floats(k, n);
            ck_assert_uint_ge(floats, (size_t)(k * n));
            float *a = filled(m * lda, 21), *b = filled((tb ? n : k) * ldb, 22);
            float *want = filled(m * ldc, 23), *got = malloc(sizeof *got * (size_t)(m * ldc));
            float *mem = aligned_alloc(64, (floats + 16) * sizeof *mem);
            ck_assert(got && mem);
            memcpy(got, want, sizeof *got * (size_t)(m * ldc));
            for (int i = 0; i < 16; i++) mem[floats + i] = -7.0f;
            moe_cpu_sgemm_packed pb;
            ck_assert(moe_cpu_sgemm_pack(&pb, tb, k, n, b, ldb, mem));
            for (int i = 0; i < 16; i++) ck_assert(mem[floats + i] == -7.0f);
            moe_cpu_sgemm_packed_product(&pb, m, 0.5f, a, lda, 0.25f, got, ldc);
            ck_assert(moe_cpu_sgemm_native(false, tb, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, want,
                                           ldc));
            if (memcmp(want, got, sizeof *got * (size_t)(m * ldc)) != 0)
                ck_abort_msg("N%c m %lld n %lld k %lld: packed ahead, the bits differ",
                             tb ? 'T' : 'N', (long long)m, (long long)n, (long long)k);
            free(a);
            free(b);
            free(want);
            free(got);
            free(mem);
        }
    omp_set_num_threads(saved);
}
END_TEST

/* Selecting a kernel the CPU lacks, or one that does not exist, fails and
 * changes nothing. */
START_TEST(test_select)
{
    const char *was = moe_cpu_sgemm_native_kernel();
    ck_assert(!moe_cpu_sgemm_native_select("avx1024"));
    ck_assert(!moe_cpu_sgemm_native_select(NULL));
    ck_assert_str_eq(moe_cpu_sgemm_native_kernel(), was);
    ck_assert(moe_cpu_sgemm_native_select("avx2")); /* every CPU with a kernel has AVX2 */
    ck_assert_str_eq(moe_cpu_sgemm_native_kernel(), "avx2");
    ck_assert(moe_cpu_sgemm_native_select(was));
}
END_TEST

int main(void)
{
    if (!moe_cpu_sgemm_native_ok()) {
        printf("check_sgemm: skipped: this CPU has neither AVX-512 nor AVX2 with FMA; "
               "moe_cpu_sgemm uses BLAS\n");
        return 77;
    }
    const char *first = moe_cpu_sgemm_native_kernel();
    int rc = EXIT_SUCCESS;
    for (int pass = 0; pass < 2; pass++) {
        /* the CPU's own kernel, then AVX2 where that was AVX-512 */
        const char *name = pass == 0 ? first : "avx2";
        if (pass == 1 && strcmp(first, "avx2") == 0) break;
        if (!moe_cpu_sgemm_native_select(name)) {
            printf("check_sgemm: cannot select the %s kernel\n", name);
            return EXIT_FAILURE;
        }
        printf("check_sgemm: the %s kernel\n", name);
        Suite *s = suite_create(name);
        TCase *tc = tcase_create("values");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_values_every_transpose);
        tcase_add_test(tc, test_alpha_beta);
        tcase_add_test(tc, test_empty_inner_and_zero_alpha);
        tcase_add_test(tc, test_packed_b);
        suite_add_tcase(s, tc);
        tc = tcase_create("threads"); /* large products */
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_same_bits_any_threads);
        if (pass == 0) {
            tcase_add_test(tc, test_kernels_agree);
            tcase_add_test(tc, test_select);
        }
        suite_add_tcase(s, tc);
        if (tu_run(s) != EXIT_SUCCESS) rc = EXIT_FAILURE;
    }
    return rc;
}
