/* rope.h — the CPU loop behind rotary position embeddings (core/nn/rope.c).
 *
 * Dimension letters: B batch, S sequence, N heads, hd head dim (even), P =
 * hd/2 rotation pairs. The rotate-half pairing: element i is paired with
 * element i + P, and the pair at position s turns by the angle in the
 * tables COS/SIN [S' P] (f64, S' >= S):
 *     out[i]     = x[i] cos − x[i+P] sin
 *     out[i + P] = x[i+P] cos + x[i] sin
 * The backward is the inverse rotation (SIN negated). */
#ifndef MOELAB_CPU_ROPE_H
#define MOELAB_CPU_ROPE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/tensor.h"

/* OUT, X [B S N hd] contiguous (DTYPE f32 or f64; OUT may equal X).
 * INVERSE turns the other way (the backward). */
void moe_cpu_rope(moe_dtype dtype, void *out, const void *x, const double *cos, const double *sin,
                  int64_t B, int64_t S, int64_t N, int64_t hd, bool inverse);

#endif
