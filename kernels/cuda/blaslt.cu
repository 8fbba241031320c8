/* blaslt.cu — the one wrapper around cuBLASLt: a process-wide context
 * (handle, workspace, descriptor/algorithm cache), the strided batched GEMM
 * in row-major terms, the batched broadcast driver behind matmul/bmm/linear,
 * and linear's bias-gradient column sum. Status propagation, no exits. */
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstring>
#include <mutex>

#include "../../core/tensor.h"
#include "blaslt.h"
#include "cuda_internal.h"

#define CHECK_LT(op, call)                                                                  \
    do {                                                                                    \
        cublasStatus_t s_ = (call);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                    \
            return moe_fail(MOE_ERR_BACKEND, op, "%s failed: %s (%s:%d)", #call,            \
                            cublasLtGetStatusString(s_), __FILE__, __LINE__);               \
    } while (0)

static const size_t WORKSPACE_BYTES = (size_t)32 << 20;
enum { PLAN_SLOTS = 64 };

/* ---- the context ---------------------------------------------------------------------- */

/* Everything that selects descriptors and an algorithm; int64 fields only, so
 * memcmp sees no padding. */
struct plan_key {
    int64_t ab, c, compute, ta, tb, bias;
    int64_t m, n, k, batch, lda, ldb, ldc, sa, sb, sc;
    int64_t align_a, align_b, align_c, align_bias;
};

struct plan {
    bool used;
    plan_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLAS's A (our B), B (our A), C = D */
    cublasLtMatmulAlgo_t algo;
};

static std::mutex ctx_lock;
static cublasLtHandle_t ctx_handle;
static void *ctx_workspace;
static plan ctx_plans[PLAN_SLOTS];
static int ctx_next;
static int64_t ctx_hits, ctx_misses;
static bool ctx_tf32;

static moe_status ctx_open(void)
{
    if (!ctx_handle) CHECK_LT("matmul", cublasLtCreate(&ctx_handle));
    if (!ctx_workspace) CHECK_CUDA("matmul", cudaMalloc(&ctx_workspace, WORKSPACE_BYTES));
    return MOE_OK;
}

static void plan_free(plan *p)
{
    if (!p->used) return;
    cublasLtMatrixLayoutDestroy(p->la);
    cublasLtMatrixLayoutDestroy(p->lb);
    cublasLtMatrixLayoutDestroy(p->lc);
    cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

extern "C" void moe_blaslt_shutdown(void)
{
    std::lock_guard<std::mutex> g(ctx_lock);
    for (plan &p : ctx_plans) plan_free(&p);
    if (ctx_workspace) cudaFree(ctx_workspace);
    if (ctx_handle) cublasLtDestroy(ctx_handle);
    ctx_workspace = NULL;
    ctx_handle = NULL;
    ctx_next = 0;
}

extern "C" void moe_blaslt_allow_tf32(bool allow)
{
    std::lock_guard<std::mutex> g(ctx_lock);
    ctx_tf32 = allow;
}

extern "C" bool moe_blaslt_tf32_allowed(void)
{
    std::lock_guard<std::mutex> g(ctx_lock);
    return ctx_tf32;
}

extern "C" void moe_blaslt_stats_get(moe_blaslt_stats *out)
{
    std::lock_guard<std::mutex> g(ctx_lock);
    out->hits = ctx_hits;
    out->misses = ctx_misses;
    out->entries = 0;
    for (const plan &p : ctx_plans) out->entries += p.used;
}

/* ---- descriptors -------------------------------------------------------------------- */

static cudaDataType_t cuda_type(int64_t dt)
{
    switch (dt) {
    case MOE_BF16: return CUDA_R_16BF;
    case MOE_F64: return CUDA_R_64F;
    default: return CUDA_R_32F;
    }
}

static int64_t alignment(const void *p)
{
    uintptr_t u = (uintptr_t)p;
    if (u == 0) return 256;
    int64_t a = (int64_t)(u & (~u + 1));
    return a > 256 ? 256 : a;
}

static moe_status layout_new(cublasLtMatrixLayout_t *l, int64_t dt, int64_t rows, int64_t cols,
                             int64_t ld, int64_t batch, int64_t stride)
{
    CHECK_LT("matmul", cublasLtMatrixLayoutCreate(l, cuda_type(dt), (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t count = (int32_t)batch;
        CHECK_LT("matmul", cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                            &count, sizeof count));
        CHECK_LT("matmul", cublasLtMatrixLayoutSetAttribute(
                               *l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return MOE_OK;
}

/* Build descriptors for KEY in P and ask the heuristic for the best algorithm.
 * P is left unused on failure. */
static moe_status plan_build(plan *p, const plan_key &key)
{
    memset(p, 0, sizeof *p);
    p->key = key;
    cublasComputeType_t compute = (cublasComputeType_t)key.compute;
    cudaDataType_t scale = key.ab == MOE_F64 ? CUDA_R_64F : CUDA_R_32F;
    moe_status st = MOE_OK;
    cublasLtMatmulPreference_t pref = NULL;
    int found = 0;
    cublasLtMatmulHeuristicResult_t res;
    uint64_t ws = WORKSPACE_BYTES;
    uint32_t al_a = (uint32_t)key.align_b, al_b = (uint32_t)key.align_a, al_c = (uint32_t)key.align_c;
#define TRY_LT(call)                                                                         \
    do {                                                                                     \
        cublasStatus_t s_ = (call);                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                   \
            st = moe_fail(MOE_ERR_BACKEND, "matmul", "%s failed: %s (%s:%d)", #call,         \
                          cublasLtGetStatusString(s_), __FILE__, __LINE__);                  \
            goto fail;                                                                       \
        }                                                                                    \
    } while (0)
    TRY_LT(cublasLtMatmulDescCreate(&p->op, compute, scale));
    {
        /* cuBLAS's A is our B and its B our A (see blaslt_run) */
        cublasOperation_t opa = key.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasOperation_t opb = key.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
        TRY_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
        TRY_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
        if (key.bias) {
            cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
            cudaDataType_t bt = cuda_type(key.c);
            TRY_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
            TRY_LT(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
        }
    }
    if ((st = layout_new(&p->la, key.ab, key.tb ? key.k : key.n, key.tb ? key.n : key.k, key.ldb,
                         key.batch, key.sb)) != MOE_OK)
        goto fail;
    if ((st = layout_new(&p->lb, key.ab, key.ta ? key.m : key.k, key.ta ? key.k : key.m, key.lda,
                         key.batch, key.sa)) != MOE_OK)
        goto fail;
    if ((st = layout_new(&p->lc, key.c, key.n, key.m, key.ldc, key.batch, key.sc)) != MOE_OK) goto fail;
    TRY_LT(cublasLtMatmulPreferenceCreate(&pref));
    TRY_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    TRY_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a));
    TRY_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b));
    TRY_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c));
    TRY_LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c));
    TRY_LT(cublasLtMatmulAlgoGetHeuristic(ctx_handle, p->op, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found));
    if (found < 1) {
        st = moe_fail(MOE_ERR_UNSUPPORTED, "matmul",
                      "cuBLASLt has no algorithm for %s [%lld %lld] @ [%lld %lld] (batch %lld%s)",
                      moe_dtype_name((moe_dtype)key.ab), (long long)key.m, (long long)key.k,
                      (long long)key.k, (long long)key.n, (long long)key.batch,
                      key.bias ? ", bias epilogue" : "");
        goto fail;
    }
    p->algo = res.algo;
    p->used = true;
    cublasLtMatmulPreferenceDestroy(pref);
    return MOE_OK;
fail:
#undef TRY_LT
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    p->used = true; /* so plan_free releases what was made */
    plan_free(p);
    return st;
}

/* The cached plan for KEY (built on a miss, evicting round-robin). Lock held. */
static moe_status plan_get(const plan_key &key, plan **out)
{
    for (plan &p : ctx_plans)
        if (p.used && memcmp(&p.key, &key, sizeof key) == 0) {
            ctx_hits++;
            *out = &p;
            return MOE_OK;
        }
    ctx_misses++;
    plan fresh;
    MOE_TRY(plan_build(&fresh, key));
    plan *slot = &ctx_plans[ctx_next];
    ctx_next = (ctx_next + 1) % PLAN_SLOTS;
    plan_free(slot);
    *slot = fresh;
    *out = slot;
    return MOE_OK;
}

/* ---- small kernels ------------------------------------------------------------------------ */

/* Loads widen to the accumulation type, stores narrow from it. */
static __device__ inline float ld(const float *p) { return *p; }
static __device__ inline double ld(const double *p) { return *p; }
static __device__ inline float ld(const __nv_bfloat16 *p) { return __bfloat162float(*p); }
static __device__ inline void st(float *p, float v) { *p = v; }
static __device__ inline void st(double *p, double v) { *p = v; }
static __device__ inline void st(__nv_bfloat16 *p, float v) { *p = __float2bfloat16(v); }

/* C[b][i][j] = beta C + bias[j] (beta == 0 writes, never reads: C may hold NaN) */
template <typename T, typename A>
__global__ void scale_bias_kernel(T *c, int64_t batch, int64_t m, int64_t n, int64_t ldc,
                                  int64_t sc, A beta, const T *bias)
{
    int64_t total = batch * m * n;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t j = e % n, i = (e / n) % m, b = e / (n * m);
        T *p = c + b * sc + i * ldc + j;
        A v = beta == A(0) ? A(0) : beta * (A)ld(p);
        if (bias) v += (A)ld(bias + j);
        st(p, v);
    }
}

/* C = beta C + bias over the whole (batched) result: the K = 0 case and the
 * bias pre-fill where no epilogue is available. */
static moe_status scale_bias(const moe_blaslt_gemm *g, float beta, const void *bias)
{
    int64_t total = g->batch * g->m * g->n;
    if (total == 0) return MOE_OK;
    unsigned grid = moe_cuda_grid(total, 256);
    cudaStream_t s = moe_cuda_stream();
    switch (g->c_dtype) {
    case MOE_F32:
        scale_bias_kernel<float, float><<<grid, 256, 0, s>>>((float *)g->c, g->batch, g->m, g->n, g->ldc,
                                                             g->c_batch_stride, beta, (const float *)bias);
        break;
    case MOE_BF16:
        scale_bias_kernel<__nv_bfloat16, float><<<grid, 256, 0, s>>>(
            (__nv_bfloat16 *)g->c, g->batch, g->m, g->n, g->ldc, g->c_batch_stride, beta,
            (const __nv_bfloat16 *)bias);
        break;
    default:
        scale_bias_kernel<double, double><<<grid, 256, 0, s>>>((double *)g->c, g->batch, g->m, g->n, g->ldc,
                                                               g->c_batch_stride, (double)beta,
                                                               (const double *)bias);
        break;
    }
    CHECK_LAUNCH("matmul");
    return MOE_OK;
}

/* ---- the strided batched product --------------------------------------------------------- */

static inline int64_t max1(int64_t v) { return v > 1 ? v : 1; }

/* Row-major onto column-major. A row-major matrix X [r c] with row stride ld
 * is, read column-major with the same ld, the matrix Xᵀ [c r]. So the
 * row-major C [M N] = op(A) op(B) is the column-major Cᵀ [N M] =
 * op(B)ᵀ op(A)ᵀ, and cuBLAS gets
 *   its A := our B (stored [K N], or [N K] when trans_b), op T iff trans_b,
 *   its B := our A (stored [M K], or [K M] when trans_a), op T iff trans_a,
 *   its C := our C, column-major [N M] with ld = ldc,
 *   m = N, n = M, k = K.
 * A bias [N] then runs along cuBLAS's rows, which is what its BIAS epilogue
 * adds (one value per row of D, broadcast over columns and batches). */
static moe_status blaslt_run(const moe_blaslt_gemm *g, bool use_epilogue)
{
    size_t ab = moe_dtype_size(g->ab_dtype);
    /* leading dims of one-row stored matrices are never used: make them legal */
    int64_t rows_a = g->a.trans ? g->k : g->m, cols_a = g->a.trans ? g->m : g->k;
    int64_t rows_b = g->b.trans ? g->n : g->k, cols_b = g->b.trans ? g->k : g->n;
    int64_t lda = rows_a <= 1 ? (g->a.ld > max1(cols_a) ? g->a.ld : max1(cols_a)) : g->a.ld;
    int64_t ldb = rows_b <= 1 ? (g->b.ld > max1(cols_b) ? g->b.ld : max1(cols_b)) : g->b.ld;
    int64_t ldc = g->m <= 1 ? (g->ldc > max1(g->n) ? g->ldc : max1(g->n)) : g->ldc;
    if (lda < max1(cols_a) || ldb < max1(cols_b) || ldc < max1(g->n))
        return moe_fail(MOE_ERR_ARG, "matmul",
                        "row strides too small: lda %lld (cols %lld), ldb %lld (cols %lld), ldc %lld (cols %lld)",
                        (long long)g->a.ld, (long long)cols_a, (long long)g->b.ld, (long long)cols_b,
                        (long long)g->ldc, (long long)g->n);
    bool f32_tf32 = g->ab_dtype == MOE_F32 && ctx_tf32;
    plan_key key;
    memset(&key, 0, sizeof key);
    key.ab = g->ab_dtype;
    key.c = g->c_dtype;
    key.compute = g->ab_dtype == MOE_F64 ? CUBLAS_COMPUTE_64F
                  : f32_tf32            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                        : CUBLAS_COMPUTE_32F;
    key.ta = g->a.trans;
    key.tb = g->b.trans;
    key.bias = use_epilogue;
    key.m = g->m;
    key.n = g->n;
    key.k = g->k;
    key.batch = g->batch;
    key.lda = lda;
    key.ldb = ldb;
    key.ldc = ldc;
    key.sa = g->batch > 1 ? g->a.batch_stride : 0;
    key.sb = g->batch > 1 ? g->b.batch_stride : 0;
    key.sc = g->batch > 1 ? g->c_batch_stride : 0;
    key.align_a = alignment(g->a.data);
    key.align_b = alignment(g->b.data);
    key.align_c = alignment(g->c);
    key.align_bias = use_epilogue ? alignment(g->bias) : 0;
    (void)ab;
    plan *p;
    MOE_TRY(plan_get(key, &p));
    if (use_epilogue)
        CHECK_LT("matmul", cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                          &g->bias, sizeof g->bias));
    float alpha32 = g->alpha, beta32 = g->beta;
    double alpha64 = g->alpha, beta64 = g->beta;
    const void *alpha = g->ab_dtype == MOE_F64 ? (const void *)&alpha64 : (const void *)&alpha32;
    const void *beta = g->ab_dtype == MOE_F64 ? (const void *)&beta64 : (const void *)&beta32;
    CHECK_LT("matmul", cublasLtMatmul(ctx_handle, p->op, alpha, g->b.data, p->la, g->a.data, p->lb, beta,
                                      g->c, p->lc, g->c, p->lc, &p->algo, ctx_workspace, WORKSPACE_BYTES,
                                      moe_cuda_stream()));
    return MOE_OK;
}

static bool gemm_dtypes_ok(moe_dtype ab, moe_dtype c)
{
    return (ab == MOE_F32 && c == MOE_F32) || (ab == MOE_F64 && c == MOE_F64) ||
           (ab == MOE_BF16 && (c == MOE_BF16 || c == MOE_F32));
}

extern "C" moe_status moe_blaslt_matmul(const moe_blaslt_gemm *g)
{
    if (!gemm_dtypes_ok(g->ab_dtype, g->c_dtype))
        return moe_fail(MOE_ERR_DTYPE, "matmul", "no GPU GEMM for %s operands with a %s result",
                        moe_dtype_name(g->ab_dtype), moe_dtype_name(g->c_dtype));
    if (g->m < 0 || g->n < 0 || g->k < 0 || g->batch < 0)
        return moe_fail(MOE_ERR_ARG, "matmul", "negative size: m %lld n %lld k %lld batch %lld",
                        (long long)g->m, (long long)g->n, (long long)g->k, (long long)g->batch);
    if (g->batch > INT32_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, "matmul", "batch of %lld exceeds cuBLASLt's int range",
                        (long long)g->batch);
    if (g->m == 0 || g->n == 0 || g->batch == 0) return MOE_OK;
    if (g->k == 0) return scale_bias(g, g->beta, g->bias);
    std::lock_guard<std::mutex> lock(ctx_lock);
    MOE_TRY(ctx_open());
    /* The BIAS epilogue for f32/bf16 results; otherwise (or when no algorithm
     * offers it) the bias is written first and the product accumulated. */
    if (g->bias && g->c_dtype != MOE_F64) {
        if (blaslt_run(g, true) == MOE_OK) return MOE_OK;
        moe_clear_error();
    }
    if (!g->bias) return blaslt_run(g, false);
    MOE_TRY(scale_bias(g, g->beta, g->bias));
    moe_blaslt_gemm acc = *g;
    acc.beta = 1.0f;
    acc.bias = NULL;
    return blaslt_run(&acc, false);
}

/* ---- the batched broadcast driver (planned by kernels/gemm_plan.h) -------------------------- */

extern "C" moe_status moe_cuda_gemm(moe_dtype ab_dtype, moe_dtype c_dtype, int nb, const int64_t *bshape,
                                    moe_gemm_mat a, moe_gemm_mat b, moe_gemm_mat c, bool accumulate,
                                    const void *bias)
{
    if (!gemm_dtypes_ok(ab_dtype, c_dtype))
        return moe_fail(MOE_ERR_DTYPE, "gemm", "no GPU GEMM for %s operands with a %s result",
                        moe_dtype_name(ab_dtype), moe_dtype_name(c_dtype));
    moe_gemm_plan p;
    MOE_TRY(moe_gemm_plan_make(&p, nb, bshape, a, b, c, accumulate));
    if (p.empty) return MOE_OK;
    if (p.reduce && !accumulate)
        return moe_fail(MOE_ERR_ARG, "gemm", "a result shared across a batch dim needs accumulation");
    if (p.reduce && bias)
        return moe_fail(MOE_ERR_ARG, "gemm", "a bias cannot be added inside a batch reduction");

    moe_blaslt_gemm g;
    memset(&g, 0, sizeof g);
    g.ab_dtype = ab_dtype;
    g.c_dtype = c_dtype;
    g.m = p.m;
    g.n = p.n;
    g.k = p.k;
    g.batch = 1;
    g.a.ld = p.la.ld;
    g.a.trans = p.la.trans;
    g.b.ld = p.lb.ld;
    g.b.trans = p.lb.trans;
    g.ldc = p.ldc;
    g.alpha = 1.0f;
    g.beta = accumulate ? 1.0f : 0.0f;
    g.bias = bias;
    /* the innermost batch dim becomes the strided batch unless C repeats over it */
    int outer = p.nb;
    if (p.nb > 0 && p.c.bstride[p.nb - 1] != 0) {
        outer = p.nb - 1;
        g.batch = p.shape[p.nb - 1];
        g.a.batch_stride = p.a.bstride[p.nb - 1];
        g.b.batch_stride = p.b.bstride[p.nb - 1];
        g.c_batch_stride = p.c.bstride[p.nb - 1];
    }
    int64_t nouter = 1;
    for (int d = 0; d < outer; d++) nouter *= p.shape[d];
    size_t ab = moe_dtype_size(ab_dtype), cb = moe_dtype_size(c_dtype);
    for (int64_t i = 0; i < nouter; i++) { /* in order: a reduction stays deterministic */
        int64_t oa, ob, oc;
        moe_gemm_plan_offsets(&p, outer, i, &oa, &ob, &oc);
        g.a.data = (const char *)p.a.data + oa * (int64_t)ab;
        g.b.data = (const char *)p.b.data + ob * (int64_t)ab;
        g.c = (char *)p.c.data + oc * (int64_t)cb;
        MOE_TRY(moe_blaslt_matmul(&g));
    }
    return MOE_OK;
}

/* ---- bias gradient ------------------------------------------------------------------------ */

/* Column sums in two deterministic passes: partial[h][j] = the sum of rows
 * [h CHUNK, (h + 1) CHUNK) of column j (one thread each, rows in order,
 * double), then out[j] = the partials in chunk order. Many rows so get
 * H x N threads instead of N. */
enum { SUM_CHUNK = 128 };

template <typename G>
__global__ void sum_chunks_kernel(double *partial, const G *g, int64_t rows, int64_t n)
{
    int64_t nch = (rows + SUM_CHUNK - 1) / SUM_CHUNK;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < nch * n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t h = e / n, j = e % n, r1 = (h + 1) * SUM_CHUNK < rows ? (h + 1) * SUM_CHUNK : rows;
        double acc = 0;
        for (int64_t r = h * SUM_CHUNK; r < r1; r++) acc += (double)ld(g + r * n + j);
        partial[e] = acc;
    }
}

template <typename O>
__global__ void sum_partials_kernel(O *out, const double *partial, int64_t nch, int64_t n)
{
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n;
         j += (int64_t)gridDim.x * blockDim.x) {
        double acc = 0;
        for (int64_t h = 0; h < nch; h++) acc += partial[h * n + j];
        out[j] = (O)acc;
    }
}

template <typename O, typename G>
static moe_status sum_rows(O *out, const G *g, int64_t rows, int64_t n)
{
    int64_t nch = (rows + SUM_CHUNK - 1) / SUM_CHUNK;
    cudaStream_t s = moe_cuda_stream();
    moe_storage *part = NULL;
    if (nch > 0) MOE_TRY(moe_storage_new(&part, MOE_CUDA, sizeof(double) * (size_t)(nch * n)));
    double *p = part ? (double *)part->data : NULL;
    if (nch > 0) sum_chunks_kernel<G><<<moe_cuda_grid(nch * n, 256), 256, 0, s>>>(p, g, rows, n);
    sum_partials_kernel<O><<<moe_cuda_grid(n, 256), 256, 0, s>>>(out, p, nch, n);
    moe_storage_release(part); /* stream-ordered reuse: see alloc.cu */
    CHECK_LAUNCH("sum-rows");
    return MOE_OK;
}

extern "C" moe_status moe_cuda_sum_rows(moe_dtype out_dtype, moe_dtype g_dtype, void *out, const void *g,
                                        int64_t rows, int64_t n)
{
    if (n == 0) return MOE_OK;
    if (out_dtype == MOE_F32 && g_dtype == MOE_F32) return sum_rows((float *)out, (const float *)g, rows, n);
    if (out_dtype == MOE_F32 && g_dtype == MOE_BF16) return sum_rows((float *)out, (const __nv_bfloat16 *)g, rows, n);
    if (out_dtype == MOE_F64 && g_dtype == MOE_F64) return sum_rows((double *)out, (const double *)g, rows, n);
    return moe_fail(MOE_ERR_DTYPE, "sum-rows", "no GPU kernel for %s rows into %s", moe_dtype_name(g_dtype),
                    moe_dtype_name(out_dtype));
}
