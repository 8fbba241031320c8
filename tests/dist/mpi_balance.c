/* mpi_balance.c — the distributed load-balancing invariants
 * (balance_cases.c) on the MPI backend, one process per rank (run by
 * run-mpi.sh under mpirun -np 2 and -np 4). Prints one line per case on
 * rank 0 and exits non-zero when any rank failed any case. */
#include "balance_cases.h"

int main(void)
{
    moe_comm_set_timeout(120);
    moe_group *world;
    if (moe_mpi_world(&world) != MOE_OK) {
        fprintf(stderr, "mpi_balance: %s\n", moe_last_error());
        return 1;
    }
    int r = moe_group_rank(world), failed = 0;
    for (const dist_case *c = balance_cases; c->name; c++) {
        moe_status st = c->fn(r, world, NULL);
        char msg[512];
        snprintf(msg, sizeof msg, "%s", moe_last_error());
        if (st != MOE_OK) fprintf(stderr, "rank %d: %s: FAIL: %s\n", r, c->name, msg);
        /* agree on the outcome; a failed case may leave the world out of step */
        moe_tensor *flag;
        if (moe_tensor_full(&flag, MOE_I32, MOE_CPU, 1, (int64_t[]){1}, st != MOE_OK) != MOE_OK) return 1;
        moe_status fs = moe_all_reduce_(flag, MOE_REDUCE_MAX, world);
        int any = fs != MOE_OK || *(int32_t *)moe_tensor_data(flag) != 0;
        moe_tensor_release(flag);
        if (r == 0) printf("%-22s %s on %d ranks (mpi)\n", c->name, any ? "FAIL" : "ok", moe_group_size(world));
        fflush(stdout);
        failed += any;
        if (fs != MOE_OK) break;
    }
    moe_group_release(world);
    moe_mpi_finalize();
    return failed ? 1 : 0;
}
