/* ops.h — every tensor op. Outputs first, then inputs, then sizes/options.
 *
 * All ops are differentiable in their floating inputs unless marked "(no
 * grad)". Binary elementwise ops broadcast (numpy rules) and promote dtypes.
 * bf16 inputs compute in f32 and return bf16. Negative dims count from the
 * end. Each op's forward and backward live side by side in core/ops/<family>.c. */
#ifndef MOELAB_OPS_H
#define MOELAB_OPS_H

#include "autograd.h"
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise: core/ops/binary.c, core/ops/unary.c ------------------- */
moe_status moe_add(moe_tensor **out, moe_tensor *a, moe_tensor *b);
moe_status moe_sub(moe_tensor **out, moe_tensor *a, moe_tensor *b);
moe_status moe_mul(moe_tensor **out, moe_tensor *a, moe_tensor *b);
moe_status moe_div(moe_tensor **out, moe_tensor *a, moe_tensor *b);
/* a ** b elementwise (broadcasting). */
moe_status moe_pow(moe_tensor **out, moe_tensor *a, moe_tensor *b);
/* out = a + s, a * s, s - a, s / a, a ** s */
moe_status moe_add_scalar(moe_tensor **out, moe_tensor *a, double s);
moe_status moe_mul_scalar(moe_tensor **out, moe_tensor *a, double s);
moe_status moe_rsub_scalar(moe_tensor **out, moe_tensor *a, double s);
moe_status moe_rdiv_scalar(moe_tensor **out, moe_tensor *a, double s);
moe_status moe_pow_scalar(moe_tensor **out, moe_tensor *a, double s);

moe_status moe_neg(moe_tensor **out, moe_tensor *a);
moe_status moe_exp(moe_tensor **out, moe_tensor *a);
moe_status moe_log(moe_tensor **out, moe_tensor *a);
moe_status moe_sqrt(moe_tensor **out, moe_tensor *a);
moe_status moe_rsqrt(moe_tensor **out, moe_tensor *a);
moe_status moe_abs(moe_tensor **out, moe_tensor *a);
moe_status moe_tanh(moe_tensor **out, moe_tensor *a);
moe_status moe_sigmoid(moe_tensor **out, moe_tensor *a);
moe_status moe_silu(moe_tensor **out, moe_tensor *a);
moe_status moe_relu(moe_tensor **out, moe_tensor *a);
typedef enum moe_gelu_kind { MOE_GELU_ERF, MOE_GELU_TANH, MOE_GELU_KIND_COUNT } moe_gelu_kind;
moe_status moe_gelu(moe_tensor **out, moe_tensor *a, moe_gelu_kind kind);
/* Clamp to [lo, hi]; pass -INFINITY / INFINITY for an open side. Gradient
 * passes where lo <= a <= hi. */
moe_status moe_clamp(moe_tensor **out, moe_tensor *a, double lo, double hi);
/* out = cond ? a : b (cond: bool, broadcasting all three). */
moe_status moe_where(moe_tensor **out, moe_tensor *cond, moe_tensor *a, moe_tensor *b);
/* out = mask ? value : a (mask: bool, broadcast to a). */
moe_status moe_masked_fill(moe_tensor **out, moe_tensor *a, moe_tensor *mask, double value);
/* Inverted dropout: zero with probability P, scale survivors by 1/(1-P).
 * Identity when !TRAINING or P == 0. RNG may be NULL (default generator). */
moe_status moe_dropout(moe_tensor **out, moe_tensor *a, double p, bool training, moe_rng *rng);
/* Comparisons (no grad) → bool, broadcasting. */
typedef enum moe_compare { MOE_EQ, MOE_NE, MOE_LT, MOE_LE, MOE_GT, MOE_GE, MOE_COMPARE_COUNT } moe_compare;
moe_status moe_compare_op(moe_tensor **out, moe_tensor *a, moe_tensor *b, moe_compare cmp);
moe_status moe_compare_scalar(moe_tensor **out, moe_tensor *a, double s, moe_compare cmp);
/* Count of NaN and of ±Inf elements (no grad). */
moe_status moe_count_nonfinite(const moe_tensor *a, int64_t *nan_count, int64_t *inf_count);

/* ---- reductions: core/ops/reduce.c -------------------------------------- */
/* Reduce over DIMS (NDIMS of them; NDIMS == 0 reduces over all dims). */
moe_status moe_sum(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, bool keepdim);
moe_status moe_mean(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, bool keepdim);
/* Variance with CORRECTION (0: population, 1: Bessel). */
moe_status moe_var(moe_tensor **out, moe_tensor *a, int ndims, const int *dims, int correction,
                   bool keepdim);
/* Max/min over one dim: values (differentiable, gradient to the first
 * arg-extreme) and i64 indices (may pass NULL). Ties: the lowest index. */
moe_status moe_max(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool keepdim);
moe_status moe_min(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim, bool keepdim);
/* Over all elements → 0-d. */
moe_status moe_max_all(moe_tensor **out, moe_tensor *a);
moe_status moe_min_all(moe_tensor **out, moe_tensor *a);
moe_status moe_argmax(moe_tensor **out, moe_tensor *a, int dim, bool keepdim); /* no grad, i64 */
moe_status moe_softmax(moe_tensor **out, moe_tensor *a, int dim);
moe_status moe_log_softmax(moe_tensor **out, moe_tensor *a, int dim);
moe_status moe_logsumexp(moe_tensor **out, moe_tensor *a, int dim, bool keepdim);
moe_status moe_cumsum(moe_tensor **out, moe_tensor *a, int dim);
/* Sum G down to SHAPE (undo a broadcast): the backward of broadcasting. */
moe_status moe_sum_to_shape(moe_tensor **out, moe_tensor *g, int ndim, const int64_t *shape);

/* ---- linear algebra: core/ops/matmul.c ---------------------------------- */
/* torch.matmul semantics: 1-D/2-D/batched with broadcast batch dims. */
moe_status moe_matmul(moe_tensor **out, moe_tensor *a, moe_tensor *b);
/* The kernel that runs f32 products on the CPU: "avx512" or "avx2"
 * (moelab's own, chosen for the CPU) or "blas" (OpenBLAS: a CPU with
 * neither, or MOELAB_SGEMM=blas). f64 products always run on BLAS. */
const char *moe_matmul_cpu_kernel(void);
/* [B M K] @ [B K N] → [B M N]. */
moe_status moe_bmm(moe_tensor **out, moe_tensor *a, moe_tensor *b);
/* y = x Wᵀ + bias; x [..., in], W [out, in], bias [out] or NULL. */
moe_status moe_linear(moe_tensor **out, moe_tensor *x, moe_tensor *w, moe_tensor *bias);

/* ---- neural-net ops: core/ops/nn.c -------------------------------------- */
/* x / sqrt(mean(x², last dim) + eps) * weight; weight [D] or NULL. */
moe_status moe_rms_norm(moe_tensor **out, moe_tensor *x, moe_tensor *weight, double eps);
/* (x - mean) / sqrt(var + eps) * weight + bias over the last dim; weight,
 * bias [D] or NULL. */
moe_status moe_layer_norm(moe_tensor **out, moe_tensor *x, moe_tensor *weight, moe_tensor *bias,
                          double eps);
/* Mean over targets != IGNORE_INDEX of -log_softmax(logits)[target].
 * logits [N C], targets [N] i64/i32. All targets ignored → NaN (like torch). */
moe_status moe_cross_entropy(moe_tensor **out, moe_tensor *logits, moe_tensor *targets,
                             int64_t ignore_index);
/* weight [V D], ids (any shape, integer) → [..., D]. */
moe_status moe_embedding(moe_tensor **out, moe_tensor *weight, moe_tensor *ids);

/* ---- indexing and shape: core/ops/index.c, core/ops/join.c, core/ops/sort.c */
/* out[i][j] = a[index[i][j]][j] (dim 0), like torch.gather. */
moe_status moe_gather(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index);
/* out = a, then out[index[i][j]][j] += src[i][j] (dim 0). */
moe_status moe_scatter_add(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index,
                           moe_tensor *src);
/* Rows (along DIM) of A picked by the 1-D INDEX. */
moe_status moe_index_select(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index);
/* out = a, then out.select(dim, index[i]) += src.select(dim, i). */
moe_status moe_index_add(moe_tensor **out, moe_tensor *a, int dim, moe_tensor *index,
                         moe_tensor *src);
moe_status moe_cat(moe_tensor **out, int n, moe_tensor *const *tensors, int dim);
moe_status moe_stack(moe_tensor **out, int n, moe_tensor *const *tensors, int dim);
/* Split A along DIM into N pieces of SIZES (views). */
moe_status moe_split(moe_tensor **outs, moe_tensor *a, int n, const int64_t *sizes, int dim);
/* i64 [..., num_classes] (no grad). */
moe_status moe_one_hot(moe_tensor **out, moe_tensor *index, int64_t num_classes);
/* K largest (or smallest) along DIM, sorted; ties toward the lower index.
 * values differentiable; indices i64. */
moe_status moe_topk(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int64_t k, int dim,
                    bool largest);
/* Stable sort along DIM. values differentiable; indices i64 (may be NULL). */
moe_status moe_sort(moe_tensor **values, moe_tensor **indices, moe_tensor *a, int dim,
                    bool descending);
moe_status moe_argsort(moe_tensor **out, moe_tensor *a, int dim, bool descending);
/* Counts of each value of the 1-D non-negative integer INPUT (no grad);
 * WEIGHTS (same length, may be NULL) sums weights instead → f32/f64. Length
 * max(minlength, max+1). */
moe_status moe_bincount(moe_tensor **out, moe_tensor *input, moe_tensor *weights,
                        int64_t minlength);
/* BINS equal-width bins over [lo, hi] (like torch.histc; values outside
 * ignored; lo == hi: use the data's min and max). No grad. */
moe_status moe_histogram(moe_tensor **out, moe_tensor *a, int64_t bins, double lo, double hi);

#ifdef __cplusplus
}
#endif
#endif
