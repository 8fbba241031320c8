/* nn.h — CUDA kernels behind core/ops/nn.c (plain C, included in every
 * build; calls go through MOE_CUDA(), core/device.h).
 *
 * They mirror the CPU loops of nn.c one for one: same arguments (device
 * pointers), contiguous buffers in the compute dtype DT (MOE_F32 or MOE_F64),
 * row sums in double, parameter gradients as per-chunk double partials
 * DWP/DBP [H D] (H = ceil(R / CHUNK)) that chunks_sum adds in chunk order, so
 * results do not depend on the launch shape. Dimension letters as in nn.c:
 * R rows, D the normalised dim, N samples, C classes. Any output pointer that
 * the CPU kernel allows to be NULL may be NULL here too. */
#ifndef MOELAB_CUDA_NN_H
#define MOELAB_CUDA_NN_H

#include <stdint.h>

#include "../../core/dtype.h"
#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y [R D] = x r w, rinv [R] = 1/sqrt(mean(x²) + eps) */
moe_status moe_cuda_rms_fwd(moe_dtype dt, void *y, void *rinv, const void *x, const void *w,
                            int64_t R, int64_t D, double eps);
/* dx = r (g w - x r² mean(g w x)); dwp [H D] = per CHUNK rows sum of g x r */
moe_status moe_cuda_rms_bwd(moe_dtype dt, void *dx, double *dwp, const void *g, const void *x,
                            const void *w, const void *rinv, int64_t R, int64_t D, int64_t chunk);
/* y = (x - mean) rstd w + b; mean, rstd [R] */
moe_status moe_cuda_ln_fwd(moe_dtype dt, void *y, void *mean, void *rstd, const void *x,
                           const void *w, const void *b, int64_t R, int64_t D, double eps);
/* dx = rstd (g w - mean(g w) - x̂ mean(g w x̂)); dwp += g x̂, dbp += g per chunk */
moe_status moe_cuda_ln_bwd(moe_dtype dt, void *dx, double *dwp, double *dbp, const void *g,
                           const void *x, const void *w, const void *mean, const void *rstd,
                           int64_t R, int64_t D, int64_t chunk);
/* out [D] = sum over the NCH chunks, in order, of p [NCH D] */
moe_status moe_cuda_chunks_sum(moe_dtype dt, void *out, const double *p, int64_t nch, int64_t D);
/* per row: lse [N] = log sum exp x, loss [N] (double) = lse - x[t]; 0 where t == ignore */
moe_status moe_cuda_ce_fwd(moe_dtype dt, double *loss, void *lse, const void *x, const int64_t *t,
                           int64_t N, int64_t C, int64_t ignore);
/* dx [N C] = s (softmax - onehot) on counted rows, 0 on ignored ones, with
 * s = g[0] / count (g: the upstream gradient, one DT element on the device;
 * s = 0 when count is 0). */
moe_status moe_cuda_ce_bwd(moe_dtype dt, void *dx, const void *x, const void *lse, const int64_t *t,
                           int64_t N, int64_t C, int64_t ignore, const void *g, double count);

#ifdef __cplusplus
}
#endif
#endif
