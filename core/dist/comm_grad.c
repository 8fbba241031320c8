/* comm_grad.c — the differentiable collectives: each forward (the cores in
 * comm.c) with its backward side by side, and the autograd nodes that hold
 * the group. The gradient convention is in comm.h. */
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "internal.h"

/* ---- recording ------------------------------------------------------------------ */

/* iargs[0]: reduce op. ctx: the group (a reference). */
static void group_ctx_free(void *ctx) { moe_group_release(ctx); }

static moe_status record_with_group(moe_tensor *out, const char *name, moe_backward_fn bw,
                                    moe_tensor *in, moe_group *g, int64_t iarg0, moe_node **node)
{
    *node = NULL;
    if (!moe_tensor_needs_grad(in)) return MOE_OK;
    MOE_TRY(moe_node_new(node, name, bw, 1, &in));
    (*node)->ctx = moe_group_retain(g);
    (*node)->ctx_free = group_ctx_free;
    (*node)->iargs[0] = iarg0;
    moe_node_attach(*node, out);
    return MOE_OK;
}

/* Run a collective that made *OUT, then record its node; on failure drop *OUT. */
static moe_status finish_record(moe_status st, moe_tensor **out, const char *name, moe_backward_fn bw,
                                moe_tensor *in, moe_group *g, int64_t iarg0)
{
    if (st != MOE_OK) return st;
    moe_node *node;
    st = record_with_group(*out, name, bw, in, g, iarg0, &node);
    if (st != MOE_OK) {
        moe_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

/* ---- all-reduce ------------------------------------------------------------------------ */

static moe_status all_reduce_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_comm_all_reduce_copy(&gin[0], g, (moe_reduce_op)n->iargs[0], n->ctx);
}

moe_status moe_all_reduce(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    *out = NULL;
    moe_status st = MOE_OK;
    if (t && (op == MOE_REDUCE_MAX || op == MOE_REDUCE_MIN) && moe_tensor_needs_grad(t))
        st = moe_fail(MOE_ERR_UNSUPPORTED, "all-reduce", "%s is not differentiable: detach the input "
                      "or use sum/avg", moe_reduce_op_name(op));
    if (st != MOE_OK) {
        if (g) moe_comm_enter(g, MOE_COLL_ALL_REDUCE, 0, MOE_F32, op, st, false);
        return st;
    }
    return finish_record(moe_comm_all_reduce_copy(out, t, op, g), out, "all-reduce", all_reduce_backward, t, g, op);
}

static moe_status identity_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    (void)n;
    gin[0] = moe_tensor_retain(g);
    return MOE_OK;
}

moe_status moe_all_reduce_identity_grad(moe_tensor **out, moe_tensor *t, moe_group *g)
{
    *out = NULL;
    return finish_record(moe_comm_all_reduce_copy(out, t, MOE_REDUCE_SUM, g), out, "all_reduce_identity_grad",
                         identity_backward, t, g, MOE_REDUCE_SUM);
}

static moe_status sum_grad_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    return moe_comm_all_reduce_copy(&gin[0], g, MOE_REDUCE_SUM, n->ctx);
}

moe_status moe_identity_all_reduce_grad(moe_tensor **out, moe_tensor *t, moe_group *g)
{
    *out = NULL;
    MOE_TRY(moe_comm_check_tensor("identity-all-reduce-grad", t));
    MOE_TRY(moe_detach(out, t));
    return finish_record(MOE_OK, out, "identity_all_reduce_grad", sum_grad_backward, t, g,
                         MOE_REDUCE_SUM);
}

/* ---- all-gather -------------------------------------------------------------------------- */

/* iargs[0]: input ndim (0-dim input: the gradient is reshaped back). */
static moe_status all_gather_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_tensor *r = NULL;
    MOE_TRY(moe_comm_reduce_scatter(&r, g, MOE_REDUCE_SUM, n->ctx));
    if (n->iargs[0] != 0) {
        gin[0] = r;
        return MOE_OK;
    }
    moe_status st = moe_reshape(&gin[0], r, 0, NULL);
    moe_tensor_release(r);
    return st;
}

moe_status moe_all_gather(moe_tensor **out, moe_tensor *t, moe_group *g)
{
    *out = NULL;
    return finish_record(moe_comm_all_gather(out, t, g), out, "all-gather", all_gather_backward, t, g,
                         t ? t->ndim : 0);
}

/* ---- reduce-scatter ------------------------------------------------------------------------ */

static moe_status reduce_scatter_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_group *grp = n->ctx;
    if (n->iargs[0] == MOE_REDUCE_SUM) return moe_comm_all_gather(&gin[0], g, grp);
    moe_tensor *r = NULL;
    MOE_TRY(moe_comm_all_gather(&r, g, grp));
    moe_status st = moe_mul_scalar(&gin[0], r, 1.0 / moe_group_size(grp));
    moe_tensor_release(r);
    return st;
}

moe_status moe_reduce_scatter(moe_tensor **out, moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    *out = NULL;
    if (t && (op == MOE_REDUCE_MAX || op == MOE_REDUCE_MIN) && moe_tensor_needs_grad(t)) {
        moe_status st = moe_fail(MOE_ERR_UNSUPPORTED, "reduce-scatter", "%s is not differentiable: "
                                 "detach the input or use sum/avg", moe_reduce_op_name(op));
        if (g) moe_comm_enter(g, MOE_COLL_REDUCE_SCATTER, 0, MOE_F32, op, st, false);
        return st;
    }
    return finish_record(moe_comm_reduce_scatter(out, t, op, g), out, "reduce-scatter",
                         reduce_scatter_backward, t, g, op);
}

/* ---- all-to-all ------------------------------------------------------------------------------ */

typedef struct a2a_ctx {
    moe_group *g;
    int n;
    int64_t *splits; /* [2][N]: forward send splits, forward receive splits */
} a2a_ctx;

static void a2a_ctx_free(void *p)
{
    a2a_ctx *c = p;
    moe_group_release(c->g);
    free(c->splits);
    free(c);
}

static moe_status all_to_all_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    a2a_ctx *c = n->ctx;
    /* the reverse exchange: send back what was received */
    return moe_comm_all_to_all(&gin[0], NULL, g, c->splits + c->n, c->g);
}

moe_status moe_all_to_all(moe_tensor **out, int64_t *recv_splits, moe_tensor *t,
                          const int64_t *send_splits, moe_group *g)
{
    *out = NULL;
    int n = moe_group_size(g);
    int64_t *splits = malloc(sizeof(int64_t) * 2 * (size_t)n);
    if (!splits) {
        moe_status st = moe_fail(MOE_ERR_NOMEM, "all-to-all", "out of memory for %zu bytes of all-to-all splits "
                                 "(%d ranks)", sizeof(int64_t) * 2 * (size_t)n, n);
        if (g) moe_comm_enter(g, MOE_COLL_ALL_TO_ALL, 0, MOE_F32, 0, st, false);
        return st;
    }
    moe_status st = moe_comm_all_to_all(out, splits + n, t, send_splits, g);
    if (st == MOE_OK && recv_splits) memcpy(recv_splits, splits + n, sizeof(int64_t) * (size_t)n);
    if (st != MOE_OK || !moe_tensor_needs_grad(t)) {
        free(splits);
        return st;
    }
    for (int q = 0; q < n; q++)
        splits[q] = send_splits ? send_splits[q] : t->shape[0] / n;
    a2a_ctx *c = malloc(sizeof *c);
    if (!c) {
        free(splits);
        moe_tensor_release(*out);
        *out = NULL;
        return moe_fail(MOE_ERR_NOMEM, "all-to-all", "out of memory for %zu bytes of an all-to-all autograd node",
                        sizeof *c);
    }
    c->g = moe_group_retain(g);
    c->n = n;
    c->splits = splits;
    st = moe_autograd_record(*out, "all-to-all", all_to_all_backward, 1, &t, 0, NULL, c, a2a_ctx_free);
    if (st != MOE_OK) {
        moe_tensor_release(*out);
        *out = NULL;
    }
    return st;
}

/* ---- broadcast ------------------------------------------------------------------------------------ */

static moe_status broadcast_backward(moe_node *n, moe_tensor *g, moe_tensor **gin)
{
    moe_group *grp = n->ctx;
    moe_tensor *r = NULL;
    MOE_TRY(moe_comm_all_reduce_copy(&r, g, MOE_REDUCE_SUM, grp));
    if (moe_group_rank(grp) == n->iargs[0]) gin[0] = r;
    else moe_tensor_release(r); /* zero gradient off the root */
    return MOE_OK;
}

moe_status moe_broadcast(moe_tensor **out, moe_tensor *t, int root, moe_group *g)
{
    *out = NULL;
    moe_tensor *r = NULL;
    moe_status st = MOE_OK;
    if (t) {
        MOE_NO_GRAD_BEGIN;
        st = moe_clone(&r, t);
        MOE_NO_GRAD_END;
    }
    if (st != MOE_OK) {
        if (g) moe_comm_enter(g, MOE_COLL_BROADCAST, 0, MOE_F32, root, st, false);
        return st;
    }
    st = moe_comm_broadcast(r, root, g, false);
    if (st != MOE_OK) {
        moe_tensor_release(r);
        return st;
    }
    *out = r;
    return finish_record(MOE_OK, out, "broadcast", broadcast_backward, t, g, root);
}
