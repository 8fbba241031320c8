/* device.h — how a core op picks its kernel by device. Not installed.
 *
 * One rule: an op stays one function for every device, forward beside
 * backward, down to its innermost kernel call; only that call branches on
 * the device of the tensors it hands over:
 *
 *     moe_tensor *r;                                    // on the input's device
 *     MOE_TRYG(moe_tensor_empty(&r, ct, a->device, nd, shape));
 *     if (moe_on_cuda(r))
 *         st = MOE_CUDA(moe_cuda_binary(kind, ct, moe_tensor_data(r),
 *                                       moe_tensor_data(ac), moe_tensor_data(bc), &it));
 *     else
 *         moe_cpu_binary(kind, ct, moe_tensor_data(r), moe_tensor_data(ac),
 *                        moe_tensor_data(bc), &it);
 *
 * - Tensors an op allocates live on its inputs' device (never MOE_CPU).
 * - Copies and dtype conversions go through moe_copy_elements and
 *   moe_fill_elements (below, core/device.c), which dispatch themselves;
 *   ops never call moe_cpu_copy/moe_cpu_fill directly.
 * - A CUDA kernel is an extern "C" function declared in a plain C header
 *   kernels/cuda/<family>.h (no CUDA types; included in every build). It
 *   takes device pointers, the compute dtype and sizes, returns moe_status
 *   (CHECK_CUDA/CHECK_LAUNCH), launches on moe_cuda_stream() and does not
 *   synchronise.
 * - MOE_CUDA(call) is `call` in a CUDA build. Without CUDA the call is only
 *   type-checked (inside sizeof: never evaluated, never linked) and the
 *   expression is an "unsupported" error — so call sites need no #ifdef and
 *   the CPU-only build links. (moe_on_cuda() is constant false there anyway.)
 * - An op that has CUDA kernels drops its MOE_CHECK_CPU; an op that has none
 *   keeps it, so a CUDA tensor gets "no cuda kernel for <op> yet", not a
 *   crash. Backward functions compose ops and need nothing device-specific.
 */
#ifndef MOELAB_DEVICE_H
#define MOELAB_DEVICE_H

#include "config.h"
#include "internal.h"

#include "../kernels/cuda/cuda.h"

/* True when T lives on a GPU (always false in a build without CUDA). */
static inline bool moe_on_cuda(const moe_tensor *t)
{
#ifdef MOELAB_HAVE_CUDA
    return t->device == MOE_CUDA;
#else
    (void)t;
    return false;
#endif
}

static inline moe_status moe_cuda_missing(const char *fn)
{
    return moe_fail(MOE_ERR_UNSUPPORTED, fn, "moelab was built without CUDA support");
}

#ifdef MOELAB_HAVE_CUDA
#define MOE_CUDA(call) (call)
#else
#define MOE_CUDA(call) ((void)sizeof(call), moe_cuda_missing(__func__))
#endif

/* dst ← src elementwise on their (common) device: same shape, SRC may have
 * zero strides from a broadcast, any dtypes (converted; bf16 rounds to
 * nearest even). */
moe_status moe_copy_elements(moe_tensor *dst, const moe_tensor *src);
/* Every element of T (any strides) ← VALUE converted to T's dtype. */
moe_status moe_fill_elements(moe_tensor *t, double value);
/* Copy the NBYTES at device or host pointer SRC of a tensor on DEVICE to
 * host memory DST, and back (element access, printing, to-list). */
moe_status moe_bytes_to_host(void *dst, const void *src, size_t nbytes, moe_device device);
moe_status moe_bytes_from_host(void *dst, const void *src, size_t nbytes, moe_device device);

#endif
