/* bench-optim.c — the optimizer step and gradient clipping over the
 * parameters of the reference model (V256 L4 D256 H4 E8 F512: 14.0M
 * f32 parameters in 39 tensors), next to memcpy of the same byte count on
 * the same threads (the bandwidth roof). Bytes counted per element:
 *   adamw          p g m v read, p m v written: 28
 *   sgd momentum   p g b read, p b written: 20
 *   clip (scaling) g read for the norm, then read and written: 12
 *   memcpy         of one f32 array, read + written: 8
 * Every figure is the best of several runs after a warm-up. Threads:
 * MOELAB_NUM_THREADS, else OMP_NUM_THREADS, else all cores. A program, not
 * a test: exits 0 unless setup fails. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moelab.h"

#define REPS 10
#define MAX_PARAMS 64

static moe_tensor *params[MAX_PARAMS];
static const char *names[MAX_PARAMS];
static char name_buf[MAX_PARAMS][48];
static int n_params;
static int64_t n_elems;

static void add(const char *name, int ndim, const int64_t *shape)
{
    moe_tensor *t;
    if (moe_tensor_randn(&t, NULL, MOE_F32, MOE_CPU, ndim, shape) != MOE_OK ||
        moe_tensor_requires_grad_(t, true) != MOE_OK ||
        moe_tensor_randn(&t->grad, NULL, MOE_F32, MOE_CPU, ndim, shape) != MOE_OK) {
        fprintf(stderr, "bench-optim: setup failed: %s\n", moe_last_error());
        exit(1);
    }
    snprintf(name_buf[n_params], sizeof name_buf[0], "%s", name);
    names[n_params] = name_buf[n_params];
    params[n_params++] = t;
    n_elems += moe_tensor_numel(t);
}

/* The reference model's parameters (names as the model uses them). */
static void reference_params(void)
{
    const int64_t V = 256, D = 256, E = 8, F = 512;
    add("embed", 2, (int64_t[]){V, D});
    for (int l = 0; l < 4; l++) {
        char n[48];
        static const char *const attn[] = {"wq", "wk", "wv", "wo"};
        snprintf(n, sizeof n, "layers.%d.attn-norm", l);
        add(n, 1, (int64_t[]){D});
        for (int k = 0; k < 4; k++) {
            snprintf(n, sizeof n, "layers.%d.attn.%s", l, attn[k]);
            add(n, 2, (int64_t[]){D, D});
        }
        snprintf(n, sizeof n, "layers.%d.ffn-norm", l);
        add(n, 1, (int64_t[]){D});
        snprintf(n, sizeof n, "layers.%d.moe.router.weight", l);
        add(n, 2, (int64_t[]){E, D});
        snprintf(n, sizeof n, "layers.%d.moe.experts.w-gate", l);
        add(n, 3, (int64_t[]){E, D, F});
        snprintf(n, sizeof n, "layers.%d.moe.experts.w-up", l);
        add(n, 3, (int64_t[]){E, D, F});
        snprintf(n, sizeof n, "layers.%d.moe.experts.w-down", l);
        add(n, 3, (int64_t[]){E, F, D});
    }
    add("norm", 1, (int64_t[]){D});
    add("lm-head", 2, (int64_t[]){V, D});
}

static double best_memcpy(size_t nbytes)
{
    char *a = malloc(nbytes), *b = malloc(nbytes);
    if (!a || !b) exit(1);
    memset(a, 1, nbytes);
    memset(b, 0, nbytes);
    double best = 1e30;
    for (int r = -1; r < REPS; r++) {
        double t0 = omp_get_wtime();
#pragma omp parallel
        {
            int k = omp_get_thread_num(), n = omp_get_num_threads();
            size_t lo = nbytes * (size_t)k / (size_t)n, hi = nbytes * (size_t)(k + 1) / (size_t)n;
            memcpy(b + lo, a + lo, hi - lo);
        }
        double t = omp_get_wtime() - t0;
        if (r >= 0 && t < best) best = t;
    }
    free(a);
    free(b);
    return 2.0 * (double)nbytes / best * 1e-9; /* read + written */
}

static void row(const char *what, double seconds, double bytes_per_elem, double memcpy_gbs)
{
    double gbs = (double)n_elems * bytes_per_elem / seconds * 1e-9;
    printf("%-16s %10.2f %10.1f %10.1f %8.1f%%\n", what, seconds * 1e3, gbs, memcpy_gbs, 100 * gbs / memcpy_gbs);
}

static double time_steps(moe_optimizer *opt)
{
    double best = 1e30;
    for (int r = -1; r < REPS; r++) {
        double t0 = omp_get_wtime();
        if (moe_optimizer_step(opt) != MOE_OK) {
            fprintf(stderr, "bench-optim: %s\n", moe_last_error());
            exit(1);
        }
        double t = omp_get_wtime() - t0;
        if (r >= 0 && t < best) best = t;
    }
    return best;
}

int main(void)
{
    const char *env = getenv("MOELAB_NUM_THREADS");
    if (env && atoi(env) > 0) omp_set_num_threads(atoi(env));
    reference_params();
    printf("moelab bench-optim: %d thread%s, %d parameters, %.2fM f32 elements\n", omp_get_max_threads(),
           omp_get_max_threads() == 1 ? "" : "s", n_params, (double)n_elems * 1e-6);
    double roof = best_memcpy((size_t)n_elems * sizeof(float));
    puts("-------------------------------------------------------------");
    printf("%-16s %10s %10s %10s %9s\n", "", "ms", "GB/s", "memcpy", "ratio");
    puts("-------------------------------------------------------------");

    moe_adamw_config a;
    moe_adamw_config_default(&a);
    a.lr = 1e-6;
    moe_optimizer *opt;
    if (moe_adamw_new(&opt, n_params, names, params, &a) != MOE_OK) return 1;
    row("adamw step", time_steps(opt), 28, roof);
    moe_optimizer_free(opt);

    moe_sgd_config s;
    moe_sgd_config_default(&s);
    s.lr = 1e-6;
    s.momentum = 0.9;
    if (moe_sgd_new(&opt, n_params, names, params, &s) != MOE_OK) return 1;
    row("sgd momentum", time_steps(opt), 20, roof);
    moe_optimizer_free(opt);

    double best = 1e30, norm;
    for (int r = -1; r < REPS; r++) {
        double t0 = omp_get_wtime();
        if (moe_clip_grad_norm(&norm, n_params, params, 1e-3) != MOE_OK) return 1; /* always scales */
        double t = omp_get_wtime() - t0;
        if (r >= 0 && t < best) best = t;
    }
    row("clip-grad-norm", best, 12, roof);
    puts("-------------------------------------------------------------");
    for (int i = 0; i < n_params; i++) moe_tensor_release(params[i]);
    return 0;
}
