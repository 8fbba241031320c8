/* gpu-moe.c — an MoE layer forward + backward on the GPU from the backend's
 * kernels: T = 16384 tokens, D = 2048, F = 1408, E = 64 SwiGLU
 * experts, K = 6, bf16 storage. One step: gate GEMM (cuBLASLt), fused router
 * (softmax post-top-k, micro-batch balance loss), device dispatch plan,
 * permute, grouped expert MLP (cuBLAS grouped GEMMs), un-permute with the
 * routing weights; then every backward, down to dx and the gate weight's
 * gradient.
 *
 * Reports tokens/s against a PyTorch eager layer on the same machine
 * (tests/bench/moe_torch_gpu.py; target >= 1.2x) and the expert GEMMs'
 * TFLOP/s against the bf16 dense peak (MOELAB_BF16_PEAK_TFLOPS, default 989:
 * H100/H200 SXM; target >= 60%). Without a GPU: "skipped: no GPU".
 * Sizes: gpu-moe [T [D [F [E [K]]]]].
 *
 * Dimension letters: T tokens, D model dim, F expert ffn dim, E experts,
 * K top-k, N = T·K permuted rows. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "moelab.h"

#ifndef MOE_SRCDIR
#define MOE_SRCDIR "."
#endif

#ifdef MOELAB_HAVE_CUDA
#include "../../kernels/cuda/blaslt.h"
#include "../../kernels/cuda/cuda.h"
#include "../../kernels/cuda/grouped_gemm.h"
#include "../../kernels/cuda/permute.h"
#include "../../kernels/cuda/router.h"

#define TRY(call)                                                               \
    do {                                                                        \
        if ((call) != MOE_OK) {                                                 \
            fprintf(stderr, "gpu-moe: %s failed: %s\n", #call, moe_last_error()); \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A device tensor of N elements: bf16 N(0, 1)·SCALE, or zeros. */
static moe_tensor *dev_randn(moe_dtype dt, int64_t n, double scale, uint64_t seed)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *a, *b, *c, *d;
    TRY(moe_tensor_randn(&a, &rng, MOE_F32, MOE_CPU, 1, &n));
    TRY(moe_mul_scalar(&b, a, scale));
    TRY(moe_to_dtype(&c, b, dt));
    TRY(moe_to_device(&d, c, MOE_CUDA));
    moe_tensor_release(a);
    moe_tensor_release(b);
    moe_tensor_release(c);
    return d;
}

static moe_tensor *dev_zeros(moe_dtype dt, int64_t n)
{
    moe_tensor *t;
    TRY(moe_tensor_zeros(&t, dt, MOE_CUDA, 1, &n));
    return t;
}

static void *P(moe_tensor *t) { return moe_tensor_data(t); }

/* Row-major C [M N] (= or +=) op(A) op(B), bf16 in, bf16 out. */
static void gemm(int64_t M, int64_t N, int64_t K, const void *A, int64_t lda, bool ta, const void *B, int64_t ldb,
                 bool tb, void *C, int64_t ldc, float beta)
{
    moe_blaslt_gemm g = {.ab_dtype = MOE_BF16, .c_dtype = MOE_BF16, .m = M, .n = N, .k = K, .batch = 1,
                         .a = {A, lda, ta, 0}, .b = {B, ldb, tb, 0}, .c = C, .ldc = ldc, .alpha = 1.0f, .beta = beta};
    TRY(moe_blaslt_matmul(&g));
}

static double torch_tokens_per_s(int64_t T, int64_t D, int64_t F, int64_t E, int64_t K, char *why, size_t wl)
{
    if (system("python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1") != 0) {
        snprintf(why, wl, "PyTorch not importable (or without CUDA): reference skipped");
        return -1;
    }
    const char *src = getenv("MOELAB_SRCDIR") ? getenv("MOELAB_SRCDIR") : MOE_SRCDIR;
    char cmd[1024], line[512];
    snprintf(cmd, sizeof cmd, "python3 '%s/tests/bench/moe_torch_gpu.py' %lld %lld %lld %lld %lld 2>&1", src,
             (long long)T, (long long)D, (long long)F, (long long)E, (long long)K);
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(why, wl, "cannot start python3 for the PyTorch reference");
        return -1;
    }
    double tps = -1;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "torch_tokens_per_s %lf", &tps) != 1) fputs(line, stdout);
    if (pclose(p) != 0 || tps < 0) snprintf(why, wl, "the PyTorch reference failed (output above)");
    return tps;
}

int main(int argc, char **argv)
{
    if (moe_device_count(MOE_CUDA) == 0 || moe_cuda_init() != MOE_OK) {
        printf("gpu-moe: skipped: no GPU\n");
        return 0;
    }
    const int64_t T = argc > 1 ? atoll(argv[1]) : 16384, D = argc > 2 ? atoll(argv[2]) : 2048;
    const int64_t F = argc > 3 ? atoll(argv[3]) : 1408, E = argc > 4 ? atoll(argv[4]) : 64;
    const int64_t K = argc > 5 ? atoll(argv[5]) : 6, N = T * K;
    const int reps = 10;
    const double peak = getenv("MOELAB_BF16_PEAK_TFLOPS") ? atof(getenv("MOELAB_BF16_PEAK_TFLOPS")) : 989.0;

    moe_tensor *x = dev_randn(MOE_BF16, T * D, 1.0, 1), *Wr = dev_randn(MOE_BF16, E * D, 0.02, 2);
    moe_tensor *wg = dev_randn(MOE_BF16, E * D * F, 1.0 / 45.25, 3), *wu = dev_randn(MOE_BF16, E * D * F, 1.0 / 45.25, 4);
    moe_tensor *wd = dev_randn(MOE_BF16, E * F * D, 1.0 / 37.5, 5), *dout = dev_randn(MOE_BF16, T * D, 1e-2, 6);
    moe_tensor *z = dev_zeros(MOE_BF16, T * E), *dz = dev_zeros(MOE_BF16, T * E);
    moe_tensor *ids = dev_zeros(MOE_I64, T * K), *w = dev_zeros(MOE_F32, T * K), *dw = dev_zeros(MOE_F32, T * K);
    moe_tensor *cnt = dev_zeros(MOE_I32, E), *lcnt = dev_zeros(MOE_I32, E), *stats = dev_zeros(MOE_F64, E + 2);
    moe_tensor *bad = dev_zeros(MOE_I32, 1), *aux_w = dev_zeros(MOE_F32, E);
    moe_tensor *work = dev_zeros(MOE_F64, (int64_t)(moe_cuda_router_workspace(T, E, 0) / 8 + 1));
    moe_tensor *xp = dev_zeros(MOE_BF16, N * D), *g = dev_zeros(MOE_BF16, N * F), *u = dev_zeros(MOE_BF16, N * F);
    moe_tensor *h = dev_zeros(MOE_BF16, N * F), *y = dev_zeros(MOE_BF16, N * D), *out = dev_zeros(MOE_BF16, T * D);
    moe_tensor *dy = dev_zeros(MOE_BF16, N * D), *dxp = dev_zeros(MOE_BF16, N * D), *dx = dev_zeros(MOE_BF16, T * D);
    moe_tensor *dwg = dev_zeros(MOE_BF16, E * D * F), *dwu = dev_zeros(MOE_BF16, E * D * F);
    moe_tensor *dwd = dev_zeros(MOE_BF16, E * F * D), *dWr = dev_zeros(MOE_BF16, E * D);
    moe_tensor *scratch = dev_zeros(MOE_BF16, 3 * N * F);

    moe_cuda_router_args ra = {.T = T, .E = E, .K = K, .z_bf16 = true, .z = P(z), .score = MOE_SCORE_SOFTMAX, .loss_eps = 1e-20,
                               .select_on_logits = true, .wmode = MOE_WMODE_POST_SOFTMAX, .norm_eps = 1e-20,
                               .norm_p = 1, .scaling = 1, .count_topk = true};
    moe_cuda_router_out ro = {.ids = P(ids), .weights = P(w), .counts = P(cnt), .loss_counts = P(lcnt),
                              .stats = P(stats), .bad_rows = P(bad), .work = P(work)};
    moe_cuda_router_grad rg = {.ids = P(ids), .dweights = P(dw), .aux_w = P(aux_w), .stats = P(stats),
                               .dz = P(dz)};
    double t_total = 0, t_experts = 0, flops = 0;
    for (int it = -2; it < reps; it++) {
        TRY(moe_cuda_synchronize());
        double t0 = now();
        /* forward */
        gemm(T, E, D, P(x), D, false, P(Wr), D, true, P(z), E, 0.0f);
        TRY(moe_cuda_router_forward(&ra, &ro));
        moe_cuda_dispatch plan;
        TRY(moe_cuda_dispatch_plan(&plan, P(ids), NULL, T, K, E, 0, false));
        TRY(moe_cuda_rows_gather(true, P(xp), P(x), plan.row_token, plan.row_slot, NULL, N, D));
        moe_cuda_ffn fp = {.bf16 = true, .act = MOE_CUDA_FFN_SWIGLU, .E = E, .D = D, .F = F, .off = plan.offsets,
                           .x = P(xp), .wg = P(wg), .wu = P(wu), .wd = P(wd)};
        TRY(moe_cuda_synchronize());
        double e0 = now();
        TRY(moe_cuda_ffn_forward(&fp, P(g), P(u), P(h), P(y)));
        TRY(moe_cuda_synchronize());
        double e1 = now();
        TRY(moe_cuda_rows_combine(true, P(out), P(y), plan.slot_row, P(w), T, K, D));
        /* backward */
        TRY(moe_cuda_rows_gather(true, P(dy), P(dout), plan.row_token, plan.row_slot, P(w), N, D));
        TRY(moe_cuda_rows_dot(true, P(dw), P(dout), P(y), plan.slot_row, T, K, D));
        TRY(moe_cuda_synchronize());
        double e2 = now();
        TRY(moe_cuda_ffn_backward(&fp, P(g), P(u), P(h), P(dy), P(dxp), P(dwg), P(dwu), P(dwd), P(scratch)));
        TRY(moe_cuda_synchronize());
        double e3 = now();
        TRY(moe_cuda_rows_combine(true, P(dx), P(dxp), plan.slot_row, NULL, T, K, D));
        TRY(moe_cuda_router_balance_coeffs(P(aux_w), P(lcnt), P(stats), E, K, 1e-3));
        TRY(moe_cuda_router_backward(&ra, &rg));
        gemm(T, D, E, P(dz), E, false, P(Wr), D, false, P(dx), D, 1.0f); /* dx += dz Wr */
        gemm(E, D, T, P(dz), E, true, P(x), D, false, P(dWr), D, 0.0f);  /* dWr = dzᵀ x */
        TRY(moe_cuda_synchronize());
        double t1 = now();
        if (it >= 0) {
            t_total += t1 - t0;
            t_experts += (e1 - e0) + (e3 - e2);
            flops += 2.0 * (double)plan.rows * (double)D * (double)F * 9; /* 3 forward + 6 backward GEMMs */
        }
        moe_cuda_dispatch_free(&plan);
    }
    double tps = (double)T * reps / t_total, tflops = flops / t_experts / 1e12;
    printf("gpu-moe: T=%lld D=%lld F=%lld E=%lld K=%lld SwiGLU bf16, forward+backward\n", (long long)T, (long long)D,
           (long long)F, (long long)E, (long long)K);
    printf("  step                      %8.3f ms  %10.0f tokens/s\n", t_total / reps * 1e3, tps);
    printf("  expert GEMMs (fwd+bwd)    %8.3f ms  %8.1f TFLOP/s = %.0f%% of %.0f bf16 peak (target >= 60%%): %s\n",
           t_experts / reps * 1e3, tflops, 100 * tflops / peak, peak, tflops >= 0.6 * peak ? "PASS" : "MISS");
    char why[256] = "";
    double ref = torch_tokens_per_s(T, D, F, E, K, why, sizeof why);
    if (ref > 0)
        printf("  PyTorch eager layer       %10.0f tokens/s -> %.2fx (target >= 1.2x): %s\n", ref, tps / ref,
               tps >= 1.2 * ref ? "PASS" : "MISS");
    else
        printf("  %s\n", why);
    moe_tensor *ts[] = {x, Wr, wg, wu, wd, dout, z, dz, ids, w, dw, cnt, lcnt, stats, bad, aux_w, work, xp, g, u, h,
                        y, out, dy, dxp, dx, dwg, dwu, dwd, dWr, scratch};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) moe_tensor_release(ts[i]);
    return 0;
}

#else

int main(void)
{
    printf("gpu-moe: skipped: no GPU (built without CUDA)\n");
    return 0;
}

#endif
