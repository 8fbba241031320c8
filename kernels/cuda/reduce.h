/* reduce.h — CUDA kernels behind the reductions, cumsum, max/min and the
 * softmax family (core/ops/reduce.c, core/ops/softmax.c); the device twins
 * of kernels/cpu/reduce.h, with the same [O R I] layout: a contiguous
 * buffer of O outer rows, R the reduced (scanned) extent, I inner columns.
 *
 * DT is the compute dtype: MOE_F32 (accumulates in double for sums, f32 in
 * the softmax rows), MOE_F64, or MOE_I64 where noted. Pointers are device
 * pointers. Rows (I == 1) are reduced by one block each with warp
 * shuffles; columns (I > 1) by one thread each, walking r in order. Results
 * do not depend on timing: every combination order is fixed by the launch.
 * Plain C: no CUDA types; launches on moe_cuda_stream(), no synchronising. */
#ifndef MOELAB_CUDA_REDUCE_H
#define MOELAB_CUDA_REDUCE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out [O I] = scale * sum over r of x [O R I] (DT f32, f64 or i64). */
moe_status moe_cuda_sum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int64_t I,
                        double scale);
/* out [O] = sum over r of (x [O R] - mean)^2 / (R - correction). */
moe_status moe_cuda_var(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R,
                        int correction);
/* out [O R I] = running sum of x along r (from the end when REVERSE). */
moe_status moe_cuda_cumsum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R, int64_t I,
                           bool reverse);
/* Max (IS_MAX) or min of x [O R I] along r (R >= 1): values [O I] (VAL may
 * be NULL) and i64 indices [O I]. Ties: the lowest r; a NaN wins over any
 * number (the first NaN), as on the CPU. */
moe_status moe_cuda_extreme(moe_dtype dt, void *val, int64_t *idx, const void *x, int64_t O,
                            int64_t R, int64_t I, bool is_max);
/* out [O R I] (zero on entry): out[o, idx[o i], i] += g[o i]. */
moe_status moe_cuda_scatter_dim(moe_dtype dt, void *out, const void *g, const int64_t *idx,
                                int64_t O, int64_t R, int64_t I);

/* The softmax family over the rows of x [O N], max-subtracted (DT f32 or
 * f64). MODE as moe_cpu_softmax_mode: 0 softmax out [O N], 1 log-softmax
 * out [O N], 2 logsumexp out [O]. */
moe_status moe_cuda_softmax(moe_dtype dt, void *out, const void *x, int64_t O, int64_t N, int mode);
/* Backward over rows [O N] from the forward's output Y: softmax
 * gin = y (g - sum(g y)); log-softmax (LOG) gin = g - exp(y) sum(g). */
moe_status moe_cuda_softmax_backward(moe_dtype dt, void *gin, const void *g, const void *y,
                                     int64_t O, int64_t N, bool log);

#ifdef __cplusplus
}
#endif
#endif
