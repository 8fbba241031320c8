/* grad-sync-type.c — the <grad-sync> foreign object: it owns its
 * moe_grad_sync, which the finalizer (or grad-sync-free!) frees once (the
 * slot is cleared first), removing the gradient hooks from the parameters.
 * Device memory it would release is queued for a Guile thread, as layers
 * do. */
#include "bindings.h"
#include "dist/grad_sync.h"

static SCM grad_sync_class = SCM_BOOL_F;

/* Free S, queueing what lives on a device for a Guile thread. */
static void free_from_finalizer(moe_grad_sync *s)
{
    for (int i = 0, n = moe_grad_sync_bucket_count(s); i < n; i++) {
        moe_tensor *b = moe_grad_sync_bucket_buffer(s, i);
        if (b->device != MOE_CPU) moelab_release_from_finalizer(moe_tensor_retain(b));
    }
    for (int p = 0, n = moe_grad_sync_param_count(s); p < n; p++) {
        moe_tensor *t = moe_grad_sync_param(s, p);
        if (t->device != MOE_CPU) moelab_release_from_finalizer(moe_tensor_retain(t));
    }
    moe_grad_sync_free(s);
}

static void finalize_grad_sync(SCM obj)
{
    moe_grad_sync *s = scm_foreign_object_ref(obj, 0);
    if (!s) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    free_from_finalizer(s);
}

SCM moelab_wrap_grad_sync(moe_grad_sync *s) { return scm_make_foreign_object_1(grad_sync_class, s); }

moe_grad_sync *moelab_to_grad_sync(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, grad_sync_class)) scm_wrong_type_arg_msg(subr, pos, obj, "grad-sync");
    moe_grad_sync *s = scm_foreign_object_ref(obj, 0);
    if (!s) moelab_throw(subr, MOE_ERR_STATE, "the grad-sync has been freed");
    return s;
}

SCM_DEFINE(moelab_grad_sync_p, "%grad-sync?", 1, 0, 0, (SCM obj), "True when @var{obj} is a grad sync.")
#define FUNC_NAME "grad-sync?"
{
    return scm_from_bool(SCM_IS_A_P(obj, grad_sync_class));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_grad_sync_free_x, "%grad-sync-free!", 1, 0, 0, (SCM sync),
           "Remove the hooks of grad sync @var{sync} and free it (again: nothing).")
#define FUNC_NAME "grad-sync-free!"
{
    if (!SCM_IS_A_P(sync, grad_sync_class)) scm_wrong_type_arg_msg(FUNC_NAME, 1, sync, "grad-sync");
    moe_grad_sync *s = scm_foreign_object_ref(sync, 0);
    if (s) {
        scm_foreign_object_set_x(sync, 0, NULL);
        moe_grad_sync_free(s); /* on a Guile thread: device memory goes at once */
    }
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

void moelab_init_grad_sync_type(void)
{
    grad_sync_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<grad-sync>"),
                                                   scm_list_1(scm_from_utf8_symbol("ptr")), finalize_grad_sync);
    scm_gc_protect_object(grad_sync_class);
#ifndef SCM_MAGIC_SNARFER
#include "grad-sync-type.x"
#endif
}
