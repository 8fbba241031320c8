/* optim.c — the optimizer update loops and the sum of squares behind
 * gradient clipping (see optim.h). One template per loop, instantiated for
 * float and double by a dtype switch. */
#include "optim.h"

#include <math.h>

/* Below this many elements a loop runs on the calling thread: a parallel
 * region costs more than it saves. */
#define PARALLEL_MIN 32768

#define ADAMW_LOOP(T)                                                                          \
    do {                                                                                       \
        T *p = param, *m = exp_avg, *v = exp_avg_sq;                                           \
        const T *g = grad;                                                                     \
        const double decay = 1.0 - s->lr * s->weight_decay;                                    \
        const double step_size = s->lr / s->bias_correction1;                                  \
        _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_MIN)")                   \
        for (int64_t i = 0; i < n; i++) {                                                      \
            double gi = g[i];                                                                  \
            T pd = (T)(p[i] * decay);                                                          \
            T mi = (T)((T)(m[i] * s->beta1) + (1.0 - s->beta1) * gi);                          \
            T vi = (T)((T)(v[i] * s->beta2) + (1.0 - s->beta2) * gi * gi);                     \
            T denom = (T)((T)((T)sqrt((double)vi) / s->bias_correction2_sqrt) + s->eps);       \
            m[i] = mi;                                                                         \
            v[i] = vi;                                                                         \
            p[i] = (T)(pd - step_size * (double)mi / (double)denom);                           \
        }                                                                                      \
    } while (0)

void moe_cpu_adamw(moe_dtype dtype, void *param, const void *grad, void *exp_avg,
                   void *exp_avg_sq, int64_t n, const moe_cpu_adamw_step *s)
{
    if (dtype == MOE_F64)
        ADAMW_LOOP(double);
    else
        ADAMW_LOOP(float);
}

#define SGD_LOOP(T)                                                                            \
    do {                                                                                       \
        T *p = param, *b = buf;                                                                \
        const T *g = grad;                                                                     \
        _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_MIN)")                   \
        for (int64_t i = 0; i < n; i++) {                                                      \
            T d = s->weight_decay != 0 ? (T)(g[i] + s->weight_decay * p[i]) : g[i];            \
            if (b) {                                                                           \
                T bi = s->first ? d : (T)((T)(b[i] * s->momentum) + (1.0 - s->dampening) * d); \
                b[i] = bi;                                                                     \
                d = s->nesterov ? (T)(d + s->momentum * bi) : bi;                              \
            }                                                                                  \
            p[i] = (T)(p[i] - s->lr * d);                                                      \
        }                                                                                      \
    } while (0)

void moe_cpu_sgd(moe_dtype dtype, void *param, const void *grad, void *buf, int64_t n,
                 const moe_cpu_sgd_step *s)
{
    if (dtype == MOE_F64)
        SGD_LOOP(double);
    else
        SGD_LOOP(float);
}

/* The sum runs over a fixed number of slices (not one per thread), each
 * summed in order, and the slice sums are added in order. */
#define SLICES 64

#define SUM_SQUARES(T)                                                                         \
    do {                                                                                       \
        const T *a = x;                                                                        \
        _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_MIN)")                   \
        for (int k = 0; k < SLICES; k++) {                                                     \
            int64_t lo = n * k / SLICES, hi = n * (k + 1) / SLICES;                            \
            double acc = 0;                                                                    \
            for (int64_t i = lo; i < hi; i++) acc += (double)a[i] * (double)a[i];              \
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
        _Pragma("omp parallel for schedule(static) if (n >= PARALLEL_MIN)")                   \
        for (int64_t i = 0; i < n; i++) a[i] = (T)(a[i] * scale);                              \
    } while (0)

void moe_cpu_scale(moe_dtype dtype, void *x, int64_t n, double scale)
{
    if (dtype == MOE_F64)
        SCALE_LOOP(double);
    else
        SCALE_LOOP(float);
}
