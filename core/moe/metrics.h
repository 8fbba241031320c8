/* metrics.h — per-layer, per-step routing metrics and their logging
 * reductions (the manual, "Routers and balancing losses").
 *
 * Windows: "batch" is the last forward (micro-batch) of the router; "step" is
 * everything this rank routed since the last moe_router_step or, when that
 * is nothing yet, the step window that moe_router_step closed (so metrics
 * read right after a step describe the step that just ended); "global" is
 * the last completed step summed over cp, tp and dp (made by
 * moe_router_step). A window without tokens reports its counts (zeros) and
 * NaN for every statistic: no data, not "all experts dead".
 * Counts are of the actual routing after capacity dropping, valid tokens only.
 * Scores for entropy and selected mass are the loss scores p (softmax, or
 * sigmoid normalised per token). */
#ifndef MOELAB_MOE_METRICS_H
#define MOELAB_MOE_METRICS_H

#include "aux_loss.h"
#include "router.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- balance statistics of a count vector (no grad) -------------------------------- */

typedef struct moe_balance_stats {
    double max_violation; /* (max_i c_i − mean c)/mean c   (MaxVio) */
    double cv;            /* std(c)/mean(c), population std */
    double max_over_mean; /* max_i c_i / mean c */
    double dead_fraction; /* fraction of experts with c_i == 0 */
    double total;         /* Σ c_i */
} moe_balance_stats;

/* Statistics of COUNTS [E] (any numeric dtype; finite, non-negative). All
 * zero counts: ratios are 0, dead_fraction 1. */
moe_status moe_balance_stats_compute(moe_balance_stats *out, moe_tensor *counts);
/* MaxVio of COUNTS [E] alone. */
moe_status moe_max_violation(double *out, moe_tensor *counts);

typedef struct moe_router_metrics {
    moe_tensor *tokens_per_expert;        /* [E] f64, batch window */
    moe_tensor *tokens_per_expert_step;   /* [E] f64, step window (local) */
    moe_tensor *tokens_per_expert_global; /* [E] f64, last completed step (NULL before one) */
    moe_tensor *bias;                     /* [E] f32 copy of the expert bias (NULL without) */
    double max_violation_batch;           /* MaxVio of the batch counts (NaN: no tokens) */
    double max_violation_step;            /* MaxVio of the step counts (local; NaN: no tokens) */
    double max_violation_global;          /* MaxVio of the global counts (NaN before a step) */
    double cv;                            /* std/mean of the step counts (this and below: NaN
                                             when the step window has no tokens) */
    double max_over_mean;                 /* max/mean of the step counts */
    double dead_fraction;                 /* experts with no token in the step */
    double entropy;                       /* mean_t H(p_t)/log E over the step's tokens */
    double selected_mass;                 /* mean_t Σ_k p_{t,id_k} over the step's tokens */
    double dropped_fraction;              /* dropped slots / (K·tokens) in the step */
    int n_aux;
    moe_aux_kind aux_kind[MOE_ROUTER_MAX_LOSSES];
    double aux_value[MOE_ROUTER_MAX_LOSSES]; /* unscaled, mean over the step's micro-batches
                                                (this rank's partial value under tp×cp) */
    int64_t micro_batches;                /* forwards in the step window */
    int64_t tokens;                       /* valid tokens in the step window */
    int64_t step;                         /* completed optimizer steps */
    bool step_ended;                      /* the step window is the one the last step closed */
} moe_router_metrics;

/* Fill OUT (caller frees with moe_router_metrics_release). No collectives. */
moe_status moe_router_metrics_get(moe_router_metrics *out, moe_router *r);
void moe_router_metrics_release(moe_router_metrics *m);

/* Logged values of a model: the N routers this rank holds, at layer indices
 * LAYER_IDS among N_LAYERS MoE layers. Reductions (spec §5): the step-window
 * tokens-per-expert rows are summed over the pipeline group PP into
 * TABLE [N_LAYERS E] f64 (layers held elsewhere arrive through the sum); each
 * variant's value (averaged over micro-batches by the router) is summed over
 * the loss's group (cp then tp, where the partial losses live; a z value, a
 * whole per-rank mean, enters as value/|tp×cp|), averaged over
 * dp (this also turns the global-batch value, computed with local scores on
 * each replica, into the global one), summed over PP and averaged over the
 * N_LAYERS layers into AUX_VALUES[kind] (NaN for kinds no router has). The
 * groups are those of ROUTERS[0]. Collective over pp, cp, tp and dp. */
moe_status moe_router_log_reduce(moe_tensor **table, double aux_values[MOE_AUX_KIND_COUNT],
                                 int n, moe_router *const *routers, const int64_t *layer_ids,
                                 int64_t n_layers, moe_group *pp);

#ifdef __cplusplus
}
#endif
#endif
