/* capacity.c — expert capacity: the formulas.
 *
 * Dimension letters: T tokens, K top-k, E experts, C capacity per expert.
 *
 * Formulas (T = valid tokens):
 *   megatron    C = ⌈(T·K/E)·cf⌉
 *   megablocks  C = ⌊cf·(K·T·ep/E)⌋, and C = 0 means dropless
 * C is clamped to T: an expert can never receive more than T tokens (each
 * token picks an expert at most once), so C >= T drops nothing, and a huge cf
 * never sizes a huge buffer.
 *
 * Dropping the slots over capacity is kernels/cpu/capacity.c. */
#include <math.h>

#include "moe_internal.h"

int64_t moe_capacity_of(const moe_router_config *cfg, int64_t valid_t)
{
    double cf = cfg->capacity_factor;
    if (isnan(cf)) return -1;
    double K = (double)cfg->top_k, E = (double)cfg->experts, T = (double)valid_t, c;
    if (cfg->capacity_formula == MOE_CAPACITY_MEGABLOCKS) {
        c = floor(cf * (K * T * (double)cfg->ep_size / E));
        if (c <= 0) return -1; /* dropless */
    } else {
        c = ceil((T * K / E) * cf);
    }
    if (c >= T) return valid_t;
    return c < 0 ? 0 : (int64_t)c;
}
