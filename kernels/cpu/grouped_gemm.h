/* grouped_gemm.h — GEMMs over variable-size expert groups, and the fused
 * expert MLP (forward and backward) built on them.
 *
 * Dimension letters: E experts (groups), N rows in expert-contiguous order
 * (group e owns rows [off[e], off[e+1])), n_e = off[e+1] - off[e], D model
 * dim, F expert ffn dim. All buffers are contiguous row-major, f32 or f64.
 *
 * One BLAS call per non-empty group and product, straight on the group's
 * row block and the group's weight slice (no copies); a product over a
 * group's rows may be cut in two between threads. Two schedules:
 *   - side by side: BLAS single-threaded inside an OpenMP region (the
 *     OpenMP build of OpenBLAS runs one thread inside a parallel region).
 *     The fused MLP's forward, whose rows are independent, is split by
 *     rows: each thread takes an equal share of the expert-ordered rows,
 *     to a 32-row tile, cutting a group where a share ends. The rest runs
 *     as tasks of a dynamic loop, costliest first, so the cheap ones fill
 *     the threads' ends: a plain grouped GEMM's groups; the backward's
 *     dh = dY Wdᵀ with its activation pass per group, then (a second loop)
 *     each group's dWd, dWg, dWu and dX as separate tasks. Chosen when the
 *     groups are small or even enough to keep every thread busy;
 *   - one at a time: each group's GEMMs in turn, each spread over the
 *     threads (gemm.c).
 * Where groups are cut depends only on the offsets and the thread count,
 * and every other loop writes each element once in a fixed order, so a
 * given thread count always gives the same bits. Cuts fall on 32-row
 * tiles of a group's rows, so that BLAS gives a cut group's rows the bits
 * of the whole product and one and two threads agree to the bit
 * (check_model). That holds for the shapes tested, not for every kernel
 * and shape: OpenBLAS's AVX2 sgemm (what runs under valgrind) works on
 * 12-row tiles, and a piece of a few rows may take its small-matrix
 * kernels. */
#ifndef MOELAB_CPU_GROUPED_GEMM_H
#define MOELAB_CPU_GROUPED_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/tensor.h"

typedef enum moe_cpu_group_mode {
    MOE_CPU_GROUP_AUTO,     /* pick per call (see moe_cpu_group_plan) */
    MOE_CPU_GROUP_PARALLEL, /* groups side by side, BLAS single-threaded */
    MOE_CPU_GROUP_SERIAL,   /* one group at a time, BLAS threads inside */
    MOE_CPU_GROUP_MODE_COUNT
} moe_cpu_group_mode;

/* Force a schedule process-wide (benchmarks, tests); AUTO restores the
 * default. MOELAB_GROUPED_GEMM=parallel|serial sets it at start too. */
void moe_cpu_group_set_mode(moe_cpu_group_mode mode);
moe_cpu_group_mode moe_cpu_group_get_mode(void);

/* The schedule for E groups at OFF [E+1] whose per-row work is similar:
 * *SLOTS receives how many scratch slots (one per concurrent group) the
 * caller must provide, *MAX_ROWS the largest group. Returns PARALLEL or
 * SERIAL. */
moe_cpu_group_mode moe_cpu_group_plan(int64_t E, const int64_t *off, int *slots,
                                      int64_t *max_rows);

/* Where an operand lives for group e:
 *   ROWS:  the group's row block: data + off[e] * ld (A or C of [n_e, ·]);
 *   SLICE: a per-group matrix: data + e * stride (an expert's weight). */
typedef enum moe_cpu_group_operand {
    MOE_CPU_GROUP_ROWS,
    MOE_CPU_GROUP_SLICE,
    MOE_CPU_GROUP_OPERAND_COUNT
} moe_cpu_group_operand;

typedef struct moe_cpu_gmat {
    void *data;
    moe_cpu_group_operand kind;
    int64_t ld;     /* leading dimension (row stride) */
    int64_t stride; /* elements between groups (SLICE) */
    bool trans;     /* use the stored matrix transposed */
} moe_cpu_gmat;

/* For every non-empty group e:  C_e = alpha op(A_e) op(B_e) + beta C_e.
 * The product's shape: M = n_e when A is ROWS and not transposed, else
 * given by M_FIXED; likewise N = n_e when B is ROWS and transposed, else
 * N_FIXED; K = n_e when A is ROWS and transposed (a weight gradient: the
 * group's rows are the inner dim), else K_FIXED. Groups with zero rows are
 * skipped (a SLICE result for them is left untouched: zero it first when
 * it must be zero). DTYPE: MOE_F32 or MOE_F64. */
void moe_cpu_grouped_gemm(moe_dtype dtype, int64_t E, const int64_t *off, moe_cpu_gmat a,
                          moe_cpu_gmat b, moe_cpu_gmat c, int64_t m_fixed, int64_t n_fixed,
                          int64_t k_fixed, double alpha, double beta);

/* ---- fused expert MLP ---------------------------------------------------------- */

typedef enum moe_cpu_ffn_act {
    MOE_CPU_FFN_SWIGLU,    /* h = silu(x Wg + bg) * (x Wu + bu) */
    MOE_CPU_FFN_GELU,      /* h = gelu_erf(x Wu + bu) */
    MOE_CPU_FFN_GELU_TANH, /* h = gelu_tanh(x Wu + bu) */
    MOE_CPU_FFN_ACT_COUNT
} moe_cpu_ffn_act;

typedef struct moe_cpu_ffn {
    moe_dtype dtype; /* MOE_F32 or MOE_F64 */
    moe_cpu_ffn_act act;
    int64_t E, D, F;
    const int64_t *off;     /* [E+1] */
    const void *x;          /* [N D] */
    const void *wg, *wu;    /* [E D F] (wg NULL unless SWIGLU) */
    const void *wd;         /* [E F D] */
    const void *bg, *bu;    /* [E F] or NULL */
    const void *bd;         /* [E D] or NULL */
} moe_cpu_ffn;

/* Elements of scratch the forward (BACKWARD false) or the backward needs
 * under MODE, with SLOTS and MAX_ROWS from moe_cpu_group_plan, for N rows
 * (off[E] - off[0]) of model dim D: [MAX_ROWS F] blocks per slot for h
 * (forward; side by side, also room for an expert's weights packed), and
 * for dh, dU (SwiGLU) and h (serial backward); [N F] blocks of dh, dU and h
 * for the side-by-side backward, which keeps them for every row between
 * its two loops. */
int64_t moe_cpu_ffn_scratch(moe_cpu_ffn_act act, moe_cpu_group_mode mode, int slots,
                            int64_t max_rows, int64_t N, int64_t D, int64_t F, bool backward);

/* Forward: G [N F] = x Wg + bg (SwiGLU only; NULL otherwise), U [N F] =
 * x Wu + bu, Y [N D] = h Wd + bd. SCRATCH: moe_cpu_ffn_scratch(..., false)
 * elements. */
void moe_cpu_ffn_forward(const moe_cpu_ffn *p, void *g, void *u, void *y, void *scratch,
                         moe_cpu_group_mode mode, int64_t max_rows);

/* For tests: each thread of the side-by-side f32 forward on moelab's
 * kernel first takes a chunk from the back of the next thread's share of
 * the rows, as a thread done with its own share does, so that path runs
 * whether or not a core falls behind. */
void moe_cpu_ffn_steal_first(bool on);

/* Backward from DY [N D] with the saved G and U. Any output may be NULL
 * (not needed): DX [N D], DWG/DWU [E D F], DWD [E F D], DBG/DBU [E F],
 * DBD [E D]. Weight gradients are written (not accumulated); empty experts
 * get zeros. The activation is evaluated once per element: the pass that
 * turns dh into dG, dU also recomputes h for dWd. SCRATCH:
 * moe_cpu_ffn_scratch(..., true) elements for the same MODE. */
void moe_cpu_ffn_backward(const moe_cpu_ffn *p, const void *g, const void *u, const void *dy,
                          void *dx, void *dwg, void *dwu, void *dwd, void *dbg, void *dbu,
                          void *dbd, void *scratch, moe_cpu_group_mode mode, int64_t max_rows);

/* Multiply-add count of one forward / one backward (all weight gradients
 * and DX) of the expert GEMMs over N rows, as FLOPs (2 per multiply-add). */
double moe_cpu_ffn_flops(moe_cpu_ffn_act act, int64_t N, int64_t D, int64_t F, bool backward);

#endif
