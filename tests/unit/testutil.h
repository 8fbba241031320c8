/* testutil.h — shared helpers for the Check suites: literal tensors, close
 * comparisons with max-diff reports, and a finite-difference gradient check.
 * Header-only so each check_<module>.c stays one file. */
#ifndef MOELAB_TESTUTIL_H
#define MOELAB_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "moelab.h"

/* Fail the test with the library's message when a call fails. */
#define OK(expr)                                                                  \
    do {                                                                          \
        moe_status ok_s_ = (expr);                                                \
        ck_assert_msg(ok_s_ == MOE_OK, "%s failed: %s", #expr, moe_last_error()); \
    } while (0)

/* Expect a failure with status CODE and a message containing NEEDLE. */
#define FAILS(expr, code, needle)                                                        \
    do {                                                                                 \
        moe_status f_s_ = (expr);                                                        \
        ck_assert_msg(f_s_ == (code), "%s: expected status %s, got %s (%s)", #expr,     \
                      moe_status_name(code), moe_status_name(f_s_), moe_last_error());   \
        ck_assert_msg(strstr(moe_last_error(), (needle)) != NULL,                        \
                      "%s: message '%s' lacks '%s'", #expr, moe_last_error(), (needle)); \
    } while (0)

/* A tensor from a literal list of doubles:  T(MOE_F64, 2, ((int64_t[]){2,3}), 1,2,3,4,5,6) */
static inline moe_tensor *tu_tensor(moe_dtype dtype, int ndim, const int64_t *shape, int n,
                                    const double *vals)
{
    moe_tensor *t;
    OK(moe_tensor_empty(&t, dtype, MOE_CPU, ndim, shape));
    ck_assert_int_eq(moe_tensor_numel(t), n);
    for (int i = 0; i < n; i++) moe_dtype_store(dtype, (char *)moe_tensor_data(t) + (size_t)i * moe_dtype_size(dtype), vals[i]);
    return t;
}
#define T(dtype, ndim, shape, ...)                                                  \
    tu_tensor((dtype), (ndim), (shape), (int)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)), \
              (double[]){__VA_ARGS__})
#define SHAPE(...) ((int64_t[]){__VA_ARGS__})

/* Seeded normal tensor in [..] shape (f64 unless stated). */
static inline moe_tensor *tu_randn(moe_dtype dtype, int ndim, const int64_t *shape, uint64_t seed)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *t;
    OK(moe_tensor_randn(&t, &rng, dtype, MOE_CPU, ndim, shape));
    return t;
}

/* Assert every element of T is within ATOL + RTOL*|e| of the expected
 * doubles; reports the worst element. */
static inline void tu_assert_values(const moe_tensor *t, int n, const double *expect, double atol,
                                    double rtol, const char *what)
{
    ck_assert_msg(moe_tensor_numel(t) == n, "%s: %lld elements, expected %d", what,
                  (long long)moe_tensor_numel(t), n);
    double *got = malloc(sizeof(double) * (size_t)(n ? n : 1));
    OK(moe_tensor_to_doubles(t, got));
    int worst = -1;
    double worst_excess = 0;
    for (int i = 0; i < n; i++) {
        double err = fabs(got[i] - expect[i]);
        bool same_special = (isnan(got[i]) && isnan(expect[i])) || (got[i] == expect[i]);
        double excess = same_special ? 0 : (isnan(err) ? INFINITY : err - (atol + rtol * fabs(expect[i])));
        if (excess > worst_excess) {
            worst_excess = excess;
            worst = i;
        }
    }
    if (worst >= 0) {
        double g = got[worst], e = expect[worst];
        free(got);
        ck_abort_msg("%s: element %d is %.17g, expected %.17g (|diff| %.3g)", what, worst, g, e, fabs(g - e));
    }
    free(got);
}
#define ASSERT_VALUES(t, atol, ...)                                                  \
    tu_assert_values((t), (int)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)),  \
                     (double[]){__VA_ARGS__}, (atol), 0.0, #t)

/* Assert two tensors of the same shape are close. */
static inline void tu_assert_close(const moe_tensor *a, const moe_tensor *b, double atol, double rtol,
                                   const char *what)
{
    ck_assert_msg(moe_tensor_same_shape(a, b), "%s: shapes %s and %s differ", what, moe_shape_str(a),
                  moe_shape_str(b));
    int64_t n = moe_tensor_numel(b);
    double *e = malloc(sizeof(double) * (size_t)(n ? n : 1));
    OK(moe_tensor_to_doubles(b, e));
    tu_assert_values(a, (int)n, e, atol, rtol, what);
    free(e);
}
#define ASSERT_CLOSE(a, b, atol) tu_assert_close((a), (b), (atol), 1e-12, #a " vs " #b)

static inline void tu_assert_shape(const moe_tensor *t, int ndim, const int64_t *shape, const char *what)
{
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    ck_assert_msg(same, "%s: shape %s, expected %s", what, moe_shape_str(t), moe_dims_str(ndim, shape));
}
#define ASSERT_SHAPE(t, ndim, ...) tu_assert_shape((t), (ndim), SHAPE(__VA_ARGS__), #t)

/* ---- finite-difference gradient check ---------------------------------------
 * FN maps N_IN f64 inputs to one output. For a fixed random output weighting W,
 * the analytic gradient (backward with grad W) must match central
 * differences of <fn(x), W> for every element of every input that requires
 * grad. Inputs must be f64 leaves; pass requires_grad on the ones to check. */
typedef moe_status (*tu_fn)(moe_tensor **out, moe_tensor **in, void *ctx);

static inline double tu_dot(moe_tensor *a, const double *w)
{
    int64_t n = moe_tensor_numel(a);
    double *v = malloc(sizeof(double) * (size_t)(n ? n : 1)), s = 0;
    OK(moe_tensor_to_doubles(a, v));
    for (int64_t i = 0; i < n; i++) s += v[i] * w[i];
    free(v);
    return s;
}

static inline void tu_gradcheck(tu_fn fn, int n_in, moe_tensor **in, void *ctx, double eps,
                                double tol, const char *what)
{
    moe_tensor *out;
    for (int i = 0; i < n_in; i++) moe_tensor_zero_grad(in[i]);
    OK(fn(&out, in, ctx));
    ck_assert_msg(out->requires_grad, "%s: output does not require grad", what);
    moe_tensor *w = tu_randn(out->dtype, out->ndim, out->shape, 1234);
    int64_t nout = moe_tensor_numel(out);
    double *wv = malloc(sizeof(double) * (size_t)(nout ? nout : 1));
    OK(moe_tensor_to_doubles(w, wv));
    OK(moe_backward(out, w, false));
    moe_tensor_release(out);
    bool prev = moe_grad_set_enabled(false);
    for (int i = 0; i < n_in; i++) {
        if (!in[i]->requires_grad) continue;
        ck_assert_msg(in[i]->dtype == MOE_F64 && moe_tensor_is_contiguous(in[i]),
                      "%s: gradcheck inputs must be contiguous f64", what);
        ck_assert_msg(in[i]->grad != NULL, "%s: input %d got no gradient", what, i);
        int64_t n = moe_tensor_numel(in[i]);
        double *x = moe_tensor_data(in[i]);
        double *g = malloc(sizeof(double) * (size_t)(n ? n : 1));
        OK(moe_tensor_to_doubles(in[i]->grad, g));
        for (int64_t j = 0; j < n; j++) {
            double x0 = x[j], fp, fm;
            x[j] = x0 + eps;
            OK(fn(&out, in, ctx));
            fp = tu_dot(out, wv);
            moe_tensor_release(out);
            x[j] = x0 - eps;
            OK(fn(&out, in, ctx));
            fm = tu_dot(out, wv);
            moe_tensor_release(out);
            x[j] = x0;
            double num = (fp - fm) / (2 * eps);
            ck_assert_msg(fabs(num - g[j]) <= tol * (1 + fabs(num)),
                          "%s: d/d input %d [%lld]: analytic %.12g, numeric %.12g", what, i,
                          (long long)j, g[j], num);
        }
        free(g);
    }
    moe_grad_set_enabled(prev);
    free(wv);
    moe_tensor_release(w);
}
#define GRADCHECK(fn, n_in, in, ctx) tu_gradcheck((fn), (n_in), (in), (ctx), 1e-6, 1e-6, #fn)

/* Run a suite and return the exit status Check's runner implies. */
static inline int tu_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* Release a list of tensors (NULL-terminated). */
static inline void tu_release_all(moe_tensor *first, ...)
{
    va_list ap;
    va_start(ap, first);
    for (moe_tensor *t = first; t; t = va_arg(ap, moe_tensor *)) moe_tensor_release(t);
    va_end(ap);
}
#define RELEASE(...) tu_release_all(__VA_ARGS__, NULL)

#endif
