/* router.h — the fused router kernel on the GPU (C API; device pointers).
 *
 * One pass over the gate logits z [T E] (f32 or bf16 in, f32 math; one warp
 * per token row) gives everything kernels/cpu/router.c and the loss statistics
 * of core/moe/aux_loss.c compute on the CPU for one micro-batch:
 *   base scores s (softmax, or σ(z) + offset), the selection (on z for
 *   post-softmax, else on s; + expert bias; group-limited with the group
 *   score = sum of the group's top-m entries), the routing weights
 *   (post-softmax over the K, or gathered s renormalised by Σ + eps or the
 *   p-norm; times the scaling factor; 0 on invalid rows), the actual counts
 *   and the counting top-k's counts, the summed loss scores P_i (softmax s,
 *   or s/(Σ s + ε)), and the z-loss partial Σ lse².
 * Top-k order and ties are the CPU's: descending value, equal values keep
 * the lower index first. Sums over tokens are per-block partials reduced
 * in a fixed order (the grid depends on T and E only): bit-identical runs.
 * Counts are integer atomics (exact).
 *
 * The backward is one pass too: dz from the gradient of the final weights
 * plus the balance-loss term J_p(z)ᵀ W (W [E] the per-expert coefficients,
 * already multiplied by the loss coefficient and the inject scale, see
 * moe_cuda_router_balance_coeffs) and the z-loss term.
 *
 * Not covered here (the CPU router keeps them): Sinkhorn, debug routing,
 * capacity dropping, per-sequence scopes, entropy/mass metrics.
 *
 * Dimension letters: T tokens, E experts (<= MOE_CUDA_ROUTER_MAX_E),
 * K top-k, G expert groups. */
#ifndef MOELAB_CUDA_ROUTER_H
#define MOELAB_CUDA_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/error.h"
#include "../../core/moe/route_modes.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_CUDA_ROUTER_MAX_E 2048

typedef struct moe_cuda_router_args {
    int64_t T, E, K;
    bool z_bf16;              /* z (and dz) dtype: bf16, else f32 */
    const void *z;            /* [T E] contiguous */
    const uint8_t *valid;     /* [T] or NULL (all valid) */
    moe_score_fn score;       /* softmax or sigmoid (not sqrtsoftplus) */
    double score_offset;      /* added to σ(z) */
    double loss_eps;          /* ε of the sigmoid loss scores s/(Σ s + ε) */
    bool select_on_logits;    /* post-softmax: select on z */
    moe_wmode wmode;
    moe_wnorm wnorm;
    double norm_eps, norm_p;
    double scaling;           /* multiplies the final weights */
    const float *bias;        /* [E] selection bias or NULL */
    int64_t groups, group_topk, group_m; /* G (0: none), groups kept, top-m of a group score */
    bool count_topk;          /* loss counts from the plain top-k of s (else the selection) */
} moe_cuda_router_args;

typedef struct moe_cuda_router_out {
    float *s;                 /* [T E] base scores, or NULL */
    int64_t *ids;             /* [T K] selected experts (required) */
    float *weights;           /* [T K] scaling·wu, 0 on invalid rows (required) */
    float *lse;               /* [T] logsumexp z, or NULL */
    int32_t *counts;          /* [E] selected slots of valid rows (required) */
    int32_t *loss_counts;     /* [E] counting top-k of valid rows, or NULL */
    double *stats;            /* [E+2]: P_0..P_{E-1}, Σ lse², valid tokens (required) */
    int32_t *bad_rows;        /* [1] rows holding NaN/Inf (required) */
    void *work;               /* moe_cuda_router_workspace(T, E, G) bytes */
} moe_cuda_router_out;

/* Workspace bytes of the forward (per-block partial sums). */
size_t moe_cuda_router_workspace(int64_t T, int64_t E, int64_t G);

/* The forward pass (launches on the backend stream; no synchronisation).
 * Errors: E above MOE_CUDA_ROUTER_MAX_E, K > E, bad groups. */
moe_status moe_cuda_router_forward(const moe_cuda_router_args *a, const moe_cuda_router_out *o);

/* W [E] = alpha·E/(K·Tv²)·C_i with C = COUNTS [E] and Tv = STATS[E+1] (the
 * canonical micro-batch form, coefficient alpha: pass α times the inject
 * scale). Device side, no synchronisation. */
moe_status moe_cuda_router_balance_coeffs(float *W, const int32_t *counts, const double *stats,
                                          int64_t E, int64_t K, double alpha);

typedef struct moe_cuda_router_grad {
    const int64_t *ids;       /* [T K] from the forward */
    const uint8_t *kept;      /* [T K] or NULL (kept = valid row) */
    const float *dweights;    /* [T K] gradient of the final weights, or NULL */
    const float *aux_w;       /* [E] balance coefficients W, or NULL */
    const double *stats;      /* the forward's stats (valid tokens for the z term) */
    double z_coeff;           /* α_z times the inject scale (0: no z term) */
    void *dz;                 /* [T E] output, z's dtype; fully written */
} moe_cuda_router_grad;

/* The backward pass: dz = J(z)ᵀ d(weights) + J_p(z)ᵀ W + z_coeff·2·lse/Tv·softmax(z). */
moe_status moe_cuda_router_backward(const moe_cuda_router_args *a, const moe_cuda_router_grad *g);

#ifdef __cplusplus
}
#endif
#endif
