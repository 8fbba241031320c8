/* cuda.h — the C side of the CUDA backend (only with MOELAB_HAVE_CUDA). */
#ifndef MOELAB_CUDA_H
#define MOELAB_CUDA_H

#include <stdbool.h>
#include <stddef.h>

#include "../../core/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of visible devices (0 when the driver or a GPU is missing). */
int moe_cuda_device_count(void);
/* Install the device allocator; fails with a clear message without a GPU. */
moe_status moe_cuda_init(void);
typedef enum { MOE_COPY_H2D, MOE_COPY_D2H, MOE_COPY_D2D } moe_copy_kind;
moe_status moe_cuda_memcpy(void *dst, const void *src, size_t nbytes, moe_copy_kind kind);
/* The process's cuBLAS handle, created on first use. */
moe_status moe_cublas_handle(void **handle);

#ifdef __cplusplus
}
#endif
#endif
