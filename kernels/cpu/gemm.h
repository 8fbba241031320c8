/* gemm.h — the CPU GEMM behind matmul, bmm and linear: strided, batched,
 * broadcast matrix products (the operand description and the batch folding
 * are in kernels/gemm_plan.h) on moelab's own f32 kernel where the CPU has
 * AVX-512 (sgemm.h), else on CBLAS. */
#ifndef MOELAB_CPU_GEMM_H
#define MOELAB_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/tensor.h"
#include "../gemm_plan.h"

/* For every batch index b of the NB-dim batch BSHAPE:
 *     C[b] = A[b] @ B[b]          (ACCUMULATE false)
 *     C[b] += A[b] @ B[b]         (ACCUMULATE true: C holds zeros, a bias, …)
 * DTYPE is MOE_F32 or MOE_F64. A [M K], B [K N], C [M N]; A and B must pass
 * moe_gemm_mat_ok, C must be row-major (cs == 1). A zero batch stride of
 * C reduces over that batch dim and needs ACCUMULATE. Batch dims fold into M
 * (B shared) or K (C shared) so that a broadcast product is one BLAS call.
 * Fails (MOE_ERR_UNSUPPORTED) only when a size exceeds BLAS's int range. */
moe_status moe_cpu_gemm(moe_dtype dtype, int nb, const int64_t *bshape, moe_gemm_mat a,
                        moe_gemm_mat b, moe_gemm_mat c, bool accumulate);

/* Plain row-major GEMM on contiguous buffers (A [M K], B [K N], C [M N]):
 * C = alpha A B + beta C, with optional transposes of the stored A/B.
 * Outside a parallel region a large product runs over the OpenMP team;
 * inside one, on the calling thread. */
void moe_cpu_sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                   const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                   int64_t ldc);
/* Which kernel moe_cpu_sgemm runs: "avx512" or "avx2" (moelab's own,
 * sgemm.h) or "blas" (no kernel for this CPU, or MOELAB_SGEMM=blas). */
const char *moe_cpu_sgemm_kernel(void);
void moe_cpu_dgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha,
                   const double *a, int64_t lda, const double *b, int64_t ldb, double beta,
                   double *c, int64_t ldc);

/* Bias helpers for linear (contiguous buffers, f32 or f64):
 *   C [R N]: every row ← BIAS [N]                    (fill_rows)
 *   OUT [N] = sum over the R rows of G [R N]          (sum_rows; each column in row
 *                                                     order, in double: the one
 *                                                     deterministic column sum) */
void moe_cpu_fill_rows(moe_dtype dtype, void *c, int64_t rows, int64_t n, const void *bias);
void moe_cpu_sum_rows(moe_dtype dtype, void *out, const void *g, int64_t rows, int64_t n);
/* The same column sum over double partials P [R N] into OUT [N] of DTYPE. */
void moe_cpu_sum_f64_rows(moe_dtype dtype, void *out, const double *p, int64_t rows, int64_t n);

#endif
