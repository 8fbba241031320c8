/* dataset-type.c — the <dataset> foreign object. It owns its moe_dataset
 * (which holds its own reference to the tokenizer); the finalizer frees it
 * once. */
#include "bindings.h"
#include "data-func.h"
#include "train/dataset.h"

static SCM dataset_class = SCM_BOOL_F;

static void finalize_dataset(SCM obj)
{
    moe_dataset *ds = scm_foreign_object_ref(obj, 0);
    if (!ds) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_dataset_free(ds);
}

moe_dataset *moelab_to_dataset(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, dataset_class)) scm_wrong_type_arg_msg(subr, pos, obj, "dataset");
    return scm_foreign_object_ref(obj, 0);
}

SCM moelab_wrap_dataset(moe_dataset *ds) { return scm_make_foreign_object_1(dataset_class, ds); }

SCM_DEFINE(moelab_dataset_p, "%dataset?", 1, 0, 0, (SCM obj), "True for a <dataset>.")
{
    return scm_from_bool(SCM_IS_A_P(obj, dataset_class));
}

void moelab_init_dataset_type(void)
{
    SCM slots = scm_list_1(sym("ptr"));
    dataset_class = scm_make_foreign_object_type(sym("<dataset>"), slots, finalize_dataset);
    scm_gc_protect_object(dataset_class);
    scm_c_define("<dataset>", dataset_class);
#ifndef SCM_MAGIC_SNARFER
#include "dataset-type.x"
#endif
}
