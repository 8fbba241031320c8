/* check_nccl.c — collectives on CUDA tensors: through an NCCL communicator
 * (one rank per visible GPU, at least one), and staged through host memory
 * on a group without NCCL. Skips (77) without a GPU. Plain C: prints one
 * line per case, exits non-zero on any failure. */
#include "cases.h"

/* T (any device) equals EXPECT after a copy to the host */
static moe_status expect_dev(moe_tensor *t, int64_t n, const double *expect, const char *what)
{
    moe_tensor *h;
    MOE_TRY(moe_to_device(&h, t, MOE_CPU));
    moe_status st = dt_expect(h, n, expect, 1e-6, what);
    moe_tensor_release(h);
    return st;
}

static moe_status cuda_tensor(moe_tensor **out, moe_dtype dt, int64_t n, const double *v)
{
    moe_tensor *h;
    MOE_TRY(dt_tensor(&h, dt, 1, &n, v));
    moe_status st = moe_to_device(out, h, MOE_CUDA);
    moe_tensor_release(h);
    return st;
}

/* rank r holds (r+1)*(i+1) for i < 4 on the GPU */
static moe_status collectives_on_cuda(int r, moe_group *g)
{
    int n = moe_group_size(g);
    double v[4], sum[4], gathered[32], own[4];
    double tri = n * (n + 1) / 2.0;
    for (int i = 0; i < 4; i++) {
        v[i] = (r + 1) * (i + 1);
        sum[i] = tri * (i + 1);
        own[i] = v[i];
    }
    for (int q = 0; q < n; q++)
        for (int i = 0; i < 4; i++) gathered[4 * q + i] = (q + 1) * (i + 1);
    moe_dtype dts[] = {MOE_F32, MOE_F64, MOE_I64, MOE_BF16};
    for (size_t k = 0; k < sizeof dts / sizeof *dts; k++) {
        moe_tensor *t, *y;
        RTRY(cuda_tensor(&t, dts[k], 4, v));
        RTRY(moe_all_reduce_(t, MOE_REDUCE_SUM, g));
        RTRY(expect_dev(t, 4, sum, moe_dtype_name(dts[k])));
        moe_tensor_release(t);
        RTRY(cuda_tensor(&t, dts[k], 4, v));
        RTRY(moe_all_gather(&y, t, g));
        RCHECK(y->device == MOE_CUDA, "all_gather result on %s", moe_device_name(y->device));
        RTRY(expect_dev(y, 4 * n, gathered, "all_gather"));
        moe_tensor_release(y);
        /* all_to_all, even: element block q of rank r goes to q */
        if (n == 1) {
            RTRY(moe_all_to_all(&y, NULL, t, (int64_t[]){4}, g));
            RTRY(expect_dev(y, 4, own, "all_to_all"));
            moe_tensor_release(y);
        }
        RTRY(moe_broadcast_(t, 0, g));
        RTRY(expect_dev(t, 4, (double[]){1, 2, 3, 4}, "broadcast"));
        moe_tensor_release(t);
    }
    /* reduce_scatter: [4N] → [4] */
    double rs_in[32], rs_out[4];
    for (int j = 0; j < 4 * n; j++) rs_in[j] = (r + 1) * (j + 1);
    for (int i = 0; i < 4; i++) rs_out[i] = tri * (4 * r + i + 1);
    moe_tensor *t, *y;
    RTRY(cuda_tensor(&t, MOE_F32, 4 * n, rs_in));
    RTRY(moe_reduce_scatter(&y, t, MOE_REDUCE_SUM, g));
    RTRY(expect_dev(y, 4, rs_out, "reduce_scatter"));
    moe_tensor_release(y);
    /* avg */
    RTRY(moe_all_reduce(&y, t, MOE_REDUCE_AVG, g));
    for (int j = 0; j < 4 * n; j++) rs_in[j] = (n + 1) / 2.0 * (j + 1);
    RTRY(expect_dev(y, 4 * n, rs_in, "avg"));
    moe_tensor_release(y);
    moe_tensor_release(t);
    return MOE_OK;
}

static moe_status with_nccl(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    RTRY(moe_group_attach_nccl(world, r));
    RCHECK(moe_group_has_nccl(world), "no NCCL communicator");
    return collectives_on_cuda(r, world);
}

static moe_status staged(int r, moe_group *world, void *ctx)
{
    (void)ctx;
    RCHECK(!moe_group_has_nccl(world), "unexpected communicator");
    return collectives_on_cuda(r, world);
}

static int report(const char *name, moe_status st)
{
    printf("%-28s %s%s%s\n", name, st == MOE_OK ? "ok" : "FAIL", st == MOE_OK ? "" : ": ",
           st == MOE_OK ? "" : moe_last_error());
    return st != MOE_OK;
}

int main(void)
{
    int gpus = moe_device_count(MOE_CUDA);
    if (gpus == 0) {
        printf("check_nccl: skipped: no GPU (%s)\n", moe_built_with_cuda() ? "CUDA build, no visible device"
                                                                           : "built without CUDA");
        return 77;
    }
    moe_comm_set_timeout(120);
    int failed = 0;
    failed += report("staged, 2 ranks", moe_threads_run(2, staged, NULL, NULL));
    failed += report("nccl, 1 rank", moe_threads_run(1, with_nccl, NULL, NULL));
    if (gpus >= 2) {
        char name[32];
        snprintf(name, sizeof name, "nccl, %d ranks", gpus > 4 ? 4 : gpus);
        failed += report(name, moe_threads_run(gpus > 4 ? 4 : gpus, with_nccl, NULL, NULL));
    }
    return failed ? 1 : 0;
}
