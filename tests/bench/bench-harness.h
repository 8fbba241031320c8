/* bench-harness.h — what the multi-rank benchmarks (bench-comm,
 * bench-grad-sync) share: the clock, the command line and the run on the
 * threads or the MPI backend, rank 0 printing the table.
 *
 *   PROG                       threads backend, 2 ranks (default)
 *   PROG --ranks N             threads backend, N ranks
 *   mpirun -np 2 PROG --mpi    MPI backend (also chosen when launched by
 *                              mpirun); rank 0 prints
 *   --quick                    a short run (smoke test)
 *
 * Header only: each benchmark is one program. */
#ifndef MOELAB_BENCH_HARNESS_H
#define MOELAB_BENCH_HARNESS_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moelab.h"
#include "dist/comm.h"

/* Seconds on the monotonic clock. */
static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct bench_options {
    bool mpi, quick;
    int nranks; /* threads backend */
} bench_options;

/* Read the command line into O; false (after printing the usage) when it
 * is not one. */
static inline bool bench_parse_args(bench_options *o, int argc, char **argv)
{
    *o = (bench_options){.mpi = moe_mpi_launched(), .quick = false, .nranks = 2};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mpi") == 0) o->mpi = true;
        else if (strcmp(argv[i], "--quick") == 0) o->quick = true;
        else if (strcmp(argv[i], "--ranks") == 0 && i + 1 < argc) o->nranks = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--mpi] [--quick] [--ranks N]\n", argv[0]);
            return false;
        }
    }
    return true;
}

/* Prints the results that rank 0 left in the benchmark's state. */
typedef void (*bench_print_fn)(const void *state, const char *backend, int nranks);

/* Run RANK_FN (STATE shared by the ranks) on every rank of the backend O
 * asks for, then PRINT on rank 0; the exit status of the program. NAME
 * prefixes the errors. */
static inline int bench_run(const char *name, const bench_options *o, moe_rank_fn rank_fn, void *state,
                            bench_print_fn print)
{
    if (o->mpi) {
        moe_group *world;
        if (moe_mpi_world(&world) != MOE_OK) {
            fprintf(stderr, "%s: %s\n", name, moe_last_error());
            return 1;
        }
        moe_status st = rank_fn(moe_group_rank(world), world, state);
        if (st != MOE_OK) fprintf(stderr, "%s (rank %d): %s\n", name, moe_group_rank(world), moe_last_error());
        else if (moe_group_rank(world) == 0) print(state, "mpi", moe_group_size(world));
        moe_group_release(world);
        moe_mpi_finalize();
        return st == MOE_OK ? 0 : 1;
    }
    if (moe_threads_run(o->nranks, rank_fn, state, NULL) != MOE_OK) {
        fprintf(stderr, "%s: %s\n", name, moe_last_error());
        return 1;
    }
    print(state, "threads", o->nranks);
    return 0;
}

#endif
