/* device_math.cuh — small device helpers shared by the .cu files: element
 * conversions bit-identical to the CPU ones (core/dtype.h), math overloads
 * for float and double, and grid-stride loops. CUDA C++ only. */
#ifndef MOELAB_CUDA_DEVICE_MATH_CUH
#define MOELAB_CUDA_DEVICE_MATH_CUH

#include <stdint.h>

#include "../../core/dtype.h"

/* bf16 <-> f32 exactly as moe_bf16_to_f32 / moe_f32_to_bf16 on the host:
 * round to nearest even, a NaN stays a (quiet) NaN. */
__host__ __device__ inline float moe_d_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

__host__ __device__ inline uint16_t moe_d_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* One element of any dtype as a double, and back (as moe_dtype_load/store). */
__device__ inline double moe_d_load(moe_dtype d, const char *p)
{
    switch (d) {
    case MOE_F32: return *(const float *)p;
    case MOE_F64: return *(const double *)p;
    case MOE_BF16: return moe_d_bf16_to_f32(*(const uint16_t *)p);
    case MOE_I32: return *(const int32_t *)p;
    case MOE_I64: return (double)*(const int64_t *)p;
    case MOE_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
    default: return 0.0;
    }
}

__device__ inline void moe_d_store(moe_dtype d, char *p, double v)
{
    switch (d) {
    case MOE_F32: *(float *)p = (float)v; break;
    case MOE_F64: *(double *)p = v; break;
    case MOE_BF16: *(uint16_t *)p = moe_d_f32_to_bf16((float)v); break;
    case MOE_I32: *(int32_t *)p = (int32_t)v; break;
    case MOE_I64: *(int64_t *)p = (int64_t)v; break;
    case MOE_BOOL: *(uint8_t *)p = v != 0.0; break;
    default: break;
    }
}

/* Math by overload, so one template serves float and double. */
#define MOE_D_MATH1(name, ff, fd)                                                        \
    __device__ inline float name(float x) { return ff(x); }                              \
    __device__ inline double name(double x) { return fd(x); }
MOE_D_MATH1(d_exp, expf, exp)
MOE_D_MATH1(d_log, logf, log)
MOE_D_MATH1(d_sqrt, sqrtf, sqrt)
MOE_D_MATH1(d_tanh, tanhf, tanh)
MOE_D_MATH1(d_erf, erff, erf)
MOE_D_MATH1(d_fabs, fabsf, fabs)
MOE_D_MATH1(d_log1p, log1pf, log1p)
#undef MOE_D_MATH1
__device__ inline float d_pow(float x, float y) { return powf(x, y); }
__device__ inline double d_pow(double x, double y) { return pow(x, y); }

/* for (i = this thread's first; i < n; i += all threads), 64-bit indices. */
#define MOE_GRID_STRIDE(i, n)                                                            \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);            \
         i += (int64_t)gridDim.x * blockDim.x)

/* ---- reductions over a warp and a block ------------------------------------------------------ */

/* Combining rules: a sum; fmax, which skips a NaN unless both are (identity
 * NaN); and "keep the larger" as the CPU loops write it, b > a ? b : a
 * (identity -inf). */
struct d_sum {
    template <typename T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct d_fmax {
    template <typename T> __device__ T operator()(T a, T b) const { return fmax(a, b); }
};
struct d_larger {
    template <typename T> __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};
struct d_or {
    template <typename T> __device__ T operator()(T a, T b) const { return a | b; }
};

/* OP over the 32 lanes of a full warp; every lane gets the result. */
template <typename T, typename Op> __device__ inline T warp_reduce(T v, Op op)
{
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* OP over the block (blockDim.x a multiple of 32); every thread gets the
 * result. Every thread must call it (barriers inside); safe to call again
 * right away (the leading barrier protects the scratch of the last call). */
template <typename T, typename Op> __device__ T block_reduce(T v, Op op, T identity)
{
    __shared__ T part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    return warp_reduce(lane < nw ? part[lane] : identity, op);
}

#endif
