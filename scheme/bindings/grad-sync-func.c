/* grad-sync-func.c — bucketed data-parallel gradient all-reduce
 * (core/dist/grad_sync.h) from Scheme (the <grad-sync> foreign object:
 * grad-sync-type.c). The C object retains its group; (moelab dist) keeps
 * the Scheme <group> beside it and passes it to arm and wait, which check it (moelab_to_group) so that a step outside the rank's
 * with-ranks raises instead of running a collective on a finished world. */
#include <stdio.h>
#include <stdlib.h>

#include "bindings.h"
#include "dist/grad_sync.h"

SCM_DEFINE(moelab_make_grad_sync, "%make-grad-sync", 4, 0, 0, (SCM params, SCM group, SCM divisor, SCM bucket_bytes),
           "A grad sync of the tensors in the list @var{params} over @var{group}; see make-grad-sync.")
#define FUNC_NAME "make-grad-sync"
{
    long n = scm_ilength(params);
    if (n < 0) scm_wrong_type_arg_msg(FUNC_NAME, 1, params, "list of tensors");
    if (n > 1 << 24) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%ld parameters: too many", n);
    moe_group *g = moelab_to_group(group, 2, FUNC_NAME);
    double d = moelab_to_double(divisor, 3, FUNC_NAME);
    int64_t bytes = moelab_to_int64(bucket_bytes, 4, FUNC_NAME);
    for (SCM l = params; scm_is_pair(l); l = SCM_CDR(l)) /* raise before allocating */
        (void)moelab_unwrap(SCM_CAR(l), 1, FUNC_NAME);
    moe_tensor **ts = malloc(sizeof *ts * (size_t)(n > 0 ? n : 1));
    if (!ts) moelab_throw(FUNC_NAME, MOE_ERR_NOMEM, "out of memory");
    SCM l = params;
    for (long i = 0; i < n; i++, l = SCM_CDR(l)) ts[i] = moelab_unwrap(SCM_CAR(l), 1, FUNC_NAME);
    moe_grad_sync *s = NULL;
    moe_status st = moe_grad_sync_new(&s, g, (int)n, ts, d, bytes);
    free(ts);
    scm_remember_upto_here_2(params, group);
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    moelab_report_native_memory(); /* the bucket buffers */
    return moelab_wrap_grad_sync(s);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_grad_sync_arm_x, "%grad-sync-arm!", 2, 0, 0, (SCM sync, SCM group),
           "Arm grad sync @var{sync} (its group @var{group}) for the next backward.")
#define FUNC_NAME "grad-sync-arm!"
{
    moe_grad_sync *s = moelab_to_grad_sync(sync, 1, FUNC_NAME);
    (void)moelab_to_group(group, 2, FUNC_NAME); /* raises when no longer usable here */
    MOELAB_CHECK(FUNC_NAME, moe_grad_sync_arm(s));
    scm_remember_upto_here_2(sync, group);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_grad_sync_wait_x, "%grad-sync-wait!", 2, 0, 0, (SCM sync, SCM group),
           "Finish the reduction of grad sync @var{sync} (its group @var{group}).")
#define FUNC_NAME "grad-sync-wait!"
{
    moe_grad_sync *s = moelab_to_grad_sync(sync, 1, FUNC_NAME);
    (void)moelab_to_group(group, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_grad_sync_wait(s));
    scm_remember_upto_here_2(sync, group);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

static SCM entry(const char *name, SCM value) { return scm_cons(scm_from_utf8_symbol(name), value); }

SCM_DEFINE(moelab_grad_sync_stats, "%grad-sync-stats", 1, 0, 0, (SCM sync),
           "The totals of grad sync @var{sync} as an alist; see grad-sync-stats.")
#define FUNC_NAME "grad-sync-stats"
{
    moe_grad_sync *s = moelab_to_grad_sync(sync, 1, FUNC_NAME);
    moe_grad_sync_stats t;
    moe_grad_sync_get_stats(s, &t);
    SCM r = scm_list_n(entry("steps", scm_from_int64(t.steps)),
                       entry("buckets", scm_from_int64(t.buckets)),
                       entry("buckets-early", scm_from_int64(t.buckets_early)),
                       entry("buckets-stale", scm_from_int64(t.buckets_stale)),
                       entry("bytes", scm_from_int64(t.bytes)),
                       entry("wait-seconds", scm_from_double(t.wait_seconds)),
                       entry("comm-seconds", scm_from_double(t.comm_seconds)), SCM_UNDEFINED);
    scm_remember_upto_here_1(sync);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_grad_sync_buckets, "%grad-sync-buckets", 1, 0, 0, (SCM sync),
           "The buckets of grad sync @var{sync}; see grad-sync-buckets.")
#define FUNC_NAME "grad-sync-buckets"
{
    moe_grad_sync *s = moelab_to_grad_sync(sync, 1, FUNC_NAME);
    int nb = moe_grad_sync_bucket_count(s), np = moe_grad_sync_param_count(s);
    SCM r = SCM_EOL;
    for (int i = nb - 1; i >= 0; i--) {
        SCM members = SCM_EOL;
        for (int p = 0; p < np; p++)
            if (moe_grad_sync_param_bucket(s, p) == i) members = scm_cons(scm_from_int(p), members);
        moe_tensor *b = moe_grad_sync_bucket_buffer(s, i);
        r = scm_cons(scm_list_3(moelab_from_dtype(b->dtype), scm_from_size_t(moe_tensor_nbytes(b)),
                                scm_reverse_x(members, SCM_EOL)),
                     r);
    }
    scm_remember_upto_here_1(sync);
    return r;
}
#undef FUNC_NAME

void moelab_init_grad_sync_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "grad-sync-func.x"
#endif
}
