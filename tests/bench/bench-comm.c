/* bench-comm.c — all-reduce and all-to-all bandwidth, 4 KiB to 64 MiB of f32
 * per rank, next to a plain memcpy of the same size.
 * Options (bench-harness.h): --ranks N, --mpi, --quick (fewer sizes and
 * iterations).
 *
 * Bandwidth = bytes of the tensor on one rank / time of one collective (the
 * "algorithm bandwidth"); memcpy = bytes / time of copying them once. The
 * target: the threads all-reduce at 64 MiB reaches half of memcpy's. */
#include <omp.h>

#include "bench-harness.h"

static const size_t sizes_full[] = {4u << 10, 64u << 10, 1u << 20, 16u << 20, 64u << 20};
static const size_t sizes_quick[] = {4u << 10, 1u << 20};

typedef struct bench {
    const size_t *sizes;
    int nsizes;
    double budget;      /* seconds per measurement, roughly */
    double ar[8], a2a[8]; /* seconds per call, rank 0 */
    const char *error;
} bench;

/* Iterations for about BUDGET seconds given one trial's time (same on every
 * rank: decided from rank 0's trial through a broadcast). */
static moe_status agree_iters(int *iters, double trial, double budget, moe_group *g)
{
    moe_tensor *t;
    MOE_TRY(moe_tensor_scalar(&t, MOE_I64, MOE_CPU, 0));
    int64_t n = trial > 0 ? (int64_t)(budget / trial) : 1000;
    if (n < 3) n = 3;
    if (n > 2000) n = 2000;
    *(int64_t *)moe_tensor_data(t) = n;
    moe_status st = moe_broadcast_(t, 0, g);
    *iters = (int)*(int64_t *)moe_tensor_data(t);
    moe_tensor_release(t);
    return st;
}

static moe_status run_rank(int rank, moe_group *g, void *p)
{
    bench *b = p;
    for (int k = 0; k < b->nsizes; k++) {
        int64_t count = (int64_t)(b->sizes[k] / sizeof(float));
        moe_tensor *t, *y = NULL;
        MOE_TRY(moe_tensor_full(&t, MOE_F32, MOE_CPU, 1, &count, rank + 1));
        /* all-reduce */
        MOE_TRY(moe_all_reduce_(t, MOE_REDUCE_SUM, g)); /* warm up */
        MOE_TRY(moe_barrier(g));
        double t0 = bench_now();
        MOE_TRY(moe_all_reduce_(t, MOE_REDUCE_SUM, g));
        int iters;
        MOE_TRY(agree_iters(&iters, bench_now() - t0, b->budget, g));
        MOE_TRY(moe_barrier(g));
        t0 = bench_now();
        for (int i = 0; i < iters; i++) MOE_TRY(moe_all_reduce_(t, MOE_REDUCE_AVG, g));
        MOE_TRY(moe_barrier(g));
        if (rank == 0) b->ar[k] = (bench_now() - t0) / iters;
        /* all-to-all, even splits */
        MOE_TRY(moe_all_to_all(&y, NULL, t, NULL, g));
        moe_tensor_release(y);
        MOE_TRY(moe_barrier(g));
        t0 = bench_now();
        MOE_TRY(moe_all_to_all(&y, NULL, t, NULL, g));
        moe_tensor_release(y);
        MOE_TRY(agree_iters(&iters, bench_now() - t0, b->budget, g));
        MOE_TRY(moe_barrier(g));
        t0 = bench_now();
        for (int i = 0; i < iters; i++) {
            MOE_TRY(moe_all_to_all(&y, NULL, t, NULL, g));
            moe_tensor_release(y);
        }
        MOE_TRY(moe_barrier(g));
        if (rank == 0) b->a2a[k] = (bench_now() - t0) / iters;
        moe_tensor_release(t);
    }
    return MOE_OK;
}

static double memcpy_seconds(size_t bytes, double budget)
{
    char *a = malloc(bytes), *c = malloc(bytes);
    if (!a || !c) {
        free(a);
        free(c);
        return 0;
    }
    memset(a, 1, bytes);
    memset(c, 2, bytes);
    memcpy(c, a, bytes);
    double t0 = bench_now();
    memcpy(c, a, bytes);
    double trial = bench_now() - t0;
    int iters = trial > 0 ? (int)(budget / trial) : 1000;
    if (iters < 3) iters = 3;
    if (iters > 2000) iters = 2000;
    t0 = bench_now();
    for (int i = 0; i < iters; i++) {
        memcpy(c, a, bytes);
        __asm__ __volatile__("" : : "r"(c) : "memory"); /* keep every copy */
    }
    double s = (bench_now() - t0) / iters;
    free(a);
    free(c);
    return s;
}

static const char *size_str(size_t b, char *buf, size_t n)
{
    if (b >= 1u << 20) snprintf(buf, n, "%zu MiB", b >> 20);
    else snprintf(buf, n, "%zu KiB", b >> 10);
    return buf;
}

static void print_table(const void *state, const char *backend, int nranks)
{
    const bench *b = state;
    int per = omp_get_max_threads();
    if (strcmp(backend, "threads") == 0) per = per / nranks > 1 ? per / nranks : 1;
    printf("comm bandwidth: %s backend, %d ranks, %d OpenMP threads per rank (GB/s = 1e9 bytes/s)\n", backend,
           nranks, per);
    printf("%8s  %10s  %12s %7s  %12s %7s\n", "size", "memcpy", "all_reduce", "ratio", "all_to_all", "ratio");
    double last_ratio = 0;
    for (int k = 0; k < b->nsizes; k++) {
        double bytes = (double)b->sizes[k];
        double mc = memcpy_seconds(b->sizes[k], b->budget);
        double bw_m = bytes / mc / 1e9, bw_ar = bytes / b->ar[k] / 1e9, bw_a2a = bytes / b->a2a[k] / 1e9;
        char sb[32];
        printf("%8s  %10.2f  %12.2f %6.0f%%  %12.2f %6.0f%%\n", size_str(b->sizes[k], sb, sizeof sb), bw_m, bw_ar,
               100 * bw_ar / bw_m, bw_a2a, 100 * bw_a2a / bw_m);
        last_ratio = bw_ar / bw_m;
    }
    if (b->sizes[b->nsizes - 1] == (64u << 20))
        printf("target (threads all-reduce >= 50%% of memcpy at 64 MiB): %s (%.0f%%)\n",
               strcmp(backend, "threads") != 0 ? "n/a (not threads)" : last_ratio >= 0.5 ? "met" : "MISSED",
               100 * last_ratio);
}

int main(int argc, char **argv)
{
    bench_options o;
    if (!bench_parse_args(&o, argc, argv)) return 2;
    bench b = {o.quick ? sizes_quick : sizes_full,
               o.quick ? (int)(sizeof sizes_quick / sizeof *sizes_quick) : (int)(sizeof sizes_full / sizeof *sizes_full),
               o.quick ? 0.05 : 0.6, {0}, {0}, NULL};
    return bench_run("bench-comm", &o, run_rank, &b, print_table);
}
