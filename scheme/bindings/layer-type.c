/* layer-type.c — the <moe-layer> foreign object: it owns its moe_layer,
 * which the finalizer frees (once: the slot is cleared first), releasing the
 * device memory it holds on a Guile thread. */
#include "bindings.h"

static SCM layer_class = SCM_BOOL_F;

static void finalize_layer(SCM obj)
{
    moe_layer *l = scm_foreign_object_ref(obj, 0);
    if (!l) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    /* Device memory is released on a Guile thread, not the finalizer's: the
     * queue takes the last reference of every device tensor the layer holds. */
    for (int i = 0, n = moe_layer_parameter_count(l); i < n; i++) {
        moe_tensor *t;
        if (moe_layer_parameter(l, i, NULL, &t) == MOE_OK && t->device != MOE_CPU)
            moelab_release_from_finalizer(moe_tensor_retain(t));
    }
    const moe_dispatch *plan = moe_layer_last_dispatch(l);
    if (plan && plan->device_index) moelab_release_from_finalizer(moe_tensor_retain(plan->device_index));
    moe_layer_free(l);
}

SCM moelab_wrap_layer(moe_layer *l) { return scm_make_foreign_object_1(layer_class, l); }

moe_layer *moelab_to_layer(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, layer_class)) scm_wrong_type_arg_msg(subr, pos, obj, "moe-layer");
    moe_layer *l = scm_foreign_object_ref(obj, 0);
    if (!l) moelab_throw(subr, MOE_ERR_STATE, "the moe-layer has been freed");
    return l;
}

SCM_DEFINE(moelab_moe_layer_p, "%moe-layer?", 1, 0, 0, (SCM obj), "True for a <moe-layer>.")
{
    return scm_from_bool(SCM_IS_A_P(obj, layer_class));
}

void moelab_init_layer_type(void)
{
    SCM slots = scm_list_1(scm_from_utf8_symbol("ptr"));
    layer_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<moe-layer>"), slots, finalize_layer);
    scm_gc_protect_object(layer_class);
    scm_c_define("<moe-layer>", layer_class);
#ifndef SCM_MAGIC_SNARFER
#include "layer-type.x"
#endif
}
