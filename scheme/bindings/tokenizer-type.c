/* tokenizer-type.c — the <tokenizer> foreign object. It holds one reference
 * to its moe_tokenizer; the finalizer drops it (once: the slot is cleared
 * first). */
#include "bindings.h"
#include "data-func.h"
#include "train/tokenizer.h"

static SCM tokenizer_class = SCM_BOOL_F;

static void finalize_tokenizer(SCM obj)
{
    moe_tokenizer *t = scm_foreign_object_ref(obj, 0);
    if (!t) return;
    scm_foreign_object_set_x(obj, 0, NULL);
    moe_tokenizer_release(t);
}

moe_tokenizer *moelab_to_tokenizer(SCM obj, int pos, const char *subr)
{
    if (!SCM_IS_A_P(obj, tokenizer_class)) scm_wrong_type_arg_msg(subr, pos, obj, "tokenizer");
    return scm_foreign_object_ref(obj, 0);
}

SCM moelab_wrap_tokenizer(moe_tokenizer *t)
{
    return scm_make_foreign_object_1(tokenizer_class, t);
}

SCM_DEFINE(moelab_tokenizer_p, "%tokenizer?", 1, 0, 0, (SCM obj), "True for a <tokenizer>.")
{
    return scm_from_bool(SCM_IS_A_P(obj, tokenizer_class));
}

void moelab_init_tokenizer_type(void)
{
    SCM slots = scm_list_1(sym("ptr"));
    tokenizer_class = scm_make_foreign_object_type(sym("<tokenizer>"), slots, finalize_tokenizer);
    scm_gc_protect_object(tokenizer_class);
    scm_c_define("<tokenizer>", tokenizer_class);
#ifndef SCM_MAGIC_SNARFER
#include "tokenizer-type.x"
#endif
}
