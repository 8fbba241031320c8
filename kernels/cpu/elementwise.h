/* elementwise.h — CPU loops behind the elementwise ops (core/ops/binary.c,
 * core/ops/unary.c).
 *
 * Dimension letters: N elements of the output (flat), R rows, C the
 * innermost (row) length.
 *
 * Outputs are always fresh contiguous buffers in the compute dtype (f32 or
 * f64). Inputs are described by a moe_iter (kernels/iter.h, shared with the
 * CUDA kernels), so broadcast and non-contiguous inputs are read in place
 * without copies. Every kernel has an f32 and an f64 version, generated
 * from one template in elementwise.c. */
#ifndef MOELAB_CPU_ELEMENTWISE_H
#define MOELAB_CPU_ELEMENTWISE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../iter.h"

/* out[N] = a op b; a, b point at element 0 of each input (iter: 2 inputs). */
void moe_cpu_binary_f32(moe_binop op, float *out, const float *a, const float *b,
                        const moe_iter *it);
void moe_cpu_binary_f64(moe_binop op, double *out, const double *a, const double *b,
                        const moe_iter *it);

/* out[N] = f(a) (iter: 1 input). */
void moe_cpu_unary_f32(moe_unop op, const double *p, float *out, const float *a,
                       const moe_iter *it);
void moe_cpu_unary_f64(moe_unop op, const double *p, double *out, const double *a,
                       const moe_iter *it);

/* Backward of a unary map, contiguous: gin[N] = g[N] * f'(x) where X is the
 * input and Y the output of the forward (either may be NULL when the op
 * does not read it). */
void moe_cpu_unary_grad_f32(moe_unop op, const double *p, float *gin, const float *g,
                            const float *x, const float *y, int64_t n);
void moe_cpu_unary_grad_f64(moe_unop op, const double *p, double *gin, const double *g,
                            const double *x, const double *y, int64_t n);

/* out[N] = cond ? a : b (iter: 3 inputs: cond (bytes), a, b). */
void moe_cpu_where_f32(float *out, const uint8_t *cond, const float *a, const float *b,
                       const moe_iter *it);
void moe_cpu_where_f64(double *out, const uint8_t *cond, const double *a, const double *b,
                       const moe_iter *it);

/* out[N] = mask ? value : a (iter: 2 inputs: a, mask (bytes)). */
void moe_cpu_masked_fill_f32(float *out, const float *a, const uint8_t *mask, double value,
                             const moe_iter *it);
void moe_cpu_masked_fill_f64(double *out, const double *a, const uint8_t *mask, double value,
                             const moe_iter *it);

/* out[N] (bytes, 0/1) = a cmp b (iter: 2 inputs). */
void moe_cpu_compare_f32(moe_cmp cmp, uint8_t *out, const float *a, const float *b,
                         const moe_iter *it);
void moe_cpu_compare_f64(moe_cmp cmp, uint8_t *out, const double *a, const double *b,
                         const moe_iter *it);

/* Inverted dropout, contiguous: element i is kept when
 * moe_rng_uniform(seed, base + i) >= p, then scaled by SCALE; else 0. */
void moe_cpu_dropout_f32(float *out, const float *a, int64_t n, uint64_t seed, uint64_t base,
                         double p, double scale);
void moe_cpu_dropout_f64(double *out, const double *a, int64_t n, uint64_t seed, uint64_t base,
                         double p, double scale);

/* NaN and ±Inf counts of a contiguous buffer. */
void moe_cpu_count_nonfinite_f32(const float *a, int64_t n, int64_t *nan_count,
                                 int64_t *inf_count);
void moe_cpu_count_nonfinite_f64(const double *a, int64_t n, int64_t *nan_count,
                                 int64_t *inf_count);

#endif
