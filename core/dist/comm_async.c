/* comm_async.c — asynchronous collectives: work handles, started by the
 * *_async forms and completed by moe_work_wait (comm.h). A backend with an
 * all_reduce_start overlaps the all-reduce; every other form runs eagerly at
 * start and its handle only carries the result. */
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"
#include "internal.h"

/* A handle for collective OP on G. */
static moe_status work_new(moe_work **out, moe_group *g, const char *op)
{
    *out = calloc(1, sizeof **out);
    if (!*out) return moe_fail(MOE_ERR_NOMEM, op, "out of memory for %zu bytes of a work handle", sizeof **out);
    (*out)->g = moe_group_retain(g);
    return MOE_OK;
}

static void work_free(moe_work *w)
{
    for (int i = 0; i < 4; i++) moe_tensor_release(w->keep[i]);
    moe_tensor_release(w->copy_back);
    moe_group_release(w->g);
    free(w->message);
    free(w);
}

/* Wrap an eagerly run collective's result in a completed handle. */
static moe_status work_eager(moe_work **work, moe_group *g, const char *op, moe_status st)
{
    *work = NULL;
    moe_status ws = work_new(work, g, op);
    if (ws != MOE_OK) return ws;
    (*work)->status = st;
    if (st != MOE_OK) (*work)->message = strdup(moe_last_error());
    return MOE_OK;
}

moe_status moe_work_wait(moe_work *w)
{
    if (!w) return MOE_OK;
    moe_status st = w->status;
    if (st == MOE_OK) {
        if (w->finish) st = w->finish(w);
        w->finish = NULL;
        if (st == MOE_OK && w->avg_divisor > 1)
            moe_cpu_divide(w->keep[0]->dtype, moe_tensor_data(w->keep[0]), moe_tensor_numel(w->keep[0]),
                           w->avg_divisor);
        /* only the overlapped all-reduce copies back */
        if (st == MOE_OK && w->copy_back) st = moe_comm_unstage(w->copy_back, w->keep[0], "all-reduce");
        if (st != MOE_OK) moe_comm_poison(w->g, st);
    } else if (st != MOE_OK) {
        moe_fail(st, "wait", "%s", w->message ? w->message : moe_status_name(st));
    }
    work_free(w);
    return st;
}

bool moe_work_done(moe_work *w)
{
    if (!w || !w->finish) return true;
    return w->test ? w->test(w) : false;
}

moe_status moe_all_reduce_async_(moe_work **work, moe_tensor *t, moe_reduce_op op, moe_group *g)
{
    *work = NULL;
    if (g && g->ops->all_reduce_start && t && t->device == MOE_CPU && t->dtype != MOE_BF16 &&
        moe_comm_check_reduce("all-reduce", t, op) == MOE_OK && moe_comm_check_inplace("all-reduce", t) == MOE_OK) {
        moe_status st = moe_comm_enter(g, MOE_COLL_ALL_REDUCE, moe_tensor_numel(t), t->dtype, op, MOE_OK, false);
        if (st != MOE_OK) return st;
        moe_tensor *w = NULL;
        MOE_TRY(moe_comm_stage(&w, t, MOE_CPU, t->dtype));
        moe_work *wk;
        st = work_new(&wk, g, "all-reduce");
        if (st != MOE_OK) {
            moe_tensor_release(w);
            return moe_comm_done(g, st);
        }
        wk->keep[0] = w;
        if (w != t) wk->copy_back = moe_tensor_retain(t);
        moe_tensor_bump_version(t); /* its values change by the time the work is done */
        st = g->ops->all_reduce_start(wk, g, moe_tensor_data(w), moe_tensor_numel(w), t->dtype, op);
        if (st != MOE_OK) {
            work_free(wk);
            return moe_comm_done(g, st);
        }
        *work = wk;
        return MOE_OK;
    }
    return work_eager(work, g, "all-reduce", moe_all_reduce_(t, op, g));
}

moe_status moe_all_gather_async(moe_work **work, moe_tensor **out, moe_tensor *t, moe_group *g)
{
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_comm_all_gather(out, t, g);
    MOE_NO_GRAD_END;
    return work_eager(work, g, "all-gather", st);
}

moe_status moe_reduce_scatter_async(moe_work **work, moe_tensor **out, moe_tensor *t, moe_reduce_op op,
                                    moe_group *g)
{
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_comm_reduce_scatter(out, t, op, g);
    MOE_NO_GRAD_END;
    return work_eager(work, g, "reduce-scatter", st);
}

moe_status moe_all_to_all_async(moe_work **work, moe_tensor **out, int64_t *recv_splits, moe_tensor *t,
                                const int64_t *send_splits, moe_group *g)
{
    MOE_NO_GRAD_BEGIN;
    moe_status st = moe_comm_all_to_all(out, recv_splits, t, send_splits, g);
    MOE_NO_GRAD_END;
    return work_eager(work, g, "all-to-all", st);
}

moe_status moe_broadcast_async_(moe_work **work, moe_tensor *t, int root, moe_group *g)
{
    return work_eager(work, g, "broadcast", moe_broadcast_(t, root, g));
}
