/* optimizer-type.c — the <optimizer> foreign object: one moe_optimizer in
 * its slot, freed by an idempotent finalizer; the optimizer holds its own
 * references to the parameters. */
#include <stdio.h>

#include "bindings.h"

static SCM optimizer_class = SCM_BOOL_F;


static void finalize_optimizer(SCM obj)
{
    moe_optimizer *o = scm_foreign_object_ref(obj, 0);
    if (!o) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_optimizer_free(o);
}

SCM moelab_wrap_optimizer(moe_optimizer *o)
{
    moelab_report_native_memory(); /* its moment tensors (or, when made lazily, at the next report) */
    return scm_make_foreign_object_1(optimizer_class, o);
}

moe_optimizer *moelab_to_optimizer(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, optimizer_class)) scm_wrong_type_arg_msg(subr, pos, obj, "optimizer");
    return scm_foreign_object_ref(obj, 0);
}

SCM_DEFINE(moelab_optimizer_p, "%optimizer?", 1, 0, 0, (SCM obj), "True when @var{obj} is an optimizer.")
{
    return scm_from_bool(SCM_IS_A_P(obj, optimizer_class));
}

SCM_DEFINE(moelab_optimizer_repr, "%optimizer-repr", 1, 0, 0, (SCM obj), "The printed form of an optimizer.")
#define FUNC_NAME "optimizer-repr"
{
    moe_optimizer *o = moelab_to_optimizer(obj, 1, FUNC_NAME);
    char buf[256];
    snprintf(buf, sizeof buf, "#<optimizer %s lr=%g step=%lld params=%d>", moe_optim_kind_name(moe_optimizer_kind(o)),
             moe_optimizer_lr(o), (long long)moe_optimizer_steps(o), moe_optimizer_param_count(o));
    return scm_from_utf8_string(buf);
}
#undef FUNC_NAME

void moelab_init_optimizer_type(void)
{
    optimizer_class = scm_make_foreign_object_type(sym("<optimizer>"), scm_list_1(sym("ptr")), finalize_optimizer);
    scm_gc_protect_object(optimizer_class);
    scm_c_define("<optimizer>", optimizer_class);
#ifndef SCM_MAGIC_SNARFER
#include "optimizer-type.x"
#endif
}
