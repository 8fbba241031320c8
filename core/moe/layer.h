/* layer.h — the MoE layer: router + dispatch + grouped experts + combine
 * (+ shared experts), on one rank or with the experts sharded over an
 * expert-parallel group.
 *
 * Dimension letters: T tokens (B·S for [B S D] input, b-major), D hidden, F
 * expert ffn dim, Fs shared ffn dim, E experts, El experts on this rank, K
 * top-k, N dispatched rows.
 *
 *     moe_layer_config cfg;
 *     moe_layer_config_default(&cfg);
 *     cfg.hidden = 512; cfg.ffn = 1024; cfg.experts = 8; cfg.top_k = 2;
 *     cfg.router.score = MOE_SCORE_SIGMOID;          // any router option
 *     moe_layer *moe;
 *     moe_layer_new(&moe, &cfg);
 *     moe_tensor *y;
 *     moe_layer_forward(&y, moe, x, NULL);            // [T D] or [B S D] -> same shape
 *     const moe_routing *r = moe_layer_last_routing(moe);   // weights, experts, counts, drops
 *     moe_backward(loss, NULL, false);                // grads of x, router.weight, experts.*
 *
 * The forward: the router gives weights [T K], expert ids [T K] and the kept
 * mask [T K] (capacity drops, padding); the dispatch plan sorts the kept
 * slots by expert (core/moe/dispatch.h), the rows are permuted into expert
 * order, every expert runs its block (one fused grouped-MLP node,
 * core/moe/experts.h) and the outputs are combined back:
 *     out[t] = Σ_k w[t k] · y_{e[t k]}(x[t])  (+ shared(x[t]), gated by σ(x[t]·g))
 * Capacity mode follows the router's capacity and drop decisions (dropped
 * slots contribute zero and are counted), with padding to capacity when the
 * router is configured to pad; otherwise the layer is dropless.
 *
 * Parameters and their names (the contract the Scheme API and outside tests
 * rely on; every one a leaf requiring grad):
 *     "router.weight"   [E D]    (the router's dtype; f32 by default)
 *     "experts.w-gate"  [E D F]  (gated activations only: SwiGLU)
 *     "experts.w-up"    [E D F]
 *     "experts.w-down"  [E F D]
 *     "experts.b-gate" [E F], "experts.b-up" [E F], "experts.b-down" [E D]   (with bias)
 *     "shared.w-gate"   [D Fs]   (SwiGLU)   "shared.w-up" [D Fs]   "shared.w-down" [Fs D]
 *     "shared.b-gate" [Fs], "shared.b-up" [Fs], "shared.b-down" [D]          (with bias)
 *     "shared.gate"     [D 1]    (with shared_gate: out += σ(x·g) ⊙ shared(x))
 * SwiGLU experts compute y_e(x) = (silu(x·Wg_e) ⊙ (x·Wu_e))·Wd_e; GELU ones
 * y_e(x) = gelu(x·Wu_e)·Wd_e. Under expert parallelism the "experts.*"
 * tensors of a rank are its shard, [El ...] for experts r·El .. r·El+El-1
 * (set_parameter takes either the shard or the full [E ...] tensor). The
 * router and shared experts are replicated: their gradients on each rank
 * cover that rank's tokens (reduce them over data parallelism as usual).
 *
 * On a CUDA device (config.device): the expert and shared parameters live
 * on the GPU (permute, grouped MLP and combine run there); the router stays
 * on the host — its weight is a CPU tensor and it reads a host copy of the
 * input (a differentiable moe_to_device), its combine weights go back to the
 * GPU. So moe_layer_last_routing and moe_layer_aux_loss are CPU tensors.
 * CUDA layers are f32 without biases and without expert parallelism for now.
 *
 * Scheme mapping: (make-moe-layer #:hidden #:ffn #:experts #:top-k
 * #:activation #:shared-experts #:shared-ffn #:shared-gate? #:bias? #:dtype
 * #:router-options #:ep-group #:seed #:device) fills moe_layer_config field by field;
 * moe-forward = moe_layer_forward; moe-last-routing = moe_layer_last_routing
 * (+ moe_layer_last_dispatch); moe-parameters = moe_layer_parameter_count /
 * moe_layer_parameter; set-moe-parameter! = moe_layer_set_parameter. */
#ifndef MOELAB_MOE_LAYER_H
#define MOELAB_MOE_LAYER_H

#include <stdbool.h>
#include <stdint.h>

#include "dispatch.h"
#include "experts.h"
#include "router.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_layer_config {
    int64_t hidden;            /* D */
    int64_t ffn;               /* F */
    int64_t experts;           /* E */
    int64_t top_k;             /* K */
    moe_activation activation; /* SwiGLU (default), GELU, GELU-tanh */
    int64_t shared_experts;    /* Ns: one always-on MLP of width Ns·F (0: none) */
    int64_t shared_ffn;        /* Fs override (0: Ns·F) */
    bool shared_gate;          /* sigmoid gate on the shared output (Qwen) */
    bool bias;                 /* biases in the expert and shared MLPs */
    moe_dtype dtype;           /* expert and shared parameters: f32 (default) or f64 */
    moe_router_config router;  /* router options; hidden, experts, top_k and seed are
                                  overwritten from the fields above */
    moe_group *ep_group;       /* experts sharded over this group (NULL: none); retained */
    uint64_t seed;             /* parameter initialisation */
    moe_device device;         /* where the expert and shared parameters live (MOE_CPU) */
} moe_layer_config;

/* Defaults: SwiGLU, no shared experts, no bias, f32, the router's defaults
 * (moe_router_config_default), no expert parallelism, seed 0, CPU; hidden, ffn,
 * experts and top_k are 0 and must be set. */
void moe_layer_config_default(moe_layer_config *cfg);

typedef struct moe_layer moe_layer;

/* A layer with freshly initialised parameters: the router's (see router.h),
 * expert w_gate/w_up ~ N(0, 1/D), w_down ~ N(0, 1/F), shared likewise (its
 * own streams), biases zero, shared.gate ~ N(0, 1/D). Expert e's weights
 * depend only on SEED and e, so an expert-parallel layer holds exactly the
 * shard of the single-rank layer with the same seed. Fails on an invalid
 * configuration (the router's checks, E % |ep| != 0, sizes < 1, dtype), and
 * on a device that is not available (cuda without a GPU or without CUDA
 * support in the build). Parameters are drawn on the host and then moved,
 * so a CUDA layer starts from exactly the CPU layer's values. */
moe_status moe_layer_new(moe_layer **out, const moe_layer_config *cfg);
void moe_layer_free(moe_layer *l); /* NULL is fine */
const moe_layer_config *moe_layer_get_config(const moe_layer *l);
/* The router (borrowed): metrics (metrics.h), moe_router_step, options. */
moe_router *moe_layer_router(moe_layer *l);
/* Experts held here (borrowed): El = E / |ep| of them from expert first. */
moe_experts *moe_layer_experts(moe_layer *l);

/* OUT = the layer applied to X [T D] or [B S D] (float; same shape and dtype
 * out). VALID ([T] or [B S] bool, true = real token; NULL = all real) is
 * passed to the router: padding tokens get no expert (only the shared MLP).
 * Records the routing for moe_layer_last_routing; the router's aux losses
 * ride along (inject mode) or are in moe_layer_aux_loss (add mode). With an
 * ep group: collective over it. */
moe_status moe_layer_forward(moe_tensor **out, moe_layer *l, moe_tensor *x, moe_tensor *valid);

/* The routing of the last forward (borrowed, valid until the next forward or
 * moe_layer_free; NULL before the first): weights [T K], experts [T K], kept
 * [T K], counts [E], dropped, capacity, aux losses (router.h). */
const moe_routing *moe_layer_last_routing(const moe_layer *l);
/* The dispatch plan of the last forward (borrowed, same lifetime): kept rows
 * per expert, block offsets, dropped slots (dispatch.h). */
const moe_dispatch *moe_layer_last_dispatch(const moe_layer *l);
/* Σ coeff·aux of the last forward (borrowed; NULL without losses or before
 * the first forward). In the router's add mode it is differentiable and the
 * caller adds it to the model loss; in inject mode it is the value only. */
moe_tensor *moe_layer_aux_loss(const moe_layer *l);

/* Parameters, in a fixed order (the order of the list above, absent ones
 * skipped). NAME and T are borrowed. */
int moe_layer_parameter_count(const moe_layer *l);
moe_status moe_layer_parameter(const moe_layer *l, int i, const char **name, moe_tensor **t);
/* The parameter called NAME (borrowed), or NULL. */
moe_tensor *moe_layer_parameter_get(const moe_layer *l, const char *name);
/* Copy VALUE (any float dtype, exactly the parameter's shape — or, for
 * "experts.*" under expert parallelism, the full [E ...] tensor, of which
 * this rank's shard is taken) into the parameter NAME; its grad is dropped.
 * Unknown names fail listing the known ones. */
moe_status moe_layer_set_parameter(moe_layer *l, const char *name, moe_tensor *value);
/* Drop the gradients of every parameter. */
void moe_layer_zero_grad(moe_layer *l);
/* Training mode (the router's jitter, loss and counters). */
void moe_layer_set_training(moe_layer *l, bool training);

#ifdef __cplusplus
}
#endif
#endif
