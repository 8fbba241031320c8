/* elementwise.cu — CUDA kernels for the elementwise ops (contract in
 * elementwise.h; the formulas mirror kernels/cpu/elementwise.c term for
 * term, so GPU and CPU differ only by the last bits of the math library).
 *
 * Dimension letters: N output elements, J inputs.
 *
 * One launcher serves every op: a grid-stride loop over the N outputs in
 * which each thread turns its output index into J input offsets through
 * the moe_iter (or uses the index itself when every input is flat), and
 * then calls the op's functor. The functors are templates over the compute
 * type T (float or double); the op code is a run-time switch that every
 * thread of a launch takes the same way. */
#include "../../core/tensor.h"
#include "../gelu.h"
#include "../rng.h"
#include "cuda_internal.h"
#include "device_math.cuh"
#include "elementwise.h"

namespace {

constexpr int kBlock = 256;

#define GELU_C MOE_GELU_TANH_C
#define GELU_K MOE_GELU_TANH_K
#define INV_SQRT_2PI MOE_GELU_INV_SQRT_2PI
#define SQRT1_2 MOE_GELU_SQRT1_2

/* Offsets (elements) of output element I in each of the NJ inputs. */
template <int NJ>
__device__ inline void iter_offsets(const moe_iter &it, bool flat, int64_t i, int64_t *off)
{
    if (flat) {
        for (int j = 0; j < NJ; j++) off[j] = i;
        return;
    }
    for (int j = 0; j < NJ; j++) off[j] = 0;
    for (int k = it.ndim - 1; k >= 0; k--) {
        int64_t c = i % it.shape[k];
        i /= it.shape[k];
        for (int j = 0; j < NJ; j++) off[j] += c * it.strides[j][k];
    }
}

template <int NJ, typename F>
__global__ void iter_kernel(moe_iter it, bool flat, F f)
{
    MOE_GRID_STRIDE(i, it.numel)
    {
        int64_t off[NJ];
        iter_offsets<NJ>(it, flat, i, off);
        f(i, off);
    }
}

template <int NJ, typename F>
moe_status launch_iter(const char *op, const moe_iter *it, F f)
{
    if (it->numel == 0) return MOE_OK;
    iter_kernel<NJ, F><<<moe_cuda_grid(it->numel, kBlock), kBlock, 0, moe_cuda_stream()>>>(
        *it, moe_iter_is_flat(it), f);
    CHECK_LAUNCH(op);
    return MOE_OK;
}

template <typename F>
__global__ void flat_kernel(int64_t n, F f)
{
    MOE_GRID_STRIDE(i, n) f(i);
}

template <typename F>
moe_status launch_flat(const char *op, int64_t n, F f)
{
    if (n == 0) return MOE_OK;
    flat_kernel<F><<<moe_cuda_grid(n, kBlock), kBlock, 0, moe_cuda_stream()>>>(n, f);
    CHECK_LAUNCH(op);
    return MOE_OK;
}

/* ---- binary ------------------------------------------------------------------- */

template <typename T>
__device__ inline T binary_apply(moe_binop op, T x, T y)
{
    switch (op) {
    case MOE_BIN_ADD: return x + y;
    case MOE_BIN_SUB: return x - y;
    case MOE_BIN_MUL: return x * y;
    case MOE_BIN_DIV: return x / y;
    case MOE_BIN_POW: return d_pow(x, y);
    default: return (T)0;
    }
}

template <typename T>
struct binary_fn {
    moe_binop op;
    T *out;
    const T *a, *b;
    __device__ void operator()(int64_t i, const int64_t *off) const
    {
        out[i] = binary_apply<T>(op, a[off[0]], b[off[1]]);
    }
};

/* ---- unary and its gradient ------------------------------------------------------- */

template <typename T>
__device__ inline T unary_apply(moe_unop op, T x, T s, T lo, T hi, double p0)
{
    switch (op) {
    case MOE_UN_NEG: return -x;
    case MOE_UN_EXP: return d_exp(x);
    case MOE_UN_LOG: return d_log(x);
    case MOE_UN_SQRT: return d_sqrt(x);
    case MOE_UN_RSQRT: return (T)1 / d_sqrt(x);
    case MOE_UN_ABS: return d_fabs(x);
    case MOE_UN_TANH: return d_tanh(x);
    case MOE_UN_SIGMOID: return (T)1 / ((T)1 + d_exp(-x));
    case MOE_UN_SILU: return x / ((T)1 + d_exp(-x));
    case MOE_UN_RELU: return x < 0 ? (T)0 : x;
    case MOE_UN_GELU_ERF: return x * (T)0.5 * ((T)1 + d_erf(x * (T)SQRT1_2));
    case MOE_UN_GELU_TANH: return (T)0.5 * x * ((T)1 + d_tanh((T)GELU_C * (x + (T)GELU_K * x * x * x)));
    case MOE_UN_CLAMP: return x < lo ? lo : (x > hi ? hi : x);
    case MOE_UN_ADD_S: return x + s;
    case MOE_UN_MUL_S: return x * s;
    case MOE_UN_RSUB_S: return s - x;
    case MOE_UN_RDIV_S: return s / x;
    case MOE_UN_POW_S: return p0 == 2.0 ? x * x : p0 == 1.0 ? x : d_pow(x, s);
    default: return (T)0;
    }
}

template <typename T>
struct unary_fn {
    moe_unop op;
    double p0, p1;
    T *out;
    const T *a;
    __device__ void operator()(int64_t i, const int64_t *off) const
    {
        out[i] = unary_apply<T>(op, a[off[0]], (T)p0, (T)p0, (T)p1, p0);
    }
};

template <typename T>
__device__ inline T unary_grad_apply(moe_unop op, T gi, T x, T y, T s, T lo, T hi, double p0)
{
    switch (op) {
    case MOE_UN_NEG: return -gi;
    case MOE_UN_EXP: return gi * y;
    case MOE_UN_LOG: return gi / x;
    case MOE_UN_SQRT: return gi / ((T)2 * y);
    case MOE_UN_RSQRT: return (T)-0.5 * gi * y * y * y;
    case MOE_UN_ABS: return x > 0 ? gi : (x < 0 ? -gi : (T)0);
    case MOE_UN_TANH: return gi * ((T)1 - y * y);
    case MOE_UN_SIGMOID: return gi * y * ((T)1 - y);
    case MOE_UN_SILU: {
        T sg = (T)1 / ((T)1 + d_exp(-x));
        return gi * (sg * ((T)1 + x * ((T)1 - sg)));
    }
    case MOE_UN_RELU: return x > 0 ? gi : (T)0;
    case MOE_UN_GELU_ERF:
        return gi * ((T)0.5 * ((T)1 + d_erf(x * (T)SQRT1_2)) +
                     x * d_exp((T)-0.5 * x * x) * (T)INV_SQRT_2PI);
    case MOE_UN_GELU_TANH: {
        T t = d_tanh((T)GELU_C * (x + (T)GELU_K * x * x * x));
        return gi * ((T)0.5 * ((T)1 + t) +
                     (T)0.5 * x * ((T)1 - t * t) * (T)GELU_C * ((T)1 + (T)(3 * GELU_K) * x * x));
    }
    case MOE_UN_CLAMP: return (x >= lo && x <= hi) ? gi : (T)0;
    case MOE_UN_ADD_S: return gi;
    case MOE_UN_MUL_S: return gi * s;
    case MOE_UN_RSUB_S: return -gi;
    case MOE_UN_RDIV_S: return -gi * s / (x * x);
    case MOE_UN_POW_S:
        if (p0 == 0.0) return (T)0;
        if (p0 == 1.0) return gi;
        if (p0 == 2.0) return (T)2 * gi * x;
        return gi * s * d_pow(x, s - (T)1);
    default: return (T)0;
    }
}

template <typename T>
struct unary_grad_fn {
    moe_unop op;
    double p0, p1;
    T *gin;
    const T *g, *x, *y; /* x, y may be NULL: then read as 0 */
    __device__ void operator()(int64_t i) const
    {
        T xi = x ? x[i] : (T)0, yi = y ? y[i] : (T)0;
        gin[i] = unary_grad_apply<T>(op, g[i], xi, yi, (T)p0, (T)p0, (T)p1, p0);
    }
};

/* ---- where / masked_fill / compare ------------------------------------------------- */

template <typename T>
struct where_fn {
    T *out;
    const uint8_t *c;
    const T *a, *b;
    __device__ void operator()(int64_t i, const int64_t *off) const
    {
        out[i] = c[off[0]] ? a[off[1]] : b[off[2]];
    }
};

template <typename T>
struct masked_fill_fn {
    T *out;
    const T *a;
    const uint8_t *m;
    T v;
    __device__ void operator()(int64_t i, const int64_t *off) const
    {
        out[i] = m[off[1]] ? v : a[off[0]];
    }
};

template <typename T>
struct compare_fn {
    moe_cmp cmp;
    uint8_t *out;
    const T *a, *b;
    __device__ void operator()(int64_t i, const int64_t *off) const
    {
        T x = a[off[0]], y = b[off[1]];
        bool r;
        switch (cmp) {
        case MOE_CMP_EQ: r = x == y; break;
        case MOE_CMP_NE: r = x != y; break;
        case MOE_CMP_LT: r = x < y; break;
        case MOE_CMP_LE: r = x <= y; break;
        case MOE_CMP_GT: r = x > y; break;
        default: r = x >= y; break;
        }
        out[i] = (uint8_t)r;
    }
};

/* ---- dropout: the host's counter-based generator (core/tensor.c) --------------------- */

__device__ inline double rng_uniform(uint64_t seed, uint64_t i) { return moe_rng_bits_uniform(seed, i); }

template <typename T>
struct dropout_fn {
    T *out;
    const T *a;
    uint64_t seed, base;
    double p;
    T scale;
    __device__ void operator()(int64_t i) const
    {
        out[i] = rng_uniform(seed, base + (uint64_t)i) >= p ? a[i] * scale : (T)0;
    }
};

template <typename T>
__global__ void count_nonfinite_kernel(const T *a, int64_t n, unsigned long long *counts)
{
    unsigned long long nn = 0, ni = 0;
    MOE_GRID_STRIDE(i, n)
    {
        T v = a[i];
        nn += v != v;
        ni += isinf(v) ? 1 : 0;
    }
    /* one atomic per warp */
    nn = warp_reduce(nn, d_sum{});
    ni = warp_reduce(ni, d_sum{});
    if ((threadIdx.x & 31) == 0) {
        if (nn) atomicAdd(&counts[0], nn);
        if (ni) atomicAdd(&counts[1], ni);
    }
}

bool is_f32(moe_dtype dt) { return dt == MOE_F32; }

} // namespace

/* ---- entry points --------------------------------------------------------------------- */

extern "C" moe_status moe_cuda_binary(moe_binop op, moe_dtype dt, void *out, const void *a,
                                      const void *b, const moe_iter *it)
{
    if (is_f32(dt))
        return launch_iter<2>("binary", it, binary_fn<float>{op, (float *)out, (const float *)a, (const float *)b});
    return launch_iter<2>("binary", it, binary_fn<double>{op, (double *)out, (const double *)a, (const double *)b});
}

extern "C" moe_status moe_cuda_unary(moe_unop op, const double *p, moe_dtype dt, void *out,
                                     const void *a, const moe_iter *it)
{
    if (is_f32(dt))
        return launch_iter<1>("unary", it, unary_fn<float>{op, p[0], p[1], (float *)out, (const float *)a});
    return launch_iter<1>("unary", it, unary_fn<double>{op, p[0], p[1], (double *)out, (const double *)a});
}

extern "C" moe_status moe_cuda_unary_grad(moe_unop op, const double *p, moe_dtype dt, void *gin,
                                          const void *g, const void *x, const void *y, int64_t n)
{
    double p0 = p ? p[0] : 0, p1 = p ? p[1] : 0;
    if (is_f32(dt))
        return launch_flat("unary-grad", n,
                           unary_grad_fn<float>{op, p0, p1, (float *)gin, (const float *)g,
                                                (const float *)x, (const float *)y});
    return launch_flat("unary-grad", n,
                       unary_grad_fn<double>{op, p0, p1, (double *)gin, (const double *)g,
                                             (const double *)x, (const double *)y});
}

extern "C" moe_status moe_cuda_where(moe_dtype dt, void *out, const uint8_t *cond, const void *a,
                                     const void *b, const moe_iter *it)
{
    if (is_f32(dt))
        return launch_iter<3>("where", it, where_fn<float>{(float *)out, cond, (const float *)a, (const float *)b});
    return launch_iter<3>("where", it, where_fn<double>{(double *)out, cond, (const double *)a, (const double *)b});
}

extern "C" moe_status moe_cuda_masked_fill(moe_dtype dt, void *out, const void *a,
                                           const uint8_t *mask, double value, const moe_iter *it)
{
    if (is_f32(dt))
        return launch_iter<2>("masked-fill", it,
                              masked_fill_fn<float>{(float *)out, (const float *)a, mask, (float)value});
    return launch_iter<2>("masked-fill", it,
                          masked_fill_fn<double>{(double *)out, (const double *)a, mask, value});
}

extern "C" moe_status moe_cuda_compare(moe_cmp cmp, moe_dtype dt, uint8_t *out, const void *a,
                                       const void *b, const moe_iter *it)
{
    if (is_f32(dt))
        return launch_iter<2>("compare", it, compare_fn<float>{cmp, out, (const float *)a, (const float *)b});
    return launch_iter<2>("compare", it, compare_fn<double>{cmp, out, (const double *)a, (const double *)b});
}

extern "C" moe_status moe_cuda_dropout(moe_dtype dt, void *out, const void *a, int64_t n,
                                       uint64_t seed, uint64_t base, double p, double scale)
{
    if (is_f32(dt))
        return launch_flat("dropout", n,
                           dropout_fn<float>{(float *)out, (const float *)a, seed, base, p, (float)scale});
    return launch_flat("dropout", n,
                       dropout_fn<double>{(double *)out, (const double *)a, seed, base, p, scale});
}

extern "C" moe_status moe_cuda_count_nonfinite(moe_dtype dt, const void *a, int64_t n,
                                               int64_t *nan_count, int64_t *inf_count)
{
    *nan_count = *inf_count = 0;
    if (n == 0) return MOE_OK;
    moe_storage *buf;
    MOE_TRY(moe_storage_new(&buf, MOE_CUDA, 2 * sizeof(unsigned long long)));
    unsigned long long *counts = (unsigned long long *)buf->data, host[2] = {0, 0};
    cudaStream_t s = moe_cuda_stream();
    moe_status st = MOE_OK;
    cudaError_t e = cudaMemsetAsync(counts, 0, sizeof host, s);
    if (e == cudaSuccess) {
        if (is_f32(dt))
            count_nonfinite_kernel<float><<<moe_cuda_grid(n, kBlock), kBlock, 0, s>>>((const float *)a, n, counts);
        else
            count_nonfinite_kernel<double><<<moe_cuda_grid(n, kBlock), kBlock, 0, s>>>((const double *)a, n, counts);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess) e = cudaMemcpyAsync(host, counts, sizeof host, cudaMemcpyDeviceToHost, s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);
    if (e != cudaSuccess)
        st = moe_fail(MOE_ERR_BACKEND, "count-nonfinite", "CUDA error: %s", cudaGetErrorString(e));
    moe_storage_release(buf);
    *nan_count = (int64_t)host[0];
    *inf_count = (int64_t)host[1];
    return st;
}
