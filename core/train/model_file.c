/* model_file.c — save-model and load-model!: the model's named tensors in a
 * safetensors file, checked in full before the model changes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_file.h"

/* The parameters then the buffers of M, by index. */
static int slot_count(const moe_model *m)
{
    return moe_model_parameter_count(m) + moe_model_buffer_count(m);
}

static moe_status slot_get(const moe_model *m, int i, const char **name, moe_tensor **t)
{
    int np = moe_model_parameter_count(m);
    return i < np ? moe_model_parameter(m, i, name, t) : moe_model_buffer(m, i - np, name, t);
}

moe_status moe_model_save_file(const moe_model *m, const char *path, int nmeta,
                               const char *const *meta_keys, const char *const *meta_values)
{
    static const char *op = "save-model";
    int n = slot_count(m);
    const char **names = calloc((size_t)n + 1, sizeof *names);
    moe_tensor **ts = calloc((size_t)n + 1, sizeof *ts);
    moe_status st = MOE_OK;
    if (!names || !ts) {
        st = moe_fail(MOE_ERR_NOMEM, op, "%s: out of memory for %zu bytes of the list of %d tensors", path,
                      ((size_t)n + 1) * (sizeof *names + sizeof *ts), n);
        goto done;
    }
    for (int i = 0; i < n; i++) MOE_TRYG(slot_get(m, i, &names[i], &ts[i]));
    st = moe_safetensors_save_op(op, path, n, names, ts, nmeta, meta_keys, meta_values);
done:
    free(names);
    free(ts);
    return st;
}

moe_status moe_model_check_tensors(const char *op, const moe_model *m, const moe_safetensors *st,
                                   const char *path)
{
    int n = slot_count(m);
    for (int i = 0; i < n; i++) {
        const char *name;
        moe_tensor *t;
        MOE_TRY(slot_get(m, i, &name, &t));
        moe_tensor *v = moe_safetensors_get(st, name);
        if (!v)
            return moe_fail(MOE_ERR_ARG, op, "%s: tensor \"%s\" of the model is missing from the file",
                            path, name);
        if (!moe_dtype_is_float(v->dtype))
            return moe_fail(MOE_ERR_DTYPE, op, "%s: tensor \"%s\" is %s, a float dtype is needed", path,
                            name, moe_dtype_name(v->dtype));
        if (!moe_model_fits(m, name, v)) {
            char want[256];
            snprintf(want, sizeof want, "%s", moe_shape_str(t));
            return moe_fail(MOE_ERR_SHAPE, op, "%s: tensor \"%s\" is %s in the file, the model's is %s",
                            path, name, moe_shape_str(v), want);
        }
    }
    for (int j = 0; j < st->count; j++) {
        if (!moe_model_parameter_get(m, st->names[j]) && !moe_model_held_elsewhere(m, st->names[j]))
            return moe_fail(MOE_ERR_ARG, op, "%s: tensor \"%s\" is not a parameter or buffer of the "
                            "model (model-parameters and model-buffers list them)", path,
                            st->names[j]);
    }
    return MOE_OK;
}

moe_status moe_model_apply_tensors(moe_model *m, const moe_safetensors *st)
{
    int n = slot_count(m);
    for (int i = 0; i < n; i++) {
        const char *name;
        moe_tensor *t;
        MOE_TRY(slot_get(m, i, &name, &t));
        MOE_TRY(moe_model_set_parameter(m, name, moe_safetensors_get(st, name)));
    }
    return MOE_OK;
}

moe_status moe_model_load_file(moe_model *m, const char *path)
{
    static const char *op = "load-model!";
    moe_safetensors *st;
    MOE_TRY(moe_safetensors_load_op(op, &st, path));
    moe_status s = moe_model_check_tensors(op, m, st, path);
    if (s == MOE_OK) s = moe_model_apply_tensors(m, st);
    moe_safetensors_free(st);
    return s;
}
