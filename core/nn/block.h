/* block.h — one pre-norm decoder layer of the MoE transformer (internal to
 * core/nn; the model owns the blocks and names their parameters).
 *
 * Dimension letters: B batch, S sequence, D hidden, H heads, KV kv heads, hd
 * head dim, Fd dense ffn.
 *     h = x + attn(rms(x; attn-norm))        out = h + ffn(rms(h; ffn-norm)) */
#ifndef MOELAB_NN_BLOCK_H
#define MOELAB_NN_BLOCK_H

#include "model.h"

typedef struct moe_block {
    moe_tensor *attn_norm;           /* [D] */
    moe_tensor *wq, *wk, *wv, *wo;   /* [H·hd D] [KV·hd D] [KV·hd D] [D H·hd] */
    moe_tensor *ffn_norm;            /* [D] */
    moe_layer *moe;                  /* the MoE feed-forward, or NULL … */
    moe_tensor *w_gate, *w_up, *w_down; /* … the dense one: [Fd D] [Fd D] [D Fd] */
} moe_block;

/* OUT [B S D] = the layer applied to X [B S D]; COS, SIN the RoPE tables. */
moe_status moe_block_forward(moe_tensor **out, moe_block *blk, const moe_model_config *cfg,
                             moe_tensor *x, moe_tensor *cos, moe_tensor *sin);

/* Release the block's tensors and MoE layer (not the struct). */
void moe_block_clear(moe_block *blk);

#endif
