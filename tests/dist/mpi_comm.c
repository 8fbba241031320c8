/* mpi_comm.c — the collective cases on the MPI backend, one process per rank
 * (run by run-mpi.sh under mpirun -np 2 and -np 4), plus what only MPI has:
 * the launch environment, a rank that fails alone being named by its peers
 * through the size check, a mesh over processes, rank-order sums that
 * equal the threads backend's bits, and the grad sync scenario with its
 * all-reduces really overlapping backward. Plain C: prints one line per case on
 * rank 0 and exits non-zero when any rank failed any case. */
#include "cases.h"
#include "grad_sync_case.h"

/* a local argument error on the last rank only: its peers name it */
static moe_status case_lonely_failure(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    moe_tensor *t;
    RTRY(moe_tensor_zeros(&t, r == n - 1 ? MOE_BOOL : MOE_F32, MOE_CPU, 1, (int64_t[]){3}));
    moe_status st = moe_all_reduce_(t, MOE_REDUCE_SUM, g);
    moe_tensor_release(t);
    if (r == n - 1) {
        RCHECK(st == MOE_ERR_DTYPE && strstr(moe_last_error(), "bool"), "own error: %s", moe_last_error());
    } else {
        char needle[64];
        snprintf(needle, sizeof needle, "all-reduce: rank %d failed: all-reduce: sum of a bool", n - 1);
        RCHECK(st == MOE_ERR_DTYPE && strstr(moe_last_error(), needle), "peer error: %s", moe_last_error());
    }
    /* the world is still in step */
    RTRY(moe_barrier(g));
    return MOE_OK;
}

/* the last rank reduces with max while the others sum: every rank names both ops */
static moe_status case_op_mismatch(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    moe_tensor *t;
    RTRY(moe_tensor_ones(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){3}));
    char needle[96];
    snprintf(needle, sizeof needle, "all-reduce: reduce op mismatch: rank 0 passed sum, rank %d passed max", n - 1);
    RFAILS(moe_all_reduce_(t, r == n - 1 ? MOE_REDUCE_MAX : MOE_REDUCE_SUM, g), MOE_ERR_ARG, needle);
    moe_tensor_release(t);
    RTRY(moe_barrier(g)); /* the world is still in step */
    return MOE_OK;
}

static moe_status case_environment(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int er = -1, es = -1;
    moe_launch_env(&er, &es);
    RCHECK(moe_mpi_launched(), "mpirun's environment not seen");
    RCHECK(er == r && es == moe_group_size(g), "launch env rank %d size %d, MPI rank %d size %d", er, es, r,
           moe_group_size(g));
    RCHECK(strcmp(moe_group_backend(g), "mpi") == 0, "backend %s", moe_group_backend(g));
    RCHECK(moe_comm_world() == g, "moe_comm_world is the MPI world");
    RCHECK(moe_group_world_rank(g, r) == r, "world rank");
    return MOE_OK;
}

/* "dp=2 tp=N/2": tp = r % (N/2), dp = r / (N/2) */
static moe_status case_mesh(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    int n = moe_group_size(g);
    if (n % 2) return MOE_OK;
    moe_mesh *m;
    char spec[32];
    snprintf(spec, sizeof spec, "dp=2 tp=%d", n / 2);
    RTRY(moe_mesh_parse(&m, g, spec));
    int tp = r % (n / 2), dp = r / (n / 2);
    RCHECK(moe_mesh_coord(m, "tp") == tp && moe_mesh_coord(m, "dp") == dp, "coords");
    moe_group *dpg, *tpg;
    RTRY(moe_mesh_group(&dpg, m, "dp"));
    RTRY(moe_mesh_group(&tpg, m, "tp"));
    RCHECK(moe_group_size(dpg) == 2 && moe_group_rank(dpg) == dp, "dp group size %d rank %d", moe_group_size(dpg),
           moe_group_rank(dpg));
    RCHECK(moe_group_world_rank(dpg, 1) == tp + n / 2, "dp member 1 is world rank %d", moe_group_world_rank(dpg, 1));
    moe_tensor *t;
    RTRY(moe_tensor_full(&t, MOE_I64, MOE_CPU, 1, (int64_t[]){1}, r));
    RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, dpg));
    RCHECK(*(int64_t *)moe_tensor_data(t) == 2 * tp + n / 2, "dp sum %lld", (long long)*(int64_t *)moe_tensor_data(t));
    RTRY(moe_tensor_fill_(t, r));
    RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, tpg));
    int64_t base = dp * (n / 2), k = n / 2;
    RCHECK(*(int64_t *)moe_tensor_data(t) == k * base + k * (k - 1) / 2, "tp sum %lld",
           (long long)*(int64_t *)moe_tensor_data(t));
    moe_tensor_release(t);
    moe_group_release(dpg);
    moe_group_release(tpg);
    moe_mesh_free(m);
    return MOE_OK;
}

/* Floating sums reduce in rank order, bit for bit the threads backend's result:
 * compare with the same reduction on N threads of this process. */
typedef struct ref_ctx {
    float out[8];
} ref_ctx;

static float noisy(int r, int i) { return (float)((r + 1) * 1e7 * ((i % 7) - 3) + 0.37 * i + 1e-3 * r); }

static moe_status reduce_on_threads(int r, moe_group *g, void *p)
{
    ref_ctx *c = p;
    moe_tensor *t;
    RTRY(moe_tensor_empty(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){8}));
    for (int i = 0; i < 8; i++) ((float *)moe_tensor_data(t))[i] = noisy(r, i);
    RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, g));
    if (r == 0) memcpy(c->out, moe_tensor_data(t), sizeof c->out);
    moe_tensor_release(t);
    return MOE_OK;
}

static moe_status case_same_bits_as_threads(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    ref_ctx ref;
    RTRY(moe_threads_run(moe_group_size(g), reduce_on_threads, &ref, NULL));
    moe_tensor *t;
    RTRY(moe_tensor_empty(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){8}));
    for (int i = 0; i < 8; i++) ((float *)moe_tensor_data(t))[i] = noisy(r, i);
    RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, g));
    for (int i = 0; i < 8; i++)
        RCHECK(((float *)moe_tensor_data(t))[i] == ref.out[i], "element %d: mpi %.9g, threads %.9g", i,
               (double)((float *)moe_tensor_data(t))[i], (double)ref.out[i]);
    moe_tensor_release(t);
    return MOE_OK;
}

/* Asynchronous floating sums (and averages) take the ordered path without
 * blocking: three in flight at once, interleaved with a blocking collective,
 * waited in another order than started, give the blocking path's bits. */
static moe_status case_async_ordered(int r, moe_group *g, void *ctx)
{
    (void)ctx;
    enum { K = 3, N = 1000 };
    moe_tensor *a[K], *ref[K];
    moe_work *w[K];
    for (int k = 0; k < K; k++) {
        moe_dtype dt = k == 1 ? MOE_F64 : MOE_F32;
        RTRY(moe_tensor_empty(&a[k], dt, MOE_CPU, 1, (int64_t[]){N + k}));
        for (int i = 0; i < N + k; i++) {
            int64_t idx = i;
            RTRY(moe_tensor_set(a[k], &idx, noisy(r, i + k)));
        }
        RTRY(moe_clone(&ref[k], a[k]));
        RTRY(moe_all_reduce_(ref[k], k == 2 ? MOE_REDUCE_AVG : MOE_REDUCE_SUM, g));
    }
    for (int k = 0; k < K; k++) {
        RTRY(moe_all_reduce_async_(&w[k], a[k], k == 2 ? MOE_REDUCE_AVG : MOE_REDUCE_SUM, g));
        if (k == 0) RTRY(moe_barrier(g)); /* another collective while one is in flight */
    }
    (void)moe_work_done(w[1]);
    for (int k = K - 1; k >= 0; k--) RTRY(moe_work_wait(w[k]));
    for (int k = 0; k < K; k++) {
        double x, y;
        for (int64_t i = 0; i < N + k; i++) {
            RTRY(moe_tensor_get(a[k], &i, &x));
            RTRY(moe_tensor_get(ref[k], &i, &y));
            RCHECK(x == y, "tensor %d element %lld: async %.17g, blocking %.17g", k, (long long)i, x, y);
        }
        moe_tensor_release(a[k]);
        moe_tensor_release(ref[k]);
    }
    return MOE_OK;
}

static const dist_case mpi_cases[] = {
    {"lonely_failure", case_lonely_failure},
    {"op_mismatch", case_op_mismatch},
    {"environment", case_environment},
    {"mesh", case_mesh},
    {"same_bits_as_threads", case_same_bits_as_threads},
    {"async_ordered", case_async_ordered},
    {"grad_sync", grad_sync_case},
    {NULL, NULL},
};

static int run(const dist_case *c, moe_group *world, int *failed)
{
    int r = moe_group_rank(world);
    moe_status st = c->fn(r, world, NULL);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", moe_last_error());
    /* agree on the outcome (the cases may leave the world out of step only
     * when they fail) */
    moe_tensor *flag;
    if (moe_tensor_full(&flag, MOE_I32, MOE_CPU, 1, (int64_t[]){1}, st != MOE_OK) != MOE_OK) return 1;
    moe_status fs = moe_all_reduce_(flag, MOE_REDUCE_MAX, world);
    int any = fs != MOE_OK || *(int32_t *)moe_tensor_data(flag) != 0;
    moe_tensor_release(flag);
    if (st != MOE_OK) fprintf(stderr, "rank %d: %s: FAIL: %s\n", r, c->name, msg);
    if (r == 0) printf("%-22s %s on %d ranks (mpi)\n", c->name, any ? "FAIL" : "ok", moe_group_size(world));
    fflush(stdout);
    *failed += any;
    return fs != MOE_OK;
}

int main(void)
{
    moe_comm_set_timeout(120);
    moe_group *world;
    if (moe_mpi_world(&world) != MOE_OK) {
        fprintf(stderr, "mpi_comm: %s\n", moe_last_error());
        return 1;
    }
    int failed = 0;
    for (const dist_case *c = dist_cases; c->name; c++)
        if (run(c, world, &failed)) break;
    for (const dist_case *c = mpi_cases; c->name; c++)
        if (run(c, world, &failed)) break;
    moe_group_release(world);
    moe_mpi_finalize();
    return failed ? 1 : 0;
}
