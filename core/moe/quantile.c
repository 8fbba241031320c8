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
 * threshold. The step averages q over its micro-batches and data-parallel
 * replicas (q̄) and sets β ← ema·β + (1 − ema)·q̄, re-centred to zero mean. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe_internal.h"

static int cmp_desc(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* x − y in the storage precision of DT. */
static double sub_dt(double x, double y, moe_dtype dt)
{
    return dt == MOE_F32 ? (double)((float)x - (float)y) : x - y;
}

moe_status moe_qb_quantiles(double *q, const void *z, moe_dtype dt, int64_t T, int64_t E, int64_t K,
                            const float *beta)
{
    int64_t n = T * K / E; /* T·K divisible by E: checked by the caller */
    double *alpha = malloc(sizeof(double) * MOE_NZ(T));
    double *col = malloc(sizeof(double) * MOE_NZ(T > E ? T : E));
    if (!alpha || !col) {
        free(alpha), free(col);
        return moe_fail(MOE_ERR_NOMEM, "router-forward", "out of memory for quantile balancing");
    }
    for (int64_t t = 0; t < T; t++) { /* α_t: (K+1)-th largest of z_t − β */
        for (int64_t e = 0; e < E; e++) col[e] = sub_dt(moe_ld(z, dt, t * E + e), beta[e], dt);
        qsort(col, (size_t)E, sizeof(double), cmp_desc);
        alpha[t] = col[K];
    }
    for (int64_t e = 0; e < E; e++) { /* q_e: (n+1)-th largest over tokens of z − α */
        for (int64_t t = 0; t < T; t++) col[t] = sub_dt(moe_ld(z, dt, t * E + e), alpha[t], dt);
        qsort(col, (size_t)T, sizeof(double), cmp_desc);
        q[e] = col[n < T ? n : T - 1];
    }
    free(alpha), free(col);
    return MOE_OK;
}

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
