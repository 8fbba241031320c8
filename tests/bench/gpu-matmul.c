/* gpu-matmul.c — moelab's GPU matmul (moe_matmul on CUDA tensors, through
 * kernels/cuda/blaslt.cu) against cuBLASLt and cuBLAS called directly in the
 * same run, on the same buffers:
 *   bf16 8192³ (bf16 in and out, f32 accumulation): target >= 90% of the
 *   faster direct call;
 *   f32 4096³ (exact f32, no TF32 on either side), and moelab with TF32
 *   allowed for information.
 * Prints TFLOP/s, the ratios and PASS/MISS, and PyTorch's numbers from
 * tests/bench/matmul_torch.py when torch (with CUDA) is importable. Without a
 * GPU: "skipped: no GPU". Sizes: gpu-matmul [N_BF16 [N_F32]]. */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moelab.h"

#ifndef MOE_SRCDIR
#define MOE_SRCDIR "."
#endif

#ifdef MOELAB_HAVE_CUDA
/* the toolkit's headers declare a few functions without prototypes */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#pragma GCC diagnostic pop

#include "../../kernels/cuda/blaslt.h"
#include "../../kernels/cuda/cuda.h"

#define TRY(call)                                                                      \
    do {                                                                               \
        if ((call) != MOE_OK) {                                                        \
            fprintf(stderr, "gpu-matmul: %s failed: %s\n", #call, moe_last_error());   \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)
#define TRY_CUDA(call)                                                                         \
    do {                                                                                       \
        cudaError_t e_ = (call);                                                               \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "gpu-matmul: %s failed: %s\n", #call, cudaGetErrorString(e_));     \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)
#define TRY_BLAS(call)                                                                         \
    do {                                                                                       \
        cublasStatus_t s_ = (call);                                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                     \
            fprintf(stderr, "gpu-matmul: %s failed: status %d\n", #call, (int)s_);             \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

enum { WARMUP = 3, REPS = 20 };

/* What one timed loop runs. */
typedef enum { VIA_MOELAB, VIA_LT, VIA_CUBLAS } via;

typedef struct bench {
    moe_dtype dt;
    int64_t n;
    moe_tensor *a, *b, *c; /* [n n] on the GPU; c is the direct calls' output */
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
    void *ws;
    size_t ws_bytes;
    cublasHandle_t blas;
} bench;

/* The direct cuBLASLt product in row-major terms: C = A B is the column-major
 * Cᵀ = Bᵀ Aᵀ, so cuBLAS's A is our B and its B our A (as blaslt.cu). */
static void lt_setup(bench *b)
{
    cudaDataType_t t = b->dt == MOE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    TRY_BLAS(cublasLtCreate(&b->lt));
    TRY_BLAS(cublasLtMatmulDescCreate(&b->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    TRY_BLAS(cublasLtMatrixLayoutCreate(&b->la, t, (uint64_t)b->n, (uint64_t)b->n, b->n));
    TRY_BLAS(cublasLtMatrixLayoutCreate(&b->lb, t, (uint64_t)b->n, (uint64_t)b->n, b->n));
    TRY_BLAS(cublasLtMatrixLayoutCreate(&b->lc, t, (uint64_t)b->n, (uint64_t)b->n, b->n));
    b->ws_bytes = (size_t)32 << 20;
    TRY_CUDA(cudaMalloc(&b->ws, b->ws_bytes));
    cublasLtMatmulPreference_t pref;
    TRY_BLAS(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = b->ws_bytes;
    TRY_BLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    TRY_BLAS(cublasLtMatmulAlgoGetHeuristic(b->lt, b->op, b->la, b->lb, b->lc, b->lc, pref, 1, &res, &found));
    if (found < 1) {
        fprintf(stderr, "gpu-matmul: cuBLASLt offers no algorithm\n");
        exit(1);
    }
    b->algo = res.algo;
    cublasLtMatmulPreferenceDestroy(pref);
    TRY_BLAS(cublasCreate(&b->blas));
    TRY_BLAS(cublasSetWorkspace(b->blas, b->ws, b->ws_bytes));
}

static void lt_teardown(bench *b)
{
    cublasLtMatrixLayoutDestroy(b->la);
    cublasLtMatrixLayoutDestroy(b->lb);
    cublasLtMatrixLayoutDestroy(b->lc);
    cublasLtMatmulDescDestroy(b->op);
    cublasLtDestroy(b->lt);
    cublasDestroy(b->blas);
    cudaFree(b->ws);
}

static void run_once(bench *b, via v)
{
    float alpha = 1, beta = 0;
    void *A = moe_tensor_data(b->a), *B = moe_tensor_data(b->b), *C = moe_tensor_data(b->c);
    int n = (int)b->n;
    switch (v) {
    case VIA_MOELAB: {
        moe_tensor *r;
        TRY(moe_matmul(&r, b->a, b->b));
        moe_tensor_release(r); /* back to the caching allocator: no cudaMalloc next time */
        break;
    }
    case VIA_LT:
        TRY_BLAS(cublasLtMatmul(b->lt, b->op, &alpha, B, b->la, A, b->lb, &beta, C, b->lc, C, b->lc, &b->algo, b->ws,
                                b->ws_bytes, 0));
        break;
    case VIA_CUBLAS: {
        cudaDataType_t t = b->dt == MOE_BF16 ? CUDA_R_16BF : CUDA_R_32F;
        TRY_BLAS(cublasGemmEx(b->blas, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, B, t, n, A, t, n, &beta, C, t, n,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        break;
    }
    }
}

/* TFLOP/s of V: the mean over REPS timed with events after WARMUP calls. */
static double tflops(bench *b, via v)
{
    for (int i = 0; i < WARMUP; i++) run_once(b, v);
    cudaEvent_t t0, t1;
    TRY_CUDA(cudaEventCreate(&t0));
    TRY_CUDA(cudaEventCreate(&t1));
    TRY_CUDA(cudaEventRecord(t0, 0));
    for (int i = 0; i < REPS; i++) run_once(b, v);
    TRY_CUDA(cudaEventRecord(t1, 0));
    TRY_CUDA(cudaEventSynchronize(t1));
    float ms = 0;
    TRY_CUDA(cudaEventElapsedTime(&ms, t0, t1));
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    double n = (double)b->n;
    return 2.0 * n * n * n * REPS / ((double)ms * 1e-3) / 1e12;
}

/* Max |moelab - cuBLASLt| / max(1, max |cuBLASLt|) over a sample of C: the
 * two paths must compute the same product. */
static double agreement(bench *b)
{
    moe_tensor *r, *rh, *ch;
    TRY(moe_matmul(&r, b->a, b->b));
    run_once(b, VIA_LT);
    TRY(moe_to_device(&rh, r, MOE_CPU));
    TRY(moe_to_device(&ch, b->c, MOE_CPU));
    int64_t n = b->n * b->n, step = n / 4099 + 1;
    double maxd = 0, maxc = 1, x, y;
    for (int64_t i = 0; i < n; i += step) {
        int64_t ix[2] = {i / b->n, i % b->n};
        TRY(moe_tensor_get(rh, ix, &x));
        TRY(moe_tensor_get(ch, ix, &y));
        if (fabs(x - y) > maxd) maxd = fabs(x - y);
        if (fabs(y) > maxc) maxc = fabs(y);
    }
    moe_tensor_release(r);
    moe_tensor_release(rh);
    moe_tensor_release(ch);
    return maxd / maxc;
}

static void bench_open(bench *b, moe_dtype dt, int64_t n)
{
    memset(b, 0, sizeof *b);
    b->dt = dt;
    b->n = n;
    moe_rng rng;
    moe_rng_init(&rng, 7);
    moe_tensor *ah, *bh, *a32, *b32;
    int64_t shape[2] = {n, n};
    TRY(moe_tensor_rand(&a32, &rng, MOE_F32, MOE_CPU, 2, shape));
    TRY(moe_tensor_rand(&b32, &rng, MOE_F32, MOE_CPU, 2, shape));
    TRY(moe_to_dtype(&ah, a32, dt));
    TRY(moe_to_dtype(&bh, b32, dt));
    TRY(moe_to_device(&b->a, ah, MOE_CUDA));
    TRY(moe_to_device(&b->b, bh, MOE_CUDA));
    TRY(moe_tensor_empty(&b->c, dt, MOE_CUDA, 2, shape));
    moe_tensor_release(a32);
    moe_tensor_release(b32);
    moe_tensor_release(ah);
    moe_tensor_release(bh);
    lt_setup(b);
}

static void bench_close(bench *b)
{
    lt_teardown(b);
    moe_tensor_release(b->a);
    moe_tensor_release(b->b);
    moe_tensor_release(b->c);
}

/* PyTorch's TFLOP/s for "bf16 N" / "f32 N" lines of matmul_torch.py. */
static bool torch_numbers(int64_t n16, int64_t n32, double *t16, double *t32)
{
    *t16 = *t32 = -1;
    if (system("python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1") != 0) {
        printf("PyTorch not importable (or without CUDA): reference skipped\n");
        return false;
    }
    const char *src = getenv("MOELAB_SRCDIR") ? getenv("MOELAB_SRCDIR") : MOE_SRCDIR;
    char cmd[1024], line[512];
    snprintf(cmd, sizeof cmd, "python3 '%s/tests/bench/matmul_torch.py' %lld %lld 2>&1", src, (long long)n16,
             (long long)n32);
    FILE *p = popen(cmd, "r");
    if (!p) return false;
    while (fgets(line, sizeof line, p)) {
        double v;
        if (sscanf(line, "torch_tflops bf16 %lf", &v) == 1)
            *t16 = v;
        else if (sscanf(line, "torch_tflops f32 %lf", &v) == 1)
            *t32 = v;
        else
            fputs(line, stdout);
    }
    pclose(p);
    return *t16 > 0 || *t32 > 0;
}

int main(int argc, char **argv)
{
    if (moe_device_count(MOE_CUDA) == 0 || moe_cuda_init() != MOE_OK) {
        printf("gpu-matmul: skipped: no GPU\n");
        return 0;
    }
    int64_t n16 = argc > 1 ? atoll(argv[1]) : 8192, n32 = argc > 2 ? atoll(argv[2]) : 4096;
    moe_grad_set_enabled(false);
    bench b;

    bench_open(&b, MOE_BF16, n16);
    double err16 = agreement(&b);
    double m16 = tflops(&b, VIA_MOELAB), l16 = tflops(&b, VIA_LT), c16 = tflops(&b, VIA_CUBLAS);
    bench_close(&b);

    bench_open(&b, MOE_F32, n32);
    double err32 = agreement(&b);
    double m32 = tflops(&b, VIA_MOELAB), l32 = tflops(&b, VIA_LT), c32 = tflops(&b, VIA_CUBLAS);
    moe_blaslt_allow_tf32(true);
    double m32t = tflops(&b, VIA_MOELAB);
    moe_blaslt_allow_tf32(false);
    bench_close(&b);

    double t16, t32;
    torch_numbers(n16, n32, &t16, &t32);

    double best16 = l16 > c16 ? l16 : c16, best32 = l32 > c32 ? l32 : c32;
    char p16[32] = "-", p32[32] = "-";
    if (t16 > 0) snprintf(p16, sizeof p16, "%.1f", t16);
    if (t32 > 0) snprintf(p32, sizeof p32, "%.1f", t32);
    printf("\nmatmul on the GPU (TFLOP/s, mean of %d after %d warm-up; ratio: moelab / faster direct call)\n",
           REPS, WARMUP);
    printf("  %-16s %9s %9s %9s %9s %7s\n", "case", "moelab", "cuBLASLt", "cuBLAS", "PyTorch", "ratio");
    printf("  bf16 %-11lld %9.1f %9.1f %9.1f %9s %6.1f%%\n", (long long)n16, m16, l16, c16, p16, 100 * m16 / best16);
    printf("  f32 %-12lld %9.1f %9.1f %9.1f %9s %6.1f%%\n", (long long)n32, m32, l32, c32, p32, 100 * m32 / best32);
    printf("  f32 TF32 %-7lld %9.1f   (moelab with TF32 allowed; information)\n", (long long)n32, m32t);
    printf("  moelab vs cuBLASLt output: normalised difference bf16 %.2e, f32 %.2e\n", err16, err32);
    bool pass = m16 >= 0.9 * best16;
    printf("target: bf16 %lld^3 >= 90%% of cuBLAS(Lt) called directly: %.1f%% %s\n", (long long)n16,
           100 * m16 / best16, pass ? "PASS" : "MISS");
    return 0;
}

#else
int main(void)
{
    printf("gpu-matmul: skipped: no GPU (built without CUDA)\n");
    return 0;
}
#endif
