/* elementwise.c — CPU loops for the elementwise ops.
 *
 * Dimension letters: N output elements, R rows (all dims but the last,
 * flattened; `nrow` in code), C the innermost dim (a row; `ncol`), J inputs.
 * (<tgmath.h> pulls in <complex.h>, whose I macro rules out the letter I.)
 *
 * Two paths:
 *  - flat: every operand contiguous over [N] → one OpenMP loop over raw
 *    pointers (vectorisable: no index arithmetic beyond i);
 *  - strided: the output is walked as R rows of I; each input is read with
 *    its own strides (0 on broadcast dims), offsets advanced once per row.
 * Both write each output element exactly once, so results do not depend on
 * the thread count. The f32 and f64 kernels come from one template (the
 * DEFINE_* macros below); <tgmath.h> picks expf/exp etc. by type. */
#include "elementwise.h"

#include "../gelu.h"

#include <tgmath.h>

#define PAR_MIN 32768  /* below this many elements, stay on one thread */
#define COL_BLOCK 16384 /* split long rows into blocks of this many elements */
#define TASK_MIN 4096   /* aim for at least this many elements per task */
#define TILE 64         /* tile side when an input is read with a row stride */

/* A row of I elements: OUT contiguous, input j at IN[j] with stride ST[j]. */
typedef void (*row_fn)(const void *ctx, int64_t n, char *out, const char *const *in,
                       const int64_t *st);

/* Walk the output [R C] in tasks of whole rows (short rows) or row blocks
 * (long rows), computing each task's starting offsets once and stepping a
 * multi-index per row. When an input walks its rows with a stride (a
 * transposed operand), tasks are square TILE x TILE tiles instead, so the
 * cache lines such an input touches in one row are reused by the next rows.
 * OSZ / ISZ: element sizes in bytes. */
static void iter_run(const moe_iter *it, size_t osz, const size_t *isz, char *out,
                     const char *const *in, row_fn fn, const void *ctx)
{
    int64_t N = it->numel;
    if (N == 0) return;
    int nd = it->ndim, nj = it->n_in;
    int64_t ncol = it->shape[nd - 1], nrow = N / ncol;
    int64_t st[MOE_ITER_MAX_IN];
    bool strided = false;
    for (int j = 0; j < nj; j++) {
        st[j] = it->strides[j][nd - 1];
        strided |= st[j] != 0 && st[j] != 1;
    }
    int64_t cb, rb; /* columns and rows per task */
    if (strided && nrow > 1) {
        cb = ncol < TILE ? ncol : TILE;
        rb = TILE;
    } else {
        cb = ncol > COL_BLOCK ? COL_BLOCK : ncol;
        rb = cb >= TASK_MIN ? 1 : TASK_MIN / cb;
    }
    int64_t ncb = (ncol + cb - 1) / cb; /* column blocks per row */
    int64_t nrb = (nrow + rb - 1) / rb;
    int64_t ntask = nrb * ncb;
#pragma omp parallel for if (N > PAR_MIN && ntask > 1) schedule(static)
    for (int64_t t = 0; t < ntask; t++) {
        int64_t r0 = (t / ncb) * rb, r1 = r0 + rb < nrow ? r0 + rb : nrow;
        int64_t c0 = (t % ncb) * cb, cn = ncol - c0 < cb ? ncol - c0 : cb;
        int64_t idx[MOE_MAX_DIMS], off[MOE_ITER_MAX_IN] = {0};
        int64_t rem = r0;
        for (int k = nd - 2; k >= 0; k--) {
            idx[k] = rem % it->shape[k];
            rem /= it->shape[k];
            for (int j = 0; j < nj; j++) off[j] += idx[k] * it->strides[j][k];
        }
        for (int64_t r = r0; r < r1; r++) {
            const char *ip[MOE_ITER_MAX_IN];
            for (int j = 0; j < nj; j++) ip[j] = in[j] + (off[j] + c0 * st[j]) * (int64_t)isz[j];
            fn(ctx, cn, out + (r * ncol + c0) * (int64_t)osz, ip, st);
            for (int k = nd - 2; k >= 0; k--) { /* next row */
                for (int j = 0; j < nj; j++) off[j] += it->strides[j][k];
                if (++idx[k] < it->shape[k]) break;
                for (int j = 0; j < nj; j++) off[j] -= it->strides[j][k] * it->shape[k];
                idx[k] = 0;
            }
        }
    }
}

/* ---- binary ----------------------------------------------------------------- */

/* One row of O[i] = EXPR(x, y), x = a[i*sa], y = b[i*sb], with the common
 * stride patterns spelled out so the compiler vectorises them. */
#define BIN_ROW(T, EXPR)                                                            \
    do {                                                                            \
        if (sa == 1 && sb == 1) {                                                   \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) {                                       \
                T x = a[i], y = b[i];                                               \
                o[i] = (EXPR);                                                      \
            }                                                                       \
        } else if (sa == 1 && sb == 0) {                                            \
            T y = b[0];                                                             \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) {                                       \
                T x = a[i];                                                         \
                o[i] = (EXPR);                                                      \
            }                                                                       \
        } else if (sa == 0 && sb == 1) {                                            \
            T x = a[0];                                                             \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) {                                       \
                T y = b[i];                                                         \
                o[i] = (EXPR);                                                      \
            }                                                                       \
        } else {                                                                    \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) {                                       \
                T x = a[i * sa], y = b[i * sb];                                     \
                o[i] = (EXPR);                                                      \
            }                                                                       \
        }                                                                           \
    } while (0)

/* The whole contiguous output in one parallel loop. */
#define BIN_FLAT(T, EXPR)                                                           \
    do {                                                                            \
        _Pragma("omp parallel for simd if (n > PAR_MIN) schedule(static)")          \
        for (int64_t i = 0; i < n; i++) {                                           \
            T x = a[i], y = b[i];                                                   \
            o[i] = (EXPR);                                                          \
        }                                                                           \
    } while (0)

#define BIN_SWITCH(MAC, T)                                                          \
    switch (op) {                                                                   \
    case MOE_BIN_ADD: MAC(T, x + y); break;                                         \
    case MOE_BIN_SUB: MAC(T, x - y); break;                                         \
    case MOE_BIN_MUL: MAC(T, x * y); break;                                         \
    case MOE_BIN_DIV: MAC(T, x / y); break;                                         \
    case MOE_BIN_POW: MAC(T, pow(x, y)); break;                                     \
    default: break;                                                                 \
    }

#define DEFINE_BINARY(T, SFX)                                                       \
    static void binary_row_##SFX(const void *ctx, int64_t n, char *out,             \
                                 const char *const *in, const int64_t *st)          \
    {                                                                               \
        moe_binop op = *(const moe_binop *)ctx;                             \
        T *restrict o = (T *)out;                                                   \
        const T *restrict a = (const T *)in[0];                                     \
        const T *restrict b = (const T *)in[1];                                     \
        int64_t sa = st[0], sb = st[1];                                             \
        BIN_SWITCH(BIN_ROW, T)                                                      \
    }                                                                               \
    static void binary_flat_##SFX(moe_binop op, T *restrict o,                  \
                                  const T *restrict a, const T *restrict b,         \
                                  int64_t n)                                        \
    {                                                                               \
        BIN_SWITCH(BIN_FLAT, T)                                                     \
    }                                                                               \
    static void binary_##SFX(moe_binop op, T *out, const T *a, const T *b,     \
                             const moe_iter *it)                               \
    {                                                                               \
        if (moe_iter_is_flat(it)) {                                             \
            binary_flat_##SFX(op, out, a, b, it->numel);                            \
            return;                                                                 \
        }                                                                           \
        const size_t isz[2] = {sizeof(T), sizeof(T)};                               \
        const char *in[2] = {(const char *)a, (const char *)b};                     \
        iter_run(it, sizeof(T), isz, (char *)out, in, binary_row_##SFX, &op);       \
    }

DEFINE_BINARY(float, f32)
DEFINE_BINARY(double, f64)

/* ---- unary ------------------------------------------------------------------ */

#define GELU_C MOE_GELU_TANH_C
#define GELU_K MOE_GELU_TANH_K
#define INV_SQRT_2PI MOE_GELU_INV_SQRT_2PI

#define UN_ROW(T, EXPR)                                                             \
    do {                                                                            \
        if (sa == 1) {                                                              \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) {                                       \
                T x = a[i];                                                         \
                o[i] = (EXPR);                                                      \
            }                                                                       \
        } else {                                                                    \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) {                                       \
                T x = a[i * sa];                                                    \
                o[i] = (EXPR);                                                      \
            }                                                                       \
        }                                                                           \
    } while (0)

#define UN_FLAT(T, EXPR)                                                            \
    do {                                                                            \
        _Pragma("omp parallel for simd if (n > PAR_MIN) schedule(static)")          \
        for (int64_t i = 0; i < n; i++) {                                           \
            T x = a[i];                                                             \
            o[i] = (EXPR);                                                          \
        }                                                                           \
    } while (0)

/* s, lo, hi: the parameters converted to T. */
#define UN_SWITCH(MAC, T)                                                           \
    switch (op) {                                                                   \
    case MOE_UN_NEG: MAC(T, -x); break;                                            \
    case MOE_UN_EXP: MAC(T, exp(x)); break;                                        \
    case MOE_UN_LOG: MAC(T, log(x)); break;                                        \
    case MOE_UN_SQRT: MAC(T, sqrt(x)); break;                                      \
    case MOE_UN_RSQRT: MAC(T, (T)1 / sqrt(x)); break;                              \
    case MOE_UN_ABS: MAC(T, fabs(x)); break;                                       \
    case MOE_UN_TANH: MAC(T, tanh(x)); break;                                      \
    case MOE_UN_SIGMOID: MAC(T, (T)1 / ((T)1 + exp(-x))); break;                   \
    case MOE_UN_SILU: MAC(T, x / ((T)1 + exp(-x))); break;                         \
    case MOE_UN_RELU: MAC(T, x < 0 ? (T)0 : x); break;                             \
    case MOE_UN_GELU_ERF: MAC(T, x * (T)0.5 * ((T)1 + erf(x * (T)M_SQRT1_2))); break; \
    case MOE_UN_GELU_TANH:                                                         \
        MAC(T, (T)0.5 * x * ((T)1 + tanh((T)GELU_C * (x + (T)GELU_K * x * x * x)))); \
        break;                                                                      \
    case MOE_UN_CLAMP: MAC(T, x < lo ? lo : (x > hi ? hi : x)); break;             \
    case MOE_UN_ADD_S: MAC(T, x + s); break;                                       \
    case MOE_UN_MUL_S: MAC(T, x * s); break;                                       \
    case MOE_UN_RSUB_S: MAC(T, s - x); break;                                      \
    case MOE_UN_RDIV_S: MAC(T, s / x); break;                                      \
    case MOE_UN_POW_S:                                                             \
        if (p[0] == 2.0) MAC(T, x * x);                                             \
        else if (p[0] == 1.0) MAC(T, x);                                            \
        else MAC(T, pow(x, s));                                                     \
        break;                                                                      \
    default: break;                                                                 \
    }

typedef struct unary_ctx {
    moe_unop op;
    const double *p;
} unary_ctx;

#define DEFINE_UNARY(T, SFX)                                                        \
    static void unary_row_##SFX(const void *ctx, int64_t n, char *out,              \
                                const char *const *in, const int64_t *st)           \
    {                                                                               \
        const unary_ctx *c = ctx;                                                   \
        moe_unop op = c->op;                                                    \
        const double *p = c->p;                                                     \
        T s = (T)p[0], lo = (T)p[0], hi = (T)p[1];                                  \
        T *restrict o = (T *)out;                                                   \
        const T *restrict a = (const T *)in[0];                                     \
        int64_t sa = st[0];                                                         \
        UN_SWITCH(UN_ROW, T)                                                        \
    }                                                                               \
    static void unary_flat_##SFX(moe_unop op, const double *p, T *restrict o,   \
                                 const T *restrict a, int64_t n)                    \
    {                                                                               \
        T s = (T)p[0], lo = (T)p[0], hi = (T)p[1];                                  \
        UN_SWITCH(UN_FLAT, T)                                                       \
    }                                                                               \
    static void unary_##SFX(moe_unop op, const double *p, T *out, const T *a,  \
                            const moe_iter *it)                                \
    {                                                                               \
        double none[2] = {0, 0};                                                    \
        if (!p) p = none;                                                           \
        if (moe_iter_is_flat(it)) {                                             \
            unary_flat_##SFX(op, p, out, a, it->numel);                             \
            return;                                                                 \
        }                                                                           \
        const size_t isz[1] = {sizeof(T)};                                          \
        const char *in[1] = {(const char *)a};                                      \
        unary_ctx c = {op, p};                                                      \
        iter_run(it, sizeof(T), isz, (char *)out, in, unary_row_##SFX, &c);         \
    }

DEFINE_UNARY(float, f32)
DEFINE_UNARY(double, f64)

/* ---- unary backward ------------------------------------------------------------ */

#define GRAD_LOOP(T, EXPR)                                                          \
    do {                                                                            \
        _Pragma("omp parallel for simd if (n > PAR_MIN) schedule(static)")          \
        for (int64_t i = 0; i < n; i++) {                                           \
            T gi = g[i];                                                            \
            T x = x_[i], y = y_[i];                                                 \
            (void)x;                                                                \
            (void)gi;                                                               \
            (void)y;                                                                \
            gin[i] = (EXPR);                                                        \
        }                                                                           \
    } while (0)

#define DEFINE_UNARY_GRAD(T, SFX)                                                   \
    static inline T gelu_erf_grad_##SFX(T x)                                        \
    {                                                                               \
        return (T)0.5 * ((T)1 + erf(x * (T)M_SQRT1_2)) +                            \
               x * exp((T)-0.5 * x * x) * (T)INV_SQRT_2PI;                          \
    }                                                                               \
    static inline T gelu_tanh_grad_##SFX(T x)                                       \
    {                                                                               \
        T t = tanh((T)GELU_C * (x + (T)GELU_K * x * x * x));                        \
        return (T)0.5 * ((T)1 + t) +                                                \
               (T)0.5 * x * ((T)1 - t * t) * (T)GELU_C * ((T)1 + (T)(3 * GELU_K) * x * x); \
    }                                                                               \
    static inline T silu_grad_##SFX(T x)                                            \
    {                                                                               \
        T sg = (T)1 / ((T)1 + exp(-x));                                             \
        return sg * ((T)1 + x * ((T)1 - sg));                                       \
    }                                                                               \
    static void unary_grad_##SFX(moe_unop op, const double *p, T *gin,         \
                                 const T *g, const T *x_, const T *y_, int64_t n)  \
    {                                                                               \
        double none[2] = {0, 0};                                                    \
        if (!p) p = none;                                                           \
        if (!x_) x_ = g; /* unread by this op: any valid buffer */                   \
        if (!y_) y_ = g;                                                            \
        T s = (T)p[0], lo = (T)p[0], hi = (T)p[1];                                  \
        switch (op) {                                                               \
        case MOE_UN_NEG: GRAD_LOOP(T, -gi); break;                                 \
        case MOE_UN_EXP: GRAD_LOOP(T, gi * y); break;                              \
        case MOE_UN_LOG: GRAD_LOOP(T, gi / x); break;                              \
        case MOE_UN_SQRT: GRAD_LOOP(T, gi / ((T)2 * y)); break;                    \
        case MOE_UN_RSQRT: GRAD_LOOP(T, (T)-0.5 * gi * y * y * y); break;          \
        case MOE_UN_ABS: GRAD_LOOP(T, x > 0 ? gi : (x < 0 ? -gi : (T)0)); break;   \
        case MOE_UN_TANH: GRAD_LOOP(T, gi * ((T)1 - y * y)); break;                \
        case MOE_UN_SIGMOID: GRAD_LOOP(T, gi * y * ((T)1 - y)); break;             \
        case MOE_UN_SILU: GRAD_LOOP(T, gi * silu_grad_##SFX(x)); break;            \
        case MOE_UN_RELU: GRAD_LOOP(T, x > 0 ? gi : (T)0); break;                  \
        case MOE_UN_GELU_ERF: GRAD_LOOP(T, gi * gelu_erf_grad_##SFX(x)); break;    \
        case MOE_UN_GELU_TANH: GRAD_LOOP(T, gi * gelu_tanh_grad_##SFX(x)); break;  \
        case MOE_UN_CLAMP: GRAD_LOOP(T, (x >= lo && x <= hi) ? gi : (T)0); break;  \
        case MOE_UN_ADD_S: GRAD_LOOP(T, gi); break;                                \
        case MOE_UN_MUL_S: GRAD_LOOP(T, gi * s); break;                            \
        case MOE_UN_RSUB_S: GRAD_LOOP(T, -gi); break;                              \
        case MOE_UN_RDIV_S: GRAD_LOOP(T, -gi * s / (x * x)); break;                \
        case MOE_UN_POW_S:                                                         \
            if (p[0] == 0.0) GRAD_LOOP(T, (T)0);                                    \
            else if (p[0] == 1.0) GRAD_LOOP(T, gi);                                 \
            else if (p[0] == 2.0) GRAD_LOOP(T, (T)2 * gi * x);                      \
            else GRAD_LOOP(T, gi * s * pow(x, s - (T)1));                           \
            break;                                                                  \
        default: break;                                                             \
        }                                                                           \
    }

DEFINE_UNARY_GRAD(float, f32)
DEFINE_UNARY_GRAD(double, f64)

/* ---- where / masked_fill / compare ----------------------------------------------- */

#define DEFINE_SELECT(T, SFX)                                                       \
    static void where_row_##SFX(const void *ctx, int64_t n, char *out,              \
                                const char *const *in, const int64_t *st)           \
    {                                                                               \
        T *restrict o = (T *)out;                                                   \
        const uint8_t *restrict c = (const uint8_t *)in[0];                         \
        const T *restrict a = (const T *)in[1];                                     \
        const T *restrict b = (const T *)in[2];                                     \
        int64_t sc = st[0], sa = st[1], sb = st[2];                                 \
        if (sc == 1 && sa == 1 && sb == 1) {                                        \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) o[i] = c[i] ? a[i] : b[i];              \
        } else {                                                                    \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) o[i] = c[i * sc] ? a[i * sa] : b[i * sb]; \
        }                                                                           \
    }                                                                               \
    static void where_##SFX(T *out, const uint8_t *cond, const T *a, const T *b,   \
                            const moe_iter *it)                                \
    {                                                                               \
        const size_t isz[3] = {1, sizeof(T), sizeof(T)};                            \
        const char *in[3] = {(const char *)cond, (const char *)a, (const char *)b}; \
        iter_run(it, sizeof(T), isz, (char *)out, in, where_row_##SFX, NULL);       \
    }                                                                               \
    static void masked_row_##SFX(const void *ctx, int64_t n, char *out,             \
                                 const char *const *in, const int64_t *st)          \
    {                                                                               \
        T v = (T)(*(const double *)ctx);                                            \
        T *restrict o = (T *)out;                                                   \
        const T *restrict a = (const T *)in[0];                                     \
        const uint8_t *restrict m = (const uint8_t *)in[1];                         \
        int64_t sa = st[0], sm = st[1];                                             \
        if (sa == 1 && sm == 1) {                                                   \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) o[i] = m[i] ? v : a[i];                 \
        } else {                                                                    \
            _Pragma("omp simd")                                                     \
            for (int64_t i = 0; i < n; i++) o[i] = m[i * sm] ? v : a[i * sa];       \
        }                                                                           \
    }                                                                               \
    static void masked_fill_##SFX(T *out, const T *a, const uint8_t *mask,         \
                                  double value, const moe_iter *it)            \
    {                                                                               \
        const size_t isz[2] = {sizeof(T), 1};                                       \
        const char *in[2] = {(const char *)a, (const char *)mask};                  \
        iter_run(it, sizeof(T), isz, (char *)out, in, masked_row_##SFX, &value);    \
    }

DEFINE_SELECT(float, f32)
DEFINE_SELECT(double, f64)

#define CMP_ROW(T, EXPR)                                                            \
    do {                                                                            \
        _Pragma("omp simd")                                                         \
        for (int64_t i = 0; i < n; i++) {                                           \
            T x = a[i * sa], y = b[i * sb];                                         \
            o[i] = (uint8_t)(EXPR);                                                 \
        }                                                                           \
    } while (0)

#define DEFINE_COMPARE(T, SFX)                                                      \
    static void compare_row_##SFX(const void *ctx, int64_t n, char *out,            \
                                  const char *const *in, const int64_t *st)         \
    {                                                                               \
        moe_cmp cmp = *(const moe_cmp *)ctx;                                \
        uint8_t *restrict o = (uint8_t *)out;                                       \
        const T *restrict a = (const T *)in[0];                                     \
        const T *restrict b = (const T *)in[1];                                     \
        int64_t sa = st[0], sb = st[1];                                             \
        switch (cmp) {                                                              \
        case MOE_CMP_EQ: CMP_ROW(T, x == y); break;                                 \
        case MOE_CMP_NE: CMP_ROW(T, x != y); break;                                 \
        case MOE_CMP_LT: CMP_ROW(T, x < y); break;                                  \
        case MOE_CMP_LE: CMP_ROW(T, x <= y); break;                                 \
        case MOE_CMP_GT: CMP_ROW(T, x > y); break;                                  \
        case MOE_CMP_GE: CMP_ROW(T, x >= y); break;                                 \
        default: break;                                                             \
        }                                                                           \
    }                                                                               \
    static void compare_##SFX(moe_cmp cmp, uint8_t *out, const T *a,           \
                              const T *b, const moe_iter *it)                  \
    {                                                                               \
        const size_t isz[2] = {sizeof(T), sizeof(T)};                               \
        const char *in[2] = {(const char *)a, (const char *)b};                     \
        iter_run(it, 1, isz, (char *)out, in, compare_row_##SFX, &cmp);             \
    }

DEFINE_COMPARE(float, f32)
DEFINE_COMPARE(double, f64)

/* ---- dropout / non-finite counts ------------------------------------------------ */

#define DEFINE_MISC(T, SFX)                                                         \
    static void dropout_##SFX(T *out, const T *a, int64_t n, uint64_t seed,        \
                              uint64_t base, double p, double scale)               \
    {                                                                               \
        T sc = (T)scale;                                                            \
        _Pragma("omp parallel for if (n > PAR_MIN / 8) schedule(static)")           \
        for (int64_t i = 0; i < n; i++)                                             \
            out[i] = moe_rng_uniform(seed, base + (uint64_t)i) >= p ? a[i] * sc : (T)0; \
    }                                                                               \
    static void count_nonfinite_##SFX(const T *a, int64_t n, int64_t *nan_count,   \
                                      int64_t *inf_count)                          \
    {                                                                               \
        int64_t nn = 0, ni = 0;                                                     \
        _Pragma("omp parallel for simd if (n > PAR_MIN) schedule(static) reduction(+ : nn, ni)") \
        for (int64_t i = 0; i < n; i++) {                                           \
            T v = a[i];                                                             \
            nn += v != v;                                                           \
            ni += fabs(v) == (T)INFINITY;                                           \
        }                                                                           \
        *nan_count = nn;                                                            \
        *inf_count = ni;                                                            \
    }

DEFINE_MISC(float, f32)
DEFINE_MISC(double, f64)

/* ---- one entry per op, dtype as an argument (as the CUDA kernels) ---------------- */

void moe_cpu_binary(moe_binop op, moe_dtype dt, void *out, const void *a, const void *b, const moe_iter *it)
{
    if (dt == MOE_F32) binary_f32(op, out, a, b, it);
    else binary_f64(op, out, a, b, it);
}

#define DEFINE_ADD_INTO(T, SFX)                                                     \
    static void add_into_##SFX(T *restrict acc, const T *restrict g, int64_t n)     \
    {                                                                               \
        _Pragma("omp parallel for simd if (n > PAR_MIN) schedule(static)")          \
        for (int64_t i = 0; i < n; i++) acc[i] += g[i];                             \
    }
DEFINE_ADD_INTO(float, f32)
DEFINE_ADD_INTO(double, f64)

void moe_cpu_add_into(moe_dtype dt, void *acc, const void *g, int64_t n)
{
    if (dt == MOE_F32) add_into_f32(acc, g, n);
    else add_into_f64(acc, g, n);
}

void moe_cpu_unary(moe_unop op, const double *p, moe_dtype dt, void *out, const void *a, const moe_iter *it)
{
    if (dt == MOE_F32) unary_f32(op, p, out, a, it);
    else unary_f64(op, p, out, a, it);
}

void moe_cpu_unary_grad(moe_unop op, const double *p, moe_dtype dt, void *gin, const void *g, const void *x,
                        const void *y, int64_t n)
{
    if (dt == MOE_F32) unary_grad_f32(op, p, gin, g, x, y, n);
    else unary_grad_f64(op, p, gin, g, x, y, n);
}

void moe_cpu_where(moe_dtype dt, void *out, const uint8_t *cond, const void *a, const void *b,
                   const moe_iter *it)
{
    if (dt == MOE_F32) where_f32(out, cond, a, b, it);
    else where_f64(out, cond, a, b, it);
}

void moe_cpu_masked_fill(moe_dtype dt, void *out, const void *a, const uint8_t *mask, double value,
                         const moe_iter *it)
{
    if (dt == MOE_F32) masked_fill_f32(out, a, mask, value, it);
    else masked_fill_f64(out, a, mask, value, it);
}

void moe_cpu_compare(moe_cmp cmp, moe_dtype dt, uint8_t *out, const void *a, const void *b, const moe_iter *it)
{
    if (dt == MOE_F32) compare_f32(cmp, out, a, b, it);
    else compare_f64(cmp, out, a, b, it);
}

void moe_cpu_dropout(moe_dtype dt, void *out, const void *a, int64_t n, uint64_t seed, uint64_t base, double p,
                     double scale)
{
    if (dt == MOE_F32) dropout_f32(out, a, n, seed, base, p, scale);
    else dropout_f64(out, a, n, seed, base, p, scale);
}

void moe_cpu_count_nonfinite(moe_dtype dt, const void *a, int64_t n, int64_t *nan_count, int64_t *inf_count)
{
    if (dt == MOE_F32) count_nonfinite_f32(a, n, nan_count, inf_count);
    else count_nonfinite_f64(a, n, nan_count, inf_count);
}
