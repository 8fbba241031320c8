/* nn.c — CPU loops behind core/ops/nn.c: rms_norm, layer_norm,
 * cross_entropy and embedding, forward beside backward.
 *
 * Dimension letters: R rows, D the normalised last dim (embedding: the row
 * width), N samples and C classes of cross_entropy, I ids, H chunks of CHUNK
 * rows.
 *
 * The row loops are written once for f32 and f64 (RMS_KERNELS, NN_KERNELS),
 * OpenMP across rows. Sums accumulate in double over fixed lanes (rms_norm
 * and cross_entropy: 16, in vectorised clones, cross_entropy's exponentials
 * a chunk of classes at a time; the others: eight). Parameter gradients (dweight,
 * dbias) reduce over rows in fixed chunks of CHUNK rows that chunks_sum
 * (gemm.c's column sum) then adds in chunk order, so results do not depend on
 * the thread count. Each entry point takes the compute dtype (MOE_F32 or
 * MOE_F64) like its CUDA twin in kernels/cuda/nn.cu. */
#include "nn.h"
#include "gemm.h"
#include "row_blocks.h"
#include "vector_math.h"

#include <math.h>
#include <string.h>

/* The cross-entropy loops vectorise on AVX2 too (see exp_f32). */
#pragma GCC optimize("no-trapping-math")

#define COL_BLOCK 256    /* columns per task when adding ids' rows */
#define CE_CHUNK 256     /* classes exponentiated at a time (vectorised) before their sum */

/* ---- rms_norm ------------------------------------------------------------------------- */

#define RMS_BLOCK 16 /* rows per call of the forward's row loop */

/* The row loops are vectorised clones (vector_math.h) called from
 * row_blocks.h's parallel loop: a block of rows per call for the forward,
 * one chunk of rows per call for the backward. Row sums: SUM16 in double
 * (the backward's g w x formed in T). */
#define RMS_KERNELS(T, SUF)                                                                  \
    /* rows [r0, r1): y = x r w, rinv = r = 1/sqrt(mean(x²) + eps) */                        \
    SIMD_CLONES static void rms_fwd_rows_##SUF(T *restrict y, T *restrict rinv,              \
                                               const T *restrict x, const T *restrict w,     \
                                               int64_t r0, int64_t r1, int64_t D,            \
                                               double eps)                                   \
    {                                                                                        \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            const T *xr = x + r * D;                                                         \
            T *yr = y + r * D;                                                               \
            double ss;                                                                       \
            SUM16(double, ss, D, (double)xr[jj] * xr[jj]);                                   \
            T ri = (T)(1.0 / sqrt(ss / (double)D + eps));                                    \
            rinv[r] = ri;                                                                    \
            _Pragma("omp simd")                                                              \
            for (int64_t j = 0; j < D; j++) yr[j] = xr[j] * ri * w[j];                       \
        }                                                                                    \
    }                                                                                        \
    static void rms_fwd_##SUF(T *y, T *rinv, const T *x, const T *w, int64_t R, int64_t D,   \
                              double eps)                                                    \
    {                                                                                        \
        PARALLEL_ROW_BLOCKS(R, RMS_BLOCK, R * D, r0, r1,                                     \
                            rms_fwd_rows_##SUF(y, rinv, x, w, r0, r1, D, eps));              \
    }                                                                                        \
    /* rows [r0, r1): dx = r (g w - x r² mean(g w x)); p [D] (if any) = the                   \
     * rows' sum of g x r */                                                                 \
    SIMD_CLONES static void rms_bwd_rows_##SUF(T *restrict dx, double *restrict p,           \
                                               const T *restrict g, const T *restrict x,     \
                                               const T *restrict w,                          \
                                               const T *restrict rinv, int64_t r0,           \
                                               int64_t r1, int64_t D)                        \
    {                                                                                        \
        if (p) memset(p, 0, sizeof(double) * (size_t)D);                                     \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            const T *gr = g + r * D, *xr = x + r * D;                                        \
            T ri = rinv[r];                                                                  \
            if (dx) {                                                                        \
                double dot;                                                                  \
                SUM16(double, dot, D, (double)(gr[jj] * w[jj] * xr[jj]));                    \
                T c = (T)((double)ri * ri * ri * dot / (double)D);                           \
                T *dxr = dx + r * D;                                                         \
                _Pragma("omp simd")                                                          \
                for (int64_t j = 0; j < D; j++) dxr[j] = ri * gr[j] * w[j] - xr[j] * c;      \
            }                                                                                \
            if (p) {                                                                         \
                _Pragma("omp simd")                                                          \
                for (int64_t j = 0; j < D; j++) p[j] += (double)(gr[j] * xr[j] * ri);        \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* dwp [H D]: the chunk of rows [r0, r0 + chunk) sums into row r0 / chunk,               \
     * so the sum over rows does not depend on the thread count */                           \
    static void rms_bwd_##SUF(T *dx, double *dwp, const T *g, const T *x, const T *w,        \
                              const T *rinv, int64_t R, int64_t D, int64_t chunk)            \
    {                                                                                        \
        PARALLEL_ROW_BLOCKS(R, chunk, R * D, r0, r1,                                         \
                            rms_bwd_rows_##SUF(dx, dwp ? dwp + r0 / chunk * D : NULL, g, x,  \
                                               w, rinv, r0, r1, D));                         \
    }

RMS_KERNELS(float, f32)
RMS_KERNELS(double, f64)

/* ---- layer_norm, cross_entropy, embedding ------------------------------------------------ */

#define NN_KERNELS(T, SUF, EXP)                                                              \
    /* y = (x - mean) rstd w + b; mean, rstd [R] */                                          \
    static void ln_fwd_##SUF(T *restrict y, T *restrict mean, T *restrict rstd,              \
                             const T *restrict x, const T *restrict w, const T *restrict b,  \
                             int64_t R, int64_t D, double eps)                               \
    {                                                                                        \
        _Pragma("omp parallel for if (R * D > 32768) schedule(static)")                      \
        for (int64_t r = 0; r < R; r++) {                                                    \
            const T *xr = x + r * D;                                                         \
            T *yr = y + r * D;                                                               \
            double s, v;                                                                     \
            SUM16(double, s, D, (double)xr[jj]);                                             \
            double mu = s / (double)D;                                                       \
            SUM16(double, v, D, ((double)xr[jj] - mu) * ((double)xr[jj] - mu));              \
            T rs = (T)(1.0 / sqrt(v / (double)D + eps)), m = (T)mu;                          \
            mean[r] = m;                                                                     \
            rstd[r] = rs;                                                                    \
            for (int64_t j = 0; j < D; j++) yr[j] = (xr[j] - m) * rs * w[j] + b[j];          \
        }                                                                                    \
    }                                                                                        \
    /* with x̂ = (x - mean) rstd: dx = rstd (g w - mean(g w) - x̂ mean(g w x̂));              \
     * dwp [H D] += g x̂, dbp [H D] += g per chunk */                                         \
    static void ln_bwd_##SUF(T *restrict dx, double *restrict dwp, double *restrict dbp,     \
                             const T *restrict g, const T *restrict x, const T *restrict w,  \
                             const T *restrict mean, const T *restrict rstd, int64_t R,      \
                             int64_t D, int64_t chunk)                                                      \
    {                                                                                        \
        int64_t nch = (R + chunk - 1) / chunk;                                               \
        _Pragma("omp parallel for if (R * D > 32768) schedule(static)")                      \
        for (int64_t ch = 0; ch < nch; ch++) {                                               \
            double *pw = dwp ? dwp + ch * D : NULL, *pb = dbp ? dbp + ch * D : NULL;         \
            if (pw) memset(pw, 0, sizeof(double) * (size_t)D);                               \
            if (pb) memset(pb, 0, sizeof(double) * (size_t)D);                               \
            int64_t r1 = (ch + 1) * chunk < R ? (ch + 1) * chunk : R;                        \
            for (int64_t r = ch * chunk; r < r1; r++) {                                      \
                const T *gr = g + r * D, *xr = x + r * D;                                    \
                T m = mean[r], rs = rstd[r];                                                 \
                if (dx) {                                                                    \
                    double sg, sgx;                                                          \
                    SUM16(double, sg, D, (double)gr[jj] * w[jj]);                            \
                    SUM16(double, sgx, D, (double)gr[jj] * w[jj] * ((xr[jj] - m) * rs));     \
                    T a = (T)(sg / (double)D), c = (T)(sgx / (double)D);                     \
                    T *dxr = dx + r * D;                                                     \
                    for (int64_t j = 0; j < D; j++)                                          \
                        dxr[j] = rs * (gr[j] * w[j] - a - (xr[j] - m) * rs * c);             \
                }                                                                            \
                if (pw)                                                                      \
                    for (int64_t j = 0; j < D; j++) pw[j] += (double)(gr[j] * ((xr[j] - m) * rs)); \
                if (pb)                                                                      \
                    for (int64_t j = 0; j < D; j++) pb[j] += (double)gr[j];                  \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    /* one row of the forward: its log-sum-exp; and of the backward: dx = scale softmax */ \
    SIMD_CLONES static double ce_lse_row_##SUF(const T *restrict xr, int64_t C)              \
    {                                                                                        \
        T mx = xr[0], e[CE_CHUNK];                                                           \
        _Pragma("omp simd reduction(max : mx)")                                              \
        for (int64_t j = 1; j < C; j++) mx = xr[j] > mx ? xr[j] : mx;                        \
        double s = 0;                                                                        \
        for (int64_t j0 = 0; j0 < C; j0 += CE_CHUNK) {                                       \
            int64_t n = C - j0 < CE_CHUNK ? C - j0 : CE_CHUNK;                               \
            _Pragma("omp simd")                                                              \
            for (int64_t j = 0; j < n; j++) e[j] = EXP(xr[j0 + j] - mx);                     \
            double part;                                                                     \
            SUM16(double, part, n, (double)e[jj]);                                           \
            s += part;                                                                       \
        }                                                                                    \
        return (double)mx + log(s);                                                          \
    }                                                                                        \
    SIMD_CLONES static void ce_grad_row_##SUF(T *restrict dr, const T *restrict xr, T l,     \
                                              int64_t C, T scale)                            \
    {                                                                                        \
        _Pragma("omp simd")                                                                  \
        for (int64_t j = 0; j < C; j++) dr[j] = scale * EXP(xr[j] - l);                      \
    }                                                                                        \
    /* per row: lse [N] = log sum exp x, loss [N] = lse - x[t] (0 where ignored) */          \
    static void ce_fwd_##SUF(double *restrict loss, T *restrict lse, const T *restrict x,    \
                             const int64_t *restrict t, int64_t N, int64_t C, int64_t ignore) \
    {                                                                                        \
        _Pragma("omp parallel for if (N * C > 32768) schedule(static)")                      \
        for (int64_t i = 0; i < N; i++) {                                                    \
            const T *xr = x + i * C;                                                         \
            if (t[i] == ignore) {                                                            \
                loss[i] = 0;                                                                 \
                lse[i] = 0;                                                                  \
                continue;                                                                    \
            }                                                                                \
            double l = ce_lse_row_##SUF(xr, C);                                              \
            lse[i] = (T)l;                                                                   \
            loss[i] = l - (double)xr[t[i]];                                                  \
        }                                                                                    \
    }                                                                                        \
    /* dx [N C] = scale (softmax - onehot) on counted rows, 0 on ignored ones */             \
    static void ce_bwd_##SUF(T *restrict dx, const T *restrict x, const T *restrict lse,     \
                             const int64_t *restrict t, int64_t N, int64_t C,                \
                             int64_t ignore, T scale)                                        \
    {                                                                                        \
        _Pragma("omp parallel for if (N * C > 32768) schedule(static)")                      \
        for (int64_t i = 0; i < N; i++) {                                                    \
            T *dr = dx + i * C;                                                              \
            if (t[i] == ignore) {                                                            \
                memset(dr, 0, sizeof(T) * (size_t)C);                                        \
                continue;                                                                    \
            }                                                                                \
            ce_grad_row_##SUF(dr, x + i * C, lse[i], C, scale);                              \
            dr[t[i]] -= scale;                                                               \
        }                                                                                    \
    }                                                                                        \
    /* dw [V D] += g [I D] rows at ids; column blocks in parallel, ids in order */           \
    static void emb_bwd_##SUF(T *restrict dw, const T *restrict g, const int64_t *restrict ids, \
                              int64_t I, int64_t D)                                          \
    {                                                                                        \
        int64_t nb = (D + COL_BLOCK - 1) / COL_BLOCK;                                        \
        _Pragma("omp parallel for if (I * D > 32768) schedule(static)")                      \
        for (int64_t blk = 0; blk < nb; blk++) {                                             \
            int64_t j0 = blk * COL_BLOCK, wd = D - j0 < COL_BLOCK ? D - j0 : COL_BLOCK;      \
            for (int64_t i = 0; i < I; i++) {                                                \
                T *dr = dw + ids[i] * D + j0;                                                \
                const T *gr = g + i * D + j0;                                                \
                for (int64_t j = 0; j < wd; j++) dr[j] += gr[j];                             \
            }                                                                                \
        }                                                                                    \
    }

NN_KERNELS(float, f32, exp_f32)
NN_KERNELS(double, f64, exp_f64)

void moe_cpu_rms_fwd(moe_dtype dt, void *y, void *rinv, const void *x, const void *w, int64_t R,
                     int64_t D, double eps)
{
    if (dt == MOE_F32) rms_fwd_f32(y, rinv, x, w, R, D, eps);
    else rms_fwd_f64(y, rinv, x, w, R, D, eps);
}

void moe_cpu_rms_bwd(moe_dtype dt, void *dx, double *dwp, const void *g, const void *x, const void *w,
                     const void *rinv, int64_t R, int64_t D, int64_t chunk)
{
    if (dt == MOE_F32) rms_bwd_f32(dx, dwp, g, x, w, rinv, R, D, chunk);
    else rms_bwd_f64(dx, dwp, g, x, w, rinv, R, D, chunk);
}

void moe_cpu_ln_fwd(moe_dtype dt, void *y, void *mean, void *rstd, const void *x, const void *w,
                    const void *b, int64_t R, int64_t D, double eps)
{
    if (dt == MOE_F32) ln_fwd_f32(y, mean, rstd, x, w, b, R, D, eps);
    else ln_fwd_f64(y, mean, rstd, x, w, b, R, D, eps);
}

void moe_cpu_ln_bwd(moe_dtype dt, void *dx, double *dwp, double *dbp, const void *g, const void *x,
                    const void *w, const void *mean, const void *rstd, int64_t R, int64_t D,
                    int64_t chunk)
{
    if (dt == MOE_F32) ln_bwd_f32(dx, dwp, dbp, g, x, w, mean, rstd, R, D, chunk);
    else ln_bwd_f64(dx, dwp, dbp, g, x, w, mean, rstd, R, D, chunk);
}

void moe_cpu_chunks_sum(moe_dtype dt, void *out, const double *p, int64_t nch, int64_t D)
{
    moe_cpu_sum_f64_rows(dt, out, p, nch, D); /* in chunk order */
}

int64_t moe_cpu_ce_targets(const int64_t *t, int64_t N, int64_t C, int64_t ignore, int64_t *count)
{
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++) {
        if (t[i] == ignore) continue;
        if (t[i] < 0 || t[i] >= C) return *count = counted, i;
        counted++;
    }
    *count = counted;
    return -1;
}

void moe_cpu_ce_fwd(moe_dtype dt, double *loss, void *lse, const void *x, const int64_t *t, int64_t N,
                    int64_t C, int64_t ignore)
{
    if (dt == MOE_F32) ce_fwd_f32(loss, lse, x, t, N, C, ignore);
    else ce_fwd_f64(loss, lse, x, t, N, C, ignore);
}

void moe_cpu_ce_bwd(moe_dtype dt, void *dx, const void *x, const void *lse, const int64_t *t, int64_t N,
                    int64_t C, int64_t ignore, const void *g, double count)
{
    if (dt == MOE_F32) {
        double scale = count > 0 ? *(const float *)g / count : 0.0; /* nothing counted: no gradient */
        ce_bwd_f32(dx, x, lse, t, N, C, ignore, (float)scale);
    } else {
        double scale = count > 0 ? *(const double *)g / count : 0.0;
        ce_bwd_f64(dx, x, lse, t, N, C, ignore, scale);
    }
}

void moe_cpu_emb_bwd(moe_dtype dt, void *dw, const void *g, const int64_t *ids, int64_t I, int64_t D)
{
    if (dt == MOE_F32) emb_bwd_f32(dw, g, ids, I, D);
    else emb_bwd_f64(dw, g, ids, I, D);
}
