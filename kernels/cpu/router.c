/* router.c — the per-token half of routing: base scores (softmax or
 * sigmoid), the selection (plain, expert-biased, group-limited, Sinkhorn
 * offsets, forced debug routing), the routing weights, the counting top-k,
 * per-token entropy and selected mass; and the backward of the weights.
 *
 * Dimension letters: T tokens, E experts, K top-k, G expert groups. Rows are
 * independent, so every loop runs in parallel over tokens; each row computes
 * in double in per-thread scratch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

/* Per-thread scratch: one allocation split into rows of E, K and G doubles. */
typedef struct scratch {
    double *z, *s, *v;   /* [E] logits, base scores, selection scores */
    double *kval;        /* [E+1] top-k values (K, G and E/G are <= E) */
    double *gscore;      /* [G] group scores */
    int64_t *gidx;       /* [E+1] */
    int64_t *cand;       /* [E] top-k candidates */
    float *sf, *vf;      /* [E] f32 rows of the f32 path: scores, selection */
    float *kf, *gf;      /* [E+1] f32 top-k values, group scores */
    void *mem;
} scratch;

size_t moe_route_scratch_bytes(int64_t E, int64_t G)
{
    int64_t KG = E + 1; /* K, G and the group size are all <= E */
    size_t nd = (size_t)(3 * E + KG + G + 1), ni = (size_t)(KG + E);
    return nd * sizeof(double) + ni * sizeof(int64_t) + (4 * (size_t)E + 2) * sizeof(float);
}

static bool scratch_new(scratch *sc, int64_t E, int64_t K, int64_t G)
{
    memset(sc, 0, sizeof *sc);
    (void)K;
    int64_t KG = E + 1;
    size_t nd = (size_t)(3 * E + KG + G + 1);
    sc->mem = malloc(moe_route_scratch_bytes(E, G));
    if (!sc->mem) return false;
    double *d = sc->mem;
    sc->z = d;
    sc->s = d + E;
    sc->v = d + 2 * E;
    sc->kval = d + 3 * E;
    sc->gscore = d + 3 * E + KG;
    sc->gidx = (int64_t *)(d + nd);
    sc->cand = sc->gidx + KG;
    sc->sf = (float *)(sc->cand + E);
    sc->vf = sc->sf + E;
    sc->kf = sc->vf + E;
    sc->gf = sc->kf + E + 1;
    return true;
}

/* The K largest of V[0..E) into IDX, descending; equal values keep the lower
 * index first. VAL is scratch of K doubles, CAND of E indices.
 *
 * A lower bound first: the maxima of the K interleaved chunks {c, c+K, …} are
 * K distinct elements, so the K-th largest is >= their minimum and only the
 * elements reaching it compete (branch-free compaction). The candidates, in
 * index order, are then inserted into a sorted prefix. Exact, ties included;
 * −∞ entries only weaken the bound. */
#define DEFINE_TOPK_ROW(SFX, T)                                                            \
    /* A finite HINT is a known lower bound of the K-th largest (K distinct      \
     * elements reach it); -INFINITY means none, so the chunk bound is used. */ \
    static void topk_row_##SFX##_hint(const T *v, int64_t E, int64_t K, int64_t *idx, T *val, \
                                      int64_t *cand, T hint)                            \
    {                                                                                   \
        int64_t n = 0;                                                                  \
        if (hint > -INFINITY) {                                                         \
            for (int64_t j = 0; j < E; j++) {                                           \
                cand[n] = j;                                                            \
                n += v[j] >= hint;                                                      \
            }                                                                           \
        } else if (E >= 2 * K) {                                                        \
            for (int64_t c = 0; c < K; c++) val[c] = v[c];                              \
            for (int64_t r = K; r + K <= E; r += K)                                     \
                for (int64_t c = 0; c < K; c++) val[c] = v[r + c] > val[c] ? v[r + c] : val[c]; \
            for (int64_t r = E - E % K; r < E; r++) /* the tail joins chunk 0 */        \
                val[0] = v[r] > val[0] ? v[r] : val[0];                                 \
            T thr = val[0];                                                             \
            for (int64_t c = 1; c < K; c++) thr = val[c] < thr ? val[c] : thr;          \
            for (int64_t j = 0; j < E; j++) {                                           \
                cand[n] = j;                                                            \
                n += v[j] >= thr;                                                       \
            }                                                                           \
        } else {                                                                        \
            for (int64_t j = 0; j < E; j++) cand[j] = j;                                \
            n = E;                                                                      \
        }                                                                               \
        int64_t k = 0;                                                                  \
        for (int64_t q = 0; q < n; q++) {                                               \
            int64_t j = cand[q];                                                        \
            T x = v[j];                                                                 \
            if (k == K && !(x > val[K - 1])) continue;                                  \
            int64_t p = k < K ? k++ : K - 1;                                            \
            while (p > 0 && val[p - 1] < x) {                                           \
                val[p] = val[p - 1];                                                    \
                idx[p] = idx[p - 1];                                                    \
                p--;                                                                    \
            }                                                                           \
            val[p] = x;                                                                 \
            idx[p] = j;                                                                 \
        }                                                                               \
    }

DEFINE_TOPK_ROW(f64, double)
DEFINE_TOPK_ROW(f32, float)

static void topk_row(const double *v, int64_t E, int64_t K, int64_t *idx, double *val, int64_t *cand)
{
    topk_row_f64_hint(v, E, K, idx, val, cand, -INFINITY);
}

static void topk_row_f32(const float *v, int64_t E, int64_t K, int64_t *idx, float *val, int64_t *cand)
{
    topk_row_f32_hint(v, E, K, idx, val, cand, -INFINITY);
}

/* Group limiting of an f32 selection row (see group_limit). */
/* Returns a lower bound of the K-th largest kept value when one is known:
 * with m <= 2, the kept groups' top-m entries are keep·m distinct kept
 * values, so when keep·m >= K their least one bounds the K-th largest. */
static float group_limit_f32(float *v, int64_t E, int64_t G, int64_t keep, int64_t m, int64_t K,
                             scratch *sc)
{
    int64_t per = E / G;
    float *a = sc->gf, *b = sc->kf, *mth = (float *)sc->v; /* sc->v is free on the f32 path */
    bool bound = false;
    if (m <= 2 && per >= 2) {
        for (int64_t g = 0; g < G; g++) {
            float x0 = v[g * per], x1 = v[g * per + 1];
            a[g] = x0 > x1 ? x0 : x1;
            b[g] = x0 > x1 ? x1 : x0;
        }
        for (int64_t i = 2; i < per; i++)
            for (int64_t g = 0; g < G; g++) { /* b = max(b, min(a, x)), a = max(a, x) */
                float x = v[g * per + i], lo = x < a[g] ? x : a[g];
                b[g] = lo > b[g] ? lo : b[g];
                a[g] = x > a[g] ? x : a[g];
            }
        for (int64_t g = 0; g < G; g++) mth[g] = m == 2 ? b[g] : a[g];
        if (m == 2)
            for (int64_t g = 0; g < G; g++) a[g] += b[g];
        bound = keep * m >= K;
    } else {
        for (int64_t g = 0; g < G; g++) {
            topk_row_f32(v + g * per, per, m, sc->gidx, b, sc->cand);
            float sum = 0;
            for (int64_t i = 0; i < m; i++) sum += b[i];
            a[g] = sum;
        }
    }
    topk_row_f32(a, G, keep, sc->gidx, b, sc->cand);
    float hint = INFINITY;
    for (int64_t g = 0; g < G; g++) b[g] = 0;
    for (int64_t i = 0; i < keep; i++) {
        b[sc->gidx[i]] = 1;
        if (bound) hint = mth[sc->gidx[i]] < hint ? mth[sc->gidx[i]] : hint;
    }
    for (int64_t g = 0; g < G; g++)
        if (b[g] == 0)
            for (int64_t j = g * per; j < (g + 1) * per; j++) v[j] = -INFINITY;
    return bound ? hint : -INFINITY;
}

/* Sum of the M largest of V[0..N). */
static double top_sum(const double *v, int64_t n, int64_t m, scratch *sc)
{
    if (m == 1) {
        double a = v[0];
        for (int64_t i = 1; i < n; i++) a = v[i] > a ? v[i] : a;
        return a;
    }
    if (m == 2) {
        double a = v[0] > v[1] ? v[0] : v[1], b = v[0] > v[1] ? v[1] : v[0];
        for (int64_t i = 2; i < n; i++) {
            double x = v[i];
            b = x > b ? (x > a ? a : x) : b;
            a = x > a ? x : a;
        }
        return a + b;
    }
    topk_row(v, n, m, sc->gidx, sc->kval, sc->cand);
    double sum = 0;
    for (int64_t i = 0; i < m; i++) sum += sc->kval[i];
    return sum;
}

/* Keep the GROUP_TOPK best of G groups of E/G experts (a group's score is the
 * sum of its M best entries); the others become −∞. Ties: lower group. */
static void group_limit(double *v, int64_t E, int64_t G, int64_t keep, int64_t m, scratch *sc)
{
    int64_t per = E / G;
    if (m <= 2 && per >= 2) { /* the G groups side by side: independent chains */
        double *a = sc->gscore, *b = sc->kval;
        for (int64_t g = 0; g < G; g++) {
            a[g] = v[g * per] > v[g * per + 1] ? v[g * per] : v[g * per + 1];
            b[g] = v[g * per] > v[g * per + 1] ? v[g * per + 1] : v[g * per];
        }
        for (int64_t i = 2; i < per; i++)
            for (int64_t g = 0; g < G; g++) {
                double x = v[g * per + i], lo = x < a[g] ? x : a[g];
                b[g] = lo > b[g] ? lo : b[g];
                a[g] = x > a[g] ? x : a[g];
            }
        if (m == 2)
            for (int64_t g = 0; g < G; g++) a[g] += b[g];
    } else {
        for (int64_t g = 0; g < G; g++) sc->gscore[g] = top_sum(v + g * per, per, m, sc);
    }
    /* mark kept groups: reuse kval as flags after the top-k over groups */
    topk_row(sc->gscore, G, keep, sc->gidx, sc->kval, sc->cand);
    for (int64_t g = 0; g < G; g++) sc->kval[g] = 0;
    for (int64_t i = 0; i < keep; i++) sc->kval[sc->gidx[i]] = 1;
    for (int64_t g = 0; g < G; g++)
        if (sc->kval[g] == 0)
            for (int64_t j = g * per; j < (g + 1) * per; j++) v[j] = -INFINITY;
}

/* Seeded skewed draw of K distinct experts: Gumbel top-k with log-weights
 * −skew·e/E (expert 0 most popular). Counter-based, so thread-independent. */
static void debug_imbalance_row(int64_t t, const moe_route_plan *p, scratch *sc, int64_t *ids)
{
    int64_t E = p->E;
    for (int64_t e = 0; e < E; e++) {
        double u = moe_rng_uniform(p->debug_seed, p->debug_offset + (uint64_t)(t * E + e));
        if (u <= 0) u = 1e-300;
        sc->v[e] = -p->debug_skew * (double)e / (double)E - log(-log(u));
    }
    topk_row(sc->v, E, p->K, ids, sc->kval, sc->cand);
}

/* Forced uniform assignment: slot i = t·K + k goes to expert i mod E. */
static void uniform_row(int64_t t, const moe_route_plan *p, int64_t *ids)
{
    for (int64_t k = 0; k < p->K; k++) ids[k] = (t * p->K + k) % p->E;
}

/* The selections that replace a row's own top-k: replayed ids, forced
 * uniform routing (unless it keeps the router's weights, which select
 * first), the seeded imbalance. Writes ids [K] and returns true when one
 * applies; false when the row selects by its own scores. One definition for
 * both dtypes' rows. */
static inline bool forced_row(int64_t t, const moe_route_plan *p, scratch *sc, int64_t *ids)
{
    if (p->given_ids) {
        memcpy(ids, p->given_ids + t * p->K, sizeof(int64_t) * (size_t)p->K);
    } else if (p->debug == MOE_DEBUG_UNIFORM && !p->debug_keep_weights) {
        uniform_row(t, p, ids);
    } else if (p->debug == MOE_DEBUG_IMBALANCE) {
        debug_imbalance_row(t, p, sc, ids);
    } else {
        return false;
    }
    return true;
}

/* MegaBlocks' uniform debug routing: the weights just computed (from the
 * router's own selection) stay, paired with the forced ids; the ids they came
 * from go to weight_ids for the backward. */
static void force_uniform_keep_weights(int64_t t, const moe_route_plan *p, int64_t *ids)
{
    if (p->given_ids || p->debug != MOE_DEBUG_UNIFORM || !p->debug_keep_weights) return;
    if (p->weight_ids) memcpy(p->weight_ids + t * p->K, ids, sizeof(int64_t) * (size_t)p->K);
    uniform_row(t, p, ids);
}

/* Base scores of an f32 row into sc->s (double) and the f32 storage: four
 * lanes at a time, the scalar forms for the tail. */
static bool scores_row_f32(int64_t t, const moe_route_plan *p, scratch *sc, double *lse_out,
                           double *rowsum_out, double *H_out)
{
    const int64_t E = p->E, E4 = E - E % 4;
    const float *zr = (const float *)p->z + t * E;
    float *sf = sc->sf, *vf = sc->vf;
    float m = zr[0], zsum = 0;
    if (E4 >= 4) { /* four independent max chains; the sum flags NaN/Inf */
        moe_v4f m4 = moe_vload(zr), s4 = m4 * moe_vsplat(0x1p-64f); /* scaled: no overflow */
        for (int64_t j = 4; j < E4; j += 4) {
            moe_v4f x = moe_vload(zr + j);
            m4 = moe_vsel(x > m4, x, m4);
            s4 += x * moe_vsplat(0x1p-64f);
        }
        m = m4[0];
        for (int l = 1; l < 4; l++) m = m4[l] > m ? m4[l] : m;
        zsum = moe_vsum(s4);
    }
    for (int64_t j = E4; j < E; j++) {
        m = zr[j] > m ? zr[j] : m;
        zsum += zr[j] * 0x1p-64f;
    }
    if (!isfinite(zsum)) return false;
    if (p->score == MOE_SCORE_SOFTMAX) {
        moe_v4f acc = moe_vsplat(0);
        for (int64_t j = 0; j < E4; j += 4) {
            moe_v4f e = moe_vexp(moe_vload(zr + j) - moe_vsplat(m));
            memcpy(sf + j, &e, sizeof e);
            acc += e;
        }
        float sum = moe_vsum(acc);
        for (int64_t j = E4; j < E; j++) sum += (sf[j] = moe_fexp(zr[j] - m));
        float inv = 1.0f / sum;
        moe_v4f sz4 = moe_vsplat(0);
        for (int64_t j = 0; j < E4; j += 4) {
            moe_v4f q = moe_vload(sf + j) * moe_vsplat(inv);
            memcpy(sf + j, &q, sizeof q);
            sz4 += q * moe_vload(zr + j);
        }
        float sz = moe_vsum(sz4);
        for (int64_t j = E4; j < E; j++) sz += (sf[j] *= inv) * zr[j];
        *lse_out = (double)m + log((double)sum);
        *H_out = *lse_out - (double)sz;
        *rowsum_out = 1.0;
    } else if (p->score == MOE_SCORE_SQRTSOFTPLUS) { /* scalar, in double, stored as f32 */
        const double off = p->score_offset;
        double rs = 0, sls = 0, esum = 0;
        for (int64_t j = 0; j < E; j++) {
            sf[j] = (float)(moe_sqrtsoftplus((double)zr[j]) + off);
            rs += sf[j];
            if (sf[j] > 0) sls += (double)sf[j] * log((double)sf[j]);
            esum += exp((double)zr[j] - (double)m);
        }
        *rowsum_out = rs;
        double Sp = rs + p->loss_eps;
        *H_out = Sp > 0 ? rs / Sp * log(Sp) - sls / Sp : 0.0;
        *lse_out = (double)m + log(esum);
    } else {
        /* v = exp(−z), σ = 1/(1+v); exp(z − max z) = min v / v */
        const float off = (float)p->score_offset;
        moe_v4f rs4 = moe_vsplat(0), vm4 = moe_vsplat(INFINITY);
        for (int64_t j = 0; j < E4; j += 4) {
            moe_v4f v = moe_vexp(-moe_vload(zr + j)), q = moe_vsplat(1.0f) / (moe_vsplat(1.0f) + v) + moe_vsplat(off);
            memcpy(vf + j, &v, sizeof v);
            memcpy(sf + j, &q, sizeof q);
            rs4 += q;
            vm4 = moe_vsel(v < vm4, v, vm4);
        }
        float rs = moe_vsum(rs4), vmin = INFINITY;
        for (int l = 0; l < 4; l++) vmin = vm4[l] < vmin ? vm4[l] : vmin;
        for (int64_t j = E4; j < E; j++) {
            vf[j] = moe_fexp(-zr[j]);
            vmin = vf[j] < vmin ? vf[j] : vmin;
            rs += (sf[j] = 1.0f / (1.0f + vf[j]) + off);
        }
        *rowsum_out = rs;
        if (p->entropy) { /* H = (S/S')·log S' − Σ s log s / S' */
            moe_v4f sls4 = moe_vsplat(0), tiny = moe_vsplat(1.17549435e-38f);
            for (int64_t j = 0; j < E4; j += 4) {
                moe_v4f q = moe_vload(sf + j);
                sls4 += q * moe_vlog(moe_vsel(q > tiny, q, tiny));
            }
            float sls = moe_vsum(sls4);
            for (int64_t j = E4; j < E; j++) sls += sf[j] * moe_flog(sf[j] > 1.17549435e-38f ? sf[j] : 1.17549435e-38f);
            double Sp = (double)rs + p->loss_eps;
            *H_out = Sp > 0 ? (double)rs / Sp * log(Sp) - (double)sls / Sp : 0.0;
        }
        if (p->lse) {
            moe_v4f s4 = moe_vsplat(0);
            for (int64_t j = 0; j < E4; j += 4) s4 += moe_vsplat(vmin) / moe_vload(vf + j);
            float sum = moe_vsum(s4);
            for (int64_t j = E4; j < E; j++) sum += vmin / vf[j];
            *lse_out = (double)m + log((double)sum);
        }
    }
    if (p->s) memcpy((float *)p->s + t * E, sf, sizeof(float) * (size_t)E);
    return true;
}

/* A row holding NaN or Inf: counted, and given harmless outputs (the caller
 * reports the error before using any of them). */
static void bad_row(int64_t t, const moe_route_plan *p)
{
    if (p->bad_rows) {
#pragma omp atomic
        (*p->bad_rows)++;
    }
    for (int64_t k = 0; p->ids && k < p->K; k++) p->ids[t * p->K + k] = k;
    for (int64_t k = 0; p->wu && k < p->K; k++) p->wu[t * p->K + k] = 0;
    for (int64_t k = 0; p->count_ids && k < p->K; k++) p->count_ids[t * p->K + k] = k;
}

/* The whole row for f32 logits: scores in f32 lanes, selection on f32 values
 * (the stored precision), weights and sums in double. */
/* The K gathered scores WU of a row, renormalised as the plan says: by their
 * sum + eps, by their p-norm, or not at all. */
static void renormalize(double *wu, int64_t K, const moe_route_plan *p)
{
    double sum = 0;
    if (p->wnorm == MOE_WNORM_SUM) {
        for (int64_t k = 0; k < K; k++) sum += wu[k];
        double d = sum + p->norm_eps;
        for (int64_t k = 0; k < K; k++) wu[k] /= d;
    } else if (p->wnorm == MOE_WNORM_PNORM) {
        for (int64_t k = 0; k < K; k++) sum += pow(wu[k], p->norm_p);
        double nrm = pow(sum, 1.0 / p->norm_p);
        for (int64_t k = 0; k < K; k++) wu[k] /= nrm;
    }
}

static void route_row_f32(int64_t t, const moe_route_plan *p, scratch *sc)
{
    const int64_t E = p->E, K = p->K;
    const float *zr = (const float *)p->z + t * E;
    double lse = 0, rowsum = 0, H = 0;
    if (!scores_row_f32(t, p, sc, &lse, &rowsum, &H)) {
        bad_row(t, p);
        return;
    }
    if (p->rowsum && moe_score_is_normalized(p->score)) p->rowsum[t] = rowsum;
    if (p->lse) p->lse[t] = lse;
    if (p->entropy) p->entropy[t] = H;
    const float *sf = sc->sf;
    int64_t *ids = p->ids ? p->ids + t * K : NULL;
    if (p->select) {
        if (!forced_row(t, p, sc, ids)) {
            float *v = sc->vf;
            const float *base = p->select_on_logits ? zr : sf;
            if (p->sel_offset) { /* sinkhorn: compare z + log d1 in double, stored as f32 */
                for (int64_t j = 0; j < E; j++) v[j] = (float)((double)base[j] + p->sel_offset[j]);
            } else if (p->bias) {
                for (int64_t j = 0; j < E; j++) v[j] = base[j] + p->bias[j];
            } else {
                memcpy(v, base, sizeof(float) * (size_t)E);
            }
            float hint = -INFINITY;
            if (p->groups > 0) hint = group_limit_f32(v, E, p->groups, p->group_topk, p->group_m, K, sc);
            topk_row_f32_hint(v, E, K, ids, sc->kf, sc->cand, hint);
        }
        double *wu = p->wu + t * K;
        if (p->wmode == MOE_WMODE_POST_SOFTMAX) {
            double m = zr[ids[0]], sum = 0;
            for (int64_t k = 1; k < K; k++) m = zr[ids[k]] > m ? zr[ids[k]] : m;
            for (int64_t k = 0; k < K; k++) sum += (wu[k] = moe_fexp((float)(zr[ids[k]] - m)));
            for (int64_t k = 0; k < K; k++) wu[k] /= sum;
        } else {
            for (int64_t k = 0; k < K; k++) wu[k] = sf[ids[k]];
            renormalize(wu, K, p);
        }
        force_uniform_keep_weights(t, p, ids);
    }
    if (p->count_ids) {
        if (p->count_topk) { /* the selected experts are K distinct ones: their least score bounds */
            float hint = -INFINITY;
            if (ids) {
                hint = sf[ids[0]];
                for (int64_t k = 1; k < K; k++) hint = sf[ids[k]] < hint ? sf[ids[k]] : hint;
            }
            topk_row_f32_hint(sf, E, K, p->count_ids + t * K, sc->kf, sc->cand, hint);
        } else {
            memcpy(p->count_ids + t * K, ids, sizeof(int64_t) * (size_t)K);
        }
    }
    if (p->mass && ids) {
        double m = 0;
        for (int64_t k = 0; k < K; k++) m += sf[ids[k]];
        if (moe_score_is_normalized(p->score)) m /= rowsum + p->loss_eps;
        p->mass[t] = m;
    }
}

static void route_row(int64_t t, const moe_route_plan *p, scratch *sc)
{
    const int64_t E = p->E, K = p->K;
    double *z = sc->z, *s = sc->s;

    /* base scores, row sum / logsumexp, entropy of the loss scores */
    const moe_dtype dt = p->dtype;
    double lse = 0, rowsum = 0, H = 0;
    if (dt == MOE_F32) {
        route_row_f32(t, p, sc);
        return;
    }
    double zs = 0;
    for (int64_t j = 0; j < E; j++) zs += 0x1p-64 * moe_ld(p->z, dt, t * E + j);
    if (!isfinite(zs)) {
        bad_row(t, p);
        return;
    }
    if (p->score == MOE_SCORE_SOFTMAX) {
        for (int64_t j = 0; j < E; j++) z[j] = moe_ld(p->z, dt, t * E + j);
        double m = z[0];
        for (int64_t j = 1; j < E; j++) m = z[j] > m ? z[j] : m;
        double sum = 0;
        for (int64_t j = 0; j < E; j++) sum += (s[j] = moe_exp_dt(z[j] - m, dt));
        double inv = 1.0 / sum, sz = 0;
        for (int64_t j = 0; j < E; j++) {
            s[j] *= inv;
            sz += s[j] * z[j];
        }
        lse = m + log(sum);
        H = lse - sz;
    } else if (p->score == MOE_SCORE_SQRTSOFTPLUS) {
        for (int64_t j = 0; j < E; j++) z[j] = moe_ld(p->z, dt, t * E + j);
        double m = z[0], esum = 0, sls = 0;
        for (int64_t j = 1; j < E; j++) m = z[j] > m ? z[j] : m;
        for (int64_t j = 0; j < E; j++) {
            rowsum += (s[j] = moe_sqrtsoftplus(z[j]) + p->score_offset);
            if (s[j] > 0) sls += s[j] * log(s[j]);
            esum += exp(z[j] - m);
        }
        double Sp = rowsum + p->loss_eps;
        H = Sp > 0 ? rowsum / Sp * log(Sp) - sls / Sp : 0.0;
        lse = m + log(esum);
        if (p->rowsum) p->rowsum[t] = rowsum;
    } else {
        /* v = exp(−z): σ = 1/(1+v); exp(z − max z) = min v / v gives the
         * logsumexp without another exponential */
        for (int64_t j = 0; j < E; j++) z[j] = moe_ld(p->z, dt, t * E + j);
        double *v = sc->v, vmin = INFINITY;
        for (int64_t j = 0; j < E; j++) {
            v[j] = moe_exp_dt(-z[j], dt);
            vmin = v[j] < vmin ? v[j] : vmin;
            rowsum += (s[j] = 1.0 / (1.0 + v[j]) + p->score_offset);
        }
        if (p->entropy) { /* H = (S/S')·log S' − Σ s log s / S',  S' = S + ε */
            double Sp = rowsum + p->loss_eps, sls = 0;
            for (int64_t j = 0; j < E; j++)
                if (s[j] > 0) sls += s[j] * moe_log_dt(s[j], dt);
            H = Sp > 0 ? rowsum / Sp * log(Sp) - sls / Sp : 0.0;
        }
        if (p->lse) {
            double m = z[0], sum = 0;
            for (int64_t j = 1; j < E; j++) m = z[j] > m ? z[j] : m;
            if (vmin > 0 && isfinite(vmin)) {
                for (int64_t j = 0; j < E; j++) sum += vmin / v[j];
            } else {
                for (int64_t j = 0; j < E; j++) sum += exp(z[j] - m);
            }
            lse = m + log(sum);
        }
        if (p->rowsum) p->rowsum[t] = rowsum;
    }
    if (p->s && dt != MOE_F32)
        for (int64_t j = 0; j < E; j++) moe_st(p->s, dt, t * E + j, s[j]);
    if (p->lse) p->lse[t] = lse;
    if (p->entropy) p->entropy[t] = H;

    int64_t *ids = p->ids ? p->ids + t * K : NULL;
    if (p->select) {
        if (!forced_row(t, p, sc, ids)) {
            double *v = sc->v;
            const double *base = p->select_on_logits ? z : s;
            for (int64_t j = 0; j < E; j++) v[j] = base[j];
            if (p->sel_offset)
                for (int64_t j = 0; j < E; j++) v[j] += p->sel_offset[j];
            if (p->bias)
                for (int64_t j = 0; j < E; j++) v[j] += (double)p->bias[j];
            if (p->groups > 0) group_limit(v, E, p->groups, p->group_topk, p->group_m, sc);
            topk_row(v, E, K, ids, sc->kval, sc->cand);
        }
        double *wu = p->wu + t * K;
        if (p->wmode == MOE_WMODE_POST_SOFTMAX) {
            double m = z[ids[0]];
            for (int64_t k = 1; k < K; k++) m = z[ids[k]] > m ? z[ids[k]] : m;
            double sum = 0;
            for (int64_t k = 0; k < K; k++) sum += (wu[k] = exp(z[ids[k]] - m));
            for (int64_t k = 0; k < K; k++) wu[k] /= sum;
        } else {
            for (int64_t k = 0; k < K; k++) wu[k] = s[ids[k]];
            renormalize(wu, K, p);
        }
        force_uniform_keep_weights(t, p, ids);
    }
    if (p->count_ids) {
        if (p->count_topk) topk_row(s, E, K, p->count_ids + t * K, sc->kval, sc->cand);
        else memcpy(p->count_ids + t * K, ids, sizeof(int64_t) * (size_t)K);
    }
    if (p->mass && ids) {
        double m = 0;
        for (int64_t k = 0; k < K; k++) m += s[ids[k]];
        if (moe_score_is_normalized(p->score)) m /= rowsum + p->loss_eps;
        p->mass[t] = m;
    }
}

/* A row costs far more than its E scores' worth of a plain loop (top-k,
 * softmax, the loss counts): a few hundred rows already pay for waking the
 * team. */
#define ROUTE_PAR_ROWS 256

bool moe_route_rows(const moe_route_plan *p)
{
    const int64_t T = p->T;
    bool all_ok = true;
#pragma omp parallel if (T >= ROUTE_PAR_ROWS)
    {
        scratch sc;
        bool ok = scratch_new(&sc, p->E, p->K, p->groups);
        if (!ok) {
#pragma omp atomic write
            all_ok = false;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++)
            if (ok) route_row(t, p, &sc);
        free(sc.mem);
    }
    return all_ok;
}

/* ---- backward ------------------------------------------------------------------- */

/* One row of the weights' backward (the template for f32 and f64 storage):
 * dz = J(z)ᵀ d(sf·wu·kept) with the selected experts' scores gathered from S. */
#define ROUTE_ROW_BACKWARD(NAME, TYPE)                                                          \
    static void NAME(int64_t t, const moe_route_grad *p, double *ds)                            \
    {                                                                                           \
        const int64_t E = p->E, K = p->K;                                                       \
        const int64_t *ids = p->ids + t * K;                                                    \
        const double *wu = p->wu + t * K;                                                       \
        const TYPE *s = (const TYPE *)p->s + t * E, *g = (const TYPE *)p->g + t * K;            \
        TYPE *dz = (TYPE *)p->dz + t * E;                                                       \
        double *gk = ds + K;                                                                    \
        bool any = false;                                                                       \
        for (int64_t k = 0; k < K; k++) {                                                       \
            gk[k] = p->kept[t * K + k] ? (double)g[k] * p->scale : 0.0;                         \
            any |= gk[k] != 0;                                                                  \
        }                                                                                       \
        memset(dz, 0, sizeof(TYPE) * (size_t)E);                                                \
        if (!any) return;                                                                       \
        if (p->wmode == MOE_WMODE_POST_SOFTMAX) {                                               \
            double dot = 0;                                                                     \
            for (int64_t k = 0; k < K; k++) dot += gk[k] * wu[k];                               \
            for (int64_t k = 0; k < K; k++) dz[ids[k]] = (TYPE)(wu[k] * (gk[k] - dot));         \
            return;                                                                             \
        }                                                                                       \
        /* gathered base scores u_k = s[id_k]: d/du through the normalisation */                \
        double su = 0, c = 0;                                                                   \
        for (int64_t k = 0; k < K; k++) {                                                       \
            double u = s[ids[k]];                                                               \
            c += gk[k] * u;                                                                     \
            su += p->wnorm == MOE_WNORM_PNORM ? pow(u, p->norm_p) : u;                          \
        }                                                                                       \
        double d = su + p->norm_eps, nrm = p->wnorm == MOE_WNORM_PNORM ? pow(su, 1.0 / p->norm_p) : 1.0; \
        for (int64_t k = 0; k < K; k++) {                                                       \
            double u = s[ids[k]];                                                               \
            if (p->wnorm == MOE_WNORM_SUM) ds[k] = gk[k] / d - c / (d * d);                     \
            else if (p->wnorm == MOE_WNORM_PNORM)                                               \
                ds[k] = gk[k] / nrm - c / (nrm * nrm) * pow(u / nrm, p->norm_p - 1.0);          \
            else ds[k] = gk[k];                                                                 \
        }                                                                                       \
        if (moe_score_is_normalized(p->score)) {                                                \
            for (int64_t k = 0; k < K; k++)                                                     \
                dz[ids[k]] = (TYPE)(ds[k] * moe_score_deriv(p->score, (double)s[ids[k]], p->score_offset)); \
        } else { /* softmax Jacobian: dz_j = s_j (ds_j − Σ_k ds_k s_k) */                       \
            double dot = 0;                                                                     \
            for (int64_t k = 0; k < K; k++) dot += ds[k] * (double)s[ids[k]];                   \
            for (int64_t j = 0; j < E; j++) dz[j] = (TYPE)(-(double)s[j] * dot);                \
            for (int64_t k = 0; k < K; k++)                                                     \
                dz[ids[k]] = (TYPE)((double)dz[ids[k]] + (double)s[ids[k]] * ds[k]);            \
        }                                                                                       \
    }

ROUTE_ROW_BACKWARD(route_row_backward_f32, float)
ROUTE_ROW_BACKWARD(route_row_backward_f64, double)

bool moe_route_rows_backward(const moe_route_grad *p)
{
    const int64_t T = p->T;
    bool all_ok = true;
#pragma omp parallel if (T * p->E > 32768)
    {
        double *ds = malloc(sizeof(double) * (size_t)(2 * p->K + 1));
        if (!ds) {
#pragma omp atomic write
            all_ok = false;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            if (!ds) continue;
            if (p->dtype == MOE_F32) route_row_backward_f32(t, p, ds);
            else route_row_backward_f64(t, p, ds);
        }
        free(ds);
    }
    return all_ok;
}

int moe_route_check_ids(const int64_t *ids, int64_t T, int64_t K, int64_t E, int64_t *at, int64_t *other)
{
    for (int64_t i = 0; i < T * K; i++) {
        *at = i;
        if (ids[i] < 0 || ids[i] >= E) return 1;
        for (int64_t j = i - i % K; j < i; j++)
            if (ids[j] == ids[i]) {
                *other = j;
                return 2;
            }
    }
    return 0;
}

/* ---- per-slot outputs --------------------------------------------------------- */

int64_t moe_route_kept(uint8_t *kept, const uint8_t *valid, int64_t T, int64_t K)
{
    int64_t n = 0;
    for (int64_t t = 0; t < T; t++) n += !valid || valid[t];
    for (int64_t i = 0; i < T * K; i++) kept[i] = !valid || valid[i / K];
    return n;
}

void moe_route_scale(moe_dtype dt, void *w, const double *wu, const uint8_t *kept, int64_t S, double scale)
{
    for (int64_t i = 0; i < S; i++) moe_st(w, dt, i, kept[i] ? wu[i] * scale : 0.0);
}

void moe_route_counts(int64_t *counts, const int64_t *ids, const uint8_t *kept, int64_t S)
{
    for (int64_t i = 0; i < S; i++)
        if (kept[i]) counts[ids[i]]++;
}

void moe_route_valid_sum(double *acc, const double *x, const uint8_t *valid, int64_t T)
{
    for (int64_t t = 0; t < T; t++)
        if (!valid || valid[t]) *acc += x[t];
}

void moe_route_densify(moe_dtype dt, void *probs, uint8_t *map, const void *w, const int64_t *ids,
                       const uint8_t *kept, const uint8_t *pad, int64_t T, int64_t K, int64_t E)
{
#pragma omp parallel for if (T * E > 32768) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        for (int64_t k = 0; k < K; k++) {
            int64_t i = t * K + k;
            if (!kept[i]) continue;
            moe_st(probs, dt, t * E + ids[i], moe_ld(w, dt, i));
            map[t * E + ids[i]] = 1;
        }
        if (pad)
            for (int64_t j = t * E; j < (t + 1) * E; j++) map[j] |= pad[j];
    }
}

void moe_route_densify_backward(moe_dtype dt, void *dw, const void *g, const int64_t *ids,
                                const uint8_t *kept, int64_t T, int64_t K, int64_t E)
{
    for (int64_t i = 0; i < T * K; i++) moe_st(dw, dt, i, kept[i] ? moe_ld(g, dt, (i / K) * E + ids[i]) : 0.0);
}

void moe_count_nonfinite_rows(const void *z, moe_dtype dt, int64_t n, int64_t *nans, int64_t *infs,
                              int64_t *first)
{
    int64_t a = 0, b = 0, f = INT64_MAX;
#pragma omp parallel for if (n > 32768) schedule(static) reduction(+ : a, b) reduction(min : f)
    for (int64_t i = 0; i < n; i++) {
        double v = moe_ld(z, dt, i);
        if (isfinite(v)) continue;
        if (isnan(v)) a++;
        else b++;
        f = i < f ? i : f;
    }
    *nans = a;
    *infs = b;
    *first = f == INT64_MAX ? -1 : f;
}
