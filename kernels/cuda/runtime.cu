/* runtime.cu — device discovery, the allocator installed at first use
 * (alloc.cu), copies and synchronisation. Status propagation, no exits. */
#include "../../core/tensor.h"
#include "cuda_internal.h"

/* One stream for now (the legacy default stream); streams per thread and
 * events come with overlap of communication and compute. */
cudaStream_t moe_cuda_stream(void) { return 0; }

extern "C" int moe_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

extern "C" moe_status moe_cuda_init(void)
{
    if (moe_allocator_get(MOE_CUDA)) return MOE_OK;
    int n = moe_cuda_device_count();
    if (n == 0)
        return moe_fail(MOE_ERR_DEVICE, "cuda", "no CUDA device is visible (built with CUDA, but "
                                                "cudaGetDeviceCount found none)");
    moe_allocator_set(MOE_CUDA, moe_cuda_caching_allocator());
    return MOE_OK;
}

extern "C" moe_status moe_cuda_memcpy(void *dst, const void *src, size_t nbytes, moe_copy_kind kind)
{
    static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                           cudaMemcpyDeviceToDevice};
    /* In stream order after the kernels that produced SRC, and finished on
     * return: the host side may be read or freed at once. */
    CHECK_CUDA("copy", cudaMemcpyAsync(dst, src, nbytes, kinds[kind], moe_cuda_stream()));
    CHECK_CUDA("copy", cudaStreamSynchronize(moe_cuda_stream()));
    return MOE_OK;
}

extern "C" moe_status moe_cuda_synchronize(void)
{
    CHECK_CUDA("synchronize", cudaStreamSynchronize(moe_cuda_stream()));
    return MOE_OK;
}
