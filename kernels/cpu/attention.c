/* attention.c — fused causal attention on the CPU (see attention.h).
 *
 * Dimension letters: B batch, S sequence, H query heads, KV kv heads, hd
 * head dim, BQ/BK the query/key block sizes, nq/nk a block's rows.
 *
 * Forward, for the query block Qi of one (b, h), over key blocks Kj:
 *     s = scale·Qi Kjᵀ (masked)           m' = max(m, rowmax s)
 *     p = exp(s − m')                     l  = l·exp(m − m') + rowsum p
 *     acc = acc·exp(m − m') + p Vj        m  = m'
 * then out = acc / l and lse = m + log l.
 * Backward (D_i = rowsum(dout_i ⊙ out_i)), for every pair of blocks:
 *     p = exp(scale·Qi Kjᵀ − lse_i)       dVj += pᵀ dOi
 *     ds = p ⊙ (dOi Vjᵀ − D_i)            dQi += scale·ds Kj,  dKj += scale·dsᵀ Qi */
#include "attention.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "gemm.h"
#include "vector_math.h"

/* The row loops vectorise: O3's cost model takes loops whose length is only
 * known at run time, and without trapping math the comparisons (max, the
 * clamp in exp_f32) become branch-free selects. Sums keep their order, so
 * the values are those of the scalar loops. */
#pragma GCC optimize("O3", "no-trapping-math")

enum { BQ = 64, BK = 64 };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t per_thread(const moe_cpu_attention *p)
{
    /* forward: s [BQ BK], acc [BQ hd], m, l [BQ]; backward: s, ds [BQ BK], D [S] */
    int64_t fwd = BQ * BK + BQ * p->hd + 2 * BQ, bwd = 2 * BQ * BK + p->S;
    return fwd > bwd ? fwd : bwd;
}

int64_t moe_cpu_attention_scratch(const moe_cpu_attention *p)
{
    return per_thread(p) * omp_get_max_threads();
}

/* Keys of block J0 (NK of them) visible to query I: the count from the start
 * of the block (0..NK). */
static inline int64_t visible(bool causal, int64_t i, int64_t j0, int64_t nk)
{
    if (!causal) return nk;
    int64_t n = i - j0 + 1;
    return n < 0 ? 0 : (n > nk ? nk : n);
}

#define DEFINE_ATTENTION(T, GEMM, EXP, LOG, WIDE)                                                        \
    static void forward_##T(const moe_cpu_attention *p, T *out, T *lse, const T *q, const T *k,   \
                            const T *v, T *scratch)                                                 \
    {                                                                                               \
        const int64_t S = p->S, H = p->H, KV = p->KV, hd = p->hd, ldq = H * hd, ldk = KV * hd;    \
        const T scale = (T)p->scale;                                                                \
        _Pragma("omp parallel for schedule(static)")                                                \
        for (int64_t bh = 0; bh < p->B * H; bh++) {                                                 \
            int64_t b = bh / H, h = bh % H, g = h * KV / H;                                         \
            T *s = scratch + (int64_t)omp_get_thread_num() * per_thread(p);                         \
            T *acc = s + BQ * BK, *m = acc + BQ * hd, *l = m + BQ;                                  \
            memset(s, 0, sizeof *s * BQ * BK); /* columns past a block's keys stay finite */       \
            const T *Q = q + b * S * ldq + h * hd, *K = k + b * S * ldk + g * hd,                   \
                    *V = v + b * S * ldk + g * hd;                                                  \
            T *O = out + b * S * ldq + h * hd, *L = lse + bh * S;                                   \
            for (int64_t i0 = 0; i0 < S; i0 += BQ) {                                                \
                int64_t nq = min64(BQ, S - i0), jend = p->causal ? i0 + nq : S;                     \
                for (int64_t r = 0; r < nq; r++) m[r] = -INFINITY, l[r] = 0;                        \
                memset(acc, 0, sizeof *acc * (size_t)(nq * hd));                                    \
                for (int64_t j0 = 0; j0 < jend; j0 += BK) {                                         \
                    int64_t nk = min64(BK, jend - j0);                                              \
                    GEMM(false, true, nq, nk, hd, scale, Q + i0 * ldq, ldq, K + j0 * ldk, ldk, 0,   \
                         s, BK);                                                                    \
                    for (int64_t r = 0; r < nq; r++) {                                              \
                        T *sr = s + r * BK;                                                         \
                        int64_t n = visible(p->causal, i0 + r, j0, nk);                             \
                        T mx = m[r];                                                                \
                        _Pragma("omp simd reduction(max : mx)")                                     \
                        for (int64_t c = 0; c < n; c++) mx = sr[c] > mx ? sr[c] : mx;               \
                        T corr = m[r] == -INFINITY ? 0 : EXP(m[r] - mx), sum = 0;                   \
                        if (WIDE) /* the whole row: a fixed trip count that vectorises */           \
                            for (int64_t c = 0; c < BK; c++) sr[c] = EXP(sr[c] - mx);               \
                        else                                                                        \
                            for (int64_t c = 0; c < n; c++) sr[c] = EXP(sr[c] - mx);                \
                        for (int64_t c = n; c < BK; c++) sr[c] = 0;                                 \
                        for (int64_t c = 0; c < n; c++) sum += sr[c];                               \
                        if (n > 0) {                                                                \
                            l[r] = l[r] * corr + sum;                                               \
                            m[r] = mx;                                                              \
                            if (corr != 1)                                                          \
                                for (int64_t d = 0; d < hd; d++) acc[r * hd + d] *= corr;           \
                        }                                                                           \
                    }                                                                               \
                    GEMM(false, false, nq, hd, nk, 1, s, BK, V + j0 * ldk, ldk, 1, acc, hd);        \
                }                                                                                   \
                for (int64_t r = 0; r < nq; r++) {                                                  \
                    T inv = l[r] > 0 ? 1 / l[r] : 0;                                                \
                    T *o = O + (i0 + r) * ldq;                                                      \
                    for (int64_t d = 0; d < hd; d++) o[d] = acc[r * hd + d] * inv;                  \
                    L[i0 + r] = l[r] > 0 ? m[r] + LOG(l[r]) : -INFINITY;                            \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
                                                                                                    \
    static void backward_##T(const moe_cpu_attention *p, T *dq, T *dk, T *dv, const T *dout,       \
                             const T *q, const T *k, const T *v, const T *out, const T *lse,        \
                             T *scratch)                                                            \
    {                                                                                               \
        const int64_t S = p->S, H = p->H, KV = p->KV, hd = p->hd, ldq = H * hd, ldk = KV * hd;    \
        const int64_t G = H / KV; /* query heads per kv head */                                     \
        const T scale = (T)p->scale;                                                                \
        _Pragma("omp parallel for schedule(static)")                                                \
        for (int64_t bg = 0; bg < p->B * KV; bg++) {                                                \
            int64_t b = bg / KV, g = bg % KV;                                                       \
            T *s = scratch + (int64_t)omp_get_thread_num() * per_thread(p);                         \
            T *ds = s + BQ * BK, *D = ds + BQ * BK;                                                 \
            memset(s, 0, sizeof *s * 2 * BQ * BK); /* columns past a block's keys stay finite */   \
            const T *K = k + b * S * ldk + g * hd, *V = v + b * S * ldk + g * hd;                   \
            T *dK = dk + b * S * ldk + g * hd, *dV = dv + b * S * ldk + g * hd;                     \
            for (int64_t j = 0; j < S; j++) {                                                       \
                memset(dK + j * ldk, 0, sizeof *dK * (size_t)hd);                                   \
                memset(dV + j * ldk, 0, sizeof *dV * (size_t)hd);                                   \
            }                                                                                       \
            for (int64_t h = g * G; h < (g + 1) * G; h++) {                                         \
                const T *Q = q + b * S * ldq + h * hd, *dO = dout + b * S * ldq + h * hd,           \
                        *O = out + b * S * ldq + h * hd, *L = lse + (b * H + h) * S;                \
                T *dQ = dq + b * S * ldq + h * hd;                                                  \
                for (int64_t i = 0; i < S; i++) {                                                   \
                    T sum = 0;                                                                      \
                    for (int64_t d = 0; d < hd; d++) sum += dO[i * ldq + d] * O[i * ldq + d];       \
                    D[i] = sum;                                                                     \
                    memset(dQ + i * ldq, 0, sizeof *dQ * (size_t)hd);                               \
                }                                                                                   \
                for (int64_t j0 = 0; j0 < S; j0 += BK) {                                            \
                    int64_t nk = min64(BK, S - j0);                                                 \
                    for (int64_t i0 = p->causal ? j0 / BQ * BQ : 0; i0 < S; i0 += BQ) {             \
                        int64_t nq = min64(BQ, S - i0);                                             \
                        GEMM(false, true, nq, nk, hd, scale, Q + i0 * ldq, ldq, K + j0 * ldk, ldk,  \
                             0, s, BK);                                                             \
                        GEMM(false, true, nq, nk, hd, 1, dO + i0 * ldq, ldq, V + j0 * ldk, ldk, 0,  \
                             ds, BK);                                                               \
                        for (int64_t r = 0; r < nq; r++) {                                          \
                            T *sr = s + r * BK, *dsr = ds + r * BK, li = L[i0 + r],                 \
                              Di = D[i0 + r];                                                       \
                            int64_t n = visible(p->causal, i0 + r, j0, nk);                         \
                            if (WIDE)                                                               \
                                for (int64_t c = 0; c < BK; c++) {                                  \
                                    T pr = EXP(sr[c] - li);                                         \
                                    sr[c] = pr;                                                     \
                                    dsr[c] = pr * (dsr[c] - Di);                                    \
                                }                                                                   \
                            else                                                                    \
                                for (int64_t c = 0; c < n; c++) {                                   \
                                    T pr = EXP(sr[c] - li);                                         \
                                    sr[c] = pr;                                                     \
                                    dsr[c] = pr * (dsr[c] - Di);                                    \
                                }                                                                   \
                            for (int64_t c = n; c < BK; c++) sr[c] = dsr[c] = 0;                    \
                        }                                                                           \
                        GEMM(true, false, nk, hd, nq, 1, s, BK, dO + i0 * ldq, ldq, 1,              \
                             dV + j0 * ldk, ldk);                                                   \
                        GEMM(false, false, nq, hd, nk, scale, ds, BK, K + j0 * ldk, ldk, 1,         \
                             dQ + i0 * ldq, ldq);                                                   \
                        GEMM(true, false, nk, hd, nq, scale, ds, BK, Q + i0 * ldq, ldq, 1,          \
                             dK + j0 * ldk, ldk);                                                   \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

DEFINE_ATTENTION(float, moe_cpu_sgemm, exp_f32, logf, 1)
DEFINE_ATTENTION(double, moe_cpu_dgemm, exp, log, 0)

void moe_cpu_attention_forward(const moe_cpu_attention *p, void *out, void *lse, const void *q,
                               const void *k, const void *v, void *scratch)
{
    if (p->dtype == MOE_F32)
        forward_float(p, out, lse, q, k, v, scratch);
    else
        forward_double(p, out, lse, q, k, v, scratch);
}

void moe_cpu_attention_backward(const moe_cpu_attention *p, void *dq, void *dk, void *dv,
                                const void *dout, const void *q, const void *k, const void *v,
                                const void *out, const void *lse, void *scratch)
{
    if (p->dtype == MOE_F32)
        backward_float(p, dq, dk, dv, dout, q, k, v, out, lse, scratch);
    else
        backward_double(p, dq, dk, dv, dout, q, k, v, out, lse, scratch);
}
