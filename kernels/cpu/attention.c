/* attention.c — fused causal attention on the CPU (see attention.h).
 *
 * Dimension letters: B batch, S sequence, H query heads, KV kv heads, hd
 * head dim, nq/nk the query rows/keys of one product.
 *
 * Every product is one moe_cpu_sgemm call on slices of the inputs. A
 * product A·Bᵀ of two row-major matrices (the scores q·kᵀ) would transpose
 * B's slice in every call (sgemm.c's packing, or OpenBLAS's general path
 * without AVX-512); so each task transposes K (and in the backward V) once
 * into scratch, Kᵀ [hd S], and the score products become plain A·B.
 *
 * Forward: each block Qi of BQ query rows meets the keys it may see (all S,
 * or under the causal mask those up to its last row) in chunks Kj of up to
 * KC keys; for S <= KC in one chunk, whose softmax is then exact:
 *     s = scale·Qi Kjᵀ (masked)           m' = max(m, rowmax s)
 *     p = exp(s − m')                     l  = l·exp(m − m') + rowsum p
 *     Oi = Oi·exp(m − m') + p Vj          m  = m'
 * then Oi /= l and lse = m + log l.
 * Backward, with D = rowsum(dO ⊙ O): each block Kj, Vj of BK keys meets the
 * query rows that see it, in chunks Qi of up to QC rows:
 *     p = exp(scale·Qi Kjᵀ − lse_i)       dVj += pᵀ dOi
 *     ds = p ⊙ (dOi Vjᵀ − D_i)            dKj += scale·dsᵀ Qi,  dQi += scale·ds Kj
 * Blocks are narrow (BQ = BK = 32) so that little work goes to the masked
 * half of the blocks on the diagonal. The first product into every output
 * row has β = 0, so no output needs clearing first.
 *
 * The tasks (a batch row and a head; in the backward a kv head) go to the
 * threads as they free up, so a thread slowed by something else does not
 * hold the rest back; each task writes only its own rows, so which thread
 * runs it does not change a bit. */
#include "attention.h"

#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "gemm.h"
#include "sgemm.h"
#include "transpose16.h"
#include "vector_math.h"

/* The row loops vectorise: O3's cost model takes loops whose length is only
 * known at run time, and without trapping math the comparisons (max, the
 * clamp in exp_f32) become branch-free selects. */
#pragma GCC optimize("O3", "no-trapping-math")

/* KC is a multiple of BQ, so a forward chunk never starts past its block's
 * first row (every row sees at least one key of every chunk it meets). */
enum { BQ = 32, KC = 256, BK = 32, QC = 256 };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* KT [hd S] ← K [S hd] (rows at stride LD), in 8×8 tiles that the compiler
 * keeps in vector registers: NAME, for elements of type T. */
#define DEFINE_TRANSPOSE(T, NAME)                                                                  \
    SIMD_CLONES static void NAME(T *restrict kt, const T *restrict k, int64_t S, int64_t hd,       \
                                 int64_t ld)                                                       \
    {                                                                                              \
        int64_t j0 = 0;                                                                            \
        for (; j0 + 8 <= S; j0 += 8) {                                                             \
            int64_t d0 = 0;                                                                        \
            for (; d0 + 8 <= hd; d0 += 8) {                                                        \
                T t[8][8];                                                                         \
                for (int a = 0; a < 8; a++)                                                        \
                    for (int c = 0; c < 8; c++) t[a][c] = k[(j0 + a) * ld + d0 + c];               \
                for (int c = 0; c < 8; c++)                                                        \
                    for (int a = 0; a < 8; a++) kt[(d0 + c) * S + j0 + a] = t[a][c];               \
            }                                                                                      \
            for (; d0 < hd; d0++)                                                                  \
                for (int a = 0; a < 8; a++) kt[d0 * S + j0 + a] = k[(j0 + a) * ld + d0];           \
        }                                                                                          \
        for (; j0 < S; j0++)                                                                       \
            for (int64_t d = 0; d < hd; d++) kt[d * S + j0] = k[j0 * ld + d];                      \
    }
DEFINE_TRANSPOSE(float, transpose_plain_float)
DEFINE_TRANSPOSE(double, transpose_double)

static void transpose_float(float *restrict kt, const float *restrict k, int64_t S, int64_t hd,
                            int64_t ld)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (moe_cpu_sgemm_native_ok()) { /* 16 x 16 blocks in AVX-512 registers */
        transpose16_matrix(kt, S, k, ld, S, hd);
        return;
    }
#endif
    transpose_plain_float(kt, k, S, hd, ld);
}

/* The forward's query rows per block and keys per chunk, the backward's
 * keys per block and query rows per chunk, for this sequence length. */
static int64_t block_rows(const moe_cpu_attention *p) { return min64(BQ, p->S); }
static int64_t chunk_keys(const moe_cpu_attention *p) { return min64(KC, p->S); }
static int64_t block_keys(const moe_cpu_attention *p) { return min64(BK, p->S); }
static int64_t chunk_rows(const moe_cpu_attention *p) { return min64(QC, p->S); }

static int64_t per_thread(const moe_cpu_attention *p)
{
    /* forward: s [BQ KC], m, l, corr [BQ], Kᵀ [hd S];
     * backward: s, ds [QC BK], D [S], Kᵀ, Vᵀ [hd S] */
    int64_t fwd = block_rows(p) * chunk_keys(p) + 3 * block_rows(p) + p->hd * p->S,
            bwd = 2 * chunk_rows(p) * block_keys(p) + p->S + 2 * p->hd * p->S;
    return fwd > bwd ? fwd : bwd;
}

int64_t moe_cpu_attention_scratch(const moe_cpu_attention *p)
{
    return per_thread(p) * omp_get_max_threads();
}

/* The row loops over the scores of nq query rows and nk keys. Row r sees
 * the first min(first + r, nk) keys (first >= 1: the keys start at or
 * before the first row's own position); the rest of the row is set to 0,
 * so the products that follow add nothing for masked keys.
 *
 *   softmax_rows: S ← exp(S − m'), with the running max M, sum L and the
 *                 factor CORR that rescales the rows' earlier output
 *                 (FIRST_CHUNK: no earlier output; M, L start here).
 *   grad_rows:    S ← p = exp(S − lse), DS ← p ⊙ (DS − D).
 *   row_dots:     D[r] = dO[r]·O[r]. */
#define DEFINE_ROWS(T, EXP)                                                                        \
    SIMD_CLONES static void softmax_rows_##T(T *restrict s, int64_t lds, int64_t nq, int64_t nk,   \
                                             int64_t first, bool first_chunk, T *restrict m,       \
                                             T *restrict l, T *restrict corr)                      \
    {                                                                                              \
        for (int64_t r = 0; r < nq; r++) {                                                         \
            T *sr = s + r * lds;                                                                   \
            int64_t n = min64(first + r, nk);                                                      \
            T mx = first_chunk ? sr[0] : m[r];                                                     \
            _Pragma("omp simd reduction(max : mx)")                                                \
            for (int64_t c = 0; c < n; c++) mx = sr[c] > mx ? sr[c] : mx;                          \
            T sum = 0;                                                                             \
            _Pragma("omp simd reduction(+ : sum)")                                                 \
            for (int64_t c = 0; c < n; c++) {                                                      \
                T e = EXP(sr[c] - mx);                                                             \
                sr[c] = e;                                                                         \
                sum += e;                                                                          \
            }                                                                                      \
            for (int64_t c = n; c < nk; c++) sr[c] = 0;                                            \
            if (first_chunk) {                                                                     \
                l[r] = sum;                                                                        \
            } else {                                                                               \
                corr[r] = EXP(m[r] - mx);                                                          \
                l[r] = l[r] * corr[r] + sum;                                                       \
            }                                                                                      \
            m[r] = mx;                                                                             \
        }                                                                                          \
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
            T *m = s + bq * kc, *l = m + bq, *corr = l + bq, *Kt = corr + bq;                      \
            const T *Q = q + b * S * ldq + h * hd, *K = k + b * S * ldk + g * hd,                  \
                    *V = v + b * S * ldk + g * hd;                                                 \
            T *O = out + b * S * ldq + h * hd, *L = lse + bh * S;                                  \
            transpose_##T(Kt, K, S, hd, ldk);                                                      \
            for (int64_t i0 = 0; i0 < S; i0 += bq) {                                               \
                int64_t nq = min64(bq, S - i0), jend = p->causal ? i0 + nq : S;                    \
                T *Oi = O + i0 * ldq;                                                              \
                for (int64_t j0 = 0; j0 < jend; j0 += kc) {                                        \
                    int64_t nk = min64(kc, jend - j0), first = p->causal ? i0 - j0 + 1 : nk;       \
                    GEMM(false, false, nq, nk, hd, scale, Q + i0 * ldq, ldq, Kt + j0, S, 0,        \
                         s, kc);                                                                   \
                    softmax_rows_##T(s, kc, nq, nk, first, j0 == 0, m, l, corr);                   \
                    if (j0 > 0)                                                                    \
                        for (int64_t r = 0; r < nq; r++)                                           \
                            for (int64_t d = 0; d < hd; d++) Oi[r * ldq + d] *= corr[r];           \
                    GEMM(false, false, nq, hd, nk, 1, s, kc, V + j0 * ldk, ldk, j0 > 0, Oi, ldq);  \
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
            T *ds = s + qc * bk, *D = ds + qc * bk, *Kt = D + S, *Vt = Kt + hd * S;                \
            const T *K = k + b * S * ldk + g * hd, *V = v + b * S * ldk + g * hd;                  \
            T *dK = dk + b * S * ldk + g * hd, *dV = dv + b * S * ldk + g * hd;                    \
            transpose_##T(Kt, K, S, hd, ldk);                                                      \
            transpose_##T(Vt, V, S, hd, ldk);                                                      \
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
                        GEMM(false, false, nq, nk, hd, scale, Q + i0 * ldq, ldq, Kt + j0, S, 0, s, \
                             bk);                                                                  \
                        GEMM(false, false, nq, nk, hd, 1, dO + i0 * ldq, ldq, Vt + j0, S, 0, ds,   \
                             bk);                                                                  \
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
