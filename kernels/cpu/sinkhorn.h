/* sinkhorn.h — Sinkhorn-balanced selection on the CPU (sinkhorn.c): the
 * per-expert offsets that the router adds to the logits before its top-k.
 *
 * Dimension letters: T tokens, E experts. */
#ifndef MOELAB_CPU_SINKHORN_H
#define MOELAB_CPU_SINKHORN_H

#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

/* LOG_D1 [E] = log d1 of Megatron's Sinkhorn balancing of exp(z) over the
 * valid rows of Z [T E] (DT f32 or f64; VALID [T] or NULL): selecting the
 * top-k of z + log d1 is selecting the top-k of d1·exp(z)·d0. ITERATIONS (or
 * NULL) gets the number of iterations. Zero offsets when no row is valid.
 * Errors: out of memory. */
moe_status moe_cpu_sinkhorn_log_offsets(moe_dtype dt, double *log_d1, int *iterations, const void *z,
                                        const uint8_t *valid, int64_t T, int64_t E);

#endif
