/* elementwise.h — CUDA kernels behind the elementwise ops (core/ops/binary.c,
 * core/ops/unary.c); the device twins of kernels/cpu/elementwise.h.
 *
 * Dimension letters: N elements of the output.
 *
 * Same contract as the CPU loops: outputs are fresh contiguous device
 * buffers [N] in the compute dtype DT (MOE_F32 or MOE_F64); inputs are
 * device pointers at element 0, read through a moe_iter (kernels/iter.h:
 * strides, 0 on broadcast dims). Plain C: no CUDA types. Every function
 * launches on moe_cuda_stream() and does not synchronise, except
 * moe_cuda_count_nonfinite, whose counts land on the host. */
#ifndef MOELAB_CUDA_ELEMENTWISE_H
#define MOELAB_CUDA_ELEMENTWISE_H

#include "../iter.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[N] = a op b (iter: 2 inputs). */
moe_status moe_cuda_binary(moe_binop op, moe_dtype dt, void *out, const void *a, const void *b,
                           const moe_iter *it);
/* out[N] = f(a) with parameters p[2] (iter: 1 input). */
moe_status moe_cuda_unary(moe_unop op, const double *p, moe_dtype dt, void *out, const void *a,
                          const moe_iter *it);
/* Contiguous: gin[N] = g[N] * f'(x) from the forward's input X and/or
 * output Y (NULL when the op does not read it). */
moe_status moe_cuda_unary_grad(moe_unop op, const double *p, moe_dtype dt, void *gin,
                               const void *g, const void *x, const void *y, int64_t n);
/* out[N] = cond ? a : b (iter: 3 inputs: cond (bytes), a, b). */
moe_status moe_cuda_where(moe_dtype dt, void *out, const uint8_t *cond, const void *a,
                          const void *b, const moe_iter *it);
/* out[N] = mask ? value : a (iter: 2 inputs: a, mask (bytes)). */
moe_status moe_cuda_masked_fill(moe_dtype dt, void *out, const void *a, const uint8_t *mask,
                                double value, const moe_iter *it);
/* out[N] (bytes, 0/1) = a cmp b (iter: 2 inputs; DT is the inputs' dtype). */
moe_status moe_cuda_compare(moe_cmp cmp, moe_dtype dt, uint8_t *out, const void *a, const void *b,
                            const moe_iter *it);
/* Contiguous inverted dropout with the host's mask: element i is kept when
 * moe_rng_uniform(seed, base + i) >= p (the same counter-based bits). */
moe_status moe_cuda_dropout(moe_dtype dt, void *out, const void *a, int64_t n, uint64_t seed,
                            uint64_t base, double p, double scale);
/* NaN and ±Inf counts of a contiguous buffer (host results). */
moe_status moe_cuda_count_nonfinite(moe_dtype dt, const void *a, int64_t n, int64_t *nan_count,
                                    int64_t *inf_count);

#ifdef __cplusplus
}
#endif
#endif
