/* elementwise.h — CPU loops behind the elementwise ops (core/ops/binary.c,
 * core/ops/unary.c).
 *
 * Dimension letters: N elements of the output (flat), R rows, C the
 * innermost (row) length.
 *
 * Outputs are fresh contiguous buffers in the compute dtype (f32 or f64),
 * but for add_into's in-place sum. Inputs are described by a moe_iter
 * (kernels/iter.h, shared with the CUDA kernels), so broadcast and
 * non-contiguous inputs are read in place without copies. Each entry takes the compute dtype DT (MOE_F32 or
 * MOE_F64), as its CUDA twin in kernels/cuda/elementwise.h does; the f32
 * and f64 loops come from one template in elementwise.c. */
#ifndef MOELAB_CPU_ELEMENTWISE_H
#define MOELAB_CPU_ELEMENTWISE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../iter.h"

/* out[N] = a op b; a, b point at element 0 of each input (iter: 2 inputs). */
void moe_cpu_binary(moe_binop op, moe_dtype dt, void *out, const void *a, const void *b,
                    const moe_iter *it);

/* acc[N] += g[N] in place, both contiguous (the gradient sums of autograd,
 * which owns ACC); the same bits as out = acc + g. */
void moe_cpu_add_into(moe_dtype dt, void *acc, const void *g, int64_t n);

/* out[N] = f(a) (iter: 1 input). */
void moe_cpu_unary(moe_unop op, const double *p, moe_dtype dt, void *out, const void *a,
                   const moe_iter *it);

/* Backward of a unary map, contiguous: gin[N] = g[N] * f'(x) where X is the
 * input and Y the output of the forward (either may be NULL when the op
 * does not read it). */
void moe_cpu_unary_grad(moe_unop op, const double *p, moe_dtype dt, void *gin, const void *g,
                        const void *x, const void *y, int64_t n);

/* out[N] = cond ? a : b (iter: 3 inputs: cond (bytes), a, b). */
void moe_cpu_where(moe_dtype dt, void *out, const uint8_t *cond, const void *a, const void *b,
                   const moe_iter *it);

/* out[N] = mask ? value : a (iter: 2 inputs: a, mask (bytes)). */
void moe_cpu_masked_fill(moe_dtype dt, void *out, const void *a, const uint8_t *mask, double value,
                         const moe_iter *it);

/* out[N] (bytes, 0/1) = a cmp b (iter: 2 inputs). */
void moe_cpu_compare(moe_cmp cmp, moe_dtype dt, uint8_t *out, const void *a, const void *b,
                     const moe_iter *it);

/* Inverted dropout, contiguous: element i is kept when
 * moe_rng_uniform(seed, base + i) >= p, then scaled by SCALE; else 0. */
void moe_cpu_dropout(moe_dtype dt, void *out, const void *a, int64_t n, uint64_t seed, uint64_t base,
                     double p, double scale);

/* NaN and ±Inf counts of a contiguous buffer. */
void moe_cpu_count_nonfinite(moe_dtype dt, const void *a, int64_t n, int64_t *nan_count,
                             int64_t *inf_count);

#endif
