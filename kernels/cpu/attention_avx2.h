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

void moe_cpu_attention_avx2_backward(const moe_cpu_attention *p, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse,
                                     float *scratch);

#endif
