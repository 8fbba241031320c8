/* gpu-router.c — the fused router kernel, forward + backward, on the GPU
 *: T = 65536, E = 256, K = 8, sigmoid scores, 8 groups (4 kept,
 * group score = top-2 sum), expert bias, micro-batch balance loss and
 * z-loss. The gate GEMM is excluded: the logits [T E] f32 are the input.
 *
 * Reports the bytes the two passes must move (forward: read z, write ids and
 * weights; backward: read z, ids and the weights' gradient, write dz) over
 * their time, against the device-to-device copy bandwidth measured in the
 * same run (target >= 60%), and the time of the same computation in PyTorch
 * eager (tests/bench/router_torch.py; "faster than PyTorch" is the target)
 * when torch is importable. Without a GPU: "skipped: no GPU". Sizes can be
 * changed: gpu-router [T [E [K [G [KEPT]]]]].
 *
 * Dimension letters: T tokens, E experts, K top-k, G groups. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "moelab.h"

#ifndef MOE_SRCDIR
#define MOE_SRCDIR "."
#endif

#ifdef MOELAB_HAVE_CUDA
#include "../../kernels/cuda/cuda.h"
#include "../../kernels/cuda/router.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define TRY(call)                                                                  \
    do {                                                                           \
        if ((call) != MOE_OK) {                                                    \
            fprintf(stderr, "gpu-router: %s failed: %s\n", #call, moe_last_error()); \
            return 1;                                                              \
        }                                                                          \
    } while (0)

static moe_tensor *dev(moe_dtype dt, int64_t n)
{
    moe_tensor *t = NULL;
    if (moe_tensor_zeros(&t, dt, MOE_CUDA, 1, &n) != MOE_OK) return NULL;
    return t;
}

/* Median-free and simple: the mean over REPS after one warm-up. */
static double torch_ms(int64_t T, int64_t E, int64_t K, int64_t G, int64_t keep, char *why, size_t wl)
{
    if (system("python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1") != 0) {
        snprintf(why, wl, "PyTorch not importable (or without CUDA): reference skipped");
        return -1;
    }
    const char *src = getenv("MOELAB_SRCDIR") ? getenv("MOELAB_SRCDIR") : MOE_SRCDIR;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "python3 '%s/tests/bench/router_torch.py' %lld %lld %lld %lld %lld 2>&1", src,
             (long long)T, (long long)E, (long long)K, (long long)G, (long long)keep);
    FILE *p = popen(cmd, "r");
    if (!p) {
        snprintf(why, wl, "cannot start python3 for the PyTorch reference");
        return -1;
    }
    char line[512];
    double ms = -1;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "torch_ms %lf", &ms) == 1) continue;
        fputs(line, stdout);
    }
    if (pclose(p) != 0 || ms < 0) snprintf(why, wl, "the PyTorch reference failed (output above)");
    return ms;
}

int main(int argc, char **argv)
{
    if (moe_device_count(MOE_CUDA) == 0 || moe_cuda_init() != MOE_OK) {
        printf("gpu-router: skipped: no GPU\n");
        return 0;
    }
    int64_t T = argc > 1 ? atoll(argv[1]) : 65536, E = argc > 2 ? atoll(argv[2]) : 256;
    int64_t K = argc > 3 ? atoll(argv[3]) : 8, G = argc > 4 ? atoll(argv[4]) : 8;
    int64_t keep = argc > 5 ? atoll(argv[5]) : 4;
    const int reps = 20;

    /* logits ~ N(0, 1) made on the host, bias small */
    moe_rng rng;
    moe_rng_init(&rng, 1);
    moe_tensor *zc, *bc, *rc, *z, *bias, *R;
    TRY(moe_tensor_randn(&zc, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){T, E}));
    TRY(moe_tensor_randn(&bc, &rng, MOE_F32, MOE_CPU, 1, &E));
    TRY(moe_tensor_randn(&rc, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){T, K}));
    TRY(moe_to_device(&z, zc, MOE_CUDA));
    TRY(moe_to_device(&bias, bc, MOE_CUDA));
    TRY(moe_to_device(&R, rc, MOE_CUDA));
    moe_tensor *ids = dev(MOE_I64, T * K), *w = dev(MOE_F32, T * K), *cnt = dev(MOE_I32, E),
               *lcnt = dev(MOE_I32, E), *stats = dev(MOE_F64, E + 2), *bad = dev(MOE_I32, 1),
               *work = dev(MOE_F64, (int64_t)(moe_cuda_router_workspace(T, E, G) / 8 + 1)),
               *aux_w = dev(MOE_F32, E), *dz = dev(MOE_F32, T * E), *copy = dev(MOE_F32, T * E);
    if (!ids || !w || !cnt || !lcnt || !stats || !bad || !work || !aux_w || !dz || !copy) {
        fprintf(stderr, "gpu-router: out of device memory: %s\n", moe_last_error());
        return 1;
    }
    moe_cuda_router_args a = {.T = T, .E = E, .K = K, .z = moe_tensor_data(z), .score = MOE_SCORE_SIGMOID, .loss_eps = 1e-20,
                              .wmode = MOE_WMODE_GATHER, .wnorm = K > 1 ? MOE_WNORM_SUM : MOE_WNORM_NONE,
                              .norm_eps = 1e-20, .norm_p = 1, .scaling = 2.5, .bias = moe_tensor_data(bias),
                              .groups = G, .group_topk = keep, .group_m = 2, .count_topk = true};
    moe_cuda_router_out o = {.ids = moe_tensor_data(ids), .weights = moe_tensor_data(w),
                             .counts = moe_tensor_data(cnt), .loss_counts = moe_tensor_data(lcnt),
                             .stats = moe_tensor_data(stats), .bad_rows = moe_tensor_data(bad),
                             .work = moe_tensor_data(work)};
    moe_cuda_router_grad g = {.ids = moe_tensor_data(ids), .dweights = moe_tensor_data(R),
                              .aux_w = moe_tensor_data(aux_w), .stats = moe_tensor_data(stats), .z_coeff = 1e-3,
                              .dz = moe_tensor_data(dz)};

    /* device-to-device copy bandwidth (read + write) */
    size_t zbytes = sizeof(float) * (size_t)(T * E);
    TRY(moe_cuda_memcpy(moe_tensor_data(copy), moe_tensor_data(z), zbytes, MOE_COPY_D2D));
    TRY(moe_cuda_synchronize());
    double t0 = now();
    for (int i = 0; i < reps; i++)
        TRY(moe_cuda_memcpy(moe_tensor_data(copy), moe_tensor_data(z), zbytes, MOE_COPY_D2D));
    TRY(moe_cuda_synchronize());
    double copy_bw = 2.0 * (double)zbytes * reps / (now() - t0);

    double tf = 0, tb = 0;
    for (int i = -2; i < reps; i++) { /* two warm-ups */
        TRY(moe_cuda_synchronize());
        double s0 = now();
        TRY(moe_cuda_router_forward(&a, &o));
        TRY(moe_cuda_synchronize());
        double s1 = now();
        TRY(moe_cuda_router_balance_coeffs(moe_tensor_data(aux_w), moe_tensor_data(lcnt), moe_tensor_data(stats), E, K,
                                           1e-4));
        TRY(moe_cuda_router_backward(&a, &g));
        TRY(moe_cuda_synchronize());
        double s2 = now();
        if (i >= 0) {
            tf += s1 - s0;
            tb += s2 - s1;
        }
    }
    tf /= reps;
    tb /= reps;
    double fwd_bytes = (double)T * E * 4 + (double)T * K * (8 + 4);
    double bwd_bytes = (double)T * E * 4 * 2 + (double)T * K * (8 + 4);
    double bw = (fwd_bytes + bwd_bytes) / (tf + tb), frac = bw / copy_bw;
    printf("gpu-router: T=%lld E=%lld K=%lld sigmoid, %lld groups (%lld kept, top-2 score), bias, f32 logits\n",
           (long long)T, (long long)E, (long long)K, (long long)G, (long long)keep);
    printf("  device-to-device copy     %8.1f GB/s\n", copy_bw / 1e9);
    printf("  fused forward             %8.3f ms  %8.1f GB/s\n", tf * 1e3, fwd_bytes / tf / 1e9);
    printf("  fused backward            %8.3f ms  %8.1f GB/s\n", tb * 1e3, bwd_bytes / tb / 1e9);
    printf("  forward+backward          %8.3f ms  %8.1f GB/s = %.0f%% of copy bandwidth (target >= 60%%): %s\n",
           (tf + tb) * 1e3, bw / 1e9, 100 * frac, frac >= 0.6 ? "PASS" : "MISS");
    char why[256] = "";
    double tms = torch_ms(T, E, K, G, keep, why, sizeof why);
    if (tms > 0)
        printf("  PyTorch eager fwd+bwd     %8.3f ms  -> moelab is %.2fx faster (target > 1): %s\n", tms,
               tms / ((tf + tb) * 1e3), tms > (tf + tb) * 1e3 ? "PASS" : "MISS");
    else
        printf("  %s\n", why);
    moe_tensor *ts[] = {zc, bc, rc, z, bias, R, ids, w, cnt, lcnt, stats, bad, work, aux_w, dz, copy};
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) moe_tensor_release(ts[i]);
    return 0;
}

#else

int main(void)
{
    printf("gpu-router: skipped: no GPU (built without CUDA)\n");
    return 0;
}

#endif
