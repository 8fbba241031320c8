/* grouped_gemm.cu — grouped expert GEMMs and the expert MLP on the GPU (see
 * grouped_gemm.h).
 *
 * Row-major in, column-major cuBLAS underneath: C [M N] = op(A) op(B) in
 * row-major is Cᵀ = op(B)ᵀ op(A)ᵀ, and a row-major [r c] matrix with row
 * stride ld is the column-major [c r] matrix with the same ld — so every
 * product calls cuBLAS with the operands swapped, (N, M, K), and each
 * operand's own transpose flag.
 *
 * Dimension letters: E experts, N rows, n_e rows of expert e, D model dim,
 * F expert ffn dim, P problems (non-empty groups). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mutex>
#include <vector>

#include "cuda_internal.h"
#include "grouped_gemm.h"
#include "../gelu.h"

#define OP "cuda-grouped-gemm"

#define CHECK_CUBLAS(op, call)                                                                \
    do {                                                                                      \
        cublasStatus_t s_ = (call);                                                           \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                      \
            return moe_fail(MOE_ERR_BACKEND, op, "%s failed: %s (%s:%d)", #call,              \
                            cublasGetStatusString(s_), __FILE__, __LINE__);                   \
    } while (0)

namespace {

int force_loop = -1; /* -1: read MOELAB_CUDA_GROUPED on first use */
bool grouped_refused;  /* cuBLAS said the grouped call is unsupported: loop from now on */

bool use_loop()
{
    if (force_loop < 0) {
        const char *s = getenv("MOELAB_CUDA_GROUPED");
        force_loop = s && strcmp(s, "loop") == 0;
    }
    return force_loop || grouped_refused;
}

/* Device array of 3·P pointers (A, B, C lists), grown as needed. */
std::mutex ptr_lock;
void **dev_ptrs;
size_t dev_ptrs_cap;

moe_status ensure_ptrs(size_t n)
{
    if (n <= dev_ptrs_cap) return MOE_OK;
    if (dev_ptrs) {
        CHECK_CUDA(OP, cudaStreamSynchronize(moe_cuda_stream())); /* in use by queued work */
        cudaFree(dev_ptrs);
        dev_ptrs = NULL;
        dev_ptrs_cap = 0;
    }
    size_t cap = n < 768 ? 768 : n;
    CHECK_CUDA(OP, cudaMalloc((void **)&dev_ptrs, cap * sizeof(void *)));
    dev_ptrs_cap = cap;
    return MOE_OK;
}

const char *ptr_at(const moe_cuda_gmat &g, const int64_t *off, int64_t e, size_t es)
{
    int64_t elems = g.kind == MOE_CUDA_GROUP_ROWS ? off[e] * g.ld : e * g.stride;
    return (const char *)g.data + (size_t)elems * es;
}

struct problem {
    int m, n, k;                /* cuBLAS's (column-major) sizes: our N, M, K */
    const void *a, *b;          /* cuBLAS's A = our B, cuBLAS's B = our A */
    void *c;
};

} // namespace

extern "C" void moe_cuda_grouped_force_loop(bool loop) { force_loop = loop ? 1 : 0; }

extern "C" moe_status moe_cuda_grouped_gemm(bool bf16, int64_t E, const int64_t *off, moe_cuda_gmat a,
                                            moe_cuda_gmat b, moe_cuda_gmat c, int64_t m_fixed, int64_t n_fixed,
                                            int64_t k_fixed, float alpha, float beta)
{
    const size_t es = bf16 ? 2 : 4;
    const cudaDataType_t dt = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = CUBLAS_COMPUTE_32F;
    const cublasOperation_t opa = b.trans ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLAS's A is our B */
    const cublasOperation_t opb = a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    std::vector<problem> ps;
    ps.reserve((size_t)E);
    for (int64_t e = 0; e < E; e++) {
        int64_t ne = off[e + 1] - off[e];
        if (ne <= 0) continue;
        int64_t M = a.kind == MOE_CUDA_GROUP_ROWS && !a.trans ? ne : m_fixed;
        int64_t N = b.kind == MOE_CUDA_GROUP_ROWS && b.trans ? ne : n_fixed;
        int64_t K = a.kind == MOE_CUDA_GROUP_ROWS && a.trans ? ne : k_fixed;
        if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX)
            return moe_fail(MOE_ERR_UNSUPPORTED, OP, "group %lld is %lld x %lld x %lld: beyond cuBLAS's int sizes",
                            (long long)e, (long long)M, (long long)N, (long long)K);
        if (M == 0 || N == 0) continue;
        problem p;
        p.m = (int)N;
        p.n = (int)M;
        p.k = (int)K;
        p.a = ptr_at(b, off, e, es);
        p.b = ptr_at(a, off, e, es);
        p.c = (void *)ptr_at(c, off, e, es);
        ps.push_back(p);
    }
    if (ps.empty()) return MOE_OK;
    void *hv;
    MOE_TRY(moe_cublas_handle(&hv));
    cublasHandle_t h = (cublasHandle_t)hv;
    cudaStream_t stream = moe_cuda_stream();
    CHECK_CUBLAS(OP, cublasSetStream(h, stream));
    CHECK_CUBLAS(OP, cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
    const int lda = (int)b.ld, ldb = (int)a.ld, ldc = (int)c.ld;

    if (!use_loop()) {
        const int P = (int)ps.size();
        std::vector<cublasOperation_t> ta((size_t)P, opa), tb((size_t)P, opb);
        std::vector<int> m((size_t)P), n((size_t)P), k((size_t)P), la((size_t)P, lda), lb((size_t)P, ldb),
            lc((size_t)P, ldc), gs((size_t)P, 1);
        std::vector<float> al((size_t)P, alpha), be((size_t)P, beta);
        std::vector<const void *> host((size_t)(3 * P));
        for (int i = 0; i < P; i++) {
            m[(size_t)i] = ps[(size_t)i].m;
            n[(size_t)i] = ps[(size_t)i].n;
            k[(size_t)i] = ps[(size_t)i].k;
            host[(size_t)i] = ps[(size_t)i].a;
            host[(size_t)(P + i)] = ps[(size_t)i].b;
            host[(size_t)(2 * P + i)] = ps[(size_t)i].c;
        }
        std::lock_guard<std::mutex> guard(ptr_lock);
        MOE_TRY(ensure_ptrs((size_t)(3 * P)));
        /* pageable source: the copy has taken the bytes when it returns */
        CHECK_CUDA(OP, cudaMemcpyAsync(dev_ptrs, host.data(), sizeof(void *) * (size_t)(3 * P),
                                       cudaMemcpyHostToDevice, stream));
        cublasStatus_t s = cublasGemmGroupedBatchedEx(
            h, ta.data(), tb.data(), m.data(), n.data(), k.data(), al.data(), (const void *const *)dev_ptrs, dt,
            la.data(), (const void *const *)(dev_ptrs + P), dt, lb.data(), be.data(), (void *const *)(dev_ptrs + 2 * P),
            dt, lc.data(), P, gs.data(), ct);
        if (s == CUBLAS_STATUS_SUCCESS) return MOE_OK;
        if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE)
            return moe_fail(MOE_ERR_BACKEND, OP, "cublasGemmGroupedBatchedEx (%d problems) failed: %s", P,
                            cublasGetStatusString(s));
        grouped_refused = true; /* this cuBLAS has no such grouped GEMM for these types: loop */
    }
    for (const problem &p : ps)
        CHECK_CUBLAS(OP, cublasGemmEx(h, opa, opb, p.m, p.n, p.k, &alpha, p.a, dt, lda, p.b, dt, ldb, &beta, p.c, dt,
                                      ldc, ct, CUBLAS_GEMM_DEFAULT));
    return MOE_OK;
}

/* ---- activations ------------------------------------------------------------------------- */

namespace {

__device__ __forceinline__ float ldv(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float ldv(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void stv(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void stv(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

#define SQRT1_2 ((float)MOE_GELU_SQRT1_2)
#define INV_SQRT_2PI ((float)MOE_GELU_INV_SQRT_2PI)
#define GELU_C ((float)MOE_GELU_TANH_C)
#define GELU_A ((float)MOE_GELU_TANH_K)

template <typename TV>
__global__ void act_fw_kernel(int act, const TV *g, const TV *u, TV *h, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float x = ldv(u, i), r;
        if (act == MOE_CUDA_FFN_SWIGLU) {
            float q = ldv(g, i);
            r = q / (1.0f + expf(-q)) * x;
        } else if (act == MOE_CUDA_FFN_GELU) {
            r = 0.5f * x * (1.0f + erff(x * SQRT1_2));
        } else {
            r = 0.5f * x * (1.0f + tanhf(GELU_C * (x + GELU_A * x * x * x)));
        }
        stv(h, i, r);
    }
}

/* In: dh in A. SwiGLU: dG into A, dU into B; GELU: dU into A. */
template <typename TV>
__global__ void act_bw_kernel(int act, const TV *g, const TV *u, TV *A, TV *B, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float dh = ldv(A, i), x = ldv(u, i);
        if (act == MOE_CUDA_FFN_SWIGLU) {
            float q = ldv(g, i), s = 1.0f / (1.0f + expf(-q));
            stv(B, i, dh * q * s);
            stv(A, i, dh * x * s * (1.0f + q * (1.0f - s)));
        } else if (act == MOE_CUDA_FFN_GELU) {
            float cdf = 0.5f * (1.0f + erff(x * SQRT1_2)), pdf = expf(-0.5f * x * x) * INV_SQRT_2PI;
            stv(A, i, dh * (cdf + x * pdf));
        } else {
            float x2 = x * x, th = tanhf(GELU_C * (x + GELU_A * x2 * x));
            float dinner = GELU_C * (1.0f + 3.0f * GELU_A * x2);
            stv(A, i, dh * (0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * dinner));
        }
    }
}

moe_status act_fw(bool bf16, int act, const void *g, const void *u, void *h, int64_t n)
{
    if (n <= 0) return MOE_OK;
    unsigned grid = moe_cuda_grid(n, 256);
    if (bf16)
        act_fw_kernel<<<grid, 256, 0, moe_cuda_stream()>>>(act, (const __nv_bfloat16 *)g, (const __nv_bfloat16 *)u,
                                                           (__nv_bfloat16 *)h, n);
    else
        act_fw_kernel<<<grid, 256, 0, moe_cuda_stream()>>>(act, (const float *)g, (const float *)u, (float *)h, n);
    CHECK_LAUNCH("cuda-expert-act");
    return MOE_OK;
}

moe_status act_bw(bool bf16, int act, const void *g, const void *u, void *A, void *B, int64_t n)
{
    if (n <= 0) return MOE_OK;
    unsigned grid = moe_cuda_grid(n, 256);
    if (bf16)
        act_bw_kernel<<<grid, 256, 0, moe_cuda_stream()>>>(act, (const __nv_bfloat16 *)g, (const __nv_bfloat16 *)u,
                                                           (__nv_bfloat16 *)A, (__nv_bfloat16 *)B, n);
    else
        act_bw_kernel<<<grid, 256, 0, moe_cuda_stream()>>>(act, (const float *)g, (const float *)u, (float *)A,
                                                           (float *)B, n);
    CHECK_LAUNCH("cuda-expert-act-backward");
    return MOE_OK;
}

moe_cuda_gmat rows(const void *p, int64_t ld, bool trans = false)
{
    moe_cuda_gmat m = {(void *)p, MOE_CUDA_GROUP_ROWS, ld, 0, trans};
    return m;
}

moe_cuda_gmat slice(const void *p, int64_t ld, int64_t stride, bool trans = false)
{
    moe_cuda_gmat m = {(void *)p, MOE_CUDA_GROUP_SLICE, ld, stride, trans};
    return m;
}

/* Zero the weight-gradient slices of experts without rows. */
moe_status zero_empty(void *dw, const moe_cuda_ffn *p, int64_t slice_elems, size_t es)
{
    for (int64_t e = 0; e < p->E; e++)
        if (p->off[e + 1] == p->off[e])
            CHECK_CUDA(OP, cudaMemsetAsync((char *)dw + (size_t)(e * slice_elems) * es, 0,
                                           (size_t)slice_elems * es, moe_cuda_stream()));
    return MOE_OK;
}

} // namespace

extern "C" moe_status moe_cuda_ffn_forward(const moe_cuda_ffn *p, void *g, void *u, void *h, void *y)
{
    const int64_t E = p->E, D = p->D, F = p->F, N = p->off[E];
    const bool swiglu = p->act == MOE_CUDA_FFN_SWIGLU;
    if (swiglu && (!p->wg || !g))
        return moe_fail(MOE_ERR_ARG, "cuda-expert-mlp", "SwiGLU needs w_gate and the G buffer");
    if (swiglu)
        MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(p->x, D), slice(p->wg, F, D * F), rows(g, F), 0, F, D,
                                      1.0f, 0.0f));
    MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(p->x, D), slice(p->wu, F, D * F), rows(u, F), 0, F, D, 1.0f,
                                  0.0f));
    MOE_TRY(act_fw(p->bf16, p->act, swiglu ? g : u, u, h, N * F));
    return moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(h, F), slice(p->wd, D, F * D), rows(y, D), 0, D, F, 1.0f,
                                 0.0f);
}

extern "C" moe_status moe_cuda_ffn_backward(const moe_cuda_ffn *p, const void *g, const void *u, const void *h,
                                            const void *dy, void *dx, void *dwg, void *dwu, void *dwd, void *scratch)
{
    const int64_t E = p->E, D = p->D, F = p->F, N = p->off[E];
    const bool swiglu = p->act == MOE_CUDA_FFN_SWIGLU;
    const size_t es = p->bf16 ? 2 : 4;
    char *A = (char *)scratch, *B = A + (size_t)(N * F) * es, *Hs = B + (size_t)(N * F) * es;
    if (dwd) { /* dWd = Hᵀ dY */
        if (!h) {
            MOE_TRY(act_fw(p->bf16, p->act, swiglu ? g : u, u, Hs, N * F));
            h = Hs;
        }
        MOE_TRY(zero_empty(dwd, p, F * D, es));
        MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(h, F, true), rows(dy, D), slice(dwd, D, F * D), F, D, 0,
                                      1.0f, 0.0f));
    }
    if (!dx && !dwg && !dwu) return MOE_OK;
    /* dh = dY Wdᵀ into A; then dG into A and dU into B (SwiGLU) or dU into A */
    MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(dy, D), slice(p->wd, D, F * D, true), rows(A, F), 0, F, D,
                                  1.0f, 0.0f));
    MOE_TRY(act_bw(p->bf16, p->act, swiglu ? g : u, u, A, B, N * F));
    const void *dg = swiglu ? A : NULL, *du = swiglu ? B : A;
    if (dg && dwg) {
        MOE_TRY(zero_empty(dwg, p, D * F, es));
        MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(p->x, D, true), rows(dg, F), slice(dwg, F, D * F), D, F,
                                      0, 1.0f, 0.0f));
    }
    if (dwu) {
        MOE_TRY(zero_empty(dwu, p, D * F, es));
        MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(p->x, D, true), rows(du, F), slice(dwu, F, D * F), D, F,
                                      0, 1.0f, 0.0f));
    }
    if (dx) {
        if (dg)
            MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(dg, F), slice(p->wg, F, D * F, true), rows(dx, D), 0,
                                          D, F, 1.0f, 0.0f));
        MOE_TRY(moe_cuda_grouped_gemm(p->bf16, E, p->off, rows(du, F), slice(p->wu, F, D * F, true), rows(dx, D), 0, D,
                                      F, 1.0f, dg ? 1.0f : 0.0f));
    }
    return MOE_OK;
}
