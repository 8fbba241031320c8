/* comm_mpi.c — the MPI backend (Open MPI): one process per rank.
 *
 * Each handle owns an MPI communicator (MPI_COMM_WORLD for the world, one
 * from MPI_Comm_split for every sub-group) whose error handler returns
 * errors instead of aborting.
 *
 * Reductions are deterministic and give the same bits as the threads
 * backend: floating sums and averages (and anything bf16) run as an
 * all-to-all of slices, a local reduction of each slice in rank order
 * 0..N-1, and an all-gather; max, min and integer sums (exact in any order)
 * use MPI's own collectives. bf16 travels as 16-bit words and is reduced in
 * f32; AVG is a sum divided here. Counts above INT_MAX are split into chunks
 * where MPI allows it. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "config.h"
#include "comm_impl.h"

typedef struct mpi_impl {
    MPI_Comm comm;
    bool owned;          /* free the communicator with the handle */
    void *scratch;       /* ordered reductions' receive buffer, grown on demand */
    size_t scratch_size;
} mpi_impl;

static moe_group *mpi_world_group; /* the process's world handle (one reference) */
static bool we_initialized;

/* Turn an MPI error code into a status naming the call and its place. */
static moe_status mpi_fail(int rc, const char *op, const char *call, const char *file, int line)
{
    char msg[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = 0;
    return moe_fail(MOE_ERR_BACKEND, op, "%s failed (%s:%d): %s", call, file, line, len ? msg : "unknown MPI error");
}
#define CHECK_MPI(op, call)                                                   \
    do {                                                                      \
        int mpi_rc_ = (call);                                                 \
        if (mpi_rc_ != MPI_SUCCESS) return mpi_fail(mpi_rc_, op, #call, __FILE__, __LINE__); \
    } while (0)

static MPI_Comm comm_of(const moe_group *g) { return ((const mpi_impl *)g->impl)->comm; }

static MPI_Datatype mpi_type(moe_dtype dt)
{
    switch (dt) {
    case MOE_F32: return MPI_FLOAT;
    case MOE_F64: return MPI_DOUBLE;
    case MOE_I32: return MPI_INT32_T;
    case MOE_I64: return MPI_INT64_T;
    case MOE_BF16: return MPI_UINT16_T; /* moved, never reduced (comm.c stages bf16 in f32) */
    case MOE_BOOL: return MPI_UINT8_T;
    default: return MPI_DATATYPE_NULL;
    }
}

static MPI_Op mpi_op(moe_reduce_op op)
{
    switch (op) {
    case MOE_REDUCE_MAX: return MPI_MAX;
    case MOE_REDUCE_MIN: return MPI_MIN;
    default: return MPI_SUM; /* AVG: a sum, divided afterwards */
    }
}

static void divide(void *buf, int64_t count, moe_dtype dt, int n)
{
    switch (dt) {
    case MOE_F32: for (int64_t i = 0; i < count; i++) ((float *)buf)[i] /= (float)n; break;
    case MOE_F64: for (int64_t i = 0; i < count; i++) ((double *)buf)[i] /= (double)n; break;
    case MOE_I32: for (int64_t i = 0; i < count; i++) ((int32_t *)buf)[i] /= n; break;
    case MOE_I64: for (int64_t i = 0; i < count; i++) ((int64_t *)buf)[i] /= n; break;
    default: break;
    }
}

static moe_status check_int_count(const char *op, int64_t count)
{
    if (count > INT_MAX)
        return moe_fail(MOE_ERR_UNSUPPORTED, op, "%lld elements exceed MPI's int counts; split the tensor",
                        (long long)count);
    return MOE_OK;
}

#define CHUNK ((int64_t)1 << 30)

/* Reductions whose result does not depend on the order of the operands
 * (max, min, integer sums) use MPI's own; floating sums and averages take the
 * ordered path below, so every backend gives the same bits. */
static bool order_free(moe_dtype dt, moe_reduce_op op)
{
    if (dt == MOE_BF16) return false; /* MPI has no bf16 arithmetic */
    return op == MOE_REDUCE_MAX || op == MOE_REDUCE_MIN || !moe_dtype_is_float(dt);
}

/* Scratch of at least NBYTES kept with the handle (no malloc in steady state). */
static void *scratch(mpi_impl *im, size_t nbytes)
{
    if (nbytes > im->scratch_size) {
        void *p = realloc(im->scratch, nbytes);
        if (!p) return NULL;
        im->scratch = p;
        im->scratch_size = nbytes;
    }
    return im->scratch;
}

/* Balanced slice of COUNT for rank R of N: [lo, lo + len). */
static void slice(int64_t count, int n, int r, int64_t *lo, int64_t *len)
{
    *lo = count / n * r + (r < count % n ? r : count % n);
    *len = count / n + (r < count % n ? 1 : 0);
}

/* Rank r receives slice r of every rank's SEND (slices of SLICE(count)) and
 * reduces them in rank order 0..N-1 into RECV [its slice]: the threads
 * backend's algorithm, with an all-to-all instead of shared memory. */
static moe_status ordered_reduce_scatter(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt,
                                         moe_reduce_op op, const char *opn)
{
    int n = g->size, me = g->rank;
    mpi_impl *im = g->impl;
    size_t esz = moe_dtype_size(dt);
    int64_t mylo, mylen;
    slice(count, n, me, &mylo, &mylen);
    if (mylen * n > INT_MAX || count > INT_MAX) return check_int_count(opn, INT64_MAX);
    int *c = malloc(sizeof(int) * 4 * (size_t)n);
    char *buf = scratch(im, (size_t)(mylen * n > 0 ? mylen * n : 1) * esz);
    const void **srcs = malloc(sizeof *srcs * (size_t)n);
    if (!c || !buf || !srcs) {
        free(c);
        free(srcs);
        return moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %lld elements of scratch", (long long)(mylen * n));
    }
    for (int q = 0; q < n; q++) {
        int64_t lo, len;
        slice(count, n, q, &lo, &len);
        c[q] = (int)len;                /* send counts */
        c[n + q] = (int)lo;             /* send displacements */
        c[2 * n + q] = (int)mylen;      /* receive counts */
        c[3 * n + q] = (int)(q * mylen); /* receive displacements */
        srcs[q] = buf + (size_t)(q * mylen) * esz;
    }
    int rc = MPI_Alltoallv(send, c, c + n, mpi_type(dt), buf, c + 2 * n, c + 3 * n, mpi_type(dt), comm_of(g));
    if (rc == MPI_SUCCESS) moe_comm_reduce_n(recv, srcs, n, mylen, dt, op);
    free(c);
    free(srcs);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, opn, "MPI_Alltoallv", __FILE__, __LINE__);
    return MOE_OK;
}

static moe_status mpi_all_reduce(moe_group *g, void *buf, int64_t count, moe_dtype dt, moe_reduce_op op)
{
    size_t esz = moe_dtype_size(dt);
    if (order_free(dt, op)) {
        for (int64_t off = 0; off < count; off += CHUNK) {
            int c = (int)(count - off < CHUNK ? count - off : CHUNK);
            CHECK_MPI("all_reduce", MPI_Allreduce(MPI_IN_PLACE, (char *)buf + off * (int64_t)esz, c, mpi_type(dt),
                                                  mpi_op(op), comm_of(g)));
        }
        if (op == MOE_REDUCE_AVG) divide(buf, count, dt, g->size);
        return MOE_OK;
    }
    int n = g->size, me = g->rank;
    int *c = malloc(sizeof(int) * 2 * (size_t)n);
    if (!c) return moe_fail(MOE_ERR_NOMEM, "all_reduce", "out of memory");
    moe_status st = MOE_OK;
    for (int64_t off = 0; off < count && st == MOE_OK; off += CHUNK) {
        int64_t part = count - off < CHUNK ? count - off : CHUNK;
        char *p = (char *)buf + off * (int64_t)esz;
        int64_t lo, len;
        slice(part, n, me, &lo, &len);
        /* reduce-scatter: my slice, reduced in rank order, written in place */
        st = ordered_reduce_scatter(g, p + lo * (int64_t)esz, p, part, dt, op, "all_reduce");
        if (st != MOE_OK) break;
        /* all-gather the slices in place */
        for (int q = 0; q < n; q++) {
            slice(part, n, q, &lo, &len);
            c[q] = (int)len;
            c[n + q] = (int)lo;
        }
        int rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p, c, c + n, mpi_type(dt), comm_of(g));
        if (rc != MPI_SUCCESS) st = mpi_fail(rc, "all_reduce", "MPI_Allgatherv", __FILE__, __LINE__);
    }
    free(c);
    return st;
}

static moe_status mpi_all_gather(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt)
{
    MOE_TRY(check_int_count("all_gather", count * g->size));
    CHECK_MPI("all_gather", MPI_Allgather(send, (int)count, mpi_type(dt), recv, (int)count, mpi_type(dt), comm_of(g)));
    return MOE_OK;
}

static moe_status mpi_reduce_scatter(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt,
                                     moe_reduce_op op)
{
    MOE_TRY(check_int_count("reduce_scatter", count * g->size));
    if (!order_free(dt, op))
        return ordered_reduce_scatter(g, recv, send, count * g->size, dt, op, "reduce_scatter");
    CHECK_MPI("reduce_scatter", MPI_Reduce_scatter_block(send, recv, (int)count, mpi_type(dt), mpi_op(op),
                                                         comm_of(g)));
    if (op == MOE_REDUCE_AVG) divide(recv, count, dt, g->size);
    return MOE_OK;
}

static moe_status mpi_all_to_all(moe_group *g, void *recv, const int64_t *recv_counts, const void *send,
                                 const int64_t *send_counts, moe_dtype dt)
{
    int n = g->size;
    int *c = malloc(sizeof(int) * 4 * (size_t)n); /* send counts, send displs, recv counts, recv displs */
    if (!c) return moe_fail(MOE_ERR_NOMEM, "all_to_all", "out of memory");
    int64_t soff = 0, roff = 0;
    for (int q = 0; q < n; q++) {
        if (soff + send_counts[q] > INT_MAX || roff + recv_counts[q] > INT_MAX) {
            free(c);
            return check_int_count("all_to_all", INT64_MAX);
        }
        c[q] = (int)send_counts[q];
        c[n + q] = (int)soff;
        c[2 * n + q] = (int)recv_counts[q];
        c[3 * n + q] = (int)roff;
        soff += send_counts[q];
        roff += recv_counts[q];
    }
    int rc = MPI_Alltoallv(send, c, c + n, mpi_type(dt), recv, c + 2 * n, c + 3 * n, mpi_type(dt), comm_of(g));
    free(c);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all_to_all", "MPI_Alltoallv", __FILE__, __LINE__);
    return MOE_OK;
}

static moe_status mpi_broadcast(moe_group *g, void *buf, int64_t count, moe_dtype dt, int root)
{
    size_t esz = moe_dtype_size(dt);
    for (int64_t off = 0; off < count; off += CHUNK) {
        int c = (int)(count - off < CHUNK ? count - off : CHUNK);
        CHECK_MPI("broadcast", MPI_Bcast((char *)buf + off * (int64_t)esz, c, mpi_type(dt), root, comm_of(g)));
    }
    return MOE_OK;
}

/* Point to point: with checks on, a header {count, dtype} (tag 2t) goes before
 * the payload (tag 2t+1), so the receiver can report a mismatch. */
static moe_status check_tag(const char *op, moe_group *g, int tag)
{
    int *ub = NULL, flag = 0;
    MPI_Comm_get_attr(comm_of(g), MPI_TAG_UB, &ub, &flag);
    int limit = flag && ub ? *ub : 32767;
    if (tag > (limit - 1) / 2) return moe_fail(MOE_ERR_ARG, op, "tag %d too large (at most %d with MPI)", tag, (limit - 1) / 2);
    return MOE_OK;
}

static moe_status mpi_send(moe_group *g, const void *buf, int64_t count, moe_dtype dt, int dst, int tag)
{
    MOE_TRY(check_int_count("send", count));
    MOE_TRY(check_tag("send", g, tag));
    int64_t head[2] = {count, dt};
    CHECK_MPI("send", MPI_Send(head, 2, MPI_INT64_T, dst, 2 * tag, comm_of(g)));
    CHECK_MPI("send", MPI_Send(buf, (int)count, mpi_type(dt), dst, 2 * tag + 1, comm_of(g)));
    return MOE_OK;
}

static moe_status mpi_recv(moe_group *g, void *buf, int64_t count, moe_dtype dt, int src, int tag)
{
    MOE_TRY(check_int_count("recv", count));
    MOE_TRY(check_tag("recv", g, tag));
    int64_t head[2];
    CHECK_MPI("recv", MPI_Recv(head, 2, MPI_INT64_T, src, 2 * tag, comm_of(g), MPI_STATUS_IGNORE));
    if (head[0] != count || head[1] != dt) {
        /* drain the payload so the channel stays in step, then report */
        moe_dtype sdt = head[1] >= 0 && head[1] < MOE_DTYPE_COUNT ? (moe_dtype)head[1] : MOE_BOOL;
        void *tmp = malloc((size_t)(head[0] > 0 ? head[0] : 1) * moe_dtype_size(sdt));
        if (tmp) MPI_Recv(tmp, (int)head[0], mpi_type(sdt), src, 2 * tag + 1, comm_of(g), MPI_STATUS_IGNORE);
        free(tmp);
        return moe_fail(MOE_ERR_SHAPE, "recv", "size mismatch: rank %d sent %lld elements (%s), rank %d expects %lld elements (%s)",
                        src, (long long)head[0], moe_dtype_name(sdt), g->rank, (long long)count, moe_dtype_name(dt));
    }
    CHECK_MPI("recv", MPI_Recv(buf, (int)count, mpi_type(dt), src, 2 * tag + 1, comm_of(g), MPI_STATUS_IGNORE));
    return MOE_OK;
}

static moe_status mpi_barrier(moe_group *g)
{
    CHECK_MPI("barrier", MPI_Barrier(comm_of(g)));
    return MOE_OK;
}

static const moe_comm_backend *mpi_ops(void);

/* A handle over COMM (taking ownership when OWNED): rank, size and world ranks
 * from MPI. */
static moe_status wrap_comm(moe_group **out, MPI_Comm comm, bool owned)
{
    *out = NULL;
    int rank, size;
    CHECK_MPI("group", MPI_Comm_rank(comm, &rank));
    CHECK_MPI("group", MPI_Comm_size(comm, &size));
    int *mine = malloc(sizeof(int) * 2 * (size_t)size);
    mpi_impl *impl = malloc(sizeof *impl);
    if (!mine || !impl) {
        free(mine);
        free(impl);
        return moe_fail(MOE_ERR_NOMEM, "group", "out of memory");
    }
    MPI_Group gg, wg;
    MPI_Comm_group(comm, &gg);
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    for (int i = 0; i < size; i++) mine[i] = i;
    MPI_Group_translate_ranks(gg, size, mine, wg, mine + size);
    MPI_Group_free(&gg);
    MPI_Group_free(&wg);
    impl->comm = comm;
    impl->owned = owned;
    impl->scratch = NULL;
    impl->scratch_size = 0;
    moe_status st = moe_group_alloc(out, mpi_ops(), rank, size, mine + size, impl);
    free(mine);
    if (st != MOE_OK) free(impl);
    return st;
}

static moe_status mpi_split(moe_group **out, moe_group *g, int color, int key)
{
    *out = NULL;
    MPI_Comm nc;
    CHECK_MPI("split", MPI_Comm_split(comm_of(g), color < 0 ? MPI_UNDEFINED : color, key, &nc));
    if (nc == MPI_COMM_NULL) return MOE_OK;
    MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
    moe_status st = wrap_comm(out, nc, true);
    if (st != MOE_OK) MPI_Comm_free(&nc);
    return st;
}

/* ---- async all-reduce ------------------------------------------------------------ */

typedef struct mpi_req {
    MPI_Request req;
} mpi_req;

static moe_status mpi_all_reduce_finish(moe_work *w)
{
    mpi_req *r = w->impl;
    int rc = MPI_Wait(&r->req, MPI_STATUS_IGNORE);
    free(r);
    w->impl = NULL;
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all_reduce", "MPI_Wait", __FILE__, __LINE__);
    return MOE_OK;
}

static bool mpi_all_reduce_test(moe_work *w)
{
    mpi_req *r = w->impl;
    int flag = 0;
    if (!r) return true;
    MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE); /* a completed request becomes MPI_REQUEST_NULL */
    return flag != 0;
}

static moe_status mpi_all_reduce_start(moe_work *w, moe_group *g, void *buf, int64_t count, moe_dtype dt,
                                       moe_reduce_op op)
{
    MOE_TRY(check_int_count("all_reduce", count));
    if (!order_free(dt, op)) { /* the ordered path is blocking: run it now */
        MOE_TRY(mpi_all_reduce(g, buf, count, dt, op));
        return MOE_OK;
    }
    mpi_req *r = malloc(sizeof *r);
    if (!r) return moe_fail(MOE_ERR_NOMEM, "all_reduce", "out of memory");
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(dt), mpi_op(op), comm_of(g), &r->req);
    if (rc != MPI_SUCCESS) {
        free(r);
        return mpi_fail(rc, "all_reduce", "MPI_Iallreduce", __FILE__, __LINE__);
    }
    w->impl = r;
    w->finish = mpi_all_reduce_finish;
    w->test = mpi_all_reduce_test;
    if (op == MOE_REDUCE_AVG) w->avg_divisor = g->size;
    return MOE_OK;
}

static void mpi_destroy(moe_group *g)
{
    mpi_impl *impl = g->impl;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (impl->owned && !finalized) MPI_Comm_free(&impl->comm);
    free(impl->scratch);
    free(impl);
}

static const moe_comm_backend mpi_backend = {
    .name = "mpi",
    .needs_check = true,
    .native_bf16 = true, /* reduced in f32 by the ordered path */
    .all_reduce = mpi_all_reduce,
    .all_gather = mpi_all_gather,
    .reduce_scatter = mpi_reduce_scatter,
    .all_to_all = mpi_all_to_all,
    .broadcast = mpi_broadcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .split = mpi_split,
    .all_reduce_start = mpi_all_reduce_start,
    .poison = NULL, /* peers learn of failures through the descriptor exchange */
    .destroy = mpi_destroy,
};
const moe_comm_backend moe_comm_mpi_backend = mpi_backend;
static const moe_comm_backend *mpi_ops(void) { return &moe_comm_mpi_backend; }

/* ---- the world ------------------------------------------------------------------------ */

moe_group *moe_mpi_world_peek(void); /* comm.c */
moe_group *moe_mpi_world_peek(void) { return mpi_world_group; }

moe_status moe_mpi_world(moe_group **out)
{
    const char *opn = "mpi_world";
    *out = NULL;
    if (!mpi_world_group) {
        int init = 0, finalized = 0;
        MPI_Finalized(&finalized);
        if (finalized) return moe_fail(MOE_ERR_STATE, opn, "MPI was already finalized");
        MPI_Initialized(&init);
        if (!init) {
            int provided;
            CHECK_MPI(opn, MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided));
            we_initialized = true;
        }
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        int rank, size, env_rank = 0, env_size = 1;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        MPI_Comm_size(MPI_COMM_WORLD, &size);
        moe_launch_env(&env_rank, &env_size);
        const char *ws = getenv("WORLD_SIZE");
        if (ws && *ws && !moe_mpi_launched() && (env_size != size || env_rank != rank))
            return moe_fail(MOE_ERR_STATE, opn, "RANK=%d WORLD_SIZE=%d are set but MPI's world is rank %d of %d: "
                            "launch with mpirun -np %d (torchrun's rendezvous is not supported)",
                            env_rank, env_size, rank, size, env_size);
        MOE_TRY(wrap_comm(&mpi_world_group, MPI_COMM_WORLD, false));
        moe_group_set_name(mpi_world_group, "world");
    }
    *out = moe_group_retain(mpi_world_group);
    return MOE_OK;
}

moe_status moe_mpi_finalize(void)
{
    moe_group_release(mpi_world_group);
    mpi_world_group = NULL;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (we_initialized && !finalized) {
        we_initialized = false;
        CHECK_MPI("mpi_finalize", MPI_Finalize());
    }
    return MOE_OK;
}
