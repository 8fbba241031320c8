/* model_file.h — a model's parameters and buffers in a safetensors file,
 * under the model's own names (core/nn/model.h). */
#ifndef MOELAB_TRAIN_MODEL_FILE_H
#define MOELAB_TRAIN_MODEL_FILE_H

#include "../nn/model.h"
#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Write every parameter and buffer of M (each in its own dtype: the router
 * expert biases stay f32) with NMETA metadata pairs to PATH, atomically. */
moe_status moe_model_save_file(const moe_model *m, const char *path, int nmeta,
                               const char *const *meta_keys, const char *const *meta_values);
/* Load PATH into M: the file must hold exactly M's parameters and buffers,
 * each of its shape and a float dtype (converted to the model's). A part of
 * a parallel model (nn/model.h) also loads the whole model's file: the
 * other stages' tensors are skipped and a full [E ...] expert tensor gives
 * the rank's rows. Everything
 * is checked before anything changes: on failure M is as it was and the
 * error names the file and the tensor. */
moe_status moe_model_load_file(moe_model *m, const char *path);

/* The two halves of a load, for loads that span several files: check that
 * ST (read from PATH) fits M, naming OP; then copy it in (after the check,
 * this cannot fail on a CPU model). */
moe_status moe_model_check_tensors(const char *op, const moe_model *m, const moe_safetensors *st,
                                   const char *path);
moe_status moe_model_apply_tensors(moe_model *m, const moe_safetensors *st);

#ifdef __cplusplus
}
#endif
#endif
