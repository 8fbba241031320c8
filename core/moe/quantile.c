/* quantile.c — quantile-balancing routing (Megatron-Core): a per-expert dual
 * variable β, selection by top-K of z − β, and β's update from quantiles of
 * the logits (dual coordinate descent; no auxiliary loss).
 *
 * Dimension letters: T tokens, E experts, K top-k.
 *
 * For one micro-batch of logits z [T E] (in the router dtype; f32 values are
 * combined in f32 arithmetic, as the reference does):
 *     α_t = the (K+1)-th largest of z_t − β            (the token's threshold)
 *     q_e = the (T·K/E + 1)-th largest of z_{·e} − α    (over the tokens)
 * so that with β = q exactly T·K/E tokens would put expert e above their
 * threshold (the loops: kernels/cpu/quantile.c). The step averages q over its
 * micro-batches and data-parallel replicas (q̄) and sets β ← ema·β + (1 − ema)·q̄,
 * re-centred to zero mean: that update is this file. */
#include "moe_internal.h"

void moe_qb_update(float *beta, const double *qbar, int64_t E, double ema)
{
    /* f32 arithmetic, as the reference keeps β in f32 */
    float a = (float)ema, sum = 0;
    for (int64_t e = 0; e < E; e++) {
        beta[e] = a * beta[e] + (1.0f - a) * (float)qbar[e];
        sum += beta[e];
    }
    float mean = sum / (float)E;
    for (int64_t e = 0; e < E; e++) beta[e] -= mean;
}
