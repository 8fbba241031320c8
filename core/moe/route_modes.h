/* route_modes.h — the modes of a routing pass: score functions, forced
 * debug routing, and how the routing weights are made from the selection.
 *
 * A vocabulary header, like dtype.h: the router (core/moe) and its kernels
 * (kernels/cpu/router.c, kernels/cuda/router.cu) take these values as they
 * are, so there is one definition and nothing to keep in step. Plain C,
 * also read by nvcc. */
#ifndef MOELAB_MOE_ROUTE_MODES_H
#define MOELAB_MOE_ROUTE_MODES_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_score_fn {
    MOE_SCORE_SOFTMAX,
    MOE_SCORE_SIGMOID,
    MOE_SCORE_SQRTSOFTPLUS, /* s = √softplus(z) (Megatron-Core); handled like sigmoid:
                               loss scores s/(Σ s + ε), renormalised weights */
    MOE_SCORE_FN_COUNT
} moe_score_fn;
const char *moe_score_fn_name(moe_score_fn f); /* "softmax", "sigmoid", "sqrtsoftplus" */
bool moe_score_fn_parse(const char *name, moe_score_fn *out);
/* True for the score functions whose loss scores are s/(Σ_j s_j + ε). */
static inline bool moe_score_is_normalized(moe_score_fn f) { return f != MOE_SCORE_SOFTMAX; }

typedef enum moe_debug_routing {
    MOE_DEBUG_NONE,
    MOE_DEBUG_UNIFORM,   /* ids = arange(T·K) mod E, row-major [T K] */
    MOE_DEBUG_IMBALANCE, /* seeded skew: expert e drawn with weight ∝ exp(−skew·e/E) */
    MOE_DEBUG_RANDOM,    /* the logits replaced by seeded uniform random numbers in [0, 1)
                            (Megatron's forced load balancing); no gradient reaches W */
    MOE_DEBUG_ROUTING_COUNT
} moe_debug_routing;
const char *moe_debug_routing_name(moe_debug_routing d); /* "none" "uniform" "imbalance" "random" */
bool moe_debug_routing_parse(const char *name, moe_debug_routing *out);

/* How the routing weights are made from the selected experts. */
typedef enum moe_wmode {
    MOE_WMODE_POST_SOFTMAX, /* softmax over the selected logits */
    MOE_WMODE_GATHER,       /* u_k = s[id_k] (the base scores), then normalised */
} moe_wmode;

/* How gathered weights are normalised: not, by their sum + ε, by their p-norm. */
typedef enum moe_wnorm { MOE_WNORM_NONE, MOE_WNORM_SUM, MOE_WNORM_PNORM } moe_wnorm;

#ifdef __cplusplus
}
#endif
#endif
