/* sort.h — CUDA row sort and top-k behind core/ops/sort.c (plain C, included
 * in every build; calls go through MOE_CUDA()).
 *
 * Ordering exactly as the CPU (kernels/cpu/index.h): NaN is larger than every
 * number, equal keys keep index order in both directions (so top-k ties go
 * to the lower index). Sorting by (key, index) makes the order total, so a
 * bitonic network yields the one stable answer. */
#ifndef MOELAB_CUDA_SORT_H
#define MOELAB_CUDA_SORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows of x [R E] (contiguous, DT f32 or f64): vals [R K] (may be NULL) and
 * idx [R K] (i64) get the first K entries of each row in sorted order,
 * FIRST_BIG: largest first. One block per row; rows that fit in shared memory
 * sort there, longer ones in SCRATCH (device memory of
 * moe_cuda_sort_scratch_bytes(DT, R, E) bytes; may be NULL when that is 0). */
moe_status moe_cuda_sort_rows(moe_dtype dt, void *vals, int64_t *idx, const void *x, int64_t R,
                              int64_t E, int64_t K, bool first_big, void *scratch);
moe_status moe_cuda_sort_scratch_bytes(moe_dtype dt, int64_t R, int64_t E, size_t *nbytes);

#ifdef __cplusplus
}
#endif
#endif
