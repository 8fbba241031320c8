/* optim.h — optimizers over named parameters (AdamW, SGD) and gradient
 * clipping.
 *
 * An optimizer holds references to its parameters (leaf tensors, f32 or f64,
 * contiguous, on the CPU) under their names, and per parameter its state:
 * the step count and the moment tensors (AdamW: "exp_avg", "exp_avg_sq";
 * SGD with momentum: "momentum_buffer"), of the parameter's shape and dtype.
 * moe_optimizer_step updates every parameter that has a gradient, in place
 * (the tensors keep their identity) and outside autograd; a parameter without
 * a gradient is skipped and its step count stays, as in PyTorch.
 *
 *     moe_adamw_config cfg;
 *     moe_adamw_config_default(&cfg);            // lr 3e-4, betas (0.9, 0.95), …
 *     moe_optimizer *opt;
 *     moe_adamw_new(&opt, n, names, params, &cfg);
 *     for (int64_t s = 0; s < total; s++) {
 *         … forward, moe_backward(loss, NULL, false) …
 *         double norm;
 *         moe_clip_grad_norm(&norm, n, params, 1.0);
 *         double lr;
 *         moe_lr_schedule_at(&sched, s, &lr);       // train/schedule.h
 *         moe_optimizer_set_lr(opt, lr);
 *         moe_optimizer_step(opt);
 *         moe_optimizer_zero_grad(opt);
 *     }
 *     moe_optimizer_free(opt);
 *
 * Errors name the Scheme procedure ("make-adamw", "optimizer-step!", …) and
 * leave the optimizer and the parameters unchanged. */
#ifndef MOELAB_TRAIN_OPTIM_H
#define MOELAB_TRAIN_OPTIM_H

#include <stdbool.h>
#include <stdint.h>

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_optimizer moe_optimizer;

typedef enum moe_optim_kind {
    MOE_OPTIM_ADAMW,
    MOE_OPTIM_SGD,
    MOE_OPTIM_KIND_COUNT
} moe_optim_kind;
const char *moe_optim_kind_name(moe_optim_kind k); /* "adamw", "sgd" */
bool moe_optim_kind_parse(const char *name, moe_optim_kind *out);

/* ---- AdamW: PyTorch's torch.optim.AdamW (decoupled decay, then the
 * bias-corrected Adam step, eps outside the square root) ------------------ */
#define MOE_OPTIM_MAX_NO_DECAY 16
#define MOE_OPTIM_NAME_MAX 128 /* longest parameter name, with its NUL */
typedef struct moe_adamw_config {
    double lr, beta1, beta2, eps, weight_decay;
    /* A parameter whose name contains one of these substrings gets no decay. */
    int n_no_decay;
    char no_decay[MOE_OPTIM_MAX_NO_DECAY][MOE_OPTIM_NAME_MAX];
} moe_adamw_config;
/* lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1, no decay for
 * names containing "norm" or "bias". */
void moe_adamw_config_default(moe_adamw_config *cfg);
/* OP names the caller in the message (NULL: "make-adamw"). */
moe_status moe_adamw_config_validate(const moe_adamw_config *cfg, const char *op);

/* ---- SGD: PyTorch's torch.optim.SGD (coupled weight decay g + wd·p,
 * momentum buffer started at the first gradient) ------------------------ */
typedef struct moe_sgd_config {
    double lr, momentum, dampening, weight_decay;
    bool nesterov;
} moe_sgd_config;
/* lr 1e-2, no momentum, no dampening, no decay, not nesterov. */
void moe_sgd_config_default(moe_sgd_config *cfg);
moe_status moe_sgd_config_validate(const moe_sgd_config *cfg, const char *op);

/* ---- making one -------------------------------------------------------------
 * N parameters PARAMS with their NAMES (unique, non-empty, shorter than
 * MOE_OPTIM_NAME_MAX). Each is retained; each must be a leaf, f32 or f64,
 * contiguous, on the CPU, and no two may share storage. The state starts at
 * zero (step 0). */
moe_status moe_adamw_new(moe_optimizer **out, int n, const char *const *names,
                         moe_tensor *const *params, const moe_adamw_config *cfg);
moe_status moe_sgd_new(moe_optimizer **out, int n, const char *const *names,
                       moe_tensor *const *params, const moe_sgd_config *cfg);
void moe_optimizer_free(moe_optimizer *opt); /* NULL is fine */

/* ---- using it ------------------------------------------------------------------ */
/* One update of every parameter with a gradient (same shape, dtype and
 * device as the parameter; any layout). All gradients are checked before
 * anything changes. Gradients with NaN or Inf are used as they are (as
 * PyTorch does): check the norm from moe_clip_grad_norm to skip a step. */
moe_status moe_optimizer_step(moe_optimizer *opt);
/* The same with every gradient multiplied by GRAD_SCALE (finite, > 0) as it
 * is read, in the gradient's precision: the update moe_clip_grad_norm
 * followed by moe_optimizer_step makes, bit for bit, when GRAD_SCALE is
 * the clipping factor max / (norm + 1e-6), without the pass that scales
 * the gradients in memory (they keep their values). */
moe_status moe_optimizer_step_scaled(moe_optimizer *opt, double grad_scale);
/* Drop every parameter's gradient (PyTorch's zero_grad(set_to_none=True)). */
void moe_optimizer_zero_grad(moe_optimizer *opt);
double moe_optimizer_lr(const moe_optimizer *opt);
/* A finite LR >= 0; anything else fails and keeps the old one. */
moe_status moe_optimizer_set_lr(moe_optimizer *opt, double lr);
moe_optim_kind moe_optimizer_kind(const moe_optimizer *opt);
/* Completed moe_optimizer_step calls. */
int64_t moe_optimizer_steps(const moe_optimizer *opt);
/* The configuration (NULL when the optimizer is of the other kind). */
const moe_adamw_config *moe_optimizer_adamw_config(const moe_optimizer *opt);
const moe_sgd_config *moe_optimizer_sgd_config(const moe_optimizer *opt);

/* The parameters, in the order given (borrowed). */
int moe_optimizer_param_count(const moe_optimizer *opt);
const char *moe_optimizer_param_name(const moe_optimizer *opt, int i);
moe_tensor *moe_optimizer_param(const moe_optimizer *opt, int i);
/* Whether parameter I gets weight decay. */
bool moe_optimizer_param_decays(const moe_optimizer *opt, int i);

/* ---- state, for checkpoints --------------------------------------------------
 * The state is a list of named tensors, in a fixed order:
 *   "step"                      i64 [], the completed steps of the optimizer
 *   per parameter, in order:
 *   "<name>.step"               i64 [], the steps that parameter took
 *   "<name>.exp_avg", "<name>.exp_avg_sq"    (AdamW)
 *   "<name>.momentum_buffer"                 (SGD with momentum)
 * The moment tensors are the live ones (borrowed: copy them to keep a
 * snapshot); the step tensors are made on each call of moe_optimizer_state. */
int moe_optimizer_state_count(const moe_optimizer *opt);
/* Entry I: its name (borrowed, valid while OPT lives) and a new reference to
 * its tensor. */
moe_status moe_optimizer_state(const moe_optimizer *opt, int i, const char **name,
                               moe_tensor **value);
/* Load a state: N entries NAMES/VALUES, exactly the names above (any order),
 * each of its entry's shape; step counts non-negative integers, moments any
 * float dtype (converted), finite. Everything is checked before anything
 * changes; on failure the optimizer is as it was. */
moe_status moe_optimizer_load_state(moe_optimizer *opt, int n, const char *const *names,
                                    moe_tensor *const *values);

/* ---- gradient clipping (PyTorch's clip_grad_norm_ with the 2-norm) ------------
 * *TOTAL_NORM ← the L2 norm of all the gradients of PARAMS together (those
 * without a gradient count as zero); when it exceeds MAX_NORM (> 0), every
 * gradient is scaled by MAX_NORM / (TOTAL_NORM + 1e-6). A NaN or infinite
 * norm is returned and the gradients are left as they are. Contiguous
 * gradients are scaled in place; a gradient that is a view of other memory
 * (or shared between parameters) is replaced by a scaled copy. */
moe_status moe_clip_grad_norm(double *total_norm, int n, moe_tensor *const *params,
                              double max_norm);
/* The same norm, without clipping. */
moe_status moe_grad_norm(double *total_norm, int n, moe_tensor *const *params);
/* The factor moe_clip_grad_norm scales the gradients by for total norm NORM
 * and maximum MAX_NORM (finite, > 0; else an error naming OP): MAX_NORM /
 * (NORM + 1e-6) when that is below 1 and NORM is finite, else 1. Pass it to
 * moe_optimizer_step_scaled to clip inside the update. */
moe_status moe_clip_scale(double *scale, double norm, double max_norm, const char *op);

#ifdef __cplusplus
}
#endif
#endif
