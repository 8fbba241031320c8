/* sgemm_avx512.c — sgemm.c's kernel for CPUs with AVX-512: a micro-tile of
 * 12 rows by 32 columns (two zmm), its 24 accumulators in registers.
 *
 * A is read where it lies: the micro-kernel broadcasts A's elements from
 * MR rows, fetching the next MR rows as it goes; C is written once per
 * block of KC inner indices. */
#include "sgemm_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "transpose16.h"

#define TARGET __attribute__((target("avx512f,avx2,fma")))

#define MR 12           /* rows of the micro-tile: 12 x 2 accumulators, 2 B vectors */
#define NR 32           /* columns of the micro-tile and of a packed panel: two zmm */
#define TILE_ROWS (4 * MR) /* rows of a unit of work */

/* Panel P of the current block: columns j0 + P·NR onward (zeros past nc),
 * inner indices [k0, k0 + ks), into the pack buffer as [ks NR]. */
TARGET static void pack_panel(const sgemm_job *jb, int64_t p)
{
    float *restrict dst = jb->pack + p * jb->ks * NR;
    int64_t col = jb->j0 + p * NR, w = min64(NR, jb->nc - p * NR), k0 = jb->k0, ks = jb->ks;
    if (!jb->tb) { /* op(B)(q, j) = b[q*ldb + j]: whole rows of the panel */
        __mmask16 m0 = first_lanes(w), m1 = first_lanes(w - 16);
        for (int64_t q = 0; q < ks; q++) {
            const float *row = jb->b + (k0 + q) * jb->ldb + col;
            _mm512_store_ps(dst + q * NR, _mm512_maskz_loadu_ps(m0, row));
            _mm512_store_ps(dst + q * NR + 16, _mm512_maskz_loadu_ps(m1, row + 16));
        }
    } else { /* op(B)(q, j) = b[j*ldb + q]: B's rows become the panel's columns, */
        for (int64_t h = 0; h < NR / 16; h++) { /* 16 by 16 */
            int64_t rows = w - h * 16 < 0 ? 0 : min64(16, w - h * 16);
            for (int64_t q = 0; q < ks; q += 16) {
                int64_t n = min64(16, ks - q);
                __mmask16 km = first_lanes(n);
                __m512 r[16];
                for (int64_t j = 0; j < 16; j++)
                    r[j] = j < rows ? _mm512_maskz_loadu_ps(
                                          km, jb->b + (col + h * 16 + j) * jb->ldb + k0 + q)
                                    : _mm512_setzero_ps();
                transpose16(r);
                for (int64_t t = 0; t < n; t++) _mm512_store_ps(dst + (q + t) * NR + h * 16, r[t]);
            }
        }
    }
}

/* Ask for C's MR_ x NR block, for writing, as a micro-tile starts: by the
 * time the tile is written, the lines are there (with beta 0, the first
 * write would otherwise wait on them). */
static inline __attribute__((always_inline)) TARGET void fetch_c(int mr_, float *c, int64_t ldc)
{
#pragma GCC unroll 16
    for (int i = 0; i < mr_; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_ET0);
        _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_ET0);
    }
}

/* C's MR_ x nr block (accumulators LO, HI: columns 0-15, 16-31) into C:
 * C = alpha·acc + beta·C on the product's first inner block (FIRST; beta
 * 0: C is not read), C += alpha·acc on later blocks. */
static inline __attribute__((always_inline)) TARGET void
update_c(int mr_, const __m512 *lo, const __m512 *hi, float *c, int64_t ldc, int nr, float alpha,
         float beta, bool first)
{
    __mmask16 m0 = first_lanes(nr), m1 = first_lanes(nr - 16);
    __m512 va = _mm512_set1_ps(alpha);
    bool overwrite = first && beta == 0.0f;
    __m512 vs = _mm512_set1_ps(first ? beta : 1.0f);
#pragma GCC unroll 16
    for (int i = 0; i < mr_; i++) {
        float *ci = c + i * ldc;
        __m512 r0, r1;
        if (overwrite) {
            r0 = _mm512_mul_ps(va, lo[i]);
            r1 = _mm512_mul_ps(va, hi[i]);
        } else {
            r0 = _mm512_fmadd_ps(va, lo[i], _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m0, ci)));
            r1 = _mm512_fmadd_ps(va, hi[i], _mm512_mul_ps(vs, _mm512_maskz_loadu_ps(m1, ci + 16)));
        }
        _mm512_mask_storeu_ps(ci, m0, r0);
        _mm512_mask_storeu_ps(ci + 16, m1, r1);
    }
}

/* C's MR_ x nr block at C += or = alpha · A's MR_ rows [kc] · the panel
 * block BP [kc NR] (see update_c). MR_ is a constant at every call, so the
 * accumulators stay in registers. One cache line a step is fetched from
 * PF, MR rows at stride PFRS, 16 floats further every MR steps (the next
 * rows of A). */
static inline __attribute__((always_inline)) TARGET void
micro_tile(int mr_, int64_t kc, const float *a, int64_t rsa, int64_t csa, const float *bp,
           float *c, int64_t ldc, int nr, float alpha, float beta, bool first, const float *pf,
           int64_t pfrs)
{
    __m512 lo[MR], hi[MR];
#pragma GCC unroll 16
    for (int i = 0; i < mr_; i++) lo[i] = hi[i] = _mm512_setzero_ps();
    fetch_c(mr_, c, ldc);
    int64_t pr = 0, pc = 0;
    for (int64_t q = 0; q < kc; q++) {
        _mm_prefetch((const char *)(pf + pr * pfrs + pc), _MM_HINT_T0);
        pr++;
        pc = pr == MR ? pc + 16 : pc;
        pr = pr == MR ? 0 : pr;
        __m512 b0 = _mm512_load_ps(bp + q * NR), b1 = _mm512_load_ps(bp + q * NR + 16);
#pragma GCC unroll 16
        for (int i = 0; i < mr_; i++) {
            __m512 ai = _mm512_set1_ps(a[i * rsa + q * csa]);
            lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
        }
    }
    update_c(mr_, lo, hi, c, ldc, nr, alpha, beta, first);
}

/* The same for the last rows of a tile, fewer than MR (no next rows to
 * fetch: it prefetches its own). */
TARGET static void micro_edge(int mr, int64_t kc, const float *a, int64_t rsa, int64_t csa,
                              const float *bp, float *c, int64_t ldc, int nr, float alpha,
                              float beta, bool first)
{
    switch (mr) {
#define EDGE(R)                                                                           \
    case R: micro_tile(R, kc, a, rsa, csa, bp, c, ldc, nr, alpha, beta, first, a, 0); break;
        EDGE(1) EDGE(2) EDGE(3) EDGE(4) EDGE(5) EDGE(6)
        EDGE(7) EDGE(8) EDGE(9) EDGE(10) EDGE(11)
#undef EDGE
    default: break;
    }
}

/* ---- op(A) stored transposed, op(B) not: both read where they lie --------------------- */

/* In such a product (the weight gradients, xᵀ dy over the tokens) A [K M]
 * and B [K N] both have a row per inner index, so the MR elements of A
 * and the NR of B that one step of the micro-kernel reads lie side by
 * side: neither needs copying. Copying both cost about a tenth of these
 * products' time, their M and N being small. The rows DIRECT_AHEAD steps
 * on are fetched as the kernel goes. */
#define DIRECT_AHEAD 16

/* C's MR_ x nr block at C += or = alpha · A(:, MR_ columns)ᵀ [kc rows at
 * stride LDA] · B(:, nr columns) [kc rows at stride LDB] (see update_c). */
static inline __attribute__((always_inline)) TARGET void
direct_tile(int mr_, int64_t kc, const float *a, int64_t lda, const float *b, int64_t ldb,
            float *c, int64_t ldc, int nr, float alpha, float beta, bool first)
{
    __m512 lo[MR], hi[MR];
#pragma GCC unroll 16
    for (int i = 0; i < mr_; i++) lo[i] = hi[i] = _mm512_setzero_ps();
    fetch_c(mr_, c, ldc);
    __mmask16 m0 = first_lanes(nr), m1 = first_lanes(nr - 16);
    for (int64_t q = 0; q < kc; q++) {
        const float *ar = a + q * lda, *br = b + q * ldb;
        _mm_prefetch((const char *)(ar + DIRECT_AHEAD * lda), _MM_HINT_T0);
        _mm_prefetch((const char *)(ar + DIRECT_AHEAD * lda + mr_ - 1), _MM_HINT_T0);
        _mm_prefetch((const char *)(br + DIRECT_AHEAD * ldb), _MM_HINT_T0);
        _mm_prefetch((const char *)(br + DIRECT_AHEAD * ldb + 16), _MM_HINT_T0);
        bool full = nr == NR; /* masked loads cost a full tile about 8% */
        __m512 b0 = full ? _mm512_loadu_ps(br) : _mm512_maskz_loadu_ps(m0, br);
        __m512 b1 = full ? _mm512_loadu_ps(br + 16) : _mm512_maskz_loadu_ps(m1, br + 16);
#pragma GCC unroll 16
        for (int i = 0; i < mr_; i++) {
            __m512 ai = _mm512_set1_ps(ar[i]);
            lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
        }
    }
    update_c(mr_, lo, hi, c, ldc, nr, alpha, beta, first);
}

TARGET static void direct_edge(int mr, int64_t kc, const float *a, int64_t lda, const float *b,
                               int64_t ldb, float *c, int64_t ldc, int nr, float alpha, float beta,
                               bool first)
{
    switch (mr) {
#define EDGE(R)                                                                           \
    case R: direct_tile(R, kc, a, lda, b, ldb, c, ldc, nr, alpha, beta, first); break;
        EDGE(1) EDGE(2) EDGE(3) EDGE(4) EDGE(5) EDGE(6)
        EDGE(7) EDGE(8) EDGE(9) EDGE(10) EDGE(11)
#undef EDGE
    default: break;
    }
}

/* Rows [r0, r1) by panels [p0, p1) of a direct product, over all inner
 * indices in blocks of KC added in order, as a packed product adds them
 * (so the bits are the same). The block loop is outermost: its KC rows of
 * B (at most 512 KiB for these products) stay in L2 while every row of A
 * meets them, instead of being read again from L3 for every few rows. */
TARGET static void direct_part(const sgemm_job *jb, float *scratch, int64_t r0, int64_t r1,
                               int64_t p0, int64_t p1)
{
    for (int64_t q0 = 0; q0 < jb->k; q0 += KC) {
        int64_t kc = min64(KC, jb->k - q0);
        for (int64_t i = r0; i < r1; i += MR) {
            int mr = (int)min64(MR, r1 - i);
            const float *a = jb->a + q0 * jb->csa + i;
            for (int64_t p = p0; p < p1; p++) {
                const float *b = jb->b + q0 * jb->ldb + p * NR;
                float *c = jb->c + i * jb->ldc + p * NR;
                int nr = (int)min64(NR, jb->nc - p * NR);
                if (mr == MR && nr == NR) /* the common case, as a constant */
                    direct_tile(MR, kc, a, jb->csa, b, jb->ldb, c, jb->ldc, NR, jb->alpha,
                                jb->beta, q0 == 0);
                else if (mr == MR)
                    direct_tile(MR, kc, a, jb->csa, b, jb->ldb, c, jb->ldc, nr, jb->alpha,
                                jb->beta, q0 == 0);
                else
                    direct_edge(mr, kc, a, jb->csa, b, jb->ldb, c, jb->ldc, nr, jb->alpha,
                                jb->beta, q0 == 0);
            }
        }
    }
}

/* A stored transposed ([K M]): rows [r0, r1) (at most TILE_ROWS) over the
 * inner indices [q, q + kc), a row of the stored A at a time (every cache
 * line of it read once). */
TARGET static void pack_a_columns(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t q,
                                  int64_t kc, float *restrict out)
{
    const float *src = jb->a + q * jb->csa + r0;
    int64_t blocks = (r1 - r0 + MR - 1) / MR;
    for (int64_t p = 0; p < kc; p++, src += jb->csa)
        for (int64_t blk = 0; blk < blocks; blk++) {
            __mmask16 m = first_lanes(min64(MR, r1 - r0 - blk * MR));
            _mm512_mask_storeu_ps(out + (blk * KC + p) * MR, m,
                                  _mm512_maskz_loadu_ps(m, src + blk * MR));
        }
}

/* The same for A stored as is: each MR rows' [MR kc] block transposed into
 * [kc MR] (lanes past a short last block's rows are left alone: the edge
 * kernels read only their own rows). */
TARGET static void pack_a_rows(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t q, int64_t kc,
                               float *restrict out)
{
    for (int64_t i = r0; i < r1; i += MR)
        transpose16_matrix(out + (i - r0) * KC, MR, jb->a + i * jb->rsa + q, jb->rsa,
                           min64(MR, r1 - i), kc);
}

/* A unit of the current block: rows [r0, r1) (at most TILE_ROWS) by
 * panels [p0, p1). Each MR rows of A (12 KiB at KC) meet every panel of
 * the unit while they are in L1. */
TARGET static void run_unit(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t p0, int64_t p1)
{
    float apack[TILE_ROWS / MR * KC * MR + 16] __attribute__((aligned(64)));
    for (int64_t q0 = 0; q0 < jb->ks; q0 += KC) {
        int64_t kc = min64(KC, jb->ks - q0), kabs = jb->k0 + q0;
        bool first = kabs == 0;
        bool copied = copies_a(jb);
        if (jb->ta)
            pack_a_columns(jb, r0, r1, kabs, kc, apack);
        else if (copied)
            pack_a_rows(jb, r0, r1, kabs, kc, apack);
        for (int64_t i = r0; i < r1; i += MR) {
            int mr = (int)min64(MR, r1 - i);
            const float *a = jb->a + i * jb->rsa + kabs * jb->csa;
            int64_t rsa = jb->rsa, csa = jb->csa;
            /* the next MR rows of A, fetched while these work (when copied,
             * that pass fetched them) */
            const float *pf = a + MR * rsa;
            int64_t pfrs = rsa;
            if (copied) {
                a = pf = apack + (i - r0) * KC;
                pfrs = 0;
                rsa = 1;
                csa = MR;
            }
            for (int64_t p = p0; p < p1; p++) {
                int64_t col = jb->j0 + p * NR;
                const float *bp = jb->pack + p * jb->ks * NR + q0 * NR;
                float *c = jb->c + i * jb->ldc + col;
                int nr = (int)min64(NR, jb->nc - p * NR);
                if (mr == MR)
                    micro_tile(MR, kc, a, rsa, csa, bp, c, jb->ldc, nr, jb->alpha, jb->beta,
                               first, pf, pfrs);
                else
                    micro_edge(mr, kc, a, rsa, csa, bp, c, jb->ldc, nr, jb->alpha, jb->beta,
                               first);
            }
        }
    }
}

const sgemm_kernel moe_sgemm_avx512 = {.name = "avx512", .mr = MR, .nr = NR,
                                       .tile_rows = TILE_ROWS, .pack_panel = pack_panel,
                                       .run_unit = run_unit, .direct_part = direct_part};

#else

const sgemm_kernel moe_sgemm_avx512 = {.name = NULL};

#endif
