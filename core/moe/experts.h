/* experts.h — E independent expert MLPs over expert-contiguous rows.
 *
 * Dimension letters: E experts, N rows (expert e owns a contiguous block of
 * group_sizes[e] rows, in expert order), D model dim, F expert ffn dim.
 *
 * Weights are stored per expert, stacked (the layout the MoE layer's
 * parameter names promise):
 *   SwiGLU  w_gate [E D F], w_up [E D F], w_down [E F D]:
 *           y_e(x) = (silu(x·Wg_e + bg_e) ⊙ (x·Wu_e + bu_e))·Wd_e + bd_e
 *   GELU    w_up [E D F], w_down [E F D]:
 *           y_e(x) = gelu(x·Wu_e + bu_e)·Wd_e + bd_e
 * Biases b_gate, b_up [E F] and b_down [E D] are optional.
 *
 * moe_grouped_mlp is one fused autograd node: the forward runs one BLAS call
 * per non-empty expert and GEMM (groups side by side on the OpenMP threads
 * when they are small, else one at a time with threaded BLAS; see
 * kernels/cpu/grouped_gemm.h) and saves the pre-activations; the backward
 * recomputes the activation in the same pass that forms its derivative
 * (no [N F] activation is kept between forward and backward) and produces
 * the gradients of the rows, every weight and every bias (experts with no
 * rows get zero gradients). */
#ifndef MOELAB_MOE_EXPERTS_H
#define MOELAB_MOE_EXPERTS_H

#include <stdbool.h>
#include <stdint.h>

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_activation {
    MOE_ACT_SWIGLU,    /* "swiglu" */
    MOE_ACT_GELU,      /* "gelu" (erf) */
    MOE_ACT_GELU_TANH, /* "gelu-tanh" */
    MOE_ACTIVATION_COUNT
} moe_activation;

const char *moe_activation_name(moe_activation a);
/* Parse "swiglu", "gelu", "gelu-tanh"; false when unknown. */
bool moe_activation_parse(const char *name, moe_activation *out);
/* True when the activation has a gate projection (w_gate). */
bool moe_activation_gated(moe_activation a);

/* OUT [N D] = expert e's MLP applied to its block of X [N D], for every e.
 * GROUP_SIZES [E] (>= 0) sum to N; E is the leading dim of W_UP. W_GATE is
 * required for SwiGLU and must be NULL otherwise; biases may be NULL. Float
 * dtypes: computes in X's compute dtype (f32 or f64; weights are converted
 * when they differ, their gradients converted back). Differentiable in X,
 * every weight and every bias. */
moe_status moe_grouped_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *w_gate, moe_tensor *w_up,
                           moe_tensor *w_down, moe_tensor *b_gate, moe_tensor *b_up,
                           moe_tensor *b_down, const int64_t *group_sizes, moe_activation act);

/* ---- expert parallelism (core/moe/expert_parallel.c) -------------------------------
 * The same computation with the experts sharded over the P ranks of EP: rank
 * r holds experts r·El .. r·El+El-1 (El = E/P; the weights passed are that
 * shard, [El D F] ...). X [N D] holds this rank's rows in GLOBAL expert order,
 * GROUP_SIZES [E] their counts (E = El·P). The row counts are exchanged with
 * an all-to-all, the rows sent with an uneven all-to-all, regrouped here by
 * local expert (rows from rank 0 first), run through the local experts, put
 * back in arrival order and returned with the reverse all-to-all: OUT [N D]
 * is in X's order and equals moe_grouped_mlp over all E experts. Collective
 * over EP (every rank calls it, in the same order); differentiable end to
 * end (gradients reach the other ranks' rows and this rank's weights sum the
 * contributions of every rank's rows). A NULL or one-rank EP is
 * moe_grouped_mlp. */
typedef struct moe_group moe_group;
moe_status moe_ep_grouped_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *w_gate, moe_tensor *w_up,
                              moe_tensor *w_down, moe_tensor *b_gate, moe_tensor *b_up,
                              moe_tensor *b_down, const int64_t *group_sizes, moe_activation act,
                              moe_group *ep);

/* ---- the experts as a module (owns its parameters) --------------------------------- */

typedef struct moe_experts {
    moe_activation activation;
    int64_t E, D, F;
    int64_t first;      /* global index of expert 0 here (expert parallelism) */
    moe_dtype dtype;
    moe_tensor *w_gate; /* [E D F] (NULL unless gated) */
    moe_tensor *w_up;   /* [E D F] */
    moe_tensor *w_down; /* [E F D] */
    moe_tensor *b_gate, *b_up, *b_down; /* [E F] [E F] [E D], NULL without biases */
} moe_experts;

/* E experts (global indices FIRST .. FIRST+E-1) of D -> F -> D, parameters
 * in DTYPE (f32 or f64) requiring grad: w_gate, w_up ~ N(0, 1/D), w_down ~
 * N(0, 1/F), biases zero. Expert e's weights depend only on SEED and its
 * global index, so a shard of experts equals the same experts of an
 * unsharded set. */
moe_status moe_experts_new(moe_experts **out, int64_t E, int64_t first, int64_t D, int64_t F,
                           moe_activation act, bool bias, moe_dtype dtype, uint64_t seed);
void moe_experts_free(moe_experts *ex); /* NULL is fine */
/* moe_grouped_mlp with the module's parameters. */
moe_status moe_experts_forward(moe_tensor **out, moe_experts *ex, moe_tensor *x,
                               const int64_t *group_sizes);

#ifdef __cplusplus
}
#endif
#endif
