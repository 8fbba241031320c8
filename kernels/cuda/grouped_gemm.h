/* grouped_gemm.h — GEMMs over variable-size expert groups on the GPU and
 * the expert MLP (forward and backward) on top of them: the CUDA side of
 * kernels/cpu/grouped_gemm.h (same operand model, device pointers).
 *
 * Dimension letters: E experts (groups), N rows in expert-contiguous order
 * (group e owns rows [off[e], off[e+1]); OFF is a HOST array), n_e rows of
 * group e, D model dim, F expert ffn dim. Buffers are contiguous row-major,
 * f32 or bf16 (bf16 storage, f32 accumulation).
 *
 * One grouped call per product: cublasGemmGroupedBatchedEx (cuBLAS >= 12.5)
 * with one problem per non-empty group; when cuBLAS refuses it (or
 * MOELAB_CUDA_GROUPED=loop is set) one cublasGemmEx per group on the stream.
 * Both are deterministic for a given shape. Biases are not supported on the
 * GPU yet (the CPU path has them). */
#ifndef MOELAB_CUDA_GROUPED_GEMM_H
#define MOELAB_CUDA_GROUPED_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where an operand lives for group e (as moe_cpu_group_operand):
 *   ROWS:  data + off[e]·ld (A or C with n_e rows);
 *   SLICE: data + e·stride (an expert's weight). */
enum { MOE_CUDA_GROUP_ROWS = 0, MOE_CUDA_GROUP_SLICE = 1 };

typedef struct moe_cuda_gmat {
    void *data;
    int kind;       /* MOE_CUDA_GROUP_ROWS or MOE_CUDA_GROUP_SLICE */
    int64_t ld;     /* row stride (elements) */
    int64_t stride; /* elements between groups (SLICE) */
    bool trans;     /* use the stored matrix transposed */
} moe_cuda_gmat;

/* For every non-empty group e: C_e = alpha op(A_e) op(B_e) + beta C_e, with
 * the shape rules of moe_cpu_grouped_gemm (M = n_e when A is ROWS and not
 * transposed, else M_FIXED; N = n_e when B is ROWS and transposed, else
 * N_FIXED; K = n_e when A is ROWS and transposed, else K_FIXED). SLICE
 * results of empty groups are left untouched. */
moe_status moe_cuda_grouped_gemm(bool bf16, int64_t E, const int64_t *off, moe_cuda_gmat a, moe_cuda_gmat b,
                                 moe_cuda_gmat c, int64_t m_fixed, int64_t n_fixed, int64_t k_fixed, float alpha,
                                 float beta);

/* Force the per-group loop (true) or allow the grouped call (false). */
void moe_cuda_grouped_force_loop(bool loop);

/* Activations (the values of moe_cpu_ffn_act). */
enum { MOE_CUDA_FFN_SWIGLU = 0, MOE_CUDA_FFN_GELU = 1, MOE_CUDA_FFN_GELU_TANH = 2 };

typedef struct moe_cuda_ffn {
    bool bf16;
    int act;
    int64_t E, D, F;
    const int64_t *off;      /* [E+1] host */
    const void *x;           /* [N D] */
    const void *wg, *wu;     /* [E D F] (wg NULL unless SwiGLU) */
    const void *wd;          /* [E F D] */
} moe_cuda_ffn;

/* Forward: G [N F] = x Wg (SwiGLU; NULL otherwise), U [N F] = x Wu,
 * H [N F] = act(G, U), Y [N D] = H Wd. */
moe_status moe_cuda_ffn_forward(const moe_cuda_ffn *p, void *g, void *u, void *h, void *y);

/* Backward from DY [N D] with the forward's G, U and H (H may be NULL: it is
 * recomputed into SCRATCH). Outputs may be NULL: DX [N D], DWG/DWU [E D F],
 * DWD [E F D]; weight gradients are written (empty experts: zeros).
 * SCRATCH: 3·N·F elements of the dtype. */
moe_status moe_cuda_ffn_backward(const moe_cuda_ffn *p, const void *g, const void *u, const void *h,
                                 const void *dy, void *dx, void *dwg, void *dwu, void *dwd, void *scratch);

#ifdef __cplusplus
}
#endif
#endif
