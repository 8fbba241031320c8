/* init.c — scm_init_moelab: every primitive, once, in (moelab primitives).
 *
 * The primitives always go to that module, whichever module is current when
 * scm_init_moelab runs (load-extension from scheme/moelab/primitives.scm, or
 * a program calling it directly before loading (moelab)); they are all
 * exported. The documented public procedures are in (moelab). */
#include "bindings.h"
#include "group-type.h"

void moelab_init_grad_sync_func(void); /* grad-sync-func.c */
void moelab_init_layer_func(void); /* layer-func.c */
void moelab_init_router_func(void); /* router-func.c */
void moelab_init_tokenizer_type(void); /* tokenizer-type.c */
void moelab_init_dataset_type(void); /* dataset-type.c */
void moelab_init_data_func(void); /* data-func.c */
void moelab_init_dataset_func(void); /* dataset-func.c */
void moelab_init_model_func(void); /* model-func.c */
void moelab_init_optim_func(void); /* optim-func.c */
void moelab_init_metrics_func(void); /* metrics-func.c */
void moelab_init_checkpoint_func(void); /* checkpoint-func.c */
void moelab_init_trainer_func(void); /* trainer-func.c */

static void define_primitives(void *data)
{
    (void)data;
    moelab_init_gc_roots();
    moelab_init_error();
    moelab_init_tensor_type();
    moelab_init_tensor_type_functions();
    moelab_init_tensor_func();
    moelab_init_ops_func();
    moelab_init_autograd_func();
    moelab_init_group_type();
    moelab_init_ranks_func();
    moelab_init_collective_func();
    moelab_init_grad_sync_type();
    moelab_init_grad_sync_func();
    moelab_init_router_type();
    moelab_init_router_func();
    moelab_init_layer_type();
    moelab_init_layer_func();
    moelab_init_tokenizer_type();
    moelab_init_dataset_type();
    moelab_init_data_func();
    moelab_init_dataset_func();
    moelab_init_model_type();
    moelab_init_model_func();
    moelab_init_optimizer_type();
    moelab_init_optim_func();
    moelab_init_metrics_log_type();
    moelab_init_metrics_func();
    moelab_init_checkpoint_func();
    moelab_init_trainer_func();
    scm_call_1(scm_c_public_ref("guile", "module-export-all!"), scm_current_module());
}

MOELAB_API void scm_init_moelab(void)
{
    static int done;
    if (__atomic_exchange_n(&done, 1, __ATOMIC_ACQ_REL)) return;
    scm_c_define_module("moelab primitives", define_primitives, NULL);
}
