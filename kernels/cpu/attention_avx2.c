/* attention_avx2.c — attention.c's f32 attention where the products run
 * on the AVX2 kernel, for head dims that are a multiple of 16: the same
 * sums, but every product is a run of the 6 x 16 micro-tiles of
 * avx2_tile.h on operands packed once per head, instead of a
 * moe_cpu_sgemm call per block. (Where they run on the AVX-512 kernel,
 * attention.c's products were measured as they are; this path was not.)
 *
 * Why: at hd = 64 and S = 256 attention's block products are small (a
 * block of 32 queries by at most 256 keys), and through the general sgemm
 * each paid for a call, for copying one operand transposed, for a 32-row
 * side that is not a multiple of 6, and for the masked half of its
 * diagonal block: in the training step they ran at 50-60 GFLOP/s a
 * thread, against 85-92 for the kernel on warm operands. Here (a layer's
 * attention 5-7% faster in the step; most of what is left is its
 * operands arriving from memory):
 *   - a head's K (transposed, 16 keys to a panel) and V (16 dims to a
 *     panel) are packed once per task and meet every query tile;
 *   - queries are the tiles' rows (6 at a time), keys their columns, so
 *     a tile on the causal diagonal stops at the panel holding its last
 *     row's key (at most 15 masked keys a row are multiplied);
 *   - the softmax runs along each query's row of scores, contiguous.
 *
 * Forward, per (b, h) and tile of MR query rows, over the keys it may see
 * in chunks of FKC:  s = scale·Qt Kcᵀ,  online softmax (as attention.c),
 * Ot = Ot·corr + p Vc; then Ot /= l, lse = m + log l.
 * Backward, per (b, kv head), for each query head of the group and each
 * block of BK keys, over the query rows that see it in chunks of QC:
 *     s = scale·Qt Kbᵀ, dp = dOt Vbᵀ (a tile of rows at a time),
 *     p = exp(s − lse), ds = p ⊙ (dp − D), dQt += scale·ds Kb;
 *     dVb += pᵀ dOc, dKb += scale·dsᵀ Qc (a tile of keys at a time).
 * Each output element is written by one task in a fixed order: the
 * results do not depend on the thread count. */
#include "attention_avx2.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "gemm.h"
#include "int_math.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include "avx2_tile.h"
#include "vector_math.h"

/* The row loops call exp_f32: see vector_math.h. */
#pragma GCC optimize("no-trapping-math")

enum {
    FKC = 256, /* keys per forward chunk (the online softmax's step) */
    BK = 48,   /* keys per backward block: 3 panels, 8 tiles of rows */
    QC = 256,  /* query rows per backward chunk */
};

static int64_t round16(int64_t n) { return (n + NR - 1) / NR * NR; }

/* f32 and whole panels of head dims. */
static bool shape_fits(const moe_cpu_attention *p)
{
    return p->dtype == MOE_F32 && p->hd % NR == 0;
}

bool moe_cpu_attention_avx2_fits(const moe_cpu_attention *p)
{
    /* the AVX2 kernel is chosen only where the CPU has AVX2 and FMA */
    return shape_fits(p) && strcmp(moe_cpu_sgemm_kernel(), "avx2") == 0;
}

int64_t moe_cpu_attention_avx2_scratch(const moe_cpu_attention *p)
{
    if (!shape_fits(p)) return 0;
    int64_t panel = round16(p->S) * p->hd; /* one head's K, V, Q or dO, packed */
    int64_t fwd = 2 * panel + MR * FKC, bwd = 5 * panel + 2 * QC * BK + p->S;
    return fwd > bwd ? fwd : bwd;
}

/* ---- packing a head --------------------------------------------------------------------- */

/* X [S hd] (rows LD apart) transposed, 16 rows to a panel: panel P holds
 * rows 16P.. as [hd 16], zeros past row S. */
TARGET static void pack_rows_t(float *restrict dst, const float *x, int64_t ld, int64_t S,
                               int64_t hd)
{
    for (int64_t j0 = 0; j0 < S; j0 += NR) {
        float *panel = dst + j0 * hd;
        for (int64_t h = 0; h < NR; h += 8) {
            int64_t rows = S - j0 - h < 0 ? 0 : min64(8, S - j0 - h);
            for (int64_t d = 0; d < hd; d += 8) {
                __m256 r[8];
                for (int64_t j = 0; j < 8; j++)
                    r[j] = j < rows ? _mm256_loadu_ps(x + (j0 + h + j) * ld + d)
                                    : _mm256_setzero_ps();
                transpose8(r);
                for (int t = 0; t < 8; t++) _mm256_storeu_ps(panel + (d + t) * NR + h, r[t]);
            }
        }
    }
}

/* X [S hd] (rows LD apart) cut into hd/16 panels of 16 columns, each [S 16]. */
TARGET static void pack_cols(float *restrict dst, const float *x, int64_t ld, int64_t S, int64_t hd)
{
    for (int64_t c = 0; c < hd; c += NR) {
        float *panel = dst + c * S;
        for (int64_t j = 0; j < S; j++) {
            _mm256_storeu_ps(panel + j * NR, _mm256_loadu_ps(x + j * ld + c));
            _mm256_storeu_ps(panel + j * NR + 8, _mm256_loadu_ps(x + j * ld + c + 8));
        }
    }
}

/* ---- the row loops ----------------------------------------------------------------------- */

/* Row S of scores, WIDTH of them computed (a multiple of 16): its first
 * SEEN become e^(s − m'), with m' the larger of M and their max, the rest
 * 0. Returns their sum and sets *M = m'. The loops run over all WIDTH
 * lanes, masked, so that no row ends in a scalar remainder. */
TARGET static float softmax_row(float *restrict s, int seen, int width, float *m)
{
    float mx = *m;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < width; j++) mx = j < seen && s[j] > mx ? s[j] : mx;
    float sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < width; j++) {
        float e = j < seen ? exp_f32(s[j] - mx) : 0.0f;
        s[j] = e;
        sum += e;
    }
    *m = mx;
    return sum;
}

TARGET static void scale_row(float *restrict x, int64_t n, float f)
{
#pragma omp simd
    for (int64_t i = 0; i < n; i++) x[i] *= f;
}

/* Keys of [j0, j0 + n) that query row I sees. */
static int64_t seen_keys(const moe_cpu_attention *p, int64_t i, int64_t j0, int64_t n)
{
    return p->causal ? (i < j0 ? 0 : min64(n, i - j0 + 1)) : n;
}

/* ---- forward --------------------------------------------------------------------------- */

/* Query rows [r0, r0 + mr) of one head: Q, O their rows (LDQ apart), L
 * their lse; KT, VP the head's packed keys and values. */
TARGET static void forward_tile(const moe_cpu_attention *p, int64_t r0, int mr, const float *Q,
                                float *O, float *L, int64_t ldq, const float *kt, const float *vp,
                                float *s)
{
    const int64_t S = p->S, hd = p->hd;
    const float scale = (float)p->scale;
    float m[MR], l[MR], corr[MR];
    int64_t lim = p->causal ? r0 + mr : S; /* keys any row of the tile sees */
    for (int64_t c0 = 0; c0 < lim; c0 += FKC) {
        int64_t nk = min64(FKC, lim - c0), width = round16(nk);
        for (int64_t j = 0; j < width; j += NR)
            micro_rows(mr, hd, Q, ldq, 1, kt + (c0 + j) * hd, NR, s + j, FKC, NR, scale, 0, true);
        for (int r = 0; r < mr; r++) {
            int64_t seen = seen_keys(p, r0 + r, c0, nk);
            float mx = c0 == 0 ? -INFINITY : m[r];
            float sum = softmax_row(s + r * FKC, (int)seen, (int)width, &mx);
            if (c0 == 0) {
                l[r] = sum;
            } else {
                corr[r] = exp_f32(m[r] - mx);
                l[r] = l[r] * corr[r] + sum;
                scale_row(O + r * ldq, hd, corr[r]);
            }
            m[r] = mx;
        }
        for (int64_t d = 0; d < hd; d += NR)
            micro_rows(mr, nk, s, FKC, 1, vp + d * S + c0 * NR, NR, O + d, ldq, NR, 1,
                       c0 > 0 ? 1.0f : 0.0f, true);
    }
    for (int r = 0; r < mr; r++) {
        scale_row(O + r * ldq, hd, 1 / l[r]);
        L[r] = m[r] + logf(l[r]);
    }
}

void moe_cpu_attention_avx2_forward(const moe_cpu_attention *p, float *out, float *lse,
                                    const float *q, const float *k, const float *v, float *scratch)
{
    const int64_t S = p->S, H = p->H, KV = p->KV, hd = p->hd, ldq = H * hd, ldk = KV * hd;
    const int64_t per = moe_cpu_attention_avx2_scratch(p), panel = round16(S) * hd;
#pragma omp parallel for schedule(dynamic)
    for (int64_t bh = 0; bh < p->B * H; bh++) {
        int64_t b = bh / H, h = bh % H, g = h * KV / H;
        float *kt = scratch + (int64_t)omp_get_thread_num() * per, *vp = kt + panel;
        float *s = vp + panel;
        pack_rows_t(kt, k + b * S * ldk + g * hd, ldk, S, hd);
        pack_cols(vp, v + b * S * ldk + g * hd, ldk, S, hd);
        const float *Q = q + b * S * ldq + h * hd;
        float *O = out + b * S * ldq + h * hd, *L = lse + bh * S;
        for (int64_t r0 = 0; r0 < S; r0 += MR)
            forward_tile(p, r0, (int)min64(MR, S - r0), Q + r0 * ldq, O + r0 * ldq, L + r0, ldq,
                         kt, vp, s);
    }
}

/* ---- backward -------------------------------------------------------------------------- */

typedef struct head_packs {
    const float *kt, *vt, *kp; /* the kv head's K and V transposed, K by columns */
    const float *qp, *dop;     /* the query head's Q and dO by columns */
    float *ps, *dss;           /* [QC BK]: a chunk's p and ds */
} head_packs;

/* Keys [j0, j0 + nk) against query rows [i0, i0 + nq): p and ds into the
 * chunk's scratch, and those rows' dQ (written on the first key block,
 * added to on the later ones). */
TARGET static void backward_rows(const moe_cpu_attention *p, const head_packs *hp, int64_t j0,
                                 int64_t nk, int64_t i0, int64_t nq, const float *Q,
                                 const float *dO, const float *L, const float *D, float *dQ,
                                 int64_t ldq)
{
    const int64_t hd = p->hd, S = p->S;
    const float scale = (float)p->scale;
    for (int64_t r0 = i0; r0 < i0 + nq; r0 += MR) {
        int mr = (int)min64(MR, i0 + nq - r0);
        int64_t vis = seen_keys(p, r0 + mr - 1, j0, nk); /* keys the tile's last row sees */
        float *ps = hp->ps + (r0 - i0) * BK, *dss = hp->dss + (r0 - i0) * BK;
        for (int64_t j = 0; j < vis; j += NR) {
            micro_rows(mr, hd, Q + r0 * ldq, ldq, 1, hp->kt + (j0 + j) * hd, NR, ps + j, BK, NR,
                       scale, 0, true);
            micro_rows(mr, hd, dO + r0 * ldq, ldq, 1, hp->vt + (j0 + j) * hd, NR, dss + j, BK, NR,
                       1, 0, true);
        }
        /* row r sees min(r0 − j0 + 1 + r, nk) keys (all nk without the mask);
         * the zeros past them stop at nk, the last column read below */
        moe_cpu_attention_grad_rows(ps, dss, BK, mr, nk, p->causal ? r0 - j0 + 1 : nk, L + r0,
                                    D + r0);
        for (int64_t d = 0; d < hd; d += NR)
            micro_rows(mr, vis, dss, BK, 1, hp->kp + d * S + j0 * NR, NR, dQ + r0 * ldq + d, ldq,
                       NR, scale, j0 > 0 ? 1.0f : 0.0f, true);
    }
}

/* dVb += pᵀ dO and dKb += scale·dsᵀ Q over the chunk's rows [i0, i0 + nq),
 * a tile of keys at a time (BETA 0: the block's first chunk). */
TARGET static void backward_keys(const moe_cpu_attention *p, const head_packs *hp, int64_t j0,
                                 int64_t nk, int64_t i0, int64_t nq, float *dK, float *dV,
                                 int64_t ldk, float beta)
{
    const int64_t hd = p->hd, S = p->S;
    const float scale = (float)p->scale;
    for (int64_t t0 = 0; t0 < nk; t0 += MR) {
        int mk = (int)min64(MR, nk - t0);
        for (int64_t d = 0; d < hd; d += NR) {
            micro_rows(mk, nq, hp->ps + t0, 1, BK, hp->dop + d * S + i0 * NR, NR,
                       dV + (j0 + t0) * ldk + d, ldk, NR, 1, beta, true);
            micro_rows(mk, nq, hp->dss + t0, 1, BK, hp->qp + d * S + i0 * NR, NR,
                       dK + (j0 + t0) * ldk + d, ldk, NR, scale, beta, true);
        }
    }
}

void moe_cpu_attention_avx2_backward(const moe_cpu_attention *p, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse,
                                     float *scratch)
{
    const int64_t S = p->S, H = p->H, KV = p->KV, hd = p->hd, ldq = H * hd, ldk = KV * hd;
    const int64_t G = H / KV; /* query heads per kv head */
    const int64_t per = moe_cpu_attention_avx2_scratch(p), panel = round16(S) * hd;
#pragma omp parallel for schedule(dynamic)
    for (int64_t bg = 0; bg < p->B * KV; bg++) {
        int64_t b = bg / KV, g = bg % KV;
        float *base = scratch + (int64_t)omp_get_thread_num() * per;
        float *kt = base, *vt = kt + panel, *kp = vt + panel, *qp = kp + panel, *dop = qp + panel;
        float *ps = dop + panel, *dss = ps + QC * BK, *D = dss + QC * BK;
        head_packs hp = {kt, vt, kp, qp, dop, ps, dss};
        const float *K = k + b * S * ldk + g * hd, *V = v + b * S * ldk + g * hd;
        float *dK = dk + b * S * ldk + g * hd, *dV = dv + b * S * ldk + g * hd;
        pack_rows_t(kt, K, ldk, S, hd);
        pack_rows_t(vt, V, ldk, S, hd);
        pack_cols(kp, K, ldk, S, hd);
        for (int64_t h = g * G; h < (g + 1) * G; h++) {
            const float *Q = q + b * S * ldq + h * hd, *dO = dout + b * S * ldq + h * hd,
                        *O = out + b * S * ldq + h * hd, *L = lse + (b * H + h) * S;
            float *dQ = dq + b * S * ldq + h * hd;
            moe_cpu_attention_row_dots(D, dO, O, ldq, S, hd);
            pack_cols(qp, Q, ldq, S, hd);
            pack_cols(dop, dO, ldq, S, hd);
            for (int64_t j0 = 0; j0 < S; j0 += BK) {
                int64_t nk = min64(BK, S - j0), istart = p->causal ? j0 : 0;
                for (int64_t i0 = istart; i0 < S; i0 += QC) {
                    int64_t nq = min64(QC, S - i0);
                    backward_rows(p, &hp, j0, nk, i0, nq, Q, dO, L, D, dQ, ldq);
                    bool first = h == g * G && i0 == istart; /* dKb, dVb not written before */
                    backward_keys(p, &hp, j0, nk, i0, nq, dK, dV, ldk, first ? 0.0f : 1.0f);
                }
            }
        }
    }
}

#else /* not x86-64 with GCC: attention.c's general path */

bool moe_cpu_attention_avx2_fits(const moe_cpu_attention *p)
{
    (void)p;
    return false;
}

int64_t moe_cpu_attention_avx2_scratch(const moe_cpu_attention *p)
{
    (void)p;
    return 0;
}

void moe_cpu_attention_avx2_forward(const moe_cpu_attention *p, float *out, float *lse,
                                    const float *q, const float *k, const float *v, float *scratch)
{
}

void moe_cpu_attention_avx2_backward(const moe_cpu_attention *p, float *dq, float *dk, float *dv,
                                     const float *dout, const float *q, const float *k,
                                     const float *v, const float *out, const float *lse,
                                     float *scratch)
{
}

#endif
