/* comm_impl.h — the backend vtable behind comm.h; shared by the front end
 * (group.c, comm.c, comm_grad.c, comm_async.c) and the backends, not
 * installed.
 *
 * Backends move raw, contiguous buffers. The front end does everything else:
 * argument checks, non-contiguous inputs, allocation, bf16 handling where a
 * backend lacks it, split exchange (comm.c), autograd (comm_grad.c). Counts
 * are in elements of DT. */
#ifndef MOELAB_COMM_IMPL_H
#define MOELAB_COMM_IMPL_H

#include "comm.h"

#include "../../kernels/cpu/collective.h"

/* Descriptor kinds. Their names (moe_coll_name), used in messages, are the
 * collectives' Scheme names (comm.h: messages); group-split has no Scheme
 * procedure and is named in the same style. */
typedef enum moe_coll_kind {
    MOE_COLL_ALL_REDUCE,
    MOE_COLL_ALL_GATHER,
    MOE_COLL_REDUCE_SCATTER,
    MOE_COLL_ALL_TO_ALL,
    MOE_COLL_BROADCAST,
    MOE_COLL_BARRIER,
    MOE_COLL_SPLIT,
    MOE_COLL_KIND_COUNT
} moe_coll_kind;
const char *moe_coll_name(moe_coll_kind k);
bool moe_coll_parse(const char *name, moe_coll_kind *out);

typedef struct moe_comm_backend {
    const char *name;
    /* true: the backend cannot see its peers' arguments, comm.c exchanges a
     * descriptor first when checks are on (moe_comm_check_peers) */
    bool needs_check;
    /* true: bf16 buffers are handled natively by all_reduce/reduce_scatter */
    bool native_bf16;
    /* BUF [count] reduced in place */
    moe_status (*all_reduce)(moe_group *g, void *buf, int64_t count, moe_dtype dt, moe_reduce_op op);
    /* RECV [n*count] ← SEND [count] of every rank */
    moe_status (*all_gather)(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt);
    /* RECV [count] ← block rank of OP over SEND [n*count] */
    moe_status (*reduce_scatter)(moe_group *g, void *recv, const void *send, int64_t count,
                                 moe_dtype dt, moe_reduce_op op);
    /* SEND_COUNTS[q] elements to rank q, packed in rank order; RECV_COUNTS[q]
     * from rank q, packed in rank order. The counts agree pairwise (comm.c
     * exchanged them). */
    moe_status (*all_to_all)(moe_group *g, void *recv, const int64_t *recv_counts, const void *send,
                             const int64_t *send_counts, moe_dtype dt);
    moe_status (*broadcast)(moe_group *g, void *buf, int64_t count, moe_dtype dt, int root);
    moe_status (*send)(moe_group *g, const void *buf, int64_t count, moe_dtype dt, int dst, int tag);
    moe_status (*recv)(moe_group *g, void *buf, int64_t count, moe_dtype dt, int src, int tag);
    moe_status (*barrier)(moe_group *g);
    /* Collective over G; negative COLOR: *out = NULL. */
    moe_status (*split)(moe_group **out, moe_group *g, int color, int key);
    /* Optional: start an all-reduce; fill W->finish/W->impl (comm_async.c
     * calls finish in moe_work_wait). NULL: the blocking form runs eagerly. */
    moe_status (*all_reduce_start)(moe_work *w, moe_group *g, void *buf, int64_t count, moe_dtype dt,
                                   moe_reduce_op op);
    /* Optional: the all-gather of NBYTES per rank of the peer check at the
     * entry of collective OP, done so that a timeout names the members that
     * never arrived. NULL: all_gather. */
    moe_status (*gather_entry)(moe_group *g, void *recv, const void *send, int64_t nbytes, const char *op);
    /* Optional: a collective failed on this rank; make peers fail too. */
    void (*poison)(moe_group *g, moe_status code, const char *msg);
    /* Free the backend state of this handle. */
    void (*destroy)(moe_group *g);
} moe_comm_backend;

struct moe_group {
    const moe_comm_backend *ops;
    int rank, size;
    int *world_ranks; /* [size] world rank of each member */
    int refcount;     /* atomic: comm.h (groups) tells who holds references */
    void *impl;       /* backend state */
    moe_group *nccl;  /* device communicator over the same ranks, or NULL */
    char name[32];
};

/* A new handle (refcount 1) with a copy of WORLD_RANKS [size]. */
moe_status moe_group_alloc(moe_group **out, const moe_comm_backend *ops, int rank, int size,
                           const int *world_ranks, void *impl);

struct moe_work {
    moe_group *g;
    moe_status status;     /* result of an eager run */
    char *message;         /* its error message (malloc'd) or NULL */
    moe_status (*finish)(moe_work *w); /* backend completion, or NULL */
    bool (*test)(moe_work *w);         /* backend progress check, or NULL */
    void *impl;
    /* post-processing done by moe_work_wait after finish */
    moe_tensor *keep[4];   /* references held until the wait */
    moe_tensor *copy_back; /* non-contiguous target: copy keep[0] into it */
    moe_dtype bf16_from;   /* MOE_BF16 when keep[0] is an f32 staging copy */
    int64_t avg_divisor;   /* >1: divide keep[0] by it (backend without AVG) */
};

/* Check that every member of G called the same collective with matching
 * arguments (exchanging a small descriptor through G's all_gather). Used by
 * backends with needs_check. VALUES: kind-specific numbers compared across
 * ranks (count, dtype, op, root); a mismatch fails naming ranks and values. */
moe_status moe_comm_check_peers(moe_group *g, moe_coll_kind kind, int64_t count, moe_dtype dt,
                                int64_t op_or_root);

/* The poison/abort hook of G's backend, if any. */
void moe_comm_poison(moe_group *g, moe_status code);

/* ---- pieces of comm.c shared with the rest of the front end ------------------ */

/* Every public collective passes through moe_comm_enter after its local
 * checks, with LOCAL their result (see comm.c); moe_comm_done poisons G when
 * ST, the result after the rendezvous, is a failure. */
moe_status moe_comm_enter(moe_group *g, moe_coll_kind kind, int64_t count, moe_dtype dt, int64_t arg,
                          moe_status local, bool force);
moe_status moe_comm_done(moe_group *g, moe_status st);
/* Argument checks, failing as OP. */
moe_status moe_comm_check_tensor(const char *op, const moe_tensor *t);
moe_status moe_comm_check_reduce(const char *op, const moe_tensor *t, moe_reduce_op rop);
moe_status moe_comm_check_inplace(const char *op, const moe_tensor *t);
/* *OUT: a contiguous copy of T (or T retained) on DEVICE in DTYPE; DST <- SRC,
 * failing as OP. */
moe_status moe_comm_stage(moe_tensor **out, moe_tensor *t, moe_device device, moe_dtype dtype);
moe_status moe_comm_unstage(moe_tensor *dst, moe_tensor *src, const char *op);
/* The collectives on tensors without autograd (comm.h describes them). */
moe_status moe_comm_all_reduce_copy(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g);
moe_status moe_comm_all_gather(moe_tensor **out, moe_tensor *t, moe_group *g);
moe_status moe_comm_reduce_scatter(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g);
moe_status moe_comm_all_to_all(moe_tensor **out, int64_t *recv_splits, moe_tensor *t,
                               const int64_t *send_splits, moe_group *g);
/* INPLACE_CHECK: refuse a T that requires grad (the in-place form). */
moe_status moe_comm_broadcast(moe_tensor *t, int root, moe_group *g, bool inplace_check);

/* Backends. */
extern const moe_comm_backend moe_comm_threads_backend;
#ifdef MOELAB_HAVE_MPI
extern const moe_comm_backend moe_comm_mpi_backend;
#endif
#ifdef MOELAB_HAVE_CUDA
extern const moe_comm_backend moe_comm_nccl_backend;
moe_status moe_nccl_group_new(moe_group **out, moe_group *host, int device);
#endif

/* threads backend: the thread-local world set by moe_threads_run. */
moe_status moe_threads_world_check(void);

#endif
