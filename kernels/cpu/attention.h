/* attention.h — fused scaled-dot-product attention on the CPU, forward and
 * backward (core/nn/attention.c), blocked with an online softmax.
 *
 * Dimension letters: B batch, S sequence, H query heads, KV key/value heads
 * (H % KV == 0; query head h reads kv head ⌊h·KV/H⌋), hd head dim. Every
 * buffer is contiguous in the layout the projections produce, so the op
 * needs no copies:
 *     q, out, dq [B S H hd]     k, v, dk, dv [B S KV hd]     lse [B H S]
 *
 * The forward walks the keys in chunks for each block of queries, keeping a
 * running max and sum per query row (the online softmax), so the S×S score
 * matrix never exists: besides the output only the log-sum-exp of each row
 * (lse, O(B·H·S)) is kept for the backward, which recomputes the
 * probabilities block by block from it. Block products are moe_cpu_sgemm
 * calls (single-threaded inside the OpenMP loop), or in f32 on the AVX2
 * kernel runs of its micro-tiles (attention_avx2.c). The forward runs one (b, h) per
 * task, the backward one (b, kv head) per task, so every output element is
 * written by one thread in a fixed order: results do not depend on the
 * thread count. Scratch (per thread, O(S·hd)) holds one block's scores and,
 * on the micro-tile path, one head's packed operands. DTYPE
 * is MOE_F32 or MOE_F64. */
#ifndef MOELAB_CPU_ATTENTION_H
#define MOELAB_CPU_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/tensor.h"

typedef struct moe_cpu_attention {
    moe_dtype dtype;
    int64_t B, S, H, KV, hd;
    double scale; /* scores are scale · q·k (1/√hd) */
    bool causal;  /* query s sees keys 0..s only */
} moe_cpu_attention;

/* Scratch elements (of the dtype) the forward and backward need, for every
 * thread of the pool. */
int64_t moe_cpu_attention_scratch(const moe_cpu_attention *p);

/* OUT = softmax(scale·q kᵀ (+ causal mask)) v; LSE the log-sum-exp of each
 * scaled, masked score row. */
void moe_cpu_attention_forward(const moe_cpu_attention *p, void *out, void *lse, const void *q,
                               const void *k, const void *v, void *scratch);

/* From DOUT and the forward's OUT and LSE: DQ, DK, DV (overwritten). */
void moe_cpu_attention_backward(const moe_cpu_attention *p, void *dq, void *dk, void *dv,
                                const void *dout, const void *q, const void *k, const void *v,
                                const void *out, const void *lse, void *scratch);

#endif
