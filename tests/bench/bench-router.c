/* bench-router.c — the router's balancing machinery next to its gate matmul.
 *
 *   T = 16384 tokens (B = 4 sequences of 4096), D = 1024, E = 64, K = 8,
 *   sigmoid scores, 8 expert groups (4 kept, group score top-2), expert
 *   bias, losses micro-batch 1e-2 + sequence 1e-4 + z 1e-3, inject mode.
 *
 * Rows (best of REPS after a warm-up, f32):
 *   gate matmul        z = x Wᵀ forward, then its backward (dW and dx) from a
 *                      fixed gradient — the reference cost
 *   router             moe_router_forward + backward of Σ weights⊙R (the gate,
 *                      scores, selection, counts, losses, metrics, the
 *                      injected aux gradient, dW and dx)
 *   machinery          router − gate matmul
 * Target: machinery < 25% of the gate matmul. Threads: OMP_NUM_THREADS /
 * MOELAB_NUM_THREADS. A program, not a test: exits 0 unless setup fails. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "moe/metrics.h"
#include "moe/router.h"
#include "moelab.h"

#define B 4
#define S 4096
#define D 1024
#define E 64
#define K 8
#define REPS 5
#define TARGET 0.25

/* Wall clock, and the CPU time of the process (all threads): on a shared
 * machine the CPU-time ratio is the steadier figure. Run with
 * OMP_WAIT_POLICY=passive so idle threads do not spin into the CPU time. */
static double now(void) { return omp_get_wtime(); }
static double cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define CHECK(expr)                                                                      \
    do {                                                                                 \
        if ((expr) != MOE_OK) {                                                          \
            fprintf(stderr, "bench-router: %s failed: %s\n", #expr, moe_last_error());   \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

int main(void)
{
    const int64_t T = (int64_t)B * S;
    moe_rng rng;
    moe_rng_init(&rng, 7);
    moe_tensor *x, *R, *G;
    CHECK(moe_tensor_randn(&x, &rng, MOE_F32, MOE_CPU, 3, (int64_t[]){B, S, D}));
    CHECK(moe_tensor_requires_grad_(x, true));
    CHECK(moe_tensor_randn(&R, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){T, K}));
    CHECK(moe_tensor_randn(&G, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){T, E}));

    moe_router_config cfg;
    moe_router_config_default(&cfg);
    cfg.hidden = D;
    cfg.experts = E;
    cfg.top_k = K;
    CHECK(moe_router_config_preset(&cfg, "deepseek-v3"));
    cfg.groups = 8;
    cfg.group_topk = 4;
    CHECK(moe_router_config_set_losses(&cfg, 3, (moe_aux_term[]){{MOE_AUX_MICRO_BATCH, 1e-2},
                                                                  {MOE_AUX_SEQUENCE, 1e-4},
                                                                  {MOE_AUX_Z, 1e-3}}));
    moe_router *r;
    CHECK(moe_router_new(&r, &cfg));
    moe_tensor *W = moe_router_weight(r);

    double best[2][4]; /* [wall, cpu][gate fwd, gate, router fwd, router] */
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < 4; i++) best[c][i] = 1e30;
    for (int rep = -1; rep < REPS; rep++) {
        double w[6], u[6];
        /* gate matmul alone: forward and backward */
        moe_tensor *x2, *z;
        moe_tensor_zero_grad(x);
        moe_tensor_zero_grad(W);
        w[0] = now(), u[0] = cpu();
        CHECK(moe_reshape(&x2, x, 2, (int64_t[]){T, D}));
        CHECK(moe_linear(&z, x2, W, NULL));
        w[1] = now(), u[1] = cpu();
        CHECK(moe_backward(z, G, false));
        w[2] = now(), u[2] = cpu();
        moe_tensor_release(z);
        moe_tensor_release(x2);
        /* the router */
        moe_tensor_zero_grad(x);
        moe_tensor_zero_grad(W);
        moe_routing *out;
        moe_tensor *prod, *obj;
        w[3] = now(), u[3] = cpu();
        CHECK(moe_router_forward(&out, r, x, NULL, NULL));
        w[4] = now(), u[4] = cpu();
        CHECK(moe_mul(&prod, out->weights, R));
        CHECK(moe_sum(&obj, prod, 0, NULL, false));
        CHECK(moe_backward(obj, NULL, false));
        w[5] = now(), u[5] = cpu();
        moe_tensor_release(prod);
        moe_tensor_release(obj);
        moe_routing_free(out);
        CHECK(moe_router_step(r));
        if (rep < 0) continue;
        for (int c = 0; c < 2; c++) {
            double *t = c ? u : w, v[4] = {t[1] - t[0], t[2] - t[0], t[4] - t[3], t[5] - t[3]};
            for (int i = 0; i < 4; i++) best[c][i] = v[i] < best[c][i] ? v[i] : best[c][i];
        }
    }
    printf("router bench: T=%lld (B=%d S=%d) D=%d E=%d K=%d, sigmoid, 8 groups (4 kept), bias,\n"
           "losses micro-batch+sequence+z, inject; f32, %d threads, best of %d\n",
           (long long)T, B, S, D, E, K, omp_get_max_threads(), REPS);
    puts("------------------------------------------------------------------------------");
    printf("%-30s %11s %11s %11s %11s\n", "", "wall fwd", "wall f+b", "cpu fwd", "cpu f+b");
    printf("%-30s %11s %11s %11s %11s\n", "", "ms", "ms", "ms", "ms");
    const char *rows[3] = {"gate matmul (x Wt, dW, dx)", "router (gate + machinery)", "balancing machinery"};
    double ratio[2];
    for (int row = 0; row < 3; row++) {
        printf("%-30s", rows[row]);
        for (int c = 0; c < 2; c++) {
            double fwd = row == 0 ? best[c][0] : row == 1 ? best[c][2] : best[c][2] - best[c][0];
            double all = row == 0 ? best[c][1] : row == 1 ? best[c][3] : best[c][3] - best[c][1];
            printf(" %11.2f %11.2f", fwd * 1e3, all * 1e3);
            if (row == 2) ratio[c] = all / best[c][1];
        }
        putchar('\n');
    }
    puts("------------------------------------------------------------------------------");
    printf("machinery / gate matmul: wall %.1f%%, cpu %.1f%%  (target < %.0f%%): %s\n", 100 * ratio[0],
           100 * ratio[1], 100 * TARGET, ratio[1] < TARGET ? "PASS" : "MISS");
    moe_router_free(r);
    moe_tensor_release(x);
    moe_tensor_release(R);
    moe_tensor_release(G);
    return 0;
}
