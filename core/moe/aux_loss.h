/* aux_loss.h — load-balancing losses and the z-loss, as differentiable
 * functions of the router logits (the maths: the manual, "Routers and balancing losses").
 *
 * Notation (used in every comment below): T valid tokens in the scope named,
 * E routed experts, K top-k, z logits [T E], p loss scores [T E] (softmax over
 * all E, or sigmoid scores normalised per token: s/(Σ_j s_j + ε)), c_i the
 * routing count of expert i in the scope, P_i = Σ_t p_{t,i}.
 *
 * The canonical form, with coefficient 1, is
 *
 *     L = E/(K·T²) · Σ_i c_i·P_i        (= E·Σ_i f_i·P̄_i, f_i = c_i/(K·T), P̄_i = P_i/T)
 *
 * Perfectly uniform counts (c_i = K·T/E) give L = 1 whatever the scores. Every
 * variant below is this form over some scope; each returns the UNSCALED loss
 * (coefficient 1) as a 0-d tensor of the logits' dtype (f32 for bf16 logits),
 * differentiable in the logits. Counts are not differentiable: the gradient
 * flows through the loss scores only.
 *
 *   micro-batch       scope = the micro-batch (Switch, GShard, Megatron aux_loss).
 *                     With options.group (tp×cp), counts and T are summed over
 *                     the group, P stays rank-local: the ranks' partial losses
 *                     sum to the micro-batch loss.
 *   sequence          the canonical form per sequence (or document), averaged
 *                     over the sequences that hold at least one valid token
 *                     (DeepSeek-V2/V3, Megatron seq_aux_loss). Each sequence
 *                     uses its own valid length. Logits [B S E]; [T E] only with
 *                     document boundaries. With a group (cp), per-sequence
 *                     counts and lengths are summed over it.
 *   global-batch      f_i from the counts accumulated in a balance tracker
 *                     (summed over its group — dp×cp×tp — and, in buffer mode,
 *                     over the micro-batches of the step), normalised by the
 *                     tokens accumulated; P̄ = the local scores over the
 *                     micro-batch's tokens per data-parallel replica (its
 *                     tokens over all the tracker's ranks / |dp|, |dp| = those
 *                     ranks / |options.group|; the tp×cp sum when replicas
 *                     hold equal valid tokens):
 *                         L = E·Σ_i (c_i^acc/(K·T^acc))·(P_i/T_mb)
 *                     After the data-parallel gradient average this is exactly
 *                     the gradient of the micro-batch formula on the
 *                     concatenated global batch (no 1/dp-too-small gradient),
 *                     uneven padding across replicas included.
 *   olmo-local-batch  OLMo-core local_batch: rank-local counts (no group),
 *                         L = E/K · Σ_i c_i·P̄_i / div,  div = loss_div_factor or T.
 *   olmo-instance     OLMo-core instance: per sequence b, counts c_b summed over
 *                     the group (cp then tp, i.e. the group holding the
 *                     sequence), P̄_b = P_b/T_b (T_b summed over the group):
 *                         L = E/K · Σ_b Σ_i c_{b,i}·P̄_{b,i} / div,
 *                     div = loss_div_factor or Σ_b T_b: the token-weighted mean
 *                     of the per-sequence canonical losses (sequence: plain mean).
 *   megablocks        one layer's share of MegaBlocks' batched loss:
 *                         L = E/(L_moe·K·T²)·Σ_i c_i·P_i,  L_moe = options.num_layers
 *                     so the layers of every pipeline stage add up to
 *                     w·E/(L·T·K)·⟨c_cat, mean_t p_cat⟩ (moe_megablocks_batched_loss
 *                     computes the concatenated form directly).
 *   z                 ST-MoE router z-loss: mean over valid tokens of
 *                     (logsumexp_i z_{t,i})². Under tp×cp each rank uses the
 *                     coefficient α/|tp×cp| (the router applies that rule).
 *
 * The 1/K in f: every preset and reference here uses it (Megatron, OLMo-core,
 * MegaBlocks, DeepSeek-V3 eq. 18, Qwen/"Demons in the Detail", torchtitan).
 * Some libraries omit it (HF transformers' Mixtral-style loss sums the per-slot
 * fractions), giving K × the canonical value: options.k_in_f = false
 * reproduces that convention.
 *
 * Conventions (options.convention): MOE_CONVENTION_EXACT is every form above.
 * MOE_CONVENTION_MEGATRON reproduces Megatron-Core's arithmetic: sequence
 * uses one length for all N sequences, T̄ = Σ_{n,i} c_{n,i}/(K·N), and the
 * mean over all N; global-batch takes f_i = (c_i^acc/M)/(K·T_cur), M the
 * micro-batches accumulated and T_cur this micro-batch's tokens over the
 * tracker's group. Equal lengths and equal micro-batches make both agree.
 *
 * Which routing map counts: by default the plain top-k of the loss scores
 * (unbiased, not group-limited, not capacity-dropped; Megatron, DeepSeek-V3);
 * pass options.routing_ids [T K] to count the actual routing instead
 * (OLMo-core, torchtitan, MegaBlocks). Padding: options.valid (true = real
 * token); padded tokens contribute neither counts nor scores, and T counts
 * valid tokens only. A scope without valid tokens contributes 0. */
#ifndef MOELAB_MOE_AUX_LOSS_H
#define MOELAB_MOE_AUX_LOSS_H

#include <stdbool.h>
#include <stdint.h>

#include "../autograd.h"
#include "../dist/comm.h"
#include "../tensor.h"
#include "route_modes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- names ------------------------------------------------------------------ */

/* Which framework's arithmetic the losses and the capacity report follow. */
typedef enum moe_convention {
    MOE_CONVENTION_EXACT,    /* moelab's exact forms (default) */
    MOE_CONVENTION_MEGATRON, /* Megatron-Core's: sequence loss with the average valid
                                length, global-batch counts averaged over the
                                micro-batches seen and normalised by the current
                                micro-batch's tokens, capacity reported unclamped */
    MOE_CONVENTION_COUNT
} moe_convention;
const char *moe_convention_name(moe_convention c); /* "exact" "megatron" */
bool moe_convention_parse(const char *name, moe_convention *out);

typedef enum moe_aux_kind {
    MOE_AUX_MICRO_BATCH,      /* "micro-batch" */
    MOE_AUX_SEQUENCE,         /* "sequence" */
    MOE_AUX_GLOBAL_BATCH,     /* "global-batch" */
    MOE_AUX_OLMO_LOCAL_BATCH, /* "olmo-local-batch" */
    MOE_AUX_OLMO_INSTANCE,    /* "olmo-instance" */
    MOE_AUX_MEGABLOCKS,       /* "megablocks" */
    MOE_AUX_Z,                /* "z" */
    MOE_AUX_KIND_COUNT
} moe_aux_kind;
const char *moe_aux_kind_name(moe_aux_kind k);
bool moe_aux_kind_parse(const char *name, moe_aux_kind *out);
/* True for the kinds built on per-sequence scopes (sequence, olmo-instance). */
bool moe_aux_kind_is_sequence(moe_aux_kind k);

/* ---- balance tracker (global-batch counts) -----------------------------------
 * Accumulates routing counts and valid-token totals for the global-batch loss.
 * Each global-batch loss evaluation all-reduces this micro-batch's [E] counts
 * and token count over the tracker's groups (only that E+1 vector moves) and
 * adds them to the buffer; the loss then uses the buffer. Buffer mode (the
 * default) keeps accumulating across the micro-batches of an optimizer step
 * until moe_balance_tracker_reset(); with buffer mode off the buffer holds just
 * the current micro-batch (counts over the group only).
 *
 * Recomputation (activation checkpointing) must not advance the buffer: while
 * recomputing is set, an evaluation adds nothing and uses the buffer exactly as
 * the original forward of the same micro-batch saw it (snapshots are replayed
 * in forward order, which is the order 1F1B and GPipe recompute in). */
typedef struct moe_balance_tracker moe_balance_tracker;

/* GROUP (may be NULL) is the data-parallel group sharing the optimizer step
 * (dp×cp×tp as one group, or dp alone with moe_balance_tracker_add_group for
 * the other factors). The tracker takes a reference to each group. */
moe_status moe_balance_tracker_new(moe_balance_tracker **out, int64_t experts, moe_group *group);
/* Add another factor group: counts are summed over each group in turn (the
 * groups of orthogonal mesh dims: cp, tp, dp). At most 4 groups. */
moe_status moe_balance_tracker_add_group(moe_balance_tracker *tr, moe_group *group);
void moe_balance_tracker_free(moe_balance_tracker *tr);
/* End of optimizer step: clear the buffer, the snapshots and the micro-batch count. */
void moe_balance_tracker_reset(moe_balance_tracker *tr);
void moe_balance_tracker_set_buffer(moe_balance_tracker *tr, bool buffer);
bool moe_balance_tracker_buffer(const moe_balance_tracker *tr);
void moe_balance_tracker_set_recomputing(moe_balance_tracker *tr, bool recomputing);
int64_t moe_balance_tracker_experts(const moe_balance_tracker *tr);
/* Micro-batches accumulated since the last reset. */
int64_t moe_balance_tracker_micro_batches(const moe_balance_tracker *tr);
/* The buffer: counts [E] f64 (a new tensor) and the accumulated valid tokens. */
moe_status moe_balance_tracker_counts(moe_tensor **counts, double *tokens,
                                      const moe_balance_tracker *tr);
/* Add counts [E] (any numeric dtype) and TOKENS from elsewhere, without any
 * collective: e.g. the other data-parallel ranks' counts given as explicit
 * per-rank tensors when no process group is at hand. */
moe_status moe_balance_tracker_add_counts(moe_balance_tracker *tr, moe_tensor *counts,
                                          double tokens);
/* Replace the buffer (checkpoint load): counts [E], tokens, micro-batches. */
moe_status moe_balance_tracker_load(moe_balance_tracker *tr, moe_tensor *counts, double tokens,
                                    int64_t micro_batches);

/* ---- standalone losses ---------------------------------------------------------- */

typedef struct moe_aux_options {
    int64_t top_k;            /* K (required, >= 1) */
    moe_score_fn score;       /* loss scores: softmax or normalised sigmoid */
    double sigmoid_eps;       /* ε in s/(Σ s + ε) (default 1e-20, Megatron) */
    double score_offset;      /* added to σ(z) before use (OLMo-core: 1e-7; default 0) */
    moe_tensor *valid;        /* bool (or any numeric) [T] or [B S]; NULL: all valid */
    moe_tensor *doc_bounds;   /* i64 [N+1] document starts 0 = b_0 < … < b_N = T over the
                                 flattened tokens (packed input: sequence = document); NULL:
                                 each row of [B S E] is one sequence */
    moe_tensor *routing_ids;  /* i64 [T K] actual routing to count; NULL: top-k of the scores */
    moe_group *group;         /* counts and token totals summed over it (tp×cp); NULL: local */
    moe_balance_tracker *tracker; /* global-batch (required there) */
    double loss_div_factor;   /* OLMo-core divisor override; 0: the default */
    int64_t num_layers;       /* MegaBlocks: the model's total MoE layer count (default 1) */
    bool k_in_f;              /* true (default): canonical f = c/(K·T); false: value × K */
    moe_convention convention; /* sequence and global-batch arithmetic (default exact) */
} moe_aux_options;

/* Defaults: top_k 1, softmax, sigmoid_eps 1e-20, num_layers 1, k_in_f true,
 * everything else 0/NULL. */
void moe_aux_options_default(moe_aux_options *o);

/* The unscaled loss KIND of LOGITS ([T E], or [B S E]) as a 0-d tensor. KIND
 * may be any balance variant; MOE_AUX_Z is the z-loss (options other than
 * valid ignored). Errors: K < 1 or K > E, a sequence kind on [T E] without
 * doc_bounds, a valid mask or routing ids of the wrong shape, NaN/Inf logits,
 * global-batch without a tracker or with a tracker of another E. */
moe_status moe_load_balancing_loss(moe_tensor **out, moe_aux_kind kind, moe_tensor *logits,
                                   const moe_aux_options *options);

/* mean over valid tokens of (logsumexp z_t)²; VALID may be NULL. */
moe_status moe_z_loss(moe_tensor **out, moe_tensor *logits, moe_tensor *valid);
/* The same with the sum over valid tokens divided by DIV instead (DIV > 0;
 * OLMo-core passes the balancing loss's divisor); DIV = 0 is the mean. */
moe_status moe_z_loss_div(moe_tensor **out, moe_tensor *logits, moe_tensor *valid, double div);

/* MegaBlocks' batched loss over the N layers of one pipeline stage, each with
 * its logits [T E] (same T) and, optionally, its actual routing ids [T K]
 * (ROUTING_IDS may be NULL, or hold NULLs: top-k of the scores):
 *     w·E/(L·T·K)·⟨c_cat, mean_t p_cat⟩  with w = 1 and L = options.num_layers. */
moe_status moe_megablocks_batched_loss(moe_tensor **out, int n, moe_tensor *const *logits,
                                       moe_tensor *const *routing_ids,
                                       const moe_aux_options *options);

#ifdef __cplusplus
}
#endif
#endif
