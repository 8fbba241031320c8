/* transpose16.h — floats transposed 16 by 16 in AVX-512 registers, for
 * the packing of a transposed operand in sgemm_avx512.c, and the lane mask
 * it uses at a matrix's edge. Callers run only where the CPU has AVX-512
 * (sgemm.c checks). */
#ifndef MOELAB_CPU_TRANSPOSE16_H
#define MOELAB_CPU_TRANSPOSE16_H

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <stdint.h>

#define TRANSPOSE16_TARGET __attribute__((target("avx512f,avx2,fma")))

/* The first N of 16 lanes (none for N <= 0, all for N >= 16). */
static inline __mmask16 first_lanes(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* R [16 rows][16] ← its transpose. */
static inline __attribute__((always_inline)) TRANSPOSE16_TARGET void transpose16(__m512 r[16])
{
    __m512 t[16];
    for (int i = 0; i < 8; i++) { /* pairs of rows interleaved */
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* 4 x 4 blocks within each 128-bit lane */
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int h = 0; h < 2; h++) /* then the lanes themselves */
        for (int i = 0; i < 4; i++) {
            t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
            t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
        }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    }
}

/* DST [COLS ROWS] (rows at stride LDD) ← SRC [ROWS COLS] (rows at stride
 * LDS), transposed. */
static inline TRANSPOSE16_TARGET void transpose16_matrix(float *restrict dst, int64_t ldd,
                                                         const float *restrict src, int64_t lds,
                                                         int64_t rows, int64_t cols)
{
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        int64_t nr = rows - r0 < 16 ? rows - r0 : 16;
        __mmask16 rm = first_lanes(nr);
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            int64_t nc = cols - c0 < 16 ? cols - c0 : 16;
            __mmask16 cm = first_lanes(nc);
            __m512 v[16];
            for (int64_t j = 0; j < 16; j++)
                v[j] = j < nr ? _mm512_maskz_loadu_ps(cm, src + (r0 + j) * lds + c0)
                              : _mm512_setzero_ps();
            transpose16(v);
            for (int64_t t = 0; t < nc; t++) _mm512_mask_storeu_ps(dst + (c0 + t) * ldd + r0, rm, v[t]);
        }
    }
}
#endif

#endif
