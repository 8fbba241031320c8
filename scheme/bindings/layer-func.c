/* layer-func.c — the MoE layer from Scheme: the primitives behind
 * (moelab layer) (the <moe-layer> foreign object: layer-type.c).
 *
 * Everything the layer hands out to Scheme — parameters, the routing
 * record's tensors, the aux loss — is retained by its wrapper, so it
 * outlives the next forward and the layer itself. Parameters are the
 * live leaves: gradients accumulate on them and set-moe-parameter! copies
 * into them in place.
 *
 * An expert-parallel layer retains its C group; (moelab layer) keeps the
 * Scheme <group> beside the layer and passes it to every forward, which
 * checks it (moelab_to_group) so that a forward outside the rank's
 * with-ranks raises instead of running a collective on a finished world. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"


static int64_t positive(SCM obj, const char *what, int pos, const char *subr)
{
    int64_t v = moelab_to_int64(obj, pos, subr);
    if (v < 1) moelab_throw(subr, MOE_ERR_ARG, "%s must be >= 1, got %lld", what, (long long)v);
    return v;
}

static int64_t non_negative(SCM obj, const char *what, int pos, const char *subr)
{
    int64_t v = moelab_to_int64(obj, pos, subr);
    if (v < 0) moelab_throw(subr, MOE_ERR_ARG, "%s must be >= 0, got %lld", what, (long long)v);
    return v;
}

static moe_activation to_activation(SCM obj, int pos, const char *subr)
{
    char name[64];
    moe_activation a;
    moelab_to_name(obj, name, sizeof name, pos, subr, "activation symbol");
    if (!moe_activation_parse(name, &a))
        moelab_throw(subr, MOE_ERR_ARG, "unknown activation '%s' (known: swiglu, gelu, gelu-tanh)", name);
    return a;
}

/* Guile subrs take at most 10 arguments: the sizes come as one list
 * (hidden ffn experts top-k) and the shared MLP as another
 * (shared-experts shared-ffn-or-#f shared-gate?). */
SCM_DEFINE(moelab_make_moe_layer, "%make-moe-layer", 9, 0, 0,
           (SCM sizes, SCM activation, SCM shared, SCM bias, SCM dtype, SCM router_options,
            SCM ep_group, SCM seed, SCM device),
           "A new MoE layer; see make-moe-layer.")
#define FUNC_NAME "make-moe-layer"
{
    if (scm_ilength(sizes) != 4) scm_wrong_type_arg_msg(FUNC_NAME, 1, sizes, "(hidden ffn experts top-k)");
    if (scm_ilength(shared) != 3)
        scm_wrong_type_arg_msg(FUNC_NAME, 3, shared, "(shared-experts shared-ffn shared-gate?)");
    moe_layer_config cfg;
    moe_layer_config_default(&cfg);
    cfg.hidden = positive(scm_list_ref(sizes, scm_from_int(0)), "#:hidden", 1, FUNC_NAME);
    cfg.ffn = positive(scm_list_ref(sizes, scm_from_int(1)), "#:ffn", 1, FUNC_NAME);
    cfg.experts = positive(scm_list_ref(sizes, scm_from_int(2)), "#:experts", 1, FUNC_NAME);
    cfg.top_k = positive(scm_list_ref(sizes, scm_from_int(3)), "#:top-k", 1, FUNC_NAME);
    cfg.activation = to_activation(activation, 2, FUNC_NAME);
    SCM ns = scm_list_ref(shared, scm_from_int(0)), fs = scm_list_ref(shared, scm_from_int(1));
    cfg.shared_experts = non_negative(ns, "#:shared-experts", 3, FUNC_NAME);
    cfg.shared_ffn = scm_is_false(fs) ? 0 : positive(fs, "#:shared-ffn", 3, FUNC_NAME);
    cfg.shared_gate = scm_is_true(scm_list_ref(shared, scm_from_int(2)));
    cfg.bias = scm_is_true(bias);
    cfg.dtype = moelab_to_dtype(dtype, 5, FUNC_NAME);
    if (!scm_is_null(router_options) && scm_is_true(router_options))
        moelab_router_options(router_options, &cfg.router, FUNC_NAME);
    cfg.seed = (uint64_t)non_negative(seed, "#:seed", 8, FUNC_NAME);
    cfg.device = moelab_to_device(device, 9, FUNC_NAME);
    /* last: nothing may raise between taking the group and making the layer */
    cfg.ep_group = moelab_to_group(ep_group, 7, FUNC_NAME);
    moe_layer *l;
    MOELAB_CHECK(FUNC_NAME, moe_layer_new(&l, &cfg));
    moelab_report_native_memory(); /* the parameters */
    return moelab_wrap_layer(l);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_layer_config, "%moe-layer-config", 1, 0, 0, (SCM layer),
           "The layer's configuration as an alist.")
#define FUNC_NAME "moe-layer-config"
{
    moe_layer *l = moelab_to_layer(layer, 1, FUNC_NAME);
    const moe_layer_config *c = moe_layer_get_config(l);
    moe_experts *ex = moe_layer_experts(l);
    int64_t Fs = c->shared_ffn ? c->shared_ffn : c->shared_experts * c->ffn;
    int64_t local = ex->E, ep = c->experts / (local > 0 ? local : 1);
    SCM r = scm_list_n(scm_cons(sym("hidden"), scm_from_int64(c->hidden)),
                       scm_cons(sym("ffn"), scm_from_int64(c->ffn)),
                       scm_cons(sym("experts"), scm_from_int64(c->experts)),
                       scm_cons(sym("top-k"), scm_from_int64(c->top_k)),
                       scm_cons(sym("activation"), sym(moe_activation_name(c->activation))),
                       scm_cons(sym("shared-ffn"), scm_from_int64(Fs)),
                       scm_cons(sym("shared-gate?"), scm_from_bool(c->shared_gate)),
                       scm_cons(sym("bias?"), scm_from_bool(c->bias)),
                       scm_cons(sym("dtype"), moelab_from_dtype(c->dtype)),
                       scm_cons(sym("router-dtype"), moelab_from_dtype(c->router.dtype)),
                       scm_cons(sym("ep-size"), scm_from_int64(ep)),
                       scm_cons(sym("local-experts"), scm_from_int64(local)),
                       scm_cons(sym("first-expert"), scm_from_int64(ex->first)),
                       scm_cons(sym("seed"), scm_from_uint64(c->seed)),
                       scm_cons(sym("device"), moelab_from_device(c->device)), SCM_UNDEFINED);
    scm_remember_upto_here_1(layer);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_forward, "%moe-forward", 4, 0, 0, (SCM layer, SCM x, SCM valid, SCM group),
           "The layer applied to X; see moe-forward.")
#define FUNC_NAME "moe-forward"
{
    moe_layer *l = moelab_to_layer(layer, 1, FUNC_NAME);
    moe_tensor *xt = moelab_unwrap(x, 2, FUNC_NAME);
    moe_tensor *vt = moelab_unwrap_opt(valid, 3, FUNC_NAME);
    (void)moelab_to_group(group, 4, FUNC_NAME); /* raises when no longer usable here */
    moe_tensor *out;
    MOELAB_CHECK(FUNC_NAME, moe_layer_forward(&out, l, xt, vt));
    scm_remember_upto_here_2(layer, x);
    scm_remember_upto_here_1(valid);
    return moelab_wrap(out);
}
#undef FUNC_NAME

static SCM int64_list(const int64_t *v, int64_t n)
{
    SCM r = SCM_EOL;
    for (int64_t i = n - 1; i >= 0; i--) r = scm_cons(scm_from_int64(v[i]), r);
    return r;
}

static SCM item_or_false(const moe_tensor *t)
{
    double v;
    if (!t || moe_tensor_item(t, &v) != MOE_OK) {
        moe_clear_error();
        return SCM_BOOL_F;
    }
    return scm_from_double(v);
}

SCM moelab_layer_routing_alist(const moe_layer *l)
{
    const moe_routing *rt = moe_layer_last_routing(l);
    const moe_dispatch *d = moe_layer_last_dispatch(l);
    if (!rt || !d) return SCM_BOOL_F;
    SCM aux = SCM_EOL;
    for (int i = rt->n_aux - 1; i >= 0; i--)
        aux = scm_cons(scm_cons(sym(moe_aux_kind_name(rt->aux_kind[i])), item_or_false(rt->aux[i])), aux);
    return scm_list_n(scm_cons(sym("weights"), moelab_wrap_retained(rt->weights)),
                      scm_cons(sym("experts"), moelab_wrap_retained(rt->experts)),
                      scm_cons(sym("kept"), moelab_wrap_retained(rt->kept)),
                      scm_cons(sym("counts"), moelab_wrap_retained(rt->counts)),
                      scm_cons(sym("tokens-per-expert"), int64_list(d->counts, d->E)),
                      scm_cons(sym("dropped"), scm_from_int64(rt->dropped)),
                      scm_cons(sym("capacity"), rt->capacity < 0 ? SCM_BOOL_F : scm_from_int64(rt->capacity)),
                      scm_cons(sym("tokens"), scm_from_int64(rt->tokens)),
                      scm_cons(sym("rows"), scm_from_int64(d->rows)),
                      scm_cons(sym("aux-losses"), aux),
                      scm_cons(sym("aux-total"), rt->n_aux ? item_or_false(rt->aux_total) : SCM_BOOL_F),
                      SCM_UNDEFINED);
}

SCM_DEFINE(moelab_moe_last_routing, "%moe-last-routing", 1, 0, 0, (SCM layer),
           "The routing record of the last forward; see moe-last-routing.")
#define FUNC_NAME "moe-last-routing"
{
    SCM r = moelab_layer_routing_alist(moelab_to_layer(layer, 1, FUNC_NAME));
    scm_remember_upto_here_1(layer);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_parameters, "%moe-parameters", 1, 0, 0, (SCM layer),
           "The live parameters as an alist name -> tensor; see moe-parameters.")
#define FUNC_NAME "moe-parameters"
{
    moe_layer *l = moelab_to_layer(layer, 1, FUNC_NAME);
    SCM r = SCM_EOL;
    for (int i = moe_layer_parameter_count(l) - 1; i >= 0; i--) {
        const char *name;
        moe_tensor *t;
        MOELAB_CHECK(FUNC_NAME, moe_layer_parameter(l, i, &name, &t));
        r = scm_cons(scm_cons(scm_from_utf8_string(name), moelab_wrap_retained(t)), r);
    }
    scm_remember_upto_here_1(layer);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_moe_parameter_x, "%set-moe-parameter!", 3, 0, 0, (SCM layer, SCM name, SCM value),
           "Copy VALUE into the parameter NAME; see set-moe-parameter!.")
#define FUNC_NAME "set-moe-parameter!"
{
    moe_layer *l = moelab_to_layer(layer, 1, FUNC_NAME);
    SCM_VALIDATE_STRING(2, name);
    moe_tensor *v = moelab_unwrap(value, 3, FUNC_NAME);
    char *cname = scm_to_utf8_string(name);
    moe_status st = moe_layer_set_parameter(l, cname, v);
    free(cname);
    if (st != MOE_OK) moelab_throw_last(FUNC_NAME);
    scm_remember_upto_here_2(layer, value);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_aux_loss, "%moe-aux-loss", 1, 0, 0, (SCM layer),
           "The weighted aux loss of the last forward, or #f; see moe-aux-loss.")
#define FUNC_NAME "moe-aux-loss"
{
    moe_layer *l = moelab_to_layer(layer, 1, FUNC_NAME);
    const moe_routing *rt = moe_layer_last_routing(l);
    /* the routing carries a zero total even without losses: #f says "none" */
    SCM r = rt && rt->n_aux ? moelab_wrap_retained(moe_layer_aux_loss(l)) : SCM_BOOL_F;
    scm_remember_upto_here_1(layer);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_zero_grad_x, "%moe-zero-grad!", 1, 0, 0, (SCM layer),
           "Drop every parameter's gradient.")
#define FUNC_NAME "moe-zero-grad!"
{
    moe_layer_zero_grad(moelab_to_layer(layer, 1, FUNC_NAME));
    scm_remember_upto_here_1(layer);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_training_x, "%moe-training!", 2, 0, 0, (SCM layer, SCM flag),
           "Switch training mode on or off.")
#define FUNC_NAME "moe-training!"
{
    moe_layer_set_training(moelab_to_layer(layer, 1, FUNC_NAME), scm_is_true(flag));
    scm_remember_upto_here_1(layer);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_training_p, "%moe-training?", 1, 0, 0, (SCM layer), "True in training mode.")
#define FUNC_NAME "moe-training?"
{
    moe_layer *l = moelab_to_layer(layer, 1, FUNC_NAME);
    SCM r = scm_from_bool(moe_router_get_config(moe_layer_router(l))->training);
    scm_remember_upto_here_1(layer);
    return r;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_step_x, "%moe-step!", 1, 0, 0, (SCM layer),
           "The router's end-of-step update; see moe-step!.")
#define FUNC_NAME "moe-step!"
{
    MOELAB_CHECK(FUNC_NAME, moe_router_step(moe_layer_router(moelab_to_layer(layer, 1, FUNC_NAME))));
    scm_remember_upto_here_1(layer);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_moe_metrics, "%moe-metrics", 1, 0, 0, (SCM layer),
           "The router's metrics as an alist; see moe-metrics.")
#define FUNC_NAME "moe-metrics"
{
    SCM r = moelab_router_metrics_alist(moe_layer_router(moelab_to_layer(layer, 1, FUNC_NAME)), FUNC_NAME);
    scm_remember_upto_here_1(layer);
    return r;
}
#undef FUNC_NAME

void moelab_init_layer_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "layer-func.x"
#endif
}
