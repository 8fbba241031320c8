/* collective-func.c — the collectives of core/dist/comm.h from Scheme:
 * reductions, gathers, all-to-all, broadcast, point to point, barrier, and
 * how long a collective waits for its peers. Each takes a <group>
 * (group-type.c), usable only inside its rank's with-ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "group-type.h"

/* ---- collectives ----------------------------------------------------------------------------------- */

static moe_reduce_op to_reduce_op(SCM sym, int pos, const char *subr)
{
    char name[64];
    moe_reduce_op op;
    moelab_to_name(sym, name, sizeof name, pos, subr, "symbol (sum, avg, max or min)");
    if (!moe_reduce_op_parse(name, &op))
        moelab_throw(subr, MOE_ERR_ARG, "unknown reduce op '%s': use sum, avg, max or min", name);
    return op;
}

SCM_DEFINE(moelab_all_reduce_x, "%all-reduce!", 3, 0, 0, (SCM t, SCM op, SCM g),
           "Reduce @var{t} in place with @var{op} over group @var{g}.")
#define FUNC_NAME "all-reduce!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    moe_reduce_op o = to_reduce_op(op, 2, FUNC_NAME);
    moe_group *grp = moelab_use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "all-reduce", moe_all_reduce_(x, o, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_all_reduce, "%all-reduce", 3, 0, 0, (SCM t, SCM op, SCM g),
           "A new tensor: @var{t} reduced with @var{op} over group @var{g} (differentiable "
           "for sum and avg).")
#define FUNC_NAME "all-reduce"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_reduce_op o = to_reduce_op(op, 2, FUNC_NAME);
    moe_group *grp = moelab_use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "all-reduce", moe_all_reduce(&r, x, o, grp));
    scm_remember_upto_here_2(t, g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_all_gather, "%all-gather", 2, 0, 0, (SCM t, SCM g),
           "Every rank's @var{t} concatenated along dim 0 in rank order (differentiable).")
#define FUNC_NAME "all-gather"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_group *grp = moelab_use_group(g, 2, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "all-gather", moe_all_gather(&r, x, grp));
    scm_remember_upto_here_2(t, g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_reduce_scatter, "%reduce-scatter", 3, 0, 0, (SCM t, SCM op, SCM g),
           "Block r of @var{t} reduced with @var{op} over group @var{g}, on rank r (differentiable).")
#define FUNC_NAME "reduce-scatter"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_reduce_op o = to_reduce_op(op, 2, FUNC_NAME);
    moe_group *grp = moelab_use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "reduce-scatter", moe_reduce_scatter(&r, x, o, grp));
    scm_remember_upto_here_2(t, g);
    return moelab_wrap(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_all_to_all, "%all-to-all", 3, 0, 0, (SCM t, SCM splits, SCM g),
           "Rows of @var{t} sent to each rank of group @var{g} by @var{splits} (a list of row "
           "counts, or #f: even); returns (received . receive-splits). Differentiable.")
#define FUNC_NAME "all-to-all"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME), *r;
    moe_group *grp = moelab_use_group(g, 3, FUNC_NAME);
    int n = moelab_group_size_of(g, 3, FUNC_NAME);
    long len = scm_is_false(splits) ? n : scm_ilength(splits);
    if (len < 0) scm_wrong_type_arg_msg(FUNC_NAME, 2, splits, "list of row counts or #f");
    if (len != n)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%ld send splits for a group of %d rank%s: give one row "
                     "count per rank", len, n, n == 1 ? "" : "s");
    for (SCM l = splits; scm_is_pair(l); l = SCM_CDR(l))
        if (!scm_is_signed_integer(SCM_CAR(l), 0, INT64_MAX))
            scm_wrong_type_arg_msg(FUNC_NAME, 2, splits, "list of non-negative row counts");
    int64_t *buf = malloc(sizeof *buf * 2 * (size_t)n);
    if (!buf) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    int64_t *send = scm_is_false(splits) ? NULL : buf, *recv = buf + n;
    if (send) {
        SCM l = splits;
        for (int i = 0; i < n; i++, l = SCM_CDR(l)) send[i] = scm_to_int64(SCM_CAR(l));
    }
    moe_status st = moe_all_to_all(&r, recv, x, send, grp);
    if (st != MOE_OK) {
        free(buf);
        moelab_throw_last_from(FUNC_NAME, "all-to-all");
    }
    SCM l = SCM_EOL;
    for (int i = n - 1; i >= 0; i--) l = scm_cons(scm_from_int64(recv[i]), l);
    free(buf);
    scm_remember_upto_here_2(t, g);
    return scm_cons(moelab_wrap(r), l);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_broadcast_x, "%broadcast!", 3, 0, 0, (SCM t, SCM root, SCM g),
           "Overwrite @var{t} on every rank of group @var{g} with rank @var{root}'s.")
#define FUNC_NAME "broadcast!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int r = moelab_to_int(root, 2, FUNC_NAME);
    moe_group *grp = moelab_use_group(g, 3, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "broadcast", moe_broadcast_(x, r, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

/* ---- point to point ------------------------------------------------------------------------------------- */

SCM_DEFINE(moelab_send, "%send", 4, 0, 0, (SCM t, SCM dst, SCM tag, SCM g),
           "Send @var{t} to rank @var{dst} of group @var{g} with @var{tag}.")
#define FUNC_NAME "send!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int d = moelab_to_int(dst, 2, FUNC_NAME);
    int k = moelab_to_int(tag, 3, FUNC_NAME);
    moe_group *grp = moelab_use_group(g, 4, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "send!", moe_send(x, d, k, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_recv_x, "%recv!", 4, 0, 0, (SCM t, SCM src, SCM tag, SCM g),
           "Fill @var{t} with what rank @var{src} of group @var{g} sent with @var{tag}.")
#define FUNC_NAME "recv!"
{
    moe_tensor *x = moelab_unwrap(t, 1, FUNC_NAME);
    int s = moelab_to_int(src, 2, FUNC_NAME);
    int k = moelab_to_int(tag, 3, FUNC_NAME);
    moe_group *grp = moelab_use_group(g, 4, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "recv!", moe_recv_(x, s, k, grp));
    scm_remember_upto_here_2(t, g);
    return t;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_barrier, "%barrier", 1, 0, 0, (SCM g), "Wait until every rank of @var{g} arrives.")
#define FUNC_NAME "barrier"
{
    moe_group *grp = moelab_use_group(g, 1, FUNC_NAME);
    DIST_CHECK(FUNC_NAME, "barrier", moe_barrier(grp));
    scm_remember_upto_here_1(g);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- settings ------------------------------------------------------------------------------------- */

/* The timeout as Scheme sees it: seconds, #f for forever, NaN when
 * MOELAB_COMM_TIMEOUT holds no valid timeout. */
static SCM timeout_to_scm(double seconds)
{
    return isinf(seconds) ? SCM_BOOL_F : scm_from_double(seconds);
}

SCM_DEFINE(moelab_set_comm_timeout_x, "%set-comm-timeout!", 1, 0, 0, (SCM seconds),
           "Seconds a collective may wait for its peers (a positive number, or #f: forever); "
           "returns the previous setting.")
#define FUNC_NAME "set-comm-timeout!"
{
    double s = scm_is_false(seconds) ? INFINITY : moelab_to_double(seconds, 1, FUNC_NAME);
    if (!(s > 0)) {
        char text[64];
        if (isnan(s)) snprintf(text, sizeof text, "+nan.0");
        else snprintf(text, sizeof text, "%g", s);
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%s is not a timeout: give a positive number of seconds, or #f "
                     "to wait forever", text);
    }
    double prev = moe_comm_timeout();
    DIST_CHECK(FUNC_NAME, "set-comm-timeout!", moe_comm_set_timeout(s));
    return timeout_to_scm(prev);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_comm_timeout, "%comm-timeout", 0, 0, 0, (void),
           "Seconds a collective may wait for its peers (#f: forever).")
#define FUNC_NAME "comm-timeout"
{
    double s;
    DIST_CHECK(FUNC_NAME, "comm-timeout", moe_comm_wait_limit("comm-timeout", &s));
    return timeout_to_scm(s);
}
#undef FUNC_NAME

void moelab_init_collective_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "collective-func.x"
#endif
}
