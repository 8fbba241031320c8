/* mpi_timeout.c — a peer that never comes, under mpirun -np 2 (run by
 * mpi-timeout.sh). Rank 0 waits with a timeout of SECONDS while rank 1
 *   skip    never calls the collective (it goes straight to finalize),
 *   sleep   sleeps three timeouts, then calls it,
 *   recv    never sends what rank 0 receives,
 *   split   never joins a group split.
 * Rank 0 prints the error and how much CPU its process used while it waited
 * ("cpu N%"), then finalizes, which aborts the failed job: mpirun must end
 * non-zero with that message, within SECONDS + 5 s. Exit 3 if anything
 * returns that should not.
 *
 *   mpirun -np 2 mpi_timeout MODE SECONDS */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "moelab.h"
#include "dist/comm.h"

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* CPU seconds of the whole process (every thread: MPI's too). */
static double cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static moe_status waiting_rank(const char *mode, moe_group *world, moe_tensor *t)
{
    if (strcmp(mode, "recv") == 0) return moe_recv_(t, 1, 7, world);
    if (strcmp(mode, "split") == 0) {
        moe_group *half = NULL;
        moe_status st = moe_group_split(&half, world, 0, 0);
        moe_group_release(half);
        return st;
    }
    return moe_all_reduce_(t, MOE_REDUCE_SUM, world);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mpirun -np 2 mpi_timeout skip|sleep|recv|split SECONDS\n");
        return 2;
    }
    const char *mode = argv[1];
    double seconds = atof(argv[2]);
    if (moe_comm_set_timeout(seconds) != MOE_OK) {
        fprintf(stderr, "mpi_timeout: %s\n", moe_last_error());
        return 2;
    }
    moe_group *world;
    moe_tensor *t;
    if (moe_mpi_world(&world) != MOE_OK || moe_tensor_ones(&t, MOE_F32, MOE_CPU, 1, (int64_t[]){4}) != MOE_OK) {
        fprintf(stderr, "mpi_timeout: %s\n", moe_last_error());
        return 3;
    }
    int rank = moe_group_rank(world);
    moe_status st = MOE_OK;
    if (rank == 0) {
        double w0 = wall_now(), c0 = cpu_now();
        st = waiting_rank(mode, world, t);
        double waited = wall_now() - w0, cpu = cpu_now() - c0;
        if (st == MOE_OK) {
            fprintf(stderr, "mpi_timeout: rank 0: %s returned without a timeout\n", mode);
            return 3;
        }
        printf("rank 0: %s\nrank 0: waited %.2f s, cpu %.0f%%\n", moe_last_error(), waited,
               100.0 * cpu / (waited > 0 ? waited : 1));
        fflush(stdout);
        /* the job has failed: a second collective fails at once */
        if (moe_barrier(world) == MOE_OK || !moe_mpi_failed(NULL)) {
            fprintf(stderr, "mpi_timeout: the job did not fail\n");
            return 3;
        }
    } else if (strcmp(mode, "sleep") == 0) {
        usleep((useconds_t)(3 * seconds * 1e6));
        st = moe_all_reduce_(t, MOE_REDUCE_SUM, world);
    }
    moe_tensor_release(t);
    moe_group_release(world);
    moe_mpi_finalize(); /* rank 0: aborts the job; rank 1: waits there to be stopped */
    fprintf(stderr, "mpi_timeout: rank %d finalized: %s\n", rank, st == MOE_OK ? "ok" : moe_last_error());
    return 3;
}
