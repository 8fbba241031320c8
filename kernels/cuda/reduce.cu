/* reduce.cu — CUDA kernels for sums, var, cumsum, max/min and the softmax
 * family (contract in reduce.h; results follow kernels/cpu/reduce.c and
 * softmax.c).
 *
 * Dimension letters: O outer rows, R reduced extent, I inner columns, N a
 * softmax row.
 *
 * Two shapes of work:
 *  - rows (I == 1): one block per row (grid-stride over rows); each thread
 *    folds r = tid, tid + B, … then the block combines through warp
 *    shuffles and one shared slot per warp (block_sum / block_max /
 *    block_extreme). Every thread of a block walks the same rows, so the
 *    __syncthreads inside the combines are reached by all.
 *  - columns (I > 1): one thread per output (o, i), walking r in order;
 *    neighbouring threads read neighbouring i, so loads coalesce. */
#include <math.h>

#include "../../core/tensor.h"
#include "cuda_internal.h"
#include "device_math.cuh"
#include "reduce.h"

namespace {

constexpr int kBlock = 256; /* block size of row kernels: a multiple of 32 */

template <typename T> struct acc_of { using type = T; };
template <> struct acc_of<float> { using type = double; }; /* sums of f32 in double, as on the CPU */

/* Sum of V over the block, returned to every thread. */
template <typename A> __device__ A block_sum(A v) { return block_reduce(v, d_sum{}, (A)0); }

/* Max of V over the block (a NaN is skipped as `v > m ? v : m` skips it). */
template <typename T> __device__ T block_max(T v) { return block_reduce(v, d_larger{}, (T)-INFINITY); }

/* ---- sum / var / cumsum ------------------------------------------------------------- */

template <typename T>
__global__ void sum_rows(T *out, const T *x, int64_t O, int64_t R, double scale)
{
    using A = typename acc_of<T>::type;
    for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
        const T *xr = x + o * R;
        A s = 0;
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) s += (A)xr[r];
        s = block_sum(s);
        if (threadIdx.x == 0) out[o] = (T)(s * (A)scale);
    }
}

template <typename T>
__global__ void sum_cols(T *out, const T *x, int64_t O, int64_t R, int64_t I, double scale)
{
    using A = typename acc_of<T>::type;
    MOE_GRID_STRIDE(k, O * I)
    {
        int64_t o = k / I, i = k % I;
        const T *xp = x + o * R * I + i;
        A s = 0;
        for (int64_t r = 0; r < R; r++) s += (A)xp[r * I];
        out[k] = (T)(s * (A)scale);
    }
}

template <typename T>
__global__ void var_rows(T *out, const T *x, int64_t O, int64_t R, int correction)
{
    using A = typename acc_of<T>::type;
    for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
        const T *xr = x + o * R;
        A s = 0;
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) s += (A)xr[r];
        A mean = block_sum(s) / (A)R;
        A q = 0;
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x) {
            A d = (A)xr[r] - mean;
            q += d * d;
        }
        q = block_sum(q);
        if (threadIdx.x == 0) out[o] = (T)(q / (A)(R - correction));
    }
}

template <typename T>
__global__ void cumsum_cols(T *out, const T *x, int64_t O, int64_t R, int64_t I, bool reverse)
{
    using A = typename acc_of<T>::type;
    MOE_GRID_STRIDE(k, O * I)
    {
        int64_t o = k / I, i = k % I, base = o * R * I + i;
        A s = 0;
        for (int64_t j = 0; j < R; j++) {
            int64_t r = reverse ? R - 1 - j : j;
            s += (A)x[base + r * I];
            out[base + r * I] = (T)s;
        }
    }
}

/* ---- max / min with index ------------------------------------------------------------- */

template <typename T>
__device__ inline bool is_nan(T v) { return v != v; } /* false for integers */

/* Does (v1, i1) beat (v2, i2)? Index -1 is "nothing yet". A NaN beats any
 * number; between equals (or two NaNs) the lower index wins. */
template <typename T>
__device__ inline bool beats(T v1, int64_t i1, T v2, int64_t i2, bool is_max)
{
    if (i2 < 0) return true;
    if (i1 < 0) return false;
    bool n1 = is_nan(v1), n2 = is_nan(v2);
    if (n1 || n2) return n1 && n2 ? i1 < i2 : n1;
    if (v1 != v2) return is_max ? v1 > v2 : v1 < v2;
    return i1 < i2;
}

template <typename T>
__device__ void block_extreme(T &v, int64_t &i, bool is_max)
{
    __shared__ T pv[32];
    __shared__ int64_t pi[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o /= 2) {
        T u = __shfl_down_sync(0xffffffffu, v, o);
        int64_t j = __shfl_down_sync(0xffffffffu, i, o);
        if (beats(u, j, v, i, is_max)) v = u, i = j;
    }
    __syncthreads();
    if (lane == 0) pv[warp] = v, pi[warp] = i;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? pv[lane] : v;
        i = lane < nw ? pi[lane] : -1;
        for (int o = 16; o > 0; o /= 2) {
            T u = __shfl_down_sync(0xffffffffu, v, o);
            int64_t j = __shfl_down_sync(0xffffffffu, i, o);
            if (beats(u, j, v, i, is_max)) v = u, i = j;
        }
    }
    /* thread 0 holds the block's result */
}

template <typename T>
__global__ void extreme_rows(T *val, int64_t *idx, const T *x, int64_t O, int64_t R, bool is_max)
{
    for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
        const T *xr = x + o * R;
        T v = (T)0;
        int64_t i = -1;
        for (int64_t r = threadIdx.x; r < R; r += blockDim.x)
            if (beats(xr[r], r, v, i, is_max)) v = xr[r], i = r;
        block_extreme(v, i, is_max);
        if (threadIdx.x == 0) {
            if (val) val[o] = v;
            idx[o] = i;
        }
        __syncthreads(); /* the shared slots are reused by the next row */
    }
}

template <typename T>
__global__ void extreme_cols(T *val, int64_t *idx, const T *x, int64_t O, int64_t R, int64_t I,
                             bool is_max)
{
    MOE_GRID_STRIDE(k, O * I)
    {
        int64_t o = k / I, i = k % I;
        const T *xp = x + o * R * I + i;
        T v = xp[0];
        int64_t best = 0;
        for (int64_t r = 1; r < R; r++)
            if (beats(xp[r * I], r, v, best, is_max)) v = xp[r * I], best = r;
        if (val) val[k] = v;
        idx[k] = best;
    }
}

template <typename T>
__global__ void scatter_dim(T *out, const T *g, const int64_t *idx, int64_t O, int64_t R, int64_t I)
{
    MOE_GRID_STRIDE(k, O * I)
    {
        int64_t o = k / I, i = k % I;
        out[(o * R + idx[k]) * I + i] += g[k];
    }
}

/* ---- softmax family ------------------------------------------------------------------------ */

/* Row block size: a multiple of 32, no larger than the row needs. */
int row_block(int64_t n)
{
    int64_t b = (n + 31) / 32 * 32;
    return b < 32 ? 32 : b > kBlock ? kBlock : (int)b;
}

/* The shift is the max unless it is infinite (all -inf: softmax NaN,
 * logsumexp -inf; +inf: NaN / +inf, as on the CPU). */
template <typename T>
__global__ void softmax_rows(T *out, const T *x, int64_t O, int64_t N, int mode)
{
    for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
        const T *xr = x + o * N;
        T m = (T)-INFINITY;
        for (int64_t r = threadIdx.x; r < N; r += blockDim.x) m = xr[r] > m ? xr[r] : m;
        m = block_max(m);
        T sh = isinf(m) ? (T)0 : m;
        T s = 0;
        for (int64_t r = threadIdx.x; r < N; r += blockDim.x) s += d_exp(xr[r] - sh);
        s = block_sum(s);
        if (mode == 2) {
            if (threadIdx.x == 0) out[o] = sh + d_log(s);
        } else if (mode == 0) {
            T inv = (T)1 / s;
            for (int64_t r = threadIdx.x; r < N; r += blockDim.x) out[o * N + r] = d_exp(xr[r] - sh) * inv;
        } else {
            T ls = d_log(s);
            for (int64_t r = threadIdx.x; r < N; r += blockDim.x) out[o * N + r] = xr[r] - sh - ls;
        }
    }
}

template <typename T>
__global__ void softmax_backward_rows(T *gin, const T *g, const T *y, int64_t O, int64_t N, bool log)
{
    for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
        const T *gr = g + o * N, *yr = y + o * N;
        T s = 0;
        for (int64_t r = threadIdx.x; r < N; r += blockDim.x) s += log ? gr[r] : gr[r] * yr[r];
        s = block_sum(s);
        for (int64_t r = threadIdx.x; r < N; r += blockDim.x)
            gin[o * N + r] = log ? gr[r] - d_exp(yr[r]) * s : yr[r] * (gr[r] - s);
    }
}

} // namespace

/* ---- entry points ---------------------------------------------------------------------------- */

#define DISPATCH_FLOAT(dt, F, ...)                                                        \
    do {                                                                                  \
        if ((dt) == MOE_F32) F<float>(__VA_ARGS__);                                       \
        else F<double>(__VA_ARGS__);                                                      \
    } while (0)

template <typename T>
static void launch_sum(void *out, const void *x, int64_t O, int64_t R, int64_t I, double scale)
{
    cudaStream_t s = moe_cuda_stream();
    if (I == 1)
        sum_rows<T><<<moe_cuda_grid(O, 1), kBlock, 0, s>>>((T *)out, (const T *)x, O, R, scale);
    else
        sum_cols<T><<<moe_cuda_grid(O * I, kBlock), kBlock, 0, s>>>((T *)out, (const T *)x, O, R, I, scale);
}

extern "C" moe_status moe_cuda_sum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R,
                                   int64_t I, double scale)
{
    if (O * I == 0) return MOE_OK;
    if (dt == MOE_I64) launch_sum<int64_t>(out, x, O, R, I, 1.0);
    else DISPATCH_FLOAT(dt, launch_sum, out, x, O, R, I, scale);
    CHECK_LAUNCH("sum");
    return MOE_OK;
}

template <typename T>
static void launch_var(void *out, const void *x, int64_t O, int64_t R, int correction)
{
    var_rows<T><<<moe_cuda_grid(O, 1), kBlock, 0, moe_cuda_stream()>>>((T *)out, (const T *)x, O, R,
                                                                        correction);
}

extern "C" moe_status moe_cuda_var(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R,
                                   int correction)
{
    if (O == 0) return MOE_OK;
    DISPATCH_FLOAT(dt, launch_var, out, x, O, R, correction);
    CHECK_LAUNCH("var");
    return MOE_OK;
}

template <typename T>
static void launch_cumsum(void *out, const void *x, int64_t O, int64_t R, int64_t I, bool reverse)
{
    cumsum_cols<T><<<moe_cuda_grid(O * I, kBlock), kBlock, 0, moe_cuda_stream()>>>(
        (T *)out, (const T *)x, O, R, I, reverse);
}

extern "C" moe_status moe_cuda_cumsum(moe_dtype dt, void *out, const void *x, int64_t O, int64_t R,
                                      int64_t I, bool reverse)
{
    if (O * R * I == 0) return MOE_OK;
    if (dt == MOE_I64) launch_cumsum<int64_t>(out, x, O, R, I, reverse);
    else DISPATCH_FLOAT(dt, launch_cumsum, out, x, O, R, I, reverse);
    CHECK_LAUNCH("cumsum");
    return MOE_OK;
}

template <typename T>
static void launch_extreme(void *val, int64_t *idx, const void *x, int64_t O, int64_t R, int64_t I,
                           bool is_max)
{
    cudaStream_t s = moe_cuda_stream();
    if (I == 1)
        extreme_rows<T><<<moe_cuda_grid(O, 1), kBlock, 0, s>>>((T *)val, idx, (const T *)x, O, R, is_max);
    else
        extreme_cols<T><<<moe_cuda_grid(O * I, kBlock), kBlock, 0, s>>>((T *)val, idx, (const T *)x, O, R,
                                                                         I, is_max);
}

extern "C" moe_status moe_cuda_extreme(moe_dtype dt, void *val, int64_t *idx, const void *x,
                                       int64_t O, int64_t R, int64_t I, bool is_max)
{
    if (O * I == 0) return MOE_OK;
    if (R < 1) return moe_fail(MOE_ERR_SHAPE, "max", "cannot reduce over an empty dim");
    if (dt == MOE_I64) launch_extreme<int64_t>(val, idx, x, O, R, I, is_max);
    else DISPATCH_FLOAT(dt, launch_extreme, val, idx, x, O, R, I, is_max);
    CHECK_LAUNCH(is_max ? "max" : "min");
    return MOE_OK;
}

template <typename T>
static void launch_scatter(void *out, const void *g, const int64_t *idx, int64_t O, int64_t R, int64_t I)
{
    scatter_dim<T><<<moe_cuda_grid(O * I, kBlock), kBlock, 0, moe_cuda_stream()>>>(
        (T *)out, (const T *)g, idx, O, R, I);
}

extern "C" moe_status moe_cuda_scatter_dim(moe_dtype dt, void *out, const void *g,
                                           const int64_t *idx, int64_t O, int64_t R, int64_t I)
{
    if (O * I == 0) return MOE_OK;
    DISPATCH_FLOAT(dt, launch_scatter, out, g, idx, O, R, I);
    CHECK_LAUNCH("scatter-dim");
    return MOE_OK;
}

template <typename T>
static void launch_softmax(void *out, const void *x, int64_t O, int64_t N, int mode)
{
    softmax_rows<T><<<moe_cuda_grid(O, 1), row_block(N), 0, moe_cuda_stream()>>>((T *)out, (const T *)x,
                                                                                  O, N, mode);
}

extern "C" moe_status moe_cuda_softmax(moe_dtype dt, void *out, const void *x, int64_t O, int64_t N,
                                       int mode)
{
    if (O == 0) return MOE_OK;
    DISPATCH_FLOAT(dt, launch_softmax, out, x, O, N, mode);
    CHECK_LAUNCH("softmax");
    return MOE_OK;
}

template <typename T>
static void launch_softmax_backward(void *gin, const void *g, const void *y, int64_t O, int64_t N, bool log)
{
    softmax_backward_rows<T><<<moe_cuda_grid(O, 1), row_block(N), 0, moe_cuda_stream()>>>(
        (T *)gin, (const T *)g, (const T *)y, O, N, log);
}

extern "C" moe_status moe_cuda_softmax_backward(moe_dtype dt, void *gin, const void *g, const void *y,
                                                int64_t O, int64_t N, bool log)
{
    if (O * N == 0) return MOE_OK;
    DISPATCH_FLOAT(dt, launch_softmax_backward, gin, g, y, O, N, log);
    CHECK_LAUNCH("softmax-backward");
    return MOE_OK;
}
