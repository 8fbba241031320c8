/* rope.h — rotary position embeddings (RoPE) with the rotate-half pairing,
 * as Hugging Face's Llama and Mixtral apply them.
 *
 * Dimension letters: B batch, S sequence, N heads, hd head dim (even), P = hd/2.
 * Element i of a head is paired with element i + P; at position s the pair
 * turns by the angle s·θ^(−2i/hd):
 *     out[i]     = x[i]·cos − x[i+P]·sin
 *     out[i + P] = x[i+P]·cos + x[i]·sin
 *
 *     moe_tensor *cos, *sin, *qr;
 *     moe_rope_tables(&cos, &sin, 256, 64, 10000.0);   // [256 32] f64, once
 *     moe_rope(&qr, q, cos, sin);                      // q [B S N 64], S <= 256 */
#ifndef MOELAB_NN_ROPE_H
#define MOELAB_NN_ROPE_H

#include <stdint.h>

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* COS, SIN [MAX_SEQ P] f64: cos and sin of s·THETA^(−2i/HD) for positions
 * s = 0..MAX_SEQ−1. Fails on an odd or non-positive HD, MAX_SEQ < 1 or
 * THETA <= 0. */
moe_status moe_rope_tables(moe_tensor **cos, moe_tensor **sin, int64_t max_seq, int64_t hd,
                           double theta);

/* OUT = X [B S N hd] (float) rotated by position (positions 0..S−1), using
 * tables from moe_rope_tables with at least S rows and hd/2 columns. Same
 * shape and dtype as X; differentiable in X (the backward rotates back). */
moe_status moe_rope(moe_tensor **out, moe_tensor *x, moe_tensor *cos, moe_tensor *sin);

#ifdef __cplusplus
}
#endif
#endif
