/* model.h — the MoE transformer: a pre-norm decoder (as Mixtral and OLMoE)
 * whose feed-forward blocks are MoE layers, with parameters by name.
 *
 * Dimension letters: B batch, S sequence, V vocabulary, D hidden, H query
 * heads, KV key/value heads, hd = D/H head dim, F expert ffn, Fd dense ffn,
 * E experts, L layers.
 *
 *     moe_model_config cfg;
 *     moe_model_config_default(&cfg);                 // V256 L4 D256 H4 F512 E8 K2 …
 *     cfg.layers = 2; cfg.dtype = MOE_F64;
 *     moe_router_config_set_losses(&cfg.router, 1, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 1e-2}});
 *     moe_model *m;
 *     if (moe_model_new(&m, &cfg) != MOE_OK) fprintf(stderr, "%s\n", moe_last_error());
 *     moe_tensor *loss;
 *     moe_model_loss(&loss, m, tokens, targets, -100);   // tokens, targets i64 [B S]
 *     moe_backward(loss, NULL, false);                     // grads on every parameter
 *     ... optimizer step over moe_model_parameter(m, i, &name, &t) ...
 *     moe_model_step(m);                                   // router biases, trackers
 *     moe_model_zero_grad(m);
 *
 * The architecture (rms(x; g) = x·(mean(x²) + eps)^−½·g):
 *     x = embed[tokens]
 *     per layer ℓ:  h = x + attn(rms(x; attn-norm))
 *                   x = h + ffn(rms(h; ffn-norm))
 *     logits = rms(x; norm) · lm-headᵀ        (embedᵀ when tied)
 * attn: q = x Wqᵀ [B S H hd], k = x Wkᵀ, v = x Wvᵀ [B S KV hd], RoPE on q and
 * k (rotate-half, positions 0..S−1, core/nn/rope.h), causal softmax(q kᵀ/√hd)
 * v with query head h reading kv head ⌊h·KV/H⌋ (core/nn/attention.h), then
 * concat(heads) Woᵀ. ffn: the MoE layer (core/moe/layer.h) on [B S D] for
 * layer ℓ when ℓ >= first_dense and (ℓ − first_dense) % moe_every == 0,
 * else the dense SwiGLU MLP (core/nn/mlp.h). No biases anywhere.
 *
 * Parameters (names and shapes are a contract; all leaves requiring grad):
 *     embed                          [V D]
 *     layers.N.attn-norm             [D]
 *     layers.N.attn.wq               [H·hd D]
 *     layers.N.attn.wk, .wv          [KV·hd D]
 *     layers.N.attn.wo               [D H·hd]
 *     layers.N.ffn-norm              [D]
 *     layers.N.moe.router.weight     [E D]        (MoE layers: the layer's own names)
 *     layers.N.moe.experts.w-gate    [E D F]   .w-up [E D F]   .w-down [E F D]
 *     layers.N.moe.shared.w-gate     [D Fs]    .w-up [D Fs]    .w-down [Fs D]   (shared experts)
 *     layers.N.mlp.w-gate, .w-up     [Fd D]       (dense layers)
 *     layers.N.mlp.w-down            [D Fd]
 *     norm                           [D]
 *     lm-head                        [V D]        (absent when tied)
 * Buffers (state that is not trained, f32): layers.N.moe.router.expert-bias
 * [E] for routers with aux-loss-free balancing.
 *
 * Init (seeded; every parameter from its own counter-based stream, keyed by
 * its name, so identical for any thread count): matrices N(0, init_std²),
 * the residual outputs (attn.wo and every w-down) scaled by 1/√(2·L), norms
 * 1, buffers 0.
 *
 * Parallel parts (moe_model_config's last fields; the defaults give the
 * whole model on one rank). The model keeps the global configuration and
 * global names; a rank holds:
 *   - with stage_first/stage_last: the layers [first, last) only (layer
 *     numbers stay global), "embed" on the stage with first = 0, "norm" and
 *     "lm-head" on the stage with last = L. Tied embeddings need the whole
 *     model on one stage (the tied matrix would live on the first and the
 *     last stage).
 *   - with ep_group: the shard [E/ep ...] of every "experts.*" tensor, the
 *     experts from moe_model_expert_offset on (the forward is collective
 *     over the group; router, attention and dense tensors are replicated).
 *   - with dp_group: every router's data-parallel group (router.h,
 *     moe_router_set_groups): global-batch counts, expert-bias and quantile
 *     updates and step metrics are summed over it.
 * Every router's num_moe_layers stays the global MoE layer count. Init is
 * the slice of the one-rank model of the same seed: the same names get the
 * same values, and an ep rank's experts.* are rows [offset, offset + E/ep)
 * of the full tensors (each tensor is one counter-based stream, and a shard
 * starts its draw at its first expert's counter).
 *
 * Aux losses: in the routers' default grad mode (inject) each MoE layer's
 * coefficient × ∂aux reaches the router in backward and the loss value is the
 * cross-entropy alone; in add mode the loss is the cross-entropy plus every
 * layer's Σ coefficient × aux. */
#ifndef MOELAB_NN_MODEL_H
#define MOELAB_NN_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "../moe/layer.h"
#include "../tensor.h"
#include "attention.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_model_config {
    int64_t vocab;          /* V */
    int64_t layers;         /* L */
    int64_t hidden;         /* D */
    int64_t heads;          /* H (divides D; hd = D/H must be even) */
    int64_t kv_heads;       /* KV (divides H) */
    int64_t ffn;            /* F of each routed expert */
    int64_t experts;        /* E */
    int64_t top_k;          /* K */
    int64_t moe_every;      /* an MoE layer every this many layers … */
    int64_t first_dense;    /* … after this many dense ones */
    int64_t dense_ffn;      /* Fd of the dense layers */
    int64_t shared_experts; /* Ns: shared MLP of width Ns·F (0: none) */
    int64_t shared_ffn;     /* Fs override (0: Ns·F) */
    int64_t max_seq;        /* longest sequence (RoPE tables) */
    double rope_theta;
    double norm_eps;
    double init_std;
    bool tie_embeddings;    /* logits from embed; no lm-head */
    moe_router_config router; /* every MoE layer's router options; hidden, experts, top_k,
                                 dtype, seed and num_moe_layers come from the model */
    moe_attention_impl attention; /* fused (default) or plain (the oracle) */
    moe_dtype dtype;        /* every parameter, routers included: f32 or f64 */
    moe_device device;      /* cpu */
    uint64_t seed;
    /* One rank's part of a parallel model (the defaults: the whole model). */
    moe_group *ep_group;    /* every MoE layer's experts sharded over it (NULL: none) */
    moe_group *dp_group;    /* the routers' data-parallel group (NULL: none) */
    int64_t stage_first, stage_last; /* layers [first, last) held here (both 0: all) */
} moe_model_config;

/* The defaults of make-moe-transformer: V 256, L 4, D 256, H 4, KV 4, F 512,
 * E 8, K 2, moe_every 1, first_dense 0, Fd 1024, no shared experts, max_seq
 * 256, θ 10000, eps 1e-5, init_std 0.02, untied, router softmax with losses
 * micro-batch 1e-2 and z 1e-3, fused attention, f32, cpu, seed 0. */
void moe_model_config_default(moe_model_config *cfg);
/* True when layer ELL (0-based) of CFG has an MoE feed-forward block. */
bool moe_model_layer_is_moe(const moe_model_config *cfg, int64_t ell);

typedef struct moe_model moe_model;

/* A model with freshly initialised parameters. Fails (naming
 * make-moe-transformer and the values) on sizes < 1, heads not dividing
 * hidden, kv-heads not dividing heads, an odd head dim, a dtype other than
 * f32/f64, a device other than cpu, router options the router refuses, a
 * stage range outside 0 <= first < last <= L, tied embeddings on a partial
 * stage, or E not a multiple of the ep group's size. The groups are
 * retained. */
moe_status moe_model_new(moe_model **out, const moe_model_config *cfg);
void moe_model_free(moe_model *m); /* NULL is fine */
const moe_model_config *moe_model_get_config(const moe_model *m);

/* LOGITS [B S V] (the model dtype) for TOKENS [B S] (i64 or i32, values in
 * [0, V), 1 <= S <= max_seq). Records each MoE layer's routing.
 * On a stage without "embed" the input is instead the hidden state [B S D]
 * (the model dtype; it may require grad) that the previous stage returned;
 * a stage without the head returns the hidden state [B S D] of its last
 * layer (before the final norm) instead of the logits. */
moe_status moe_model_forward(moe_tensor **logits, moe_model *m, moe_tensor *tokens);
/* LOSS (0-d) = mean cross-entropy of the logits over the TARGETS [B S] that
 * are not IGNORE_INDEX (plus the aux losses in add mode, see above). TOKENS
 * as for moe_model_forward (the hidden state on a stage without "embed");
 * a stage without the head fails, naming its layers. */
moe_status moe_model_loss(moe_tensor **loss, moe_model *m, moe_tensor *tokens, moe_tensor *targets,
                          int64_t ignore_index);

/* The layers [*FIRST, *LAST) this rank holds (0 and L for the whole model);
 * either pointer may be NULL. */
void moe_model_stage(const moe_model *m, int64_t *first, int64_t *last);
/* The first global expert of this rank's experts.* shards (0 without ep),
 * and the ep group's size (1 without ep). */
int64_t moe_model_expert_offset(const moe_model *m);
int moe_model_ep_size(const moe_model *m);
/* The routers' effective options (sizes filled in) as the whole model's
 * first MoE layer has them, the same on every stage: the held MoE layers'
 * options with that layer's seed (a stage without MoE layers fills them in
 * from the configuration). */
void moe_model_router_config(const moe_model *m, moe_router_config *out);

/* Parameters in a fixed order (the order of the list above). NAME and T are
 * borrowed: T is the live leaf (its grad after backward). */
int moe_model_parameter_count(const moe_model *m);
moe_status moe_model_parameter(const moe_model *m, int i, const char **name, moe_tensor **t);
/* The parameter or buffer called NAME (borrowed), or NULL. */
moe_tensor *moe_model_parameter_get(const moe_model *m, const char *name);
/* Copy VALUE (any float dtype, exactly the shape) into the parameter or
 * buffer NAME; a parameter's grad is dropped. Under ep an experts.* tensor
 * takes the rank's shard or the full [E ...] tensor (its rows are taken). Unknown names and wrong shapes
 * fail naming them (set-model-parameter!); the model is then unchanged. */
moe_status moe_model_set_parameter(moe_model *m, const char *name, moe_tensor *value);
/* True when VALUE fits the parameter or buffer NAME as set_parameter takes
 * it (its shape, or the full [E ...] tensor for an expert shard). */
bool moe_model_fits(const moe_model *m, const char *name, const moe_tensor *value);
/* True when NAME is a tensor of the whole model that another stage holds
 * (embed, norm, lm-head or a layers.N.* of a layer outside this stage). */
bool moe_model_held_elsewhere(const moe_model *m, const char *name);
/* Buffers: state that is not trained (borrowed, as parameters). */
int moe_model_buffer_count(const moe_model *m);
moe_status moe_model_buffer(const moe_model *m, int i, const char **name, moe_tensor **t);
/* Drop every parameter's gradient. */
void moe_model_zero_grad(moe_model *m);
/* After each optimizer step: every router's step (expert-bias update,
 * global-batch buffer and counters reset, step metrics). */
moe_status moe_model_step(moe_model *m);
/* Training mode (default on): the routers' jitter, aux losses and counters. */
void moe_model_set_training(moe_model *m, bool training);
bool moe_model_training(const moe_model *m);
/* Micro-batches per optimizer step (every router's inject scale 1/M). */
moe_status moe_model_set_grad_accum(moe_model *m, int64_t grad_accum);

/* The MoE layers in layer order (borrowed): routing of the last forward
 * (moe_layer_last_routing), router metrics and options (moe_layer_router).
 * *LAYER (may be NULL) receives the layer number ℓ of MoE layer I. */
int moe_model_moe_layer_count(const moe_model *m);
moe_layer *moe_model_moe_layer(moe_model *m, int i, int64_t *layer);

/* Model FLOPs (2 per multiply-add; active experts only) of a forward over
 * B sequences of S tokens, or of forward + backward (3× the forward) when
 * BACKWARD. Always the whole model's (every layer, whatever the rank holds). */
double moe_model_flops(const moe_model *m, int64_t B, int64_t S, bool backward);

#ifdef __cplusplus
}
#endif
#endif
