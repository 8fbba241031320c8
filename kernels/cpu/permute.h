/* permute.h — token movement on the CPU (dispatch and combine): the CPU
 * side of core/moe/dispatch.c, the twin of kernels/cuda/permute.h's row
 * kernels. Buffers are contiguous row-major, DTYPE f32 or f64. */
#ifndef MOELAB_CPU_PERMUTE_H
#define MOELAB_CPU_PERMUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"

/* T tokens, K slots per token, N permuted rows, D row length. ROW_TOKEN [N]
 * gives each permuted row's token (-1: a padding row), ROW_SLOT [N] its flat
 * slot t*K + k, SLOT_ROW [T*K] each slot's row (-1: dropped). Every output
 * row is written by one thread in a fixed order (deterministic). */

/* OUT [N D]: row r = X [T D] row ROW_TOKEN[r], times W [T*K] at ROW_SLOT[r]
 * when W is given; padding rows are zero. */
void moe_cpu_rows_gather(moe_dtype dtype, void *out, const void *x, const int64_t *row_token,
                         const int64_t *row_slot, const void *w, int64_t N, int64_t D);
/* OUT [T D]: row t = sum over k = 0..K-1 of W[t K + k] (1 when W is NULL)
 * times Y [N D] row SLOT_ROW[t K + k], skipping dropped slots (zero when
 * all are dropped). */
void moe_cpu_rows_combine(moe_dtype dtype, void *out, const void *y, const int64_t *slot_row,
                          const void *w, int64_t T, int64_t K, int64_t D);
/* OUT [T K]: <G [T D] row t, Y [N D] row SLOT_ROW[t K + k]>, 0 when dropped. */
void moe_cpu_rows_dot(moe_dtype dtype, void *out, const void *g, const void *y,
                      const int64_t *slot_row, int64_t T, int64_t K, int64_t D);

#endif
