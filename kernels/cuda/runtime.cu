/* runtime.cu — device allocator and copies. Status propagation, no exits. */
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

static moe_status device_alloc(void **ptr, size_t nbytes, void *ctx)
{
    (void)ctx;
    CHECK_CUDA("alloc", cudaMalloc(ptr, nbytes ? nbytes : 1));
    return MOE_OK;
}

static void device_free(void *ptr, size_t nbytes, void *ctx)
{
    (void)nbytes;
    (void)ctx;
    cudaFree(ptr);
}

static const moe_allocator device_allocator = {"cuda", device_alloc, device_free, NULL};

extern "C" moe_status moe_cuda_init(void)
{
    if (moe_allocator_get(MOE_CUDA)) return MOE_OK;
    int n = moe_cuda_device_count();
    if (n == 0)
        return moe_fail(MOE_ERR_DEVICE, "cuda", "no CUDA device is visible (built with CUDA, but "
                                                "cudaGetDeviceCount found none)");
    moe_allocator_set(MOE_CUDA, &device_allocator);
    return MOE_OK;
}

extern "C" moe_status moe_cuda_memcpy(void *dst, const void *src, size_t nbytes, moe_copy_kind kind)
{
    static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost,
                                           cudaMemcpyDeviceToDevice};
    CHECK_CUDA("copy", cudaMemcpy(dst, src, nbytes, kinds[kind]));
    return MOE_OK;
}
