/* iter.h — what an elementwise loop computes and over which elements:
 * the op codes and the iteration description (built by iter.c) shared by
 * the CPU loops (kernels/cpu/elementwise.c) and the CUDA kernels
 * (kernels/cuda/elementwise.cu). Plain C, includable from C++.
 *
 * A moe_iter describes a contiguous output of shape [N] (dims coalesced)
 * and, per input, element strides aligned to it (0 where the input is
 * broadcast), so broadcast and strided inputs are read in place. */
#ifndef MOELAB_KERNELS_ITER_H
#define MOELAB_KERNELS_ITER_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_ITER_MAX_IN 3

/* Output shape [N] = shape (coalesced) and, per input, strides in elements. */
typedef struct moe_iter {
    int ndim;
    int n_in;
    int64_t numel;
    int64_t shape[MOE_MAX_DIMS];
    int64_t strides[MOE_ITER_MAX_IN][MOE_MAX_DIMS];
} moe_iter;

/* Describe a loop producing a contiguous output of SHAPE from N_IN inputs
 * that broadcast to it (trailing-aligned; size-1 dims read with stride 0).
 * Adjacent dims that are contiguous for every operand are merged. */
void moe_iter_init(moe_iter *it, int ndim, const int64_t *shape, int n_in,
                   const moe_tensor *const *ins);
/* True when every input is contiguous over the whole output (one flat run). */
bool moe_iter_is_flat(const moe_iter *it);

typedef enum moe_binop {
    MOE_BIN_ADD,
    MOE_BIN_SUB,
    MOE_BIN_MUL,
    MOE_BIN_DIV,
    MOE_BIN_POW,
    MOE_BINOP_COUNT
} moe_binop;

/* Unary maps; P is a parameter vector (scalar s, or clamp bounds). */
typedef enum moe_unop {
    MOE_UN_NEG,
    MOE_UN_EXP,
    MOE_UN_LOG,
    MOE_UN_SQRT,
    MOE_UN_RSQRT,
    MOE_UN_ABS,
    MOE_UN_TANH,
    MOE_UN_SIGMOID,
    MOE_UN_SILU,
    MOE_UN_RELU,
    MOE_UN_GELU_ERF,
    MOE_UN_GELU_TANH,
    MOE_UN_CLAMP,  /* p[0] lo, p[1] hi */
    MOE_UN_ADD_S,  /* x + p[0] */
    MOE_UN_MUL_S,  /* x * p[0] */
    MOE_UN_RSUB_S, /* p[0] - x */
    MOE_UN_RDIV_S, /* p[0] / x */
    MOE_UN_POW_S,  /* x ** p[0] */
    MOE_UNOP_COUNT
} moe_unop;

typedef enum moe_cmp {
    MOE_CMP_EQ,
    MOE_CMP_NE,
    MOE_CMP_LT,
    MOE_CMP_LE,
    MOE_CMP_GT,
    MOE_CMP_GE,
    MOE_CMP_COUNT
} moe_cmp;

#ifdef __cplusplus
}
#endif
#endif
