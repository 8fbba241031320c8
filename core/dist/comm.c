/* comm.c — collectives on tensors, host side: names, settings, the peer
 * check and rendezvous, argument checks, staging (non-contiguous, bf16,
 * device), split exchange for all-to-all, and dispatch of the buffers through
 * the backend vtable. The differentiable forms are in comm_grad.c, the
 * asynchronous ones in comm_async.c, groups in group.c.
 *
 * Dimension letters: N ranks in the group, R rows (dim 0), W elements per row
 * (the product of the trailing dims). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "../names.h"
#include "comm_impl.h"
#include "internal.h"
#ifdef MOELAB_HAVE_CUDA
#include "../../kernels/cuda/cuda.h"
#endif

/* ---- names ----------------------------------------------------------------- */

NAME_TABLE(moe_reduce_op, reduce_op, MOE_REDUCE_OP_COUNT, "sum", "avg", "max", "min")

NAME_TABLE(moe_coll_kind, coll, MOE_COLL_KIND_COUNT, "all-reduce", "all-gather", "reduce-scatter",
           "all-to-all", "broadcast", "barrier", "group-split")

/* ---- settings ---------------------------------------------------------------- */

/* The timeout in microseconds: TIMEOUT_UNSET until read from the
 * environment, TIMEOUT_FOREVER, TIMEOUT_BAD_ENV when MOELAB_COMM_TIMEOUT
 * holds no valid timeout (collectives then fail saying so). */
enum { TIMEOUT_UNSET = -1, TIMEOUT_FOREVER = -2, TIMEOUT_BAD_ENV = -3 };
static _Atomic int64_t timeout_us = TIMEOUT_UNSET;
static atomic_bool check_on = true;

/* SECONDS as stored microseconds, or TIMEOUT_BAD_ENV when it is not a
 * timeout (negative, zero, NaN). */
static int64_t timeout_code(double seconds)
{
    if (!(seconds > 0)) return TIMEOUT_BAD_ENV;
    if (isinf(seconds) || seconds > 1e12) return TIMEOUT_FOREVER;
    int64_t us = (int64_t)(seconds * 1e6);
    return us > 0 ? us : 1;
}

double moe_comm_timeout(void)
{
    int64_t us = atomic_load(&timeout_us);
    if (us == TIMEOUT_UNSET) {
        int64_t want = 300 * (int64_t)1000000;
        const char *env = getenv("MOELAB_COMM_TIMEOUT");
        if (env && *env) {
            char *end;
            double v = strtod(env, &end);
            while (*end == ' ') end++;
            want = end != env && !*end ? timeout_code(v) : TIMEOUT_BAD_ENV;
        }
        int64_t expect = TIMEOUT_UNSET;
        atomic_compare_exchange_strong(&timeout_us, &expect, want);
        us = atomic_load(&timeout_us);
    }
    if (us == TIMEOUT_FOREVER) return INFINITY;
    if (us == TIMEOUT_BAD_ENV) return NAN;
    return (double)us / 1e6;
}

moe_status moe_comm_set_timeout(double seconds)
{
    int64_t code = timeout_code(seconds);
    if (code == TIMEOUT_BAD_ENV)
        return moe_fail(MOE_ERR_ARG, "set-comm-timeout!", "%g s is not a timeout: give a positive number of "
                        "seconds, or infinity to wait forever", seconds);
    atomic_store(&timeout_us, code);
    return MOE_OK;
}

moe_status moe_comm_wait_limit(const char *op, double *seconds)
{
    *seconds = moe_comm_timeout();
    if (isnan(*seconds))
        return moe_fail(MOE_ERR_ARG, op, "MOELAB_COMM_TIMEOUT='%s' is not a timeout: give a positive number "
                        "of seconds, or inf to wait forever", getenv("MOELAB_COMM_TIMEOUT") ? getenv("MOELAB_COMM_TIMEOUT") : "");
    return MOE_OK;
}

void moe_comm_set_check(bool on) { atomic_store(&check_on, on); }
bool moe_comm_check(void) { return atomic_load(&check_on); }

/* ---- peer checks (backends that cannot see their peers' arguments) ---------- */

typedef struct peer_desc {
    int64_t kind, count, dtype, arg, status;
    char msg[200];
} peer_desc;

static const char *dtype_label(int64_t d)
{
    return d >= 0 && d < MOE_DTYPE_COUNT ? moe_dtype_name((moe_dtype)d) : "?";
}

/* Exchange descriptors over G (its own all_gather of bytes) and compare:
 * every rank reaches the same verdict. LOCAL is this rank's status so far
 * (its message is sent along, so peers can name it). */
static moe_status exchange_check(moe_group *g, moe_coll_kind kind, int64_t count, moe_dtype dt,
                                 int64_t arg, moe_status local)
{
    const char *op = moe_coll_name(kind);
    peer_desc mine = {kind, count, dt, arg, local, {0}};
    if (local != MOE_OK) snprintf(mine.msg, sizeof mine.msg, "%s", moe_last_error());
    peer_desc *all = calloc((size_t)g->size, sizeof *all);
    if (!all)
        return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of peer-check descriptors (%d ranks)",
                        (size_t)g->size * sizeof *all, g->size);
    moe_status st = g->ops->gather_entry ? g->ops->gather_entry(g, all, &mine, (int64_t)sizeof mine, op)
                                         : g->ops->all_gather(g, all, &mine, (int64_t)sizeof mine, MOE_BOOL);
    if (st != MOE_OK) {
        free(all);
        return st;
    }
    if (local != MOE_OK) {
        free(all);
        return moe_fail(local, op, "%s", mine.msg); /* keep this rank's own message */
    }
    for (int q = 0; q < g->size; q++)
        if (all[q].status != MOE_OK) {
            st = moe_fail((moe_status)all[q].status, op, "rank %d failed: %s", q, all[q].msg);
            free(all);
            return st;
        }
    for (int q = 1; q < g->size; q++) {
        const peer_desc *a = &all[0], *b = &all[q];
        if (b->kind != a->kind)
            st = moe_fail(MOE_ERR_STATE, op, "collectives out of order: rank 0 called %s, rank %d called %s",
                          moe_coll_name((moe_coll_kind)a->kind), q, moe_coll_name((moe_coll_kind)b->kind));
        else if (b->count != a->count || b->dtype != a->dtype)
            st = moe_fail(MOE_ERR_SHAPE, op, "size mismatch: rank 0 has %lld elements (%s), rank %d has %lld elements (%s)",
                          (long long)a->count, dtype_label(a->dtype), q, (long long)b->count, dtype_label(b->dtype));
        else if (b->arg != a->arg && kind == MOE_COLL_BROADCAST)
            st = moe_fail(MOE_ERR_ARG, op, "root mismatch: rank 0 passed %lld, rank %d passed %lld",
                          (long long)a->arg, q, (long long)b->arg);
        else if (b->arg != a->arg)
            st = moe_fail(MOE_ERR_ARG, op, "reduce op mismatch: rank 0 passed %s, rank %d passed %s",
                          moe_reduce_op_name((moe_reduce_op)a->arg), q, moe_reduce_op_name((moe_reduce_op)b->arg));
        if (st != MOE_OK) break;
    }
    free(all);
    return st;
}

moe_status moe_comm_check_peers(moe_group *g, moe_coll_kind kind, int64_t count, moe_dtype dt,
                                int64_t op_or_root)
{
    return exchange_check(g, kind, count, dt, op_or_root, MOE_OK);
}

/* Every public collective passes through here after its local checks, with
 * LOCAL their result; G is the group the ranks synchronise on. FORCE asks for
 * the descriptor exchange even on backends that check by themselves (the work
 * will run on another communicator, e.g. NCCL). A local failure does not
 * poison a threads world: argument errors are usually the same on every rank
 * (a dim that does not divide), and a rank that fails alone either returns
 * the error (the runner poisons the world) or goes on to another collective
 * (its peers report "collectives out of order") or returns (its peers report
 * that it returned without entering). */
moe_status moe_comm_enter(moe_group *g, moe_coll_kind kind, int64_t count, moe_dtype dt, int64_t arg,
                        moe_status local, bool force)
{
    if (!g) return local;
    if ((g->ops->needs_check || force) && moe_comm_check()) {
        moe_status st = exchange_check(g, kind, count, dt, arg, local);
        if (st != MOE_OK && local == MOE_OK) moe_comm_poison(g, st);
        return st;
    }
    return local;
}

/* After the rendezvous: a failure on this rank poisons the group. */
moe_status moe_comm_done(moe_group *g, moe_status st)
{
    if (st != MOE_OK) moe_comm_poison(g, st);
    return st;
}

/* ---- argument checks -------------------------------------------------------------- */

moe_status moe_comm_check_tensor(const char *op, const moe_tensor *t)
{
    if (!t) return moe_fail(MOE_ERR_ARG, op, "tensor argument is NULL");
    if (t->device != MOE_CPU && t->device != MOE_CUDA)
        return moe_fail(MOE_ERR_DEVICE, op, "unsupported device %s", moe_device_name(t->device));
    return MOE_OK;
}

moe_status moe_comm_check_reduce(const char *op, const moe_tensor *t, moe_reduce_op rop)
{
    MOE_TRY(moe_comm_check_tensor(op, t));
    if ((unsigned)rop >= MOE_REDUCE_OP_COUNT)
        return moe_fail(MOE_ERR_ARG, op, "unknown reduce op %d", (int)rop);
    if (t->dtype == MOE_BOOL && (rop == MOE_REDUCE_SUM || rop == MOE_REDUCE_AVG))
        return moe_fail(MOE_ERR_DTYPE, op, "%s of a bool tensor: use max (or) or min (and), or convert to i64",
                        moe_reduce_op_name(rop));
    return MOE_OK;
}

moe_status moe_comm_check_inplace(const char *op, const moe_tensor *t)
{
    if (moe_tensor_needs_grad(t))
        return moe_fail(MOE_ERR_STATE, op, "in-place collective on a tensor that requires grad "
                        "(shape %s): use the out-of-place form or disable grad mode", moe_shape_str(t));
    return MOE_OK;
}

/* ---- staging ------------------------------------------------------------------------
 * A collective runs on a contiguous buffer in the memory of the group that
 * executes it: the NCCL communicator for CUDA tensors when attached, else the
 * host group (CUDA tensors then travel through host memory). */

static moe_group *exec_group(moe_group *g, const moe_tensor *t)
{
    return t->device == MOE_CUDA && g->nccl ? g->nccl : g;
}

/* *OUT: a contiguous copy of T (or T retained) on DEVICE in DTYPE; no autograd. */
moe_status moe_comm_stage(moe_tensor **out, moe_tensor *t, moe_device device, moe_dtype dtype)
{
    *out = NULL;
    moe_status st;
    MOE_NO_GRAD_BEGIN;
    moe_tensor *a = NULL, *b = NULL;
    st = moe_to_device(&a, t, device);
    if (st == MOE_OK) st = moe_to_dtype(&b, a, dtype);
    if (st == MOE_OK) st = moe_contiguous(out, b);
    moe_tensor_release(a);
    moe_tensor_release(b);
    MOE_NO_GRAD_END;
    return st;
}

/* DST ← SRC (same shape), converting dtype and device; fails as OP. */
moe_status moe_comm_unstage(moe_tensor *dst, moe_tensor *src, const char *op)
{
    if (dst == src) return MOE_OK;
    MOE_NO_GRAD_BEGIN;
    moe_tensor *a = NULL;
    moe_status st = MOE_OK;
    if (dst->device == MOE_CPU) {
        st = moe_to_device(&a, src, MOE_CPU);
        if (st == MOE_OK) {
            if (dst->dtype == a->dtype && moe_tensor_is_contiguous(dst))
                memcpy(moe_tensor_data(dst), moe_tensor_data(a), moe_tensor_nbytes(dst));
            else
                moe_cpu_copy(dst, a);
        }
    } else {
        /* device destination: convert on the host, move, then copy in place */
        moe_tensor *h = NULL, *d = NULL;
        st = moe_to_device(&h, src, MOE_CPU);
        if (st == MOE_OK) st = moe_to_dtype(&a, h, dst->dtype);
        if (st == MOE_OK) st = moe_to_device(&d, a, dst->device);
        if (st == MOE_OK && !moe_tensor_is_contiguous(dst))
            st = moe_fail(MOE_ERR_UNSUPPORTED, op, "writing into a non-contiguous %s tensor "
                          "on the GPU is not supported: make it contiguous first", moe_shape_str(dst));
#ifdef MOELAB_HAVE_CUDA
        if (st == MOE_OK)
            st = moe_cuda_memcpy(moe_tensor_data(dst), moe_tensor_data(d), moe_tensor_nbytes(dst), MOE_COPY_D2D);
#endif
        moe_tensor_release(h);
        moe_tensor_release(d);
    }
    moe_tensor_release(a);
    MOE_NO_GRAD_END;
    return st;
}

/* The output R of a collective (in its staging device and dtype) as a tensor
 * of T's device and dtype: R itself (retained) when they already match. */
static moe_status unstaged_result(moe_tensor **res, moe_tensor *r, const moe_tensor *t, const char *op)
{
    if (r->device == t->device && r->dtype == t->dtype) {
        *res = moe_tensor_retain(r);
        return MOE_OK;
    }
    MOE_TRY(moe_tensor_empty(res, t->dtype, t->device, r->ndim, r->shape));
    return moe_comm_unstage(*res, r, op);
}

/* The device and dtype a collective on T runs in on group EG. */
static void exec_layout(const moe_group *eg, const moe_tensor *t, bool reduces, moe_device *dev,
                        moe_dtype *dt)
{
    *dev = eg->ops->name[0] == 'n' ? MOE_CUDA : MOE_CPU; /* "nccl" */
    *dt = t->dtype;
    if (reduces && t->dtype == MOE_BF16 && !eg->ops->native_bf16) *dt = MOE_F32;
}

/* ---- all-reduce ------------------------------------------------------------------------ */

/* Reduce T in place over G (G non-NULL). */
static moe_status all_reduce_inplace(moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    moe_group *eg = exec_group(g, t);
    moe_device dev;
    moe_dtype dt;
    exec_layout(eg, t, true, &dev, &dt);
    moe_tensor *w = NULL;
    moe_status st = moe_comm_stage(&w, t, dev, dt);
    if (st == MOE_OK) st = eg->ops->all_reduce(eg, moe_tensor_data(w), moe_tensor_numel(w), dt, op);
    if (st == MOE_OK) st = moe_comm_unstage(t, w, "all-reduce");
    moe_tensor_bump_version(t);
    moe_tensor_release(w);
    return st;
}

moe_status moe_all_reduce_(moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    const char *opn = "all-reduce";
    moe_status st = moe_comm_check_reduce(opn, t, op);
    if (st == MOE_OK) st = moe_comm_check_inplace(opn, t);
    if (!g) return st;
    MOE_TRY(moe_comm_enter(g, MOE_COLL_ALL_REDUCE, st == MOE_OK ? moe_tensor_numel(t) : 0,
                  st == MOE_OK ? t->dtype : MOE_F32, op, st, t && exec_group(g, t) != g));
    return moe_comm_done(g, all_reduce_inplace(t, op, g));
}

/* Out-of-place all-reduce into a fresh contiguous tensor (no autograd). */
moe_status moe_comm_all_reduce_copy(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    *out = NULL;
    moe_status st = moe_comm_check_reduce("all-reduce", t, op);
    moe_tensor *r = NULL;
    if (st == MOE_OK) {
        MOE_NO_GRAD_BEGIN;
        st = moe_clone(&r, t);
        MOE_NO_GRAD_END;
    }
    if (g) {
        st = moe_comm_enter(g, MOE_COLL_ALL_REDUCE, st == MOE_OK ? moe_tensor_numel(t) : 0,
                   st == MOE_OK ? t->dtype : MOE_F32, op, st, t && exec_group(g, t) != g);
        if (st == MOE_OK) st = moe_comm_done(g, all_reduce_inplace(r, op, g));
    }
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return MOE_OK;
}

/* ---- all-gather -------------------------------------------------------------------------- */

/* OUT [N*d0, ...] (0-dim T: [N]) */
static moe_status gathered_shape(const moe_tensor *t, int n, int *ndim, int64_t *shape)
{
    if (t->ndim == 0) {
        *ndim = 1;
        shape[0] = n;
    } else {
        *ndim = t->ndim;
        memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
        shape[0] *= n;
    }
    return MOE_OK;
}

moe_status moe_comm_all_gather(moe_tensor **out, moe_tensor *t, moe_group *g)
{
    *out = NULL;
    const char *opn = "all-gather";
    moe_status st = moe_comm_check_tensor(opn, t);
    int n = moe_group_size(g);
    if (!g) {
        if (st != MOE_OK) return st;
        int nd;
        int64_t shape[MOE_MAX_DIMS];
        gathered_shape(t, 1, &nd, shape);
        MOE_NO_GRAD_BEGIN;
        moe_tensor *c = NULL;
        st = moe_clone(&c, t);
        if (st == MOE_OK) st = moe_reshape(out, c, nd, shape);
        moe_tensor_release(c);
        MOE_NO_GRAD_END;
        return st;
    }
    MOE_TRY(moe_comm_enter(g, MOE_COLL_ALL_GATHER, st == MOE_OK ? moe_tensor_numel(t) : 0,
                  st == MOE_OK ? t->dtype : MOE_F32, 0, st, t && exec_group(g, t) != g));
    moe_group *eg = exec_group(g, t);
    moe_device dev;
    moe_dtype dt;
    exec_layout(eg, t, false, &dev, &dt);
    int nd;
    int64_t shape[MOE_MAX_DIMS];
    gathered_shape(t, n, &nd, shape);
    moe_tensor *w = NULL, *r = NULL, *res = NULL;
    st = moe_comm_stage(&w, t, dev, dt);
    if (st == MOE_OK) st = moe_tensor_empty(&r, dt, dev, nd, shape);
    if (st == MOE_OK)
        st = eg->ops->all_gather(eg, moe_tensor_data(r), moe_tensor_data(w), moe_tensor_numel(w), dt);
    if (st == MOE_OK) st = unstaged_result(&res, r, t, opn);
    moe_tensor_release(w);
    moe_tensor_release(r);
    if (st != MOE_OK) {
        moe_tensor_release(res);
        return moe_comm_done(g, st);
    }
    *out = res;
    return MOE_OK;
}

/* ---- reduce-scatter ------------------------------------------------------------------------ */

moe_status moe_comm_reduce_scatter(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    *out = NULL;
    const char *opn = "reduce-scatter";
    int n = moe_group_size(g);
    moe_status st = moe_comm_check_reduce(opn, t, op);
    if (st == MOE_OK && t->ndim == 0)
        st = moe_fail(MOE_ERR_SHAPE, opn, "input must have at least one dim (dim 0 is split over %d ranks)", n);
    if (st == MOE_OK && t->shape[0] % n != 0)
        st = moe_fail(MOE_ERR_SHAPE, opn, "dim 0 of %s does not divide by the group size %d",
                      moe_shape_str(t), n);
    if (!g) {
        if (st != MOE_OK) return st;
        MOE_NO_GRAD_BEGIN;
        st = moe_clone(out, t);
        MOE_NO_GRAD_END;
        return st;
    }
    MOE_TRY(moe_comm_enter(g, MOE_COLL_REDUCE_SCATTER, st == MOE_OK ? moe_tensor_numel(t) : 0,
                  st == MOE_OK ? t->dtype : MOE_F32, op, st, t && exec_group(g, t) != g));
    moe_group *eg = exec_group(g, t);
    moe_device dev;
    moe_dtype dt;
    exec_layout(eg, t, true, &dev, &dt);
    int64_t shape[MOE_MAX_DIMS];
    memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    shape[0] /= n;
    moe_tensor *w = NULL, *r = NULL, *res = NULL;
    st = moe_comm_stage(&w, t, dev, dt);
    if (st == MOE_OK) st = moe_tensor_empty(&r, dt, dev, t->ndim, shape);
    if (st == MOE_OK)
        st = eg->ops->reduce_scatter(eg, moe_tensor_data(r), moe_tensor_data(w), moe_tensor_numel(r), dt, op);
    if (st == MOE_OK) st = unstaged_result(&res, r, t, opn);
    moe_tensor_release(w);
    moe_tensor_release(r);
    if (st != MOE_OK) {
        moe_tensor_release(res);
        return moe_comm_done(g, st);
    }
    *out = res;
    return MOE_OK;
}

/* ---- all-to-all ------------------------------------------------------------------------------ */

/* Exchanged per peer before the data: rows sent, row width W, dtype. */
enum { A2A_ROWS, A2A_WIDTH, A2A_DTYPE, A2A_INFO };

moe_status moe_comm_all_to_all(moe_tensor **out, int64_t *recv_splits, moe_tensor *t,
                                  const int64_t *send_splits, moe_group *g)
{
    *out = NULL;
    const char *opn = "all-to-all";
    int n = moe_group_size(g);
    moe_status st = moe_comm_check_tensor(opn, t);
    if (st == MOE_OK && t->ndim == 0)
        st = moe_fail(MOE_ERR_SHAPE, opn, "input must have at least one dim (rows are sent along dim 0)");
    int64_t *info = NULL, *sc = NULL; /* info: [2][N][A2A_INFO]; sc: [4][N] element counts */
    int64_t width = 1;
    if (st == MOE_OK) {
        info = calloc((size_t)n * 2 * A2A_INFO, sizeof *info);
        sc = calloc((size_t)n * 4, sizeof *sc);
        if (!info || !sc)
            st = moe_fail(MOE_ERR_NOMEM, opn, "out of memory for %zu bytes of all-to-all splits (%d ranks)",
                          ((size_t)n * 2 * A2A_INFO + (size_t)n * 4) * sizeof(int64_t), n);
    }
    if (st == MOE_OK) {
        for (int d = 1; d < t->ndim; d++) width *= t->shape[d];
        int64_t total = 0;
        for (int q = 0; q < n && st == MOE_OK; q++) {
            int64_t s = send_splits ? send_splits[q] : (t->shape[0] % n == 0 ? t->shape[0] / n : -1);
            if (!send_splits && s < 0)
                st = moe_fail(MOE_ERR_SHAPE, opn, "no send splits given and dim 0 of %s does not divide by "
                              "the group size %d", moe_shape_str(t), n);
            else if (s < 0)
                st = moe_fail(MOE_ERR_ARG, opn, "send split %d is negative (%lld)", q, (long long)s);
            info[q * A2A_INFO + A2A_ROWS] = s;
            info[q * A2A_INFO + A2A_WIDTH] = width;
            info[q * A2A_INFO + A2A_DTYPE] = t->dtype;
            total += s;
        }
        if (st == MOE_OK && total != t->shape[0])
            st = moe_fail(MOE_ERR_SHAPE, opn, "send splits sum to %lld but dim 0 of %s is %lld",
                          (long long)total, moe_shape_str(t), (long long)t->shape[0]);
    }
    if (g) {
        st = moe_comm_enter(g, MOE_COLL_ALL_TO_ALL, st == MOE_OK ? width : 0, st == MOE_OK ? t->dtype : MOE_F32, 0,
                   st, t && exec_group(g, t) != g);
    }
    if (st != MOE_OK) {
        free(info);
        free(sc);
        return st;
    }
    int64_t *rinfo = info + (size_t)n * A2A_INFO;
    if (g) {
        /* split exchange over the host group: A2A_INFO numbers to each peer */
        int64_t *ones = sc; /* [N] counts of A2A_INFO */
        for (int q = 0; q < n; q++) ones[q] = A2A_INFO;
        st = g->ops->all_to_all(g, rinfo, ones, info, ones, MOE_I64);
        for (int q = 1; q < n && st == MOE_OK; q++)
            if (rinfo[q * A2A_INFO + A2A_WIDTH] != rinfo[A2A_WIDTH] ||
                rinfo[q * A2A_INFO + A2A_DTYPE] != rinfo[A2A_DTYPE])
                st = moe_fail(MOE_ERR_SHAPE, opn, "row mismatch: rank 0 sends rows of %lld elements (%s), "
                              "rank %d rows of %lld elements (%s)",
                              (long long)rinfo[A2A_WIDTH], dtype_label(rinfo[A2A_DTYPE]), q,
                              (long long)rinfo[q * A2A_INFO + A2A_WIDTH],
                              dtype_label(rinfo[q * A2A_INFO + A2A_DTYPE]));
    } else {
        memcpy(rinfo, info, sizeof(int64_t) * A2A_INFO);
    }
    moe_tensor *w = NULL, *r = NULL, *res = NULL;
    moe_group *eg = g ? exec_group(g, t) : NULL;
    int64_t rows = 0;
    for (int q = 0; q < n; q++) rows += rinfo[q * A2A_INFO + A2A_ROWS];
    int64_t shape[MOE_MAX_DIMS];
    memcpy(shape, t->shape, sizeof(int64_t) * (size_t)t->ndim);
    shape[0] = rows;
    if (st == MOE_OK && !g) {
        MOE_NO_GRAD_BEGIN;
        st = moe_clone(&res, t);
        MOE_NO_GRAD_END;
    } else if (st == MOE_OK) {
        moe_device dev;
        moe_dtype dt;
        exec_layout(eg, t, false, &dev, &dt);
        int64_t *send_counts = sc, *recv_counts = sc + n;
        for (int q = 0; q < n; q++) {
            send_counts[q] = info[q * A2A_INFO + A2A_ROWS] * width;
            recv_counts[q] = rinfo[q * A2A_INFO + A2A_ROWS] * width;
        }
        st = moe_comm_stage(&w, t, dev, dt);
        if (st == MOE_OK) st = moe_tensor_empty(&r, dt, dev, t->ndim, shape);
        if (st == MOE_OK)
            st = eg->ops->all_to_all(eg, moe_tensor_data(r), recv_counts, moe_tensor_data(w), send_counts, dt);
        if (st == MOE_OK) st = unstaged_result(&res, r, t, opn);
    }
    if (st == MOE_OK && recv_splits)
        for (int q = 0; q < n; q++) recv_splits[q] = rinfo[q * A2A_INFO + A2A_ROWS];
    moe_tensor_release(w);
    moe_tensor_release(r);
    free(info);
    free(sc);
    if (st != MOE_OK) {
        moe_tensor_release(res);
        return g ? moe_comm_done(g, st) : st;
    }
    *out = res;
    return MOE_OK;
}

/* ---- broadcast ------------------------------------------------------------------------------------ */

moe_status moe_comm_broadcast(moe_tensor *t, int root, moe_group *g, bool inplace_check)
{
    const char *opn = "broadcast";
    moe_status st = moe_comm_check_tensor(opn, t);
    if (st == MOE_OK && inplace_check) st = moe_comm_check_inplace(opn, t);
    if (st == MOE_OK && (root < 0 || root >= moe_group_size(g)))
        st = moe_fail(MOE_ERR_ARG, opn, "root %d is not a rank of the group (size %d)", root, moe_group_size(g));
    if (!g) return st;
    MOE_TRY(moe_comm_enter(g, MOE_COLL_BROADCAST, st == MOE_OK ? moe_tensor_numel(t) : 0,
                  st == MOE_OK ? t->dtype : MOE_F32, root, st, t && exec_group(g, t) != g));
    moe_group *eg = exec_group(g, t);
    moe_device dev;
    moe_dtype dt;
    exec_layout(eg, t, false, &dev, &dt);
    moe_tensor *w = NULL;
    st = moe_comm_stage(&w, t, dev, dt);
    if (st == MOE_OK) st = eg->ops->broadcast(eg, moe_tensor_data(w), moe_tensor_numel(w), dt, root);
    if (st == MOE_OK && g->rank != root) st = moe_comm_unstage(t, w, opn);
    if (g->rank != root) moe_tensor_bump_version(t);
    moe_tensor_release(w);
    return moe_comm_done(g, st);
}

moe_status moe_broadcast_(moe_tensor *t, int root, moe_group *g) { return moe_comm_broadcast(t, root, g, true); }

/* ---- point to point ---------------------------------------------------------------------------------- */

static moe_status check_peer(const char *op, moe_group *g, int peer, int tag)
{
    if (peer < 0 || peer >= moe_group_size(g))
        return moe_fail(MOE_ERR_ARG, op, "peer %d is not a rank of the group (size %d)", peer, moe_group_size(g));
    if (peer == moe_group_rank(g))
        return moe_fail(MOE_ERR_ARG, op, "rank %d cannot %s itself", peer,
                        strcmp(op, "send!") == 0 ? "send to" : "receive from");
    if (tag < 0) return moe_fail(MOE_ERR_ARG, op, "tag %d is negative", tag);
    return MOE_OK;
}

moe_status moe_send(moe_tensor *t, int dst, int tag, moe_group *g)
{
    MOE_TRY(moe_comm_check_tensor("send!", t));
    MOE_TRY(check_peer("send!", g, dst, tag));
    moe_group *eg = exec_group(g, t);
    moe_device dev;
    moe_dtype dt;
    exec_layout(eg, t, false, &dev, &dt);
    moe_tensor *w = NULL;
    moe_status st = moe_comm_stage(&w, t, dev, dt);
    if (st == MOE_OK) st = eg->ops->send(eg, moe_tensor_data(w), moe_tensor_numel(w), dt, dst, tag);
    moe_tensor_release(w);
    return st;
}

moe_status moe_recv_(moe_tensor *t, int src, int tag, moe_group *g)
{
    MOE_TRY(moe_comm_check_tensor("recv!", t));
    MOE_TRY(moe_comm_check_inplace("recv!", t));
    MOE_TRY(check_peer("recv!", g, src, tag));
    moe_group *eg = exec_group(g, t);
    moe_device dev;
    moe_dtype dt;
    exec_layout(eg, t, false, &dev, &dt);
    moe_tensor *w = NULL;
    moe_status st;
    if (dev == t->device && moe_tensor_is_contiguous(t)) {
        w = moe_tensor_retain(t);
        st = MOE_OK;
    } else {
        st = moe_tensor_empty(&w, dt, dev, t->ndim, t->shape);
    }
    if (st == MOE_OK) st = eg->ops->recv(eg, moe_tensor_data(w), moe_tensor_numel(w), dt, src, tag);
    if (st == MOE_OK) st = moe_comm_unstage(t, w, "recv!");
    moe_tensor_bump_version(t);
    moe_tensor_release(w);
    return st;
}

moe_status moe_barrier(moe_group *g)
{
    if (!g) return MOE_OK;
    MOE_TRY(moe_comm_enter(g, MOE_COLL_BARRIER, 0, MOE_BOOL, 0, MOE_OK, false));
    return moe_comm_done(g, g->ops->barrier(g));
}
