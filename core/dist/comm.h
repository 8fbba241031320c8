/* comm.h — process groups and collectives.
 *
 * A process group is a set of ranks that run collectives together. Each rank
 * holds its own handle (moe_group *) to the group; collectives are called by
 * every member with matching arguments, in the same order. A NULL group is the
 * trivial group of just the calling rank: every collective on it is a local
 * no-op or copy, so single-process code needs no special case.
 *
 * Backends (one vtable, same semantics and errors):
 *   threads  N ranks as threads of one process (moe_threads_run): data moves
 *            through shared memory; reductions are deterministic (element i
 *            is reduced in rank order 0..N-1 whatever the arrival order).
 *   mpi      Open MPI, one process per rank (moe_mpi_world), when built with MPI.
 *   nccl     device (CUDA) tensors; attached to a host group with
 *            moe_group_attach_nccl, when built with CUDA.
 *
 * Conventions shared by all collectives:
 *   - outputs first, then inputs, then options, the group last;
 *   - tensors may be non-contiguous and of any size, zero included; dtypes
 *     f32 f64 bf16 i32 i64 (bool for data movement, max and min);
 *   - reductions of bf16 accumulate in f32 and round once; AVG of integers is
 *     the truncated quotient sum / N;
 *   - every member must pass the same dtype and element count (dim-0 splits
 *     for all_to_all may differ); a mismatch is detected and reported on every
 *     rank, naming the ranks and sizes involved;
 *   - failure: on the threads backend a rank whose function returns an error,
 *     or whose collective fails, poisons its world: every rank blocked in or
 *     later entering a collective fails with "OP: rank R failed: <message>".
 *     A collective that waits longer than the timeout (moe_comm_set_timeout,
 *     default 300 s) fails naming the missing ranks and poisons the world too.
 *     After a failure the world is unusable: return the error. On MPI, peers
 *     learn of a rank's argument error through the size check (below); a
 *     collective, send or receive that waits longer than the timeout fails
 *     naming the ranks that did not arrive (known when the size check is
 *     on and the group has at most 64 ranks) and marks the MPI job failed:
 *     MPI cannot cancel it, so every later MPI call fails at once and
 *     moe_mpi_finalize aborts the job (moe_mpi_abort). A waiting rank
 *     sleeps between polls, leaving its core idle. NCCL collectives honour
 *     the timeout by aborting the communicator.
 *   - deterministic reductions: element i is reduced in rank order 0..N-1 on
 *     the threads and MPI backends alike (same bits on both; MPI's own
 *     collectives are used only where the order cannot matter: max, min,
 *     integer sums).
 *   - tensors on CUDA use the group's NCCL communicator when one is attached,
 *     else they are staged through host memory.
 *   - messages start with the operation's Scheme name, as (moelab dist)
 *     exports it: "all-reduce: …" (the in-place and out-of-place forms
 *     alike), "recv!: …", "with-ranks: …" (moe_threads_run, moe_mpi_world);
 *     what Scheme has no procedure for is named in the same style
 *     ("group-split", "attach-nccl").
 */
#ifndef MOELAB_COMM_H
#define MOELAB_COMM_H

#include <stdbool.h>
#include <stdint.h>

#include "../tensor.h"
#include "reduce_op.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_group moe_group; /* NULL: the group of just this rank */

int moe_group_size(const moe_group *g); /* 1 for NULL */
int moe_group_rank(const moe_group *g); /* 0 for NULL */
/* In-place all-reduce of T over G (not recorded by autograd). */
moe_status moe_all_reduce_(moe_tensor *t, moe_reduce_op op, moe_group *g);

/* ---- groups ------------------------------------------------------------------
 * References. Each rank has its own handle of a group, and a handle counts
 * its references. A call that returns a new reference (moe_mpi_world,
 * moe_group_split, moe_group_subset, moe_mesh_group) leaves one release to
 * the caller; moe_threads_run holds each rank's world handle for the run and
 * lends it to the rank function (as moe_comm_world lends the world).
 * Whatever keeps a group past a call retains it: the autograd node of a
 * differentiable collective, an async work until its wait, a mesh (its world
 * and its groups), a grad sync, and the objects that run collectives later
 * (a router, an MoE layer, a model, a balance tracker: their groups); a
 * handle owns its NCCL group and releases it with itself.
 * Collectives on a handle run on its rank's thread only, but a reference may
 * be dropped on any thread: Guile's finalizer thread frees tensors (with
 * their nodes) and layers while the rank runs. So the count is atomic, and
 * the threads backend's state shared by a group's handles is counted under
 * its world's lock. The last release frees the backend state; on MPI that
 * frees the communicator, an MPI call that must not race the rank's own, so
 * the Scheme bindings keep every MPI group until the process exits (after
 * moe_mpi_finalize, freeing makes no MPI call). */
/* Take / drop a reference to this rank's handle of G (NULL is fine). */
moe_group *moe_group_retain(moe_group *g);
void moe_group_release(moe_group *g);
/* Backend of G: "self" (NULL), "threads", "mpi" or "nccl". */
const char *moe_group_backend(const moe_group *g);
/* World rank of member I of G (I for NULL when I == 0, else -1). */
int moe_group_world_rank(const moe_group *g, int i);
/* A label for messages and printing ("world", "dp", "tp cp", …). */
const char *moe_group_name(const moe_group *g);
/* Set the label (copied, truncated to 31 characters). */
void moe_group_set_name(moe_group *g, const char *name);

/* Split G: collective over all members of G. Members passing the same
 * COLOR (>= 0) form one new group, ordered by KEY then by rank in G. A
 * negative COLOR leaves the caller out: *OUT is set to NULL. */
moe_status moe_group_split(moe_group **out, moe_group *g, int color, int key);
/* Sub-group of the N ranks of G listed in RANKS (ranks in G, distinct; the new
 * group's rank i is RANKS[i]). Collective over all members of G, which pass
 * the same list; callers not in the list get *OUT = NULL. */
moe_status moe_group_subset(moe_group **out, moe_group *g, int n, const int *ranks);

/* ---- collectives on tensors -------------------------------------------------
 * The in-place forms (trailing underscore) are not recorded by autograd and
 * refuse a tensor that requires grad while grad mode is on. The out-of-place
 * forms are differentiable (see each one). Gradient convention: the quantity
 * being differentiated is the SUM over ranks of each rank's loss, so the
 * gradient each rank computes for its own inputs already includes the
 * contributions of the losses on all other ranks. */

/* OUT = OP over the group of T, on every rank. Differentiable for SUM and
 * AVG: the backward all-reduces the output gradient with the same OP. */
moe_status moe_all_reduce(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g);
/* Forward: sum all-reduce. Backward: identity (the output gradient is
 * already the same on every rank, e.g. a loss computed identically on each
 * tensor-parallel rank). Pairs with moe_identity_all_reduce_grad. */
moe_status moe_all_reduce_identity_grad(moe_tensor **out, moe_tensor *t, moe_group *g);
/* Forward: identity (OUT shares no graph edge but T's values). Backward: sum
 * all-reduce of the output gradient (e.g. the input of a column-parallel
 * layer whose partial gradients live on each tensor-parallel rank). */
moe_status moe_identity_all_reduce_grad(moe_tensor **out, moe_tensor *t, moe_group *g);

/* OUT [N*d0, ...] = the T [d0, ...] of every rank concatenated along dim 0 in
 * rank order (a 0-dim T gives OUT [N]). All ranks pass the same shape.
 * Backward: sum reduce-scatter of the output gradient. */
moe_status moe_all_gather(moe_tensor **out, moe_tensor *t, moe_group *g);
/* T [N*d0, ...] is reduced with OP over the group; rank r keeps block r,
 * OUT [d0, ...]. dim 0 of T must divide by N. Differentiable for SUM (backward:
 * all-gather of the output gradient) and AVG (the same divided by N). */
moe_status moe_reduce_scatter(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g);

/* All-to-all along dim 0 with uneven splits. T [sum(SEND_SPLITS), ...]: rows
 * [off_q, off_q + SEND_SPLITS[q]) go to rank q (SEND_SPLITS has N entries, any
 * may be 0; NULL splits dim 0 evenly). OUT [sum(recv), ...] holds what rank q
 * sent to this rank, in rank order; RECV_SPLITS (N entries, may be NULL)
 * receives those counts. The trailing shape and dtype must agree on all
 * ranks. Backward: the reverse all-to-all of the output gradient (send and
 * receive splits swapped). */
moe_status moe_all_to_all(moe_tensor **out, int64_t *recv_splits, moe_tensor *t,
                          const int64_t *send_splits, moe_group *g);

/* In-place broadcast of T on ROOT to T on every rank (same shape and dtype). */
moe_status moe_broadcast_(moe_tensor *t, int root, moe_group *g);
/* OUT = ROOT's T on every rank (T gives the shape and dtype on the others).
 * Backward: the output gradients are summed onto ROOT's input; other ranks'
 * inputs get a zero gradient. */
moe_status moe_broadcast(moe_tensor **out, moe_tensor *t, int root, moe_group *g);

/* Point to point. moe_send does not wait for the matching receive on the
 * threads backend (the data is copied); on MPI a large message may block until
 * it is received, so order sends and receives as for MPI. moe_recv_ fills T,
 * whose size and dtype must equal the sender's (else an error on the
 * receiver). TAG >= 0 matches a send to a receive between the same pair. */
moe_status moe_send(moe_tensor *t, int dst, int tag, moe_group *g);
moe_status moe_recv_(moe_tensor *t, int src, int tag, moe_group *g);

/* Wait until every member of G has entered the barrier. */
moe_status moe_barrier(moe_group *g);

/* ---- asynchronous collectives --------------------------------------------
 * Start a collective and get a handle; the tensors must stay alive and
 * untouched until moe_work_wait, which returns the collective's status and
 * frees the handle. Backends may complete the work eagerly at start (the
 * threads backend does; MPI all-reduce overlaps). Outputs are allocated at
 * start and valid after the wait. Not recorded by autograd. On MPI a
 * floating all-reduce (f32, f64) overlaps too: its two phases (the
 * all-to-all of slices, then the all-gather of the rank-order sums) run as
 * non-blocking MPI calls, moved on by moe_work_done and moe_work_wait, with
 * the bits of the blocking form. */
typedef struct moe_work moe_work;
moe_status moe_all_reduce_async_(moe_work **work, moe_tensor *t, moe_reduce_op op, moe_group *g);
moe_status moe_all_gather_async(moe_work **work, moe_tensor **out, moe_tensor *t, moe_group *g);
moe_status moe_reduce_scatter_async(moe_work **work, moe_tensor **out, moe_tensor *t,
                                    moe_reduce_op op, moe_group *g);
moe_status moe_all_to_all_async(moe_work **work, moe_tensor **out, int64_t *recv_splits,
                                moe_tensor *t, const int64_t *send_splits, moe_group *g);
moe_status moe_broadcast_async_(moe_work **work, moe_tensor *t, int root, moe_group *g);
/* Complete WORK (NULL: MOE_OK) and free it. */
moe_status moe_work_wait(moe_work *work);
/* True when WORK has completed (a later wait will not block). */
bool moe_work_done(moe_work *work);

/* ---- settings ---------------------------------------------------------------- */
/* Seconds a collective (or a send or receive) may wait for its peers before
 * failing: positive, or INFINITY to wait forever; anything else (zero,
 * negative, NaN) is MOE_ERR_ARG and leaves the setting unchanged. Applies to
 * collectives started afterwards, process-wide, on every backend. */
moe_status moe_comm_set_timeout(double seconds);
/* The setting: 300 s by default, or MOELAB_COMM_TIMEOUT from the environment
 * (a positive number of seconds, or "inf" for forever) until
 * moe_comm_set_timeout; INFINITY: forever. NaN when MOELAB_COMM_TIMEOUT
 * holds anything else: collectives then fail naming it. */
double moe_comm_timeout(void);
/* The timeout for a wait in OP, in *SECONDS (INFINITY: forever); fails as OP
 * naming MOELAB_COMM_TIMEOUT when that holds no valid timeout. */
moe_status moe_comm_wait_limit(const char *op, double *seconds);
/* Exchange sizes before each collective on backends that cannot see their
 * peers' arguments (MPI, NCCL) to report mismatches instead of corrupting
 * data (default on; costs one small exchange per collective). On MPI it
 * also tells a timeout which ranks never arrived. */
void moe_comm_set_check(bool on);
bool moe_comm_check(void);

/* The calling thread's world: the group moe_threads_run passed to this rank
 * thread, else the MPI world once moe_mpi_world has run, else NULL. The
 * reference is borrowed. */
moe_group *moe_comm_world(void);
/* Set the calling thread's world (borrowed; NULL clears). */
void moe_comm_set_world(moe_group *g);

/* ---- threads backend ---------------------------------------------------------
 * Run FN on NRANKS ranks, each a thread of this process with its own handle
 * of a fresh world group (the thread's moe_comm_world). The OpenMP pool is
 * divided between the ranks (each gets max(1, threads/NRANKS)). Waits for all
 * ranks. RANK_STATUS (NRANKS entries, may be NULL) receives each rank's
 * status. Returns MOE_OK when every rank succeeded, else the status of the
 * lowest failing rank with "with-ranks: rank R failed: <message>" (a rank
 * that failed first poisons the world; the others then fail naming it). */
typedef moe_status (*moe_rank_fn)(int rank, moe_group *world, void *ctx);
moe_status moe_threads_run(int nranks, moe_rank_fn fn, void *ctx, moe_status *rank_status);
/* The message of rank R's failure in the last moe_threads_run of the calling
 * thread ("" when it succeeded or R is out of range). */
const char *moe_threads_rank_error(int r);

/* ---- MPI backend ---------------------------------------------------------------
 * True when this process looks launched by mpirun/srun (Open MPI, PMI or PMIx
 * environment variables), whether or not MPI is built in. */
bool moe_mpi_launched(void);
/* Rank and size from the launcher's environment: OMPI_COMM_WORLD_RANK/SIZE,
 * PMI_RANK/SIZE, or torchrun-style RANK/WORLD_SIZE; 0 and 1 when none. */
void moe_launch_env(int *rank, int *size);
/* The MPI world (MPI_COMM_WORLD), initialising MPI (thread level
 * SERIALIZED) on first use; a new reference. Fails with MOE_ERR_UNSUPPORTED
 * without MPI, and with MOE_ERR_STATE when RANK/WORLD_SIZE are set but
 * disagree with MPI (torchrun's rendezvous is not supported: use mpirun). */
moe_status moe_mpi_world(moe_group **out);
/* Finalize MPI if moe_mpi_world initialised it (call once, at exit, after
 * releasing all MPI groups). Waits, idle and without a timeout, until every
 * rank has come to finalize (a peer that fails aborts the job meanwhile).
 * When the MPI job has failed (moe_mpi_failed) it aborts the job instead,
 * with the first failure's message: it does not return then. */
moe_status moe_mpi_finalize(void);
/* True once an MPI collective, send or receive of this process timed out:
 * the job cannot go on (MPI cannot cancel the operation); every later MPI
 * call fails at once. MESSAGE (may be NULL) receives the first failure's
 * message ("" when none). */
bool moe_mpi_failed(const char **message);
/* End the whole MPI job: MESSAGE (may be NULL) goes to stderr, then
 * MPI_Abort makes mpirun stop every process and exit non-zero. Returns only
 * when there is no MPI job to abort (MOE_ERR_STATE: MPI not initialised;
 * MOE_ERR_UNSUPPORTED: built without MPI). */
moe_status moe_mpi_abort(const char *message);
/* True when this build includes the MPI / NCCL backends. */
bool moe_built_with_mpi(void);
bool moe_built_with_nccl(void);

/* ---- NCCL backend -------------------------------------------------------------
 * Create an NCCL communicator over the members of G (collective over G) on
 * CUDA device DEVICE of each rank; afterwards collectives on G with CUDA
 * tensors run on it. The unique id is made by rank 0 and broadcast over G
 * itself (MPI, or shared memory on the threads backend). */
moe_status moe_group_attach_nccl(moe_group *g, int device);
/* True when G has an NCCL communicator. */
bool moe_group_has_nccl(const moe_group *g);

#ifdef __cplusplus
}
#endif
#endif
