/* balance.h — the token loops of the balancing losses on the CPU: the
 * per-scope statistics the loss tables multiply, the gradient through the
 * loss scores, and the z-loss sum. core/moe/aux_loss.c builds the tables and
 * the autograd node around them; kernels/cuda/router.h computes the same
 * statistics and gradient inside its fused router passes.
 *
 * Dimension letters: T tokens, E experts, K top-k, N scopes (contiguous
 * token ranges [bounds[n], bounds[n+1]): the micro-batch, or one per
 * sequence/document).
 *
 * Loss scores p: the base scores s (softmax), or s/(Σ_j s_j + ε) for the
 * normalised score functions. Sums over tokens run in fixed chunks of
 * MOE_CPU_BALANCE_CHUNK tokens reduced in order: results do not depend on
 * the thread count. */
#ifndef MOELAB_CPU_BALANCE_H
#define MOELAB_CPU_BALANCE_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"
#include "../../core/moe/route_modes.h"

#define MOE_CPU_BALANCE_CHUNK 256

/* The scope of token T: the last n with bounds[n] <= t (BOUNDS [N+1] sorted). */
static inline int64_t moe_cpu_scope_of(const int64_t *bounds, int64_t n, int64_t t)
{
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (bounds[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Per-scope sums over the valid tokens (VALID [T] or NULL: all): P [N E] the
 * loss scores of S [T E] (DT f32 or f64; ROWSUM [T] gives Σ_j s_j for the
 * normalised scores, or NULL to sum the row), TN [N] the valid tokens, C [N E]
 * the counts of COUNT_IDS [T K]. P, C and TN must be zero on entry. Errors:
 * out of memory (named as OP). */
moe_status moe_cpu_balance_stats(moe_dtype dt, double *P, double *C, double *Tn, const void *s,
                                 const double *rowsum, moe_score_fn score, double eps,
                                 const uint8_t *valid, const int64_t *count_ids, const int64_t *bounds,
                                 int64_t N, int64_t T, int64_t E, int64_t K, const char *op);

/* The backward of L = Σ_n Σ_i W[n][i]·P[n][i] (+ the z term) for one
 * upstream gradient G: dz_t = G·(J_p(z_t)ᵀ W[seg(t)] + z_t), with the z term
 * z_t = Z_COEFF·2·lse_t/Z_COUNT·softmax(z_t) when LSE is given and Z_COUNT > 0.
 * Invalid tokens get 0. */
typedef struct moe_cpu_balance_grad {
    int64_t T, E;
    moe_dtype dtype;         /* of s, z and dz: f32 or f64 */
    const void *s, *z;       /* [T E] base scores, logits */
    const uint8_t *valid;    /* [T] or NULL */
    moe_score_fn score;
    double eps, offset;      /* ε of the normalised scores; the offset added to them */
    int64_t n_segs;
    const int64_t *seg_bounds; /* [n_segs+1] token ranges on which W is constant */
    const double *W;         /* [n_segs E] (f64 rows) */
    const float *Wf;         /* [n_segs E] the same in f32 (f32 rows) */
    const double *lse;       /* [T] logsumexp z, or NULL: no z term */
    double z_coeff, z_count;
    double g;
    void *dz;                /* [T E], fully written */
} moe_cpu_balance_grad;
moe_status moe_cpu_balance_backward(const moe_cpu_balance_grad *p, const char *op);

/* *SUM = Σ lse_t² and *COUNT = the number of valid tokens (VALID [T] or NULL),
 * summed in token order. */
void moe_cpu_z_sum(double *sum, double *count, const double *lse, const uint8_t *valid, int64_t T);

#endif
