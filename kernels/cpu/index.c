/* index.c — CPU loops for gather/scatter, index_select/index_add, one-hot,
 * top-k, sort, bincount and histogram. Dimension letters: see index.h.
 *
 * Every loop that accumulates has a fixed order per output element, so the
 * results are the same for any thread count. */
#include "index.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define PAR_MIN 32768 /* elements below which loops stay serial */

int64_t moe_cpu_index_find_bad(const int64_t *idx, int64_t n, int64_t size)
{
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= size) return i;
    return -1;
}

static int64_t prod(const int64_t *shape, int from, int to)
{
    int64_t p = 1;
    for (int k = from; k < to; k++) p *= shape[k];
    return p;
}

/* Offsets of row R (flat over dims 0..ND-2 of SHAPE) in two strided tensors:
 * FULL uses every coordinate, SKIP leaves out DIM (the index supplies it). */
static inline void row_offsets(int64_t r, int nd, const int64_t *shape, int dim,
                               const int64_t *full_strides, int64_t *full,
                               const int64_t *skip_strides, int64_t *skip)
{
    int64_t f = 0, s = 0;
    for (int k = nd - 2; k >= 0; k--) {
        int64_t c = r % shape[k];
        r /= shape[k];
        if (full_strides) f += c * full_strides[k];
        if (k != dim) s += c * skip_strides[k];
    }
    if (full) *full = f;
    *skip = s;
}

/* ---- gather -------------------------------------------------------------------- */

/* out, idx: contiguous in SHAPE, rows of L elements; a strided. */
#define GATHER_ROWS(T)                                                                     \
    do {                                                                                   \
        T *o_ = out;                                                                       \
        const T *a_ = a;                                                                   \
        _Pragma("omp parallel for if (numel > PAR_MIN) schedule(static)")                  \
        for (int64_t r = 0; r < rows; r++) {                                               \
            int64_t aoff;                                                                  \
            row_offsets(r, nd, shape, dim, NULL, NULL, a_strides, &aoff);                  \
            const int64_t *ir = idx + r * L;                                               \
            T *orow = o_ + r * L;                                                          \
            for (int64_t j = 0; j < L; j++) orow[j] = a_[aoff + j * sl + ir[j] * sd];      \
        }                                                                                  \
    } while (0)

void moe_cpu_gather(void *out, const void *a, const int64_t *a_strides, size_t esz,
                    const int64_t *idx, int nd, const int64_t *shape, int dim)
{
    int64_t numel = prod(shape, 0, nd);
    if (numel == 0) return;
    int64_t L = shape[nd - 1], rows = numel / L;
    int64_t sl = dim == nd - 1 ? 0 : a_strides[nd - 1], sd = a_strides[dim];
    switch (esz) {
    case 1: GATHER_ROWS(uint8_t); break;
    case 2: GATHER_ROWS(uint16_t); break;
    case 4: GATHER_ROWS(uint32_t); break;
    default: GATHER_ROWS(uint64_t); break;
    }
}

/* ---- scatter-add ----------------------------------------------------------------
 * Tasks are (p, block of the last dim) pairs, p over the dims before DIM: two
 * tasks never touch the same output element, and inside a task the rows run in
 * order, so each output element sums its contributions in index order. */
#define DEFINE_SCATTER_ADD(T, NAME)                                                        \
    static void NAME(T *out, const int64_t *os, const T *src, const int64_t *ss, const int64_t *idx, \
              int nd, const int64_t *shape, int dim)                                       \
    {                                                                                      \
        int64_t numel = prod(shape, 0, nd);                                                \
        if (numel == 0) return;                                                            \
        bool last = dim == nd - 1;                                                         \
        int64_t L = shape[nd - 1];                                                         \
        int64_t P = prod(shape, 0, dim);                   /* dims before DIM */           \
        int64_t Mr = last ? 1 : prod(shape, dim, nd - 1); /* rows per p */                 \
        int64_t B = last ? L : 64, nblk = (L + B - 1) / B;                                 \
        int64_t sl_o = last ? 0 : os[nd - 1], sd_o = os[dim], sl_s = ss[nd - 1];           \
        _Pragma("omp parallel for if (numel > PAR_MIN) schedule(static)")                  \
        for (int64_t task = 0; task < P * nblk; task++) {                                  \
            int64_t p = task / nblk, j0 = (task % nblk) * B;                               \
            int64_t j1 = j0 + B < L ? j0 + B : L;                                          \
            for (int64_t m = 0; m < Mr; m++) {                                             \
                int64_t r = p * Mr + m, soff, ooff;                                        \
                row_offsets(r, nd, shape, dim, ss, &soff, os, &ooff);                      \
                const int64_t *ir = idx + r * L;                                           \
                for (int64_t j = j0; j < j1; j++)                                          \
                    out[ooff + j * sl_o + ir[j] * sd_o] += src[soff + j * sl_s];           \
            }                                                                              \
        }                                                                                  \
    }

DEFINE_SCATTER_ADD(float, scatter_add_f32)
DEFINE_SCATTER_ADD(double, scatter_add_f64)

/* ---- index_select / index_add ------------------------------------------------------ */

void moe_cpu_index_select(void *out, const void *a, size_t esz, const int64_t *idx, int64_t P,
                          int64_t N, int64_t M, int64_t Q)
{
    /* out [P M Q] ← a [P N Q] */
    size_t row = (size_t)Q * esz;
    char *o = out;
    const char *s = a;
#pragma omp parallel for if (P * M * Q > PAR_MIN) schedule(static)
    for (int64_t pm = 0; pm < P * M; pm++) {
        int64_t p = pm / M, m = pm % M;
        memcpy(o + (size_t)pm * row, s + (size_t)(p * N + idx[m]) * row, row);
    }
}

/* The index entries are grouped by target row with a stable counting sort;
 * then every target row (p, n) is owned by one task and adds its sources in
 * index order, so no two threads touch a row and the order is fixed. */
#define DEFINE_INDEX_ADD(T, NAME)                                                          \
    static bool NAME(T *out, const T *src, const int64_t *idx, int64_t P, int64_t N, int64_t M,    \
              int64_t Q)                                                                   \
    {                                                                                      \
        /* out [P N Q] += src [P M Q] at rows idx [M] */                                   \
        if (P * M * Q == 0) return true;                                                   \
        int64_t *first = malloc(sizeof *first * (size_t)(N + 1)); /* [N+1] */              \
        int64_t *order = malloc(sizeof *order * (size_t)M);       /* [M] */                \
        if (!first || !order) {                                                            \
            free(first);                                                                   \
            free(order);                                                                   \
            return false;                                                                  \
        }                                                                                  \
        memset(first, 0, sizeof *first * (size_t)(N + 1));                                 \
        for (int64_t m = 0; m < M; m++) first[idx[m] + 1]++;                               \
        for (int64_t n = 0; n < N; n++) first[n + 1] += first[n];                          \
        for (int64_t m = 0; m < M; m++) order[first[idx[m]]++] = m;                        \
        for (int64_t n = N; n > 0; n--) first[n] = first[n - 1]; /* undo the advance */    \
        first[0] = 0;                                                                      \
        _Pragma("omp parallel for if (P * M * Q > PAR_MIN) schedule(dynamic, 16)")         \
        for (int64_t pn = 0; pn < P * N; pn++) {                                           \
            int64_t p = pn / N, n = pn % N;                                                \
            T *restrict o = out + pn * Q;                                                  \
            for (int64_t j = first[n]; j < first[n + 1]; j++) {                            \
                const T *restrict s = src + (p * M + order[j]) * Q;                        \
                for (int64_t q = 0; q < Q; q++) o[q] += s[q];                              \
            }                                                                              \
        }                                                                                  \
        free(first);                                                                       \
        free(order);                                                                       \
        return true;                                                                       \
    }

DEFINE_INDEX_ADD(float, index_add_f32)
DEFINE_INDEX_ADD(double, index_add_f64)

void moe_cpu_one_hot(int64_t *out, const int64_t *idx, int64_t n, int64_t C)
{
    /* out [n C] */
#pragma omp parallel for if (n * C > PAR_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        int64_t *row = out + i * C;
        for (int64_t c = 0; c < C; c++) row[c] = 0;
        row[idx[i]] = 1;
    }
}

/* ---- orderings ------------------------------------------------------------------------
 * NaN is larger than every number; equal keys are "not before" each other, so
 * stable algorithms keep them in index order. */
#define KEY_LT(x, y) ((x) < (y) || (!isnan(x) && isnan(y)))
#define KEY_GT(x, y) ((x) > (y) || (isnan(x) && !isnan(y)))

/* ---- stable sort of (value, index) pairs ------------------------------------------------
 * Insertion sort of short runs, then bottom-up merges that take from the right
 * run only when its head is strictly before the left head. */
#define SORT_RUN 24

#define DEFINE_SORT_ROW(T, PAIR, NAME, BEFORE)                                             \
    static void NAME(PAIR *a, PAIR *tmp, int64_t n)                                        \
    {                                                                                      \
        for (int64_t s = 0; s < n; s += SORT_RUN) {                                        \
            int64_t e = s + SORT_RUN < n ? s + SORT_RUN : n;                               \
            for (int64_t i = s + 1; i < e; i++) {                                          \
                PAIR x = a[i];                                                             \
                int64_t j = i;                                                             \
                while (j > s && BEFORE(x.v, a[j - 1].v)) {                                 \
                    a[j] = a[j - 1];                                                       \
                    j--;                                                                   \
                }                                                                          \
                a[j] = x;                                                                  \
            }                                                                              \
        }                                                                                  \
        PAIR *src = a, *dst = tmp;                                                         \
        for (int64_t w = SORT_RUN; w < n; w *= 2) {                                        \
            for (int64_t lo = 0; lo < n; lo += 2 * w) {                                    \
                int64_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n; \
                int64_t i = lo, j = mid, k = lo;                                           \
                while (i < mid && j < hi)                                                  \
                    dst[k++] = BEFORE(src[j].v, src[i].v) ? src[j++] : src[i++];           \
                while (i < mid) dst[k++] = src[i++];                                       \
                while (j < hi) dst[k++] = src[j++];                                        \
            }                                                                              \
            PAIR *t = src;                                                                 \
            src = dst;                                                                     \
            dst = t;                                                                       \
        }                                                                                  \
        if (src != a) memcpy(a, src, (size_t)n * sizeof *a);                               \
    }

typedef struct { float v; int64_t i; } pair_f32;
typedef struct { double v; int64_t i; } pair_f64;
DEFINE_SORT_ROW(float, pair_f32, sort_row_f32_asc, KEY_LT)
DEFINE_SORT_ROW(float, pair_f32, sort_row_f32_desc, KEY_GT)
DEFINE_SORT_ROW(double, pair_f64, sort_row_f64_asc, KEY_LT)
DEFINE_SORT_ROW(double, pair_f64, sort_row_f64_desc, KEY_GT)

/* Sort each row of x [R E] and keep the first KEEP: vals [R KEEP] (or NULL),
 * idx [R KEEP]. Scratch: 2E pairs per thread. */
#define DEFINE_SORT_ROWS(T, PAIR, NAME, ASC, DESC)                                         \
    static bool NAME(T *vals, int64_t *idx, const T *x, int64_t R, int64_t E, int64_t keep, \
                     bool descending)                                                      \
    {                                                                                      \
        bool ok = true;                                                                    \
        _Pragma("omp parallel if (R * E > PAR_MIN)")                                       \
        {                                                                                  \
            PAIR *buf = malloc(sizeof(PAIR) * (size_t)(2 * E + 1));                        \
            if (!buf) {                                                                    \
                _Pragma("omp atomic write")                                                \
                ok = false;                                                                \
            }                                                                              \
            _Pragma("omp for schedule(static)")                                            \
            for (int64_t r = 0; r < R; r++) {                                              \
                if (!buf) continue;                                                        \
                const T *xr = x + r * E;                                                   \
                for (int64_t e = 0; e < E; e++) {                                          \
                    buf[e].v = xr[e];                                                      \
                    buf[e].i = e;                                                          \
                }                                                                          \
                if (descending)                                                            \
                    DESC(buf, buf + E, E);                                                 \
                else                                                                       \
                    ASC(buf, buf + E, E);                                                  \
                for (int64_t k = 0; k < keep; k++) {                                       \
                    if (vals) vals[r * keep + k] = buf[k].v;                               \
                    idx[r * keep + k] = buf[k].i;                                          \
                }                                                                          \
            }                                                                              \
            free(buf);                                                                     \
        }                                                                                  \
        return ok;                                                                         \
    }

DEFINE_SORT_ROWS(float, pair_f32, sort_rows_f32, sort_row_f32_asc, sort_row_f32_desc)
DEFINE_SORT_ROWS(double, pair_f64, sort_rows_f64, sort_row_f64_asc, sort_row_f64_desc)

static bool sort_f32(float *vals, int64_t *idx, const float *x, int64_t R, int64_t E, bool descending)
{
    return sort_rows_f32(vals, idx, x, R, E, E, descending);
}

static bool sort_f64(double *vals, int64_t *idx, const double *x, int64_t R, int64_t E, bool descending)
{
    return sort_rows_f64(vals, idx, x, R, E, E, descending);
}

/* ---- top-k ------------------------------------------------------------------------------
 * Small K: one pass per row keeping a sorted buffer of the best K. Elements
 * arrive in index order, so a newcomer displaces an entry only when strictly
 * better: ties stay with the lower index. */
#define TOPK_SMALL_MAX 16

#define TOPK_ROW(T, BETTER)                                                                \
    do {                                                                                   \
        T bv[TOPK_SMALL_MAX];                                                              \
        int64_t bi[TOPK_SMALL_MAX];                                                        \
        int64_t cnt = 0;                                                                   \
        for (int64_t e = 0; e < E; e++) {                                                  \
            T v = xr[e];                                                                   \
            int64_t pos;                                                                   \
            if (cnt == K) {                                                                \
                if (!BETTER(v, bv[K - 1])) continue;                                       \
                pos = K - 1;                                                               \
            } else {                                                                       \
                pos = cnt++;                                                               \
            }                                                                              \
            while (pos > 0 && BETTER(v, bv[pos - 1])) {                                    \
                bv[pos] = bv[pos - 1];                                                     \
                bi[pos] = bi[pos - 1];                                                     \
                pos--;                                                                     \
            }                                                                              \
            bv[pos] = v;                                                                   \
            bi[pos] = e;                                                                   \
        }                                                                                  \
        for (int64_t k = 0; k < K; k++) {                                                  \
            vr[k] = bv[k];                                                                 \
            ir[k] = bi[k];                                                                 \
        }                                                                                  \
    } while (0)

#define DEFINE_TOPK(T, NAME, SORT_ROWS)                                                    \
    static bool NAME(T *vals, int64_t *idx, const T *x, int64_t R, int64_t E, int64_t K,          \
              bool largest)                                                                \
    {                                                                                      \
        /* vals [R K], idx [R K] ← x [R E] */                                              \
        if (K == 0 || R == 0) return true;                                                 \
        if (K > TOPK_SMALL_MAX) return SORT_ROWS(vals, idx, x, R, E, K, largest);          \
        _Pragma("omp parallel for if (R * E > PAR_MIN) schedule(static)")                  \
        for (int64_t r = 0; r < R; r++) {                                                  \
            const T *xr = x + r * E;                                                       \
            T *vr = vals + r * K;                                                          \
            int64_t *ir = idx + r * K;                                                     \
            if (largest)                                                                   \
                TOPK_ROW(T, KEY_GT);                                                       \
            else                                                                           \
                TOPK_ROW(T, KEY_LT);                                                       \
        }                                                                                  \
        return true;                                                                       \
    }

DEFINE_TOPK(float, topk_f32, sort_rows_f32)
DEFINE_TOPK(double, topk_f64, sort_rows_f64)

/* ---- counting ------------------------------------------------------------------------- */

int64_t moe_cpu_index_bound(const int64_t *x, int64_t n, int64_t at_least, int64_t *first_negative)
{
    int64_t bound = at_least, negative = -1;
    for (int64_t i = 0; i < n; i++) {
        if (x[i] < 0 && negative < 0) negative = i;
        if (x[i] >= bound) bound = x[i] + 1;
    }
    if (first_negative) *first_negative = negative;
    return bound;
}

void moe_cpu_bincount(int64_t *counts, const int64_t *x, int64_t n, int64_t C)
{
    memset(counts, 0, sizeof *counts * (size_t)C);
    for (int64_t i = 0; i < n; i++) counts[x[i]]++;
}

void moe_cpu_bincount_weighted(double *sums, const int64_t *x, const double *w, int64_t n,
                               int64_t C)
{
    for (int64_t c = 0; c < C; c++) sums[c] = 0;
    for (int64_t i = 0; i < n; i++) sums[x[i]] += w[i];
}

void moe_cpu_histogram(int64_t *counts, const double *x, int64_t n, int64_t C, double lo,
                       double hi)
{
    memset(counts, 0, sizeof *counts * (size_t)C);
    double width = hi - lo;
    for (int64_t i = 0; i < n; i++) {
        double v = x[i];
        if (!(v >= lo && v <= hi)) continue; /* outside, or NaN */
        int64_t b = (int64_t)((v - lo) * (double)C / width);
        if (b >= C) b = C - 1; /* v == hi */
        if (b < 0) b = 0;
        /* bin b is [edge(b), edge(b+1)) with edge(b) = lo + width * b / C:
         * undo rounding of the quotient near an edge */
        if (b > 0 && v < lo + width * (double)b / (double)C)
            b--;
        else if (b < C - 1 && v >= lo + width * (double)(b + 1) / (double)C)
            b++;
        counts[b]++;
    }
}

void moe_cpu_histogram_range(const double *x, int64_t n, double *lo, double *hi)
{
    double mn = INFINITY, mx = -INFINITY; /* comparisons with NaN are false: skipped */
    for (int64_t i = 0; i < n; i++) {
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
    }
    if (mn > mx) mn = mx = 0; /* no numbers at all */
    *lo = mn;
    *hi = mx;
}

/* ---- one entry per op, dtype as an argument (as the CUDA kernels) ---------------- */

void moe_cpu_scatter_add(moe_dtype dt, void *out, const int64_t *out_strides, const void *src,
                         const int64_t *src_strides, const int64_t *idx, int nd, const int64_t *shape, int dim)
{
    if (dt == MOE_F32) scatter_add_f32(out, out_strides, src, src_strides, idx, nd, shape, dim);
    else scatter_add_f64(out, out_strides, src, src_strides, idx, nd, shape, dim);
}

bool moe_cpu_index_add(moe_dtype dt, void *out, const void *src, const int64_t *idx, int64_t P, int64_t N,
                       int64_t M, int64_t Q)
{
    return dt == MOE_F32 ? index_add_f32(out, src, idx, P, N, M, Q) : index_add_f64(out, src, idx, P, N, M, Q);
}

bool moe_cpu_topk(moe_dtype dt, void *vals, int64_t *idx, const void *x, int64_t R, int64_t E, int64_t K,
                  bool largest)
{
    return dt == MOE_F32 ? topk_f32(vals, idx, x, R, E, K, largest) : topk_f64(vals, idx, x, R, E, K, largest);
}

bool moe_cpu_sort(moe_dtype dt, void *vals, int64_t *idx, const void *x, int64_t R, int64_t E, bool descending)
{
    return dt == MOE_F32 ? sort_f32(vals, idx, x, R, E, descending) : sort_f64(vals, idx, x, R, E, descending);
}
