/* balance.c — the token loops of the balancing losses (see balance.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "balance.h"
#include "router.h"

/* An allocation count that is never 0. */
#define NZ(n) ((size_t)((n) > 0 ? (n) : 1))

moe_status moe_cpu_balance_stats(moe_dtype dt, double *P, double *C, double *Tn, const void *s,
                                 const double *rowsum, moe_score_fn score, double eps,
                                 const uint8_t *valid, const int64_t *count_ids, const int64_t *bounds,
                                 int64_t N, int64_t T, int64_t E, int64_t K, const char *op)
{
    const int64_t CH = MOE_CPU_BALANCE_CHUNK;
    /* chunks: fixed CH-token pieces of each scope, reduced in order */
    int64_t nch = 0;
    for (int64_t n = 0; n < N; n++) nch += (bounds[n + 1] - bounds[n] + CH - 1) / CH;
    int64_t *ch_lo = malloc(sizeof(int64_t) * NZ(nch));
    int64_t *ch_scope = malloc(sizeof(int64_t) * NZ(nch));
    double *part = malloc(sizeof(double) * NZ(nch * (E + 1)));
    if (!ch_lo || !ch_scope || !part) {
        free(ch_lo), free(ch_scope), free(part);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for loss statistics (%lld chunks of %lld experts)",
                        (long long)nch, (long long)E);
    }
    for (int64_t n = 0, c = 0; n < N; n++)
        for (int64_t lo = bounds[n]; lo < bounds[n + 1]; lo += CH) {
            ch_lo[c] = lo;
            ch_scope[c++] = n;
        }
#pragma omp parallel for if (T * E > 32768) schedule(static)
    for (int64_t c = 0; c < nch; c++) {
        double *pc = part + c * (E + 1);
        for (int64_t j = 0; j <= E; j++) pc[j] = 0;
        int64_t hi = ch_lo[c] + CH, end = bounds[ch_scope[c] + 1];
        if (hi > end) hi = end;
        for (int64_t t = ch_lo[c]; t < hi; t++) {
            if (valid && !valid[t]) continue;
            double inv = 1.0;
            if (moe_score_is_normalized(score)) {
                double rs = 0;
                if (rowsum) rs = rowsum[t];
                else
                    for (int64_t j = 0; j < E; j++) rs += moe_ld(s, dt, t * E + j);
                inv = 1.0 / (rs + eps);
            }
            for (int64_t j = 0; j < E; j++) pc[j] += moe_ld(s, dt, t * E + j) * inv;
            pc[E] += 1;
        }
    }
    for (int64_t c = 0; c < nch; c++) {
        double *dst = P + ch_scope[c] * E, *pc = part + c * (E + 1);
        for (int64_t j = 0; j < E; j++) dst[j] += pc[j];
        Tn[ch_scope[c]] += pc[E];
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = bounds[n]; t < bounds[n + 1]; t++) {
            if (valid && !valid[t]) continue;
            for (int64_t k = 0; k < K; k++) C[n * E + count_ids[t * K + k]] += 1;
        }
    free(ch_lo), free(ch_scope), free(part);
    return MOE_OK;
}

/* One f64 token: dz = g · (J_p(z)ᵀ w + z-term), w the token's segment row. */
static void row_f64(const moe_cpu_balance_grad *c, int64_t t, const double *W, const double *s,
                    const double *z, double *dz, double *w)
{
    const int64_t E = c->E;
    const double g = c->g;
    if (c->valid && !c->valid[t]) {
        for (int64_t j = 0; j < E; j++) dz[j] = 0;
        return;
    }
    if (c->score == MOE_SCORE_SOFTMAX) {
        double dot = 0;
        for (int64_t j = 0; j < E; j++) dot += W[j] * s[j];
        for (int64_t j = 0; j < E; j++) w[j] = s[j] * (W[j] - dot);
    } else {
        double S = 0, cw = 0;
        for (int64_t j = 0; j < E; j++) {
            S += s[j];
            cw += W[j] * s[j];
        }
        double D = S + c->eps;
        for (int64_t j = 0; j < E; j++)
            w[j] = (W[j] / D - cw / (D * D)) * moe_score_deriv(c->score, s[j], c->offset);
    }
    if (c->lse && c->z_count > 0) {
        double coef = c->z_coeff * 2.0 * c->lse[t] / c->z_count;
        if (c->score == MOE_SCORE_SOFTMAX)
            for (int64_t j = 0; j < E; j++) w[j] += coef * s[j];
        else
            for (int64_t j = 0; j < E; j++) w[j] += coef * exp(z[j] - c->lse[t]);
    }
    for (int64_t j = 0; j < E; j++) dz[j] = g * w[j];
}

/* One f32 token, four lanes at a time (the scalar form for the tail). */
static void row_f32(const moe_cpu_balance_grad *c, int64_t t, const float *W, const float *s,
                    const float *z, float *dz)
{
    const int64_t E = c->E, E4 = E - E % 4;
    const double g = c->g;
    if (c->valid && !c->valid[t]) {
        memset(dz, 0, sizeof(float) * (size_t)E);
        return;
    }
    bool zon = c->lse && c->z_count > 0;
    float coef = zon ? (float)(c->z_coeff * 2.0 * c->lse[t] / c->z_count) : 0.0f;
    float lse = zon ? (float)c->lse[t] : 0.0f, gf = (float)g;
    moe_v4f a4 = moe_vsplat(0), b4 = moe_vsplat(0);
    for (int64_t j = 0; j < E4; j += 4) {
        moe_v4f sj = moe_vload(s + j);
        a4 += moe_vload(W + j) * sj;
        b4 += sj;
    }
    float dot = moe_vsum(a4), S = moe_vsum(b4);
    for (int64_t j = E4; j < E; j++) {
        dot += W[j] * s[j];
        S += s[j];
    }
    if (c->score == MOE_SCORE_SOFTMAX) { /* dz = g·s ⊙ (W − W·s + coef) */
        moe_v4f d = moe_vsplat(dot - coef), gg = moe_vsplat(gf);
        for (int64_t j = 0; j < E4; j += 4) {
            moe_v4f v = gg * moe_vload(s + j) * (moe_vload(W + j) - d);
            memcpy(dz + j, &v, sizeof v);
        }
        for (int64_t j = E4; j < E; j++) dz[j] = gf * s[j] * (W[j] - (dot - coef));
        return;
    }
    if (c->score == MOE_SCORE_SQRTSOFTPLUS) { /* p = s/D as below, ds/dz from s, in double */
        double D = (double)S + c->eps;
        for (int64_t j = 0; j < E; j++) {
            double v = ((double)W[j] / D - (double)dot / (D * D)) * moe_score_deriv(c->score, s[j], c->offset);
            if (zon) v += (double)coef * exp((double)z[j] - c->lse[t]);
            dz[j] = (float)(g * v);
        }
        return;
    }
    /* sigmoid: p = s/D, D = S + ε: dz = g·((W/D − cw/D²)·σ(1−σ) + coef·softmax(z)) */
    float invD = (float)(1.0 / ((double)S + c->eps)), c2 = dot * invD * invD, off = (float)c->offset;
    moe_v4f vi = moe_vsplat(invD), vc = moe_vsplat(c2), vo = moe_vsplat(off), one = moe_vsplat(1.0f),
            gg = moe_vsplat(gf), vcoef = moe_vsplat(coef), vl = moe_vsplat(lse);
    for (int64_t j = 0; j < E4; j += 4) {
        moe_v4f sg = moe_vload(s + j) - vo;
        moe_v4f v = (moe_vload(W + j) * vi - vc) * sg * (one - sg);
        if (zon) v += vcoef * moe_vexp(moe_vload(z + j) - vl);
        v *= gg;
        memcpy(dz + j, &v, sizeof v);
    }
    for (int64_t j = E4; j < E; j++) {
        float sg = s[j] - off, v = (W[j] * invD - c2) * sg * (1.0f - sg);
        if (zon) v += coef * moe_fexp(z[j] - lse);
        dz[j] = gf * v;
    }
}

moe_status moe_cpu_balance_backward(const moe_cpu_balance_grad *p, const char *op)
{
    const int64_t T = p->T, E = p->E;
    bool fail = false;
#pragma omp parallel if (T * E > 32768)
    {
        double *w = p->dtype == MOE_F64 ? malloc(sizeof(double) * NZ(E)) : NULL;
        if (p->dtype == MOE_F64 && !w) fail = true;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            int64_t q = p->n_segs == 1 ? 0 : moe_cpu_scope_of(p->seg_bounds, p->n_segs, t);
            if (p->dtype == MOE_F32)
                row_f32(p, t, p->Wf + q * E, (const float *)p->s + t * E, (const float *)p->z + t * E,
                        (float *)p->dz + t * E);
            else if (w)
                row_f64(p, t, p->W + q * E, (const double *)p->s + t * E, (const double *)p->z + t * E,
                        (double *)p->dz + t * E, w);
        }
        free(w);
    }
    if (fail)
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory in backward (%lld bytes of scratch per thread)",
                        (long long)(sizeof(double) * NZ(E)));
    return MOE_OK;
}

void moe_cpu_z_sum(double *sum, double *count, const double *lse, const uint8_t *valid, int64_t T)
{
    double s = 0, n = 0;
    for (int64_t t = 0; t < T; t++) {
        if (valid && !valid[t]) continue;
        s += lse[t] * lse[t];
        n += 1;
    }
    *sum = s;
    *count = n;
}
