/* quantile.c — the quantiles of quantile-balancing routing (see quantile.h). */
#include <stdlib.h>

#include "quantile.h"
#include "router.h"

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

moe_status moe_cpu_qb_quantiles(moe_dtype dt, double *q, const void *z, const float *beta, int64_t T,
                                int64_t E, int64_t K)
{
    int64_t n = T * K / E; /* T·K divisible by E: checked by the caller */
    size_t na = (size_t)(T > 0 ? T : 1), nc = (size_t)(T > E ? T : E);
    double *alpha = malloc(sizeof(double) * na);
    double *col = malloc(sizeof(double) * nc);
    if (!alpha || !col) {
        free(alpha), free(col);
        return moe_fail(MOE_ERR_NOMEM, "router-forward", "out of memory for quantile balancing (%lld bytes)",
                        (long long)(sizeof(double) * (na + nc)));
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
