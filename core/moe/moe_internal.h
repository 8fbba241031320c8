/* moe_internal.h — shared between the router, aux-loss, capacity, sinkhorn
 * and metrics files; not installed.
 *
 * Dimension letters: T tokens, E experts, K top-k, G expert groups, N scopes
 * (segments: the micro-batch, or one per sequence/document).
 *
 * Row kernels compute in double whatever the storage dtype (f32 or f64), so
 * f32 results are the correctly rounded double results. Every reduction over
 * tokens runs in fixed chunks reduced in order: results do not depend on the
 * thread count. */
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

/* Tokens per chunk of the deterministic reductions. */
#define MOE_RCHUNK 256

/* Element I of a contiguous f32/f64 buffer, as a double. */
static inline double moe_ld(const void *p, moe_dtype dt, int64_t i)
{
    return dt == MOE_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}
static inline void moe_st(void *p, moe_dtype dt, int64_t i, double v)
{
    if (dt == MOE_F32) ((float *)p)[i] = (float)v;
    else ((double *)p)[i] = v;
}

/* exp and log at the precision of the storage dtype (f32 rows use expf/logf:
 * the results are stored in f32 anyway), arguments and results in double. */
static inline double moe_exp_dt(double x, moe_dtype dt)
{
    return dt == MOE_F32 ? (double)expf((float)x) : exp(x);
}
static inline double moe_log_dt(double x, moe_dtype dt)
{
    return dt == MOE_F32 ? (double)logf((float)x) : log(x);
}

/* √softplus(z), the sqrtsoftplus score (softplus in its overflow-safe form). */
static inline double moe_sqrtsoftplus(double z)
{
    return sqrt(z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)));
}

/* ds/dz of a normalised score function from the score s itself (OFFSET is
 * the constant added to it): sigmoid σ(1−σ); sqrtsoftplus σ(z)/(2u) with
 * u = √softplus(z), σ(z) = 1 − exp(−u²). */
static inline double moe_score_deriv(moe_score_fn f, double s, double offset)
{
    double u = s - offset;
    if (f == MOE_SCORE_SIGMOID) return u * (1.0 - u);
    return u > 0 ? -expm1(-u * u) / (2.0 * u) : 0.0;
}

/* ---- f32 fast path: vectorisable exp and log (relative error ~3e-7); the f32
 * rows use them, f64 rows use libm ---------------------------------------------- */

static inline float moe_fexp(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504f + 12582912.0f) - 12582912.0f; /* round(x/ln 2): 1.5·2^23 shift */
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-6f;
    float q = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666672e-1f + r * (4.16666679e-2f +
                                                 r * (8.33333377e-3f + r * 1.38888892e-3f)))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return q * scale;
}

static inline float moe_flog(float x) /* x >= FLT_MIN */
{
    int32_t i;
    memcpy(&i, &x, sizeof i);
    int32_t e = ((i >> 23) & 0xff) - 127, mi = (i & 0x007fffff) | 0x3f800000;
    float m;
    memcpy(&m, &mi, sizeof m); /* [1, 2) */
    int32_t big = m > 1.41421356f;
    m = big ? m * 0.5f : m;
    e += big;
    float f = m - 1.0f, u = f / (2.0f + f), u2 = u * u; /* log(1+f) = 2 atanh(u) */
    float r = 2.0f * u * (1.0f + u2 * (0.333333343f + u2 * (0.2f + u2 * (0.142857149f + u2 * 0.111111112f))));
    return r + (float)e * 0.693147182f;
}

/* The same on 4 lanes (GCC vector extensions: SSE2 on the x86-64 baseline). */
typedef float moe_v4f __attribute__((vector_size(16)));
typedef int32_t moe_v4i __attribute__((vector_size(16)));

static inline moe_v4f moe_vsel(moe_v4i mask, moe_v4f a, moe_v4f b) { return (moe_v4f)(((moe_v4i)a & mask) | ((moe_v4i)b & ~mask)); }
static inline moe_v4f moe_vsplat(float x) { return (moe_v4f){x, x, x, x}; }
static inline moe_v4f moe_vload(const float *p)
{
    moe_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline float moe_vsum(moe_v4f v) { return (v[0] + v[1]) + (v[2] + v[3]); }

static inline moe_v4f moe_vexp(moe_v4f x)
{
    x = moe_vsel(x < moe_vsplat(-87.0f), moe_vsplat(-87.0f), x);
    x = moe_vsel(x > moe_vsplat(88.0f), moe_vsplat(88.0f), x);
    moe_v4f n = (x * moe_vsplat(1.44269504f) + moe_vsplat(12582912.0f)) - moe_vsplat(12582912.0f);
    moe_v4f r = x - n * moe_vsplat(0.693145751953125f) - n * moe_vsplat(1.428606765330187e-6f);
    moe_v4f q = moe_vsplat(1.38888892e-3f);
    q = q * r + moe_vsplat(8.33333377e-3f);
    q = q * r + moe_vsplat(4.16666679e-2f);
    q = q * r + moe_vsplat(1.66666672e-1f);
    q = q * r + moe_vsplat(0.5f);
    q = q * r + moe_vsplat(1.0f);
    q = q * r + moe_vsplat(1.0f);
    moe_v4i bits = (__builtin_convertvector(n, moe_v4i) + 127) << 23;
    return q * (moe_v4f)bits;
}

static inline moe_v4f moe_vlog(moe_v4f x) /* x >= FLT_MIN */
{
    moe_v4i i = (moe_v4i)x;
    moe_v4i e = ((i >> 23) & 0xff) - 127;
    moe_v4f m = (moe_v4f)((i & 0x007fffff) | 0x3f800000);
    moe_v4i big = m > moe_vsplat(1.41421356f);
    m = moe_vsel(big, m * moe_vsplat(0.5f), m);
    e -= big; /* big is −1 where true */
    moe_v4f f = m - moe_vsplat(1.0f), u = f / (moe_vsplat(2.0f) + f), u2 = u * u;
    moe_v4f q = moe_vsplat(0.111111112f);
    q = q * u2 + moe_vsplat(0.142857149f);
    q = q * u2 + moe_vsplat(0.2f);
    q = q * u2 + moe_vsplat(0.333333343f);
    q = q * u2 + moe_vsplat(1.0f);
    return moe_vsplat(2.0f) * u * q + __builtin_convertvector(e, moe_v4f) * moe_vsplat(0.693147182f);
}

/* ---- select.c: scores, selection, weights ------------------------------------ */

typedef enum moe_wnorm { MOE_WNORM_NONE, MOE_WNORM_SUM, MOE_WNORM_PNORM } moe_wnorm;

/* How the routing weights are made from the selected experts. */
typedef enum moe_wmode {
    MOE_WMODE_POST_SOFTMAX, /* softmax over the selected logits */
    MOE_WMODE_GATHER,       /* u_k = s[id_k] (softmax or sigmoid base scores), normalised */
} moe_wmode;

/* One routing pass over T rows of logits. Inputs above, outputs below the
 * blank line; NULL outputs are skipped. */
typedef struct moe_route_plan {
    int64_t T, E, K;
    moe_dtype dtype;             /* of z and s: f32 or f64 */
    const void *z;               /* [T E] contiguous */
    const uint8_t *valid;        /* [T] or NULL */
    moe_score_fn score;          /* base scores s: softmax(z) or σ(z)+offset */
    double score_offset;
    double loss_eps;             /* ε of the sigmoid loss scores (entropy, mass) */
    bool select;                 /* false: scores (and count ids) only */
    bool select_on_logits;       /* post-softmax: select on z (else on s) */
    moe_wmode wmode;
    moe_wnorm wnorm;
    double norm_eps, norm_p;
    const float *bias;           /* [E] selection bias or NULL */
    const double *sel_offset;    /* [E] added to z for selection (sinkhorn: log d1) or NULL */
    int64_t groups, group_topk, group_m;
    moe_debug_routing debug;
    uint64_t debug_seed, debug_offset;
    double debug_skew;
    bool debug_keep_weights;     /* uniform debug: weights of the replaced selection */
    bool count_topk;             /* count_ids = plain top-k of s */
    const int64_t *given_ids;    /* [T K] replayed ids: no selection, or NULL */

    void *s;                     /* [T E] base scores (dtype) */
    double *rowsum;              /* [T] Σ_j s_j (sigmoid) */
    double *lse;                 /* [T] logsumexp z */
    int64_t *ids;                /* [T K] selected experts */
    int64_t *weight_ids;         /* [T K] the ids the weights were gathered at, when they
                                    differ from ids (debug_keep_weights), or NULL */
    double *wu;                  /* [T K] normalised weights, before scaling/masking */
    int64_t *count_ids;          /* [T K] */
    double *entropy;             /* [T] H(p_t) */
    double *mass;                /* [T] Σ_k p_{t,id_k} */
    int64_t *bad_rows;           /* rows holding NaN/Inf (their outputs are placeholders) */
} moe_route_plan;
void moe_route_rows(const moe_route_plan *p);

/* Backward of the routing weights: dz [T E] (dtype, fully written) from the
 * gradient g [T K] of the final weights sf·wu·kept. */
typedef struct moe_route_grad {
    int64_t T, E, K;
    moe_dtype dtype;
    const void *s;          /* [T E] base scores */
    const int64_t *ids;     /* [T K] */
    const double *wu;       /* [T K] */
    const uint8_t *kept;    /* [T K] */
    const void *g;          /* [T K] contiguous, dtype */
    moe_wmode wmode;
    moe_wnorm wnorm;
    moe_score_fn score;
    double norm_eps, norm_p, scale, score_offset;
    void *dz;
} moe_route_grad;
void moe_route_rows_backward(const moe_route_grad *p);

/* Count NaN and Inf in a contiguous f32/f64 [T E]; FIRST gets the flat
 * position of the first non-finite element (-1 when none). */
void moe_count_nonfinite_rows(const void *z, moe_dtype dt, int64_t n, int64_t *nans,
                              int64_t *infs, int64_t *first);

/* ---- sinkhorn.c ------------------------------------------------------------------ */
/* log d1 [E] of Megatron's Sinkhorn balancing of exp(z) over the valid rows:
 * selecting top-k of z + log d1 is selecting top-k of d1·exp(z)·d0. */
moe_status moe_sinkhorn_log_offsets(double *log_d1, const void *z, moe_dtype dt, int64_t T,
                                    int64_t E, const uint8_t *valid, int *iterations);

/* ---- capacity.c ------------------------------------------------------------------ */
/* Capacity per expert for VALID_T tokens; -1 when there is none (no factor, or
 * the MegaBlocks formula gave 0). Clamped to VALID_T (C >= T never drops). */
int64_t moe_capacity_of(const moe_router_config *cfg, int64_t valid_t);
/* Drop the slots over capacity C: KEPT [T K] (in: routed valid slots) loses
 * the dropped ones; W [T K] orders the "probs" policy. PAD_MAP [T E] (or NULL)
 * receives 1 for the filler entries that pad each expert to min(C, T) tokens.
 * Returns the number of dropped slots through DROPPED. */
moe_status moe_capacity_apply(uint8_t *kept, int64_t *dropped, uint8_t *pad_map,
                              const int64_t *ids, const double *w, int64_t T, int64_t K,
                              int64_t E, int64_t C, moe_drop_policy policy);

/* ---- aux_loss.c: scopes, statistics, terms and the loss node ---------------------- */

/* Scopes: N contiguous token ranges [bounds[n], bounds[n+1]). */
typedef struct moe_scopes {
    int64_t n;
    int64_t *bounds; /* [N+1] */
} moe_scopes;
moe_status moe_scopes_single(moe_scopes *sc, int64_t T);
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
moe_status moe_scope_stats_compute(moe_scope_stats *st, const moe_scopes *sc, const void *s,
                                   moe_dtype dt, const double *rowsum, moe_score_fn score,
                                   double eps, const uint8_t *valid, const int64_t *count_ids,
                                   int64_t T, int64_t E, int64_t K);
void moe_scope_stats_free(moe_scope_stats *st);
/* Sum C and Tn of every scope over each group in turn (P stays local). */
moe_status moe_scope_stats_reduce(moe_scope_stats *st, int n_groups, moe_group *const *groups);

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
moe_status moe_aux_term_build(moe_aux_term_plan *tp, moe_aux_kind kind, double coeff,
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

/* ---- aux_loss.c: the tracker, two-phase -------------------------------------------- */
/* Reduce this micro-batch's COUNTS [E] and TOKENS over the tracker's groups
 * into RED [E+1] (collective; no state change). */
moe_status moe_tracker_reduce(moe_balance_tracker *tr, const double *counts, double tokens,
                              double *red);
/* The buffer the loss sees if RED [E+1] is committed: ACC [E+1] (in recompute
 * mode, the snapshot of the replayed forward). */
moe_status moe_tracker_view(moe_balance_tracker *tr, const double *red, double *acc);
/* The micro-batches the buffer of moe_tracker_view holds (this one included). */
double moe_tracker_view_micro(const moe_balance_tracker *tr);
/* Apply RED (no-op while recomputing, which advances the replay cursor). */
moe_status moe_tracker_commit(moe_balance_tracker *tr, const double *red);
bool moe_tracker_recomputing(const moe_balance_tracker *tr);
/* Raw buffer access for state save/load. */
const double *moe_tracker_buffer(const moe_balance_tracker *tr);

/* ---- quantile.c ------------------------------------------------------------------- */
/* The per-expert quantiles Q [E] of one micro-batch of logits Z [T E] (T·K
 * divisible by E) under the bias BETA [E]. */
moe_status moe_qb_quantiles(double *q, const void *z, moe_dtype dt, int64_t T, int64_t E, int64_t K,
                            const float *beta);
/* β ← ema·β + (1 − ema)·QBAR, then re-centred to zero mean (f32). */
void moe_qb_update(float *beta, const double *qbar, int64_t E, double ema);

/* ---- replay.c ---------------------------------------------------------------------- */
/* IDS [T K] checked (shape, range, distinct in a row) into *OUT (malloc'd). */
moe_status moe_replay_ids_read(int64_t **out, moe_tensor *ids, int64_t T, int64_t K, int64_t E);
moe_status moe_replay_push_record(moe_router *r, moe_tensor *ids);
void moe_replay_free(moe_router *r);

/* ---- router.c internals used by metrics.c --------------------------------------------- */

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

#endif
