/* comm_nccl.c — the NCCL backend: collectives on CUDA tensors.
 *
 * An NCCL communicator is attached to a host group (threads or MPI) with
 * moe_group_attach_nccl; the unique id travels over the host group, which
 * also carries the size checks and barriers. Work runs on one CUDA stream per
 * communicator, created blocking so it is ordered after the legacy default
 * stream the other kernels use; each collective waits for completion while
 * polling for NCCL's asynchronous errors and the comm timeout (an expired
 * wait aborts the communicator instead of hanging).
 *
 * libnccl is opened at run time (dlopen), so a CUDA build links without it and
 * fails with a clear message only when NCCL is asked for. Built only with
 * CUDA; without nccl.h every entry point reports that. */
#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "comm_impl.h"

#if defined(__has_include)
#if __has_include(<nccl.h>) && __has_include(<cuda_runtime.h>)
#define MOE_NCCL_HEADERS 1
#endif
#endif

#ifdef MOE_NCCL_HEADERS
/* the vendor headers declare a few functions without prototypes */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <cuda_runtime.h>
#include <nccl.h>
#pragma GCC diagnostic pop

#include "../../kernels/cuda/check.h"

/* ---- the library, opened on first use ------------------------------------------- */

static struct nccl_api {
    bool tried, ok;
    char why[256];
    __typeof__(&ncclGetUniqueId) GetUniqueId;
    __typeof__(&ncclCommInitRank) CommInitRank;
    __typeof__(&ncclCommDestroy) CommDestroy;
    __typeof__(&ncclCommAbort) CommAbort;
    __typeof__(&ncclCommGetAsyncError) CommGetAsyncError;
    __typeof__(&ncclGetErrorString) GetErrorString;
    __typeof__(&ncclAllReduce) AllReduce;
    __typeof__(&ncclAllGather) AllGather;
    __typeof__(&ncclReduceScatter) ReduceScatter;
    __typeof__(&ncclBroadcast) Broadcast;
    __typeof__(&ncclSend) Send;
    __typeof__(&ncclRecv) Recv;
    __typeof__(&ncclGroupStart) GroupStart;
    __typeof__(&ncclGroupEnd) GroupEnd;
} api;

static moe_status nccl_load(void)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&mu);
    if (!api.tried) {
        api.tried = true;
        void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
        if (!h) h = dlopen("libnccl.so", RTLD_NOW | RTLD_GLOBAL);
        if (!h) {
            snprintf(api.why, sizeof api.why, "cannot open libnccl.so.2 (%s): install NCCL", dlerror());
        } else {
            bool ok = true;
#define LOAD(name)                                                                 \
    do {                                                                           \
        *(void **)&api.name = dlsym(h, "nccl" #name);                              \
        if (!api.name && ok) {                                                     \
            ok = false;                                                            \
            snprintf(api.why, sizeof api.why, "libnccl lacks nccl%s (too old?)", #name); \
        }                                                                          \
    } while (0)
            LOAD(GetUniqueId);
            LOAD(CommInitRank);
            LOAD(CommDestroy);
            LOAD(CommAbort);
            LOAD(CommGetAsyncError);
            LOAD(GetErrorString);
            LOAD(AllReduce);
            LOAD(AllGather);
            LOAD(ReduceScatter);
            LOAD(Broadcast);
            LOAD(Send);
            LOAD(Recv);
            LOAD(GroupStart);
            LOAD(GroupEnd);
#undef LOAD
            api.ok = ok;
        }
    }
    bool ok = api.ok;
    pthread_mutex_unlock(&mu);
    if (!ok) return moe_fail(MOE_ERR_UNSUPPORTED, "attach-nccl", "%s", api.why); /* its only caller */
    return MOE_OK;
}

#define CHECK_NCCL(op, call)                                                               \
    do {                                                                                   \
        ncclResult_t nccl_rc_ = (call);                                                    \
        if (nccl_rc_ != ncclSuccess)                                                       \
            return moe_fail(MOE_ERR_BACKEND, op, "%s failed (%s:%d): %s", #call, __FILE__, \
                            __LINE__, api.GetErrorString(nccl_rc_));                       \
    } while (0)

typedef struct nccl_impl {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    moe_group *host; /* borrowed: the host handle owns this group */
    bool aborted;
} nccl_impl;

static nccl_impl *impl_of(moe_group *g) { return g->impl; }

static moe_status nccl_type(const char *op, moe_dtype dt, ncclDataType_t *out)
{
    switch (dt) {
    case MOE_F32: *out = ncclFloat32; return MOE_OK;
    case MOE_F64: *out = ncclFloat64; return MOE_OK;
    case MOE_I32: *out = ncclInt32; return MOE_OK;
    case MOE_I64: *out = ncclInt64; return MOE_OK;
    case MOE_BOOL: *out = ncclUint8; return MOE_OK;
#if NCCL_VERSION_CODE >= 21000
    case MOE_BF16: *out = ncclBfloat16; return MOE_OK;
#endif
    default: return moe_fail(MOE_ERR_DTYPE, op, "NCCL has no %s type", moe_dtype_name(dt));
    }
}

static ncclRedOp_t nccl_op(moe_reduce_op op)
{
    switch (op) {
    case MOE_REDUCE_MAX: return ncclMax;
    case MOE_REDUCE_MIN: return ncclMin;
#if NCCL_VERSION_CODE >= 21000
    case MOE_REDUCE_AVG: return ncclAvg;
#endif
    default: return ncclSum;
    }
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Wait for the stream, watching NCCL's async errors and the timeout. */
static moe_status nccl_wait(moe_group *g, const char *op)
{
    nccl_impl *im = impl_of(g);
    double timeout, start = seconds_now();
    MOE_TRY(moe_comm_wait_limit(op, &timeout));
    for (;;) {
        cudaError_t q = cudaStreamQuery(im->stream);
        if (q == cudaSuccess) return MOE_OK;
        if (q != cudaErrorNotReady)
            return moe_fail(MOE_ERR_BACKEND, op, "CUDA error while waiting: %s", cudaGetErrorString(q));
        ncclResult_t async = ncclSuccess;
        api.CommGetAsyncError(im->comm, &async);
        if (async != ncclSuccess && async != ncclInProgress) {
            api.CommAbort(im->comm);
            im->aborted = true;
            return moe_fail(MOE_ERR_BACKEND, op, "NCCL error: %s", api.GetErrorString(async));
        }
        if (isfinite(timeout) && seconds_now() - start > timeout) {
            api.CommAbort(im->comm);
            im->aborted = true;
            return moe_fail(MOE_ERR_BACKEND, op, "timed out after %g s (NCCL communicator aborted)", timeout);
        }
        sched_yield();
    }
}

static moe_status usable(moe_group *g, const char *op)
{
    if (impl_of(g)->aborted)
        return moe_fail(MOE_ERR_STATE, op, "the NCCL communicator was aborted after an earlier failure");
    CHECK_CUDA(op, cudaSetDevice(impl_of(g)->device));
    return MOE_OK;
}

static moe_status nccl_all_reduce(moe_group *g, void *buf, int64_t count, moe_dtype dt, moe_reduce_op op)
{
    ncclDataType_t t;
#if NCCL_VERSION_CODE < 21000
    if (op == MOE_REDUCE_AVG)
        return moe_fail(MOE_ERR_UNSUPPORTED, "all-reduce", "avg needs NCCL 2.10 or newer");
#endif
    MOE_TRY(usable(g, "all-reduce"));
    MOE_TRY(nccl_type("all-reduce", dt, &t));
    CHECK_NCCL("all-reduce", api.AllReduce(buf, buf, (size_t)count, t, nccl_op(op), impl_of(g)->comm, impl_of(g)->stream));
    return nccl_wait(g, "all-reduce");
}

static moe_status nccl_all_gather(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt)
{
    ncclDataType_t t;
    MOE_TRY(usable(g, "all-gather"));
    MOE_TRY(nccl_type("all-gather", dt, &t));
    CHECK_NCCL("all-gather", api.AllGather(send, recv, (size_t)count, t, impl_of(g)->comm, impl_of(g)->stream));
    return nccl_wait(g, "all-gather");
}

static moe_status nccl_reduce_scatter(moe_group *g, void *recv, const void *send, int64_t count, moe_dtype dt,
                                      moe_reduce_op op)
{
    ncclDataType_t t;
    MOE_TRY(usable(g, "reduce-scatter"));
    MOE_TRY(nccl_type("reduce-scatter", dt, &t));
    CHECK_NCCL("reduce-scatter", api.ReduceScatter(send, recv, (size_t)count, t, nccl_op(op), impl_of(g)->comm,
                                                   impl_of(g)->stream));
    return nccl_wait(g, "reduce-scatter");
}

static moe_status nccl_all_to_all(moe_group *g, void *recv, const int64_t *recv_counts, const void *send,
                                  const int64_t *send_counts, moe_dtype dt)
{
    ncclDataType_t t;
    MOE_TRY(usable(g, "all-to-all"));
    MOE_TRY(nccl_type("all-to-all", dt, &t));
    size_t esz = moe_dtype_size(dt);
    nccl_impl *im = impl_of(g);
    CHECK_NCCL("all-to-all", api.GroupStart());
    int64_t soff = 0, roff = 0;
    ncclResult_t rc = ncclSuccess;
    for (int q = 0; q < g->size && rc == ncclSuccess; q++) {
        if (send_counts[q] > 0)
            rc = api.Send((const char *)send + soff * (int64_t)esz, (size_t)send_counts[q], t, q, im->comm, im->stream);
        if (rc == ncclSuccess && recv_counts[q] > 0)
            rc = api.Recv((char *)recv + roff * (int64_t)esz, (size_t)recv_counts[q], t, q, im->comm, im->stream);
        soff += send_counts[q];
        roff += recv_counts[q];
    }
    ncclResult_t end = api.GroupEnd();
    CHECK_NCCL("all-to-all", rc);
    CHECK_NCCL("all-to-all", end);
    return nccl_wait(g, "all-to-all");
}

static moe_status nccl_broadcast(moe_group *g, void *buf, int64_t count, moe_dtype dt, int root)
{
    ncclDataType_t t;
    MOE_TRY(usable(g, "broadcast"));
    MOE_TRY(nccl_type("broadcast", dt, &t));
    CHECK_NCCL("broadcast", api.Broadcast(buf, buf, (size_t)count, t, root, impl_of(g)->comm, impl_of(g)->stream));
    return nccl_wait(g, "broadcast");
}

/* Point to point: the size travels first over the host group so the receiver
 * can report a mismatch instead of NCCL hanging. */
static moe_status nccl_send(moe_group *g, const void *buf, int64_t count, moe_dtype dt, int dst, int tag)
{
    ncclDataType_t t;
    MOE_TRY(usable(g, "send!"));
    MOE_TRY(nccl_type("send!", dt, &t));
    moe_group *host = impl_of(g)->host;
    int64_t head[2] = {count, dt};
    MOE_TRY(host->ops->send(host, head, 2, MOE_I64, dst, tag));
    if (count == 0) return MOE_OK;
    CHECK_NCCL("send!", api.Send(buf, (size_t)count, t, dst, impl_of(g)->comm, impl_of(g)->stream));
    return nccl_wait(g, "send!");
}

static moe_status nccl_recv(moe_group *g, void *buf, int64_t count, moe_dtype dt, int src, int tag)
{
    ncclDataType_t t;
    MOE_TRY(usable(g, "recv!"));
    MOE_TRY(nccl_type("recv!", dt, &t));
    moe_group *host = impl_of(g)->host;
    int64_t head[2];
    MOE_TRY(host->ops->recv(host, head, 2, MOE_I64, src, tag));
    if (head[0] != count || head[1] != dt)
        return moe_fail(MOE_ERR_SHAPE, "recv!", "size mismatch: rank %d sent %lld elements (%s), rank %d expects %lld "
                        "elements (%s); the NCCL channel is now out of step",
                        src, (long long)head[0],
                        head[1] >= 0 && head[1] < MOE_DTYPE_COUNT ? moe_dtype_name((moe_dtype)head[1]) : "?", g->rank,
                        (long long)count, moe_dtype_name(dt));
    if (count == 0) return MOE_OK;
    CHECK_NCCL("recv!", api.Recv(buf, (size_t)count, t, src, impl_of(g)->comm, impl_of(g)->stream));
    return nccl_wait(g, "recv!");
}

static moe_status nccl_barrier(moe_group *g)
{
    moe_group *host = impl_of(g)->host;
    return host->ops->barrier(host);
}

static moe_status nccl_split(moe_group **out, moe_group *g, int color, int key)
{
    (void)g;
    (void)color;
    (void)key;
    *out = NULL;
    return moe_fail(MOE_ERR_UNSUPPORTED, "group-split", "split the host group, then attach NCCL to the sub-group");
}

static void nccl_destroy(moe_group *g)
{
    nccl_impl *im = g->impl;
    if (!im) return;
    if (api.ok) {
        cudaSetDevice(im->device);
        if (!im->aborted) api.CommDestroy(im->comm);
        cudaStreamDestroy(im->stream);
    }
    free(im);
}

static const moe_comm_backend nccl_backend = {
    .name = "nccl",
    .needs_check = false, /* comm.c checks over the host group */
#if NCCL_VERSION_CODE >= 21000
    .native_bf16 = true,
#else
    .native_bf16 = false,
#endif
    .all_reduce = nccl_all_reduce,
    .all_gather = nccl_all_gather,
    .reduce_scatter = nccl_reduce_scatter,
    .all_to_all = nccl_all_to_all,
    .broadcast = nccl_broadcast,
    .send = nccl_send,
    .recv = nccl_recv,
    .barrier = nccl_barrier,
    .split = nccl_split,
    .all_reduce_start = NULL,
    .poison = NULL,
    .destroy = nccl_destroy,
};
const moe_comm_backend moe_comm_nccl_backend = nccl_backend;

/* Rank 0's unique id (or its failure) over the host group. */
typedef struct id_msg {
    int64_t status;
    char why[200];
    ncclUniqueId id;
} id_msg;

moe_status moe_nccl_group_new(moe_group **out, moe_group *host, int device)
{
    const char *opn = "attach-nccl";
    *out = NULL;
    id_msg msg;
    memset(&msg, 0, sizeof msg);
    moe_status st = nccl_load();
    int ndev = 0;
    if (st == MOE_OK && (cudaGetDeviceCount(&ndev) != cudaSuccess || device < 0 || device >= ndev))
        st = moe_fail(MOE_ERR_DEVICE, opn, "CUDA device %d is not available (%d visible)", device, ndev);
    if (st == MOE_OK && cudaSetDevice(device) != cudaSuccess)
        st = moe_fail(MOE_ERR_DEVICE, opn, "cannot select CUDA device %d", device);
    if (host->rank == 0) {
        if (st == MOE_OK) {
            ncclResult_t rc = api.GetUniqueId(&msg.id);
            if (rc != ncclSuccess) st = moe_fail(MOE_ERR_BACKEND, opn, "ncclGetUniqueId: %s", api.GetErrorString(rc));
        }
        msg.status = st;
        if (st != MOE_OK) snprintf(msg.why, sizeof msg.why, "%s", moe_last_error());
    }
    /* everyone takes part in the broadcast, failed or not */
    moe_status bs = host->ops->broadcast(host, &msg, (int64_t)sizeof msg, MOE_BOOL, 0);
    if (bs != MOE_OK) return bs;
    if (host->rank != 0 && msg.status != MOE_OK)
        return moe_fail((moe_status)msg.status, opn, "rank 0 failed: %s", msg.why);
    if (st != MOE_OK) return st; /* NCCL init below would wait for this rank forever: the others time out */
    nccl_impl *im = calloc(1, sizeof *im);
    if (!im) return moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of NCCL state", sizeof *im);
    im->device = device;
    im->host = host;
    ncclResult_t rc = api.CommInitRank(&im->comm, host->size, msg.id, host->rank);
    if (rc != ncclSuccess) {
        free(im);
        return moe_fail(MOE_ERR_BACKEND, opn, "ncclCommInitRank (rank %d of %d): %s", host->rank, host->size,
                        api.GetErrorString(rc));
    }
    if (cudaStreamCreate(&im->stream) != cudaSuccess) {
        api.CommDestroy(im->comm);
        free(im);
        return moe_fail(MOE_ERR_BACKEND, opn, "cannot create a CUDA stream");
    }
    st = moe_group_alloc(out, &moe_comm_nccl_backend, host->rank, host->size, host->world_ranks, im);
    if (st != MOE_OK) {
        api.CommDestroy(im->comm);
        cudaStreamDestroy(im->stream);
        free(im);
        return st;
    }
    snprintf((*out)->name, sizeof (*out)->name, "%.24s/nccl", host->name);
    return MOE_OK;
}

#else /* no nccl.h */

moe_status moe_nccl_group_new(moe_group **out, moe_group *host, int device)
{
    (void)host;
    (void)device;
    *out = NULL;
    return moe_fail(MOE_ERR_UNSUPPORTED, "attach-nccl", "built without nccl.h: install NCCL's development "
                    "headers where CUDA's are and rebuild");
}

#endif
