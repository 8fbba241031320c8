/* attention.c — fused causal attention on the CPU (see attention.h).
 *
 * Dimension letters: B batch, S sequence, H query heads, KV kv heads, hd
 * head dim, nq/nk the query rows/keys of one product.
 *
 * Every product is one moe_cpu_sgemm call on slices of the inputs, which
 * it reads where they lie. Products of the form A·Bᵀ copy B's slice
 * transposed into a packed panel (sgemm.c), so each is arranged to make
 * that slice a block of 32 rows: the forward takes its scores transposed,
 * sᵀ = Kj Qiᵀ [keys queries], with the block of queries as B, and the
 * probabilities then meet V as (sᵀ)ᵀ Vj, whose operands are both read in
 * place; the backward's scores Qi Kjᵀ have the block of keys as B. Neither
 * K nor V is ever copied whole.
 *
 * Forward: each block Qi of BQ query rows meets the keys it may see (all S,
 * or under the causal mask those up to its last row) in chunks Kj of up to
 * KC keys; for S <= KC in one chunk, whose softmax is then exact:
 *     sᵀ = scale·Kj Qiᵀ (masked)          m' = max(m, colmax sᵀ)
 *     pᵀ = exp(sᵀ − m')                   l  = l·exp(m − m') + colsum pᵀ
 *     Oi = Oi·exp(m − m') + p Vj          m  = m'
 * then Oi /= l and lse = m + log l; the column loops run the block's BQ
 * queries side by side in vector lanes.
 * Backward, with D = rowsum(dO ⊙ O): each block Kj, Vj of BK keys meets the
 * query rows that see it, in chunks Qi of up to QC rows:
 *     p = exp(scale·Qi Kjᵀ − lse_i)       dVj += pᵀ dOi
 *     ds = p ⊙ (dOi Vjᵀ − D_i)            dKj += scale·dsᵀ Qi,  dQi += scale·ds Kj
 * Blocks are narrow (BQ = BK = 32) so that little work goes to the masked
 * half of the blocks on the diagonal. The first product into every output
 * row has β = 0, so no output needs clearing first.
 *
 * Where the f32 products run on the AVX2 kernel, f32 attention with a
 * head dim that is a multiple of 16 runs in attention_avx2.c instead: the
 * same sums on that kernel's micro-tiles.
 *
 * The tasks (a batch row and a head; in the backward a kv head) go to the
 * threads as they free up, so a thread slowed by something else does not
 * hold the rest back; each task writes only its own rows, so which thread
 * runs it does not change a bit. */
#include "attention.h"
#include "attention_avx2.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "gemm.h"
#include "int_math.h"
#include "sgemm.h"
#include "vector_math.h"

/* The row loops vectorise: O3's cost model takes loops whose length is only
 * known at run time, and without trapping math the comparisons (max, the
 * clamp in exp_f32) become branch-free selects. */
#pragma GCC optimize("O3", "no-trapping-math")

/* KC is a multiple of BQ, so a forward chunk never starts past its block's
 * first row (every row sees at least one key of every chunk it meets). */
enum { BQ = 32, KC = 256, BK = 32, QC = 256 };


/* The forward's query rows per block and keys per chunk, the backward's
 * keys per block and query rows per chunk, for this sequence length. */
static int64_t block_rows(const moe_cpu_attention *p) { return min64(BQ, p->S); }
static int64_t chunk_keys(const moe_cpu_attention *p) { return min64(KC, p->S); }
static int64_t block_keys(const moe_cpu_attention *p) { return min64(BK, p->S); }
static int64_t chunk_rows(const moe_cpu_attention *p) { return min64(QC, p->S); }

static int64_t per_thread(const moe_cpu_attention *p)
{
    /* forward: sᵀ [KC BQ], m, l, corr [BQ]; backward: s, ds [QC BK], D [S] */
    int64_t fwd = chunk_keys(p) * block_rows(p) + 3 * block_rows(p),
            bwd = 2 * chunk_rows(p) * block_keys(p) + p->S;
    return fwd > bwd ? fwd : bwd;
}

int64_t moe_cpu_attention_scratch(const moe_cpu_attention *p)
{
    /* enough for either path, which a change of kernel may switch between */
    int64_t fast = moe_cpu_attention_avx2_scratch(p), general = per_thread(p);
    return (fast > general ? fast : general) * omp_get_max_threads();
}

/* The loops over the scores of nq queries and nk keys. Query r sees the
 * first min(first + r, nk) keys (first >= 1: the keys start at or before
 * the first query's own position); its other scores are set to 0, so the
 * products that follow add nothing for masked keys.
 *
 *   softmax_cols: Sᵀ [nk nq] ← exp(Sᵀ − m'), a query per column, with the
 *                 running max M, sum L and the factor CORR that rescales
 *                 the queries' earlier output (FIRST_CHUNK: no earlier
 *                 output; M, L start here). Keys below FIRST are seen by
 *                 every column, key j >= FIRST by the columns r > j − FIRST.
 *   grad_rows:    S [nq nk] ← p = exp(S − lse), DS ← p ⊙ (DS − D).
 *   row_dots:     D[r] = dO[r]·O[r]. */
#define DEFINE_ROWS(T, EXP)                                                                        \
    static inline __attribute__((always_inline)) void                                              \
    softmax_cols_body_##T(T *restrict s, int64_t lds, int64_t nk, int nq, int64_t first,           \
                          bool first_chunk, T *restrict m, T *restrict l, T *restrict corr)        \
    {                                                                                              \
        T mx[BQ], sum[BQ];                                                                         \
        for (int r = 0; r < nq; r++) {                                                             \
            mx[r] = first_chunk ? s[r] : m[r];                                                     \
            sum[r] = 0;                                                                            \
        }                                                                                          \
        for (int64_t j = 0; j < nk; j++) {                                                         \
            const T *sj = s + j * lds;                                                             \
            int lim = (int)(j - first); /* negative: the whole row */                              \
            _Pragma("omp simd")                                                                    \
            for (int r = 0; r < nq; r++) mx[r] = r > lim && sj[r] > mx[r] ? sj[r] : mx[r];         \
        }                                                                                          \
        for (int64_t j = 0; j < nk; j++) {                                                         \
            T *sj = s + j * lds;                                                                   \
            int lim = (int)(j - first);                                                            \
            _Pragma("omp simd")                                                                    \
            for (int r = 0; r < nq; r++) {                                                         \
                T e = r > lim ? EXP(sj[r] - mx[r]) : (T)0;                                         \
                sj[r] = e;                                                                         \
                sum[r] += e;                                                                       \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < nq; r++) {                                                             \
            if (first_chunk) {                                                                     \
                l[r] = sum[r];                                                                     \
            } else {                                                                               \
                corr[r] = EXP(m[r] - mx[r]);                                                       \
                l[r] = l[r] * corr[r] + sum[r];                                                    \
            }                                                                                      \
            m[r] = mx[r];                                                                          \
        }                                                                                          \
    }                                                                                              \
    SIMD_CLONES static void softmax_cols_##T(T *restrict s, int64_t lds, int64_t nk, int64_t nq,   \
                                             int64_t first, bool first_chunk, T *restrict m,       \
                                             T *restrict l, T *restrict corr)                      \
    {                                                                                              \
        if (nq == BQ) /* a whole block: the lanes' count is a constant */                          \
            softmax_cols_body_##T(s, lds, nk, BQ, first, first_chunk, m, l, corr);                 \
        else                                                                                       \
            softmax_cols_body_##T(s, lds, nk, (int)nq, first, first_chunk, m, l, corr);            \
    }                                                                                              \
    SIMD_CLONES static void grad_rows_##T(T *restrict s, T *restrict ds, int64_t lds, int64_t nq,  \
                                          int64_t nk, int64_t first, const T *restrict lse,        \
                                          const T *restrict D)                                     \
    {                                                                                              \
        for (int64_t r = 0; r < nq; r++) {                                                         \
            T *sr = s + r * lds, *dsr = ds + r * lds, li = lse[r], Di = D[r];                      \
            int64_t n = min64(first + r, nk);                                                      \
            _Pragma("omp simd")                                                                    \
            for (int64_t c = 0; c < n; c++) {                                                      \
                T pr = EXP(sr[c] - li);                                                            \
                sr[c] = pr;                                                                        \
                dsr[c] = pr * (dsr[c] - Di);                                                       \
            }                                                                                      \
            for (int64_t c = n; c < nk; c++) sr[c] = dsr[c] = 0;                                   \
        }                                                                                          \
    }                                                                                              \
    SIMD_CLONES static void row_dots_##T(T *restrict D, const T *restrict dO,                      \
                                         const T *restrict O, int64_t ld, int64_t nq, int64_t hd)  \
    {                                                                                              \
        for (int64_t r = 0; r < nq; r++) {                                                         \
            T sum = 0;                                                                             \
            _Pragma("omp simd reduction(+ : sum)")                                                 \
            for (int64_t d = 0; d < hd; d++) sum += dO[r * ld + d] * O[r * ld + d];                \
            D[r] = sum;                                                                            \
        }                                                                                          \
    }

DEFINE_ROWS(float, exp_f32)
DEFINE_ROWS(double, exp_f64)

#define DEFINE_ATTENTION(T, GEMM, LOG)                                                             \
    static void forward_##T(const moe_cpu_attention *p, T *out, T *lse, const T *q, const T *k,    \
                            const T *v, T *scratch)                                                \
    {                                                                                              \
        const int64_t S = p->S, H = p->H, KV = p->KV, hd = p->hd, ldq = H * hd, ldk = KV * hd;     \
        const int64_t bq = block_rows(p), kc = chunk_keys(p);                                      \
        const T scale = (T)p->scale;                                                               \
        _Pragma("omp parallel for schedule(dynamic)")                                              \
        for (int64_t bh = 0; bh < p->B * H; bh++) {                                                \
            int64_t b = bh / H, h = bh % H, g = h * KV / H;                                        \
            T *s = scratch + (int64_t)omp_get_thread_num() * per_thread(p);                        \
            T *m = s + kc * bq, *l = m + bq, *corr = l + bq;                                       \
            const T *Q = q + b * S * ldq + h * hd, *K = k + b * S * ldk + g * hd,                  \
                    *V = v + b * S * ldk + g * hd;                                                 \
            T *O = out + b * S * ldq + h * hd, *L = lse + bh * S;                                  \
            for (int64_t i0 = 0; i0 < S; i0 += bq) {                                               \
                int64_t nq = min64(bq, S - i0), jend = p->causal ? i0 + nq : S;                    \
                T *Oi = O + i0 * ldq;                                                              \
                for (int64_t j0 = 0; j0 < jend; j0 += kc) {                                        \
                    int64_t nk = min64(kc, jend - j0), first = p->causal ? i0 - j0 + 1 : nk;       \
                    GEMM(false, true, nk, nq, hd, scale, K + j0 * ldk, ldk, Q + i0 * ldq, ldq, 0,  \
                         s, bq);                                                                   \
                    softmax_cols_##T(s, bq, nk, nq, first, j0 == 0, m, l, corr);                   \
                    if (j0 > 0)                                                                    \
                        for (int64_t r = 0; r < nq; r++)                                           \
                            for (int64_t d = 0; d < hd; d++) Oi[r * ldq + d] *= corr[r];           \
                    GEMM(true, false, nq, hd, nk, 1, s, bq, V + j0 * ldk, ldk, j0 > 0, Oi, ldq);   \
                }                                                                                  \
                for (int64_t r = 0; r < nq; r++) {                                                 \
                    T inv = 1 / l[r];                                                              \
                    for (int64_t d = 0; d < hd; d++) Oi[r * ldq + d] *= inv;                       \
                    L[i0 + r] = m[r] + LOG(l[r]);                                                  \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    static void backward_##T(const moe_cpu_attention *p, T *dq, T *dk, T *dv, const T *dout,      \
                             const T *q, const T *k, const T *v, const T *out, const T *lse,       \
                             T *scratch)                                                           \
    {                                                                                              \
        const int64_t S = p->S, H = p->H, KV = p->KV, hd = p->hd, ldq = H * hd, ldk = KV * hd;     \
        const int64_t G = H / KV; /* query heads per kv head */                                    \
        const int64_t bk = block_keys(p), qc = chunk_rows(p);                                      \
        const T scale = (T)p->scale;                                                               \
        _Pragma("omp parallel for schedule(dynamic)")                                              \
        for (int64_t bg = 0; bg < p->B * KV; bg++) {                                               \
            int64_t b = bg / KV, g = bg % KV;                                                      \
            T *s = scratch + (int64_t)omp_get_thread_num() * per_thread(p);                        \
            T *ds = s + qc * bk, *D = ds + qc * bk;                                                \
            const T *K = k + b * S * ldk + g * hd, *V = v + b * S * ldk + g * hd;                  \
            T *dK = dk + b * S * ldk + g * hd, *dV = dv + b * S * ldk + g * hd;                    \
            for (int64_t h = g * G; h < (g + 1) * G; h++) {                                        \
                const T *Q = q + b * S * ldq + h * hd, *dO = dout + b * S * ldq + h * hd,          \
                        *O = out + b * S * ldq + h * hd, *L = lse + (b * H + h) * S;               \
                T *dQ = dq + b * S * ldq + h * hd;                                                 \
                row_dots_##T(D, dO, O, ldq, S, hd);                                                \
                for (int64_t j0 = 0; j0 < S; j0 += bk) {                                           \
                    int64_t nk = min64(bk, S - j0), istart = p->causal ? j0 : 0;                   \
                    const T *Kj = K + j0 * ldk;                                                    \
                    for (int64_t i0 = istart; i0 < S; i0 += qc) {                                  \
                        int64_t nq = min64(qc, S - i0), first = p->causal ? i0 - j0 + 1 : nk;      \
                        T kv_beta = h > g * G || i0 > istart; /* dKj, dVj written before */        \
                        GEMM(false, true, nq, nk, hd, scale, Q + i0 * ldq, ldq, Kj, ldk, 0, s,     \
                             bk);                                                                  \
                        GEMM(false, true, nq, nk, hd, 1, dO + i0 * ldq, ldq, V + j0 * ldk, ldk, 0, \
                             ds, bk);                                                              \
                        grad_rows_##T(s, ds, bk, nq, nk, first, L + i0, D + i0);                   \
                        GEMM(true, false, nk, hd, nq, 1, s, bk, dO + i0 * ldq, ldq, kv_beta,       \
                             dV + j0 * ldk, ldk);                                                  \
                        GEMM(true, false, nk, hd, nq, scale, ds, bk, Q + i0 * ldq, ldq, kv_beta,   \
                             dK + j0 * ldk, ldk);                                                  \
                        GEMM(false, false, nq, hd, nk, scale, ds, bk, Kj, ldk, j0 > 0,             \
                             dQ + i0 * ldq, ldq);                                                  \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_ATTENTION(float, moe_cpu_sgemm, logf)
DEFINE_ATTENTION(double, moe_cpu_dgemm, log)

void moe_cpu_attention_grad_rows(float *s, float *ds, int64_t lds, int64_t nq, int64_t nk,
                                 int64_t first, const float *lse, const float *D)
{
    grad_rows_float(s, ds, lds, nq, nk, first, lse, D);
}

void moe_cpu_attention_row_dots(float *D, const float *dO, const float *O, int64_t ld,
                                int64_t nq, int64_t hd)
{
    row_dots_float(D, dO, O, ld, nq, hd);
}

void moe_cpu_attention_forward(const moe_cpu_attention *p, void *out, void *lse, const void *q,
                               const void *k, const void *v, void *scratch)
{
    if (moe_cpu_attention_avx2_fits(p))
        moe_cpu_attention_avx2_forward(p, out, lse, q, k, v, scratch);
    else if (p->dtype == MOE_F32)
        forward_float(p, out, lse, q, k, v, scratch);
    else
        forward_double(p, out, lse, q, k, v, scratch);
}

void moe_cpu_attention_backward(const moe_cpu_attention *p, void *dq, void *dk, void *dv,
                                const void *dout, const void *q, const void *k, const void *v,
                                const void *out, const void *lse, void *scratch)
{
    if (moe_cpu_attention_avx2_fits(p))
        moe_cpu_attention_avx2_backward(p, dq, dk, dv, dout, q, k, v, out, lse, scratch);
    else if (p->dtype == MOE_F32)
        backward_float(p, dq, dk, dv, dout, q, k, v, out, lse, scratch);
    else
        backward_double(p, dq, dk, dv, dout, q, k, v, out, lse, scratch);
}
