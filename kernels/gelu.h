/* gelu.h — the constants of GELU, for every kernel that evaluates it (the
 * elementwise maps and the fused expert MLP, CPU and CUDA):
 *   erf form   gelu(x) = x Φ(x) = x/2 (1 + erf(x/√2)),  Φ'(x) = e^(-x²/2)/√(2π)
 *   tanh form  gelu(x) ≈ x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))
 * Double literals; an f32 kernel casts them once. */
#ifndef MOELAB_KERNELS_GELU_H
#define MOELAB_KERNELS_GELU_H

#define MOE_GELU_SQRT1_2 0.70710678118654752440      /* 1/√2 */
#define MOE_GELU_INV_SQRT_2PI 0.39894228040143267794 /* 1/√(2π) */
#define MOE_GELU_TANH_C 0.79788456080286535588       /* √(2/π) */
#define MOE_GELU_TANH_K 0.044715                     /* the cubic's coefficient */

#endif
