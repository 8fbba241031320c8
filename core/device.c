/* device.c — the device-dispatching building blocks every op uses: element
 * copy (with dtype conversion), fill, and byte transfers to and from the
 * host. The pattern is described in device.h. */
#include "device.h"

moe_status moe_copy_elements(moe_tensor *dst, const moe_tensor *src)
{
    MOE_CHECK_SAME_DEVICE("copy", dst, src);
    if (moe_on_cuda(dst)) return MOE_CUDA(moe_cuda_copy(dst, src));
    moe_cpu_copy(dst, src);
    return MOE_OK;
}

moe_status moe_fill_elements(moe_tensor *t, double value)
{
    if (moe_on_cuda(t)) return MOE_CUDA(moe_cuda_fill(t, value));
    moe_cpu_fill(t, value);
    return MOE_OK;
}

moe_status moe_bytes_to_host(void *dst, const void *src, size_t nbytes, moe_device device)
{
    if (device == MOE_CUDA) return MOE_CUDA(moe_cuda_memcpy(dst, src, nbytes, MOE_COPY_D2H));
    memcpy(dst, src, nbytes);
    return MOE_OK;
}

moe_status moe_bytes_from_host(void *dst, const void *src, size_t nbytes, moe_device device)
{
    if (device == MOE_CUDA) return MOE_CUDA(moe_cuda_memcpy(dst, src, nbytes, MOE_COPY_H2D));
    memcpy(dst, src, nbytes);
    return MOE_OK;
}
