/* bench-moe.c — the MoE layer's forward+backward next to its references.
 *
 * Layer: T = 4096 tokens, D = 512, F = 1024, E = 8, K = 2, SwiGLU, f32,
 * softmax router (top-k of the logits, softmax over the K), dropless; 2
 * threads (MOELAB_NUM_THREADS overrides). Rows of the table:
 *
 *   tokens/s      moelab's layer vs the PyTorch CPU reference
 *                 (tests/bench/moe_reference.py: the usual loop over experts
 *                 with index_select / index_add, autograd backward) on the same
 *                 weights, inputs and output gradient, run in this process's
 *                 run as a subprocess of /usr/bin/python3 when it has torch
 *                 (else "skipped"); its output and input gradient are compared
 *                 with moelab's.                            target >= 2x
 *   expert GEMMs  GFLOP/s of the fused grouped expert MLP (forward and
 *                 backward, activation included; FLOPs of its 9 GEMMs per
 *                 expert) vs the same 9 GEMMs per expert called directly with
 *                 cblas_sgemm at the same shapes (the faster of one call at a
 *                 time with threaded BLAS and experts side by side).  >= 85%
 *   dispatch      plan + permute + combine, forward and backward, as a share
 *                 of the layer's time.                       target < 15%
 *   peak memory   moe_memory_stats peak of one forward+backward (from a reset
 *                 with the weights, input and output gradient live) vs the
 *                 bytes of the weights plus the activations a plain layer
 *                 materialises (x, logits, xp, gate, up, h, y, out).  <= 1.5x
 *
 * Figures are the best of several timed runs after a warm-up. A program,
 * not a test: exits 0 unless setup fails. MOELAB_BENCH_KEEP=1 keeps the
 * reference's input and output files (their directory is printed). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../kernels/cpu/grouped_gemm.h"
#include "moe/layer.h"
#include "moelab.h"

#ifndef MOE_SRCDIR
#define MOE_SRCDIR "."
#endif

#define NT 4096
#define ND 512
#define NF 1024
#define NE 8
#define NK 2
#define REPS 5
#define TORCH_ITERS 3 /* timed iterations per reference run */

#define TOKENS_TARGET 2.0
#define GEMM_TARGET 0.85
#define DISPATCH_TARGET 0.15
#define MEMORY_TARGET 1.5

static double now(void) { return omp_get_wtime(); }

#define CHECK(expr)                                                                   \
    do {                                                                              \
        if ((expr) != MOE_OK) {                                                       \
            fprintf(stderr, "bench-moe: %s failed: %s\n", #expr, moe_last_error());   \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static void rule(void)
{
    puts("------------------------------------------------------------------------------------------");
}

/* ---- moelab: the layer --------------------------------------------------------------- */

static double layer_step(moe_layer *l, moe_tensor *x, moe_tensor *gout)
{
    moe_layer_zero_grad(l);
    moe_tensor_zero_grad(x);
    moe_tensor *y;
    double t0 = now();
    CHECK(moe_layer_forward(&y, l, x, NULL));
    CHECK(moe_backward(y, gout, false));
    double t = now() - t0;
    moe_tensor_release(y);
    return t;
}

/* ---- dispatch + combine alone, on the layer's routing ---------------------------------- */

static double dispatch_step(moe_tensor *ids, moe_tensor *kept, moe_tensor *wts, moe_tensor *x,
                            moe_tensor *gout)
{
    moe_tensor *w, *xp, *y;
    CHECK(moe_detach(&w, wts));
    CHECK(moe_tensor_requires_grad_(w, true));
    moe_tensor_zero_grad(x);
    double t0 = now();
    moe_dispatch *d;
    CHECK(moe_dispatch_plan(&d, ids, kept, NE, 0, false));
    CHECK(moe_dispatch_permute(&xp, x, d));
    CHECK(moe_dispatch_combine(&y, xp, w, d)); /* xp stands in for the experts' output */
    CHECK(moe_backward(y, gout, false));
    double t = now() - t0;
    moe_dispatch_release(d);
    moe_tensor_release(w);
    moe_tensor_release(xp);
    moe_tensor_release(y);
    return t;
}

/* ---- expert GEMMs: fused grouped MLP vs direct sgemm --------------------------------------- */

typedef struct gemm_case {
    int64_t sizes[NE];
    int64_t N;
    moe_tensor *xp, *dy; /* [N D] */
    moe_experts *ex;
} gemm_case;

static double grouped_step(gemm_case *g)
{
    moe_tensor *y;
    moe_tensor_zero_grad(g->xp);
    moe_tensor_zero_grad(g->ex->w_gate);
    moe_tensor_zero_grad(g->ex->w_up);
    moe_tensor_zero_grad(g->ex->w_down);
    double t0 = now();
    CHECK(moe_experts_forward(&y, g->ex, g->xp, g->sizes));
    CHECK(moe_backward(y, g->dy, false));
    double t = now() - t0;
    moe_tensor_release(y);
    return t;
}

/* The 9 GEMMs of one expert's forward and backward on raw buffers. */
static void direct_expert(int64_t e, int64_t off, int64_t n, const float *x, const float *wg,
                          const float *wu, const float *wd, const float *dy, float *g, float *u,
                          float *h, float *y, float *dh, float *dwg, float *dwu, float *dwd, float *dx)
{
    const int64_t D = ND, F = NF;
    const float *X = x + off * D, *Wg = wg + e * D * F, *Wu = wu + e * D * F, *Wd = wd + e * F * D;
    const float *DY = dy + off * D;
    float *G = g + off * F, *U = u + off * F, *H = h + off * F, *Y = y + off * D, *DH = dh + off * F;
    float *DX = dx + off * D;
#define SG(ta, tb, m, nn, k, a, lda, b, ldb, beta, c, ldc)                                          \
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)(m), \
                (int)(nn), (int)(k), 1.0f, a, (int)(lda), b, (int)(ldb), beta, c, (int)(ldc))
    SG(0, 0, n, F, D, X, D, Wg, F, 0.0f, G, F);
    SG(0, 0, n, F, D, X, D, Wu, F, 0.0f, U, F);
    SG(0, 0, n, D, F, H, F, Wd, D, 0.0f, Y, D);
    SG(0, 1, n, F, D, DY, D, Wd, D, 0.0f, DH, F);
    SG(1, 0, F, D, n, H, F, DY, D, 0.0f, dwd + e * F * D, D);
    SG(1, 0, D, F, n, X, D, G, F, 0.0f, dwg + e * D * F, F);
    SG(1, 0, D, F, n, X, D, U, F, 0.0f, dwu + e * D * F, F);
    SG(0, 1, n, D, F, G, F, Wg, F, 0.0f, DX, D);
    SG(0, 1, n, D, F, U, F, Wu, F, 1.0f, DX, D);
#undef SG
}

typedef struct direct_bufs {
    float *g, *u, *h, *y, *dh, *dwg, *dwu, *dwd, *dx;
} direct_bufs;

static double direct_step(gemm_case *c, direct_bufs *b, bool side_by_side)
{
    int64_t off[NE + 1] = {0};
    for (int e = 0; e < NE; e++) off[e + 1] = off[e] + c->sizes[e];
    const float *x = moe_tensor_data(c->xp), *dy = moe_tensor_data(c->dy);
    const float *wg = moe_tensor_data(c->ex->w_gate), *wu = moe_tensor_data(c->ex->w_up);
    const float *wd = moe_tensor_data(c->ex->w_down);
    double t0 = now();
    if (side_by_side) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int e = 0; e < NE; e++)
            direct_expert(e, off[e], c->sizes[e], x, wg, wu, wd, dy, b->g, b->u, b->h, b->y, b->dh,
                          b->dwg, b->dwu, b->dwd, b->dx);
    } else {
        for (int e = 0; e < NE; e++)
            direct_expert(e, off[e], c->sizes[e], x, wg, wu, wd, dy, b->g, b->u, b->h, b->y, b->dh,
                          b->dwg, b->dwu, b->dwd, b->dx);
    }
    return now() - t0;
}

/* ---- PyTorch reference ------------------------------------------------------------------------ */

static int write_f32(const char *dir, const char *name, moe_tensor *t)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    moe_tensor *c;
    CHECK(moe_contiguous(&c, t));
    size_t n = (size_t)moe_tensor_numel(c);
    int rc = fwrite(moe_tensor_data(c), sizeof(float), n, f) == n ? 0 : -1;
    moe_tensor_release(c);
    return fclose(f) == 0 ? rc : -1;
}

/* max |a - b| / max |b| over N floats of file DIR/NAME vs T. */
static double compare_file(const char *dir, const char *name, moe_tensor *t)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NAN;
    size_t n = (size_t)moe_tensor_numel(t);
    float *ref = malloc(sizeof *ref * n);
    size_t got = ref ? fread(ref, sizeof *ref, n, f) : 0;
    fclose(f);
    if (got != n) {
        free(ref);
        return NAN;
    }
    const float *v = moe_tensor_data(t);
    double md = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)v[i] - ref[i]);
        if (d > md) md = d;
        if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
    }
    free(ref);
    return mx > 0 ? md / mx : md;
}

static void remove_dir(const char *dir)
{
    static const char *files[] = {"x", "router", "w_gate", "w_up", "w_down", "grad", "out", "dx"};
    char path[512];
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(path, sizeof path, "%s/%s.f32", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static char torch_version[64] = "?";

/* Best fwd+bwd seconds of the PyTorch reference, or a negative value with
 * WHY filled when it cannot run. DIFF_OUT / DIFF_DX: relative max
 * differences of its output and input gradient vs moelab's. */
static double run_torch(moe_layer *l, moe_tensor *x, moe_tensor *gout, moe_tensor *y, moe_tensor *dx,
                        int threads, char *why, size_t why_len, double *diff_out, double *diff_dx)
{
    *diff_out = *diff_dx = NAN;
    if (access("/usr/bin/python3", X_OK) != 0 ||
        system("/usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1") != 0) {
        snprintf(why, why_len, "skipped: python3-torch not installed");
        return -1;
    }
    const char *srcdir = getenv("MOELAB_SRCDIR") ? getenv("MOELAB_SRCDIR") : MOE_SRCDIR;
    char script[512];
    snprintf(script, sizeof script, "%s/tests/bench/moe_reference.py", srcdir);
    if (access(script, R_OK) != 0) {
        snprintf(why, why_len, "skipped: %.200s not found (set MOELAB_SRCDIR)", script);
        return -1;
    }
    char dir[] = "/tmp/bench-moe-XXXXXX";
    if (!mkdtemp(dir)) {
        snprintf(why, why_len, "skipped: cannot make a temporary directory");
        return -1;
    }
    int bad = write_f32(dir, "x", x) || write_f32(dir, "router", moe_layer_parameter_get(l, "router.weight")) ||
              write_f32(dir, "w_gate", moe_layer_parameter_get(l, "experts.w-gate")) ||
              write_f32(dir, "w_up", moe_layer_parameter_get(l, "experts.w-up")) ||
              write_f32(dir, "w_down", moe_layer_parameter_get(l, "experts.w-down")) ||
              write_f32(dir, "grad", gout);
    if (bad) {
        remove_dir(dir);
        snprintf(why, why_len, "skipped: cannot write the inputs");
        return -1;
    }
    char cmd[1024], line[256] = "";
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' %s %d %d %d %d %d %d %d 2>&1", script, dir, NT, ND, NF,
             NE, NK, threads, TORCH_ITERS);
    FILE *p = popen(cmd, "r");
    double secs = -1;
    if (p) {
        char buf[256];
        while (fgets(buf, sizeof buf, p))
            if (strncmp(buf, "seconds=", 8) == 0) {
                secs = atof(buf + 8);
                snprintf(line, sizeof line, "%s", buf);
                const char *v = strstr(buf, "torch=");
                if (v) snprintf(torch_version, sizeof torch_version, "%.*s", (int)strcspn(v + 6, " \n"), v + 6);
            } else if (!line[0]) {
                snprintf(line, sizeof line, "%s", buf);
            }
        pclose(p);
    }
    if (secs > 0) {
        *diff_out = compare_file(dir, "out", y);
        *diff_dx = compare_file(dir, "dx", dx);
    } else {
        line[strcspn(line, "\n")] = 0;
        snprintf(why, why_len, "failed: %s", line[0] ? line : "no output");
    }
    if (getenv("MOELAB_BENCH_KEEP"))
        fprintf(stderr, "bench-moe: reference files kept in %s\n", dir);
    else
        remove_dir(dir);
    return secs;
}

/* ---- main ------------------------------------------------------------------------------------- */

static const char *verdict(bool ok) { return ok ? "PASS" : "MISS"; }

int main(void)
{
    int threads = 2;
    const char *env = getenv("MOELAB_NUM_THREADS");
    if (env && *env) threads = atoi(env) > 0 ? atoi(env) : 2;
    omp_set_num_threads(threads);
#ifdef OPENBLAS_VERSION
    openblas_set_num_threads(threads);
#endif
    double t_start = now();

    moe_layer_config cfg;
    moe_layer_config_default(&cfg);
    cfg.hidden = ND;
    cfg.ffn = NF;
    cfg.experts = NE;
    cfg.top_k = NK;
    cfg.seed = 1;
    moe_layer *l;
    CHECK(moe_layer_new(&l, &cfg));
    moe_rng rng;
    moe_rng_init(&rng, 2);
    moe_tensor *x, *gout;
    CHECK(moe_tensor_randn(&x, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){NT, ND}));
    CHECK(moe_tensor_randn(&gout, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){NT, ND}));
    CHECK(moe_tensor_requires_grad_(x, true));

    printf("moelab bench-moe: MoE layer forward+backward, T=%d D=%d F=%d E=%d K=%d, swiglu, f32, %d thread%s\n",
           NT, ND, NF, NE, NK, threads, threads == 1 ? "" : "s");

    /* 1. peak memory of one forward+backward (after a warm-up step) */
    layer_step(l, x, gout);
    moe_layer_zero_grad(l);
    moe_tensor_zero_grad(x);
    moe_memory_peak_reset(MOE_CPU);
    moe_memory_stats m0, m1;
    moe_memory_stats_get(MOE_CPU, &m0);
    moe_tensor *y;
    CHECK(moe_layer_forward(&y, l, x, NULL));
    CHECK(moe_backward(y, gout, false));
    moe_memory_stats_get(MOE_CPU, &m1);
    moe_tensor *dx = moe_tensor_retain(x->grad); /* kept to compare with the reference */
    double weights_b = 0;
    for (int i = 0; i < moe_layer_parameter_count(l); i++) {
        moe_tensor *p;
        CHECK(moe_layer_parameter(l, i, NULL, &p));
        weights_b += (double)moe_tensor_nbytes(p);
    }
    const moe_dispatch *plan = moe_layer_last_dispatch(l);
    int64_t N = plan->rows, max_rows = 0;
    for (int e = 0; e < NE; e++)
        if (plan->counts[e] > max_rows) max_rows = plan->counts[e];
    double act_b = 4.0 * ((double)NT * ND * 2 /* x, out */ + (double)NT * NE /* logits */ +
                          (double)N * ND * 2 /* xp, y */ + (double)N * NF * 3 /* gate, up, h */);
    double peak_b = (double)m1.peak_bytes;
    moe_dispatch *plan0 = moe_dispatch_retain((moe_dispatch *)plan);
    moe_tensor *ids, *kept;
    CHECK(moe_detach(&ids, moe_layer_last_routing(l)->experts));
    CHECK(moe_detach(&kept, moe_layer_last_routing(l)->kept));
    moe_tensor *wts;
    CHECK(moe_detach(&wts, moe_layer_last_routing(l)->weights));

    /* 2. the expert GEMMs at the layer's group sizes: buffers */
    gemm_case gc;
    gc.N = N;
    for (int e = 0; e < NE; e++) gc.sizes[e] = plan0->offsets[e + 1] - plan0->offsets[e];
    gc.ex = moe_layer_experts(l);
    CHECK(moe_tensor_randn(&gc.xp, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){N, ND}));
    CHECK(moe_tensor_randn(&gc.dy, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){N, ND}));
    CHECK(moe_tensor_requires_grad_(gc.xp, true));
    direct_bufs b;
    size_t nf = (size_t)N * NF, nd = (size_t)N * ND, w = (size_t)NE * ND * NF;
    b.g = malloc(nf * 4), b.u = malloc(nf * 4), b.h = malloc(nf * 4), b.dh = malloc(nf * 4);
    b.y = malloc(nd * 4), b.dx = malloc(nd * 4);
    b.dwg = malloc(w * 4), b.dwu = malloc(w * 4), b.dwd = malloc(w * 4);
    if (!b.g || !b.u || !b.h || !b.dh || !b.y || !b.dx || !b.dwg || !b.dwu || !b.dwd) {
        fprintf(stderr, "bench-moe: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < nf; i++) b.h[i] = b.g[i] = b.u[i] = 0.5f;

    /* 3. timed rounds, interleaved so that a busy moment of the machine hits
     * every contender alike: the layer, dispatch+combine alone, the fused
     * grouped MLP, direct sgemm one expert at a time and side by side */
    double t_layer = 1e30, t_disp = 1e30, t_grouped = 1e30, t_seq = 1e30, t_side = 1e30;
    for (int r = -1; r < REPS; r++) {
        double t1 = layer_step(l, x, gout), t2 = dispatch_step(ids, kept, wts, x, gout);
        double t3 = grouped_step(&gc), t4 = direct_step(&gc, &b, false), t5 = direct_step(&gc, &b, true);
        if (r < 0) continue;
        t_layer = t1 < t_layer ? t1 : t_layer;
        t_disp = t2 < t_disp ? t2 : t_disp;
        t_grouped = t3 < t_grouped ? t3 : t_grouped;
        t_seq = t4 < t_seq ? t4 : t_seq;
        t_side = t5 < t_side ? t5 : t_side;
    }
    double t_direct = t_seq < t_side ? t_seq : t_side;
    double flops = moe_cpu_ffn_flops(MOE_CPU_FFN_SWIGLU, N, ND, NF, false) +
                   moe_cpu_ffn_flops(MOE_CPU_FFN_SWIGLU, N, ND, NF, true);

    /* 4. the PyTorch reference on the same weights and inputs, twice with
     * rounds of the layer in between: each side gets the best of all its
     * rounds (REPS + 2 for moelab, 2 x TORCH_ITERS for the reference) */
    char why[300] = "";
    double diff_out, diff_dx, d2, d3;
    double t_torch = run_torch(l, x, gout, y, dx, threads, why, sizeof why, &diff_out, &diff_dx);
    for (int r = 0; r < 2; r++) {
        double t = layer_step(l, x, gout);
        t_layer = t < t_layer ? t : t_layer;
    }
    if (t_torch > 0) {
        double t = run_torch(l, x, gout, y, dx, threads, why, sizeof why, &d2, &d3);
        if (t > 0 && t < t_torch) t_torch = t;
    }

    /* the table */
    double tps = NT / t_layer;
    rule();
    printf("%-22s %14s %18s %9s %10s   %s\n", "metric", "moelab", "reference", "ratio", "target", "");
    rule();
    if (t_torch > 0) {
        double ttps = NT / t_torch, ratio = tps / ttps;
        printf("%-22s %14.0f %18.0f %8.2fx %10s   %s\n", "tokens/s (fwd+bwd)", tps, ttps, ratio, ">= 2x",
               verdict(ratio >= TOKENS_TARGET));
    } else {
        printf("%-22s %14.0f %18s %9s %10s   %s\n", "tokens/s (fwd+bwd)", tps, "-", "-", ">= 2x", why);
    }
    double g_grouped = flops / t_grouped * 1e-9, g_direct = flops / t_direct * 1e-9;
    double gratio = g_grouped / g_direct;
    printf("%-22s %14.1f %18.1f %8.1f%% %10s   %s\n", "expert GEMM GFLOP/s", g_grouped, g_direct, 100 * gratio,
           ">= 85%", verdict(gratio >= GEMM_TARGET));
    double share = t_disp / t_layer;
    printf("%-22s %13.1f%% %18s %9s %10s   %s\n", "dispatch+combine", 100 * share, "", "", "< 15%",
           verdict(share < DISPATCH_TARGET));
    double mratio = peak_b / (weights_b + act_b);
    printf("%-22s %12.1f MB %15.1f MB %8.2fx %10s   %s\n", "peak memory fwd+bwd", peak_b / 1e6,
           (weights_b + act_b) / 1e6, mratio, "<= 1.5x", verdict(mratio <= MEMORY_TARGET));
    rule();
    printf("layer %.1f ms (best of %d); dispatch+combine %.1f ms; routed rows N=%lld, largest expert %lld rows\n",
           1e3 * t_layer, REPS + 2, 1e3 * t_disp, (long long)N, (long long)max_rows);
    printf("expert GEMMs: fused %.1f ms; direct sgemm %.1f ms one at a time (%.1f GFLOP/s), %.1f ms side by side (%.1f GFLOP/s)\n",
           1e3 * t_grouped, 1e3 * t_seq, flops / t_seq * 1e-9, 1e3 * t_side, flops / t_side * 1e-9);
    printf("memory: peak %.1f MB = live at start %.1f MB + %.1f MB; weights %.1f MB, activations %.1f MB\n",
           peak_b / 1e6, (double)m0.live_bytes / 1e6, (peak_b - (double)m0.live_bytes) / 1e6, weights_b / 1e6,
           act_b / 1e6);
    if (t_torch > 0)
        printf("PyTorch %s reference: %.1f ms (best of %d); max |moelab - torch| / max |torch|: output %.2g, input gradient %.2g\n",
               torch_version, 1e3 * t_torch, 2 * TORCH_ITERS, diff_out, diff_dx);
    printf("total %.1f s\n", now() - t_start);

    free(b.g), free(b.u), free(b.h), free(b.dh), free(b.y), free(b.dx), free(b.dwg), free(b.dwu), free(b.dwd);
    moe_tensor_release(y);
    moe_tensor_release(dx);
    moe_tensor_release(ids);
    moe_tensor_release(kept);
    moe_tensor_release(wts);
    moe_dispatch_release(plan0);
    moe_tensor_release(gc.xp);
    moe_tensor_release(gc.dy);
    moe_tensor_release(x);
    moe_tensor_release(gout);
    moe_layer_free(l);
    return 0;
}
