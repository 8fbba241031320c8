/* model-type.c — the <moe-transformer> foreign object: one moe_model owned
 * by its Scheme object, freed by the finalizer (once: the slot is cleared
 * first) or never used again after that. Parameters and buffers handed to
 * Scheme are retained by their wrappers, so they outlive the model. */
#include "bindings.h"

static SCM model_class = SCM_BOOL_F;

static void finalize_model(SCM obj)
{
    moe_model *m = scm_foreign_object_ref(obj, 0);
    if (!m) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_model_free(m); /* cpu only: nothing to queue for another thread */
}

SCM moelab_wrap_model(moe_model *m)
{
    moelab_report_native_memory(); /* the parameters */
    return scm_make_foreign_object_1(model_class, m);
}

bool moelab_is_model(SCM obj) { return SCM_IS_A_P(obj, model_class); }

moe_model *moelab_to_model(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, model_class)) scm_wrong_type_arg_msg(subr, pos, obj, "moe-transformer");
    moe_model *m = scm_foreign_object_ref(obj, 0);
    if (!m) moelab_throw(subr, MOE_ERR_STATE, "the moe-transformer has been freed");
    return m;
}

void moelab_init_model_type(void)
{
    SCM slots = scm_list_1(scm_from_utf8_symbol("ptr"));
    model_class = scm_make_foreign_object_type(scm_from_utf8_symbol("<moe-transformer>"), slots, finalize_model);
    scm_gc_protect_object(model_class);
    scm_c_define("<moe-transformer>", model_class);
}
