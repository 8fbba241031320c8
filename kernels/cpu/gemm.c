/* gemm.c — strided, batched, broadcast GEMM: f32 on moelab's own kernel
 * where the CPU has AVX-512 (sgemm.c), f64 and the rest on CBLAS (OpenBLAS
 * preferred).
 *
 * Dimension letters: M rows of A and C, K inner dim, N columns of B and C,
 * B batch (any number of batch dims, broadcast through zero strides). */
#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <omp.h>
#include <string.h>

#include "gemm.h"
#include "sgemm.h"

/* Can BLAS be called from inside our own OpenMP parallel region without
 * oversubscribing? The OpenMP (and the sequential) builds of OpenBLAS run
 * single-threaded there; the pthreads build would start its own pool. */
static bool blas_nests(void)
{
#ifdef OPENBLAS_VERSION
    return openblas_get_parallel() != 1;
#else
    return false;
#endif
}

/* ---- plain wrappers ----------------------------------------------------------- */

#define SPLIT_MIN_FLOPS 4.0e6 /* smaller products: one BLAS call, BLAS picks its threads */
#define SPLIT_ALIGN 32        /* block edges on whole micro-kernel tiles */

static void blas_s(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                   const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                   float *c, int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

static void blas_d(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,
                   const double *a, int64_t lda, const double *b, int64_t ldb, double beta,
                   double *c, int64_t ldc)
{
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)m, (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* How many blocks of C to hand to threads: 1 (one BLAS call) unless we are
 * outside a parallel region, BLAS nests, and the product is big enough that
 * every block keeps at least SPLIT_ALIGN rows (or columns).
 *
 * Why split at all: OpenBLAS's own threading pays little on the thin
 * products of a training step. Inside bench-train's step, its [2048 256]·
 * [256 256] products ran at 126–134 GFLOP/s on two Zen 4 cores; split by
 * rows, each core running single-threaded BLAS on its half, at 178–192.
 * Each element of C is still one BLAS sum over K, and the blocks depend
 * only on the thread count, so results stay deterministic. */
static int split_parts(int64_t m, int64_t n, int64_t k, bool *by_rows)
{
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt < 2 || 2.0 * (double)m * (double)n * (double)k < SPLIT_MIN_FLOPS || !blas_nests())
        return 1;
    *by_rows = m >= n;
    int64_t most = (*by_rows ? m : n) / SPLIT_ALIGN;
    return most < 2 ? 1 : (int)(most < nt ? most : nt);
}

/* Block P of PARTS along LEN: [*start, *start + *count), edges on SPLIT_ALIGN. */
static void split_block(int64_t len, int parts, int p, int64_t *start, int64_t *count)
{
    int64_t tiles = (len + SPLIT_ALIGN - 1) / SPLIT_ALIGN;
    int64_t s = tiles * p / parts * SPLIT_ALIGN, e = tiles * (p + 1) / parts * SPLIT_ALIGN;
    if (e > len) e = len;
    *start = s;
    *count = e > s ? e - s : 0;
}

/* The f32 and f64 wrappers from one template: C's rows (A's rows, its
 * columns when A is stored transposed) or C's columns (B's columns, its rows
 * when B is stored transposed) split over the threads. */
#define DEFINE_GEMM(LINKAGE, NAME, T, BLAS)                                                    \
    LINKAGE void NAME(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T *a,  \
                      int64_t lda, const T *b, int64_t ldb, T beta, T *c, int64_t ldc)         \
    {                                                                                          \
        bool by_rows = true;                                                                   \
        int parts = split_parts(m, n, k, &by_rows);                                            \
        if (parts == 1) {                                                                      \
            BLAS(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);                        \
            return;                                                                            \
        }                                                                                      \
        _Pragma("omp parallel for num_threads(parts) schedule(static, 1)")                     \
        for (int p = 0; p < parts; p++) {                                                      \
            int64_t s, len;                                                                    \
            split_block(by_rows ? m : n, parts, p, &s, &len);                                  \
            if (len == 0) continue;                                                            \
            if (by_rows)                                                                       \
                BLAS(ta, tb, len, n, k, alpha, ta ? a + s : a + s * lda, lda, b, ldb, beta,    \
                     c + s * ldc, ldc);                                                        \
            else                                                                               \
                BLAS(ta, tb, m, len, k, alpha, a, lda, tb ? b + s * ldb : b + s, ldb, beta,    \
                     c + s, ldc);                                                              \
        }                                                                                      \
    }

DEFINE_GEMM(static, blas_sgemm, float, blas_s)
DEFINE_GEMM(, moe_cpu_dgemm, double, blas_d)

/* MOELAB_SGEMM=blas: f32 products on BLAS even where the native kernel runs
 * (to compare the two). Read once; 1 native, 0 BLAS. */
static int use_native = -1;

static bool native_wanted(void)
{
    int u = __atomic_load_n(&use_native, __ATOMIC_RELAXED);
    if (u < 0) {
        const char *s = getenv("MOELAB_SGEMM");
        u = !(s && strcmp(s, "blas") == 0) && moe_cpu_sgemm_native_ok();
        __atomic_store_n(&use_native, u, __ATOMIC_RELAXED);
    }
    return u;
}

const char *moe_cpu_sgemm_kernel(void)
{
    return native_wanted() ? moe_cpu_sgemm_native_kernel() : "blas";
}

/* f32: our own kernel where the CPU has AVX-512 or AVX2 (sgemm.c says why),
 * else BLAS. */
void moe_cpu_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                   int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    if (native_wanted() &&
        moe_cpu_sgemm_native(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
        return;
    blas_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* ---- the batched product ------------------------------------------------------------ */

static void gemm_one(moe_dtype dtype, const moe_gemm_plan *p, double beta, const char *a,
                     const char *b, char *c)
{
    if (dtype == MOE_F32)
        moe_cpu_sgemm(p->la.trans, p->lb.trans, p->m, p->n, p->k, 1.0f, (const float *)a, p->la.ld,
                      (const float *)b, p->lb.ld, (float)beta, (float *)c, p->ldc);
    else
        moe_cpu_dgemm(p->la.trans, p->lb.trans, p->m, p->n, p->k, 1.0, (const double *)a, p->la.ld,
                      (const double *)b, p->lb.ld, beta, (double *)c, p->ldc);
}

/* Batch item I of plan P. */
static void gemm_item(moe_dtype dtype, const moe_gemm_plan *p, double beta, size_t esz, int64_t i)
{
    int64_t oa, ob, oc;
    moe_gemm_plan_offsets(p, p->nb, i, &oa, &ob, &oc);
    gemm_one(dtype, p, beta, (const char *)p->a.data + (size_t)oa * esz,
             (const char *)p->b.data + (size_t)ob * esz, (char *)p->c.data + (size_t)oc * esz);
}

moe_status moe_cpu_gemm(moe_dtype dtype, int nb, const int64_t *bshape, moe_gemm_mat a,
                        moe_gemm_mat b, moe_gemm_mat c, bool accumulate)
{
    if (dtype != MOE_F32 && dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, "gemm", "no CPU GEMM for %s", moe_dtype_name(dtype));
    moe_gemm_plan p;
    MOE_TRY(moe_gemm_plan_make(&p, nb, bshape, a, b, c, accumulate));
    if (p.empty) return MOE_OK;
    if (p.m > INT_MAX || p.n > INT_MAX || p.k > INT_MAX || p.la.ld > INT_MAX || p.lb.ld > INT_MAX ||
        p.ldc > INT_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, "gemm",
                        "[%lld %lld] @ [%lld %lld] exceeds the int sizes BLAS accepts", (long long)p.m,
                        (long long)p.k, (long long)p.k, (long long)p.n);
    size_t esz = moe_dtype_size(dtype);
    double beta = accumulate ? 1.0 : 0.0;

    if (p.k == 0) { /* empty inner dim: C = 0 (or unchanged when accumulating) */
        if (accumulate) return MOE_OK;
        for (int64_t i = 0; i < p.nbatch; i++) {
            int64_t oa, ob, oc;
            moe_gemm_plan_offsets(&p, p.nb, i, &oa, &ob, &oc);
            for (int64_t r = 0; r < p.m; r++)
                memset((char *)p.c.data + (size_t)(oc + r * p.ldc) * esz, 0, (size_t)p.n * esz);
        }
        return MOE_OK;
    }

    /* Independent outputs: run small products side by side, BLAS single-threaded
     * inside the region. Each product is computed the same way either way. */
    int threads = omp_get_max_threads();
    double flops = 2.0 * (double)p.m * (double)p.n * (double)p.k;
    bool par = !p.reduce && p.nbatch > 1 && threads > 1 && blas_nests() &&
               (p.nbatch >= threads || flops < 4.0e6);
    if (par) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < p.nbatch; i++) gemm_item(dtype, &p, beta, esz, i);
    } else {
        for (int64_t i = 0; i < p.nbatch; i++) /* in order: a reduction stays deterministic */
            gemm_item(dtype, &p, beta, esz, i);
    }
    return MOE_OK;
}

/* ---- bias rows ------------------------------------------------------------------------ */

#define SUM_BLOCK 64 /* columns per task: each task sweeps all rows in order */

#define DEFINE_FILL_ROWS(T, SUF)                                                        \
    static void fill_rows_##SUF(T *restrict c, int64_t rows, int64_t n,                  \
                                const T *restrict bias)                                  \
    {                                                                                     \
        _Pragma("omp parallel for if (rows * n > 32768) schedule(static)")                \
        for (int64_t r = 0; r < rows; r++) memcpy(c + r * n, bias, (size_t)n * sizeof(T)); \
    }

#define DEFINE_SUM_ROWS(NAME, T, S)                                                       \
    /* OUT [N] = sum over the rows of G [R N] of S (T or double), each column in row \
     * order in double: the one deterministic column sum (linear's bias, the fused   \
     * expert MLP's biases, nn's chunked parameter gradients). */                    \
    static void NAME(T *restrict out, const S *restrict g, int64_t rows, int64_t n)    \
    {                                                                                     \
        int64_t nblocks = (n + SUM_BLOCK - 1) / SUM_BLOCK;                               \
        _Pragma("omp parallel for if (rows * n > 32768) schedule(static)")                \
        for (int64_t blk = 0; blk < nblocks; blk++) {                                     \
            int64_t j0 = blk * SUM_BLOCK, w = n - j0 < SUM_BLOCK ? n - j0 : SUM_BLOCK;    \
            double acc[SUM_BLOCK] = {0};                                                  \
            for (int64_t r = 0; r < rows; r++) {                                          \
                const S *row = g + r * n + j0;                                            \
                for (int64_t j = 0; j < w; j++) acc[j] += row[j];                         \
            }                                                                             \
            for (int64_t j = 0; j < w; j++) out[j0 + j] = (T)acc[j];                      \
        }                                                                                 \
    }

DEFINE_FILL_ROWS(float, f32)
DEFINE_FILL_ROWS(double, f64)
DEFINE_SUM_ROWS(sum_rows_f32, float, float)
DEFINE_SUM_ROWS(sum_rows_f64, double, double)
DEFINE_SUM_ROWS(sum_f64_rows_f32, float, double)

void moe_cpu_fill_rows(moe_dtype dtype, void *c, int64_t rows, int64_t n, const void *bias)
{
    if (dtype == MOE_F32)
        fill_rows_f32(c, rows, n, bias);
    else
        fill_rows_f64(c, rows, n, bias);
}

void moe_cpu_sum_rows(moe_dtype dtype, void *out, const void *g, int64_t rows, int64_t n)
{
    if (dtype == MOE_F32)
        sum_rows_f32(out, g, rows, n);
    else
        sum_rows_f64(out, g, rows, n);
}

void moe_cpu_sum_f64_rows(moe_dtype dtype, void *out, const double *p, int64_t rows, int64_t n)
{
    if (dtype == MOE_F32)
        sum_f64_rows_f32(out, p, rows, n);
    else
        sum_rows_f64(out, p, rows, n);
}
