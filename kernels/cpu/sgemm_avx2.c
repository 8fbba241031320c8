/* sgemm_avx2.c — sgemm.c's kernel for CPUs with AVX2 and FMA but no
 * AVX-512: a micro-tile of 6 rows by 16 columns (two ymm), its 12
 * accumulators, the two vectors of B and A's broadcast element filling 15
 * of the 16 registers.
 *
 * The same scheme as sgemm_avx512.c, at half the width: A is read where it
 * lies, its elements broadcast from MR rows; C is written once per block
 * of KC inner indices. Where it differs (no fetching of A ahead, runs of
 * PANEL_RUN panels, the direct product's copies, except in small ones),
 * the comments below and in avx2_tile.h (the micro-tile, which
 * attention_avx2.c runs too) say why. */
#include "sgemm_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include "avx2_tile.h"

#define TILE_ROWS (8 * MR) /* rows of a unit of work (as many as the AVX-512 kernel's) */
/* Panels a row of micro-tiles walks before the next: their KC inner
 * indices (256 KiB) stay in L2 (512 KiB on the AVX2 cores seen) while every
 * row of the unit meets them, instead of coming from L3 for each. */
#define PANEL_RUN 16

/* Panels [P0, P1) of the current block, B stored as is (op(B)(q, j) =
 * b[q*ldb + j]), row by row: each row's piece of B (a KiB for 16 panels)
 * is read in one go. A direct product (a weight gradient, whose B, dY of a
 * few MiB, comes from L3 or memory) packs its run of panels this way: its
 * lines came in faster read along the rows than 64 bytes of every row for
 * one panel, then the next 64 for the next. */
TARGET static void pack_run(const sgemm_job *jb, int64_t p0, int64_t p1)
{
    int64_t ks = jb->ks;
    for (int64_t q = 0; q < ks; q++) {
        const float *row = jb->b + (jb->k0 + q) * jb->ldb + jb->j0;
        for (int64_t p = p0; p < p1; p++) {
            float *dst = jb->pack + (p * ks + q) * NR;
            int64_t w = min64(NR, jb->nc - p * NR);
            _mm256_store_ps(dst, load_first(row + p * NR, w));
            _mm256_store_ps(dst + 8, load_first(row + p * NR + 8, w - 8));
        }
    }
}

/* Panel P of the current block: columns j0 + P·NR onward (zeros past nc),
 * inner indices [k0, k0 + ks), into the pack buffer as [ks NR]. */
TARGET static void pack_panel(const sgemm_job *jb, int64_t p)
{
    float *restrict dst = jb->pack + p * jb->ks * NR;
    int64_t col = jb->j0 + p * NR, w = min64(NR, jb->nc - p * NR), k0 = jb->k0, ks = jb->ks;
    if (!jb->tb) {
        pack_run(jb, p, p + 1);
    } else { /* op(B)(q, j) = b[j*ldb + q]: B's rows become the panel's columns, */
        for (int64_t h = 0; h < NR / 8; h++) { /* 8 by 8 */
            int64_t rows = w - h * 8 < 0 ? 0 : min64(8, w - h * 8);
            for (int64_t q = 0; q < ks; q += 8) {
                int64_t n = min64(8, ks - q);
                __m256 r[8];
                for (int64_t j = 0; j < 8; j++)
                    r[j] = j < rows ? load_first(jb->b + (col + h * 8 + j) * jb->ldb + k0 + q, n)
                                    : _mm256_setzero_ps();
                transpose8(r);
                for (int64_t t = 0; t < n; t++) _mm256_store_ps(dst + (q + t) * NR + h * 8, r[t]);
            }
        }
    }
}

/* The same with B packed. */
INLINE void micro_tile(int mr_, int64_t kc, const float *a, int64_t rsa, int64_t csa,
                       const float *bp, float *c, int64_t ldc, int nr, float alpha, float beta,
                       bool first)
{
    micro_tile_ld(mr_, kc, a, rsa, csa, bp, NR, c, ldc, nr, alpha, beta, first);
}

/* ---- A copied (see copies_a) ------------------------------------------------------------- */

/* Lanes 0-5 of V at P (MR floats, nothing past them). */
INLINE void store_mr(float *p, __m256 v)
{
    _mm_storeu_ps(p, _mm256_castps256_ps128(v));
    _mm_storel_pi((__m64 *)(p + 4), _mm256_extractf128_ps(v, 1));
}

/* Rows of A stored transposed that pack_a_columns asks for ahead: they
 * lie a row of A apart (1-2 KiB in a weight gradient), too far apart for
 * the hardware's stream prefetch, and the copy waited on each. With
 * pack_run, this made weight-gradient products 6-12% faster from cold
 * caches on Zen 3. */
#define A_AHEAD 8

/* A stored transposed ([K M]): rows [r0, r1) over the inner indices
 * [q, q + kc), into one [kc MR] block per MR rows. A's rows are walked
 * outermost, so that each line of A is read once for all the blocks (the
 * blocks of a unit take 48 KiB, more than L1: block by block, each line
 * came in again for every block it meets). A step stores 8 lanes where MR
 * are due; the 2 past them land in the block's next step, written after;
 * the last step stores MR. */
TARGET static void pack_a_columns(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t q,
                                  int64_t kc, float *restrict out)
{
    for (int64_t p = 0; p < kc; p++) {
        const float *src = jb->a + (q + p) * jb->csa;
        if (p + A_AHEAD < kc)
            for (int64_t i = r0; i < r1; i += 16)
                _mm_prefetch((const char *)(src + A_AHEAD * jb->csa + i), _MM_HINT_T0);
        for (int64_t i = r0; i < r1; i += MR) {
            __m256 v = i + 8 <= jb->m ? _mm256_loadu_ps(src + i) : load_first(src + i, r1 - i);
            float *dst = out + (i - r0) * KC + p * MR;
            if (p + 1 < kc)
                _mm256_storeu_ps(dst, v);
            else
                store_mr(dst, v);
        }
    }
}

/* The same for A stored as is: each MR rows' [MR kc] block transposed 8
 * inner indices at a time. Each step stores 8 lanes where MR are due: the
 * 2 past them land where the next step (or the next block) writes after,
 * or in the slack at the end of the buffer. */
TARGET static void pack_a_rows(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t q, int64_t kc,
                               float *restrict out)
{
    for (int64_t i = r0; i < r1; i += MR) {
        int64_t rows = min64(MR, r1 - i);
        const float *src = jb->a + i * jb->rsa + q;
        float *blk = out + (i - r0) * KC;
        for (int64_t p = 0; p < kc; p += 8) {
            int64_t n = min64(8, kc - p);
            __m256 r[8];
            for (int64_t j = 0; j < 8; j++)
                r[j] = j < rows ? load_first(src + j * jb->rsa + p, n) : _mm256_setzero_ps();
            transpose8(r);
            for (int64_t t = 0; t < n; t++) _mm256_storeu_ps(blk + (p + t) * MR, r[t]);
        }
    }
}

/* ---- op(A) stored transposed, op(B) not ----------------------------------------------- */

/* In such a product (the weight gradients, xᵀ dy over the tokens) the rows
 * of both operands lie a multiple of 1 KiB apart, so read where they lie
 * (as the AVX-512 kernel does) their lines crowd a few sets of L1, and at
 * this width the kernel waits on L2 for them: about 55 GFLOP/s a core
 * against BLAS's 85. So a thread copies the KC rows of a run of PANEL_RUN
 * panels of B into its scratch (256 KiB, which stays in L2 while every row
 * of its part meets them), and A's columns, TILE_ROWS at a time, into
 * [kc MR] tiles (6 KiB each, in L1 across the run's panels); micro_tile
 * then multiplies them. Copied one tile at a time, each line of A came in
 * from L3 for each of the 2-3 tiles it meets: 2-5% more step time. */
#define DIRECT_SCRATCH (KC * PANEL_RUN * NR)

/* A direct product this small (one block of inner indices, at most a
 * unit of rows, at most 4 whole panels: attention's, whose inner dimension
 * is a block of keys or queries) is read where it lies: its operands stay
 * close for the whole product, and copying them cost more than it saved
 * (attention's forward took 10-15% longer, its backward 6-10%). */
static bool direct_in_place(const sgemm_job *jb)
{
    return jb->k <= KC && jb->m <= TILE_ROWS && jb->nc <= 4 * NR && jb->nc % NR == 0;
}

/* Rows [r0, r1) by panels [p0, p1) of a direct product, over all inner
 * indices in blocks of KC added in order (as a packed product adds them,
 * so the bits are the same), the block loop outermost. */
TARGET static void direct_part(const sgemm_job *jb, float *scratch, int64_t r0, int64_t r1,
                               int64_t p0, int64_t p1)
{
    if (direct_in_place(jb)) {
        for (int64_t i = r0; i < r1; i += MR)
            for (int64_t p = p0; p < p1; p++)
                micro_rows((int)min64(MR, r1 - i), jb->k, jb->a + i, 1, jb->csa,
                           jb->b + p * NR, jb->ldb, jb->c + i * jb->ldc + p * NR, jb->ldc, NR,
                           jb->alpha, jb->beta, true);
        return;
    }
    float at[TILE_ROWS / MR * KC * MR] __attribute__((aligned(64)));
    for (int64_t q0 = 0; q0 < jb->k; q0 += KC)
        for (int64_t pr0 = p0; pr0 < p1; pr0 += PANEL_RUN) {
            int64_t kc = min64(KC, jb->k - q0), panels = min64(p1, pr0 + PANEL_RUN) - pr0;
            sgemm_job run = *jb; /* the run's panels, packed as a block of their own */
            run.pack = scratch;
            run.k0 = q0;
            run.ks = kc;
            run.j0 = pr0 * NR;
            run.nc = jb->nc - pr0 * NR;
            pack_run(&run, 0, panels);
            for (int64_t g0 = r0; g0 < r1; g0 += TILE_ROWS) {
                int64_t g1 = min64(r1, g0 + TILE_ROWS);
                pack_a_columns(jb, g0, g1, q0, kc, at);
                for (int64_t i = g0; i < g1; i += MR) {
                    int mr = (int)min64(MR, g1 - i);
                    const float *a = at + (i - g0) * KC;
                    for (int64_t p = 0; p < panels; p++) {
                        const float *bp = scratch + p * kc * NR;
                        float *c = jb->c + i * jb->ldc + run.j0 + p * NR;
                        int nr = (int)min64(NR, run.nc - p * NR);
                        if (mr == MR)
                            micro_tile(MR, kc, a, 1, MR, bp, c, jb->ldc, nr, jb->alpha,
                                       jb->beta, q0 == 0);
                        else
                            micro_rows(mr, kc, a, 1, MR, bp, NR, c, jb->ldc, nr, jb->alpha,
                                       jb->beta, q0 == 0);
                    }
                }
            }
        }
}

/* A unit of the current block: rows [r0, r1) (at most TILE_ROWS) by
 * panels [p0, p1). Each MR rows of A (6 KiB at KC) meet every panel of the
 * unit while they are in L1. */
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
        for (int64_t pr0 = p0; pr0 < p1; pr0 += PANEL_RUN) {
            int64_t pr1 = min64(p1, pr0 + PANEL_RUN);
            for (int64_t i = r0; i < r1; i += MR) {
                int mr = (int)min64(MR, r1 - i);
                const float *a = jb->a + i * jb->rsa + kabs * jb->csa;
                int64_t rsa = jb->rsa, csa = jb->csa;
                if (copied) {
                    a = apack + (i - r0) * KC;
                    rsa = 1;
                    csa = MR;
                }
                for (int64_t p = pr0; p < pr1; p++) {
                    const float *bp = jb->pack + p * jb->ks * NR + q0 * NR;
                    float *c = jb->c + i * jb->ldc + jb->j0 + p * NR;
                    int nr = (int)min64(NR, jb->nc - p * NR);
                    if (mr == MR)
                        micro_tile(MR, kc, a, rsa, csa, bp, c, jb->ldc, nr, jb->alpha, jb->beta,
                                   first);
                    else
                        micro_rows(mr, kc, a, rsa, csa, bp, NR, c, jb->ldc, nr, jb->alpha,
                                   jb->beta, first);
                }
            }
        }
    }
}

const sgemm_kernel moe_sgemm_avx2 = {.name = "avx2", .mr = MR, .nr = NR, .tile_rows = TILE_ROWS,
                                     .pack_panel = pack_panel, .run_unit = run_unit,
                                     .direct_part = direct_part,
                                     .direct_scratch = DIRECT_SCRATCH};

#else

const sgemm_kernel moe_sgemm_avx2 = {.name = NULL};

#endif
