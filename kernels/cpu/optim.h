/* optim.h — CPU loops behind the optimizers and gradient clipping
 * (core/train/adamw.c, sgd.c, clip.c).
 *
 * Every buffer is contiguous, of N elements, in DTYPE (f32 or f64): the
 * parameter, its gradient and its state share one dtype, as in PyTorch.
 * Arithmetic runs in DTYPE, in PyTorch's order of operations, so f32
 * results agree with PyTorch's to the last bit or two. The loops are
 * elementwise, so results do not depend on the thread count. */
#ifndef MOELAB_CPU_OPTIM_H
#define MOELAB_CPU_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"

/* The update loops run over many parameters at once, in one parallel
 * region: every parameter's elements are cut into fixed chunks, and the
 * chunks of all of them are handed to the threads as they free up (a
 * parameter a step used to cost a region of its own, and the slower thread
 * set the pace of each). The chunks do not depend on the thread count.
 *
 * GRAD_SCALE multiplies each gradient element first, in the gradient's own
 * precision, as clipping's in-place scaling would (1: none; x·1 is x, so
 * the result is the same bits): a trainer that clips folds the scale into
 * the update instead of a pass of its own over the gradients. */

/* One AdamW step (PyTorch's AdamW, no amsgrad), with g = grad·grad_scale:
 *   p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / bc1) · m / (√v / √bc2 + eps)
 * with bc1 = 1 − β1^t, bc2 = 1 − β2^t for the parameter's step t. */
typedef struct moe_cpu_adamw_step {
    double lr, beta1, beta2, eps, weight_decay; /* weight_decay 0: no decay */
    double bias_correction1, bias_correction2_sqrt;
    double grad_scale;
} moe_cpu_adamw_step;

/* One parameter of a multi-tensor update: N elements of DTYPE (f32 or f64)
 * in each buffer. */
typedef struct moe_cpu_adamw_item {
    moe_dtype dtype;
    void *param, *exp_avg, *exp_avg_sq;
    const void *grad;
    int64_t n;
    moe_cpu_adamw_step step;
} moe_cpu_adamw_item;
void moe_cpu_adamw(int count, const moe_cpu_adamw_item *items);

/* One SGD step (PyTorch's SGD), with g = grad·grad_scale:
 *   d ← g + wd·p;  with momentum μ: b ← d on the first step, else μ·b + (1 − τ)·d,
 *   then d ← d + μ·b (nesterov) or d ← b;  p ← p − lr·d.
 * BUF is NULL when μ = 0. */
typedef struct moe_cpu_sgd_step {
    double lr, momentum, dampening, weight_decay, grad_scale;
    bool nesterov;
    bool first; /* the buffer has no value yet: start it at d */
} moe_cpu_sgd_step;

typedef struct moe_cpu_sgd_item {
    moe_dtype dtype;
    void *param, *buf;
    const void *grad;
    int64_t n;
    moe_cpu_sgd_step step;
} moe_cpu_sgd_item;
void moe_cpu_sgd(int count, const moe_cpu_sgd_item *items);

/* Σ x² over COUNT buffers (X[i]: N[i] elements of DTYPE[i]), in double, in
 * one parallel region. Each buffer is summed in fixed slices added in order,
 * and the buffers' sums are added in order: the same bits for any thread
 * count. */
typedef struct moe_cpu_span {
    moe_dtype dtype;
    const void *data;
    int64_t n;
} moe_cpu_span;
double moe_cpu_sum_squares(int count, const moe_cpu_span *spans);

/* x ← x·scale. */
void moe_cpu_scale(moe_dtype dtype, void *x, int64_t n, double scale);

#endif
