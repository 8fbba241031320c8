/* trainer-func.c — what (moelab trainer) needs from C beyond the model,
 * optimizer and data primitives: every MoE layer's router metrics at once
 * (the per-token statistics stay in core/moe/metrics.c), the OpenMP thread
 * count, the peak resident set size, and a step's hold on the native memory
 * reports. */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bindings.h"

SCM_DEFINE(moelab_model_router_metrics, "%model-router-metrics", 1, 0, 0, (SCM model),
           "Per MoE layer, the router metrics alist (see router-metrics).")
#define FUNC_NAME "model-router-metrics"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM r = SCM_EOL;
    for (int i = moe_model_moe_layer_count(m) - 1; i >= 0; i--)
        r = scm_cons(moelab_router_metrics_alist(moe_layer_router(moe_model_moe_layer(m, i, NULL)),
                                                 FUNC_NAME),
                     r);
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

static void hold_reports(void *unused) { moelab_hold_memory_reports(); }
static void release_reports(void *unused) { moelab_release_memory_reports(); }

SCM_DEFINE(moelab_call_with_memory_reports_held, "%call-with-memory-reports-held", 1, 0, 0,
           (SCM thunk),
           "Call THUNK with the reports of native memory to the collector held back\n"
           "(see moelab_hold_memory_reports); return its value.")
#define FUNC_NAME s_moelab_call_with_memory_reports_held
{
    SCM_VALIDATE_THUNK(1, thunk);
    scm_dynwind_begin(0);
    hold_reports(NULL);
    scm_dynwind_rewind_handler(hold_reports, NULL, 0);
    scm_dynwind_unwind_handler(release_reports, NULL, SCM_F_WIND_EXPLICITLY);
    SCM r = scm_call_0(thunk);
    scm_dynwind_end();
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_num_threads, "%num-threads", 0, 0, 0, (void),
           "The number of threads the kernels use.")
{
#ifdef _OPENMP
    return scm_from_int(omp_get_max_threads());
#else
    return scm_from_int(1);
#endif
}

SCM_DEFINE(moelab_set_num_threads_x, "%set-num-threads!", 1, 0, 0, (SCM n),
           "Set the number of threads the kernels use.")
#define FUNC_NAME "set-num-threads!"
{
    if (!scm_is_exact_integer(n) || scm_to_int64(n) < 1 || scm_to_int64(n) > 1024)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "a thread count must be an integer in [1, 1024]");
    int k = scm_to_int(n);
#ifdef _OPENMP
    omp_set_num_threads(k);
#endif
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_peak_rss, "%peak-rss", 0, 0, 0, (void),
           "The peak resident set size of this process, in bytes.")
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return SCM_BOOL_F;
    return scm_from_int64((int64_t)ru.ru_maxrss * 1024); /* Linux reports KiB */
}

void moelab_init_trainer_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "trainer-func.x"
#endif
}
