/* block.c — one decoder layer: attention and feed-forward sub-blocks, each
 * behind an RMSNorm and a residual connection (see block.h).
 *
 * Dimension letters: B batch, S sequence, D hidden, H heads, KV kv heads, hd
 * head dim. */
#include "block.h"

#include "internal.h"
#include "mlp.h"
#include "rope.h"

/* X W ᵀ viewed as [B S N hd]. */
static moe_status project_heads(moe_tensor **out, moe_tensor *x, moe_tensor *w, int64_t N, int64_t hd)
{
    moe_tensor *y;
    MOE_TRY(moe_linear(&y, x, w, NULL));
    int64_t shape[4] = {x->shape[0], x->shape[1], N, hd};
    moe_status st = moe_view(out, y, 4, shape);
    moe_tensor_release(y);
    return st;
}

/* attn(a) for the normalised input A [B S D]: [B S D]. */
static moe_status attention_block(moe_tensor **out, moe_block *blk, const moe_model_config *cfg,
                                  moe_tensor *a, moe_tensor *cos, moe_tensor *sin)
{
    int64_t H = cfg->heads, KV = cfg->kv_heads, hd = cfg->hidden / cfg->heads;
    int64_t flat[3] = {a->shape[0], a->shape[1], H * hd};
    moe_tensor *q = NULL, *k = NULL, *v = NULL, *qr = NULL, *kr = NULL, *o = NULL, *o3 = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(project_heads(&q, a, blk->wq, H, hd));
    MOE_TRYG(project_heads(&k, a, blk->wk, KV, hd));
    MOE_TRYG(project_heads(&v, a, blk->wv, KV, hd));
    MOE_TRYG(moe_rope(&qr, q, cos, sin));
    MOE_TRYG(moe_rope(&kr, k, cos, sin));
    MOE_TRYG(moe_attention(&o, qr, kr, v, true, cfg->attention)); /* [B S H hd] */
    MOE_TRYG(moe_view(&o3, o, 3, flat));
    MOE_TRYG(moe_linear(out, o3, blk->wo, NULL));
done:;
    moe_tensor *all[] = {q, k, v, qr, kr, o, o3};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) moe_tensor_release(all[i]);
    return st;
}

moe_status moe_block_forward(moe_tensor **out, moe_block *blk, const moe_model_config *cfg,
                             moe_tensor *x, moe_tensor *cos, moe_tensor *sin)
{
    *out = NULL;
    moe_tensor *a = NULL, *att = NULL, *h = NULL, *f = NULL, *y = NULL;
    moe_status st = MOE_OK;
    MOE_TRYG(moe_rms_norm(&a, x, blk->attn_norm, cfg->norm_eps));
    MOE_TRYG(attention_block(&att, blk, cfg, a, cos, sin));
    MOE_TRYG(moe_add(&h, x, att));
    MOE_TRYG(moe_rms_norm(&f, h, blk->ffn_norm, cfg->norm_eps));
    if (blk->moe)
        MOE_TRYG(moe_layer_forward(&y, blk->moe, f, NULL));
    else
        MOE_TRYG(moe_swiglu_mlp(&y, f, blk->w_gate, blk->w_up, blk->w_down));
    MOE_TRYG(moe_add(out, h, y));
done:
    moe_tensor_release(a);
    moe_tensor_release(att);
    moe_tensor_release(h);
    moe_tensor_release(f);
    moe_tensor_release(y);
    return st;
}

void moe_block_clear(moe_block *blk)
{
    moe_tensor *all[] = {blk->attn_norm, blk->wq, blk->wk, blk->wv, blk->wo,
                         blk->ffn_norm, blk->w_gate, blk->w_up, blk->w_down};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) moe_tensor_release(all[i]);
    moe_layer_free(blk->moe);
}
