/* reduce.h — CPU loops behind the reductions, cumsum and max/min
 * (core/ops/reduce.c; the softmax family has softmax.h).
 *
 * Layout: every kernel sees a contiguous buffer viewed as [O R I] — O outer
 * rows, R the reduced (or scanned) extent, I inner columns — so one kernel
 * serves "reduce the last dims" (I = 1), "reduce the first dims" (O = 1) and
 * anything in between. DT is the compute dtype: MOE_F32 (accumulates in
 * double), MOE_F64, or MOE_I64 where noted, as in the CUDA twins.
 *
 * Determinism: sums over a row are split into fixed chunks of
 * MOE_CPU_REDUCE_CHUNK elements, each summed with fixed lanes, and the chunk
 * partials are added in order; the thread count only decides who computes
 * which chunk, never the order of the additions. */
#ifndef MOELAB_CPU_REDUCE_H
#define MOELAB_CPU_REDUCE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

#define MOE_CPU_REDUCE_CHUNK 8192

/* out [O I] = scale * sum over r of x [O R I] (DT f32, f64 or i64). */
moe_status moe_cpu_sum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int64_t I, double scale);

/* out [O] = sum over r of (x [O R] - mean)^2 / (R - correction): two passes. */
moe_status moe_cpu_var(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int correction);

/* out [O R I] = running sum of x along r (from the end when REVERSE; DT f32,
 * f64 or i64). */
void moe_cpu_cumsum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int64_t I, bool reverse);

/* Max (IS_MAX) or min of x [O R I] along r (R >= 1): values [O I] (may be
 * NULL) and i64 indices [O I] (may be NULL); DT f32, f64 or i64. Ties: the
 * lowest r. A NaN wins over any number (the first NaN). */
moe_status moe_cpu_extreme(moe_dtype dt, void *val, int64_t *idx, const void *x, int64_t O, int64_t R,
                           int64_t I, bool is_max);

/* out [O R I] (zero on entry): out[o, idx[o i], i] += g[o i]. */
void moe_cpu_scatter_dim(moe_dtype dt, void *out, const void *g, const int64_t *idx, int64_t O, int64_t R,
                         int64_t I);

#endif
