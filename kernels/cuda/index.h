/* index.h — CUDA kernels behind core/ops/index.c (and embedding in nn.c):
 * plain C, included in every build; calls go through MOE_CUDA().
 *
 * Same contracts as the CPU loops of kernels/cpu/index.h (dimension letters
 * P N M Q as there), on device pointers. Index arrays are contiguous int64,
 * range-checked first with moe_cuda_index_find_bad. Accumulating kernels add
 * each output element's contributions in index order (no atomics), so results
 * match the CPU's order and do not depend on the launch shape. */
#ifndef MOELAB_CUDA_INDEX_H
#define MOELAB_CUDA_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The first position of IDX [n] outside [0, size) in *POS (-1 when none) and
 * the value there in *VALUE. Waits for the answer (a host round trip). */
moe_status moe_cuda_index_find_bad(const int64_t *idx, int64_t n, int64_t size, int64_t *pos,
                                   int64_t *value);

/* out[e] = a[coords(e) with coords[dim] = idx[e]]: SHAPE (ND >= 1 dims) is the
 * index shape, OUT and IDX contiguous in it, A strided; elements of ESZ bytes. */
moe_status moe_cuda_gather(void *out, const void *a, const int64_t *a_strides, size_t esz,
                           const int64_t *idx, int nd, const int64_t *shape, int dim);
/* out[coords(e) with coords[dim] = idx[e]] += src[coords(e)]; DT f32 or f64;
 * OUT and SRC strided (OUT_STRIDES, SRC_STRIDES). */
moe_status moe_cuda_scatter_add(moe_dtype dt, void *out, const int64_t *out_strides, const void *src,
                                const int64_t *src_strides, const int64_t *idx, int nd,
                                const int64_t *shape, int dim);
/* out [P M Q] ← a [P N Q] rows idx [M] (elements of ESZ bytes). */
moe_status moe_cuda_index_select(void *out, const void *a, size_t esz, const int64_t *idx, int64_t P,
                                 int64_t N, int64_t M, int64_t Q);
/* out [P N Q] row idx[m] += src [P M Q] row m (DT f32 or f64), each target row
 * adding its sources in index order. Groups the entries by target on the host
 * (one copy of IDX [M] there and back). */
moe_status moe_cuda_index_add(moe_dtype dt, void *out, const void *src, const int64_t *idx, int64_t P,
                              int64_t N, int64_t M, int64_t Q);
/* out [n C] (i64) = one-hot rows of idx [n]. */
moe_status moe_cuda_one_hot(int64_t *out, const int64_t *idx, int64_t n, int64_t C);

#ifdef __cplusplus
}
#endif
#endif
