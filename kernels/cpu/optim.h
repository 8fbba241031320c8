/* optim.h — CPU loops behind the optimizers and gradient clipping
 * (core/train/adamw.c, sgd.c, clip.c).
 *
 * Every buffer is contiguous, of N elements, in DTYPE (f32 or f64): the
 * parameter, its gradient and its state share one dtype, as in PyTorch.
 * Arithmetic runs in double; each value that PyTorch keeps in a tensor
 * between its elementwise ops (the decayed parameter, the moments, the
 * momentum buffer) is rounded to DTYPE where PyTorch rounds it, so f32
 * results agree with PyTorch's to the last bit or two. Elementwise loops
 * split by element, so results do not depend on the thread count. */
#ifndef MOELAB_CPU_OPTIM_H
#define MOELAB_CPU_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"

/* One AdamW step for one parameter (PyTorch's AdamW, no amsgrad):
 *   p ← p·(1 − lr·wd);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
 *   p ← p − (lr / bc1) · m / (√v / √bc2 + eps)
 * with bc1 = 1 − β1^t, bc2 = 1 − β2^t for the parameter's step t. */
typedef struct moe_cpu_adamw_step {
    double lr, beta1, beta2, eps, weight_decay; /* weight_decay 0: no decay */
    double bias_correction1, bias_correction2_sqrt;
} moe_cpu_adamw_step;
void moe_cpu_adamw(moe_dtype dtype, void *param, const void *grad, void *exp_avg,
                   void *exp_avg_sq, int64_t n, const moe_cpu_adamw_step *s);

/* One SGD step for one parameter (PyTorch's SGD):
 *   d ← g + wd·p;  with momentum μ: b ← d on the first step, else μ·b + (1 − τ)·d,
 *   then d ← d + μ·b (nesterov) or d ← b;  p ← p − lr·d.
 * BUF is NULL when μ = 0. */
typedef struct moe_cpu_sgd_step {
    double lr, momentum, dampening, weight_decay;
    bool nesterov;
    bool first; /* the buffer has no value yet: start it at d */
} moe_cpu_sgd_step;
void moe_cpu_sgd(moe_dtype dtype, void *param, const void *grad, void *buf, int64_t n,
                 const moe_cpu_sgd_step *s);

/* Σ x² over N elements, in double, summed in fixed chunks added in order
 * (the same bits for any thread count). */
double moe_cpu_sum_squares(moe_dtype dtype, const void *x, int64_t n);
/* x ← x·scale. */
void moe_cpu_scale(moe_dtype dtype, void *x, int64_t n, double scale);

#endif
