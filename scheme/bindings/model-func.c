/* model-func.c — the MoE transformer, attention and RoPE from Scheme: the
 * primitives behind (moelab nn).
 *
 * make-moe-transformer passes its keywords as one alist (Guile subrs take at
 * most 10 arguments) plus the router's keyword list. Parameters, buffers and
 * routing tensors handed out are the model's live tensors, retained by
 * their wrappers.
 *
 * A model that is one rank's part of a parallel model retains its C groups;
 * (moelab nn) keeps the Scheme groups beside it and passes them to every
 * collective call (forward, loss, step), which checks them
 * (moelab_to_group) so that a use outside the rank's with-ranks raises
 * instead of running a collective on a finished world. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"



/* ---- configuration ------------------------------------------------------------------- */

typedef enum key_kind { K_INT, K_INT_OR_FALSE, K_REAL, K_BOOL, K_SEED, K_DTYPE, K_DEVICE, K_ATTENTION } key_kind;

typedef struct key_spec {
    const char *name; /* the keyword without #: */
    key_kind kind;
    size_t offset;    /* in moe_model_config */
} key_spec;

#define FIELD(f) offsetof(moe_model_config, f)
static const key_spec keys[] = {
    {"vocab", K_INT, FIELD(vocab)},
    {"layers", K_INT, FIELD(layers)},
    {"hidden", K_INT, FIELD(hidden)},
    {"heads", K_INT, FIELD(heads)},
    {"kv-heads", K_INT, FIELD(kv_heads)},
    {"ffn", K_INT, FIELD(ffn)},
    {"experts", K_INT, FIELD(experts)},
    {"top-k", K_INT, FIELD(top_k)},
    {"moe-every", K_INT, FIELD(moe_every)},
    {"first-dense", K_INT, FIELD(first_dense)},
    {"dense-ffn", K_INT, FIELD(dense_ffn)},
    {"shared-experts", K_INT, FIELD(shared_experts)},
    {"shared-ffn", K_INT_OR_FALSE, FIELD(shared_ffn)},
    {"max-seq", K_INT, FIELD(max_seq)},
    {"rope-theta", K_REAL, FIELD(rope_theta)},
    {"norm-eps", K_REAL, FIELD(norm_eps)},
    {"init-std", K_REAL, FIELD(init_std)},
    {"tie-embeddings?", K_BOOL, FIELD(tie_embeddings)},
    {"attention", K_ATTENTION, FIELD(attention)},
    {"dtype", K_DTYPE, FIELD(dtype)},
    {"device", K_DEVICE, FIELD(device)},
    {"seed", K_SEED, FIELD(seed)},
};
#undef FIELD
#define N_KEYS (sizeof keys / sizeof *keys)

static void set_key(moe_model_config *cfg, const key_spec *k, SCM v, const char *subr)
{
    char *p = (char *)cfg + k->offset, name[32];
    switch (k->kind) {
    case K_INT:
        *(int64_t *)p = moelab_to_int64(v, 1, subr);
        break;
    case K_INT_OR_FALSE:
        *(int64_t *)p = scm_is_false(v) ? 0 : moelab_to_int64(v, 1, subr);
        if (*(int64_t *)p < 0 || (scm_is_true(v) && *(int64_t *)p == 0))
            moelab_throw(subr, MOE_ERR_ARG, "#:%s must be #f or >= 1, got %lld", k->name, (long long)*(int64_t *)p);
        break;
    case K_REAL:
        *(double *)p = moelab_to_double(v, 1, subr);
        break;
    case K_BOOL:
        *(bool *)p = scm_is_true(v);
        break;
    case K_SEED:
        if (!scm_is_unsigned_integer(v, 0, UINT64_MAX))
            moelab_throw(subr, MOE_ERR_ARG, "#:seed must be a non-negative integer");
        *(uint64_t *)p = scm_to_uint64(v);
        break;
    case K_DTYPE:
        *(moe_dtype *)p = moelab_to_dtype(v, 1, subr);
        break;
    case K_DEVICE:
        *(moe_device *)p = moelab_to_device(v, 1, subr);
        break;
    case K_ATTENTION:
        moelab_to_name(v, name, sizeof name, 1, subr, "attention symbol");
        if (!moe_attention_impl_parse(name, (moe_attention_impl *)p))
            moelab_throw(subr, MOE_ERR_ARG, "unknown #:attention '%s' (known: fused, plain)", name);
        break;
    }
}

static SCM get_key(const moe_model_config *cfg, const key_spec *k)
{
    const char *p = (const char *)cfg + k->offset;
    switch (k->kind) {
    case K_INT: return scm_from_int64(*(const int64_t *)p);
    case K_INT_OR_FALSE: return *(const int64_t *)p ? scm_from_int64(*(const int64_t *)p) : SCM_BOOL_F;
    case K_REAL: return scm_from_double(*(const double *)p);
    case K_BOOL: return scm_from_bool(*(const bool *)p);
    case K_SEED: return scm_from_uint64(*(const uint64_t *)p);
    case K_DTYPE: return moelab_from_dtype(*(const moe_dtype *)p);
    case K_DEVICE: return moelab_from_device(*(const moe_device *)p);
    case K_ATTENTION: return sym(moe_attention_impl_name(*(const moe_attention_impl *)p));
    }
    return SCM_BOOL_F;
}

/* The stage (first . last) or #f (the whole model). */
static void set_stage(moe_model_config *cfg, SCM v, const char *subr)
{
    if (scm_is_false(v)) return;
    if (!scm_is_pair(v) || !scm_is_exact_integer(scm_car(v)) || !scm_is_exact_integer(scm_cdr(v)))
        moelab_throw(subr, MOE_ERR_ARG, "#:stage must be #f or a pair (first . last) of layer numbers");
    cfg->stage_first = moelab_to_int64(scm_car(v), 1, subr);
    cfg->stage_last = moelab_to_int64(scm_cdr(v), 1, subr);
    if (cfg->stage_first == 0 && cfg->stage_last == 0) /* (0 . 0) is not "the whole model" */
        moelab_throw(subr, MOE_ERR_ARG, "#:stage (0 . 0) holds no layer: it must be (first . last) with "
                     "0 <= first < last <= #:layers %lld", (long long)cfg->layers);
}

/* Each group in the list GROUPS is still usable on this thread (raises otherwise). */
static void check_groups(SCM groups, int pos, const char *subr)
{
    for (SCM l = groups; scm_is_pair(l); l = scm_cdr(l)) (void)moelab_to_group(scm_car(l), pos, subr);
}

SCM_DEFINE(moelab_make_moe_transformer, "%make-moe-transformer", 2, 0, 0, (SCM config, SCM router_options),
           "A new MoE transformer from the alist @var{config} and the router keyword list; see "
           "make-moe-transformer.")
#define FUNC_NAME "make-moe-transformer"
{
    moe_model_config cfg;
    moe_model_config_default(&cfg);
    SCM ep = SCM_BOOL_F, dp = SCM_BOOL_F, stage = SCM_BOOL_F;
    if (scm_ilength(config) < 0) scm_wrong_type_arg_msg(FUNC_NAME, 1, config, "alist");
    for (SCM l = config; scm_is_pair(l); l = scm_cdr(l)) {
        SCM entry = scm_car(l);
        char name[64];
        if (!scm_is_pair(entry) || !moelab_name_text(scm_car(entry), name, sizeof name))
            scm_wrong_type_arg_msg(FUNC_NAME, 1, entry, "(keyword-name . value)");
        if (strcmp(name, "ep-group") == 0 || strcmp(name, "dp-group") == 0 || strcmp(name, "stage") == 0) {
            *(name[0] == 'e' ? &ep : name[0] == 'd' ? &dp : &stage) = scm_cdr(entry);
            continue;
        }
        size_t i = 0;
        while (i < N_KEYS && strcmp(keys[i].name, name) != 0) i++;
        if (i == N_KEYS) moelab_throw(FUNC_NAME, MOE_ERR_ARG, "unknown keyword #:%s", name);
        set_key(&cfg, &keys[i], scm_cdr(entry), FUNC_NAME);
    }
    if (!scm_is_null(router_options) && scm_is_true(router_options))
        moelab_router_options(router_options, &cfg.router, FUNC_NAME);
    set_stage(&cfg, stage, FUNC_NAME);
    /* last: nothing may raise between taking the groups and making the model */
    cfg.ep_group = moelab_to_group(ep, 1, FUNC_NAME);
    cfg.dp_group = moelab_to_group(dp, 1, FUNC_NAME);
    moe_model *m;
    MOELAB_CHECK(FUNC_NAME, moe_model_new(&m, &cfg));
    scm_remember_upto_here_2(ep, dp);
    return moelab_wrap_model(m);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_transformer_p, "%moe-transformer?", 1, 0, 0, (SCM obj), "True for a <moe-transformer>.")
{
    return scm_from_bool(moelab_is_model(obj));
}

SCM_DEFINE(moelab_model_config, "%model-config", 1, 0, 0, (SCM model),
           "The configuration as an alist; see model-config.")
#define FUNC_NAME "model-config"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    const moe_model_config *c = moe_model_get_config(m);
    /* the routers' effective options: the whole model's first MoE layer's (sizes filled in) */
    moe_router_config rc;
    moe_model_router_config(m, &rc);
    SCM r = scm_list_1(scm_cons(sym("router"), moelab_router_config_alist(&rc)));
    for (size_t i = N_KEYS; i-- > 0;) r = scm_cons(scm_cons(sym(keys[i].name), get_key(c, &keys[i])), r);
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_repr, "%model-repr", 1, 0, 0, (SCM model), "The printed form of a model.")
#define FUNC_NAME "model-repr"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    const moe_model_config *c = moe_model_get_config(m);
    int64_t n = 0;
    for (int i = 0; i < moe_model_parameter_count(m); i++) {
        moe_tensor *t;
        if (moe_model_parameter(m, i, NULL, &t) == MOE_OK) n += moe_tensor_numel(t);
    }
    char buf[320], part[96] = "";
    int64_t first, last;
    moe_model_stage(m, &first, &last);
    int ep = moe_model_ep_size(m);
    if (first != 0 || last != c->layers)
        snprintf(part, sizeof part, " stage [%lld, %lld)", (long long)first, (long long)last);
    if (ep > 1)
        snprintf(part + strlen(part), sizeof part - strlen(part), " experts %lld..%lld of ep %d",
                 (long long)moe_model_expert_offset(m), (long long)(moe_model_expert_offset(m) + c->experts / ep - 1), ep);
    snprintf(buf, sizeof buf, "#<moe-transformer V=%lld L=%lld D=%lld H=%lld/%lld E=%lld K=%lld F=%lld%s %s%s %.3gM params>",
             (long long)c->vocab, (long long)c->layers, (long long)c->hidden, (long long)c->heads,
             (long long)c->kv_heads, (long long)c->experts, (long long)c->top_k, (long long)c->ffn,
             c->tie_embeddings ? " tied" : "", moe_dtype_name(c->dtype), part, (double)n / 1e6);
    scm_remember_upto_here_1(model);
    return scm_from_utf8_string(buf);
}
#undef FUNC_NAME

/* ---- forward, loss ----------------------------------------------------------------------- */

SCM_DEFINE(moelab_model_forward, "%model-forward", 3, 0, 0, (SCM model, SCM tokens, SCM groups),
           "The logits (or a stage's hidden state) for @var{tokens}; see model-forward.")
#define FUNC_NAME "model-forward"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    check_groups(groups, 3, FUNC_NAME);
    moe_tensor *t = moelab_unwrap(tokens, 2, FUNC_NAME), *out;
    MOELAB_CHECK(FUNC_NAME, moe_model_forward(&out, m, t));
    scm_remember_upto_here_2(model, tokens);
    return moelab_wrap(out);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_loss, "%model-loss", 5, 0, 0,
           (SCM model, SCM tokens, SCM targets, SCM ignore, SCM groups),
           "The mean cross-entropy loss; see model-loss.")
#define FUNC_NAME "model-loss"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    check_groups(groups, 5, FUNC_NAME);
    moe_tensor *t = moelab_unwrap(tokens, 2, FUNC_NAME), *y = moelab_unwrap(targets, 3, FUNC_NAME), *out;
    int64_t ig = moelab_to_int64(ignore, 4, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_model_loss(&out, m, t, y, ig));
    scm_remember_upto_here_2(model, tokens);
    scm_remember_upto_here_1(targets);
    return moelab_wrap(out);
}
#undef FUNC_NAME

/* ---- the MoE layers ----------------------------------------------------------------------- */

SCM_DEFINE(moelab_model_moe_layers, "%model-moe-layers", 1, 0, 0, (SCM model),
           "The layer numbers of the MoE layers.")
#define FUNC_NAME "model-moe-layers"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM r = SCM_EOL;
    for (int i = moe_model_moe_layer_count(m) - 1; i >= 0; i--) {
        int64_t l;
        moe_model_moe_layer(m, i, &l);
        r = scm_cons(scm_from_int64(l), r);
    }
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_routing, "%model-routing", 1, 0, 0, (SCM model),
           "Per MoE layer, the routing of the last forward; see model-routing.")
#define FUNC_NAME "model-routing"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM r = SCM_EOL;
    for (int i = moe_model_moe_layer_count(m) - 1; i >= 0; i--)
        r = scm_cons(moelab_layer_routing_alist(moe_model_moe_layer(m, i, NULL)), r);
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_aux_losses, "%model-aux-losses", 1, 0, 0, (SCM model),
           "Per MoE layer, the unscaled aux losses of the last forward; see model-aux-losses.")
#define FUNC_NAME "model-aux-losses"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM r = SCM_EOL;
    for (int i = moe_model_moe_layer_count(m) - 1; i >= 0; i--) {
        const moe_routing *rt = moe_layer_last_routing(moe_model_moe_layer(m, i, NULL));
        SCM a = SCM_EOL;
        for (int k = rt ? rt->n_aux - 1 : -1; k >= 0; k--) {
            double v = NAN;
            if (moe_tensor_item(rt->aux[k], &v) != MOE_OK) moe_clear_error();
            a = scm_cons(scm_cons(sym(moe_aux_kind_name(rt->aux_kind[k])), scm_from_double(v)), a);
        }
        r = scm_cons(a, r);
    }
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

/* ---- parameters ------------------------------------------------------------------------------ */

static SCM named_alist(moe_model *m, bool buffers, const char *subr)
{
    SCM r = SCM_EOL;
    int n = buffers ? moe_model_buffer_count(m) : moe_model_parameter_count(m);
    for (int i = n - 1; i >= 0; i--) {
        const char *name;
        moe_tensor *t;
        MOELAB_CHECK(subr, buffers ? moe_model_buffer(m, i, &name, &t) : moe_model_parameter(m, i, &name, &t));
        r = scm_cons(scm_cons(scm_from_utf8_string(name), moelab_wrap_retained(t)), r);
    }
    return r;
}

SCM_DEFINE(moelab_model_parameters, "%model-parameters", 1, 0, 0, (SCM model),
           "The live parameters as an alist name -> tensor; see model-parameters.")
#define FUNC_NAME "model-parameters"
{
    SCM r = named_alist(moelab_to_model(model, 1, FUNC_NAME), false, FUNC_NAME);
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_buffers, "%model-buffers", 1, 0, 0, (SCM model),
           "The buffers as an alist name -> tensor; see model-buffers.")
#define FUNC_NAME "model-buffers"
{
    SCM r = named_alist(moelab_to_model(model, 1, FUNC_NAME), true, FUNC_NAME);
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_parameter, "%model-parameter", 2, 0, 0, (SCM model, SCM name),
           "The parameter or buffer @var{name}, or #f; see model-parameter.")
#define FUNC_NAME "model-parameter"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM_VALIDATE_STRING(2, name);
    char *cname = scm_to_utf8_string(name);
    moe_tensor *t = moe_model_parameter_get(m, cname);
    free(cname);
    scm_remember_upto_here_1(model);
    return moelab_wrap_retained(t);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_model_parameter_x, "%set-model-parameter!", 3, 0, 0, (SCM model, SCM name, SCM value),
           "Copy @var{value} into the parameter or buffer @var{name}; see set-model-parameter!.")
#define FUNC_NAME "set-model-parameter!"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM_VALIDATE_STRING(2, name);
    moe_tensor *v = moelab_unwrap(value, 3, FUNC_NAME);
    char *cname = scm_to_utf8_string(name);
    moe_status st = moe_model_set_parameter(m, cname, v);
    free(cname);
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_remember_upto_here_2(model, value);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- the rank's part ------------------------------------------------------------------------ */

SCM_DEFINE(moelab_model_parallel_part, "%model-parallel-part", 1, 0, 0, (SCM model),
           "(first last ep-size expert-offset) of the rank's part of the model.")
#define FUNC_NAME "model-stage"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    int64_t first, last;
    moe_model_stage(m, &first, &last);
    SCM r = scm_list_4(scm_from_int64(first), scm_from_int64(last), scm_from_int(moe_model_ep_size(m)),
                       scm_from_int64(moe_model_expert_offset(m)));
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

/* ---- per step ----------------------------------------------------------------------------------- */

SCM_DEFINE(moelab_model_zero_grad_x, "%model-zero-grad!", 1, 0, 0, (SCM model), "Drop every gradient.")
#define FUNC_NAME "model-zero-grad!"
{
    moe_model_zero_grad(moelab_to_model(model, 1, FUNC_NAME));
    scm_remember_upto_here_1(model);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_step_x, "%model-step!", 2, 0, 0, (SCM model, SCM groups),
           "Every router's end-of-step update.")
#define FUNC_NAME "model-step!"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    check_groups(groups, 2, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_model_step(m));
    scm_remember_upto_here_1(model);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_training_x, "%model-training!", 2, 0, 0, (SCM model, SCM flag),
           "Switch training mode on or off.")
#define FUNC_NAME "model-training!"
{
    moe_model_set_training(moelab_to_model(model, 1, FUNC_NAME), scm_is_true(flag));
    scm_remember_upto_here_1(model);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_training_p, "%model-training?", 1, 0, 0, (SCM model), "True in training mode.")
#define FUNC_NAME "model-training?"
{
    SCM r = scm_from_bool(moe_model_training(moelab_to_model(model, 1, FUNC_NAME)));
    scm_remember_upto_here_1(model);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_model_grad_accum_x, "%set-model-grad-accum!", 2, 0, 0, (SCM model, SCM n),
           "Micro-batches per optimizer step; see set-model-grad-accum!.")
#define FUNC_NAME "set-model-grad-accum!"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    MOELAB_CHECK(FUNC_NAME, moe_model_set_grad_accum(m, moelab_to_int64(n, 2, FUNC_NAME)));
    scm_remember_upto_here_1(model);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_flops, "%model-flops", 4, 0, 0, (SCM model, SCM batch, SCM seq, SCM backward),
           "Model FLOPs of one forward (and backward); see model-flops.")
#define FUNC_NAME "model-flops"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    double f = moe_model_flops(m, moelab_to_int64(batch, 2, FUNC_NAME), moelab_to_int64(seq, 3, FUNC_NAME),
                               scm_is_true(backward));
    scm_remember_upto_here_1(model);
    return scm_from_double(f);
}
#undef FUNC_NAME

/* ---- attention and RoPE on their own ------------------------------------------------------------- */

SCM_DEFINE(moelab_attention, "%attention", 5, 0, 0, (SCM q, SCM k, SCM v, SCM causal, SCM impl),
           "Scaled-dot-product attention; see attention.")
#define FUNC_NAME "attention"
{
    char name[32];
    moe_attention_impl which;
    moelab_to_name(impl, name, sizeof name, 5, FUNC_NAME, "attention symbol");
    if (!moe_attention_impl_parse(name, &which))
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "unknown #:impl '%s' (known: fused, plain)", name);
    moe_tensor *tq = moelab_unwrap(q, 1, FUNC_NAME), *tk = moelab_unwrap(k, 2, FUNC_NAME),
               *tv = moelab_unwrap(v, 3, FUNC_NAME), *out;
    MOELAB_CHECK(FUNC_NAME, moe_attention(&out, tq, tk, tv, scm_is_true(causal), which));
    scm_remember_upto_here_2(q, k);
    scm_remember_upto_here_1(v);
    return moelab_wrap(out);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_rope, "%rope", 2, 0, 0, (SCM x, SCM theta), "Rotary position embeddings; see rope.")
#define FUNC_NAME "rope"
{
    moe_tensor *t = moelab_unwrap(x, 1, FUNC_NAME), *c, *s, *out;
    if (t->ndim != 4)
        moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "input must be [B S N hd], got %s", moe_shape_str(t));
    MOELAB_CHECK(FUNC_NAME, moe_rope_tables(&c, &s, t->shape[1] > 0 ? t->shape[1] : 1, t->shape[3],
                                            moelab_to_double(theta, 2, FUNC_NAME)));
    moe_status st = moe_rope(&out, t, c, s);
    moe_tensor_release(c);
    moe_tensor_release(s);
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_remember_upto_here_1(x);
    return moelab_wrap(out);
}
#undef FUNC_NAME

void moelab_init_model_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "model-func.x"
#endif
}
