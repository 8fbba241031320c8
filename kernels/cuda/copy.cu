/* copy.cu — strided copy with dtype conversion, and fill: the device side of
 * contiguous(), clone(), to_dtype(), copy_() and every op's conversion to
 * and from its compute dtype (kernels/cpu/copy.c on the host).
 *
 * Dimension letters: N elements. The two tensors share a shape; their
 * layouts are merged into at most MOE_MAX_DIMS dims (size-1 dims dropped,
 * neighbours that are contiguous for both merged), and each thread turns
 * its flat output index into the two element offsets. Same-dtype copies
 * move raw element bits; f32 <-> bf16 has its own path; any other pair goes
 * through double, exactly as moe_dtype_load/store do on the host. */
#include "../../core/tensor.h"
#include "cuda_internal.h"
#include "device_math.cuh"

namespace {

constexpr int kBlock = 256;

/* [N] = shape; offsets in elements into dst and src. */
struct layout2 {
    int ndim;
    int64_t numel;
    int64_t shape[MOE_MAX_DIMS];
    int64_t dst[MOE_MAX_DIMS];
    int64_t src[MOE_MAX_DIMS];
};

/* Drop size-1 dims, then merge dim d into d-1 when both tensors step over
 * them as one. ndim 0 (one element or none) becomes one dim. */
layout2 make_layout(const moe_tensor *dst, const moe_tensor *src)
{
    layout2 l{};
    l.numel = moe_tensor_numel(dst);
    int nd = 0;
    for (int d = 0; d < dst->ndim; d++) {
        if (dst->shape[d] == 1) continue;
        if (nd > 0 && l.dst[nd - 1] == dst->strides[d] * dst->shape[d] &&
            l.src[nd - 1] == src->strides[d] * dst->shape[d]) {
            l.shape[nd - 1] *= dst->shape[d];
            l.dst[nd - 1] = dst->strides[d];
            l.src[nd - 1] = src->strides[d];
            continue;
        }
        l.shape[nd] = dst->shape[d];
        l.dst[nd] = dst->strides[d];
        l.src[nd] = src->strides[d];
        nd++;
    }
    if (nd == 0) {
        l.shape[0] = 1;
        l.dst[0] = l.src[0] = 1;
        nd = 1;
    }
    l.ndim = nd;
    return l;
}

__device__ inline void offsets2(const layout2 &l, int64_t i, int64_t &od, int64_t &os)
{
    od = 0;
    os = 0;
    for (int k = l.ndim - 1; k >= 0; k--) {
        int64_t c = i % l.shape[k];
        i /= l.shape[k];
        od += c * l.dst[k];
        os += c * l.src[k];
    }
}

/* Raw element bits (same dtype). */
template <typename W>
__global__ void copy_same(W *dst, const W *src, layout2 l)
{
    MOE_GRID_STRIDE(i, l.numel)
    {
        int64_t od, os;
        offsets2(l, i, od, os);
        dst[od] = src[os];
    }
}

__global__ void copy_f32_to_bf16(uint16_t *dst, const float *src, layout2 l)
{
    MOE_GRID_STRIDE(i, l.numel)
    {
        int64_t od, os;
        offsets2(l, i, od, os);
        dst[od] = moe_d_f32_to_bf16(src[os]);
    }
}

__global__ void copy_bf16_to_f32(float *dst, const uint16_t *src, layout2 l)
{
    MOE_GRID_STRIDE(i, l.numel)
    {
        int64_t od, os;
        offsets2(l, i, od, os);
        dst[od] = moe_d_bf16_to_f32(src[os]);
    }
}

__global__ void copy_any(char *dst, moe_dtype dt, const char *src, moe_dtype st, layout2 l)
{
    int dsz = dt == MOE_F64 || dt == MOE_I64 ? 8 : dt == MOE_F32 || dt == MOE_I32 ? 4 : dt == MOE_BF16 ? 2 : 1;
    int ssz = st == MOE_F64 || st == MOE_I64 ? 8 : st == MOE_F32 || st == MOE_I32 ? 4 : st == MOE_BF16 ? 2 : 1;
    MOE_GRID_STRIDE(i, l.numel)
    {
        int64_t od, os;
        offsets2(l, i, od, os);
        moe_d_store(dt, dst + od * dsz, moe_d_load(st, src + os * ssz));
    }
}

template <typename W>
__global__ void fill_bits(W *dst, W bits, layout2 l)
{
    MOE_GRID_STRIDE(i, l.numel)
    {
        int64_t od, os;
        offsets2(l, i, od, os);
        dst[od] = bits;
    }
}

} // namespace

extern "C" moe_status moe_cuda_copy(moe_tensor *dst, const moe_tensor *src)
{
    layout2 l = make_layout(dst, src);
    if (l.numel == 0) return MOE_OK;
    unsigned grid = moe_cuda_grid(l.numel, kBlock);
    cudaStream_t s = moe_cuda_stream();
    void *d = moe_tensor_data(dst), *x = moe_tensor_data(src);
    if (dst->dtype == src->dtype) {
        switch (moe_dtype_size(dst->dtype)) {
        case 1: copy_same<uint8_t><<<grid, kBlock, 0, s>>>((uint8_t *)d, (const uint8_t *)x, l); break;
        case 2: copy_same<uint16_t><<<grid, kBlock, 0, s>>>((uint16_t *)d, (const uint16_t *)x, l); break;
        case 4: copy_same<uint32_t><<<grid, kBlock, 0, s>>>((uint32_t *)d, (const uint32_t *)x, l); break;
        default: copy_same<uint64_t><<<grid, kBlock, 0, s>>>((uint64_t *)d, (const uint64_t *)x, l); break;
        }
    } else if (dst->dtype == MOE_BF16 && src->dtype == MOE_F32) {
        copy_f32_to_bf16<<<grid, kBlock, 0, s>>>((uint16_t *)d, (const float *)x, l);
    } else if (dst->dtype == MOE_F32 && src->dtype == MOE_BF16) {
        copy_bf16_to_f32<<<grid, kBlock, 0, s>>>((float *)d, (const uint16_t *)x, l);
    } else {
        copy_any<<<grid, kBlock, 0, s>>>((char *)d, dst->dtype, (const char *)x, src->dtype, l);
    }
    CHECK_LAUNCH("copy");
    return MOE_OK;
}

extern "C" moe_status moe_cuda_fill(moe_tensor *t, double value)
{
    layout2 l = make_layout(t, t);
    if (l.numel == 0) return MOE_OK;
    unsigned char one[8] = {0};
    moe_dtype_store(t->dtype, one, value); /* the host's conversion, bit for bit */
    unsigned grid = moe_cuda_grid(l.numel, kBlock);
    cudaStream_t s = moe_cuda_stream();
    void *d = moe_tensor_data(t);
    switch (moe_dtype_size(t->dtype)) {
    case 1: fill_bits<uint8_t><<<grid, kBlock, 0, s>>>((uint8_t *)d, one[0], l); break;
    case 2: {
        uint16_t b;
        memcpy(&b, one, 2);
        fill_bits<uint16_t><<<grid, kBlock, 0, s>>>((uint16_t *)d, b, l);
        break;
    }
    case 4: {
        uint32_t b;
        memcpy(&b, one, 4);
        fill_bits<uint32_t><<<grid, kBlock, 0, s>>>((uint32_t *)d, b, l);
        break;
    }
    default: {
        uint64_t b;
        memcpy(&b, one, 8);
        fill_bits<uint64_t><<<grid, kBlock, 0, s>>>((uint64_t *)d, b, l);
        break;
    }
    }
    CHECK_LAUNCH("fill");
    return MOE_OK;
}
