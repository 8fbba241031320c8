/* collective.h — host reductions and copies for the collectives of the
 * threads and MPI backends (core/dist/comm_threads.c, core/dist/comm_mpi.c)
 * and the AVG finish of async work: loops over plain buffers of any dtype. */
#ifndef MOELAB_CPU_COLLECTIVE_H
#define MOELAB_CPU_COLLECTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "../../core/dist/reduce_op.h"
#include "../../core/dtype.h"

/* DST[i] = OP over SRCS[0..n)[i], sources taken in that order (deterministic);
 * DST may alias a source. bf16 accumulates in f32 and rounds once; AVG divides
 * the sum by N (integers: truncated). OpenMP-parallel over elements. */
void moe_cpu_reduce_n(moe_dtype dt, void *dst, const void *const *srcs, int n, int64_t count,
                      moe_reduce_op op);
/* BUFS[k][i] = OP over BUFS[0..n)[i] (rank order) for every k: the fused
 * reduce-scatter + all-gather of one slice, each element read once from every
 * buffer and written once to every buffer. */
void moe_cpu_reduce_bcast(moe_dtype dt, void *const *bufs, int n, int64_t count, moe_reduce_op op);
/* In-place AVG finish for backends that only sum: BUF [COUNT] /= N
 * (integers: truncated; other dtypes untouched). */
void moe_cpu_divide(moe_dtype dt, void *buf, int64_t count, int64_t n);
/* memcpy of NBYTES, split over the threads in 1 MiB pieces when large. */
void moe_cpu_copy_bytes(void *dst, const void *src, size_t nbytes);

#endif
