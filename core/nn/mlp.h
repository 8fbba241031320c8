/* mlp.h — the dense SwiGLU feed-forward block of a transformer layer.
 *
 * Dimension letters: D model dim, F inner width. Weights in the layout of a
 * linear layer (out × in), as the model's parameter names promise:
 *     w_gate [F D], w_up [F D], w_down [D F]
 *     out = (silu(x w_gateᵀ) ⊙ x w_upᵀ) w_downᵀ
 * It runs as the fused expert MLP with one expert (core/moe/experts.h): the
 * node keeps the two [T F] pre-activations for the backward, not every
 * intermediate of the composed ops. */
#ifndef MOELAB_NN_MLP_H
#define MOELAB_NN_MLP_H

#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OUT = the SwiGLU MLP applied to X [... D] (float; same shape and dtype
 * out). Differentiable in X and the three weights. */
moe_status moe_swiglu_mlp(moe_tensor **out, moe_tensor *x, moe_tensor *w_gate, moe_tensor *w_up,
                          moe_tensor *w_down);

#ifdef __cplusplus
}
#endif
#endif
