/* nn.h — CPU loops behind core/ops/nn.c, the twins of kernels/cuda/nn.h:
 * the same arguments (host pointers), contiguous buffers in the compute dtype
 * DT (MOE_F32 or MOE_F64), row sums in double, parameter gradients as
 * per-chunk double partials DWP/DBP [H D] (H = ceil(R / CHUNK)) that
 * chunks_sum adds in chunk order. R rows, D the normalised dim, N samples,
 * C classes, I ids. An output pointer may be NULL where noted. */
#ifndef MOELAB_CPU_NN_H
#define MOELAB_CPU_NN_H

#include <stdint.h>

#include "../../core/dtype.h"

/* y [R D] = x r w, rinv [R] = 1/sqrt(mean(x²) + eps) */
void moe_cpu_rms_fwd(moe_dtype dt, void *y, void *rinv, const void *x, const void *w, int64_t R,
                     int64_t D, double eps);
/* dx (may be NULL) = r (g w - x r² mean(g w x)); dwp (may be NULL) [H D] =
 * per CHUNK rows sum of g x r */
void moe_cpu_rms_bwd(moe_dtype dt, void *dx, double *dwp, const void *g, const void *x, const void *w,
                     const void *rinv, int64_t R, int64_t D, int64_t chunk);
/* y = (x - mean) rstd w + b; mean, rstd [R] */
void moe_cpu_ln_fwd(moe_dtype dt, void *y, void *mean, void *rstd, const void *x, const void *w,
                    const void *b, int64_t R, int64_t D, double eps);
/* dx = rstd (g w - mean(g w) - x̂ mean(g w x̂)); dwp += g x̂, dbp += g per
 * chunk (each may be NULL) */
void moe_cpu_ln_bwd(moe_dtype dt, void *dx, double *dwp, double *dbp, const void *g, const void *x,
                    const void *w, const void *mean, const void *rstd, int64_t R, int64_t D,
                    int64_t chunk);
/* out [D] = sum over the NCH chunks, in order, of p [NCH D] */
void moe_cpu_chunks_sum(moe_dtype dt, void *out, const double *p, int64_t nch, int64_t D);
/* cross-entropy's targets t [N]: *count gets how many are not IGNORE; the
 * return is the position of the first that is neither IGNORE nor in [0, C),
 * or -1 when all are fine (then *count is complete) */
int64_t moe_cpu_ce_targets(const int64_t *t, int64_t N, int64_t C, int64_t ignore, int64_t *count);
/* per row: lse [N] = log sum exp x, loss [N] (double) = lse - x[t]; 0 where t == ignore */
void moe_cpu_ce_fwd(moe_dtype dt, double *loss, void *lse, const void *x, const int64_t *t, int64_t N,
                    int64_t C, int64_t ignore);
/* dx [N C] = s (softmax - onehot) on counted rows, 0 on ignored ones, with
 * s = g[0] / count (g: one DT element, the upstream gradient; s = 0 when
 * count is 0). */
void moe_cpu_ce_bwd(moe_dtype dt, void *dx, const void *x, const void *lse, const int64_t *t, int64_t N,
                    int64_t C, int64_t ignore, const void *g, double count);
/* dw [V D] += g [I D] rows at ids; ids in order for each column */
void moe_cpu_emb_bwd(moe_dtype dt, void *dw, const void *g, const int64_t *ids, int64_t I, int64_t D);

#endif
