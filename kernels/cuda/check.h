/* check.h — CHECK_CUDA, the one wrapper that turns a failing CUDA runtime
 * call into a moe_status naming the operation, the call and file:line.
 * Plain C or C++; include <cuda_runtime.h> and core/error.h first. Used by
 * the .cu files (through cuda_internal.h) and the NCCL backend. */
#ifndef MOELAB_CUDA_CHECK_H
#define MOELAB_CUDA_CHECK_H

/* Return a moe_status naming OP when a CUDA runtime call fails. */
#define CHECK_CUDA(op, call)                                                            \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess)                                                          \
            return moe_fail(MOE_ERR_BACKEND, op, "%s failed: %s (%s:%d)", #call,         \
                            cudaGetErrorString(e_), __FILE__, __LINE__);                \
    } while (0)

#endif
