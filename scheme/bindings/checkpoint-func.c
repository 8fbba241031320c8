/* checkpoint-func.c — safetensors files, a model's tensors in them, and the
 * atomic file and directory steps of checkpoints, from Scheme
 * (core/train/safetensors.h, model_file.h). The documented procedures are
 * in scheme/moelab/checkpoint.scm. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bindings.h"
#include "train/model_file.h"
#include "train/safetensors.h"

/* A string or symbol as a UTF-8 string freed when the dynwind ends. */
static char *text_of(SCM obj, const char *subr, const char *what, long i)
{
    if (!scm_is_string(obj) && !scm_is_symbol(obj))
        moelab_throw(subr, MOE_ERR_ARG, "%s %ld: a string or symbol is needed", what, i);
    char *s = scm_to_utf8_string(scm_is_symbol(obj) ? scm_symbol_to_string(obj) : obj);
    scm_dynwind_free(s);
    return s;
}

/* An alist of (key . string) into KEYS/VALUES (freed with the dynwind). */
static int collect_metadata(SCM meta, const char *subr, const char ***keys, const char ***values)
{
    long n = scm_ilength(meta);
    if (n < 0) moelab_throw(subr, MOE_ERR_ARG, "metadata must be a list of (key . string) pairs");
    const char **k = scm_calloc(sizeof *k * (size_t)(n + 1));
    const char **v = scm_calloc(sizeof *v * (size_t)(n + 1));
    scm_dynwind_free(k);
    scm_dynwind_free(v);
    long i = 0;
    for (SCM l = meta; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l);
        if (!scm_is_pair(e) || !scm_is_string(SCM_CDR(e)))
            moelab_throw(subr, MOE_ERR_ARG, "metadata entry %ld is not a (key . string) pair", i);
        k[i] = text_of(SCM_CAR(e), subr, "metadata key", i);
        v[i] = text_of(SCM_CDR(e), subr, "metadata value", i);
    }
    *keys = k;
    *values = v;
    return (int)n;
}

/* The tensors of a loaded file as an alist name -> tensor, in file order. */
static SCM tensor_alist(const moe_safetensors *st)
{
    SCM out = SCM_EOL;
    for (int i = st->count - 1; i >= 0; i--)
        out = scm_acons(scm_from_utf8_string(st->names[i]), moelab_wrap_retained(st->tensors[i]), out);
    return out;
}

SCM_DEFINE(moelab_save_tensors, "%save-tensors", 3, 0, 0, (SCM path, SCM tensors, SCM meta),
           "Write an alist of tensors and a metadata alist; see save-tensors.")
#define FUNC_NAME "save-tensors"
{
    scm_dynwind_begin(0);
    char *p = text_of(path, FUNC_NAME, "path", 0);
    long n = scm_ilength(tensors);
    if (n < 0) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "tensors must be a list of (name . tensor) pairs");
    const char **names = scm_calloc(sizeof *names * (size_t)(n + 1));
    moe_tensor **ts = scm_calloc(sizeof *ts * (size_t)(n + 1));
    scm_dynwind_free(names);
    scm_dynwind_free(ts);
    long i = 0;
    for (SCM l = tensors; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l);
        if (!scm_is_pair(e) || !moelab_is_tensor(SCM_CDR(e)))
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "entry %ld is not a (name . tensor) pair", i);
        names[i] = text_of(SCM_CAR(e), FUNC_NAME, "tensor name", i);
        ts[i] = moelab_unwrap(SCM_CDR(e), 2, FUNC_NAME);
    }
    const char **keys, **values;
    int nm = collect_metadata(meta, FUNC_NAME, &keys, &values);
    MOELAB_CHECK(FUNC_NAME, moe_safetensors_save(p, (int)n, names, ts, nm, keys, values));
    scm_remember_upto_here_1(tensors);
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_load_tensors, "%load-tensors", 1, 0, 0, (SCM path),
           "The tensors and the metadata of a file, as (tensors-alist . metadata-alist).")
#define FUNC_NAME "load-tensors"
{
    scm_dynwind_begin(0);
    char *p = text_of(path, FUNC_NAME, "path", 0);
    moe_safetensors *st;
    MOELAB_CHECK(FUNC_NAME, moe_safetensors_load(&st, p));
    SCM ts = tensor_alist(st), meta = SCM_EOL;
    for (int i = st->meta_count - 1; i >= 0; i--)
        meta = scm_cons(scm_cons(scm_from_utf8_string(st->meta_keys[i]), scm_from_utf8_string(st->meta_values[i])),
                        meta);
    moe_safetensors_free(st);
    scm_dynwind_end();
    return scm_cons(ts, meta);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_save_model, "%save-model", 3, 0, 0, (SCM model, SCM path, SCM meta),
           "Write a model's parameters and buffers; see save-model.")
#define FUNC_NAME "save-model"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    scm_dynwind_begin(0);
    char *p = text_of(path, FUNC_NAME, "path", 0);
    const char **keys, **values;
    int nm = collect_metadata(meta, FUNC_NAME, &keys, &values);
    MOELAB_CHECK(FUNC_NAME, moe_model_save_file(m, p, nm, keys, values));
    scm_remember_upto_here_1(model);
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_load_model_x, "%load-model!", 2, 0, 0, (SCM model, SCM path),
           "Load a model's parameters and buffers; see load-model!.")
#define FUNC_NAME "load-model!"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    scm_dynwind_begin(0);
    char *p = text_of(path, FUNC_NAME, "path", 0);
    MOELAB_CHECK(FUNC_NAME, moe_model_load_file(m, p));
    scm_remember_upto_here_1(model);
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_read_model_file, "%read-model-file", 3, 0, 0, (SCM who, SCM model, SCM path),
           "The tensors of PATH as an alist, after checking that they fit the model exactly.")
#define FUNC_NAME "read-model-file"
{
    moe_model *m = moelab_to_model(model, 2, FUNC_NAME);
    scm_dynwind_begin(0);
    char *op = text_of(who, FUNC_NAME, "caller", 0);
    char *p = text_of(path, op, "path", 0);
    moe_safetensors *st;
    MOELAB_CHECK(op, moe_safetensors_load_op(op, &st, p));
    if (moe_model_check_tensors(op, m, st, p) != MOE_OK) {
        moe_safetensors_free(st);
        moelab_throw_last(op);
    }
    SCM out = tensor_alist(st);
    moe_safetensors_free(st);
    scm_remember_upto_here_1(model);
    scm_dynwind_end();
    return out;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_router_states, "%model-router-states", 1, 0, 0, (SCM model),
           "Per MoE layer, (counters rng-seed rng-position): the router state that is not a buffer.")
#define FUNC_NAME "model-router-states"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM out = SCM_EOL;
    for (int i = moe_model_moe_layer_count(m) - 1; i >= 0; i--) {
        moe_router *r = moe_layer_router(moe_model_moe_layer(m, i, NULL));
        moe_tensor *counters;
        MOELAB_CHECK(FUNC_NAME, moe_router_state_save(r, NULL, &counters));
        uint64_t seed, pos;
        moe_router_rng_state(r, &seed, &pos);
        out = scm_cons(scm_list_3(moelab_wrap(counters), scm_from_uint64(seed), scm_from_uint64(pos)), out);
    }
    scm_remember_upto_here_1(model);
    return out;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_load_router_states_x, "%model-load-router-states!", 3, 0, 0,
           (SCM who, SCM model, SCM states),
           "Restore what %model-router-states returned; everything is checked first.")
#define FUNC_NAME "model-load-router-states!"
{
    moe_model *m = moelab_to_model(model, 2, FUNC_NAME);
    scm_dynwind_begin(0);
    char *op = text_of(who, FUNC_NAME, "caller", 0);
    int n = moe_model_moe_layer_count(m);
    if (scm_ilength(states) != n)
        moelab_throw(op, MOE_ERR_ARG, "router states for %ld MoE layers, the model has %d",
                     (long)scm_ilength(states), n);
    int i = 0;
    for (SCM l = states; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l);
        moe_router *r = moe_layer_router(moe_model_moe_layer(m, i, NULL));
        int64_t E = moe_router_get_config(r)->experts;
        if (scm_ilength(e) != 3 || !moelab_is_tensor(SCM_CAR(e)) ||
            !scm_is_unsigned_integer(SCM_CADR(e), 0, UINT64_MAX) ||
            !scm_is_unsigned_integer(SCM_CADDR(e), 0, UINT64_MAX))
            moelab_throw(op, MOE_ERR_ARG, "router state %d is not (counters rng-seed rng-position)", i);
        moe_tensor *c = moelab_unwrap(SCM_CAR(e), 3, op);
        /* a fourth row: a quantile-balancing router's quantile sums */
        int64_t rows = moe_router_qb_beta(r) ? 4 : 3;
        if (c->ndim != 2 || (c->shape[0] != 3 && c->shape[0] != rows) || c->shape[1] != E + 1)
            moelab_throw(op, MOE_ERR_SHAPE, "router state %d: counters must be [%lld %lld], got %s", i,
                         (long long)rows, (long long)(E + 1), moe_shape_str(c));
    }
    i = 0;
    for (SCM l = states; scm_is_pair(l); l = SCM_CDR(l), i++) {
        moe_router *r = moe_layer_router(moe_model_moe_layer(m, i, NULL));
        MOELAB_CHECK(op, moe_router_state_load(r, NULL, moelab_unwrap(SCM_CAR(SCM_CAR(l)), 3, op)));
        moe_router_set_rng_state(r, scm_to_uint64(SCM_CADR(SCM_CAR(l))), scm_to_uint64(SCM_CADDR(SCM_CAR(l))));
    }
    scm_remember_upto_here_2(model, states);
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_write_json_file, "%write-json-file", 3, 0, 0, (SCM who, SCM path, SCM value),
           "Write VALUE as JSON (one object, a newline at the end) to PATH atomically.")
#define FUNC_NAME "write-json-file"
{
    scm_dynwind_begin(0);
    char *op = text_of(who, FUNC_NAME, "caller", 0);
    char *p = text_of(path, op, "path", 0);
    json_t *j = moelab_to_json(value, op);
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
    json_decref(j);
    if (!text) moelab_throw(op, MOE_ERR_NOMEM, "%s: cannot format the JSON", p);
    scm_dynwind_free(text);
    const void *parts[2] = {text, "\n"};
    size_t lens[2] = {strlen(text), 1};
    MOELAB_CHECK(op, moe_file_write_atomic(op, p, 2, parts, lens));
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_read_json_file, "%read-json-file", 2, 0, 0, (SCM who, SCM path),
           "The JSON value in PATH as Scheme data (objects as alists with symbol keys).")
#define FUNC_NAME "read-json-file"
{
    scm_dynwind_begin(0);
    char *op = text_of(who, FUNC_NAME, "caller", 0);
    char *p = text_of(path, op, "path", 0);
    json_error_t err;
    json_t *j = json_load_file(p, JSON_REJECT_DUPLICATES, &err);
    if (!j) moelab_throw(op, MOE_ERR_IO, "%s: %s (line %d)", p, err.text, err.line);
    SCM out = moelab_from_json(j);
    json_decref(j);
    scm_dynwind_end();
    return out;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_sync_directory, "%sync-directory", 2, 0, 0, (SCM who, SCM dir),
           "fsync the directory DIR (after creating or renaming entries in it).")
#define FUNC_NAME "sync-directory"
{
    scm_dynwind_begin(0);
    char *op = text_of(who, FUNC_NAME, "caller", 0);
    char *d = text_of(dir, op, "directory", 0);
    MOELAB_CHECK(op, moe_dir_sync(op, d));
    scm_dynwind_end();
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

void moelab_init_checkpoint_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "checkpoint-func.x"
#endif
}
