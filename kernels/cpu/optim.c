/* optim.c — the optimizer update loops and the sum of squares behind
 * gradient clipping (see optim.h). One template per loop, instantiated for
 * float and double; every loop runs over many parameters in one parallel
 * region. */
#include "optim.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "vector_math.h"

/* Below this many elements in all a loop runs on the calling thread: a
 * parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

/* Elements per task of the update loops: small enough that the chunks of a
 * step's parameters even out two threads of unequal speed, large enough
 * that handing one out costs nothing next to its memory traffic. */
#define CHUNK 16384

/* Parameters per parallel region (the chunk table lives on the stack). */
#define BATCH 64

/* sqrt in the loop's own precision. */
#define SQRT_OF(T, x) _Generic((T)0, float: sqrtf, double: sqrt)(x)

/* ---- the chunks of a batch of parameters ------------------------------------------ */

/* Parameter i of the batch has N[i] elements and owns chunks
 * [first[i], first[i + 1]). */
typedef struct chunk_table {
    int count;
    int64_t first[BATCH + 1], n[BATCH], elements;
} chunk_table;

static void chunk_table_add(chunk_table *t, int64_t n)
{
    t->n[t->count] = n;
    t->first[t->count + 1] = t->first[t->count] + (n + CHUNK - 1) / CHUNK;
    t->count++;
    t->elements += n;
}

/* The parameter that chunk C belongs to, and its element range [*lo, *hi). */
static int chunk_range(const chunk_table *t, int64_t c, int64_t *lo, int64_t *hi)
{
    int i = 0;
    while (t->first[i + 1] <= c) i++; /* BATCH is small: a scan will do */
    *lo = (c - t->first[i]) * CHUNK;
    *hi = *lo + CHUNK < t->n[i] ? *lo + CHUNK : t->n[i];
    return i;
}

/* Run SPAN_float or SPAN_double (by the item's dtype) on (item, lo, hi)
 * for every chunk of ITEMS[0..COUNT), BATCH parameters to a parallel
 * region. */
#define FOR_EACH_CHUNK(COUNT, ITEMS, SPAN)                                                     \
    for (int base = 0; base < (COUNT); base += BATCH) {                                        \
        chunk_table t = {0};                                                                   \
        for (int i = base; i < (COUNT) && i < base + BATCH; i++) chunk_table_add(&t, (ITEMS)[i].n); \
        _Pragma("omp parallel for schedule(dynamic) if (t.elements >= PARALLEL_MIN)")         \
        for (int64_t c = 0; c < t.first[t.count]; c++) {                                       \
            int64_t lo, hi;                                                                    \
            const __typeof__(*(ITEMS)) *it = &(ITEMS)[base + chunk_range(&t, c, &lo, &hi)];    \
            if (it->dtype == MOE_F64)                                                          \
                SPAN##_double(it, lo, hi);                                                     \
            else                                                                               \
                SPAN##_float(it, lo, hi);                                                      \
        }                                                                                      \
    }

/* ---- AdamW ---------------------------------------------------------------------- */

/* AdamW over elements [lo, hi) of one parameter. The scalars are copied to
 * locals of type T first: the loop then runs in T's own precision (as
 * PyTorch's does), vectorises (this file is built with -fno-math-errno, so
 * sqrt needs no errno branch), and never reloads them. Its square root and
 * two divisions bound it in 4-wide SSE, so it is compiled as vectorised
 * clones (vector_math.h): 16 lanes with AVX-512, without fused
 * multiply-adds, so that every clone rounds as the baseline one does. */
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#define ADAMW_SPAN(T)                                                                          \
    SIMD_CLONES NO_CONTRACT static void adamw_span_##T(const moe_cpu_adamw_item *it,           \
                                                       int64_t lo, int64_t hi)                 \
    {                                                                                          \
        const moe_cpu_adamw_step *s = &it->step;                                               \
        T *restrict p = it->param, *restrict m = it->exp_avg, *restrict v = it->exp_avg_sq;    \
        const T *restrict g = it->grad;                                                        \
        const T decay = (T)(1.0 - s->lr * s->weight_decay), b1 = (T)s->beta1,                  \
                b2 = (T)s->beta2, c1 = (T)(1.0 - s->beta1), c2 = (T)(1.0 - s->beta2);          \
        const T step_size = (T)(s->lr / s->bias_correction1), eps = (T)s->eps,                 \
                bc2 = (T)s->bias_correction2_sqrt, gs = (T)s->grad_scale;                      \
        _Pragma("omp simd")                                                                    \
        for (int64_t i = lo; i < hi; i++) {                                                    \
            T gi = g[i] * gs;                                                                  \
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

void moe_cpu_adamw(int count, const moe_cpu_adamw_item *items)
{
    FOR_EACH_CHUNK(count, items, adamw_span);
}

/* ---- SGD ------------------------------------------------------------------------ */

/* One loop per case (first step, nesterov), so the loop body has no branch. */
#define SGD_LOOP(T, BODY)                                                                      \
    do {                                                                                       \
        _Pragma("omp simd")                                                                    \
        for (int64_t i = lo; i < hi; i++) {                                                    \
            T d = g[i] * gs + wd * p[i];                                                       \
            BODY;                                                                              \
            p[i] = p[i] - lr * d;                                                              \
        }                                                                                      \
    } while (0)

#define SGD_SPAN(T)                                                                            \
    static void sgd_span_##T(const moe_cpu_sgd_item *it, int64_t lo, int64_t hi)               \
    {                                                                                          \
        const moe_cpu_sgd_step *s = &it->step;                                                 \
        T *restrict p = it->param, *restrict b = it->buf;                                      \
        const T *restrict g = it->grad;                                                        \
        const T lr = (T)s->lr, mu = (T)s->momentum, keep = (T)(1.0 - s->dampening),            \
                wd = (T)s->weight_decay, gs = (T)s->grad_scale;                                \
        if (!b)                                                                                \
            SGD_LOOP(T, (void)0);                                                              \
        else if (s->first && s->nesterov)                                                      \
            SGD_LOOP(T, b[i] = d; d = d + mu * d);                                             \
        else if (s->first)                                                                     \
            SGD_LOOP(T, b[i] = d);                                                             \
        else if (s->nesterov)                                                                  \
            SGD_LOOP(T, T bi = b[i] * mu + keep * d; b[i] = bi; d = d + mu * bi);              \
        else                                                                                   \
            SGD_LOOP(T, T bi = b[i] * mu + keep * d; b[i] = bi; d = bi);                       \
    }
SGD_SPAN(float)
SGD_SPAN(double)

void moe_cpu_sgd(int count, const moe_cpu_sgd_item *items)
{
    FOR_EACH_CHUNK(count, items, sgd_span);
}

/* ---- the sum of squares ----------------------------------------------------------- */

/* Each buffer is summed in a fixed number of slices (not one per thread),
 * each in order in LANES running sums (independent additions the CPU can
 * overlap) combined in order; the slice sums are added in order, then the
 * buffers' sums: the same bits for any thread count. */
#define SLICES 64
#define LANES 8

static double slice_sum_double(const double *a, int64_t lo, int64_t hi)
{
    double lane[LANES] = {0};
    int64_t i = lo;
    for (; i + LANES <= hi; i += LANES)
        for (int j = 0; j < LANES; j++) lane[j] += a[i + j] * a[i + j];
    for (int j = 0; i < hi; i++, j++) lane[j] += a[i] * a[i];
    double acc = 0;
    for (int j = 0; j < LANES; j++) acc += lane[j];
    return acc;
}

/* The float slice: the same LANES running sums in double, written with
 * vector types so that each step is two 4-wide conversions and multiply-adds
 * (a float's square is exact in double, so a fused multiply-add rounds as a
 * plain add does). Two 4-double halves, not one 8-double vector: without
 * AVX-512 the compiler kept an 8-double vector on the stack, and the loop
 * waited on its own stores. */
typedef double half_d __attribute__((vector_size(LANES / 2 * sizeof(double))));
typedef float half_f __attribute__((vector_size(LANES / 2 * sizeof(float))));

SIMD_CLONES static double slice_sum_float(const float *a, int64_t lo, int64_t hi)
{
    half_d low = {0}, high = {0};
    int64_t i = lo;
    for (; i + LANES <= hi; i += LANES) {
        half_f x, y;
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, a + i + LANES / 2, sizeof y);
        half_d dx = __builtin_convertvector(x, half_d), dy = __builtin_convertvector(y, half_d);
        low += dx * dx;
        high += dy * dy;
    }
    double sums[LANES];
    memcpy(sums, &low, sizeof low);
    memcpy(sums + LANES / 2, &high, sizeof high);
    for (int j = 0; i < hi; i++, j++) sums[j] += (double)a[i] * (double)a[i];
    double acc = 0;
    for (int j = 0; j < LANES; j++) acc += sums[j];
    return acc;
}

double moe_cpu_sum_squares(int count, const moe_cpu_span *spans)
{
    double total = 0;
    for (int base = 0; base < count; base += BATCH) {
        int m = count - base < BATCH ? count - base : BATCH;
        int64_t elements = 0;
        for (int i = 0; i < m; i++) elements += spans[base + i].n;
        double part[BATCH][SLICES];
#pragma omp parallel for schedule(dynamic) if (elements >= PARALLEL_MIN)
        for (int task = 0; task < m * SLICES; task++) {
            const moe_cpu_span *sp = &spans[base + task / SLICES];
            int k = task % SLICES;
            int64_t lo = sp->n * k / SLICES, hi = sp->n * (k + 1) / SLICES;
            part[task / SLICES][k] = sp->dtype == MOE_F64 ? slice_sum_double(sp->data, lo, hi)
                                                          : slice_sum_float(sp->data, lo, hi);
        }
        for (int i = 0; i < m; i++) {
            double sum = 0;
            for (int k = 0; k < SLICES; k++) sum += part[i][k];
            total += sum;
        }
    }
    return total;
}

/* ---- scaling -------------------------------------------------------------------- */

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
