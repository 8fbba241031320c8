/* bench-attention.c — the fused causal attention next to the plain
 * composition of ops, and the whole model's forward + backward.
 *
 *   attention  f32, B 8, H 4 query heads (and 1 kv head: GQA), hd 64, S 256
 *              and 1024: forward + backward time of the fused kernel and
 *              of the plain path (matmul, mask, softmax, matmul), and the
 *              peak memory each allocates on top of its inputs (the plain
 *              path holds [B H S S] scores; the fused one O(B·H·S)).
 *   model      the reference configuration (V256 L4 D256 H4 E8 K2 F512),
 *              B 8, S 256, f32: forward + backward of model-loss, tokens/s
 *              and achieved GFLOP/s (moe_model_flops), next to the sgemm
 *              rate of a 2048-cube on the same threads.
 *
 * Every figure is the best of several timed runs after a warm-up. Threads:
 * OMP_NUM_THREADS (or MOELAB_NUM_THREADS), else all cores. A program, not a
 * test: it exits 0 unless setup fails. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "moelab.h"
#include "nn/attention.h"
#include "nn/model.h"

static double now(void) { return omp_get_wtime(); }

#define CHECK(expr)                                                                    \
    do {                                                                               \
        if ((expr) != MOE_OK) {                                                        \
            fprintf(stderr, "bench-attention: %s: %s\n", #expr, moe_last_error());    \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

static moe_tensor *input(int64_t B, int64_t S, int64_t N, int64_t hd, uint64_t seed)
{
    moe_rng rng;
    moe_rng_init(&rng, seed);
    moe_tensor *t;
    CHECK(moe_tensor_randn(&t, &rng, MOE_F32, MOE_CPU, 4, (int64_t[]){B, S, N, hd}));
    CHECK(moe_tensor_requires_grad_(t, true));
    return t;
}

/* Best forward + backward seconds and the peak bytes above the inputs. */
static void time_attention(moe_attention_impl impl, moe_tensor *q, moe_tensor *k, moe_tensor *v, int reps,
                           double *best, double *peak_mb)
{
    *best = 1e30;
    *peak_mb = 0;
    for (int r = -1; r < reps; r++) {
        moe_tensor_zero_grad(q);
        moe_tensor_zero_grad(k);
        moe_tensor_zero_grad(v);
        moe_memory_stats before, after;
        moe_memory_stats_get(MOE_CPU, &before);
        moe_memory_peak_reset(MOE_CPU);
        double t0 = now();
        moe_tensor *o, *loss;
        CHECK(moe_attention(&o, q, k, v, true, impl));
        CHECK(moe_sum(&loss, o, 0, NULL, false));
        CHECK(moe_backward(loss, NULL, false));
        double t = now() - t0;
        moe_memory_stats_get(MOE_CPU, &after);
        moe_tensor_release(loss);
        moe_tensor_release(o);
        if (r >= 0 && t < *best) *best = t;
        double mb = (double)(after.peak_bytes - before.live_bytes) / 1e6;
        if (mb > *peak_mb) *peak_mb = mb;
    }
}

static void bench_attention(int64_t S, int64_t KV)
{
    int64_t B = 8, H = 4, hd = 64;
    moe_tensor *q = input(B, S, H, hd, 1), *k = input(B, S, KV, hd, 2), *v = input(B, S, KV, hd, 3);
    double tf, tp, mf, mp;
    time_attention(MOE_ATTENTION_FUSED, q, k, v, 3, &tf, &mf);
    time_attention(MOE_ATTENTION_PLAIN, q, k, v, 3, &tp, &mp);
    printf("attention S %5lld KV %lld   fused %8.1f ms %8.1f MB   plain %8.1f ms %8.1f MB   speedup %.2fx\n",
           (long long)S, (long long)KV, tf * 1e3, mf, tp * 1e3, mp, tp / tf);
    moe_tensor_release(q);
    moe_tensor_release(k);
    moe_tensor_release(v);
}

static double sgemm_gflops(void)
{
    int n = 2048;
    float *a = calloc((size_t)n * n, sizeof *a), *b = calloc((size_t)n * n, sizeof *b),
          *c = calloc((size_t)n * n, sizeof *c);
    if (!a || !b || !c) exit(1);
    for (long i = 0; i < (long)n * n; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    double best = 1e30;
    for (int r = -1; r < 3; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        double t = now() - t0;
        if (r >= 0 && t < best) best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

static void bench_model(void)
{
    moe_model_config cfg;
    moe_model_config_default(&cfg);
    moe_model *m;
    CHECK(moe_model_new(&m, &cfg));
    int64_t B = 8, S = 256;
    moe_rng rng;
    moe_rng_init(&rng, 7);
    moe_tensor *tokens;
    CHECK(moe_tensor_randint(&tokens, &rng, MOE_I64, MOE_CPU, 0, cfg.vocab, 2, (int64_t[]){B, S}));
    double best = 1e30, fwd = 0;
    for (int r = -1; r < 3; r++) {
        moe_model_zero_grad(m);
        moe_tensor *loss;
        double t0 = now();
        CHECK(moe_model_loss(&loss, m, tokens, tokens, -100));
        double t1 = now();
        CHECK(moe_backward(loss, NULL, false));
        double t = now() - t0;
        moe_tensor_release(loss);
        if (r >= 0 && t < best) best = t, fwd = t1 - t0;
    }
    double gf = moe_model_flops(m, B, S, true) / best / 1e9, peak = sgemm_gflops();
    printf("model V256 L4 D256 H4 E8 K2 F512, B8 S256: fwd %.1f ms, fwd+bwd %.1f ms, %.0f tokens/s, "
           "%.1f GFLOP/s = %.0f%% of sgemm (%.1f GFLOP/s)\n",
           fwd * 1e3, best * 1e3, (double)(B * S) / best, gf, 100 * gf / peak, peak);
    moe_tensor_release(tokens);
    moe_model_free(m);
}

int main(void)
{
    printf("bench-attention: %d threads\n", omp_get_max_threads());
    bench_attention(256, 4);
    bench_attention(256, 1);
    bench_attention(1024, 4);
    bench_model();
    return 0;
}
