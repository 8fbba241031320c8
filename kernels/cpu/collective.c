/* collective.c — the host reductions and copies behind the collectives of
 * the threads and MPI backends (core/dist): N rank buffers combined element
 * by element, large buffers copied by all threads. Declared in collective.h. */
#include "collective.h"

#include <omp.h>
#include <string.h>

/* Serial kernels over one block: DST[i] = OP over SRCS[0..n)[i] in that
 * order, i in [0, len); DST may alias a source. bf16 accumulates in f32 and
 * rounds once; AVG divides the sum by n (integers: truncated quotient). The
 * drivers below split the work into fixed blocks (deterministic for any
 * thread count) and run the blocks on the OpenMP pool. */
#define REDUCE_BLOCK 2048
#define DEF_REDUCE(NAME, T, ACC)                                                              \
    static void NAME(T *restrict dst, const T *const *srcs, int n, int64_t len, moe_reduce_op op) \
    {                                                                                         \
        ACC acc[REDUCE_BLOCK];                                                                \
        const T *s0 = srcs[0];                                                                \
        for (int64_t i = 0; i < len; i++) acc[i] = (ACC)s0[i];                                \
        for (int k = 1; k < n; k++) {                                                         \
            const T *restrict s = srcs[k];                                                    \
            switch (op) {                                                                     \
            case MOE_REDUCE_SUM:                                                              \
            case MOE_REDUCE_AVG:                                                              \
                for (int64_t i = 0; i < len; i++) acc[i] += (ACC)s[i];                        \
                break;                                                                        \
            case MOE_REDUCE_MAX:                                                              \
                for (int64_t i = 0; i < len; i++) {                                           \
                    ACC v = (ACC)s[i];                                                        \
                    if (v > acc[i] || v != v) acc[i] = v;                                     \
                }                                                                             \
                break;                                                                        \
            default:                                                                          \
                for (int64_t i = 0; i < len; i++) {                                           \
                    ACC v = (ACC)s[i];                                                        \
                    if (v < acc[i] || v != v) acc[i] = v;                                     \
                }                                                                             \
                break;                                                                        \
            }                                                                                 \
        }                                                                                     \
        if (op == MOE_REDUCE_AVG)                                                             \
            for (int64_t i = 0; i < len; i++) acc[i] = acc[i] / (ACC)n;                       \
        for (int64_t i = 0; i < len; i++) dst[i] = (T)acc[i];                                 \
    }
DEF_REDUCE(reduce_f32, float, float)
DEF_REDUCE(reduce_f64, double, double)
DEF_REDUCE(reduce_i32, int32_t, int64_t)
DEF_REDUCE(reduce_i64, int64_t, int64_t)
DEF_REDUCE(reduce_u8, uint8_t, int)

static void reduce_bf16(uint16_t *restrict dst, const uint16_t *const *srcs, int n, int64_t len, moe_reduce_op op)
{
    float acc[REDUCE_BLOCK];
    for (int64_t i = 0; i < len; i++) acc[i] = moe_bf16_to_f32(srcs[0][i]);
    for (int k = 1; k < n; k++)
        for (int64_t i = 0; i < len; i++) {
            float v = moe_bf16_to_f32(srcs[k][i]);
            if (op == MOE_REDUCE_SUM || op == MOE_REDUCE_AVG) acc[i] += v;
            else if (op == MOE_REDUCE_MAX) { if (v > acc[i] || v != v) acc[i] = v; }
            else if (v < acc[i] || v != v) acc[i] = v;
        }
    for (int64_t i = 0; i < len; i++) dst[i] = moe_f32_to_bf16(op == MOE_REDUCE_AVG ? acc[i] / (float)n : acc[i]);
}

/* Block [off, off+len) of the reduction into DST (DST already offset). */
static void reduce_block(void *dst, const void *const *srcs, int n, int64_t off, int64_t len, moe_dtype dt,
                         moe_reduce_op op)
{
    size_t esz = moe_dtype_size(dt);
    const void *s[n];
    for (int k = 0; k < n; k++) s[k] = (const char *)srcs[k] + off * (int64_t)esz;
    switch (dt) {
    case MOE_F32: reduce_f32(dst, (const float *const *)s, n, len, op); break;
    case MOE_F64: reduce_f64(dst, (const double *const *)s, n, len, op); break;
    case MOE_I32: reduce_i32(dst, (const int32_t *const *)s, n, len, op); break;
    case MOE_I64: reduce_i64(dst, (const int64_t *const *)s, n, len, op); break;
    case MOE_BF16: reduce_bf16(dst, (const uint16_t *const *)s, n, len, op); break;
    case MOE_BOOL: reduce_u8(dst, (const uint8_t *const *)s, n, len, op); break;
    default: break;
    }
}

void moe_cpu_reduce_n(moe_dtype dt, void *dst, const void *const *srcs, int n, int64_t count,
                      moe_reduce_op op)
{
    if (count <= 0) return;
    size_t esz = moe_dtype_size(dt);
    int64_t nblocks = (count + REDUCE_BLOCK - 1) / REDUCE_BLOCK;
#pragma omp parallel for if (count > 65536) schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t off = b * REDUCE_BLOCK, len = count - off < REDUCE_BLOCK ? count - off : REDUCE_BLOCK;
        reduce_block((char *)dst + off * (int64_t)esz, srcs, n, off, len, dt, op);
    }
}

/* Two ranks summing (or averaging) f32, written to both buffers: one pass.
 * (Streaming stores were tried: slower on the machines measured.) */
static void sum2_bcast_f32(float *restrict a, float *restrict b, int64_t count, float scale)
{
#pragma omp parallel for simd if (count > 65536) schedule(static)
    for (int64_t i = 0; i < count; i++) {
        float v = (a[i] + b[i]) * scale;
        a[i] = v;
        b[i] = v;
    }
}

void moe_cpu_reduce_bcast(moe_dtype dt, void *const *bufs, int n, int64_t count, moe_reduce_op op)
{
    if (count <= 0) return;
    /* x * 0.5f is exactly x / 2.0f, so the fast path gives the same bits */
    if (n == 2 && dt == MOE_F32 && (op == MOE_REDUCE_SUM || op == MOE_REDUCE_AVG)) {
        sum2_bcast_f32(bufs[0], bufs[1], count, op == MOE_REDUCE_AVG ? 0.5f : 1.0f);
        return;
    }
    size_t esz = moe_dtype_size(dt);
    int64_t nblocks = (count + REDUCE_BLOCK - 1) / REDUCE_BLOCK;
#pragma omp parallel for if (count > 65536) schedule(static)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t off = b * REDUCE_BLOCK, len = count - off < REDUCE_BLOCK ? count - off : REDUCE_BLOCK;
        _Alignas(64) char tmp[REDUCE_BLOCK * 8];
        reduce_block(tmp, (const void *const *)bufs, n, off, len, dt, op);
        for (int k = 0; k < n; k++) memcpy((char *)bufs[k] + off * (int64_t)esz, tmp, (size_t)len * esz);
    }
}

void moe_cpu_divide(moe_dtype dt, void *buf, int64_t count, int64_t n)
{
    switch (dt) {
    case MOE_F32: for (int64_t i = 0; i < count; i++) ((float *)buf)[i] /= (float)n; break;
    case MOE_F64: for (int64_t i = 0; i < count; i++) ((double *)buf)[i] /= (double)n; break;
    case MOE_I32: for (int64_t i = 0; i < count; i++) ((int32_t *)buf)[i] /= (int32_t)n; break;
    case MOE_I64: for (int64_t i = 0; i < count; i++) ((int64_t *)buf)[i] /= n; break;
    default: break;
    }
}

void moe_cpu_copy_bytes(void *dst, const void *src, size_t nbytes)
{
    const size_t chunk = (size_t)1 << 20;
    if (nbytes <= 2 * chunk || omp_get_max_threads() == 1) {
        if (nbytes) memcpy(dst, src, nbytes);
        return;
    }
    int64_t nchunks = (int64_t)((nbytes + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nchunks; c++) {
        size_t off = (size_t)c * chunk;
        size_t len = off + chunk < nbytes ? chunk : nbytes - off;
        memcpy((char *)dst + off, (const char *)src + off, len);
    }
}
