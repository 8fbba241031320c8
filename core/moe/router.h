/* router.h — the MoE router: gate, scoring, top-k selection (plain,
 * group-limited, sinkhorn, debug), capacity, aux-loss-free expert bias, and
 * the load-balancing losses with their gradient delivery
 * (the maths: the manual, "Routers and balancing losses").
 *
 * Dimension letters: T tokens (B·S, b-major, for [B S D] input), D hidden,
 * E experts, K top-k, G expert groups, C capacity.
 *
 *     moe_router_config cfg;
 *     moe_router_config_default(&cfg);
 *     cfg.hidden = 1024; cfg.experts = 64; cfg.top_k = 8;
 *     moe_router_config_preset(&cfg, "deepseek-v3");      // conventions only
 *     cfg.groups = 8; cfg.group_topk = 4;
 *     moe_router *r;
 *     moe_router_new(&r, &cfg);                           // validates
 *     moe_routing *out;
 *     moe_router_forward(&out, r, x, NULL, NULL);         // x [T D] or [B S D]
 *     ... use out->weights [T K], out->experts [T K] (or out->probs [T E]) ...
 *     moe_backward(model_loss, NULL, false);              // inject mode: the aux
 *     moe_routing_free(out);                              //   gradient rides along
 *     // after the optimizer step:
 *     moe_router_step(r);                                 // bias update, buffers reset
 *
 * Scheme mapping (make-router keywords → fields): #:hidden hidden,
 * #:experts experts, #:top-k top_k, #:score score, #:pre-softmax? pre_softmax,
 * #:normalize? normalize ('auto #t #f), #:groups groups (#f = 0),
 * #:group-top-k group_topk (#f = 0), #:group-score-top group_score_top ('auto = 0),
 * #:scaling-factor scaling_factor, #:jitter jitter, #:capacity-factor
 * capacity_factor (#f = MOE_CAPACITY_NONE), #:capacity-formula capacity_formula,
 * #:drop-policy drop_policy, #:pad-to-capacity? pad_to_capacity,
 * #:expert-bias? expert_bias, #:bias-rate bias_rate, #:bias-center? bias_center,
 * #:losses losses/n_losses (moe_router_config_set_losses), #:count-from
 * count_from, #:grad-mode grad_mode, #:preset moe_router_config_preset (applied
 * first, explicit keywords override), #:seed seed, #:convention convention,
 * #:routing routing, #:qb-ema qb_ema, #:replay replay (#f = off),
 * #:debug-keep-weights? debug_keep_weights, #:z-loss-div? z_loss_div. Other
 * fields are extensions with the same names. (router-forward r x #:experts ids)
 * is moe_router_forward_ids. (routing-probs out) and (routing-map out) call
 * moe_routing_dense first; (routing-aux-losses out) pairs aux_kind[i] with
 * aux[i]; (router-metrics r) is moe_router_metrics_get (metrics.h).
 *
 * Threads and determinism: every pass runs in parallel over tokens; sums over
 * tokens use fixed chunks reduced in order, so results do not depend on the
 * thread count. f32 rows use vectorised f32 exp/log (relative error ~3e-7),
 * f64 rows libm. */
#ifndef MOELAB_MOE_ROUTER_H
#define MOELAB_MOE_ROUTER_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "../autograd.h"
#include "../dist/comm.h"
#include "../tensor.h"
#include "aux_loss.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- enums (each with a name table: moe_<enum>_name / _parse) -------------- */

typedef enum moe_norm_mode {
    MOE_NORM_AUTO, /* Megatron: sigmoid renormalised when K > 1; pre-softmax not */
    MOE_NORM_ON,   /* always (torchtitan route_norm, HF norm_topk_prob), also K = 1 */
    MOE_NORM_OFF,
    MOE_NORM_MODE_COUNT
} moe_norm_mode;
const char *moe_norm_mode_name(moe_norm_mode m); /* "auto" "on" "off" */
bool moe_norm_mode_parse(const char *name, moe_norm_mode *out);

typedef enum moe_capacity_formula {
    MOE_CAPACITY_MEGATRON,   /* C = ⌈T·K/E · cf⌉ */
    MOE_CAPACITY_MEGABLOCKS, /* C = ⌊cf·K·T·ep/E⌋, 0 ⇒ dropless */
    MOE_CAPACITY_FORMULA_COUNT
} moe_capacity_formula;
const char *moe_capacity_formula_name(moe_capacity_formula f); /* "megatron" "megablocks" */
bool moe_capacity_formula_parse(const char *name, moe_capacity_formula *out);

typedef enum moe_drop_policy {
    MOE_DROP_PROBS,    /* each expert keeps its C highest-weight tokens (ties: earlier) */
    MOE_DROP_POSITION, /* each expert keeps its C earliest tokens */
    MOE_DROP_POLICY_COUNT
} moe_drop_policy;
const char *moe_drop_policy_name(moe_drop_policy p); /* "probs" "position" */
bool moe_drop_policy_parse(const char *name, moe_drop_policy *out);

typedef enum moe_count_from {
    MOE_COUNT_TOPK,   /* plain top-k of the loss scores (Megatron, DeepSeek-V3) */
    MOE_COUNT_ACTUAL, /* the router's selection: bias, groups, sinkhorn, debug routing
                         included, capacity dropping NOT (OLMo-core, torchtitan, MegaBlocks) */
    MOE_COUNT_FROM_COUNT
} moe_count_from;
const char *moe_count_from_name(moe_count_from c); /* "topk" "actual" */
bool moe_count_from_parse(const char *name, moe_count_from *out);

typedef enum moe_grad_mode {
    MOE_GRAD_INJECT, /* identity node on the router output adds scale·∂aux/∂logits */
    MOE_GRAD_ADD,    /* the caller adds routing->aux_total to the model loss */
    MOE_GRAD_MODE_COUNT
} moe_grad_mode;
const char *moe_grad_mode_name(moe_grad_mode m); /* "inject" "add" */
bool moe_grad_mode_parse(const char *name, moe_grad_mode *out);

typedef enum moe_routing_mode {
    MOE_ROUTING_TOPK,               /* score, (group-limited) top-k: the default */
    MOE_ROUTING_QUANTILE_BALANCING, /* top-K of z − β, β a per-expert dual variable updated
                                       at each optimizer step (Megatron-Core) */
    MOE_ROUTING_MODE_COUNT
} moe_routing_mode;
const char *moe_routing_mode_name(moe_routing_mode m); /* "topk" "quantile-balancing" */
bool moe_routing_mode_parse(const char *name, moe_routing_mode *out);

typedef enum moe_replay_mode {
    MOE_REPLAY_OFF,
    MOE_REPLAY_RECORD, /* keep every forward's expert ids (router-replay! plays them back) */
    MOE_REPLAY_MODE_COUNT
} moe_replay_mode;
const char *moe_replay_mode_name(moe_replay_mode m); /* "off" "record" */
bool moe_replay_mode_parse(const char *name, moe_replay_mode *out);

/* capacity_factor value meaning "no capacity" (dropless; Scheme #f). */
#define MOE_CAPACITY_NONE NAN

#define MOE_ROUTER_MAX_LOSSES 8

typedef struct moe_aux_term {
    moe_aux_kind kind;
    double coeff; /* α (>= 0) */
} moe_aux_term;

typedef struct moe_router_config {
    /* shape */
    int64_t hidden;  /* D */
    int64_t experts; /* E */
    int64_t top_k;   /* K */
    moe_dtype dtype; /* gate weight and logits: f32 (default) or f64 */
    /* scoring and selection */
    moe_score_fn score;
    bool pre_softmax;          /* softmax: full softmax then top-k (no renorm by default) */
    moe_norm_mode normalize;
    double norm_eps;           /* added to Σ_topk weights when renormalising (1e-20) */
    double norm_p;             /* 1: divide by the sum; p > 1: by the p-norm (OLMo-core,
                                  MegaBlocks normalize_expert_weights) */
    int64_t groups;            /* G, 0 = no group limiting */
    int64_t group_topk;        /* groups kept */
    int64_t group_score_top;   /* m: a group's score = sum of its top-m scores;
                                  0 = auto = ⌊K/group_topk⌋ (Megatron); 2 = torchtitan/DeepSeek */
    double scaling_factor;     /* multiplies the final weights (DeepSeek-V3: 2.5) */
    double jitter;             /* ε: x ← x·U(1−ε, 1+ε) in training; 0 = off */
    double score_offset;       /* added to σ(z) (OLMo-core 1e-7) */
    bool sinkhorn;             /* Sinkhorn-balanced selection (Megatron "sinkhorn") */
    moe_debug_routing debug_routing;
    double debug_skew;         /* imbalance strength (default 4) */
    bool debug_keep_weights;   /* uniform debug routing keeps the weights of the routing it
                                  replaces (MegaBlocks), else gathers the forced experts' scores */
    moe_routing_mode routing;  /* top-k (default) or quantile balancing */
    double qb_ema;             /* quantile balancing: β ← ema·β + (1−ema)·q̄ (default 0) */
    moe_replay_mode replay;    /* record every forward's expert ids */
    /* capacity */
    double capacity_factor;    /* MOE_CAPACITY_NONE or > 0 */
    moe_capacity_formula capacity_formula;
    int64_t ep_size;           /* ep in the MegaBlocks formula (default 1) */
    moe_drop_policy drop_policy;
    bool pad_to_capacity;      /* dense map/probs padded to exactly C tokens per expert */
    /* aux-loss-free balancing */
    bool expert_bias;
    double bias_rate;          /* u (default 1e-3) */
    bool bias_center;          /* b −= mean(Δ) after each update (torchtitan) */
    /* losses */
    moe_aux_term losses[MOE_ROUTER_MAX_LOSSES];
    int n_losses;
    moe_count_from count_from;
    double loss_eps;           /* ε of the sigmoid loss scores s/(Σ s + ε) (1e-20); explicit:
                                  a tiny ε lets the router shrink all scores to game the loss */
    double loss_div_factor;    /* OLMo-core divisor override (0: default) */
    int64_t num_moe_layers;    /* MegaBlocks L (default 1) */
    bool k_in_f;               /* canonical 1/K in f (true) */
    bool global_buffer;        /* global-batch counts accumulate over micro-batches (true) */
    moe_convention convention; /* exact (default) or megatron: see moe_convention */
    bool z_loss_div;           /* the z-loss divides its token sum by loss_div_factor when
                                  that is set (OLMo-core), instead of taking the mean */
    /* gradient delivery */
    moe_grad_mode grad_mode;
    int64_t grad_accum;        /* M micro-batches per optimizer step: inject scale |cp|/M */
    bool per_token_loss;       /* inject scale = the micro-batch's valid local tokens (all its
                                  sequences, for sequence-wise too) × |tp×cp|, normalised later by
                                  the global token count */
    int64_t pp_size;           /* pipeline stages (add mode with batch-wise losses needs 1) */
    /* misc */
    bool training;             /* jitter, loss and counter updates only when true */
    uint64_t seed;             /* jitter and debug-imbalance streams */
    const char *preset;        /* last preset applied (static string) or NULL */
} moe_router_config;

/* Defaults: f32, softmax post-softmax, normalize auto, norm_eps 1e-20,
 * norm_p 1, scaling 1, no groups, no capacity (megatron formula, probs policy),
 * no bias (rate 1e-3), no losses, count from top-k, loss_eps 1e-20,
 * num_moe_layers 1, k_in_f, global buffer on, inject, M = 1, pp 1, training,
 * seed 0. hidden/experts/top_k are 0 and must be set. */
void moe_router_config_default(moe_router_config *cfg);

/* Set every convention of a reference framework (names: "megatron",
 * "olmo-core", "torchtitan", "megablocks", "deepseek-v3", "qwen-global").
 * Shape fields (hidden, experts, top_k, groups, group_topk) are left alone.
 * Unknown name: MOE_ERR_ARG listing the known ones. What each sets:
 *
 *  megatron     convention megatron (see moe_convention);
 *               softmax post-softmax (top-k on logits, softmax over the K);
 *               sigmoid renormalised by Σ+1e-20 when K>1; group score top-m
 *               m = ⌊K/group_topk⌋; capacity ⌈T·K/E·cf⌉, drop "probs";
 *               loss scores softmax / σ/(Σσ+1e-20); counts = top-k of the loss
 *               scores; losses micro-batch 1e-2; bias off (u 1e-3, no
 *               centering when on); inject; f = c/(K·T).
 *  olmo-core    z_loss_div (loss_div_factor divides the z-loss too);
 *               softmax then top-k on the full softmax, weights not
 *               renormalised; sigmoid σ+1e-7, loss scores s/Σs (ε 0); counts =
 *               actual routing; losses olmo-local-batch 1e-2 and z 1e-3;
 *               bias (when on) u 1e-3 no centering; add mode; f = c/(K·T).
 *  torchtitan   sigmoid; softmax then top-k (no renorm); route_norm off
 *               (normalize on = torchtitan route_norm, K=1 included, Σ+1e-20);
 *               group score top-2; expert bias on, u 1e-3, centered; counts =
 *               actual routing; no aux loss; inject; f = c/(K·T).
 *  megablocks   debug_keep_weights (uniform debug routing keeps the top-k
 *               weights); softmax then top-k on the softmax, no renorm; capacity
 *               ⌊cf·K·T·ep/E⌋ (0 ⇒ dropless), drop "position"; counts = actual
 *               routing; losses megablocks 0.1 (set num_moe_layers to the
 *               model's MoE layer count); add mode; f = c/(K·T).
 *  deepseek-v3  convention megatron; sigmoid, renormalised Σ+1e-20 when K>1, scaling 2.5; group
 *               score top-2; expert bias on, u 1e-3, no centering; sequence
 *               loss 1e-4 with loss scores s/Σs (ε 0, eq. 19) and counts = the
 *               unbiased top-k (eq. 18); inject; f = c/(K·T).
 *  qwen-global  convention megatron; softmax then top-k, renormalised (norm_topk_prob: same values
 *               as post-softmax); global-batch loss 1e-3, buffered over the
 *               step's micro-batches, counts = top-k of the scores; inject;
 *               f = c/(K·T). */
moe_status moe_router_config_preset(moe_router_config *cfg, const char *name);
/* Replace the loss list (N terms; a kind may appear once). */
moe_status moe_router_config_set_losses(moe_router_config *cfg, int n, const moe_aux_term *terms);
/* Check a configuration (the checks moe_router_new does): K > E, K < 1,
 * E % G, group_topk > G, K above the experts left by group limiting,
 * post-softmax with K = 1, capacity factor <= 0, sinkhorn with a non-zero
 * balance-loss coefficient, add mode with batch-wise losses under pipeline
 * parallelism, quantile balancing with K >= E, groups, sinkhorn, an expert
 * bias or a non-zero balance-loss coefficient, qb_ema outside [0, 1) (or set
 * without quantile balancing), and out-of-domain numbers. */
moe_status moe_router_config_validate(const moe_router_config *cfg);

/* ---- the router ------------------------------------------------------------------- */

typedef struct moe_router moe_router;

/* A router with weight [E D] (cfg->dtype, N(0, 0.02²)-initialised from cfg->seed,
 * a leaf requiring grad), and expert bias [E] f32 zeros when cfg->expert_bias. */
moe_status moe_router_new(moe_router **out, const moe_router_config *cfg);
void moe_router_free(moe_router *r);
const moe_router_config *moe_router_get_config(const moe_router *r);

/* The weight (borrowed: retain to keep it). */
moe_tensor *moe_router_weight(moe_router *r);
/* Copy W [E D] (any float dtype) into the weight; its grad is dropped. */
moe_status moe_router_set_weight(moe_router *r, moe_tensor *w);
/* Expert bias [E] f32 (borrowed; NULL without expert bias). */
moe_tensor *moe_router_bias(moe_router *r);
moe_status moe_router_set_bias(moe_router *r, moe_tensor *bias);

/* Parallel groups (each may be NULL = size 1; references are taken):
 * TP and CP split the micro-batch's tokens (counts and token totals of
 * micro-batch, sequence and instance losses are summed over cp, then tp), DP
 * the replicas sharing the optimizer step (global-batch counts and the bias
 * update sum over cp, tp, dp). The inject scale multiplies by |cp|. */
moe_status moe_router_set_groups(moe_router *r, moe_group *tp, moe_group *cp, moe_group *dp);
/* Recomputation mode (activation checkpointing): forwards neither count nor
 * advance the global buffer, and replay the jitter noise and global-batch
 * counts the original forwards used, in order. */
void moe_router_set_recomputing(moe_router *r, bool recomputing);
void moe_router_set_training(moe_router *r, bool training);
/* Gradient-accumulation steps M and per-token-loss mode for the inject scale. */
moe_status moe_router_set_grad_scale(moe_router *r, int64_t grad_accum, bool per_token_loss);

/* The result of one forward. Tensors belong to the struct; free with
 * moe_routing_free (retain any you keep). Rows are in token order, b-major. */
typedef struct moe_routing {
    moe_tensor *weights;  /* [T K] router dtype; differentiable (0 for dropped/padded slots) */
    moe_tensor *experts;  /* [T K] i64 expert ids, descending selection score */
    moe_tensor *kept;     /* [T K] bool: slot is routed (valid token, not dropped) */
    moe_tensor *probs;    /* [T E] dense weights (0 off the map); differentiable. NULL until
                             moe_routing_dense() builds it (the dense views cost a [T E] pass
                             that dispatch by ids does not need) */
    moe_tensor *map;      /* [T E] bool routing map (pad-to-capacity adds filler entries);
                             NULL until moe_routing_dense() */
    moe_tensor *logits;   /* [T E] gate logits (router dtype, in the graph) */
    moe_tensor *counts;   /* [E] i64 tokens per expert of this forward (kept slots) */
    int n_aux;
    moe_aux_kind aux_kind[MOE_ROUTER_MAX_LOSSES];
    moe_tensor *aux[MOE_ROUTER_MAX_LOSSES]; /* unscaled 0-d losses (add mode: differentiable) */
    double aux_coeff[MOE_ROUTER_MAX_LOSSES];
    moe_tensor *aux_total;  /* Σ coeff·loss (z: coeff/|tp×cp|); add mode: add it to the
                               model loss; inject mode: the value only (no grad) */
    int64_t tokens;         /* valid tokens */
    int64_t capacity;       /* C per expert (-1: no capacity) */
    int64_t dropped;        /* valid slots dropped by capacity */
    struct moe_routing_priv *priv; /* what moe_routing_dense needs */
} moe_routing;

/* Route X [T D] or [B S D] (any float dtype; the gate runs in the router dtype).
 * VALID: [T] or [B S] mask (true = real token) or NULL. DOC_BOUNDS: i64 [N+1]
 * document starts over the T tokens (packed sequences) or NULL. Errors leave
 * the router unchanged. */
moe_status moe_router_forward(moe_routing **out, moe_router *r, moe_tensor *x, moe_tensor *valid,
                              moe_tensor *doc_bounds);
/* The same, routing with the given expert ids IDS [T K] (i64, distinct in a
 * row, in [0, E)) instead of selecting (replay): the weights are the scores at
 * those ids normalised as the score function does; routing and expert-bias
 * counts follow IDS, the losses count as count_from says. IDS NULL: as
 * moe_router_forward (which also plays back a router-replay! list). */
moe_status moe_router_forward_ids(moe_routing **out, moe_router *r, moe_tensor *x, moe_tensor *valid,
                                  moe_tensor *doc_bounds, moe_tensor *ids);
void moe_routing_free(moe_routing *out);
/* Build out->probs (from out->weights, in its graph: a gradient reaching probs
 * passes the inject node too) and out->map. Idempotent. */
moe_status moe_routing_dense(moe_routing *out);
/* The unscaled loss of KIND in OUT (borrowed), or NULL. */
moe_tensor *moe_routing_aux(const moe_routing *out, moe_aux_kind kind);

/* End of the optimizer step: sum the step's actual counts over cp, tp, dp;
 * update the expert bias b_i += u·sign(mean c − c_i) (sign 0 = 0; centered when
 * bias_center); quantile balancing: average the step's quantiles over its
 * micro-batches and dp, β ← ema·β + (1−ema)·q̄, re-centred; record the global
 * metrics; reset counters and the global buffer. Collective over the
 * router's groups. */
moe_status moe_router_step(moe_router *r);

/* State for checkpoints: bias [E] f32 (NULL without expert bias) and counters
 * f64 [3, E+1]: row 0 the bias-update counts, row 1 the global-batch buffer,
 * row 2 the step's metric counts, each followed by its token total; a
 * quantile-balancing router adds row 3, the quantiles summed over the step's
 * micro-batches so far followed by their count ([4, E+1]). A load takes
 * either shape (three rows clear the quantile sums). */
moe_status moe_router_state_save(moe_router *r, moe_tensor **bias, moe_tensor **counters);
moe_status moe_router_state_load(moe_router *r, moe_tensor *bias, moe_tensor *counters);

/* Replay: the next N forwards route with IDS[0..N) in turn (retained), then
 * forwards select again; N = 0 stops a replay. Each entry is checked as
 * moe_router_forward_ids checks its ids, when its forward runs. */
moe_status moe_router_replay(moe_router *r, int64_t n, moe_tensor *const *ids);
/* The expert ids [T K] of every forward since the router was made (replay
 * "record"; borrowed) and their number; moe_router_clear_record empties it. */
moe_tensor *const *moe_router_record(const moe_router *r, int64_t *n);
void moe_router_clear_record(moe_router *r);

/* Quantile balancing: β [E] f32 (borrowed; NULL for top-k routing) and its
 * replacement (any float [E]; the step's accumulated quantiles are kept). */
moe_tensor *moe_router_qb_beta(moe_router *r);
moe_status moe_router_set_qb_beta(moe_router *r, moe_tensor *beta);

/* The router's counter-based random stream (jitter, debug imbalance): its
 * seed and where it stands. Checkpoints save both so that a resumed run
 * draws the same numbers. */
void moe_router_rng_state(const moe_router *r, uint64_t *seed, uint64_t *position);
void moe_router_set_rng_state(moe_router *r, uint64_t seed, uint64_t position);

/* The router's global-batch tracker (borrowed; NULL without that loss). */
moe_balance_tracker *moe_router_tracker(moe_router *r);

#ifdef __cplusplus
}
#endif
#endif
