/* gemm_plan.h — how a strided, batched, broadcast matrix product becomes
 * BLAS calls; shared by the CPU GEMM (kernels/cpu/gemm.c, CBLAS) and the GPU
 * one (kernels/cuda/blaslt.cu, cuBLASLt). Plain C, includable from C++.
 *
 * A matrix operand is described by strides (in elements), so transposed and
 * broadcast views reach BLAS without copies:
 *   element (i, j) of matrix b  =  data[sum_d idx_d * bstride[d] + i * rs + j * cs]
 * BLAS reads an operand directly when it is row-major (cs == 1, rs >= cols)
 * or a transposed row-major matrix (rs == 1, cs >= rows); the result must be
 * row-major. */
#ifndef MOELAB_KERNELS_GEMM_PLAN_H
#define MOELAB_KERNELS_GEMM_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "../core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One operand (or the result) of a batched GEMM. */
typedef struct moe_gemm_mat {
    void *data;                    /* element 0 of matrix 0 */
    int64_t rows, cols;
    int64_t rs, cs;                /* row and column strides */
    int64_t bstride[MOE_MAX_DIMS]; /* per batch dim; 0 where broadcast */
} moe_gemm_mat;

/* How BLAS reads a stored matrix: row-major with leading dimension LD,
 * transposed or not. */
typedef struct moe_gemm_layout {
    bool trans;
    int64_t ld;
} moe_gemm_layout;

/* True when BLAS can read M as it is (row-major or transposed). */
bool moe_gemm_mat_ok(const moe_gemm_mat *m);

/* C[b] = A[b] @ B[b] (or += when accumulating) for every batch index b,
 * after batch dims of size 1 are dropped and as many of the innermost batch
 * dims as the strides allow are folded into M (B shared across the dim) or
 * K (C shared across it: a reduction, only when accumulating). */
typedef struct moe_gemm_plan {
    moe_gemm_mat a, b, c;         /* the folded operands */
    int nb;                       /* batch dims left … */
    int64_t shape[MOE_MAX_DIMS];  /* … and their sizes */
    int64_t nbatch;               /* product of SHAPE */
    bool reduce;                  /* C repeats over a batch dim left */
    bool empty;                   /* an empty batch or result: nothing to do */
    int64_t m, n, k;
    moe_gemm_layout la, lb;
    int64_t ldc;
} moe_gemm_plan;

/* Plan A [M K] @ B [K N] -> C [M N] over the NB-dim batch BSHAPE. Fails
 * (naming "gemm") when the operands do not fit or a stride is not
 * BLAS-compatible. */
moe_status moe_gemm_plan_make(moe_gemm_plan *p, int nb, const int64_t *bshape, moe_gemm_mat a,
                              moe_gemm_mat b, moe_gemm_mat c, bool accumulate);

/* Element offsets in A, B and C of batch item I of the first ND batch dims
 * left (row-major over them). */
void moe_gemm_plan_offsets(const moe_gemm_plan *p, int nd, int64_t i, int64_t *oa, int64_t *ob,
                           int64_t *oc);

#ifdef __cplusplus
}
#endif
#endif
