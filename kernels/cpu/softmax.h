/* softmax.h — CPU loops behind softmax, log-softmax and logsumexp
 * (core/ops/softmax.c); the twin of moe_cuda_softmax in kernels/cuda/reduce.h. */
#ifndef MOELAB_CPU_SOFTMAX_H
#define MOELAB_CPU_SOFTMAX_H

#include <stdint.h>

#include "../../core/dtype.h"

/* What a row becomes (the numbers are the CUDA kernel's MODE argument). */
typedef enum moe_cpu_softmax_mode {
    MOE_CPU_SOFTMAX,     /* out [O N] */
    MOE_CPU_LOG_SOFTMAX, /* out [O N] */
    MOE_CPU_LOGSUMEXP,   /* out [O]; all -inf (or N = 0) → -inf */
} moe_cpu_softmax_mode;

/* The softmax family over the rows of a contiguous x [O N], max-subtracted,
 * in DT (MOE_F32 or MOE_F64). */
void moe_cpu_softmax(moe_dtype dt, void *out, const void *x, int64_t O, int64_t N,
                     moe_cpu_softmax_mode mode);

#endif
