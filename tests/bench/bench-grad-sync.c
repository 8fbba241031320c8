/* bench-grad-sync.c — how much of the data-parallel gradient all-reduce a
 * grad sync hides behind backward, next to reducing after backward.
 * Options (bench-harness.h): --ranks N, --mpi, --quick (a small model, few
 * steps).
 *
 * The model: L layers h = tanh(h W_l), W_l f32 [D D], loss = mean(h^2), on
 * B rows per micro-batch, 2 micro-batches per step. Modes, each timed over
 * the same steps:
 *   compute   no reduction (the floor)
 *   after     after backward, one blocking all-reduce per parameter
 *   sync-25M  grad sync, default buckets (25 MB)
 *   sync-4M   grad sync, 4 MB buckets
 * Columns: step time; time in collectives (the rank neither computes nor
 * hides it: the reduction after backward for "after"; for the syncs the
 * starts in hooks plus grad-sync-wait's collectives) and its share of the
 * step; the part of it spent in grad-sync-wait; buckets, and how many started
 * during backward per step. A start that overlaps backward (MPI) costs only
 * its launch and the checks of later hooks; one that runs at once (every
 * all-reduce on threads) costs its whole transfer inside backward. */
#include "bench-harness.h"
#include "dist/grad_sync.h"

enum { MODES = 4, MICRO = 2, MAX_LAYERS = 32 };
static const char *const mode_names[MODES] = {"compute", "after", "sync-25M", "sync-4M"};

typedef struct bench {
    int layers, dim, rows, steps;
    double step_s[MODES], comm_s[MODES], wait_s[MODES]; /* per step, rank 0 */
    int64_t early[MODES];                    /* buckets started during backward, per step */
    int buckets[MODES];
} bench;

/* Forward and backward of one micro-batch X [B D]. */
static moe_status micro_batch(moe_tensor *const *w, int layers, moe_tensor *x)
{
    moe_tensor *h = moe_tensor_retain(x), *loss = NULL;
    moe_status st = MOE_OK;
    for (int l = 0; l < layers && st == MOE_OK; l++) {
        moe_tensor *z = NULL, *a = NULL;
        st = moe_matmul(&z, h, w[l]);
        if (st == MOE_OK) st = moe_tanh(&a, z);
        moe_tensor_release(z);
        moe_tensor_release(h);
        h = a;
    }
    moe_tensor *sq = NULL;
    if (st == MOE_OK) st = moe_mul(&sq, h, h);
    if (st == MOE_OK) st = moe_mean(&loss, sq, 0, NULL, false);
    if (st == MOE_OK) st = moe_backward(loss, NULL, false);
    moe_tensor_release(sq);
    moe_tensor_release(loss);
    moe_tensor_release(h);
    return st;
}

/* One step of MODE; *AFTER gets the time of the reduction after backward. */
static moe_status one_step(int mode, moe_tensor *const *w, bench *b, moe_tensor *const *x, moe_grad_sync *s,
                           moe_group *g, double *after)
{
    for (int l = 0; l < b->layers; l++) moe_tensor_zero_grad(w[l]);
    *after = 0;
    for (int m = 0; m < MICRO; m++) {
        if (s && m == MICRO - 1) MOE_TRY(moe_grad_sync_arm(s));
        MOE_TRY(micro_batch(w, b->layers, x[m]));
    }
    if (s) {
        MOE_TRY(moe_grad_sync_wait(s));
    } else if (mode == 1) {
        double t0 = bench_now();
        for (int l = 0; l < b->layers; l++) {
            moe_tensor *gr = moe_tensor_grad(w[l]);
            moe_status st = moe_all_reduce_(gr, MOE_REDUCE_AVG, g);
            moe_tensor_release(gr);
            MOE_TRY(st);
        }
        *after = bench_now() - t0;
    }
    return MOE_OK;
}

static moe_status run_rank(int rank, moe_group *g, void *p)
{
    bench *b = p;
    moe_tensor *w[MAX_LAYERS] = {0}, *x[MICRO] = {0};
    moe_status st = MOE_OK;
    moe_rng rng;
    moe_rng_init(&rng, 7); /* the same weights on every rank */
    for (int l = 0; l < b->layers && st == MOE_OK; l++) {
        st = moe_tensor_randn(&w[l], &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){b->dim, b->dim});
        moe_tensor *scaled = NULL;
        if (st == MOE_OK) st = moe_mul_scalar(&scaled, w[l], 1.0 / 32);
        moe_tensor_release(w[l]);
        w[l] = scaled;
        if (st == MOE_OK) st = moe_tensor_requires_grad_(w[l], true);
    }
    moe_rng_init(&rng, 100 + (uint64_t)rank); /* each rank its own data */
    for (int m = 0; m < MICRO && st == MOE_OK; m++)
        st = moe_tensor_randn(&x[m], &rng, MOE_F32, MOE_CPU, 2, (int64_t[]){b->rows, b->dim});
    for (int mode = 0; mode < MODES && st == MOE_OK; mode++) {
        moe_grad_sync *s = NULL;
        if (mode >= 2)
            st = moe_grad_sync_new(&s, g, b->layers, w, moe_group_size(g), mode == 2 ? 0 : (int64_t)4 << 20);
        double after_s = 0, total_after = 0, t0 = 0;
        moe_grad_sync_stats before = {0}, after = {0};
        /* two warm-up steps: the second teaches the sync its counts */
        for (int i = 0; i < b->steps + 2 && st == MOE_OK; i++) {
            if (i == 2) {
                st = moe_barrier(g);
                t0 = bench_now();
                moe_grad_sync_get_stats(s, &before);
            }
            if (st == MOE_OK) st = one_step(mode, w, b, x, s, g, &after_s);
            if (i >= 2) total_after += after_s;
        }
        if (st == MOE_OK) st = moe_barrier(g);
        double elapsed = bench_now() - t0;
        moe_grad_sync_get_stats(s, &after);
        if (rank == 0) {
            b->step_s[mode] = elapsed / b->steps;
            b->comm_s[mode] = (s ? after.comm_seconds - before.comm_seconds : total_after) / b->steps;
            b->wait_s[mode] = (s ? after.wait_seconds - before.wait_seconds : total_after) / b->steps;
            b->early[mode] = (after.buckets_early - before.buckets_early) / b->steps;
            b->buckets[mode] = moe_grad_sync_bucket_count(s);
        }
        moe_grad_sync_free(s);
    }
    for (int l = 0; l < b->layers; l++) {
        if (w[l]) moe_tensor_zero_grad(w[l]);
        moe_tensor_release(w[l]);
    }
    for (int m = 0; m < MICRO; m++) moe_tensor_release(x[m]);
    return st;
}

static void print_table(const void *state, const char *backend, int nranks)
{
    const bench *b = state;
    double mb = (double)b->layers * b->dim * b->dim * 4 / (1 << 20);
    printf("grad sync: %s backend, %d ranks; %d layers f32 [%d %d] (%.1f MB of gradients), "
           "%d rows x %d micro-batches per rank and step; %d steps\n",
           backend, nranks, b->layers, b->dim, b->dim, mb, b->rows, MICRO, b->steps);
    printf("%-10s %9s %9s %8s %12s %8s %11s\n", "mode", "step ms", "comm ms", "comm", "in wait ms", "buckets",
           "early/step");
    for (int mode = 0; mode < MODES; mode++) {
        printf("%-10s %9.1f %9.1f %7.1f%% %12.1f", mode_names[mode], b->step_s[mode] * 1e3, b->comm_s[mode] * 1e3,
               b->step_s[mode] > 0 ? 100 * b->comm_s[mode] / b->step_s[mode] : 0.0, b->wait_s[mode] * 1e3);
        if (mode >= 2) printf(" %8d %11lld\n", b->buckets[mode], (long long)b->early[mode]);
        else printf(" %8s %11s\n", "-", "-");
    }
}

int main(int argc, char **argv)
{
    bench_options o;
    if (!bench_parse_args(&o, argc, argv)) return 2;
    bench b = o.quick ? (bench){.layers = 4, .dim = 128, .rows = 16, .steps = 2}
                      : (bench){.layers = 12, .dim = 768, .rows = 64, .steps = 5};
    return bench_run("bench-grad-sync", &o, run_rank, &b, print_table);
}
