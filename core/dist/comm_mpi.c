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
 * where MPI allows it.
 *
 * Waiting. Every MPI call is non-blocking and completed by await(), which
 * polls with a back-off that leaves the core idle and fails after the comm
 * timeout (see there). MPI cannot cancel a collective, so a timeout ends the
 * job: the process is marked failed (job_failed), later calls fail at once
 * without calling MPI, and moe_mpi_finalize aborts the job. */
#define _GNU_SOURCE
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "config.h"
#include "comm_impl.h"

typedef struct ordered_req ordered_req;

typedef struct mpi_impl {
    MPI_Comm comm;
    bool owned;          /* free the communicator with the handle */
    void *scratch;       /* ordered reductions' receive buffer, grown on demand */
    size_t scratch_size;
    /* async ordered all-reduces: their second phase runs on GATHER_COMM (a
     * duplicate, made at the first one), started in the order of their first
     * phases, which are queued here until then */
    MPI_Comm gather_comm;
    ordered_req *queue_head, *queue_tail;
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

/* ---- failure of the job ------------------------------------------------------------
 * Set once, by the first timeout; read by every entry point. The message is
 * written before the flag is raised. */
static atomic_bool job_failed;
static char job_message[600];

static void job_fail(void)
{
    if (atomic_load(&job_failed)) return;
    snprintf(job_message, sizeof job_message, "%s", moe_last_error());
    atomic_store(&job_failed, true);
}

/* MOE_OK while the job can go on. */
static moe_status usable(const char *op)
{
    if (!atomic_load(&job_failed)) return MOE_OK;
    return moe_fail(MOE_ERR_STATE, op, "the MPI job failed earlier and cannot go on (%s)", job_message);
}

bool moe_mpi_failed(const char **message)
{
    bool failed = atomic_load(&job_failed);
    if (message) *message = failed ? job_message : "";
    return failed;
}

/* ---- waiting ---------------------------------------------------------------------------
 * Open MPI progresses only inside MPI calls and its blocking calls poll at
 * full speed, so a rank whose peer is late would burn its core, and one whose
 * peer never comes would hang the job. await() polls with MPI_Testall: back
 * to back while the data may still be moving (SPIN_NS, plus the bytes at
 * 1 GB/s: the transfer needs this rank's polls to progress), then with
 * sleeps growing from SLEEP_MIN_NS to SLEEP_MAX_NS, which cost a late peer
 * at most SLEEP_MAX_NS of latency. */
#define SPIN_NS 200000L
#define SLEEP_MIN_NS 20000L
#define SLEEP_MAX_NS 2000000L

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "rank 2" or "rank 1 (world rank 5)" */
static void rank_label(const moe_group *g, int q, char *buf, size_t size)
{
    if (g->world_ranks[q] == q) snprintf(buf, size, "rank %d", q);
    else snprintf(buf, size, "rank %d (world rank %d)", q, g->world_ranks[q]);
}

/* Complete the N requests REQS of OP on G, BYTES the data this rank moves.
 * PEER (may be NULL) gives the member of G each request waits for (-1: none
 * in particular): on a timeout those whose requests are still pending are
 * the ranks named as missing. */
static moe_status await(moe_group *g, const char *op, int n, MPI_Request *reqs, const int *peer, int64_t bytes)
{
    double limit;
    MOE_TRY(moe_comm_wait_limit(op, &limit));
    double start = seconds_now(), spin = (double)SPIN_NS * 1e-9 + (double)bytes * 1e-9;
    long sleep_ns = SLEEP_MIN_NS;
    for (;;) {
        int done = 0;
        int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, op, "MPI_Testall", __FILE__, __LINE__);
        if (done) return MOE_OK;
        double waited = seconds_now() - start;
        if (waited > limit) break;
        if (waited < spin) continue;
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
        if (sleep_ns < SLEEP_MAX_NS) sleep_ns = sleep_ns * 2 < SLEEP_MAX_NS ? sleep_ns * 2 : SLEEP_MAX_NS;
    }
    /* which members never answered (a request that completed meanwhile is
     * not counted) */
    char missing[256] = "";
    size_t len = 0;
    for (int i = 0; peer && i < n; i++) {
        int flag = 0, q = peer[i];
        if (q < 0 || MPI_Test(&reqs[i], &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || flag) continue;
        char one[64];
        rank_label(g, q, one, sizeof one);
        if (strstr(missing, one)) continue;
        int k = snprintf(missing + len, sizeof missing - len, "%s%s", len ? ", " : "", one);
        if (k < 0 || (size_t)k >= sizeof missing - len) break;
        len += (size_t)k;
    }
    if (len)
        moe_fail(MOE_ERR_BACKEND, op, "timed out after %g s waiting for %s (group '%s' of %d ranks)", limit, missing,
                 g->name, g->size);
    else
        moe_fail(MOE_ERR_BACKEND, op, "timed out after %g s waiting for the other ranks of group '%s' (%d ranks)",
                 limit, g->name, g->size);
    /* the requests stay pending for ever; this process makes no more MPI
     * calls but MPI_Abort, so their buffers are never written */
    job_fail();
    return MOE_ERR_BACKEND;
}

/* Wait for one collective request. */
static moe_status await1(moe_group *g, const char *op, MPI_Request *req, int64_t bytes)
{
    return await(g, op, 1, req, NULL, bytes);
}

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
        return moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of reduction scratch (%lld elements) and "
                        "counts", (size_t)(mylen * n > 0 ? mylen * n : 1) * esz + (sizeof(int) * 4 + sizeof *srcs) * (size_t)n,
                        (long long)(mylen * n));
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
    MPI_Request req;
    int rc = MPI_Ialltoallv(send, c, c + n, mpi_type(dt), buf, c + 2 * n, c + 3 * n, mpi_type(dt), comm_of(g), &req);
    moe_status st = rc == MPI_SUCCESS ? await1(g, opn, &req, count * (int64_t)esz)
                                      : mpi_fail(rc, opn, "MPI_Ialltoallv", __FILE__, __LINE__);
    if (st == MOE_OK) moe_cpu_reduce_n(dt, recv, srcs, n, mylen, op);
    free(c);
    free(srcs);
    return st;
}

static moe_status mpi_all_reduce(moe_group *g, void *buf, int64_t count, moe_dtype dt, moe_reduce_op op)
{
    MOE_TRY(usable("all-reduce"));
    size_t esz = moe_dtype_size(dt);
    if (order_free(dt, op)) {
        for (int64_t off = 0; off < count; off += CHUNK) {
            int c = (int)(count - off < CHUNK ? count - off : CHUNK);
            MPI_Request req;
            CHECK_MPI("all-reduce", MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * (int64_t)esz, c, mpi_type(dt),
                                                   mpi_op(op), comm_of(g), &req));
            MOE_TRY(await1(g, "all-reduce", &req, (int64_t)c * (int64_t)esz));
        }
        if (op == MOE_REDUCE_AVG) moe_cpu_divide(dt, buf, count, g->size);
        return MOE_OK;
    }
    int n = g->size, me = g->rank;
    int *c = malloc(sizeof(int) * 2 * (size_t)n);
    if (!c)
        return moe_fail(MOE_ERR_NOMEM, "all-reduce", "out of memory for %zu bytes of all-reduce counts",
                        sizeof(int) * 2 * (size_t)n);
    moe_status st = MOE_OK;
    for (int64_t off = 0; off < count && st == MOE_OK; off += CHUNK) {
        int64_t part = count - off < CHUNK ? count - off : CHUNK;
        char *p = (char *)buf + off * (int64_t)esz;
        int64_t lo, len;
        slice(part, n, me, &lo, &len);
        /* reduce-scatter: my slice, reduced in rank order, written in place */
        st = ordered_reduce_scatter(g, p + lo * (int64_t)esz, p, part, dt, op, "all-reduce");
        if (st != MOE_OK) break;
        /* all-gather the slices in place */
        for (int q = 0; q < n; q++) {
            slice(part, n, q, &lo, &len);
            c[q] = (int)len;
            c[n + q] = (int)lo;
        }
        MPI_Request req;
        int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p, c, c + n, mpi_type(dt), comm_of(g), &req);
        st = rc == MPI_SUCCESS ? await1(g, "all-reduce", &req, part * (int64_t)esz)
                               : mpi_fail(rc, "all-reduce", "MPI_Iallgatherv", __FILE__, __LINE__);
    }
    free(c);
    return st;
}

static moe_status mpi_all_gather(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt)
{
    MOE_TRY(usable("all-gather"));
    MOE_TRY(check_int_count("all-gather", count * g->size));
    MPI_Request req;
    CHECK_MPI("all-gather", MPI_Iallgather(send, (int)count, mpi_type(dt), recv, (int)count, mpi_type(dt), comm_of(g),
                                           &req));
    return await1(g, "all-gather", &req, count * g->size * (int64_t)moe_dtype_size(dt));
}

static moe_status mpi_reduce_scatter(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt,
                                     moe_reduce_op op)
{
    MOE_TRY(usable("reduce-scatter"));
    MOE_TRY(check_int_count("reduce-scatter", count * g->size));
    if (!order_free(dt, op))
        return ordered_reduce_scatter(g, recv, send, count * g->size, dt, op, "reduce-scatter");
    MPI_Request req;
    CHECK_MPI("reduce-scatter", MPI_Ireduce_scatter_block(send, recv, (int)count, mpi_type(dt), mpi_op(op),
                                                          comm_of(g), &req));
    MOE_TRY(await1(g, "reduce-scatter", &req, count * g->size * (int64_t)moe_dtype_size(dt)));
    if (op == MOE_REDUCE_AVG) moe_cpu_divide(dt, recv, count, g->size);
    return MOE_OK;
}

static moe_status mpi_all_to_all(moe_group *g, void *recv, const int64_t *recv_counts, const void *send,
                                 const int64_t *send_counts, moe_dtype dt)
{
    MOE_TRY(usable("all-to-all"));
    int n = g->size;
    int *c = malloc(sizeof(int) * 4 * (size_t)n); /* send counts, send displs, recv counts, recv displs */
    if (!c)
        return moe_fail(MOE_ERR_NOMEM, "all-to-all", "out of memory for %zu bytes of all-to-all counts",
                        sizeof(int) * 4 * (size_t)n);
    int64_t soff = 0, roff = 0;
    for (int q = 0; q < n; q++) {
        if (soff + send_counts[q] > INT_MAX || roff + recv_counts[q] > INT_MAX) {
            free(c);
            return check_int_count("all-to-all", INT64_MAX);
        }
        c[q] = (int)send_counts[q];
        c[n + q] = (int)soff;
        c[2 * n + q] = (int)recv_counts[q];
        c[3 * n + q] = (int)roff;
        soff += send_counts[q];
        roff += recv_counts[q];
    }
    MPI_Request req;
    int rc = MPI_Ialltoallv(send, c, c + n, mpi_type(dt), recv, c + 2 * n, c + 3 * n, mpi_type(dt), comm_of(g), &req);
    moe_status st = rc == MPI_SUCCESS ? await1(g, "all-to-all", &req, (soff + roff) * (int64_t)moe_dtype_size(dt))
                                      : mpi_fail(rc, "all-to-all", "MPI_Ialltoallv", __FILE__, __LINE__);
    free(c); /* only now: MPI reads the counts until the operation completes */
    return st;
}

static moe_status mpi_broadcast(moe_group *g, void *buf, int64_t count, moe_dtype dt, int root)
{
    MOE_TRY(usable("broadcast"));
    size_t esz = moe_dtype_size(dt);
    for (int64_t off = 0; off < count; off += CHUNK) {
        int c = (int)(count - off < CHUNK ? count - off : CHUNK);
        MPI_Request req;
        CHECK_MPI("broadcast", MPI_Ibcast((char *)buf + off * (int64_t)esz, c, mpi_type(dt), root, comm_of(g), &req));
        MOE_TRY(await1(g, "broadcast", &req, (int64_t)c * (int64_t)esz));
    }
    return MOE_OK;
}

/* Point to point: a header {count, dtype} (tag 2t) goes before the payload
 * (tag 2t+1), so the receiver can report a mismatch. The two largest tags
 * are kept: MPI_TAG_UB for the peer check's exchange (mpi_gather_entry),
 * MPI_TAG_UB - 1 for the wait at finalize. */
static int tag_ub(void)
{
    int *ub = NULL, flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    return flag && ub ? *ub : 32767;
}

static moe_status check_tag(const char *op, int tag)
{
    int limit = (tag_ub() - 3) / 2; /* 2t + 1 stays below the reserved tags */
    if (tag > limit) return moe_fail(MOE_ERR_ARG, op, "tag %d too large (at most %d with MPI)", tag, limit);
    return MOE_OK;
}

static moe_status mpi_send(moe_group *g, const void *buf, int64_t count, moe_dtype dt, int dst, int tag)
{
    MOE_TRY(usable("send!"));
    MOE_TRY(check_int_count("send!", count));
    MOE_TRY(check_tag("send!", tag));
    int64_t head[2] = {count, dt};
    MPI_Request reqs[2];
    int peer[2] = {dst, dst};
    CHECK_MPI("send!", MPI_Isend(head, 2, MPI_INT64_T, dst, 2 * tag, comm_of(g), &reqs[0]));
    int rc = MPI_Isend(buf, (int)count, mpi_type(dt), dst, 2 * tag + 1, comm_of(g), &reqs[1]);
    if (rc != MPI_SUCCESS) {
        MPI_Request_free(&reqs[0]); /* a small message: it completes by itself */
        return mpi_fail(rc, "send!", "MPI_Isend", __FILE__, __LINE__);
    }
    return await(g, "send!", 2, reqs, peer, count * (int64_t)moe_dtype_size(dt));
}

static moe_status mpi_recv(moe_group *g, void *buf, int64_t count, moe_dtype dt, int src, int tag)
{
    MOE_TRY(usable("recv!"));
    MOE_TRY(check_int_count("recv!", count));
    MOE_TRY(check_tag("recv!", tag));
    int64_t head[2];
    MPI_Request req;
    CHECK_MPI("recv!", MPI_Irecv(head, 2, MPI_INT64_T, src, 2 * tag, comm_of(g), &req));
    MOE_TRY(await(g, "recv!", 1, &req, &src, 0));
    if (head[0] != count || head[1] != dt) {
        /* drain the payload so the channel stays in step, then report */
        moe_dtype sdt = head[1] >= 0 && head[1] < MOE_DTYPE_COUNT ? (moe_dtype)head[1] : MOE_BOOL;
        int64_t nbytes = (head[0] > 0 ? head[0] : 1) * (int64_t)moe_dtype_size(sdt);
        void *tmp = malloc((size_t)nbytes);
        if (tmp && MPI_Irecv(tmp, (int)head[0], mpi_type(sdt), src, 2 * tag + 1, comm_of(g), &req) == MPI_SUCCESS &&
            await(g, "recv!", 1, &req, &src, nbytes) != MOE_OK) {
            return MOE_ERR_BACKEND; /* timed out: TMP stays with the pending request */
        }
        free(tmp);
        return moe_fail(MOE_ERR_SHAPE, "recv!", "size mismatch: rank %d sent %lld elements (%s), rank %d expects %lld elements (%s)",
                        src, (long long)head[0], moe_dtype_name(sdt), g->rank, (long long)count, moe_dtype_name(dt));
    }
    CHECK_MPI("recv!", MPI_Irecv(buf, (int)count, mpi_type(dt), src, 2 * tag + 1, comm_of(g), &req));
    return await(g, "recv!", 1, &req, &src, count * (int64_t)moe_dtype_size(dt));
}

/* A barrier on G for OP. */
static moe_status arrive_all(moe_group *g, const char *op)
{
    MOE_TRY(usable(op));
    MPI_Request req;
    CHECK_MPI(op, MPI_Ibarrier(comm_of(g), &req));
    return await1(g, op, &req, 0);
}

static moe_status mpi_barrier(moe_group *g) { return arrive_all(g, "barrier"); }

/* The peer check's exchange: point to point on the reserved tag, so a
 * timeout knows whose descriptor never came. Above ENTRY_P2P_MAX ranks, one
 * all-gather (fewer messages; the missing ranks are then not known).
 * Messages between a pair are matched in order, so successive collectives
 * never mix. */
#define ENTRY_P2P_MAX 64
static moe_status mpi_gather_entry(moe_group *g, void *recv, const void *send, int64_t nbytes, const char *op)
{
    MOE_TRY(usable(op));
    int n = g->size, me = g->rank;
    if (nbytes > INT_MAX / 2) return check_int_count(op, INT64_MAX);
    if (n > ENTRY_P2P_MAX) {
        MPI_Request req;
        CHECK_MPI(op, MPI_Iallgather(send, (int)nbytes, MPI_BYTE, recv, (int)nbytes, MPI_BYTE, comm_of(g), &req));
        return await1(g, op, &req, nbytes * n);
    }
    MPI_Request *reqs = malloc(sizeof *reqs * 2 * (size_t)n);
    int *peer = malloc(sizeof *peer * 2 * (size_t)n);
    if (!reqs || !peer) {
        free(reqs);
        free(peer);
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of peer-check requests (%d ranks)",
                        (sizeof *reqs + sizeof *peer) * 2 * (size_t)n, n);
    }
    int tag = tag_ub(), k = 0, rc = MPI_SUCCESS;
    memcpy((char *)recv + (size_t)me * (size_t)nbytes, send, (size_t)nbytes);
    for (int q = 0; q < n && rc == MPI_SUCCESS; q++) {
        if (q == me) continue;
        rc = MPI_Irecv((char *)recv + (size_t)q * (size_t)nbytes, (int)nbytes, MPI_BYTE, q, tag, comm_of(g), &reqs[k]);
        if (rc != MPI_SUCCESS) break;
        peer[k++] = q;
        rc = MPI_Isend(send, (int)nbytes, MPI_BYTE, q, tag, comm_of(g), &reqs[k]);
        if (rc == MPI_SUCCESS) peer[k++] = -1; /* a send can finish before its peer comes */
    }
    moe_status st = rc == MPI_SUCCESS ? await(g, op, k, reqs, peer, nbytes * n)
                                      : mpi_fail(rc, op, "MPI_Isend/MPI_Irecv", __FILE__, __LINE__);
    if (rc != MPI_SUCCESS) job_fail(); /* requests already posted cannot be taken back */
    free(reqs);
    free(peer);
    return st;
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
        return moe_fail(MOE_ERR_NOMEM, "group", "out of memory for %zu bytes of a group of %d ranks",
                        sizeof(int) * 2 * (size_t)size + sizeof *impl, size);
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
    impl->gather_comm = MPI_COMM_NULL;
    impl->queue_head = impl->queue_tail = NULL;
    moe_status st = moe_group_alloc(out, mpi_ops(), rank, size, mine + size, impl);
    free(mine);
    if (st != MOE_OK) free(impl);
    return st;
}

static moe_status mpi_split(moe_group **out, moe_group *g, int color, int key)
{
    *out = NULL;
    /* MPI_Comm_split blocks: wait (idle, with the timeout) until every
     * member has come, then split */
    MOE_TRY(arrive_all(g, "group-split"));
    MPI_Comm nc;
    CHECK_MPI("group-split", MPI_Comm_split(comm_of(g), color < 0 ? MPI_UNDEFINED : color, key, &nc));
    if (nc == MPI_COMM_NULL) return MOE_OK;
    MPI_Comm_set_errhandler(nc, MPI_ERRORS_RETURN);
    moe_status st = wrap_comm(out, nc, true);
    if (st != MOE_OK) MPI_Comm_free(&nc);
    return st;
}

/* ---- async all-reduce ------------------------------------------------------------ */

typedef struct mpi_req {
    MPI_Request req;
    int64_t bytes;
} mpi_req;

static moe_status mpi_all_reduce_finish(moe_work *w)
{
    mpi_req *r = w->impl;
    moe_status st = usable("all-reduce");
    if (st == MOE_OK) st = await1(w->g, "all-reduce", &r->req, r->bytes);
    if (st != MOE_OK) return st; /* R stays with the pending request */
    free(r);
    w->impl = NULL;
    return MOE_OK;
}

static bool mpi_all_reduce_test(moe_work *w)
{
    mpi_req *r = w->impl;
    int flag = 0;
    if (!r || atomic_load(&job_failed)) return true; /* the wait reports */
    MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE); /* a completed request becomes MPI_REQUEST_NULL */
    return flag != 0;
}

/* ---- async ordered all-reduce ----------------------------------------------------
 * The floating sums of the blocking path, without blocking: phase 1 sends
 * slice q of BUF to rank q (MPI_Ialltoallv); once it is complete, this rank
 * reduces what it received in rank order into its slice of BUF and starts
 * phase 2, the in-place all-gather of the slices (MPI_Iallgatherv). Same
 * slices, same kernel: the same bits as mpi_all_reduce. Ranks notice the end
 * of phase 1 at different times, while other collectives start on the
 * group's communicator; so phase 2 runs on a communicator of its own, and
 * every rank starts the phases 2 in the order of the phases 1 (a queue per
 * handle), which is the order of the collectives, the same everywhere. Each
 * test or wait of any of them moves the queue on. */
struct ordered_req {
    MPI_Request req;
    int phase;            /* 1: all-to-all in flight (queued); 2: all-gather in flight; 3: failed */
    moe_group *g;         /* borrowed: the work holds a reference */
    void *buf;
    moe_dtype dt;
    moe_reduce_op op;
    int64_t count, bytes;
    char *recv;           /* [n * mylen] slice MYLEN of every rank */
    int *counts;          /* [4n] all-to-all counts and displacements; [0, 2n) reused by the all-gather */
    ordered_req *next;    /* in the queue */
};

static void ordered_free(ordered_req *r)
{
    if (!r) return;
    free(r->recv);
    free(r->counts);
    free(r);
}

/* Phase 1 of R is complete: reduce its slice, start its phase 2. */
static moe_status ordered_phase2(ordered_req *r)
{
    moe_group *g = r->g;
    mpi_impl *im = g->impl;
    int n = g->size, me = g->rank;
    size_t esz = moe_dtype_size(r->dt);
    int64_t mylo, mylen;
    slice(r->count, n, me, &mylo, &mylen);
    const void **srcs = malloc(sizeof *srcs * (size_t)n);
    if (!srcs)
        return moe_fail(MOE_ERR_NOMEM, "all-reduce", "out of memory for %zu bytes of all-reduce sources",
                        sizeof *srcs * (size_t)n);
    for (int q = 0; q < n; q++) srcs[q] = r->recv + (size_t)(q * mylen) * esz;
    moe_cpu_reduce_n(r->dt, (char *)r->buf + mylo * (int64_t)esz, srcs, n, mylen, r->op);
    free(srcs);
    for (int q = 0; q < n; q++) {
        int64_t lo, len;
        slice(r->count, n, q, &lo, &len);
        r->counts[q] = (int)len;
        r->counts[n + q] = (int)lo;
    }
    int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, r->buf, r->counts, r->counts + n, mpi_type(r->dt),
                             im->gather_comm, &r->req);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce", "MPI_Iallgatherv", __FILE__, __LINE__);
    r->phase = 2;
    return MOE_OK;
}

/* Start the phases 2 whose turn has come. UNTIL (may be NULL): wait (with
 * the timeout) for the phases 1 ahead of it and its own, instead of only
 * testing them. */
static moe_status ordered_advance(mpi_impl *im, ordered_req *until)
{
    while (im->queue_head) {
        ordered_req *h = im->queue_head;
        bool must = until && until->phase == 1;
        if (must) {
            MOE_TRY(await1(h->g, "all-reduce", &h->req, h->bytes));
        } else {
            int flag = 0;
            int rc = MPI_Test(&h->req, &flag, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS) return mpi_fail(rc, "all-reduce", "MPI_Test", __FILE__, __LINE__);
            if (!flag) return MOE_OK;
        }
        im->queue_head = h->next;
        if (!im->queue_head) im->queue_tail = NULL;
        h->next = NULL;
        moe_status st = ordered_phase2(h);
        if (st != MOE_OK) {
            h->phase = 3; /* its wait fails; the ones behind it go on */
            return st;
        }
    }
    return MOE_OK;
}

static moe_status ordered_finish(moe_work *w)
{
    ordered_req *r = w->impl;
    moe_status st = usable("all-reduce");
    if (st == MOE_OK) st = ordered_advance(w->g->impl, r);
    if (st == MOE_OK && r->phase == 3)
        st = moe_fail(MOE_ERR_BACKEND, "all-reduce", "the all-gather phase of an asynchronous all-reduce could "
                      "not start");
    if (st == MOE_OK) st = await1(w->g, "all-reduce", &r->req, r->bytes);
    if (st != MOE_OK) return st; /* R stays with its pending request */
    ordered_free(r);
    w->impl = NULL;
    return MOE_OK;
}

static bool ordered_test(moe_work *w)
{
    ordered_req *r = w->impl;
    if (!r || atomic_load(&job_failed)) return true; /* the wait reports */
    if (ordered_advance(w->g->impl, NULL) != MOE_OK || r->phase == 3) return true;
    if (r->phase == 1) return false;
    int flag = 0;
    MPI_Test(&r->req, &flag, MPI_STATUS_IGNORE);
    return flag != 0;
}

/* Start phase 1 of an ordered all-reduce of BUF [COUNT] on G into W. */
static moe_status ordered_start(moe_work *w, moe_group *g, void *buf, int64_t count, moe_dtype dt, moe_reduce_op op)
{
    mpi_impl *im = g->impl;
    int n = g->size, me = g->rank;
    size_t esz = moe_dtype_size(dt);
    int64_t mylo, mylen;
    slice(count, n, me, &mylo, &mylen);
    if (im->gather_comm == MPI_COMM_NULL) { /* collective: every rank's first one */
        CHECK_MPI("all-reduce", MPI_Comm_dup(im->comm, &im->gather_comm));
        MPI_Comm_set_errhandler(im->gather_comm, MPI_ERRORS_RETURN);
    }
    ordered_req *r = calloc(1, sizeof *r);
    if (r) {
        r->recv = malloc((size_t)(mylen * n > 0 ? mylen * n : 1) * esz);
        r->counts = malloc(sizeof(int) * 4 * (size_t)n);
    }
    if (!r || !r->recv || !r->counts) {
        ordered_free(r);
        return moe_fail(MOE_ERR_NOMEM, "all-reduce", "out of memory for %zu bytes of an asynchronous all-reduce "
                        "(%lld elements received)", sizeof *r + (size_t)(mylen * n > 0 ? mylen * n : 1) * esz +
                        sizeof(int) * 4 * (size_t)n, (long long)(mylen * n));
    }
    *r = (ordered_req){.req = MPI_REQUEST_NULL, .phase = 1, .g = g, .buf = buf, .dt = dt, .op = op,
                       .count = count, .bytes = count * (int64_t)esz, .recv = r->recv, .counts = r->counts};
    int *c = r->counts;
    for (int q = 0; q < n; q++) {
        int64_t lo, len;
        slice(count, n, q, &lo, &len);
        c[q] = (int)len;
        c[n + q] = (int)lo;
        c[2 * n + q] = (int)mylen;
        c[3 * n + q] = (int)(q * mylen);
    }
    int rc = MPI_Ialltoallv(buf, c, c + n, mpi_type(dt), r->recv, c + 2 * n, c + 3 * n, mpi_type(dt), im->comm,
                            &r->req);
    if (rc != MPI_SUCCESS) {
        ordered_free(r);
        return mpi_fail(rc, "all-reduce", "MPI_Ialltoallv", __FILE__, __LINE__);
    }
    if (im->queue_tail) im->queue_tail->next = r;
    else im->queue_head = r;
    im->queue_tail = r;
    w->impl = r;
    w->finish = ordered_finish;
    w->test = ordered_test;
    return MOE_OK;
}

static moe_status mpi_all_reduce_start(moe_work *w, moe_group *g, void *buf, int64_t count, moe_dtype dt,
                                       moe_reduce_op op)
{
    MOE_TRY(usable("all-reduce"));
    MOE_TRY(check_int_count("all-reduce", count));
    if (!order_free(dt, op)) {
        if (dt != MOE_BF16 && count <= CHUNK && count <= INT_MAX / (g->size > 0 ? g->size : 1))
            return ordered_start(w, g, buf, count, dt, op);
        MOE_TRY(mpi_all_reduce(g, buf, count, dt, op)); /* the blocking path, now */
        return MOE_OK;
    }
    mpi_req *r = malloc(sizeof *r);
    if (!r) return moe_fail(MOE_ERR_NOMEM, "all-reduce", "out of memory for %zu bytes of an MPI request", sizeof *r);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(dt), mpi_op(op), comm_of(g), &r->req);
    if (rc != MPI_SUCCESS) {
        free(r);
        return mpi_fail(rc, "all-reduce", "MPI_Iallreduce", __FILE__, __LINE__);
    }
    r->bytes = count * (int64_t)moe_dtype_size(dt);
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
    /* after a failure, no MPI call: a pending request may use the communicator */
    if (impl->owned && !finalized && !atomic_load(&job_failed)) MPI_Comm_free(&impl->comm);
    if (impl->gather_comm != MPI_COMM_NULL && !finalized && !atomic_load(&job_failed))
        MPI_Comm_free(&impl->gather_comm);
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
    .gather_entry = mpi_gather_entry,
    .poison = NULL, /* peers learn of failures through the descriptor exchange */
    .destroy = mpi_destroy,
};
const moe_comm_backend moe_comm_mpi_backend = mpi_backend;
static const moe_comm_backend *mpi_ops(void) { return &moe_comm_mpi_backend; }

/* ---- the world ------------------------------------------------------------------------ */

moe_group *moe_mpi_world_peek(void); /* group.c */
moe_group *moe_mpi_world_peek(void) { return mpi_world_group; }

moe_status moe_mpi_world(moe_group **out)
{
    const char *opn = "with-ranks";
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

/* The end of the job: every rank tells rank 0 it is done, rank 0 answers
 * once all have, each waiting with sleeps. Point to point on a reserved tag
 * (MPI_TAG_UB - 1), so it can never pair with a collective that a peer is
 * still (wrongly) waiting in. */
static void wait_for_everyone(void)
{
    int n = 1, me = 0, tag = tag_ub() - 1;
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (n == 1) return;
    MPI_Request *reqs = malloc(sizeof *reqs * (size_t)n);
    if (!reqs) return;
    int k = 0;
    for (int q = 1; me == 0 && q < n; q++)
        if (MPI_Irecv(NULL, 0, MPI_BYTE, q, tag, MPI_COMM_WORLD, &reqs[k]) == MPI_SUCCESS) k++;
    if (me != 0 && MPI_Isend(NULL, 0, MPI_BYTE, 0, tag, MPI_COMM_WORLD, &reqs[k]) == MPI_SUCCESS) k++;
    for (int round = 0; round < 2; round++) {
        int done = 0;
        long sleep_ns = SLEEP_MIN_NS;
        while (MPI_Testall(k, reqs, &done, MPI_STATUSES_IGNORE) == MPI_SUCCESS && !done) {
            struct timespec ts = {0, sleep_ns};
            nanosleep(&ts, NULL);
            if (sleep_ns < SLEEP_MAX_NS) sleep_ns = sleep_ns * 2 < SLEEP_MAX_NS ? sleep_ns * 2 : SLEEP_MAX_NS;
        }
        /* round 1: rank 0 releases the others, who wait for it */
        k = 0;
        for (int q = 1; round == 0 && me == 0 && q < n; q++)
            if (MPI_Isend(NULL, 0, MPI_BYTE, q, tag, MPI_COMM_WORLD, &reqs[k]) == MPI_SUCCESS) k++;
        if (round == 0 && me != 0 && MPI_Irecv(NULL, 0, MPI_BYTE, 0, tag, MPI_COMM_WORLD, &reqs[k]) == MPI_SUCCESS) k++;
    }
    free(reqs);
}

moe_status moe_mpi_finalize(void)
{
    moe_group_release(mpi_world_group);
    mpi_world_group = NULL;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (we_initialized && !finalized) {
        if (atomic_load(&job_failed)) {
            char msg[700];
            int rank = 0;
            MPI_Comm_rank(MPI_COMM_WORLD, &rank);
            snprintf(msg, sizeof msg, "moelab (rank %d): %s; aborting the MPI job", rank, job_message);
            moe_mpi_abort(msg);
        }
        /* MPI_Finalize waits for the peers at full speed: wait for them here,
         * idle (without a timeout: a peer may legitimately still be busy,
         * and one that fails aborts the job) */
        wait_for_everyone();
        we_initialized = false;
        CHECK_MPI("mpi-finalize", MPI_Finalize());
    }
    return MOE_OK;
}

moe_status moe_mpi_abort(const char *message)
{
    int init = 0, finalized = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&finalized);
    if (!init || finalized) return moe_fail(MOE_ERR_STATE, "with-ranks", "there is no MPI job to abort (MPI %s)",
                                            init ? "was finalized" : "is not initialised");
    if (message && *message) {
        fprintf(stderr, "%s\n", message);
        fflush(stderr);
    }
    MPI_Abort(MPI_COMM_WORLD, 1);
    return moe_fail(MOE_ERR_BACKEND, "with-ranks", "MPI_Abort returned");
}
