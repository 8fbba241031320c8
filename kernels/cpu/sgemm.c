/* sgemm.c — moelab's own f32 GEMM for CPUs with AVX-512:
 *     C [M N] = alpha op(A) [M K] op(B) [K N] + beta C, row-major.
 *
 * Dimension letters: M rows of A and C, K the inner dim, N columns of B and C.
 *
 * Why not BLAS here: a training step's products are thin (K and N of 256
 * to 512). On them OpenBLAS spent about a sixth of its time packing both
 * operands into its own layout and zeroing C before adding into it, and a
 * product split over threads had each thread pack all of op(B).
 *
 * The scheme:
 *   - op(B) is packed once per product into panels of NR columns ([K NR],
 *     k-major, zero-padded at the right edge), shared by the whole team;
 *   - A is read where it lies: the micro-kernel broadcasts A's elements
 *     from MR rows, fetching the next MR rows as it goes;
 *   - a product of A stored transposed and B not (xᵀ dy) reads both where
 *     they lie ("direct"); A stored transposed otherwise is first copied,
 *     a unit's rows at a time;
 *   - C is written once per block of KC inner indices;
 *   - the work is cut into units of TILE_ROWS rows (by all panels, or a
 *     run of them when rows are few), which the threads take one at a
 *     time, so a core that runs slower for a while does not hold the other
 *     back at the end; a direct product is instead cut in one part per
 *     thread along its longer side, each walking its inner blocks
 *     outermost (see direct_part).
 *
 * Every element of C is the same sum whichever thread computes it: over
 * each block of KC inner indices a chain of FMAs from zero, the blocks
 * added to C in order. Results are therefore deterministic and have the
 * same bits on any number of threads. */
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sgemm.h"
#include "transpose16.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_KERNEL 1
#define TARGET __attribute__((target("avx512f,avx2,fma")))
#endif

#define MR 12           /* rows of the micro-tile: 12 x 2 accumulators, 2 B vectors */
#define NR 32           /* columns of the micro-tile and of a packed panel: two zmm */
#define KC 256          /* inner indices per micro-kernel call: a panel block is 32 KiB */
#define KS (16 * KC)    /* inner indices packed at a time, */
#define PACK_CAP (1 << 20) /* and at most this many floats of op(B) (4 MiB) */
#define TILE_ROWS (4 * MR) /* rows of a unit of work */

#ifdef HAVE_KERNEL

/* ---- the per-thread pack buffer ------------------------------------------------------ */

/* Kept from call to call (a training step should not call malloc), grown
 * as needed, freed when its thread ends. */
static pthread_key_t pack_key;
static pthread_once_t pack_key_once = PTHREAD_ONCE_INIT;
static __thread float *pack_buf;
static __thread size_t pack_floats;

static void pack_key_make(void)
{
    (void)pthread_key_create(&pack_key, free);
}

static float *pack_buffer(size_t floats)
{
    if (floats <= pack_floats) return pack_buf;
    free(pack_buf);
    pack_floats = 0;
    pack_buf = aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64);
    (void)pthread_once(&pack_key_once, pack_key_make);
    (void)pthread_setspecific(pack_key, pack_buf);
    if (pack_buf) pack_floats = floats;
    return pack_buf;
}

/* One product's operands and the block of op(B) packed now: inner indices
 * [k0, k0 + ks), columns [j0, j0 + nc). */
typedef struct sgemm_job {
    bool ta, tb;
    int64_t m, k;
    float alpha, beta;
    const float *a, *b;
    int64_t rsa, csa, ldb; /* op(A)(i, p) at a[i*rsa + p*csa] */
    float *c;
    int64_t ldc;
    float *pack;
    int64_t k0, ks, j0, nc, panels;
} sgemm_job;

static inline int64_t min64(int64_t x, int64_t y)
{
    return x < y ? x : y;
}

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

/* ---- units of work ------------------------------------------------------------------- */

/* A team takes units of whole row runs (TILE_ROWS rows by all panels),
 * each thread reading its own rows of A, unless that leaves fewer than
 * UNITS_PER_THREAD each: then the panels are cut into GROUPS runs too. */
#define UNITS_PER_THREAD 8

static int64_t row_runs(const sgemm_job *jb)
{
    return (jb->m + TILE_ROWS - 1) / TILE_ROWS;
}

static int64_t unit_groups(const sgemm_job *jb, int threads)
{
    int64_t runs = row_runs(jb), want = (int64_t)UNITS_PER_THREAD * threads;
    return runs >= want ? 1 : min64(jb->panels, (want + runs - 1) / runs);
}

/* Unit U's rows [*r0, *r1) and panels [*p0, *p1). */
static void unit_span(const sgemm_job *jb, int64_t u, int64_t groups, int64_t *r0, int64_t *r1,
                      int64_t *p0, int64_t *p1)
{
    int64_t g = u % groups;
    *r0 = u / groups * TILE_ROWS;
    *r1 = min64(jb->m, *r0 + TILE_ROWS);
    *p0 = jb->panels * g / groups;
    *p1 = jb->panels * (g + 1) / groups;
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
TARGET static void direct_part(const sgemm_job *jb, int64_t r0, int64_t r1, int64_t p0, int64_t p1)
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

/* ---- A copied ---------------------------------------------------------------------------- */

/* The micro-kernel reads MR rows of op(A) over KC inner indices again for
 * every panel, so they should stay in L1. Where their lines lie a multiple
 * of 4 KiB apart they crowd a few sets of L1 and evict each other before
 * the next panel reuses them: so for A stored transposed (whose KC rows
 * the kernel walks lie a whole row apart) and for A stored as is with
 * rows a multiple of 4 KiB long, a unit's rows are first copied into one
 * [kc MR] block per MR rows. */
static bool copies_a(const sgemm_job *jb)
{
    return jb->ta || jb->rsa % 1024 == 0;
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

/* Unit U of the current block: rows [r0, r0 + TILE_ROWS) by panels
 * [p0, p1) (the block's panels cut into GROUPS runs). Each MR rows of A
 * (12 KiB at KC) meet every panel of the unit while they are in L1. */
TARGET static void run_unit(const sgemm_job *jb, int64_t u, int64_t groups)
{
    float apack[TILE_ROWS / MR * KC * MR + 16] __attribute__((aligned(64)));
    int64_t r0, r1, p0, p1;
    unit_span(jb, u, groups, &r0, &r1, &p0, &p1);
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

/* Pack the current block, then run its units. TEAM: we are inside our own
 * parallel region, whose loops share the work (their barriers keep the
 * two phases and the blocks apart); else all on the calling thread, which
 * may be inside somebody else's region, where a worksharing loop must not
 * appear. */
static void run_block(const sgemm_job *jb, bool team)
{
    if (!team) {
        for (int64_t p = 0; p < jb->panels; p++) pack_panel(jb, p);
        for (int64_t u = 0; u < row_runs(jb); u++) run_unit(jb, u, 1);
        return;
    }
    int64_t groups = unit_groups(jb, omp_get_num_threads());
#pragma omp for schedule(static)
    for (int64_t p = 0; p < jb->panels; p++) pack_panel(jb, p);
#pragma omp for schedule(dynamic)
    for (int64_t u = 0; u < row_runs(jb) * groups; u++) run_unit(jb, u, groups);
}

/* A direct product on the calling thread, or (TEAM) cut in one part per
 * thread along its longer side, rows in whole micro-tiles: each thread
 * then reads all of the other operand but only its share of this one. */
static void run_direct(const sgemm_job *jb, bool team)
{
    if (!team) {
        direct_part(jb, 0, jb->m, 0, jb->panels);
        return;
    }
    int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t tiles = (jb->m + MR - 1) / MR;
    if (tiles >= jb->panels)
        direct_part(jb, min64(jb->m, tiles * t / nt * MR), min64(jb->m, tiles * (t + 1) / nt * MR),
                    0, jb->panels);
    else
        direct_part(jb, 0, jb->m, jb->panels * t / nt, jb->panels * (t + 1) / nt);
}

/* Every block of op(B): inner indices in runs of KS, columns in runs of
 * NC_MAX (the packed block within PACK_CAP floats). */
static void run_blocks(sgemm_job *jb, int64_t n, int64_t nc_max, bool team)
{
    for (int64_t k0 = 0; k0 < jb->k; k0 += KS)
        for (int64_t j0 = 0; j0 < n; j0 += nc_max) {
            jb->k0 = k0;
            jb->ks = min64(KS, jb->k - k0);
            jb->j0 = j0;
            jb->nc = min64(nc_max, n - j0);
            jb->panels = (jb->nc + NR - 1) / NR;
            run_block(jb, team);
        }
}

/* C = beta C, the whole product when K or alpha is 0. */
static void scale_c(int64_t m, int64_t n, float beta, float *c, int64_t ldc)
{
    for (int64_t i = 0; i < m; i++) {
        float *row = c + i * ldc;
        if (beta == 0.0f)
            memset(row, 0, (size_t)n * sizeof(float));
        else
            for (int64_t j = 0; j < n; j++) row[j] *= beta;
    }
}

static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;
static bool cpu_ok;

static void cpu_check(void)
{
    __builtin_cpu_init();
    cpu_ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

bool moe_cpu_sgemm_native_ok(void)
{
    (void)pthread_once(&cpu_once, cpu_check);
    return cpu_ok;
}

/* Columns of op(B) packed at a time for inner dim K (PACK_CAP floats), and
 * the floats a pack buffer needs for a product of N columns. */
static int64_t cols_per_block(int64_t k)
{
    int64_t nc = PACK_CAP / min64(k, KS) / NR * NR;
    return nc < NR ? NR : nc;
}

static size_t pack_size(int64_t n, int64_t k)
{
    int64_t cols = min64(n, cols_per_block(k));
    return (size_t)min64(k, KS) * (size_t)((cols + NR - 1) / NR * NR);
}

/* A product whose A is stored transposed and B not runs direct (no pack). */
static bool is_direct(bool ta, bool tb)
{
    return ta && !tb;
}

/* The whole product over the team (TEAM: called inside our own parallel
 * region) or on the calling thread, op(B) packed into PACK unless direct. */
static void run_product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *a, int64_t lda, const float *b, int64_t ldb, float beta,
                        float *c, int64_t ldc, float *pack, bool team)
{
    sgemm_job jb = {.ta = ta, .tb = tb, .m = m, .k = k, .alpha = alpha, .beta = beta, .a = a,
                    .b = b, .rsa = ta ? 1 : lda, .csa = ta ? lda : 1, .ldb = ldb, .c = c,
                    .ldc = ldc, .pack = pack};
    if (is_direct(ta, tb)) {
        jb.nc = n;
        jb.panels = (n + NR - 1) / NR;
        run_direct(&jb, team);
    } else {
        run_blocks(&jb, n, cols_per_block(k), team);
    }
}

bool moe_cpu_sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                          float beta, float *c, int64_t ldc)
{
    if (m <= 0 || n <= 0) return true;
    if (k <= 0 || alpha == 0.0f) { /* as BLAS: A and B are not read */
        scale_c(m, n, beta, c, ldc);
        return true;
    }
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (2.0 * (double)m * (double)n * (double)k < MOE_CPU_SGEMM_SPLIT_FLOPS) nt = 1;
    bool direct = is_direct(trans_a, trans_b);
    float *pack = direct ? NULL : pack_buffer(pack_size(n, k));
    if (!direct && !pack) return false;
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        run_product(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, pack, true);
    } else {
        run_product(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, pack, false);
    }
    return true;
}

#else /* no kernel for this CPU family: gemm.c calls BLAS */

bool moe_cpu_sgemm_native_ok(void)
{
    return false;
}

bool moe_cpu_sgemm_native(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          float alpha, const float *a, int64_t lda, const float *b, int64_t ldb,
                          float beta, float *c, int64_t ldc)
{
    return false;
}

#endif
