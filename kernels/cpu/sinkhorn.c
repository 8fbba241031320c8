/* sinkhorn.c — the selection offsets of Sinkhorn-balanced routing
 * (Megatron's "sinkhorn" routing) on the CPU; see sinkhorn.h.
 *
 * Dimension letters: T valid tokens, E experts.
 *
 * The cost exp(z) [T E] is balanced by alternating normalisations
 *     d0_t = (1/T) / (Σ_j d1_j·c_tj + ε),   d1_j = (1/E) / (Σ_t d0_t·c_tj + ε)
 * (ε = 1e-8) until the mean change of d1 is at most 1e-4, and each token then
 * selects the top-k of d1_j·c_tj·d0_t. Since d0_t > 0 and exp is monotone,
 * that is the top-k of z_tj + log d1_j: only log d1 [E] leaves this file.
 * Computed in double (Megatron uses f32; the same iteration, fewer
 * overflows). Column sums use fixed chunks of SINKHORN_CHUNK tokens reduced
 * in order: the result does not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "sinkhorn.h"

#define SINKHORN_EPS 1e-8
#define SINKHORN_TOL 1e-4
#define SINKHORN_MAX_ITER 100000
#define SINKHORN_CHUNK 256

moe_status moe_cpu_sinkhorn_log_offsets(moe_dtype dt, double *log_d1, int *iterations, const void *z,
                                        const uint8_t *valid, int64_t T, int64_t E)
{
    int64_t Tv = 0;
    for (int64_t t = 0; t < T; t++) Tv += !valid || valid[t];
    for (int64_t j = 0; j < E; j++) log_d1[j] = 0;
    if (iterations) *iterations = 0;
    if (Tv == 0) return MOE_OK;

    int64_t nch = (Tv + SINKHORN_CHUNK - 1) / SINKHORN_CHUNK;
    double *cost = malloc(sizeof(double) * (size_t)(Tv * E));   /* [Tv E] */
    double *d0 = malloc(sizeof(double) * (size_t)Tv);            /* [Tv] */
    double *d1 = malloc(sizeof(double) * (size_t)E * 2);         /* [E] new, [E] old */
    double *part = malloc(sizeof(double) * (size_t)(nch * E));   /* [chunks E] */
    if (!cost || !d0 || !d1 || !part) {
        free(cost), free(d0), free(d1), free(part);
        return moe_fail(MOE_ERR_NOMEM, "router-forward", "out of memory for sinkhorn: %lld bytes for %lld tokens x %lld experts",
                        (long long)(sizeof(double) * (size_t)(Tv * E + Tv + 2 * E + nch * E)), (long long)Tv, (long long)E);
    }
    for (int64_t t = 0, r = 0; t < T; t++) {
        if (valid && !valid[t]) continue;
        for (int64_t j = 0; j < E; j++) cost[r * E + j] = exp(moe_ld(z, dt, t * E + j));
        r++;
    }
    double *d1_old = d1 + E;
    for (int64_t j = 0; j < E; j++) d1[j] = d1_old[j] = 1.0;
    double err = 1e9;
    int it = 0;
    while (err > SINKHORN_TOL && it < SINKHORN_MAX_ITER) {
#pragma omp parallel for if (Tv * E > 32768) schedule(static)
        for (int64_t r = 0; r < Tv; r++) {
            double acc = 0;
            for (int64_t j = 0; j < E; j++) acc += d1[j] * cost[r * E + j];
            d0[r] = (1.0 / (double)Tv) * 1.0 / (acc + SINKHORN_EPS);
        }
#pragma omp parallel for if (Tv * E > 32768) schedule(static)
        for (int64_t c = 0; c < nch; c++) {
            double *pc = part + c * E;
            for (int64_t j = 0; j < E; j++) pc[j] = 0;
            int64_t hi = (c + 1) * SINKHORN_CHUNK < Tv ? (c + 1) * SINKHORN_CHUNK : Tv;
            for (int64_t r = c * SINKHORN_CHUNK; r < hi; r++)
                for (int64_t j = 0; j < E; j++) pc[j] += d0[r] * cost[r * E + j];
        }
        err = 0;
        for (int64_t j = 0; j < E; j++) {
            double col = 0;
            for (int64_t c = 0; c < nch; c++) col += part[c * E + j];
            d1[j] = (1.0 / (double)E) * 1.0 / (col + SINKHORN_EPS);
            err += fabs(d1_old[j] - d1[j]);
        }
        err /= (double)E;
        memcpy(d1_old, d1, sizeof(double) * (size_t)E);
        it++;
    }
    for (int64_t j = 0; j < E; j++) log_d1[j] = log(d1[j]);
    if (iterations) *iterations = it;
    free(cost), free(d0), free(d1), free(part);
    return MOE_OK;
}
