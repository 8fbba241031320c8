/* reduce.c — loops behind sum/mean/var, cumsum and max/min (the softmax
 * family is in softmax.c).
 *
 * Dimension letters: O outer rows, R reduced (scanned) extent, I inner
 * columns, K fixed chunks of one row. Every buffer is contiguous: x [O R I].
 * Each kernel is written once as a macro over the element type T and the
 * accumulator type ACC and instantiated for f32 (ACC double), f64 and i64
 * where the op supports it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "reduce.h"

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
    static moe_status sum_##SFX(T *out, const T *x, int64_t O, int64_t R, int64_t I,     \
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
    static moe_status var_##SFX(T *out, const T *x, int64_t O, int64_t R, int correction) \
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
    static void cumsum_##SFX(T *out, const T *x, int64_t O, int64_t R, int64_t I,        \
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
    static moe_status extreme_##SFX(T *val, int64_t *idx, const T *x, int64_t O,         \
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
    static void scatter_dim_##SFX(T *out, const T *g, const int64_t *idx, int64_t O,     \
                                   int64_t R, int64_t I)                                  \
    {                                                                                     \
        _Pragma("omp parallel for if (O * I > 32768) schedule(static)")                   \
        for (int64_t t = 0; t < O * I; t++)                                               \
            out[((t / I) * R + idx[t]) * I + t % I] += g[t];                              \
    }

DEFINE_SCATTER_DIM(f32, float)
DEFINE_SCATTER_DIM(f64, double)

/* ---- one entry per op, dtype as an argument (as the CUDA kernels) ---------------- */

moe_status moe_cpu_sum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int64_t I, double scale)
{
    if (dt == MOE_F32) return sum_f32(out, x, O, R, I, scale);
    if (dt == MOE_F64) return sum_f64(out, x, O, R, I, scale);
    return sum_i64(out, x, O, R, I, scale);
}

moe_status moe_cpu_var(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int correction)
{
    return dt == MOE_F32 ? var_f32(out, x, O, R, correction) : var_f64(out, x, O, R, correction);
}

void moe_cpu_cumsum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int64_t I, bool reverse)
{
    if (dt == MOE_F32) cumsum_f32(out, x, O, R, I, reverse);
    else if (dt == MOE_F64) cumsum_f64(out, x, O, R, I, reverse);
    else cumsum_i64(out, x, O, R, I, reverse);
}

moe_status moe_cpu_extreme(moe_dtype dt, void *val, int64_t *idx, const void *x, int64_t O, int64_t R, int64_t I,
                           bool is_max)
{
    if (dt == MOE_F32) return extreme_f32(val, idx, x, O, R, I, is_max);
    if (dt == MOE_F64) return extreme_f64(val, idx, x, O, R, I, is_max);
    return extreme_i64(val, idx, x, O, R, I, is_max);
}

void moe_cpu_scatter_dim(moe_dtype dt, void *out, const void *g, const int64_t *idx, int64_t O, int64_t R,
                         int64_t I)
{
    if (dt == MOE_F32) scatter_dim_f32(out, g, idx, O, R, I);
    else scatter_dim_f64(out, g, idx, O, R, I);
}
