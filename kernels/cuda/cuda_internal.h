/* cuda_internal.h — what every .cu file of the CUDA backend shares: status
 * propagation (no exits) and the stream kernels run on. C++ only. */
#ifndef MOELAB_CUDA_INTERNAL_H
#define MOELAB_CUDA_INTERNAL_H

#include <cuda_runtime.h>

#include "../../core/error.h"
#include "cuda.h"

/* Return a moe_status naming OP when a CUDA runtime call fails. */
#define CHECK_CUDA(op, call)                                                            \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess)                                                          \
            return moe_fail(MOE_ERR_BACKEND, op, "%s failed: %s (%s:%d)", #call,         \
                            cudaGetErrorString(e_), __FILE__, __LINE__);                \
    } while (0)

/* After a kernel launch: a bad configuration shows up here, not later. */
#define CHECK_LAUNCH(op) CHECK_CUDA(op, cudaGetLastError())

/* The stream every kernel and cuBLAS call of this thread runs on. */
cudaStream_t moe_cuda_stream(void);

#endif
