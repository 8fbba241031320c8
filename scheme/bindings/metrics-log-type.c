/* metrics-log-type.c — the <metrics-log> foreign object: one open
 * moe_metrics_log in its slot, closed by metrics-log-close! or else by the
 * finalizer (once: the slot is cleared first). */
#include "bindings.h"

static SCM log_class = SCM_BOOL_F;


static void finalize_log(SCM obj)
{
    moe_metrics_log *log = scm_foreign_object_ref(obj, 0);
    if (!log) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_metrics_log_close(log);
}

SCM moelab_wrap_metrics_log(moe_metrics_log *log) { return scm_make_foreign_object_1(log_class, log); }

moe_metrics_log *moelab_to_metrics_log(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, log_class)) scm_wrong_type_arg_msg(subr, pos, obj, "metrics log");
    moe_metrics_log *log = scm_foreign_object_ref(obj, 0);
    if (!log) moelab_throw(subr, MOE_ERR_STATE, "the metrics log is closed");
    return log;
}

SCM_DEFINE(moelab_metrics_log_p, "%metrics-log?", 1, 0, 0, (SCM obj), "True when @var{obj} is a metrics log.")
{
    return scm_from_bool(SCM_IS_A_P(obj, log_class));
}

SCM_DEFINE(moelab_metrics_log_close_x, "%metrics-log-close!", 1, 0, 0, (SCM obj), "Close a metrics log (idempotent).")
#define FUNC_NAME "metrics-log-close!"
{
    if (!SCM_IS_A_P(obj, log_class)) scm_wrong_type_arg_msg(FUNC_NAME, 1, obj, "metrics log");
    moe_metrics_log *log = scm_foreign_object_ref(obj, 0);
    scm_foreign_object_set_x(obj, 0, NULL);
    MOELAB_CHECK(FUNC_NAME, moe_metrics_log_close(log));
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

void moelab_init_metrics_log_type(void)
{
    log_class = scm_make_foreign_object_type(sym("<metrics-log>"), scm_list_1(sym("ptr")), finalize_log);
    scm_gc_protect_object(log_class);
    scm_c_define("<metrics-log>", log_class);
#ifndef SCM_MAGIC_SNARFER
#include "metrics-log-type.x"
#endif
}
