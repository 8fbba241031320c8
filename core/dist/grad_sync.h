/* grad_sync.h — data-parallel gradient reduction in buckets, started from
 * gradient hooks while backward is still running.
 *
 * A step of data-parallel training accumulates gradients over M
 * micro-batches on every rank, then sums them over the ranks of a group and
 * divides by a divisor (the data world size, say). A grad sync does that
 * sum while the last micro-batch's backward runs, so that communication
 * overlaps computation:
 *
 *     moe_grad_sync *s;
 *     moe_grad_sync_new(&s, dp_group, n, params, world, 0);   // 0: ~25 MB buckets
 *     for each step:
 *         for m in 0 .. M-1:
 *             if (m == M - 1) moe_grad_sync_arm(s);
 *             loss = forward(micro-batch m); moe_backward(loss, NULL, false);
 *         moe_grad_sync_wait(s);       // every param's grad = sum over ranks / divisor
 *         optimizer step; zero grads
 *
 * Buckets. The parameters are grouped, in reverse order (the order backward
 * usually produces their gradients), into buckets of one dtype and device of
 * about BUCKET_BYTES each; a bucket is one flat buffer and one all-reduce.
 * Buckets are numbered by when they should fill (by their first parameter
 * in list order, last first) and are always started in that order, the same
 * on every rank, whatever the timing.
 *
 * Early start. A leaf gradient hook on each parameter counts the
 * contributions it receives during an armed backward. A parameter is
 * complete when it has received as many as in the previous armed backward
 * (the counts are learned: in the first armed step nothing starts early);
 * its hook then writes the accumulated gradient plus the incoming one into
 * the bucket's buffer. When a bucket is complete and every bucket before it
 * has started, its all-reduce starts (moe_all_reduce_async_). MPI runs it
 * during the rest of backward (each later hook checks on it, which is when
 * MPI moves it on); the threads backend completes it at once, so backward
 * waits for it there.
 *
 * Correct whatever happens. A contribution that arrives after its bucket has
 * left marks the bucket stale; wait() agrees on the stale buckets with one
 * small all-reduce and reduces them again from the final gradients. Buckets
 * not started during backward are packed from the final gradients in wait().
 * A parameter without a gradient on a rank counts as zeros there (every
 * rank takes part in every bucket).
 *
 * Threads: one backward at a time, on the thread that runs the group's
 * collectives (a rank's thread). A collective that fails (a peer failed, a
 * timeout) makes backward return its status; wait() then finishes what was
 * started and returns the failure, leaving the gradients as they are. */
#ifndef MOELAB_GRAD_SYNC_H
#define MOELAB_GRAD_SYNC_H

#include <stdint.h>

#include "comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_grad_sync moe_grad_sync;

/* Bucket size when BUCKET_BYTES is 0. */
#define MOE_GRAD_SYNC_DEFAULT_BUCKET_BYTES ((int64_t)25 << 20)

/* A grad sync of the N parameters PARAMS (leaves that require grad,
 * distinct; retained) over GROUP (retained; NULL: this rank alone),
 * dividing the sums by DIVISOR (positive, finite). BUCKET_BYTES: the size
 * at which a bucket closes (0: the default; a parameter larger than it gets
 * a bucket of its own). Registers a gradient hook on every parameter. */
moe_status moe_grad_sync_new(moe_grad_sync **out, moe_group *group, int n, moe_tensor *const *params,
                             double divisor, int64_t bucket_bytes);
/* Remove the hooks and free S (NULL is fine). Work still in flight is
 * waited for first. */
void moe_grad_sync_free(moe_grad_sync *s);

/* The next backward is the step's last micro-batch: reduce during it.
 * Fails (MOE_ERR_STATE) while an armed step has started buckets. */
moe_status moe_grad_sync_arm(moe_grad_sync *s);
/* Start the buckets still waiting, wait for all, agree on stale buckets and
 * reduce them again, then set every parameter's grad to its sum over the
 * group divided by the divisor (a new tensor). Disarms. Collective over the
 * group; fails (MOE_ERR_STATE) when not armed. */
moe_status moe_grad_sync_wait(moe_grad_sync *s);

/* Totals since moe_grad_sync_new. */
typedef struct moe_grad_sync_stats {
    int64_t steps;          /* waits that completed */
    int64_t buckets;        /* bucket all-reduces started, repeats included */
    int64_t buckets_early;  /* of those, started during backward */
    int64_t buckets_stale;  /* reduced again: a gradient came after its bucket left */
    int64_t bytes;          /* bytes all-reduced (buffers, repeats included) */
    double wait_seconds;    /* in collectives inside wait() */
    double comm_seconds;    /* in collectives anywhere: starts in hooks, and wait()'s; the
                             * time communication took from computation (a start that
                             * overlaps costs its launch, one that completes at once its
                             * whole transfer) */
} moe_grad_sync_stats;
void moe_grad_sync_get_stats(const moe_grad_sync *s, moe_grad_sync_stats *out);

/* Layout: the number of buckets, and bucket I's buffer (borrowed), dtype,
 * bytes and parameter count. */
int moe_grad_sync_bucket_count(const moe_grad_sync *s);
moe_tensor *moe_grad_sync_bucket_buffer(const moe_grad_sync *s, int i);
int moe_grad_sync_bucket_params(const moe_grad_sync *s, int i);
/* The number of parameters, and parameter P (borrowed). */
int moe_grad_sync_param_count(const moe_grad_sync *s);
moe_tensor *moe_grad_sync_param(const moe_grad_sync *s, int p);
/* The bucket that parameter P (an index into PARAMS) belongs to. */
int moe_grad_sync_param_bucket(const moe_grad_sync *s, int p);
/* True between arm and wait. */
bool moe_grad_sync_armed(const moe_grad_sync *s);

#ifdef __cplusplus
}
#endif
#endif
