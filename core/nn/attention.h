/* attention.h — scaled-dot-product attention over heads, with grouped-query
 * attention (fewer key/value heads than query heads).
 *
 * Dimension letters: B batch, S sequence, H query heads, KV key/value heads
 * (H % KV == 0), hd head dim. Query head h reads kv head ⌊h·KV/H⌋:
 *     out[b s h] = Σ_t softmax_t(q[b s h]·k[b t g] / √hd) v[b t g]
 * over t <= s when causal (all t otherwise).
 *
 * Two implementations of the same function:
 *   fused  one autograd node over kernels/cpu/attention.c: blocked with an
 *          online softmax, so it keeps only the output and one log-sum-exp
 *          per query row (O(B·H·S)) for the backward, never the S×S
 *          probabilities; deterministic for any thread count.
 *   plain  the textbook composition of ops (matmul, masked_fill, softmax,
 *          matmul) holding [B H S S] scores: the oracle the tests compare
 *          the fused kernel with.
 *
 *     moe_tensor *o;
 *     moe_attention(&o, q, k, v, true, MOE_ATTENTION_FUSED);  // q [B S H hd], k v [B S KV hd] */
#ifndef MOELAB_NN_ATTENTION_H
#define MOELAB_NN_ATTENTION_H

#include <stdbool.h>

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_attention_impl {
    MOE_ATTENTION_FUSED, /* "fused" */
    MOE_ATTENTION_PLAIN, /* "plain" */
    MOE_ATTENTION_IMPL_COUNT
} moe_attention_impl;
const char *moe_attention_impl_name(moe_attention_impl impl);
bool moe_attention_impl_parse(const char *name, moe_attention_impl *out);

/* OUT [B S H hd] = attention of Q [B S H hd] over K, V [B S KV hd] (float
 * dtypes; the result has their promoted dtype), scores scaled by 1/√hd,
 * CAUSAL or not. Differentiable in Q, K and V. CPU only. */
moe_status moe_attention(moe_tensor **out, moe_tensor *q, moe_tensor *k, moe_tensor *v, bool causal,
                         moe_attention_impl impl);

#ifdef __cplusplus
}
#endif
#endif
