/* moe_internal.h — shared between the router, aux-loss, capacity, quantile
 * and metrics files; not installed.
 *
 * Dimension letters: T tokens, E experts, K top-k, G expert groups, N scopes
 * (segments: the micro-batch, or one per sequence/document).
 *
 * The loops over tokens, slots and logits are kernels (kernels/cpu: router,
 * balance, sinkhorn, quantile, capacity); these files validate, keep the
 * router's state, build the loss tables and record autograd. */
#ifndef MOELAB_MOE_INTERNAL_H
#define MOELAB_MOE_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../internal.h"
#include "aux_loss.h"
#include "router.h"

/* An allocation count that is never 0. */
#define MOE_NZ(n) ((size_t)((n) > 0 ? (n) : 1))

/* The routing kernels the router and the losses call (kernels/cpu/router.c). */
#include "../../kernels/cpu/router.h"

/* ---- capacity.c ------------------------------------------------------------------ */
/* Capacity per expert for VALID_T tokens; -1 when there is none (no factor, or
 * the MegaBlocks formula gave 0). Clamped to VALID_T (C >= T never drops). */
int64_t moe_capacity_of(const moe_router_config *cfg, int64_t valid_t);

/* ---- aux_loss.c: scopes, statistics, terms and the loss node ---------------------- */

/* Scopes: N contiguous token ranges [bounds[n], bounds[n+1]). */
typedef struct moe_scopes {
    int64_t n;
    int64_t *bounds; /* [N+1] */
} moe_scopes;
moe_status moe_scopes_single(moe_scopes *sc, const char *op, int64_t T);
/* Sequences: DOC_BOUNDS (i64 [N+1], checked) when given, else B rows of S. */
moe_status moe_scopes_sequences(moe_scopes *sc, const char *op, int64_t B, int64_t S,
                                moe_tensor *doc_bounds);
void moe_scopes_free(moe_scopes *sc);

/* Per-scope statistics: P [N E] summed loss scores, C [N E] counts, Tn [N]
 * valid tokens. */
typedef struct moe_scope_stats {
    int64_t n, E;
    double *P, *C, *Tn;
} moe_scope_stats;
moe_status moe_scope_stats_compute(moe_scope_stats *st, const char *op, const moe_scopes *sc, const void *s,
                                   moe_dtype dt, const double *rowsum, moe_score_fn score,
                                   double eps, const uint8_t *valid, const int64_t *count_ids,
                                   int64_t T, int64_t E, int64_t K);
void moe_scope_stats_free(moe_scope_stats *st);
/* Sum C and Tn of every scope over each group in turn (P stays local). */
moe_status moe_scope_stats_reduce(moe_scope_stats *st, const char *op, int n_groups, moe_group *const *groups);

/* A loss term: L = coeff·Σ_n Σ_i A[n][i]·P[n][i]; seg maps token → scope. */
typedef struct moe_aux_term_plan {
    moe_aux_kind kind;
    double coeff;
    int64_t n;
    double *A;        /* [N E] */
    int64_t *bounds;  /* [N+1] copy */
    double value;     /* unscaled Σ A·P */
} moe_aux_term_plan;
void moe_aux_term_plan_free(moe_aux_term_plan *tp);

/* Parameters shared by the A-table builders. */
typedef struct moe_aux_params {
    int64_t K;
    bool k_in_f;
    double loss_div_factor;
    int64_t num_layers;
    /* global-batch: accumulated counts [E] and tokens, and the micro-batch's
     * valid tokens summed over tp×cp */
    const double *acc_counts;
    double acc_tokens;
    double mb_tokens;
    moe_convention convention;
    /* global-batch under the megatron convention: micro-batches accumulated
     * (this one included) and this micro-batch's tokens over the counts' group */
    double acc_micro;
    double cur_tokens;
} moe_aux_params;
/* Build term KIND (not z) from reduced STATS; STATS must be of the kind's
 * scopes (single for batch kinds, sequences for sequence kinds). */
moe_status moe_aux_term_build(moe_aux_term_plan *tp, const char *op, moe_aux_kind kind, double coeff,
                              const moe_scope_stats *stats, const moe_scopes *sc,
                              const moe_aux_params *prm);

/* The z term: Σ over valid tokens of lse², divided by DIV (> 0) or, for DIV
 * = 0, by the number of valid tokens (the mean). */
typedef struct moe_z_plan {
    bool on;
    double coeff;
    double value;
    double n_valid; /* the divisor */
} moe_z_plan;
void moe_z_plan_compute(moe_z_plan *zp, const double *lse, const uint8_t *valid, int64_t T, double div);

/* Record the loss node: OUT (0-d, dtype of Z) = Σ_terms coeff·value (+ z),
 * differentiable in Z. S [T E] are the base scores (kept for backward), LSE
 * [T] (z term) is copied, VALID copied. Takes over the terms' tables. */
typedef struct moe_aux_node_spec {
    const char *op; /* the operation recording it, for its errors */
    moe_tensor *z, *s;
    const uint8_t *valid;
    const double *lse;
    moe_score_fn score;
    double eps, offset;
    int n_terms;
    moe_aux_term_plan *terms;
    moe_z_plan zterm;
} moe_aux_node_spec;
moe_status moe_aux_node_make(moe_tensor **out, moe_aux_node_spec *spec);

/* ---- tracker.c: the balance tracker, two-phase ------------------------------------ */
/* Reduce this micro-batch's COUNTS [E] and TOKENS over the tracker's groups
 * into RED [E+1] (collective; no state change). */
/* Sum BUF [n] over each of the N_GROUPS GROUPS in turn, in place (aux_loss.c). */
moe_status moe_reduce_doubles(double *buf, int64_t n, int n_groups, moe_group *const *groups);
/* Fails as OP unless the E counts C are finite and non-negative (aux_loss.c). */
moe_status moe_check_counts(const char *op, const double *c, int64_t E);
/* The ranks TR's counts are summed over: the product of its groups' sizes. */
int64_t moe_tracker_ranks(const moe_balance_tracker *tr);
/* Fails as OP when the ranks of TR's groups count different experts (collective). */
moe_status moe_tracker_check_experts(const moe_balance_tracker *tr, const char *op);
moe_status moe_tracker_reduce(moe_balance_tracker *tr, const double *counts, double tokens,
                              double *red);
/* The buffer the loss sees if RED [E+1] is committed: ACC [E+1] (in recompute
 * mode, the snapshot of the replayed forward). */
moe_status moe_tracker_view(moe_balance_tracker *tr, const char *op, const double *red, double *acc);
/* The micro-batches the buffer of moe_tracker_view holds (this one included). */
double moe_tracker_view_micro(const moe_balance_tracker *tr);
/* Apply RED (no-op while recomputing, which advances the replay cursor). */
moe_status moe_tracker_commit(moe_balance_tracker *tr, const char *op, const double *red);
bool moe_tracker_recomputing(const moe_balance_tracker *tr);
/* Raw buffer access for state save/load. */
const double *moe_tracker_buffer(const moe_balance_tracker *tr);

/* ---- quantile.c ------------------------------------------------------------------- */
/* β ← ema·β + (1 − ema)·QBAR, then re-centred to zero mean (f32). */
void moe_qb_update(float *beta, const double *qbar, int64_t E, double ema);

/* ---- replay.c ---------------------------------------------------------------------- */
/* IDS [T K] checked (shape, range, distinct in a row) into *OUT (malloc'd). */
moe_status moe_replay_ids_read(int64_t **out, moe_tensor *ids, int64_t T, int64_t K, int64_t E);
moe_status moe_replay_push_record(moe_router *r, moe_tensor *ids);
void moe_replay_free(moe_router *r);

/* ---- router.c: the router object, shared by its forward, state, replay and metrics ---- */

struct moe_router {
    moe_router_config cfg;
    moe_tensor *weight; /* [E D] */
    moe_tensor *bias;   /* [E] f32 or NULL */
    moe_group *tp, *cp, *dp;
    moe_balance_tracker *tracker;
    bool recomputing;
    /* noise streams: fresh counter, and the offsets each forward of the step
     * used (replayed in order while recomputing) */
    uint64_t rng_next;
    uint64_t *rec_offsets;
    moe_tensor **rec_given; /* the given expert ids of each recorded forward, or NULL */
    int64_t n_rec, cap_rec, rec_cursor;
    /* bias update: actual counts of the step (kept slots) */
    double *bias_counts;
    double bias_tokens;
    /* metrics */
    double *batch_counts;
    double batch_tokens;
    double *step_counts;
    double step_tokens, step_dropped, step_entropy, step_mass;
    int64_t step_micro;
    int n_aux;
    moe_aux_kind aux_kind[MOE_ROUTER_MAX_LOSSES];
    double step_aux[MOE_ROUTER_MAX_LOSSES];
    double *global_counts;
    bool have_global;
    int64_t steps;
    /* the local step window the last moe_router_step closed: the metrics
     * describe it until the next step routes something */
    double *ended_counts;
    double ended_tokens, ended_dropped, ended_entropy, ended_mass;
    int64_t ended_micro;
    double ended_aux[MOE_ROUTER_MAX_LOSSES];
    /* quantile balancing: β [E] f32, the step's summed quantiles [E] and their count */
    moe_tensor *qb_beta;
    double *qb_sum;
    double qb_micro;
    /* replay: the ids to play back (router-replay!) and the record */
    moe_tensor **replay_ids;
    int64_t n_replay, replay_cursor;
    moe_tensor **record;
    int64_t n_record, cap_record;
};

/* Forget the forwards recorded for recomputation (and their given ids). */
void moe_router_clear_recomputation(moe_router *r);
/* Copy SRC into the router tensor DST (same shape, floating), as OP, without
 * recording autograd. */
moe_status moe_router_copy_into(const char *op, moe_tensor *dst, moe_tensor *src);

#endif
