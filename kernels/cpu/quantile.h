/* quantile.h — the quantiles of quantile-balancing routing on the CPU
 * (quantile.c); core/moe/quantile.c updates β from them.
 *
 * Dimension letters: T tokens, E experts, K top-k. */
#ifndef MOELAB_CPU_QUANTILE_H
#define MOELAB_CPU_QUANTILE_H

#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

/* Q [E] = the per-expert quantiles of one micro-batch of logits Z [T E] (DT
 * f32 or f64; T·K divisible by E) under the bias BETA [E]:
 *     α_t = the (K+1)-th largest of z_t − β            (the token's threshold)
 *     q_e = the (T·K/E + 1)-th largest of z_{·e} − α    (over the tokens)
 * Differences are taken in the storage precision of DT. Errors: out of memory. */
moe_status moe_cpu_qb_quantiles(moe_dtype dt, double *q, const void *z, const float *beta, int64_t T,
                                int64_t E, int64_t K);

#endif
