/* gemm.c — strided, batched, broadcast GEMM on CBLAS (OpenBLAS preferred).
 *
 * Dimension letters: M rows of A and C, K inner dim, N columns of B and C,
 * B batch (any number of batch dims, broadcast through zero strides). */
#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <string.h>

#include "gemm.h"

static inline int64_t max1(int64_t v) { return v > 1 ? v : 1; }

/* ---- plain wrappers ----------------------------------------------------------- */

void moe_cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                   int64_t ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda, b,
                (int)ldb, beta, c, (int)ldc);
}

void moe_cpu_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double *a, int64_t lda, const double *b, int64_t ldb, double beta,
                   double *c, int64_t ldc)
{
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha, a, (int)lda, b,
                (int)ldb, beta, c, (int)ldc);
}

/* ---- operand layouts ------------------------------------------------------------ */

/* How BLAS reads an operand: the stored matrix is row-major with leading
 * dimension LD, transposed or not. Strides of size-1 dims are never used, so
 * they do not constrain the layout. */
typedef struct layout {
    bool trans;
    int64_t ld;
} layout;

static bool mat_layout(const moe_cpu_mat *m, layout *l)
{
    int64_t r = m->rows, c = m->cols;
    if ((c <= 1 || m->cs == 1) && (r <= 1 || m->rs >= max1(c))) {
        l->trans = false;
        l->ld = r <= 1 ? max1(c) : m->rs;
        return true;
    }
    if ((r <= 1 || m->rs == 1) && (c <= 1 || m->cs >= max1(r))) {
        l->trans = true;
        l->ld = c <= 1 ? max1(r) : m->cs;
        return true;
    }
    return false;
}

bool moe_cpu_mat_blas_ok(const moe_cpu_mat *m)
{
    layout l;
    return mat_layout(m, &l);
}

/* The result must be row-major: BLAS writes C[i][j] at i*ldc + j. */
static bool out_layout(const moe_cpu_mat *c, int64_t *ldc)
{
    if (!(c->cols <= 1 || c->cs == 1)) return false;
    if (c->rows <= 1) {
        *ldc = max1(c->cols);
        return true;
    }
    *ldc = c->rs;
    return c->rs >= max1(c->cols);
}

/* ---- folding batch dims into M or K ----------------------------------------------- */

/* Merge a batch dim of N items at stride S (outside the rows) into the rows. */
static bool fold_rows(moe_cpu_mat *m, int64_t n, int64_t s)
{
    if (m->rows == 1)
        m->rs = s;
    else if (s != m->rows * m->rs)
        return false;
    m->rows *= n;
    return true;
}

static bool fold_cols(moe_cpu_mat *m, int64_t n, int64_t s)
{
    if (m->cols == 1)
        m->cs = s;
    else if (s != m->cols * m->cs)
        return false;
    m->cols *= n;
    return true;
}

/* Try to absorb batch dim D (the innermost left) into M (B is shared across
 * it) or into K (C is shared across it: a reduction). */
static bool try_fold(moe_cpu_mat *a, moe_cpu_mat *b, moe_cpu_mat *c, int d, int64_t n,
                     bool accumulate)
{
    layout la, lb;
    int64_t ldc;
    if (b->bstride[d] == 0) {
        moe_cpu_mat a2 = *a, c2 = *c;
        if (fold_rows(&a2, n, a->bstride[d]) && fold_rows(&c2, n, c->bstride[d]) &&
            mat_layout(&a2, &la) && out_layout(&c2, &ldc)) {
            *a = a2;
            *c = c2;
            return true;
        }
    }
    if (c->bstride[d] == 0 && accumulate) {
        moe_cpu_mat a2 = *a, b2 = *b;
        if (fold_cols(&a2, n, a->bstride[d]) && fold_rows(&b2, n, b->bstride[d]) &&
            mat_layout(&a2, &la) && mat_layout(&b2, &lb)) {
            *a = a2;
            *b = b2;
            return true;
        }
    }
    return false;
}

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

/* ---- the batched product ------------------------------------------------------------ */

typedef struct plan {
    moe_dtype dtype;
    layout la, lb;
    int64_t ldc, m, n, k;
    double beta;
} plan;

static void gemm_one(const plan *p, const char *a, const char *b, char *c)
{
    if (p->dtype == MOE_F32)
        moe_cpu_sgemm(p->la.trans, p->lb.trans, p->m, p->n, p->k, 1.0f, (const float *)a, p->la.ld,
                      (const float *)b, p->lb.ld, (float)p->beta, (float *)c, p->ldc);
    else
        moe_cpu_dgemm(p->la.trans, p->lb.trans, p->m, p->n, p->k, 1.0, (const double *)a, p->la.ld,
                      (const double *)b, p->lb.ld, p->beta, (double *)c, p->ldc);
}

/* Element offsets of batch item I in each operand. */
static void batch_offsets(int nb, const int64_t *shape, const moe_cpu_mat *a, const moe_cpu_mat *b,
                          const moe_cpu_mat *c, int64_t i, int64_t *oa, int64_t *ob, int64_t *oc)
{
    *oa = *ob = *oc = 0;
    for (int d = nb - 1; d >= 0; d--) {
        int64_t idx = i % shape[d];
        i /= shape[d];
        *oa += idx * a->bstride[d];
        *ob += idx * b->bstride[d];
        *oc += idx * c->bstride[d];
    }
}

moe_status moe_cpu_gemm(moe_dtype dtype, int nb, const int64_t *bshape, moe_cpu_mat a,
                        moe_cpu_mat b, moe_cpu_mat c, bool accumulate)
{
    if (dtype != MOE_F32 && dtype != MOE_F64)
        return moe_fail(MOE_ERR_DTYPE, "gemm", "no CPU GEMM for %s", moe_dtype_name(dtype));
    if (a.cols != b.rows || a.rows != c.rows || b.cols != c.cols)
        return moe_fail(MOE_ERR_SHAPE, "gemm", "operands do not fit: [%lld %lld] @ [%lld %lld] -> [%lld %lld]",
                        (long long)a.rows, (long long)a.cols, (long long)b.rows,
                        (long long)b.cols, (long long)c.rows, (long long)c.cols);
    /* Batch dims of size 1 do nothing; an empty batch leaves C as it is. */
    int64_t shape[MOE_MAX_DIMS];
    int n = 0;
    for (int d = 0; d < nb; d++) {
        if (bshape[d] == 0) return MOE_OK;
        if (bshape[d] == 1) continue;
        shape[n] = bshape[d];
        a.bstride[n] = a.bstride[d];
        b.bstride[n] = b.bstride[d];
        c.bstride[n] = c.bstride[d];
        n++;
    }
    if (c.rows == 0 || c.cols == 0) return MOE_OK;
    while (n > 0 && try_fold(&a, &b, &c, n - 1, shape[n - 1], accumulate)) n--;

    plan p = {.dtype = dtype, .m = a.rows, .n = b.cols, .k = a.cols, .beta = accumulate ? 1.0 : 0.0};
    if (!mat_layout(&a, &p.la) || !mat_layout(&b, &p.lb) || !out_layout(&c, &p.ldc))
        return moe_fail(MOE_ERR_ARG, "gemm", "an operand's strides are not BLAS-compatible");
    if (p.m > INT_MAX || p.n > INT_MAX || p.k > INT_MAX || p.la.ld > INT_MAX || p.lb.ld > INT_MAX ||
        p.ldc > INT_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, "gemm",
                        "[%lld %lld] @ [%lld %lld] exceeds the int sizes BLAS accepts", (long long)p.m,
                        (long long)p.k, (long long)p.k, (long long)p.n);

    size_t esz = moe_dtype_size(dtype);
    int64_t nbatch = 1;
    bool reduce = false;
    for (int d = 0; d < n; d++) {
        nbatch *= shape[d];
        if (c.bstride[d] == 0) reduce = true;
    }

    if (p.k == 0) { /* empty inner dim: C = 0 (or unchanged when accumulating) */
        if (accumulate) return MOE_OK;
        for (int64_t i = 0; i < nbatch; i++) {
            int64_t oa, ob, oc;
            batch_offsets(n, shape, &a, &b, &c, i, &oa, &ob, &oc);
            for (int64_t r = 0; r < p.m; r++)
                memset((char *)c.data + (size_t)(oc + r * p.ldc) * esz, 0, (size_t)p.n * esz);
        }
        return MOE_OK;
    }

    /* Independent outputs: run small products side by side, BLAS single-threaded
     * inside the region. Each product is computed the same way either way. */
    int threads = omp_get_max_threads();
    double flops = 2.0 * (double)p.m * (double)p.n * (double)p.k;
    bool par = !reduce && nbatch > 1 && threads > 1 && blas_nests() &&
               (nbatch >= threads || flops < 4.0e6);
    if (par) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nbatch; i++) {
            int64_t oa, ob, oc;
            batch_offsets(n, shape, &a, &b, &c, i, &oa, &ob, &oc);
            gemm_one(&p, (const char *)a.data + (size_t)oa * esz,
                     (const char *)b.data + (size_t)ob * esz, (char *)c.data + (size_t)oc * esz);
        }
    } else {
        for (int64_t i = 0; i < nbatch; i++) { /* in order: a reduction stays deterministic */
            int64_t oa, ob, oc;
            batch_offsets(n, shape, &a, &b, &c, i, &oa, &ob, &oc);
            gemm_one(&p, (const char *)a.data + (size_t)oa * esz,
                     (const char *)b.data + (size_t)ob * esz, (char *)c.data + (size_t)oc * esz);
        }
    }
    return MOE_OK;
}

/* ---- bias rows ------------------------------------------------------------------------ */

#define SUM_BLOCK 64 /* columns per task: each task sweeps all rows in order */

#define DEFINE_ROW_KERNELS(T, SUF)                                                        \
    static void fill_rows_##SUF(T *restrict c, int64_t rows, int64_t n,                  \
                                const T *restrict bias)                                  \
    {                                                                                     \
        _Pragma("omp parallel for if (rows * n > 32768) schedule(static)")                \
        for (int64_t r = 0; r < rows; r++) memcpy(c + r * n, bias, (size_t)n * sizeof(T)); \
    }                                                                                     \
    static void sum_rows_##SUF(T *restrict out, const T *restrict g, int64_t rows,       \
                               int64_t n)                                                 \
    {                                                                                     \
        int64_t nblocks = (n + SUM_BLOCK - 1) / SUM_BLOCK;                               \
        _Pragma("omp parallel for if (rows * n > 32768) schedule(static)")                \
        for (int64_t blk = 0; blk < nblocks; blk++) {                                     \
            int64_t j0 = blk * SUM_BLOCK, w = n - j0 < SUM_BLOCK ? n - j0 : SUM_BLOCK;    \
            double acc[SUM_BLOCK] = {0};                                                  \
            for (int64_t r = 0; r < rows; r++) {                                          \
                const T *row = g + r * n + j0;                                            \
                for (int64_t j = 0; j < w; j++) acc[j] += row[j];                         \
            }                                                                             \
            for (int64_t j = 0; j < w; j++) out[j0 + j] = (T)acc[j];                      \
        }                                                                                 \
    }

DEFINE_ROW_KERNELS(float, f32)
DEFINE_ROW_KERNELS(double, f64)

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
