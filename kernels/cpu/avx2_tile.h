/* avx2_tile.h — the AVX2 micro-tile that sgemm_avx2.c's products and
 * attention_avx2.c's fused attention share: C's block of up to MR rows by
 * NR columns, as MR x 2 ymm accumulators over a run of inner indices, with
 * the helpers around it. Every element is one chain of FMAs from zero over
 * the inner indices, then alpha and beta applied as update_c says. */
#ifndef MOELAB_CPU_AVX2_TILE_H
#define MOELAB_CPU_AVX2_TILE_H

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>

#define TARGET __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline)) TARGET

#define MR 6               /* rows of the micro-tile: 6 x 2 accumulators, 2 B vectors */
#define NR 16              /* columns of the micro-tile and of a packed panel: two ymm */

/* The first N of 8 lanes, as a maskload/maskstore mask (none for N <= 0). */
INLINE __m256i first8(int64_t n)
{
    int32_t k = n < 0 ? 0 : n > 8 ? 8 : (int32_t)n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* R [8 rows][8] ← its transpose. */
INLINE void transpose8(__m256 r[8])
{
    __m256 t[8];
    for (int i = 0; i < 4; i++) { /* pairs of rows interleaved */
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* 4 x 4 blocks within each 128-bit lane */
        r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) { /* then the lanes themselves */
        t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
        t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
    }
    for (int i = 0; i < 8; i++) r[i] = t[i];
}

/* Eight floats at P, the first N of them (the rest zero). */
INLINE __m256 load_first(const float *p, int64_t n)
{
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first8(n));
}

/* Ask for C's MR_ x NR block, for writing, as a micro-tile starts (see
 * sgemm_avx512.c). */
INLINE void fetch_c(int mr_, float *c, int64_t ldc)
{
#pragma GCC unroll 8
    for (int i = 0; i < mr_; i++) {
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_ET0);
        _mm_prefetch((const char *)(c + i * ldc + NR - 1), _MM_HINT_ET0);
    }
}

/* C's MR_ x nr block (accumulators LO, HI: columns 0-7, 8-15) into C:
 * C = alpha·acc + beta·C on the product's first inner block (FIRST; beta
 * 0: C is not read), C += alpha·acc on later blocks. */
INLINE void update_c(int mr_, const __m256 *lo, const __m256 *hi, float *c, int64_t ldc, int nr,
                     float alpha, float beta, bool first)
{
    __m256i m0 = first8(nr), m1 = first8(nr - 8);
    bool full = nr == NR;
    __m256 va = _mm256_set1_ps(alpha);
    bool overwrite = first && beta == 0.0f;
    __m256 vs = _mm256_set1_ps(first ? beta : 1.0f);
#pragma GCC unroll 8
    for (int i = 0; i < mr_; i++) {
        float *ci = c + i * ldc;
        __m256 r0, r1;
        if (overwrite) {
            r0 = _mm256_mul_ps(va, lo[i]);
            r1 = _mm256_mul_ps(va, hi[i]);
        } else {
            __m256 c0 = full ? _mm256_loadu_ps(ci) : _mm256_maskload_ps(ci, m0);
            __m256 c1 = full ? _mm256_loadu_ps(ci + 8) : _mm256_maskload_ps(ci + 8, m1);
            r0 = _mm256_fmadd_ps(va, lo[i], _mm256_mul_ps(vs, c0));
            r1 = _mm256_fmadd_ps(va, hi[i], _mm256_mul_ps(vs, c1));
        }
        if (full) {
            _mm256_storeu_ps(ci, r0);
            _mm256_storeu_ps(ci + 8, r1);
        } else {
            _mm256_maskstore_ps(ci, m0, r0);
            _mm256_maskstore_ps(ci + 8, m1, r1);
        }
    }
}

/* C's MR_ x nr block at C += or = alpha · A's MR_ rows [kc] · the panel
 * BP [kc NR], whose rows lie LDBP floats apart (NR when packed; see
 * update_c). A's rows are not fetched ahead, as the AVX-512 kernel does:
 * here that made the training step about 10% slower (the same lines were
 * asked for again on every panel). */
INLINE void micro_tile_ld(int mr_, int64_t kc, const float *a, int64_t rsa, int64_t csa,
                          const float *bp, int64_t ldbp, float *c, int64_t ldc, int nr,
                          float alpha, float beta, bool first)
{
    __m256 lo[MR], hi[MR];
#pragma GCC unroll 8
    for (int i = 0; i < mr_; i++) lo[i] = hi[i] = _mm256_setzero_ps();
    fetch_c(mr_, c, ldc);
    for (int64_t q = 0; q < kc; q++) {
        __m256 b0 = _mm256_loadu_ps(bp + q * ldbp), b1 = _mm256_loadu_ps(bp + q * ldbp + 8);
#pragma GCC unroll 8
        for (int i = 0; i < mr_; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i * rsa + q * csa);
            lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
            hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
        }
    }
    update_c(mr_, lo, hi, c, ldc, nr, alpha, beta, first);
}

/* micro_tile_ld for any MR_ <= MR rows, called where that count is not
 * known when compiling: the last rows of a tile (fewer than MR), and the
 * tiles of a product read in place (B's rows LDBP floats apart). */
TARGET static void micro_rows(int mr, int64_t kc, const float *a, int64_t rsa, int64_t csa,
                              const float *bp, int64_t ldbp, float *c, int64_t ldc, int nr,
                              float alpha, float beta, bool first)
{
    switch (mr) {
#define ROWS(R)                                                                               \
    case R: micro_tile_ld(R, kc, a, rsa, csa, bp, ldbp, c, ldc, nr, alpha, beta, first); break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6)
#undef ROWS
    default: break;
    }
}

#endif
#endif
