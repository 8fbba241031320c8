/* router.h — the per-token half of routing on the CPU (router.c), the twin
 * of kernels/cuda/router.h: base scores, selection, routing weights and their
 * backward, one row at a time; plus the f32 exp/log (scalar and 4-lane) that
 * the rows and the loss statistics share.
 *
 * Dimension letters: T tokens, E experts, K top-k, G expert groups.
 *
 * Row kernels compute in double whatever the storage dtype (f32 or f64), so
 * f32 results are the correctly rounded double results. */
#ifndef MOELAB_CPU_ROUTER_H
#define MOELAB_CPU_ROUTER_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../../core/dtype.h"
#include "../../core/moe/route_modes.h"
#include "../../core/tensor.h"

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

/* ---- router.c: scores, selection, weights ------------------------------------ */

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
/* The bytes of one thread's scratch for rows of E experts in G groups. */
size_t moe_route_scratch_bytes(int64_t E, int64_t G);
/* False when a thread could not allocate its scratch (its rows are then
 * not computed): the caller reports it. */
bool moe_route_rows(const moe_route_plan *p);

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
/* False when a thread could not allocate its row buffer, as above. */
bool moe_route_rows_backward(const moe_route_grad *p);

/* Check given expert ids IDS [T K] slot by slot in order: the first slot
 * outside [0, E) gives 1, the first one repeating an earlier slot of its row
 * gives 2 (that slot in *OTHER); *AT is the failing slot. 0 when all are fine. */
int moe_route_check_ids(const int64_t *ids, int64_t T, int64_t K, int64_t E, int64_t *at, int64_t *other);

/* ---- the per-slot outputs after the selection (S = T·K slots) ------------------ */

/* KEPT [T K] = 1 on the slots of the valid rows (VALID [T] or NULL: all).
 * Returns the number of valid rows. */
int64_t moe_route_kept(uint8_t *kept, const uint8_t *valid, int64_t T, int64_t K);
/* W [S] (DT) = SCALE·WU [S] on the kept slots, 0 on the others. */
void moe_route_scale(moe_dtype dt, void *w, const double *wu, const uint8_t *kept, int64_t S, double scale);
/* COUNTS [E] (i64) += the kept slots of each expert of IDS [S]. */
void moe_route_counts(int64_t *counts, const int64_t *ids, const uint8_t *kept, int64_t S);
/* *ACC += Σ X [T] over the valid rows (VALID [T] or NULL), in row order. */
void moe_route_valid_sum(double *acc, const double *x, const uint8_t *valid, int64_t T);
/* The dense view of a routing: PROBS [T E] (DT) and MAP [T E] (bool), both
 * zero on entry, get each kept slot's weight W [T K] and a 1 at its expert
 * IDS [T K]; PAD [T E] (or NULL) is or'ed into MAP. */
void moe_route_densify(moe_dtype dt, void *probs, uint8_t *map, const void *w, const int64_t *ids,
                       const uint8_t *kept, const uint8_t *pad, int64_t T, int64_t K, int64_t E);
/* Its backward: DW [T K] = G [T E] at each kept slot's expert, 0 elsewhere. */
void moe_route_densify_backward(moe_dtype dt, void *dw, const void *g, const int64_t *ids,
                                const uint8_t *kept, int64_t T, int64_t K, int64_t E);

/* Count NaN and Inf in a contiguous f32/f64 [T E]; FIRST gets the flat
 * position of the first non-finite element (-1 when none). */
void moe_count_nonfinite_rows(const void *z, moe_dtype dt, int64_t n, int64_t *nans,
                              int64_t *infs, int64_t *first);

#endif
