/* cublas.cu — the process's cuBLAS handle, created on first use. The GEMMs
 * that run on it are in blaslt.cu (cuBLASLt, the matmuls) and
 * grouped_gemm.cu (grouped cuBLAS calls for the experts). */
#include <cublas_v2.h>

#include "cuda.h"

static cublasHandle_t handle;

extern "C" moe_status moe_cublas_handle(void **out)
{
    if (!handle) {
        cublasStatus_t s = cublasCreate(&handle);
        if (s != CUBLAS_STATUS_SUCCESS)
            return moe_fail(MOE_ERR_BACKEND, "cublas", "cublasCreate failed: status %d", (int)s);
    }
    *out = handle;
    return MOE_OK;
}
