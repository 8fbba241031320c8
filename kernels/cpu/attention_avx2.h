/* attention_avx2.h — attention.c's f32 path on CPUs with AVX2 and FMA
 * (attention_avx2.c): the same forward and backward, on the 6 x 16
 * micro-tiles of avx2_tile.h. Buffers and scratch as attention.h says. */
#ifndef MOELAB_CPU_ATTENTION_AVX2_H
#define MOELAB_CPU_ATTENTION_AVX2_H

#include <stdbool.h>
#include <stdint.h>

#include "attention.h"

/* True when this path runs P: f32, hd a multiple of 16, and the f32
 * products on moelab's AVX2 kernel (the CPU has AVX2 and FMA but not
 * AVX-512, or MOELAB_SGEMM=avx2 asked for it). Where they run on the
 * AVX-512 kernel or on BLAS, attention takes attention.c's general path,
 * on the same products. */
bool moe_cpu_attention_avx2_fits(const moe_cpu_attention *p);

/* Scratch floats each thread needs (0 for a P this path never takes). */
int64_t moe_cpu_attention_avx2_scratch(const moe_cpu_attention *p);

void moe_cpu_attention_avx2_forward(const moe_cpu_attention *p, float *out, float *lse,
                                    const float *q, const float *k, const float *v, float *scratch);

/* attention.c's f32 row loops, which this path shares (SIMD clones):
 *   grad_rows: for nq rows of S and DS (LDS apart), row r seeing the first
 *              min(FIRST + r, NK) of NK keys: p = exp(s − LSE[r]) into S,
 *              p (ds − D[r]) into DS, zeros on the rest of the NK;
 *   row_dots:  D[r] = dO[r]·O[r] for NQ rows of HD (LD apart). */
void moe_cpu_attention_grad_rows(float *s, float *ds, int64_t lds, int64_t nq, int64_t nk,
                                 int64_t first, const float *lse, const float *D);
void moe_cpu_attention_row_dots(float *D, const float *dO, const float *O, int64_t ld,
                                int64_t nq, int64_t hd);

void moe_cpu_attention_avx2_backward(const moe_cpu_attention *p, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse,
                                     float *scratch);

#endif
