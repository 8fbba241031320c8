/* optim.c — the optimizer update loops and the sum of squares behind
 * gradient clipping (see optim.h). One template per loop, instantiated for
 * float and double by a dtype switch. */
#include "optim.h"

#include <math.h>
#include <omp.h>

/* Below this many elements a loop runs on the calling thread: a parallel
 * region costs more than it saves. */
#define PARALLEL_MIN 32768

/* sqrt in the loop's own precision. */
#define SQRT_OF(T, x) _Generic((T)0, float: sqrtf, double: sqrt)(x)

/* AdamW over elements [lo, hi) of one thread's share. The scalars are
 * copied to locals of type T first: the loop then runs in T's own precision
 * (as PyTorch's does), vectorises (this file is built with -fno-math-errno,
 * so sqrt needs no errno branch), and never reloads them. */
#define ADAMW_SPAN(T)                                                                          \
    static void adamw_span_##T(                                                                \
        T *restrict p, T *restrict m, T *restrict v, const T *restrict g, int64_t lo,          \
        int64_t hi, const moe_cpu_adamw_step *s)                                               \
    {                                                                                          \
        const T decay = (T)(1.0 - s->lr * s->weight_decay), b1 = (T)s->beta1,                  \
                b2 = (T)s->beta2, c1 = (T)(1.0 - s->beta1), c2 = (T)(1.0 - s->beta2);          \
        const T step_size = (T)(s->lr / s->bias_correction1), eps = (T)s->eps,                 \
                bc2 = (T)s->bias_correction2_sqrt;                                             \
        _Pragma("omp simd")                                                                    \
        for (int64_t i = lo; i < hi; i++) {                                                    \
            T gi = g[i];                                                                       \
            T pd = p[i] * decay;                                                               \
            T mi = m[i] * b1 + c1 * gi;                                                        \
            T vi = v[i] * b2 + c2 * gi * gi;                                                   \
            T denom = SQRT_OF(T, vi) / bc2 + eps;                                              \
            m[i] = mi;                                                                         \
            v[i] = vi;                                                                         \
            p[i] = pd - step_size * mi / denom;                                                \
        }                                                                                      \
    }
ADAMW_SPAN(float)
ADAMW_SPAN(double)

void moe_cpu_adamw(moe_dtype dtype, void *param, const void *grad, void *exp_avg,
                   void *exp_avg_sq, int64_t n, const moe_cpu_adamw_step *s)
{
#pragma omp parallel if (n >= PARALLEL_MIN)
    {
        int k = omp_get_thread_num(), t = omp_get_num_threads();
        int64_t lo = n * k / t, hi = n * (k + 1) / t;
        if (dtype == MOE_F64)
            adamw_span_double(param, exp_avg, exp_avg_sq, grad, lo, hi, s);
        else
            adamw_span_float(param, exp_avg, exp_avg_sq, grad, lo, hi, s);
    }
}

/* One loop per case (first step, nesterov), so the loop body has no branch. */
#define SGD_LOOP(T, BODY)                                                                      \
    do {                                                                                       \
        T *restrict p = param, *restrict b = buf;                                              \
        const T *restrict g = grad;                                                            \
        const T lr = (T)s->lr, mu = (T)s->momentum, keep = (T)(1.0 - s->dampening),            \
                wd = (T)s->weight_decay;                                                       \
        (void)b, (void)mu, (void)keep;                                                         \
        _Pragma("omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)")              \
        for (int64_t i = 0; i < n; i++) {                                                      \
            T d = g[i] + wd * p[i];                                                            \
            BODY;                                                                              \
            p[i] = p[i] - lr * d;                                                              \
        }                                                                                      \
    } while (0)

#define SGD_CASES(T)                                                                           \
    do {                                                                                       \
        if (!buf)                                                                              \
            SGD_LOOP(T, (void)0);                                                              \
        else if (s->first && s->nesterov)                                                      \
            SGD_LOOP(T, b[i] = d; d = d + mu * d);                                             \
        else if (s->first)                                                                     \
            SGD_LOOP(T, b[i] = d);                                                             \
        else if (s->nesterov)                                                                  \
            SGD_LOOP(T, T bi = b[i] * mu + keep * d; b[i] = bi; d = d + mu * bi);              \
        else                                                                                   \
            SGD_LOOP(T, T bi = b[i] * mu + keep * d; b[i] = bi; d = bi);                       \
    } while (0)

void moe_cpu_sgd(moe_dtype dtype, void *param, const void *grad, void *buf, int64_t n,
                 const moe_cpu_sgd_step *s)
{
    if (dtype == MOE_F64)
        SGD_CASES(double);
    else
        SGD_CASES(float);
}

/* The sum runs over a fixed number of slices (not one per thread), each
 * summed in order in LANES running sums (independent additions the CPU can
 * overlap) combined in order, and the slice sums are added in order: the
 * same bits for any thread count. */
#define SLICES 64
#define LANES 8

#define SUM_SQUARES(T)                                                                         \
    do {                                                                                       \
        const T *a = x;                                                                        \
        _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_MIN)")                   \
        for (int k = 0; k < SLICES; k++) {                                                     \
            int64_t lo = n * k / SLICES, hi = n * (k + 1) / SLICES, i = lo;                    \
            double lane[LANES] = {0};                                                          \
            for (; i + LANES <= hi; i += LANES)                                                \
                for (int j = 0; j < LANES; j++) lane[j] += (double)a[i + j] * (double)a[i + j]; \
            for (int j = 0; i < hi; i++, j++) lane[j] += (double)a[i] * (double)a[i];          \
            double acc = 0;                                                                    \
            for (int j = 0; j < LANES; j++) acc += lane[j];                                    \
            part[k] = acc;                                                                     \
        }                                                                                      \
    } while (0)

double moe_cpu_sum_squares(moe_dtype dtype, const void *x, int64_t n)
{
    double part[SLICES];
    if (dtype == MOE_F64)
        SUM_SQUARES(double);
    else
        SUM_SQUARES(float);
    double total = 0;
    for (int k = 0; k < SLICES; k++) total += part[k];
    return total;
}

#define SCALE_LOOP(T)                                                                          \
    do {                                                                                       \
        T *a = x;                                                                              \
        const T c = (T)scale;                                                                  \
        _Pragma("omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)")              \
        for (int64_t i = 0; i < n; i++) a[i] = a[i] * c;                                       \
    } while (0)

void moe_cpu_scale(moe_dtype dtype, void *x, int64_t n, double scale)
{
    if (dtype == MOE_F64)
        SCALE_LOOP(double);
    else
        SCALE_LOOP(float);
}
