/* disttest.h — helpers for multi-rank tests. Rank functions run on threads
 * (or MPI processes) where Check's assertions must not be used: they return an
 * error instead, which moe_threads_run reports with the rank and message, and
 * the test's main thread asserts on that. */
#ifndef MOELAB_DISTTEST_H
#define MOELAB_DISTTEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moelab.h"
#include "dist/comm.h"
#include "dist/mesh.h"

/* Fail the rank with a message when COND is false. */
#define RCHECK(cond, ...)                                                             \
    do {                                                                              \
        if (!(cond)) return moe_fail(MOE_ERR_VALUE, "check", __VA_ARGS__);            \
    } while (0)

/* Re-raise the last error of this thread with a prefix (the message is
 * copied first: moe_fail writes the buffer moe_last_error reads). */
static inline moe_status dt_rethrow(moe_status st, const char *prefix)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", moe_last_error());
    return moe_fail(st, "check", "%s: %s", prefix, msg);
}

/* Propagate a failing call, naming it. */
#define RTRY(expr)                                                                    \
    do {                                                                              \
        moe_status rt_s_ = (expr);                                                    \
        if (rt_s_ != MOE_OK) return dt_rethrow(rt_s_, #expr);                         \
    } while (0)

/* Expect EXPR to fail with CODE and a message containing NEEDLE. */
#define RFAILS(expr, code, needle)                                                    \
    do {                                                                              \
        moe_status rf_s_ = (expr);                                                    \
        RCHECK(rf_s_ == (code), "%s: expected %s, got %s (%s)", #expr,               \
               moe_status_name(code), moe_status_name(rf_s_), moe_last_error());      \
        RCHECK(strstr(moe_last_error(), (needle)) != NULL, "%s: message '%s' lacks '%s'", \
               #expr, moe_last_error(), (needle));                                    \
    } while (0)

/* A contiguous tensor of SHAPE with element i = f(i) given as values. */
static inline moe_status dt_tensor(moe_tensor **out, moe_dtype dt, int ndim, const int64_t *shape,
                                   const double *vals)
{
    moe_status st = moe_tensor_empty(out, dt, MOE_CPU, ndim, shape);
    if (st != MOE_OK) return st;
    int64_t n = moe_tensor_numel(*out);
    for (int64_t i = 0; i < n; i++)
        moe_dtype_store(dt, (char *)moe_tensor_data(*out) + i * (int64_t)moe_dtype_size(dt), vals[i]);
    return MOE_OK;
}

/* Compare T's elements (row-major) with EXPECT within TOL; names WHAT and the
 * first differing element. */
static inline moe_status dt_expect(const moe_tensor *t, int64_t n, const double *expect, double tol,
                                   const char *what)
{
    if (!t) return moe_fail(MOE_ERR_VALUE, "check", "%s: tensor is NULL", what);
    if (moe_tensor_numel(t) != n)
        return moe_fail(MOE_ERR_VALUE, "check", "%s: %lld elements (shape %s), expected %lld", what,
                        (long long)moe_tensor_numel(t), moe_shape_str(t), (long long)n);
    double *got = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!got) return moe_fail(MOE_ERR_NOMEM, "check", "out of memory");
    moe_status st = moe_tensor_to_doubles(t, got);
    for (int64_t i = 0; st == MOE_OK && i < n; i++)
        if (!(fabs(got[i] - expect[i]) <= tol))
            st = moe_fail(MOE_ERR_VALUE, "check", "%s: element %lld is %.17g, expected %.17g", what,
                          (long long)i, got[i], expect[i]);
    free(got);
    return st;
}
#define DT_EXPECT(t, tol, ...)                                                          \
    RTRY(dt_expect((t), (int64_t)(sizeof((double[]){__VA_ARGS__}) / sizeof(double)), \
                   (double[]){__VA_ARGS__}, (tol), #t))

#endif
