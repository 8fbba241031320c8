/* bench-ops.c — throughput of core ops next to their hardware reference.
 *
 *   matmul  f32 square n = 512, 1024, 2048, and [2048 256]·[256 256] (the
 *           thin product of a transformer step: B·S rows, D columns):
 *           GFLOP/s of moe_matmul vs one cblas_sgemm call on the same buffers,
 *           threaded by BLAS (target >= 95%)
 *   softmax (last dim, rows of 1024), add (same shape), sum (all elements),
 *           rms-norm (rows of 256, with a weight), rope (heads of 64 over 256
 *           positions), the last two also with their backward (gradient of the
 *           input from a given upstream gradient), over 2^24 f32: GB/s vs
 *           memcpy of the same byte count on the same threads (target >=
 *           60%). Bytes counted read + written per element: add 3x4, softmax
 *           2x4, sum 4, rms-norm and rope 2x4, with the backward 5x4 (the
 *           forward, then g and x read, dx written; rope's backward reads g
 *           only: 4x4), memcpy 2x4.
 *
 * A matmul figure is the mean of its timed runs after a warm-up (BLAS's
 * threads waking between calls is part of the cost); a memory-bound figure is
 * the best of several. Threads:
 * MOELAB_NUM_THREADS, else OMP_NUM_THREADS, else all cores. An op that fails
 * (not implemented yet, …) prints its error on its row and the run goes on.
 * A program, not a test: it always exits 0 unless setup fails. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moelab.h"
#include "nn/rope.h"

#define MATMUL_TARGET 0.95
#define STREAM_TARGET 0.60
#define STREAM_N (1 << 24)
#define SOFTMAX_ROW 1024

static double now(void) { return omp_get_wtime(); }

static void rule(void)
{
    puts("--------------------------------------------------------------------------------------");
}

/* ---- matmul ---------------------------------------------------------------------- */

/* [M K] @ [K N] */
static int bench_matmul(int64_t m, int64_t k, int64_t n, int reps)
{
    moe_rng rng;
    moe_rng_init(&rng, (uint64_t)(m + k + n));
    moe_tensor *a = NULL, *b = NULL, *c = NULL;
    if (moe_tensor_randn(&a, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){m, k}) != MOE_OK ||
        moe_tensor_randn(&b, &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){k, n}) != MOE_OK ||
        moe_tensor_zeros(&c, MOE_F32, MOE_CPU, 2, (int64_t[]){m, n}) != MOE_OK) {
        fprintf(stderr, "bench-ops: setup failed: %s\n", moe_last_error());
        return 1;
    }
    const float *pa = moe_tensor_data(a), *pb = moe_tensor_data(b);
    float *pc = moe_tensor_data(c);
    double sum_moe = 0, sum_blas = 0;
    const char *err = NULL;
    for (int r = -1; r < reps && !err; r++) { /* r = -1: warm-up */
        moe_tensor *out = NULL;
        double t0 = now();
        moe_status st = moe_matmul(&out, a, b);
        double t1 = now();
        moe_tensor_release(out);
        if (st != MOE_OK) {
            err = moe_last_error();
            break;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, (int)n, (int)k, 1.0f, pa,
                    (int)k, pb, (int)n, 0.0f, pc, (int)n);
        double t2 = now();
        if (r >= 0) {
            sum_moe += t1 - t0;
            sum_blas += t2 - t1;
        }
    }
    char name[32];
    if (m == k && k == n)
        snprintf(name, sizeof name, "matmul %lld", (long long)n);
    else
        snprintf(name, sizeof name, "matmul %lldx%lldx%lld", (long long)m, (long long)k, (long long)n);
    if (err) {
        printf("%-20s ERROR: %s\n", name, err);
    } else {
        double flop = 2.0 * (double)m * (double)k * (double)n;
        double g_moe = flop * reps / sum_moe * 1e-9, g_blas = flop * reps / sum_blas * 1e-9;
        double ratio = g_moe / g_blas;
        printf("%-20s %10.1f %10.1f %-8s %7.1f%%  >= %3.0f%%   %s\n", name, g_moe, g_blas, "GFLOP/s",
               100 * ratio, 100 * MATMUL_TARGET, ratio >= MATMUL_TARGET ? "PASS" : "MISS");
    }
    moe_tensor_release(a);
    moe_tensor_release(b);
    moe_tensor_release(c);
    return 0;
}

/* ---- memory-bound ops ---------------------------------------------------------------- */

/* memcpy of NBYTES split across the threads (the bandwidth roof). */
static void par_memcpy(char *dst, const char *src, size_t nbytes)
{
    int nt = omp_get_max_threads();
#pragma omp parallel for schedule(static)
    for (int t = 0; t < nt; t++) {
        size_t lo = nbytes * (size_t)t / (size_t)nt, hi = nbytes * (size_t)(t + 1) / (size_t)nt;
        memcpy(dst + lo, src + lo, hi - lo);
    }
}

static double best_memcpy(char *dst, const char *src, size_t nbytes, int reps)
{
    double best = 1e30;
    for (int r = -1; r < reps; r++) {
        double t0 = now();
        par_memcpy(dst, src, nbytes);
        double t = now() - t0;
        if (r >= 0 && t < best) best = t;
    }
    return best;
}

typedef enum { OP_SOFTMAX, OP_ADD, OP_SUM, OP_RMS, OP_RMS_GRAD, OP_ROPE, OP_ROPE_GRAD } stream_op;

/* The operands: x and y [2^24 / SOFTMAX_ROW, SOFTMAX_ROW]; the same
 * elements as rms-norm's rows and rope's heads, and a copy of x that
 * requires grad for the backward rows. */
typedef struct operands {
    moe_tensor *x, *y;
    moe_tensor *x_rows, *g_rows, *w;     /* [2^24 / 256, 256], weight [256] */
    moe_tensor *x_heads, *g_heads, *cos, *sin; /* [64 256 16 64], tables [256 32] */
    moe_tensor *xg_rows, *xg_heads;      /* x_rows, x_heads requiring grad */
} operands;

/* OUT = the op; with _GRAD the forward and its backward from the given g,
 * OUT then being the input's gradient. */
static moe_status run_op(stream_op op, moe_tensor **out, const operands *o)
{
    moe_tensor *f = NULL, *leaf = op == OP_RMS_GRAD ? o->xg_rows : o->xg_heads;
    moe_status st;
    switch (op) {
    case OP_SOFTMAX: return moe_softmax(out, o->x, -1);
    case OP_ADD: return moe_add(out, o->x, o->y);
    case OP_SUM: return moe_sum(out, o->x, 0, NULL, false);
    case OP_RMS: return moe_rms_norm(out, o->x_rows, o->w, 1e-6);
    case OP_ROPE: return moe_rope(out, o->x_heads, o->cos, o->sin);
    case OP_RMS_GRAD: st = moe_rms_norm(&f, leaf, o->w, 1e-6); break;
    default: st = moe_rope(&f, leaf, o->cos, o->sin); break;
    }
    if (st == MOE_OK) st = moe_backward(f, op == OP_RMS_GRAD ? o->g_rows : o->g_heads, false);
    moe_tensor_release(f);
    *out = moe_tensor_grad(leaf);
    moe_tensor_zero_grad(leaf);
    return st;
}

static void bench_stream(const char *name, stream_op op, int bytes_per_elem, const operands *o,
                         double memcpy_gbs, int reps)
{
    double best = 1e30;
    for (int r = -1; r < reps; r++) {
        moe_tensor *out = NULL;
        double t0 = now();
        moe_status st = run_op(op, &out, o);
        double t = now() - t0;
        moe_tensor_release(out);
        if (st != MOE_OK) {
            printf("%-20s ERROR: %s\n", name, moe_last_error());
            return;
        }
        if (r >= 0 && t < best) best = t;
    }
    double gbs = (double)STREAM_N * bytes_per_elem / best * 1e-9, ratio = gbs / memcpy_gbs;
    printf("%-20s %10.1f %10.1f %-8s %7.1f%%  >= %3.0f%%   %s\n", name, gbs, memcpy_gbs, "GB/s",
           100 * ratio, 100 * STREAM_TARGET, ratio >= STREAM_TARGET ? "PASS" : "MISS");
}

/* ---- main ---------------------------------------------------------------------------- */

static int setup_threads(void)
{
    const char *env = getenv("MOELAB_NUM_THREADS");
    if (env && *env) {
        int n = atoi(env);
        if (n < 1) {
            fprintf(stderr, "bench-ops: MOELAB_NUM_THREADS=%s is not a positive count\n", env);
            exit(2);
        }
        omp_set_num_threads(n);
#ifdef OPENBLAS_VERSION
        openblas_set_num_threads(n);
#endif
    }
    return omp_get_max_threads();
}

int main(void)
{
    int threads = setup_threads();
#ifdef OPENBLAS_VERSION
    const char *blas = OPENBLAS_VERSION;
#else
    const char *blas = "CBLAS";
#endif
    printf("moelab bench-ops: %d thread%s, BLAS:%s\n", threads, threads == 1 ? "" : "s", blas);
    rule();
    printf("%-20s %10s %10s %-8s %8s  %7s   %s\n", "op", "moelab", "reference", "unit", "ratio",
           "target", "");
    rule();

    /* matmul vs cblas_sgemm on the same buffers */
    if (bench_matmul(512, 512, 512, 40) || bench_matmul(1024, 1024, 1024, 15) ||
        bench_matmul(2048, 2048, 2048, 5) || bench_matmul(2048, 256, 256, 100))
        return 1;

    /* memory-bound ops vs memcpy */
    moe_rng rng;
    moe_rng_init(&rng, 7);
    int64_t shape[2] = {STREAM_N / SOFTMAX_ROW, SOFTMAX_ROW}, rows[2] = {STREAM_N / 256, 256};
    int64_t heads[4] = {STREAM_N / (256 * 16 * 64), 256, 16, 64}, d = 256;
    moe_tensor *x = NULL, *y = NULL, *dst = NULL;
    operands o = {0};
    if (moe_tensor_randn(&x, &rng, MOE_F32, MOE_CPU, 2, shape) != MOE_OK ||
        moe_tensor_randn(&y, &rng, MOE_F32, MOE_CPU, 2, shape) != MOE_OK ||
        moe_tensor_zeros(&dst, MOE_F32, MOE_CPU, 2, shape) != MOE_OK ||
        moe_tensor_randn(&o.w, &rng, MOE_F32, MOE_CPU, 1, &d) != MOE_OK ||
        moe_view(&o.x_rows, x, 2, rows) != MOE_OK || moe_view(&o.g_rows, y, 2, rows) != MOE_OK ||
        moe_view(&o.x_heads, x, 4, heads) != MOE_OK || moe_view(&o.g_heads, y, 4, heads) != MOE_OK ||
        moe_rope_tables(&o.cos, &o.sin, 256, 64, 1e4) != MOE_OK ||
        moe_detach(&o.xg_rows, o.x_rows) != MOE_OK || moe_detach(&o.xg_heads, o.x_heads) != MOE_OK ||
        moe_tensor_requires_grad_(o.xg_rows, true) != MOE_OK ||
        moe_tensor_requires_grad_(o.xg_heads, true) != MOE_OK) {
        fprintf(stderr, "bench-ops: setup failed: %s\n", moe_last_error());
        return 1;
    }
    o.x = x;
    o.y = y;
    size_t nbytes = (size_t)STREAM_N * sizeof(float);
    double t = best_memcpy(moe_tensor_data(dst), moe_tensor_data(x), nbytes, 10);
    double memcpy_gbs = 2.0 * (double)nbytes / t * 1e-9;
    rule();
    printf("%-20s %10s %10.1f %-8s (2^24 f32, read + write, %d thread%s)\n", "memcpy", "",
           memcpy_gbs, "GB/s", threads, threads == 1 ? "" : "s");
    bench_stream("softmax", OP_SOFTMAX, 2 * 4, &o, memcpy_gbs, 10);
    bench_stream("add", OP_ADD, 3 * 4, &o, memcpy_gbs, 10);
    bench_stream("sum", OP_SUM, 4, &o, memcpy_gbs, 10);
    bench_stream("rms-norm", OP_RMS, 2 * 4, &o, memcpy_gbs, 10);
    bench_stream("rms-norm +backward", OP_RMS_GRAD, 5 * 4, &o, memcpy_gbs, 10);
    bench_stream("rope", OP_ROPE, 2 * 4, &o, memcpy_gbs, 10);
    bench_stream("rope +backward", OP_ROPE_GRAD, 4 * 4, &o, memcpy_gbs, 10);
    rule();
    moe_tensor *all[] = {x, y, dst, o.w, o.x_rows, o.g_rows, o.x_heads, o.g_heads, o.cos, o.sin,
                         o.xg_rows, o.xg_heads};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) moe_tensor_release(all[i]);
    return 0;
}
