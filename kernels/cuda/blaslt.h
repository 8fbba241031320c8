/* blaslt.h — the one wrapper around cuBLASLt (plain C; only with
 * MOELAB_HAVE_CUDA). Every matrix product of the CUDA backend goes through it.
 *
 * A backend context (created on first use, one per process) holds the
 * cublasLt handle, a 32 MiB workspace allocated once, and a small cache of
 * matmul descriptors and chosen algorithms keyed by shape, dtypes, layout,
 * batch and pointer alignment, so a training step's steady state makes no
 * heuristic queries and no allocations.
 *
 * Everything is described in moelab's row-major terms; blaslt.cu maps it onto
 * column-major cuBLAS (see the comment above blaslt_run there).
 *
 * dtypes: A and B share one dtype. f32 (C f32; exact f32 unless TF32 is
 * allowed), bf16 (C bf16 or f32; f32 accumulation), f64 (C f64). */
#ifndef MOELAB_CUDA_BLASLT_H
#define MOELAB_CUDA_BLASLT_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"
#include "../gemm_plan.h" /* moe_gemm_mat: the strided matrix description both GEMMs share */

#ifdef __cplusplus
extern "C" {
#endif

/* One row-major operand of a strided batched product: the stored matrix is
 * [rows cols] with row stride LD (elements); TRANS uses its transpose.
 * BATCH_STRIDE (elements) steps to the next matrix; 0 repeats it. */
typedef struct moe_blaslt_operand {
    const void *data;
    int64_t ld;
    bool trans;
    int64_t batch_stride;
} moe_blaslt_operand;

/* For b in [0, BATCH):
 *   C[b] = alpha op(A[b]) op(B[b]) + beta C[b] (+ BIAS[N] added to every row)
 * op(A) is [M K], op(B) is [K N], C is row-major [M N] with row stride LDC.
 * BIAS (may be NULL) has C_DTYPE. K may be 0 (then C = beta C + bias). */
typedef struct moe_blaslt_gemm {
    moe_dtype ab_dtype, c_dtype;
    int64_t m, n, k, batch;
    moe_blaslt_operand a, b;
    void *c;
    int64_t ldc, c_batch_stride;
    float alpha, beta;
    const void *bias;
} moe_blaslt_gemm;

moe_status moe_blaslt_matmul(const moe_blaslt_gemm *g);

/* Batched broadcast GEMM with the contract of moe_cpu_gemm (kernels/cpu/gemm.h)
 * on device pointers: for every index of the NB-dim batch BSHAPE,
 *   C[b] = A[b] @ B[b] (+ BIAS on every row)        (ACCUMULATE false)
 *   C[b] += A[b] @ B[b]                              (ACCUMULATE true)
 * A zero batch stride of C reduces over that dim (needs ACCUMULATE; the
 * reduction runs in batch order, so it is deterministic). Batch dims fold into
 * M or K where strides allow, the innermost remaining one becomes cuBLASLt's
 * strided batch, outer ones loop on the host. BIAS (C_DTYPE, [N]) may be NULL. */
moe_status moe_cuda_gemm(moe_dtype ab_dtype, moe_dtype c_dtype, int nb, const int64_t *bshape,
                         moe_gemm_mat a, moe_gemm_mat b, moe_gemm_mat c, bool accumulate,
                         const void *bias);

/* OUT [N] (f32 or f64) = the sum over the ROWS rows of G [ROWS N] (OUT's
 * dtype, or bf16 with f32 OUT) in double: linear's bias gradient. Fixed
 * order (chunks of rows in order, then the chunks in order): deterministic. */
moe_status moe_cuda_sum_rows(moe_dtype out_dtype, moe_dtype g_dtype, void *out, const void *g,
                             int64_t rows, int64_t n);

/* f32 products may use TF32 tensor cores (faster, ~1e-3 relative error).
 * Off by default so GPU f32 results match the CPU to ~1e-6. */
void moe_blaslt_allow_tf32(bool allow);
bool moe_blaslt_tf32_allowed(void);

/* Heuristic-cache statistics (tests: a repeated shape must hit). */
typedef struct moe_blaslt_stats {
    int64_t hits, misses, entries;
} moe_blaslt_stats;
void moe_blaslt_stats_get(moe_blaslt_stats *out);

/* Free the context (handle, workspace, cache); the next call makes a new one. */
void moe_blaslt_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif
