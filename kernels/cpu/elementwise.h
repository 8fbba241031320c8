/* elementwise.h — CPU loops behind the elementwise ops (core/ops/binary.c,
 * core/ops/unary.c).
 *
 * Dimension letters: N elements of the output (flat), R rows, C the
 * innermost (row) length.
 *
 * Outputs are always fresh contiguous buffers in the compute dtype (f32 or
 * f64). Inputs are described by a moe_cpu_iter: the output shape plus, per
 * input, element strides (0 where the input is broadcast), so broadcast and
 * non-contiguous inputs are read in place without copies. Every kernel has
 * an f32 and an f64 version, generated from one template in elementwise.c. */
#ifndef MOELAB_CPU_ELEMENTWISE_H
#define MOELAB_CPU_ELEMENTWISE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/internal.h"

#define MOE_CPU_ITER_MAX_IN 3

/* Output shape [N] = shape (coalesced) and, per input, strides in elements. */
typedef struct moe_cpu_iter {
    int ndim;
    int n_in;
    int64_t numel;
    int64_t shape[MOE_MAX_DIMS];
    int64_t strides[MOE_CPU_ITER_MAX_IN][MOE_MAX_DIMS];
} moe_cpu_iter;

/* Describe a loop producing a contiguous output of SHAPE from N_IN inputs
 * that broadcast to it (trailing-aligned; size-1 dims read with stride 0).
 * Adjacent dims that are contiguous for every operand are merged. */
void moe_cpu_iter_init(moe_cpu_iter *it, int ndim, const int64_t *shape, int n_in,
                       const moe_tensor *const *ins);
/* True when every input is contiguous over the whole output (one flat run). */
bool moe_cpu_iter_is_flat(const moe_cpu_iter *it);

typedef enum moe_cpu_binop {
    MOE_CPU_ADD,
    MOE_CPU_SUB,
    MOE_CPU_MUL,
    MOE_CPU_DIV,
    MOE_CPU_POW,
    MOE_CPU_BINOP_COUNT
} moe_cpu_binop;

/* Unary maps; P is a parameter vector (scalar s, or clamp bounds). */
typedef enum moe_cpu_unop {
    MOE_CPU_NEG,
    MOE_CPU_EXP,
    MOE_CPU_LOG,
    MOE_CPU_SQRT,
    MOE_CPU_RSQRT,
    MOE_CPU_ABS,
    MOE_CPU_TANH,
    MOE_CPU_SIGMOID,
    MOE_CPU_SILU,
    MOE_CPU_RELU,
    MOE_CPU_GELU_ERF,
    MOE_CPU_GELU_TANH,
    MOE_CPU_CLAMP,  /* p[0] lo, p[1] hi */
    MOE_CPU_ADD_S,  /* x + p[0] */
    MOE_CPU_MUL_S,  /* x * p[0] */
    MOE_CPU_RSUB_S, /* p[0] - x */
    MOE_CPU_RDIV_S, /* p[0] / x */
    MOE_CPU_POW_S,  /* x ** p[0] */
    MOE_CPU_UNOP_COUNT
} moe_cpu_unop;

typedef enum moe_cpu_cmp {
    MOE_CPU_EQ,
    MOE_CPU_NE,
    MOE_CPU_LT,
    MOE_CPU_LE,
    MOE_CPU_GT,
    MOE_CPU_GE,
    MOE_CPU_CMP_COUNT
} moe_cpu_cmp;

/* out[N] = a op b; a, b point at element 0 of each input (iter: 2 inputs). */
void moe_cpu_binary_f32(moe_cpu_binop op, float *out, const float *a, const float *b,
                        const moe_cpu_iter *it);
void moe_cpu_binary_f64(moe_cpu_binop op, double *out, const double *a, const double *b,
                        const moe_cpu_iter *it);

/* out[N] = f(a) (iter: 1 input). */
void moe_cpu_unary_f32(moe_cpu_unop op, const double *p, float *out, const float *a,
                       const moe_cpu_iter *it);
void moe_cpu_unary_f64(moe_cpu_unop op, const double *p, double *out, const double *a,
                       const moe_cpu_iter *it);

/* Backward of a unary map, contiguous: gin[N] = g[N] * f'(x) where X is the
 * input and Y the output of the forward (either may be NULL when the op
 * does not read it). */
void moe_cpu_unary_grad_f32(moe_cpu_unop op, const double *p, float *gin, const float *g,
                            const float *x, const float *y, int64_t n);
void moe_cpu_unary_grad_f64(moe_cpu_unop op, const double *p, double *gin, const double *g,
                            const double *x, const double *y, int64_t n);

/* out[N] = cond ? a : b (iter: 3 inputs: cond (bytes), a, b). */
void moe_cpu_where_f32(float *out, const uint8_t *cond, const float *a, const float *b,
                       const moe_cpu_iter *it);
void moe_cpu_where_f64(double *out, const uint8_t *cond, const double *a, const double *b,
                       const moe_cpu_iter *it);

/* out[N] = mask ? value : a (iter: 2 inputs: a, mask (bytes)). */
void moe_cpu_masked_fill_f32(float *out, const float *a, const uint8_t *mask, double value,
                             const moe_cpu_iter *it);
void moe_cpu_masked_fill_f64(double *out, const double *a, const uint8_t *mask, double value,
                             const moe_cpu_iter *it);

/* out[N] (bytes, 0/1) = a cmp b (iter: 2 inputs). */
void moe_cpu_compare_f32(moe_cpu_cmp cmp, uint8_t *out, const float *a, const float *b,
                         const moe_cpu_iter *it);
void moe_cpu_compare_f64(moe_cpu_cmp cmp, uint8_t *out, const double *a, const double *b,
                         const moe_cpu_iter *it);

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
