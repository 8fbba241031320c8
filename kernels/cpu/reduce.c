/* reduce.c — loops behind sum/mean/var, cumsum, max/min and softmax.
 *
 * Dimension letters: O outer rows, R reduced (scanned) extent, I inner
 * columns, K fixed chunks of one row, N softmax row length. Every buffer is
 * contiguous: x [O R I]. Each kernel is written once as a macro over the
 * element type T and the accumulator type ACC and instantiated for f32
 * (ACC double), f64 and i64 where the op supports it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reduce.h"

/* vf8 values only live inside softmax_row_f32, where everything is inlined,
 * so the baseline clone's lack of an AVX calling convention does not matter;
 * GCC reports that late in the file, hence a file-wide switch. */
#pragma GCC diagnostic ignored "-Wpsabi"

#define LANES 16                       /* fixed lanes of a block sum */
#define CHUNK MOE_CPU_REDUCE_CHUNK     /* fixed chunk of a long row */
#define COLS 256                       /* columns per task when I > 1 */

static moe_status nomem(const char *op) { return moe_fail(MOE_ERR_NOMEM, op, "out of memory"); }

#define NO_NAN(v) 0
/* V beats the best so far B: strictly larger (smaller), or the first NaN. */
#define BEATS(v, b, is_max, ISNAN) \
    (((is_max) ? (v) > (b) : (v) < (b)) || (ISNAN(v) && !ISNAN(b)))

/* ---- sums ---------------------------------------------------------------------- */

/* Vectors of 8 elements (GCC/Clang vector extensions): the 16 lanes of a
 * block sum are two of them, so the loop is vector code on any target. */
typedef float vf8 __attribute__((vector_size(32)));
typedef double vd8 __attribute__((vector_size(64)));
typedef int64_t vi8 __attribute__((vector_size(64)));

#define DEFINE_SUM(SFX, T, ACC, VT, VA)                                                    \
    /* Sum of x[0..n) — or of (x - m)^2 when SQ — over 16 fixed lanes (lane j takes    \
     * the elements j mod 16), the lanes then folded as a tree: the order of the        \
     * additions depends only on n. */                                                    \
    static ACC block_##SFX(const T *restrict x, int64_t n, ACC m, bool sq)                \
    {                                                                                     \
        VA a0 = {0}, a1 = {0}; /* lanes 0-7, 8-15 */                                      \
        int64_t nb = n - n % LANES, i = 0;                                                \
        if (sq) {                                                                         \
            for (; i < nb; i += LANES) {                                                  \
                VT u, v;                                                                  \
                memcpy(&u, x + i, sizeof u);                                              \
                memcpy(&v, x + i + 8, sizeof v);                                          \
                VA du = __builtin_convertvector(u, VA) - m;                               \
                VA dv = __builtin_convertvector(v, VA) - m;                               \
                a0 += du * du;                                                            \
                a1 += dv * dv;                                                            \
            }                                                                             \
        } else {                                                                          \
            for (; i < nb; i += LANES) {                                                  \
                VT u, v;                                                                  \
                memcpy(&u, x + i, sizeof u);                                              \
                memcpy(&v, x + i + 8, sizeof v);                                          \
                a0 += __builtin_convertvector(u, VA);                                     \
                a1 += __builtin_convertvector(v, VA);                                     \
            }                                                                             \
        }                                                                                 \
        ACC l[LANES];                                                                     \
        memcpy(l, &a0, sizeof a0);                                                        \
        memcpy(l + 8, &a1, sizeof a1);                                                    \
        for (int j = 0; i < n; i++, j++) {                                                \
            ACC d = (ACC)x[i] - m;                                                        \
            l[j] += sq ? d * d : (ACC)x[i];                                               \
        }                                                                                 \
        for (int w = LANES / 2; w > 0; w /= 2)                                            \
            for (int j = 0; j < w; j++) l[j] += l[j + w];                                 \
        return l[0];                                                                      \
    }                                                                                     \
                                                                                          \
    /* res [O] = sum of each row of x [O R] (SQ: of squared deviations from             \
     * mean [O]). Rows longer than CHUNK split into K chunks; chunk partials               \
     * are added in chunk order. */                                                       \
    static moe_status rows_##SFX(ACC *res, const T *x, int64_t O, int64_t R, const ACC *mean, \
                                 bool sq)                                                 \
    {                                                                                     \
        int64_t K = R > CHUNK ? (R + CHUNK - 1) / CHUNK : 1;                              \
        if (K == 1) {                                                                     \
            _Pragma("omp parallel for if (O * R > 32768) schedule(static)")               \
            for (int64_t o = 0; o < O; o++)                                               \
                res[o] = block_##SFX(x + o * R, R, sq ? mean[o] : 0, sq);                 \
            return MOE_OK;                                                                \
        }                                                                                 \
        ACC *part = malloc(sizeof(ACC) * (size_t)(O * K)); /* [O K] */                   \
        if (!part) return nomem("reduce");                                                \
        _Pragma("omp parallel for schedule(static)")                                      \
        for (int64_t t = 0; t < O * K; t++) {                                             \
            int64_t o = t / K, b = (t % K) * CHUNK, n = R - b < CHUNK ? R - b : CHUNK;    \
            part[t] = block_##SFX(x + o * R + b, n, sq ? mean[o] : 0, sq);                \
        }                                                                                 \
        for (int64_t o = 0; o < O; o++) {                                                 \
            ACC s = 0;                                                                    \
            for (int64_t k = 0; k < K; k++) s += part[o * K + k];                         \
            res[o] = s;                                                                   \
        }                                                                                 \
        free(part);                                                                       \
        return MOE_OK;                                                                    \
    }                                                                                     \
                                                                                          \
    moe_status moe_cpu_sum_##SFX(T *out, const T *x, int64_t O, int64_t R, int64_t I,     \
                                 double scale)                                            \
    {                                                                                     \
        if (I == 1) {                                                                     \
            ACC *res = malloc(sizeof(ACC) * (size_t)(O ? O : 1)); /* [O] */              \
            if (!res) return nomem("reduce");                                             \
            moe_status st = rows_##SFX(res, x, O, R, NULL, false);                        \
            if (st == MOE_OK)                                                             \
                for (int64_t o = 0; o < O; o++)                                           \
                    out[o] = scale == 1.0 ? (T)res[o] : (T)((double)res[o] * scale);      \
            free(res);                                                                    \
            return st;                                                                    \
        }                                                                                 \
        /* I > 1: each task owns COLS columns of one outer row and adds the R              \
         * rows in order (vectorises across the columns). */                              \
        int64_t nb = (I + COLS - 1) / COLS;                                               \
        _Pragma("omp parallel for if (O * R * I > 32768) schedule(static)")               \
        for (int64_t t = 0; t < O * nb; t++) {                                            \
            int64_t o = t / nb, i0 = (t % nb) * COLS, n = I - i0 < COLS ? I - i0 : COLS;  \
            ACC acc[COLS];                                                                \
            for (int64_t j = 0; j < n; j++) acc[j] = 0;                                   \
            for (int64_t r = 0; r < R; r++) {                                             \
                const T *restrict row = x + (o * R + r) * I + i0;                         \
                _Pragma("omp simd") for (int64_t j = 0; j < n; j++) acc[j] += (ACC)row[j]; \
            }                                                                             \
            T *restrict dst = out + o * I + i0;                                           \
            for (int64_t j = 0; j < n; j++)                                               \
                dst[j] = scale == 1.0 ? (T)acc[j] : (T)((double)acc[j] * scale);          \
        }                                                                                 \
        return MOE_OK;                                                                    \
    }

DEFINE_SUM(f32, float, double, vf8, vd8)
DEFINE_SUM(f64, double, double, vd8, vd8)
DEFINE_SUM(i64, int64_t, int64_t, vi8, vi8)

/* ---- variance (two passes: mean, then squared deviations) ---------------------------- */

#define DEFINE_VAR(SFX, T)                                                                \
    moe_status moe_cpu_var_##SFX(T *out, const T *x, int64_t O, int64_t R, int correction) \
    {                                                                                     \
        double *buf = malloc(sizeof(double) * (size_t)(2 * O + 1)); /* mean [O], ss [O] */ \
        if (!buf) return nomem("var");                                                    \
        double *mean = buf, *ss = buf + O;                                                \
        moe_status st = rows_##SFX(mean, x, O, R, NULL, false);                           \
        if (st == MOE_OK) {                                                               \
            for (int64_t o = 0; o < O; o++) mean[o] /= (double)R;                         \
            st = rows_##SFX(ss, x, O, R, mean, true);                                     \
        }                                                                                 \
        if (st == MOE_OK)                                                                 \
            for (int64_t o = 0; o < O; o++) out[o] = (T)(ss[o] / (double)(R - correction)); \
        free(buf);                                                                        \
        return st;                                                                        \
    }

DEFINE_VAR(f32, float)
DEFINE_VAR(f64, double)

/* ---- cumulative sum ------------------------------------------------------------------- */

#define DEFINE_CUMSUM(SFX, T, ACC)                                                        \
    void moe_cpu_cumsum_##SFX(T *out, const T *x, int64_t O, int64_t R, int64_t I,        \
                              bool reverse)                                               \
    {                                                                                     \
        int64_t nb = (I + COLS - 1) / COLS;                                               \
        _Pragma("omp parallel for if (O * R * I > 32768) schedule(static)")               \
        for (int64_t t = 0; t < O * nb; t++) {                                            \
            int64_t o = t / nb, i0 = (t % nb) * COLS, n = I - i0 < COLS ? I - i0 : COLS;  \
            ACC acc[COLS];                                                                \
            for (int64_t j = 0; j < n; j++) acc[j] = 0;                                   \
            for (int64_t s = 0; s < R; s++) {                                             \
                int64_t off = (o * R + (reverse ? R - 1 - s : s)) * I + i0;               \
                _Pragma("omp simd") for (int64_t j = 0; j < n; j++)                       \
                {                                                                         \
                    acc[j] += (ACC)x[off + j];                                            \
                    out[off + j] = (T)acc[j];                                             \
                }                                                                         \
            }                                                                             \
        }                                                                                 \
    }

DEFINE_CUMSUM(f32, float, double)
DEFINE_CUMSUM(f64, double, double)
DEFINE_CUMSUM(i64, int64_t, int64_t)

/* ---- max / min with their indices --------------------------------------------------- */

#define DEFINE_EXTREME(SFX, T, ISNAN)                                                     \
    /* The extreme of x[0..n) (n >= 1) and its first index. */                            \
    static void row_extreme_##SFX(const T *restrict x, int64_t n, bool is_max, T *bv,     \
                                  int64_t *bi)                                            \
    {                                                                                     \
        T b = x[0];                                                                       \
        int64_t k = 0;                                                                    \
        for (int64_t i = 1; i < n; i++)                                                   \
            if (BEATS(x[i], b, is_max, ISNAN)) {                                          \
                b = x[i];                                                                 \
                k = i;                                                                    \
            }                                                                             \
        *bv = b;                                                                          \
        *bi = k;                                                                          \
    }                                                                                     \
                                                                                          \
    moe_status moe_cpu_extreme_##SFX(T *val, int64_t *idx, const T *x, int64_t O,         \
                                     int64_t R, int64_t I, bool is_max)                   \
    {                                                                                     \
        if (I == 1 && R > CHUNK) {                                                        \
            /* Long rows: fixed chunks in parallel, then the chunk winners in order       \
             * (a strict comparison keeps the lowest index on ties). */                   \
            int64_t K = (R + CHUNK - 1) / CHUNK;                                          \
            T *pv = malloc(sizeof(T) * (size_t)(O * K));             /* [O K] */         \
            int64_t *pi = malloc(sizeof(int64_t) * (size_t)(O * K)); /* [O K] */         \
            if (!pv || !pi) {                                                             \
                free(pv);                                                                 \
                free(pi);                                                                 \
                return nomem(is_max ? "max" : "min");                                     \
            }                                                                             \
            _Pragma("omp parallel for schedule(static)")                                  \
            for (int64_t t = 0; t < O * K; t++) {                                         \
                int64_t o = t / K, b = (t % K) * CHUNK, n = R - b < CHUNK ? R - b : CHUNK; \
                row_extreme_##SFX(x + o * R + b, n, is_max, &pv[t], &pi[t]);              \
                pi[t] += b;                                                               \
            }                                                                             \
            for (int64_t o = 0; o < O; o++) {                                             \
                T b = pv[o * K];                                                          \
                int64_t k = pi[o * K];                                                    \
                for (int64_t c = 1; c < K; c++)                                           \
                    if (BEATS(pv[o * K + c], b, is_max, ISNAN)) {                         \
                        b = pv[o * K + c];                                                \
                        k = pi[o * K + c];                                                \
                    }                                                                     \
                if (val) val[o] = b;                                                      \
                if (idx) idx[o] = k;                                                      \
            }                                                                             \
            free(pv);                                                                     \
            free(pi);                                                                     \
            return MOE_OK;                                                                \
        }                                                                                 \
        if (I == 1) {                                                                     \
            _Pragma("omp parallel for if (O * R > 32768) schedule(static)")               \
            for (int64_t o = 0; o < O; o++) {                                             \
                T b;                                                                      \
                int64_t k;                                                                \
                row_extreme_##SFX(x + o * R, R, is_max, &b, &k);                          \
                if (val) val[o] = b;                                                      \
                if (idx) idx[o] = k;                                                      \
            }                                                                             \
            return MOE_OK;                                                                \
        }                                                                                 \
        int64_t nb = (I + COLS - 1) / COLS;                                               \
        _Pragma("omp parallel for if (O * R * I > 32768) schedule(static)")               \
        for (int64_t t = 0; t < O * nb; t++) {                                            \
            int64_t o = t / nb, i0 = (t % nb) * COLS, n = I - i0 < COLS ? I - i0 : COLS;  \
            T b[COLS];                                                                    \
            int64_t k[COLS];                                                              \
            const T *x0 = x + o * R * I + i0;                                             \
            for (int64_t j = 0; j < n; j++) {                                             \
                b[j] = x0[j];                                                             \
                k[j] = 0;                                                                 \
            }                                                                             \
            for (int64_t r = 1; r < R; r++) {                                             \
                const T *row = x0 + r * I;                                                \
                for (int64_t j = 0; j < n; j++)                                           \
                    if (BEATS(row[j], b[j], is_max, ISNAN)) {                             \
                        b[j] = row[j];                                                    \
                        k[j] = r;                                                         \
                    }                                                                     \
            }                                                                             \
            for (int64_t j = 0; j < n; j++) {                                             \
                if (val) val[o * I + i0 + j] = b[j];                                      \
                if (idx) idx[o * I + i0 + j] = k[j];                                      \
            }                                                                             \
        }                                                                                 \
        return MOE_OK;                                                                    \
    }

DEFINE_EXTREME(f32, float, isnan)
DEFINE_EXTREME(f64, double, isnan)
DEFINE_EXTREME(i64, int64_t, NO_NAN)

#define DEFINE_SCATTER_DIM(SFX, T)                                                        \
    void moe_cpu_scatter_dim_##SFX(T *out, const T *g, const int64_t *idx, int64_t O,     \
                                   int64_t R, int64_t I)                                  \
    {                                                                                     \
        _Pragma("omp parallel for if (O * I > 32768) schedule(static)")                   \
        for (int64_t t = 0; t < O * I; t++)                                               \
            out[((t / I) * R + idx[t]) * I + t % I] += g[t];                              \
    }

DEFINE_SCATTER_DIM(f32, float)
DEFINE_SCATTER_DIM(f64, double)

/* ---- softmax family ----------------------------------------------------------------- */

/* f32 rows go four at a time through vector code (GCC/Clang vector
 * extensions), so the exp pass vectorises without libm. */
typedef float vf4 __attribute__((vector_size(16)));
typedef int32_t vi4 __attribute__((vector_size(16)));
typedef uint32_t vu4 __attribute__((vector_size(16)));
typedef double vd2 __attribute__((vector_size(16)));
#define SPLAT4(v) {(v), (v), (v), (v)}

static inline vf4 select4(vi4 mask, vf4 a, vf4 b) { return (vf4)(((vi4)a & mask) | ((vi4)b & ~mask)); }

/* e^x: x = k ln2 + r with |r| <= ln2/2; e^r by its Taylor series to r^7
 * (truncation below 6e-9 relative; within 2 ulp of the exact value); 2^k
 * put in the exponent bits as two halves so k in [-126, 128] stays
 * normal. Below -87.3 the result flushes to 0; above ln(FLT_MAX) it is +inf;
 * NaN stays NaN. */
static inline vf4 exp4(vf4 x)
{
    const vf4 lo = SPLAT4(-87.3f), hi = SPLAT4(88.72283f), zero = SPLAT4(0.0f);
    const vf4 inf = SPLAT4(INFINITY), magic = SPLAT4(12582912.0f); /* 1.5 * 2^23 */
    vf4 xc = select4(x < lo, lo, x);
    xc = select4(xc > hi, hi, xc);
    /* round x log2(e) to an integer: adding 1.5 * 2^23 leaves it in the low bits */
    vf4 t = xc * 1.44269504089f + magic;
    vi4 k = (vi4)t - 0x4B400000;
    vf4 kf = t - magic;
    vf4 r = (xc - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f; /* ln2 hi + lo */
    vf4 p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
                  + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    vf4 s1 = (vf4)((vu4)((k >> 1) + 127) << 23), s2 = (vf4)((vu4)(k - (k >> 1) + 127) << 23);
    vf4 y = p * s1 * s2;
    y = select4(x < lo, zero, y);
    y = select4(x > hi, inf, y);
    return select4(x != x, x, y);
}

static double rowmax_f64(const double *x, int64_t n)
{
    double m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Sum of e^(x - sh) over x[0..n); the exps go to y unless NULL. */
static double expsum_f64(double *y, const double *x, int64_t n, double sh)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = exp(x[i] - sh);
        if (y) y[i] = e;
        s += e;
    }
    return s;
}

/* One f32 softmax / log-softmax row, eight lanes at a time. Built twice (AVX2
 * and baseline) and picked at load time, so a generic build still runs the
 * wide code where the CPU has it. The exp sum is kept in float within blocks
 * of 64 elements and in double across blocks: fast, and as accurate as a
 * double sum for any row length that matters. */
typedef float vf8 __attribute__((vector_size(32)));
typedef int32_t vm8 __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) vf8 max8(vf8 a, vf8 b)
{
    vm8 gt = a > b;
    return (vf8)(((vm8)a & gt) | ((vm8)b & ~gt));
}

typedef uint32_t vu8 __attribute__((vector_size(32)));

static inline __attribute__((always_inline)) vf8 select8(vm8 mask, vf8 a, vf8 b)
{
    return (vf8)(((vm8)a & mask) | ((vm8)b & ~mask));
}

/* exp4's method (see above) on eight lanes. */
static inline __attribute__((always_inline)) vf8 exp8(vf8 x)
{
    const vf8 zero = {0}, magic = zero + 12582912.0f; /* 1.5 * 2^23 */
    vm8 under = x < -87.3f, over = x > 88.72283f, nan = x != x;
    vf8 xc = select8(under, zero - 87.3f, select8(over, zero + 88.72283f, x));
    vf8 t = xc * 1.44269504089f + magic;
    vm8 k = (vm8)t - 0x4B400000;
    vf8 kf = t - magic;
    vf8 r = (xc - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
    vf8 p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120
                  + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    vf8 s1 = (vf8)((vu8)((k >> 1) + 127) << 23), s2 = (vf8)((vu8)(k - (k >> 1) + 127) << 23);
    vf8 y = p * s1 * s2;
    y = select8(under, zero, y);
    y = select8(over, zero + INFINITY, y);
    return select8(nan, x, y);
}

__attribute__((target_clones("avx2", "default")))
static void softmax_row_f32(float *restrict y, const float *restrict x, int64_t n,
                            moe_cpu_softmax_mode mode, float *lse_out)
{
    /* max, NaN ignored */
    vf8 m8 = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        vf8 v;
        memcpy(&v, x + i, sizeof v);
        m8 = max8(v, m8);
    }
    float m = -INFINITY;
    for (int j = 0; j < 8; j++) m = m8[j] > m ? m8[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    float sh = isinf(m) ? 0 : m;
    /* exp and its sum */
    double total = 0;
    float *dst = mode == MOE_CPU_SOFTMAX ? y : NULL;
    for (i = 0; i < n;) {
        int64_t end = i + 64 <= n ? i + 64 : n;
        vf8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
        for (; i + 8 <= end; i += 8) {
            vf8 v;
            memcpy(&v, x + i, sizeof v);
            vf8 e = exp8(v - sh);
            if (dst) memcpy(dst + i, &e, sizeof e);
            acc += e;
        }
        float part = 0;
        for (int j = 0; j < 8; j++) part += acc[j];
        for (; i < end; i++) {
            vf4 one = SPLAT4(-INFINITY);
            one[0] = x[i] - sh;
            float e = exp4(one)[0];
            if (dst) dst[i] = e;
            part += e;
        }
        total += part;
    }
    if (mode == MOE_CPU_LOGSUMEXP) {
        *lse_out = (float)((double)sh + log(total));
        return;
    }
    /* softmax: y *= 1/total; log-softmax: y = (x - sh) - log(total) */
    bool scale = mode == MOE_CPU_SOFTMAX;
    float a = scale ? (float)(1.0 / total) : 0, b = scale ? 0 : (float)log(total);
    const float *src = scale ? y : x;
    for (i = 0; i + 8 <= n; i += 8) {
        vf8 v;
        memcpy(&v, src + i, sizeof v);
        v = scale ? v * a : (v - sh) - b;
        memcpy(y + i, &v, sizeof v);
    }
    for (; i < n; i++) y[i] = scale ? src[i] * a : (src[i] - sh) - b;
}

void moe_cpu_softmax_f32(float *out, const float *x, int64_t O, int64_t N, moe_cpu_softmax_mode mode)
{
#pragma omp parallel for if (O * N > 32768) schedule(static)
    for (int64_t o = 0; o < O; o++)
        softmax_row_f32(mode == MOE_CPU_LOGSUMEXP ? NULL : out + o * N, x + o * N, N, mode,
                        mode == MOE_CPU_LOGSUMEXP ? out + o : NULL);
}

/* Per row: one pass for the max, one for exp and its sum, one to scale (or
 * shift). The shift is the max unless it is infinite (all -inf: the sum is
 * 0, so softmax is NaN and logsumexp is -inf; +inf: NaN / +inf, as the
 * limits say). */
#define DEFINE_SOFTMAX(SFX, T)                                                            \
    void moe_cpu_softmax_##SFX(T *out, const T *x, int64_t O, int64_t N,                  \
                               moe_cpu_softmax_mode mode)                                 \
    {                                                                                     \
        _Pragma("omp parallel for if (O * N > 32768) schedule(static)")                   \
        for (int64_t o = 0; o < O; o++) {                                                 \
            const T *restrict xr = x + o * N;                                             \
            T m = rowmax_##SFX(xr, N);                                                    \
            T sh = isinf(m) ? 0 : m;                                                      \
            if (mode == MOE_CPU_SOFTMAX) {                                                \
                T *restrict yr = out + o * N;                                             \
                T inv = (T)(1.0 / expsum_##SFX(yr, xr, N, sh));                           \
                for (int64_t i = 0; i < N; i++) yr[i] *= inv;                             \
            } else if (mode == MOE_CPU_LOGSUMEXP) {                                       \
                out[o] = (T)((double)sh + log(expsum_##SFX(NULL, xr, N, sh)));            \
            } else {                                                                      \
                T *restrict yr = out + o * N;                                             \
                T ls = (T)log(expsum_##SFX(NULL, xr, N, sh));                             \
                for (int64_t i = 0; i < N; i++) yr[i] = (xr[i] - sh) - ls;                \
            }                                                                             \
        }                                                                                 \
    }

DEFINE_SOFTMAX(f64, double)
