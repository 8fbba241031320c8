/* cuda_internal.h — what every .cu file of the CUDA backend shares: status
 * propagation (no exits) and the stream kernels run on. C++ only. */
#ifndef MOELAB_CUDA_INTERNAL_H
#define MOELAB_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "../../core/error.h"
#include "cuda.h"

#include "check.h"

/* After a kernel launch: a bad configuration shows up here, not later. */
#define CHECK_LAUNCH(op) CHECK_CUDA(op, cudaGetLastError())

/* The stream every kernel and cuBLAS call of this thread runs on. */
cudaStream_t moe_cuda_stream(void);

/* The caching allocator of alloc.cu (installed by moe_cuda_init). */
struct moe_allocator;
const struct moe_allocator *moe_cuda_caching_allocator(void);

/* Grid for N elements with BLOCK threads each: enough blocks to fill the
 * GPU; kernels loop grid-stride over the rest. */
static inline unsigned moe_cuda_grid(int64_t n, int block)
{
    int64_t blocks = (n + block - 1) / block;
    if (blocks < 1) blocks = 1;
    return (unsigned)(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

#endif
