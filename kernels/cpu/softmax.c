/* softmax.c — loops behind softmax, log-softmax and logsumexp over the rows
 * of a contiguous x [O N] (declared in softmax.h).
 *
 * Dimension letters: O rows, N the softmax row length, W the lanes of one
 * f32 vector.
 *
 * Per row: a pass for the max, a pass for e^(x - max) and its sum, a pass
 * to scale (or shift). Only the first pass reads from memory: a row of up
 * to PREFETCH_ROW elements stays in L1 for the other two, and the exp pass
 * prefetches the next input and output rows, so memory works while the
 * exps are computed. The f32 kernel is built for 16, 8 and 4 lanes
 * (AVX-512, AVX2 + FMA, anything) and the widest the CPU runs is picked at
 * run time. On tests/bench/bench-ops (2^24 f32, rows of 1024, 2 threads,
 * AVX-512) this reaches 75-85% of memcpy bandwidth; 8 lanes on every CPU,
 * no FMA, no prefetch and one chain of max compares gave 21-27%.
 *
 * Rows go to threads whole, and every sum has a fixed order, so results do
 * not depend on the thread count (they may differ in the last bits between
 * CPUs of different vector widths). */
#include <math.h>
#include <string.h>

#include "softmax.h"

#define BLOCK 4             /* exps per lane summed in float before going to double */
#define PREFETCH_ROW 4096   /* longest row (elements) prefetched whole */
#define PAR_MIN 32768       /* fewer elements than this: one thread */

/* Vectors of W = 4, 8, 16 lanes: the width of SSE, AVX2 and AVX-512
 * registers. Each kernel is built for one width at a time — GCC splits a
 * vector wider than the target's registers into slow scalar pieces. */
typedef float vf4 __attribute__((vector_size(16)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf16 __attribute__((vector_size(64)));
typedef int32_t vi4 __attribute__((vector_size(16)));
typedef int32_t vi8 __attribute__((vector_size(32)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef uint32_t vu4 __attribute__((vector_size(16)));
typedef uint32_t vu8 __attribute__((vector_size(32)));
typedef uint32_t vu16 __attribute__((vector_size(64)));
typedef double vd4 __attribute__((vector_size(32)));
typedef double vd8 __attribute__((vector_size(64)));
typedef double vd16 __attribute__((vector_size(128)));

#define INLINE static inline __attribute__((always_inline))

/* A row whose max is +inf or NaN-only/-inf-only: the plain loop in double
 * with the shift 0, so the limits come out as IEEE arithmetic says (all
 * -inf: sum 0, softmax NaN, logsumexp -inf; +inf: NaN / +inf). */
static void row_nonfinite(float *restrict y, const float *restrict x, int64_t n,
                          moe_cpu_softmax_mode mode, float *lse)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += exp((double)x[i]);
    if (mode == MOE_CPU_LOGSUMEXP) *lse = (float)log(s);
    else if (mode == MOE_CPU_SOFTMAX)
        for (int64_t i = 0; i < n; i++) y[i] = (float)(exp((double)x[i]) / s);
    else
        for (int64_t i = 0; i < n; i++) y[i] = (float)((double)x[i] - log(s));
}

/* The f32 row kernel for W lanes and its helpers (suffixed W, always
 * inlined), all built for TARGET.
 *
 * exp##W(d) is e^d for d <= 0, d = -inf or NaN: what x - max gives when the
 * max is finite. d = k ln2 + r with k = round(d log2 e), |r| <= ln2/2 (ln2
 * in two parts, the first exact in a product with k); e^r by a degree-6
 * polynomial 1 + r + c2 r^2 + ... + c6 r^6, c2..c6 fitted (Remez) for the
 * least largest relative error on |r| <= ln2/2: 4e-9 with the float
 * coefficients, and e^0 is exactly 1. 2^k goes into the exponent bits,
 * normal since k >= -126 above the cut. Below the cut (-87.3, where e^d
 * nears the smallest normal float) the result is 0; NaN stays NaN.
 *
 * row_expsum##W: the sum of e^(x - m) over x[0..n) (m finite), the exps
 * stored to y unless NULL. Each lane sums BLOCK exps in float, then the
 * lanes go to double and are added as a fixed tree: the order depends only
 * on n and W. NEXT and YNEXT (either may be NULL): the input and output rows
 * after this one, fetched into L1 meanwhile, one prefetch per 64-byte line —
 * their first pass would otherwise wait on memory with nothing to do. */
#define DEFINE_ROW(W, TARGET)                                                             \
    INLINE TARGET vf##W load##W(const float *p)                                           \
    {                                                                                     \
        vf##W v;                                                                          \
        memcpy(&v, p, sizeof v);                                                          \
        return v;                                                                         \
    }                                                                                     \
                                                                                          \
    INLINE TARGET void store##W(float *p, vf##W v) { memcpy(p, &v, sizeof v); }           \
                                                                                          \
    /* The first n < W elements of p, the other lanes FILL. */                            \
    INLINE TARGET vf##W load_part##W(const float *p, int64_t n, float fill)               \
    {                                                                                     \
        float b[W];                                                                       \
        for (int j = 0; j < W; j++) b[j] = j < n ? p[j] : fill;                           \
        return load##W(b);                                                                \
    }                                                                                     \
                                                                                          \
    INLINE TARGET vf##W pick##W(vi##W mask, vf##W a, vf##W b)                             \
    {                                                                                     \
        return (vf##W)(((vi##W)a & mask) | ((vi##W)b & ~mask));                           \
    }                                                                                     \
                                                                                          \
    INLINE TARGET vf##W exp##W(vf##W d)                                                   \
    {                                                                                     \
        const vf##W zero = {0}, magic = zero + 12582912.0f; /* 1.5 * 2^23: rounds */      \
        vi##W under = d < -87.3f;                                                         \
        vf##W t = d * 1.44269504089f + magic;                                             \
        vu##W k = (vu##W)t - 0x4B400000u; /* wraps for k < 0; the shift puts it right */  \
        vf##W kf = t - magic;                                                             \
        vf##W r = (d - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;            \
        vf##W p = 1.0f + r * (1.0f + r * (0.499999940f + r * (0.166665211f                \
                  + r * (0.0416683890f + r * (0.00836871006f + r * 0.00138146128f)))));   \
        return pick##W(under, zero, p * (vf##W)((k + 127) << 23));                        \
    }                                                                                     \
                                                                                          \
    INLINE TARGET vf##W max##W(vf##W a, vf##W b) { return pick##W(a > b, a, b); }        \
                                                                                          \
    /* Max of x[0..n), NaN ignored (-inf when none). Four running maxima, so              \
     * the compares do not wait on one another. */                                        \
    INLINE TARGET float row_max##W(const float *restrict x, int64_t n)                    \
    {                                                                                     \
        const vf##W zero = {0};                                                           \
        vf##W m0 = zero - INFINITY, m1 = m0, m2 = m0, m3 = m0;                            \
        int64_t i = 0;                                                                    \
        for (; i + 4 * W <= n; i += 4 * W) {                                              \
            m0 = max##W(load##W(x + i), m0);                                              \
            m1 = max##W(load##W(x + i + W), m1);                                          \
            m2 = max##W(load##W(x + i + 2 * W), m2);                                      \
            m3 = max##W(load##W(x + i + 3 * W), m3);                                      \
        }                                                                                 \
        for (; i + W <= n; i += W) m0 = max##W(load##W(x + i), m0);                       \
        if (i < n) m0 = max##W(load_part##W(x + i, n - i, -INFINITY), m0);                \
        m0 = max##W(max##W(m0, m1), max##W(m2, m3));                                      \
        float r = -INFINITY;                                                              \
        for (int j = 0; j < W; j++) r = m0[j] > r ? m0[j] : r;                            \
        return r;                                                                         \
    }                                                                                     \
                                                                                          \
    INLINE TARGET double row_expsum##W(float *restrict y, const float *restrict x,        \
                                       int64_t n, float m, const float *next,             \
                                       float *ynext)                                      \
    {                                                                                     \
        vd##W total = {0};                                                                \
        int64_t i = 0;                                                                    \
        while (i < n) {                                                                   \
            int64_t end = i + BLOCK * W <= n ? i + BLOCK * W : n;                         \
            vf##W acc = {0};                                                              \
            for (; i + W <= end; i += W) {                                                \
                if (i % 16 == 0) {                                                        \
                    if (next) __builtin_prefetch(next + i, 0, 3);                         \
                    if (ynext) __builtin_prefetch(ynext + i, 1, 3);                       \
                }                                                                         \
                vf##W e = exp##W(load##W(x + i) - m);                                     \
                if (y) store##W(y + i, e);                                                \
                acc += e;                                                                 \
            }                                                                             \
            if (i < end) { /* the row's last n mod W: padded lanes give e^-inf = 0 */     \
                vf##W e = exp##W(load_part##W(x + i, end - i, -INFINITY) - m);            \
                if (y)                                                                    \
                    for (int64_t j = 0; j < end - i; j++) y[i + j] = e[j];                \
                acc += e;                                                                 \
                i = end;                                                                  \
            }                                                                             \
            total += __builtin_convertvector(acc, vd##W);                                 \
        }                                                                                 \
        double l[W];                                                                      \
        memcpy(l, &total, sizeof l);                                                      \
        for (int w = W / 2; w > 0; w /= 2)                                                \
            for (int j = 0; j < w; j++) l[j] += l[j + w];                                 \
        return l[0];                                                                      \
    }                                                                                     \
                                                                                          \
    /* One f32 row (y [n], or *lse for logsumexp). */                                     \
    TARGET static void softmax_row##W(float *restrict y, const float *restrict x,         \
                                      int64_t n, const float *next, float *ynext,         \
                                      moe_cpu_softmax_mode mode, float *lse)              \
    {                                                                                     \
        float m = row_max##W(x, n);                                                       \
        if (!isfinite(m)) {                                                               \
            row_nonfinite(y, x, n, mode, lse);                                            \
            return;                                                                       \
        }                                                                                 \
        double total = row_expsum##W(mode == MOE_CPU_SOFTMAX ? y : NULL, x, n, m, next,   \
                                     ynext);                                              \
        if (mode == MOE_CPU_LOGSUMEXP) {                                                  \
            *lse = (float)((double)m + log(total));                                       \
            return;                                                                       \
        }                                                                                 \
        int64_t i = 0;                                                                    \
        if (mode == MOE_CPU_SOFTMAX) {                                                    \
            float a = (float)(1.0 / total);                                               \
            for (; i + W <= n; i += W) store##W(y + i, load##W(y + i) * a);               \
            for (; i < n; i++) y[i] *= a;                                                 \
        } else { /* log-softmax: (x - m) - log(total) */                                  \
            float b = (float)log(total);                                                  \
            for (; i + W <= n; i += W) store##W(y + i, (load##W(x + i) - m) - b);         \
            for (; i < n; i++) y[i] = (x[i] - m) - b;                                     \
        }                                                                                 \
    }

DEFINE_ROW(4, )
#if defined(__x86_64__) || defined(__i386__)
#define X86_KERNELS 1
DEFINE_ROW(8, __attribute__((target("avx2,fma"))))
DEFINE_ROW(16, __attribute__((target("avx512f,avx2,fma"))))
#endif

typedef void softmax_row_fn(float *restrict y, const float *restrict x, int64_t n,
                            const float *next, float *ynext, moe_cpu_softmax_mode mode,
                            float *lse);

/* The widest kernel this CPU runs. */
static softmax_row_fn *softmax_row_for_cpu(void)
{
#ifdef X86_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return softmax_row16;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return softmax_row8;
#endif
    return softmax_row4;
}

static void softmax_f32(float *out, const float *x, int64_t O, int64_t N, moe_cpu_softmax_mode mode)
{
    softmax_row_fn *row = softmax_row_for_cpu();
    bool lse = mode == MOE_CPU_LOGSUMEXP;
#pragma omp parallel for if (O * N > PAR_MIN) schedule(static)
    for (int64_t o = 0; o < O; o++) {
        const float *next = o + 1 < O && N <= PREFETCH_ROW ? x + (o + 1) * N : NULL;
        float *ynext = next && !lse ? out + (o + 1) * N : NULL;
        row(lse ? NULL : out + o * N, x + o * N, N, next, ynext, mode, lse ? out + o : NULL);
    }
}

/* ---- f64: plain loops with libm ------------------------------------------------------ */

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

/* The shift is the max unless it is infinite (all -inf: the sum is 0, so
 * softmax is NaN and logsumexp is -inf; +inf: NaN / +inf, as the limits
 * say). */
static void softmax_f64(double *out, const double *x, int64_t O, int64_t N,
                        moe_cpu_softmax_mode mode)
{
#pragma omp parallel for if (O * N > PAR_MIN) schedule(static)
    for (int64_t o = 0; o < O; o++) {
        const double *restrict xr = x + o * N;
        double m = rowmax_f64(xr, N);
        double sh = isinf(m) ? 0 : m;
        if (mode == MOE_CPU_SOFTMAX) {
            double *restrict yr = out + o * N;
            double inv = 1.0 / expsum_f64(yr, xr, N, sh);
            for (int64_t i = 0; i < N; i++) yr[i] *= inv;
        } else if (mode == MOE_CPU_LOGSUMEXP) {
            out[o] = sh + log(expsum_f64(NULL, xr, N, sh));
        } else {
            double *restrict yr = out + o * N;
            double ls = log(expsum_f64(NULL, xr, N, sh));
            for (int64_t i = 0; i < N; i++) yr[i] = (xr[i] - sh) - ls;
        }
    }
}

void moe_cpu_softmax(moe_dtype dt, void *out, const void *x, int64_t O, int64_t N,
                     moe_cpu_softmax_mode mode)
{
    if (dt == MOE_F32) softmax_f32(out, x, O, N, mode);
    else softmax_f64(out, x, O, N, mode);
}
