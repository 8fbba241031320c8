/* nn.cu — rms_norm, layer_norm and cross_entropy on the GPU (see nn.h).
 *
 * Row ops run one block per row (grid-stride over rows); each thread sums a
 * strided slice of the row in double and the block combines the partials
 * with warp shuffles in a fixed order, so a result depends only on the data
 * and the block size (fixed at ROW_THREADS). Parameter-gradient partials run
 * one thread per (chunk, column), rows of the chunk in order. */
#include <math.h>

#include "cuda_internal.h"
#include "device_math.cuh"
#include "nn.h"

enum { ROW_THREADS = 256 };

/* The sum of V over the block, returned to every thread. */
static __device__ double block_sum(double v) { return block_reduce(v, d_sum{}, 0.0); }

/* max as the CPU loop takes it: start from x[0], keep a larger value (a NaN
 * start stays NaN; a later NaN is skipped). Combined over the block with
 * fmax, which likewise ignores a NaN unless both are. */
template <typename T> static __device__ T block_max(T v) { return block_reduce(v, d_fmax{}, (T)NAN); }

static unsigned row_grid(int64_t rows) { return (unsigned)(rows < 1 ? 1 : rows > 65535 * 8 ? 65535 * 8 : rows); }

/* ---- rms_norm ---------------------------------------------------------------------------- */

template <typename T>
__global__ void rms_fwd_kernel(T *y, T *rinv, const T *x, const T *w, int64_t R, int64_t D, double eps)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *xr = x + r * D;
        T *yr = y + r * D;
        double ss = 0;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) ss += (double)xr[j] * xr[j];
        ss = block_sum(ss);
        T ri = (T)(1.0 / sqrt(ss / (double)D + eps));
        if (threadIdx.x == 0) rinv[r] = ri;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = xr[j] * ri * w[j];
    }
}

template <typename T>
__global__ void rms_dx_kernel(T *dx, const T *g, const T *x, const T *w, const T *rinv, int64_t R, int64_t D)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *gr = g + r * D, *xr = x + r * D;
        T ri = rinv[r];
        double dot = 0;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dot += (double)gr[j] * w[j] * xr[j];
        dot = block_sum(dot);
        T c = (T)((double)ri * ri * ri * dot / (double)D);
        T *dxr = dx + r * D;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) dxr[j] = ri * gr[j] * w[j] - xr[j] * c;
    }
}

/* dwp[ch][j] = sum over the chunk's rows of g x r */
template <typename T>
__global__ void rms_dw_kernel(double *dwp, const T *g, const T *x, const T *rinv, int64_t R, int64_t D,
                              int64_t chunk)
{
    int64_t nch = (R + chunk - 1) / chunk;
    MOE_GRID_STRIDE(e, nch * D)
    {
        int64_t ch = e / D, j = e % D, r1 = (ch + 1) * chunk < R ? (ch + 1) * chunk : R;
        double acc = 0;
        for (int64_t r = ch * chunk; r < r1; r++) acc += (double)(g[r * D + j] * x[r * D + j] * rinv[r]);
        dwp[e] = acc;
    }
}

/* ---- layer_norm -------------------------------------------------------------------------- */

template <typename T>
__global__ void ln_fwd_kernel(T *y, T *mean, T *rstd, const T *x, const T *w, const T *b, int64_t R,
                              int64_t D, double eps)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *xr = x + r * D;
        T *yr = y + r * D;
        double s = 0, v = 0;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) s += (double)xr[j];
        double mu = block_sum(s) / (double)D;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) v += ((double)xr[j] - mu) * ((double)xr[j] - mu);
        v = block_sum(v);
        T rs = (T)(1.0 / sqrt(v / (double)D + eps)), m = (T)mu;
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = rs;
        }
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = (xr[j] - m) * rs * w[j] + b[j];
    }
}

template <typename T>
__global__ void ln_dx_kernel(T *dx, const T *g, const T *x, const T *w, const T *mean, const T *rstd,
                             int64_t R, int64_t D)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *gr = g + r * D, *xr = x + r * D;
        T m = mean[r], rs = rstd[r];
        double sg = 0, sgx = 0;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            sg += (double)gr[j] * w[j];
            sgx += (double)gr[j] * w[j] * ((xr[j] - m) * rs);
        }
        sg = block_sum(sg);
        sgx = block_sum(sgx);
        T a = (T)(sg / (double)D), c = (T)(sgx / (double)D);
        T *dxr = dx + r * D;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            dxr[j] = rs * (gr[j] * w[j] - a - (xr[j] - m) * rs * c);
    }
}

/* dwp += g x̂, dbp += g over each chunk's rows (either may be NULL) */
template <typename T>
__global__ void ln_dwb_kernel(double *dwp, double *dbp, const T *g, const T *x, const T *mean,
                              const T *rstd, int64_t R, int64_t D, int64_t chunk)
{
    int64_t nch = (R + chunk - 1) / chunk;
    MOE_GRID_STRIDE(e, nch * D)
    {
        int64_t ch = e / D, j = e % D, r1 = (ch + 1) * chunk < R ? (ch + 1) * chunk : R;
        double aw = 0, ab = 0;
        for (int64_t r = ch * chunk; r < r1; r++) {
            T gv = g[r * D + j];
            aw += (double)(gv * ((x[r * D + j] - mean[r]) * rstd[r]));
            ab += (double)gv;
        }
        if (dwp) dwp[e] = aw;
        if (dbp) dbp[e] = ab;
    }
}

template <typename T>
__global__ void chunks_sum_kernel(T *out, const double *p, int64_t nch, int64_t D)
{
    MOE_GRID_STRIDE(j, D)
    {
        double acc = 0;
        for (int64_t ch = 0; ch < nch; ch++) acc += p[ch * D + j];
        out[j] = (T)acc;
    }
}

/* ---- cross_entropy ------------------------------------------------------------------------- */

template <typename T>
__global__ void ce_fwd_kernel(double *loss, T *lse, const T *x, const int64_t *t, int64_t N, int64_t C,
                              int64_t ignore)
{
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        int64_t ti = t[i];
        if (ti == ignore) { /* uniform across the block: no barrier is skipped by part of it */
            if (threadIdx.x == 0) {
                loss[i] = 0;
                lse[i] = 0;
            }
            continue;
        }
        const T *xr = x + i * C;
        T mx = xr[0];
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) mx = xr[j] > mx ? xr[j] : mx;
        mx = block_max(mx); /* every thread takes part (barriers inside) */
        if (isnan(xr[0])) mx = xr[0];
        double s = 0;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += (double)d_exp(xr[j] - mx);
        s = block_sum(s);
        double l = (double)mx + log(s);
        if (threadIdx.x == 0) {
            lse[i] = (T)l;
            loss[i] = l - (double)xr[ti];
        }
    }
}

template <typename T>
__global__ void ce_bwd_kernel(T *dx, const T *x, const T *lse, const int64_t *t, int64_t N, int64_t C,
                              int64_t ignore, const T *g, double count)
{
    T scale = count > 0 ? (T)((double)g[0] / count) : T(0);
    MOE_GRID_STRIDE(e, N * C)
    {
        int64_t i = e / C, j = e % C, ti = t[i];
        if (ti == ignore) {
            dx[e] = 0;
            continue;
        }
        T v = scale * d_exp(x[e] - lse[i]);
        dx[e] = j == ti ? v - scale : v;
    }
}

/* ---- launchers ------------------------------------------------------------------------------ */

#define BY_DTYPE(op, dt, CALL_F32, CALL_F64)                                                    \
    do {                                                                                        \
        if ((dt) == MOE_F32)                                                                    \
            CALL_F32;                                                                           \
        else if ((dt) == MOE_F64)                                                               \
            CALL_F64;                                                                           \
        else                                                                                    \
            return moe_fail(MOE_ERR_DTYPE, op, "no GPU kernel for %s", moe_dtype_name(dt));     \
        CHECK_LAUNCH(op);                                                                       \
    } while (0)

extern "C" moe_status moe_cuda_rms_fwd(moe_dtype dt, void *y, void *rinv, const void *x, const void *w,
                                       int64_t R, int64_t D, double eps)
{
    if (R == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    BY_DTYPE("rms-norm", dt,
             (rms_fwd_kernel<float><<<row_grid(R), ROW_THREADS, 0, s>>>((float *)y, (float *)rinv,
                                                                         (const float *)x, (const float *)w, R, D, eps)),
             (rms_fwd_kernel<double><<<row_grid(R), ROW_THREADS, 0, s>>>((double *)y, (double *)rinv,
                                                                          (const double *)x, (const double *)w, R, D, eps)));
    return MOE_OK;
}

extern "C" moe_status moe_cuda_rms_bwd(moe_dtype dt, void *dx, double *dwp, const void *g, const void *x,
                                       const void *w, const void *rinv, int64_t R, int64_t D, int64_t chunk)
{
    if (R == 0 || D == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    if (dx)
        BY_DTYPE("rms-norm", dt,
                 (rms_dx_kernel<float><<<row_grid(R), ROW_THREADS, 0, s>>>(
                     (float *)dx, (const float *)g, (const float *)x, (const float *)w, (const float *)rinv, R, D)),
                 (rms_dx_kernel<double><<<row_grid(R), ROW_THREADS, 0, s>>>(
                     (double *)dx, (const double *)g, (const double *)x, (const double *)w, (const double *)rinv, R, D)));
    if (dwp) {
        int64_t n = (R + chunk - 1) / chunk * D;
        BY_DTYPE("rms-norm", dt,
                 (rms_dw_kernel<float><<<moe_cuda_grid(n, 256), 256, 0, s>>>(
                     dwp, (const float *)g, (const float *)x, (const float *)rinv, R, D, chunk)),
                 (rms_dw_kernel<double><<<moe_cuda_grid(n, 256), 256, 0, s>>>(
                     dwp, (const double *)g, (const double *)x, (const double *)rinv, R, D, chunk)));
    }
    return MOE_OK;
}

extern "C" moe_status moe_cuda_ln_fwd(moe_dtype dt, void *y, void *mean, void *rstd, const void *x,
                                      const void *w, const void *b, int64_t R, int64_t D, double eps)
{
    if (R == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    BY_DTYPE("layer-norm", dt,
             (ln_fwd_kernel<float><<<row_grid(R), ROW_THREADS, 0, s>>>(
                 (float *)y, (float *)mean, (float *)rstd, (const float *)x, (const float *)w, (const float *)b, R, D, eps)),
             (ln_fwd_kernel<double><<<row_grid(R), ROW_THREADS, 0, s>>>(
                 (double *)y, (double *)mean, (double *)rstd, (const double *)x, (const double *)w, (const double *)b, R,
                 D, eps)));
    return MOE_OK;
}

extern "C" moe_status moe_cuda_ln_bwd(moe_dtype dt, void *dx, double *dwp, double *dbp, const void *g,
                                      const void *x, const void *w, const void *mean, const void *rstd,
                                      int64_t R, int64_t D, int64_t chunk)
{
    if (R == 0 || D == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    if (dx)
        BY_DTYPE("layer-norm", dt,
                 (ln_dx_kernel<float><<<row_grid(R), ROW_THREADS, 0, s>>>(
                     (float *)dx, (const float *)g, (const float *)x, (const float *)w, (const float *)mean,
                     (const float *)rstd, R, D)),
                 (ln_dx_kernel<double><<<row_grid(R), ROW_THREADS, 0, s>>>(
                     (double *)dx, (const double *)g, (const double *)x, (const double *)w, (const double *)mean,
                     (const double *)rstd, R, D)));
    if (dwp || dbp) {
        int64_t n = (R + chunk - 1) / chunk * D;
        BY_DTYPE("layer-norm", dt,
                 (ln_dwb_kernel<float><<<moe_cuda_grid(n, 256), 256, 0, s>>>(
                     dwp, dbp, (const float *)g, (const float *)x, (const float *)mean, (const float *)rstd, R, D, chunk)),
                 (ln_dwb_kernel<double><<<moe_cuda_grid(n, 256), 256, 0, s>>>(
                     dwp, dbp, (const double *)g, (const double *)x, (const double *)mean, (const double *)rstd, R, D,
                     chunk)));
    }
    return MOE_OK;
}

extern "C" moe_status moe_cuda_chunks_sum(moe_dtype dt, void *out, const double *p, int64_t nch, int64_t D)
{
    if (D == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    BY_DTYPE("chunks-sum", dt,
             (chunks_sum_kernel<float><<<moe_cuda_grid(D, 256), 256, 0, s>>>((float *)out, p, nch, D)),
             (chunks_sum_kernel<double><<<moe_cuda_grid(D, 256), 256, 0, s>>>((double *)out, p, nch, D)));
    return MOE_OK;
}

extern "C" moe_status moe_cuda_ce_fwd(moe_dtype dt, double *loss, void *lse, const void *x, const int64_t *t,
                                      int64_t N, int64_t C, int64_t ignore)
{
    if (N == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    BY_DTYPE("cross-entropy", dt,
             (ce_fwd_kernel<float><<<row_grid(N), ROW_THREADS, 0, s>>>(loss, (float *)lse, (const float *)x, t, N,
                                                                        C, ignore)),
             (ce_fwd_kernel<double><<<row_grid(N), ROW_THREADS, 0, s>>>(loss, (double *)lse, (const double *)x, t,
                                                                         N, C, ignore)));
    return MOE_OK;
}

extern "C" moe_status moe_cuda_ce_bwd(moe_dtype dt, void *dx, const void *x, const void *lse, const int64_t *t,
                                      int64_t N, int64_t C, int64_t ignore, const void *g, double count)
{
    if (N * C == 0) return MOE_OK;
    cudaStream_t s = moe_cuda_stream();
    BY_DTYPE("cross-entropy", dt,
             (ce_bwd_kernel<float><<<moe_cuda_grid(N * C, 256), 256, 0, s>>>(
                 (float *)dx, (const float *)x, (const float *)lse, t, N, C, ignore, (const float *)g, count)),
             (ce_bwd_kernel<double><<<moe_cuda_grid(N * C, 256), 256, 0, s>>>(
                 (double *)dx, (const double *)x, (const double *)lse, t, N, C, ignore, (const double *)g, count)));
    return MOE_OK;
}
