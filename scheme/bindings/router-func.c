/* router-func.c — routers, routings, balance trackers and the standalone
 * load-balancing losses from Scheme (the foreign objects: router-type.c).
 * The documented procedures are in scheme/moelab/router.scm. Tensors handed
 * out are retained, so they outlive the object they came from.
 *
 * Errors come from the C core, which names the Scheme procedure (its op names
 * are the Scheme names) and leaves the router unchanged on failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bindings.h"


/* Raise the last C error naming SUBR; the core may name the operation
 * differently ("router-state-load!: …"), so its one-word prefix goes. */
#define ROUTER_CHECK(subr, expr)                                               \
    do {                                                                       \
        if ((expr) != MOE_OK) moelab_throw_last_from(subr, NULL);             \
    } while (0)

static bool bool_arg(SCM obj, int pos, const char *subr)
{
    if (!scm_is_bool(obj)) scm_wrong_type_arg_msg(subr, pos, obj, "boolean");
    return scm_is_true(obj);
}

/* ---- routers --------------------------------------------------------------------------- */

SCM_DEFINE(moelab_make_router, "%make-router", 1, 0, 0, (SCM options),
           "A router configured by the keyword list @var{options} (see make-router).")
#define FUNC_NAME "make-router"
{
    moe_router_config cfg;
    moe_router_config_default(&cfg);
    moelab_router_options(options, &cfg, FUNC_NAME);
    moe_router *r;
    ROUTER_CHECK(FUNC_NAME, moe_router_new(&r, &cfg));
    moelab_report_native_memory(); /* its weight */
    return moelab_wrap_router(r);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_config, "%router-config", 1, 0, 0, (SCM obj),
           "The effective configuration of a router as an alist.")
#define FUNC_NAME "router-config"
{
    SCM l = moelab_router_config_alist(moe_router_get_config(moelab_to_router(obj, 1, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    return l;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_weight, "%router-weight", 1, 0, 0, (SCM obj), "The gate weight [E D].")
#define FUNC_NAME "router-weight"
{
    SCM w = moelab_wrap_retained(moe_router_weight(moelab_to_router(obj, 1, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    return w;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_router_weight_x, "%set-router-weight!", 2, 0, 0, (SCM obj, SCM w),
           "Copy @var{w} [E D] into the gate weight.")
#define FUNC_NAME "set-router-weight!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_set_weight(r, moelab_unwrap(w, 2, FUNC_NAME)));
    scm_remember_upto_here_2(obj, w);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_bias, "%router-bias", 1, 0, 0, (SCM obj),
           "The expert bias [E] f32, or #f without one.")
#define FUNC_NAME "router-bias"
{
    SCM b = moelab_wrap_retained(moe_router_bias(moelab_to_router(obj, 1, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    return b;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_router_bias_x, "%set-router-bias!", 2, 0, 0, (SCM obj, SCM b),
           "Copy @var{b} [E] into the expert bias.")
#define FUNC_NAME "set-router-bias!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_set_bias(r, moelab_unwrap(b, 2, FUNC_NAME)));
    scm_remember_upto_here_2(obj, b);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_set_groups_x, "%router-set-groups!", 4, 0, 0, (SCM obj, SCM tp, SCM cp, SCM dp),
           "Set the tensor-, context- and data-parallel groups (#f: size 1).")
#define FUNC_NAME "router-set-groups!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    moe_group *gtp = moelab_to_group(tp, 2, FUNC_NAME);
    moe_group *gcp = moelab_to_group(cp, 3, FUNC_NAME);
    moe_group *gdp = moelab_to_group(dp, 4, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_set_groups(r, gtp, gcp, gdp)); /* takes references */
    scm_remember_upto_here_1(obj);
    scm_remember_upto_here_2(tp, cp);
    scm_remember_upto_here_1(dp);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_mode_x, "%router-mode!", 3, 0, 0, (SCM obj, SCM what, SCM on),
           "Set the router's @var{what} flag ('training or 'recomputing) to @var{on}.")
#define FUNC_NAME "router-mode!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    bool v = bool_arg(on, 3, FUNC_NAME);
    if (scm_is_eq(what, sym("training")))
        moe_router_set_training(r, v);
    else if (scm_is_eq(what, sym("recomputing")))
        moe_router_set_recomputing(r, v);
    else
        scm_wrong_type_arg_msg(FUNC_NAME, 2, what, "'training or 'recomputing");
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_grad_scale_x, "%router-grad-scale!", 3, 0, 0, (SCM obj, SCM m, SCM per_token),
           "Set gradient-accumulation steps @var{m} and per-token-loss mode.")
#define FUNC_NAME "router-grad-scale!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_set_grad_scale(r, moelab_to_int64(m, 2, FUNC_NAME),
                                                      bool_arg(per_token, 3, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_forward, "%router-forward", 5, 0, 0,
           (SCM obj, SCM x, SCM valid, SCM bounds, SCM ids),
           "Route @var{x}; @var{valid}, @var{bounds} and @var{ids} (replayed experts) may be #f.")
#define FUNC_NAME "router-forward"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    moe_tensor *tx = moelab_unwrap(x, 2, FUNC_NAME);
    moe_tensor *tv = moelab_unwrap_opt(valid, 3, FUNC_NAME);
    moe_tensor *tb = moelab_unwrap_opt(bounds, 4, FUNC_NAME);
    moe_tensor *ti = moelab_unwrap_opt(ids, 5, FUNC_NAME);
    moe_routing *out;
    ROUTER_CHECK(FUNC_NAME, moe_router_forward_ids(&out, r, tx, tv, tb, ti));
    scm_remember_upto_here_2(obj, x);
    scm_remember_upto_here_2(valid, bounds);
    scm_remember_upto_here_1(ids);
    moelab_report_native_memory(); /* weights, ids, kept, logits, the graph's saved scores */
    return moelab_wrap_routing(out);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_step_x, "%router-step!", 1, 0, 0, (SCM obj),
           "End of optimizer step: bias update, global buffers reset.")
#define FUNC_NAME "router-step!"
{
    ROUTER_CHECK(FUNC_NAME, moe_router_step(moelab_to_router(obj, 1, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_replay_x, "%router-replay!", 2, 0, 0, (SCM obj, SCM ids),
           "Play back the list @var{ids} of [T K] expert ids, one per forward ('() stops).")
#define FUNC_NAME "router-replay!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    long n = scm_ilength(ids);
    if (n < 0) scm_wrong_type_arg_msg(FUNC_NAME, 2, ids, "list of tensors");
    moe_tensor **list = scm_gc_malloc_pointerless(sizeof *list * (size_t)(n ? n : 1), "replay ids");
    long i = 0;
    for (SCM l = ids; scm_is_pair(l); l = SCM_CDR(l)) list[i++] = moelab_unwrap(SCM_CAR(l), 2, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_replay(r, n, list)); /* retains them */
    scm_remember_upto_here_2(obj, ids);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_record, "%router-record", 2, 0, 0, (SCM obj, SCM clear),
           "The recorded expert ids (a list of [T K] tensors); cleared when @var{clear}.")
#define FUNC_NAME "router-record"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    bool c = bool_arg(clear, 2, FUNC_NAME);
    int64_t n;
    moe_tensor *const *rec = moe_router_record(r, &n);
    SCM l = SCM_EOL;
    for (int64_t i = n - 1; i >= 0; i--) l = scm_cons(moelab_wrap_retained(rec[i]), l);
    if (c) moe_router_clear_record(r);
    scm_remember_upto_here_1(obj);
    return l;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_qb_beta, "%router-qb-beta", 1, 0, 0, (SCM obj),
           "A copy of the quantile-balancing β [E] f32, or #f.")
#define FUNC_NAME "router-qb-beta"
{
    moe_tensor *b = moe_router_qb_beta(moelab_to_router(obj, 1, FUNC_NAME)), *copy = NULL;
    if (b) ROUTER_CHECK(FUNC_NAME, moe_clone(&copy, b));
    scm_remember_upto_here_1(obj);
    return copy ? moelab_wrap(copy) : SCM_BOOL_F;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_set_router_qb_beta_x, "%set-router-qb-beta!", 2, 0, 0, (SCM obj, SCM b),
           "Copy @var{b} [E] into the quantile-balancing β.")
#define FUNC_NAME "set-router-qb-beta!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_set_qb_beta(r, moelab_unwrap(b, 2, FUNC_NAME)));
    scm_remember_upto_here_2(obj, b);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_metrics, "%router-metrics", 1, 0, 0, (SCM obj), "The router's metrics (alist).")
#define FUNC_NAME "router-metrics"
{
    SCM m = moelab_router_metrics_alist(moelab_to_router(obj, 1, FUNC_NAME), FUNC_NAME);
    scm_remember_upto_here_1(obj);
    return m;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_state, "%router-state", 1, 0, 0, (SCM obj),
           "The router's state as (bias counters); bias is #f without expert bias.")
#define FUNC_NAME "router-state"
{
    moe_tensor *bias, *counters;
    ROUTER_CHECK(FUNC_NAME, moe_router_state_save(moelab_to_router(obj, 1, FUNC_NAME), &bias, &counters));
    scm_remember_upto_here_1(obj);
    SCM c = moelab_wrap(counters);
    SCM b = bias ? moelab_wrap(bias) : SCM_BOOL_F;
    return scm_list_2(b, c);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_router_load_state_x, "%router-load-state!", 3, 0, 0, (SCM obj, SCM bias, SCM counters),
           "Restore what %router-state saved.")
#define FUNC_NAME "router-load-state!"
{
    moe_router *r = moelab_to_router(obj, 1, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_router_state_load(r, moelab_unwrap_opt(bias, 2, FUNC_NAME),
                                                  moelab_unwrap(counters, 3, FUNC_NAME)));
    scm_remember_upto_here_1(obj);
    scm_remember_upto_here_2(bias, counters);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- routings -------------------------------------------------------------------------- */

SCM_DEFINE(moelab_routing_ref, "%routing-ref", 2, 0, 0, (SCM obj, SCM field),
           "One part of a routing: a tensor (weights experts kept probs map logits counts "
           "aux-total) or a number (tokens capacity dropped).")
#define FUNC_NAME "routing-ref"
{
    moe_routing *o = moelab_to_routing(obj, 1, FUNC_NAME);
    char name[32];
    moelab_to_name(field, name, sizeof name, 2, FUNC_NAME, "symbol");
    SCM v;
    if (strcmp(name, "probs") == 0 || strcmp(name, "map") == 0) {
        ROUTER_CHECK(name[0] == 'p' ? "routing-probs" : "routing-map", moe_routing_dense(o));
        v = moelab_wrap_retained(name[0] == 'p' ? o->probs : o->map);
    } else if (strcmp(name, "weights") == 0) {
        v = moelab_wrap_retained(o->weights);
    } else if (strcmp(name, "experts") == 0) {
        v = moelab_wrap_retained(o->experts);
    } else if (strcmp(name, "kept") == 0) {
        v = moelab_wrap_retained(o->kept);
    } else if (strcmp(name, "logits") == 0) {
        v = moelab_wrap_retained(o->logits);
    } else if (strcmp(name, "counts") == 0) {
        v = moelab_wrap_retained(o->counts);
    } else if (strcmp(name, "aux-total") == 0) {
        v = moelab_wrap_retained(o->aux_total);
    } else if (strcmp(name, "tokens") == 0) {
        v = scm_from_int64(o->tokens);
    } else if (strcmp(name, "capacity") == 0) {
        v = o->capacity < 0 ? SCM_BOOL_F : scm_from_int64(o->capacity);
    } else if (strcmp(name, "dropped") == 0) {
        v = scm_from_int64(o->dropped);
    } else {
        scm_wrong_type_arg_msg(FUNC_NAME, 2, field, "routing field");
    }
    scm_remember_upto_here_1(obj);
    return v;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_routing_aux_losses, "%routing-aux-losses", 1, 0, 0, (SCM obj),
           "The unscaled losses of a routing: alist (kind . 0-d tensor).")
#define FUNC_NAME "routing-aux-losses"
{
    moe_routing *o = moelab_to_routing(obj, 1, FUNC_NAME);
    SCM l = SCM_EOL;
    for (int i = o->n_aux - 1; i >= 0; i--)
        l = scm_acons(sym(moe_aux_kind_name(o->aux_kind[i])), moelab_wrap_retained(o->aux[i]), l);
    scm_remember_upto_here_1(obj);
    return l;
}
#undef FUNC_NAME

/* ---- balance trackers ------------------------------------------------------------------- */

SCM_DEFINE(moelab_make_balance_tracker, "%make-balance-tracker", 2, 0, 0, (SCM experts, SCM groups),
           "A global-batch balance tracker over @var{experts}, its counts summed over each of "
           "the list @var{groups} in turn.")
#define FUNC_NAME "make-balance-tracker"
{
    int64_t E = moelab_to_int64(experts, 1, FUNC_NAME);
    if (scm_ilength(groups) < 0) scm_wrong_type_arg_msg(FUNC_NAME, 2, groups, "list of groups");
    moe_group *first = scm_is_pair(groups) ? moelab_to_group(SCM_CAR(groups), 2, FUNC_NAME) : NULL;
    moe_balance_tracker *tr;
    ROUTER_CHECK(FUNC_NAME, moe_balance_tracker_new(&tr, E, first));
    SCM obj = moelab_wrap_tracker(tr);
    if (scm_is_pair(groups))
        for (SCM l = SCM_CDR(groups); scm_is_pair(l); l = SCM_CDR(l)) {
            moe_group *g = moelab_to_group(SCM_CAR(l), 2, FUNC_NAME);
            if (g) ROUTER_CHECK(FUNC_NAME, moe_balance_tracker_add_group(tr, g));
        }
    scm_remember_upto_here_1(groups);
    return obj;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_balance_tracker_reset_x, "%balance-tracker-reset!", 1, 0, 0, (SCM obj),
           "Clear the tracker's buffer (end of optimizer step).")
#define FUNC_NAME "balance-tracker-reset!"
{
    moe_balance_tracker_reset(moelab_to_tracker(obj, 1, FUNC_NAME));
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_balance_tracker_buffer_x, "%balance-tracker-buffer!", 2, 0, 0, (SCM obj, SCM on),
           "Buffer mode on (accumulate over micro-batches) or off.")
#define FUNC_NAME "balance-tracker-buffer!"
{
    moe_balance_tracker_set_buffer(moelab_to_tracker(obj, 1, FUNC_NAME), bool_arg(on, 2, FUNC_NAME));
    scm_remember_upto_here_1(obj);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_balance_tracker_state, "%balance-tracker-state", 1, 0, 0, (SCM obj),
           "(counts tokens micro-batches experts buffer?) of a tracker.")
#define FUNC_NAME "balance-tracker-state"
{
    moe_balance_tracker *tr = moelab_to_tracker(obj, 1, FUNC_NAME);
    moe_tensor *counts;
    double tokens;
    ROUTER_CHECK(FUNC_NAME, moe_balance_tracker_counts(&counts, &tokens, tr));
    SCM l = scm_list_5(moelab_wrap(counts), scm_from_double(tokens),
                       scm_from_int64(moe_balance_tracker_micro_batches(tr)),
                       scm_from_int64(moe_balance_tracker_experts(tr)),
                       scm_from_bool(moe_balance_tracker_buffer(tr)));
    scm_remember_upto_here_1(obj);
    return l;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_balance_tracker_add_x, "%balance-tracker-add!", 3, 0, 0, (SCM obj, SCM counts, SCM tokens),
           "Add @var{counts} [E] and @var{tokens} to the buffer without a collective.")
#define FUNC_NAME "balance-tracker-add!"
{
    moe_balance_tracker *tr = moelab_to_tracker(obj, 1, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_balance_tracker_add_counts(tr, moelab_unwrap(counts, 2, FUNC_NAME),
                                                           moelab_to_double(tokens, 3, FUNC_NAME)));
    scm_remember_upto_here_2(obj, counts);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* The global-batch trackers inside a model's routers, for the one-process
 * reference of a data-parallel step (tests/scheme/dist-reference.scm): it
 * reads each buffer and loads it with what the other ranks would have added. */
static moe_balance_tracker *model_tracker(moe_model *m, int i)
{
    return moe_router_tracker(moe_layer_router(moe_model_moe_layer(m, i, NULL)));
}

SCM_DEFINE(moelab_model_balance_trackers, "%model-balance-trackers", 1, 0, 0, (SCM model),
           "Per MoE layer, (counts tokens micro-batches) of its router's global-batch "
           "tracker, or #f for a router without one.")
#define FUNC_NAME "model-balance-trackers"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    SCM out = SCM_EOL;
    for (int i = moe_model_moe_layer_count(m) - 1; i >= 0; i--) {
        moe_balance_tracker *tr = model_tracker(m, i);
        SCM e = SCM_BOOL_F;
        if (tr) {
            moe_tensor *counts;
            double tokens;
            ROUTER_CHECK(FUNC_NAME, moe_balance_tracker_counts(&counts, &tokens, tr));
            e = scm_list_3(moelab_wrap(counts), scm_from_double(tokens),
                           scm_from_int64(moe_balance_tracker_micro_batches(tr)));
        }
        out = scm_cons(e, out);
    }
    scm_remember_upto_here_1(model);
    return out;
}
#undef FUNC_NAME

SCM_DEFINE(moelab_model_load_balance_trackers_x, "%model-load-balance-trackers!", 2, 0, 0,
           (SCM model, SCM states),
           "Replace the buffers of the model's global-batch trackers: @var{states} holds "
           "per MoE layer #f (left alone) or (counts tokens micro-batches). Everything is "
           "checked before anything changes.")
#define FUNC_NAME "model-load-balance-trackers!"
{
    moe_model *m = moelab_to_model(model, 1, FUNC_NAME);
    int n = moe_model_moe_layer_count(m);
    if (scm_ilength(states) != n)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "tracker states for %ld MoE layers, the model has %d",
                     (long)scm_ilength(states), n);
    int i = 0;
    for (SCM l = states; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l);
        if (scm_is_false(e)) continue;
        moe_balance_tracker *tr = model_tracker(m, i);
        if (!tr)
            moelab_throw(FUNC_NAME, MOE_ERR_ARG, "MoE layer %d has no global-batch tracker to load", i);
        if (scm_ilength(e) != 3 || !moelab_is_tensor(SCM_CAR(e)) || !scm_is_real(SCM_CADR(e)) ||
            scm_to_double(SCM_CADR(e)) < 0 || !scm_is_signed_integer(SCM_CADDR(e), 0, INT64_MAX))
            moelab_throw(FUNC_NAME, MOE_ERR_ARG,
                         "tracker state %d is not (counts tokens micro-batches) with tokens >= 0 "
                         "and micro-batches an integer >= 0",
                         i);
        moe_tensor *c = moelab_unwrap(SCM_CAR(e), 2, FUNC_NAME);
        int64_t E = moe_balance_tracker_experts(tr);
        if (c->ndim != 1 || c->shape[0] != E)
            moelab_throw(FUNC_NAME, MOE_ERR_SHAPE, "tracker state %d: counts must be [%lld], got %s", i,
                         (long long)E, moe_shape_str(c));
    }
    i = 0;
    for (SCM l = states; scm_is_pair(l); l = SCM_CDR(l), i++) {
        SCM e = SCM_CAR(l);
        if (scm_is_false(e)) continue;
        ROUTER_CHECK(FUNC_NAME, moe_balance_tracker_load(model_tracker(m, i), moelab_unwrap(SCM_CAR(e), 2, FUNC_NAME),
                                                         scm_to_double(SCM_CADR(e)),
                                                         scm_to_int64(SCM_CADDR(e))));
    }
    scm_remember_upto_here_2(model, states);
    return SCM_UNSPECIFIED;
}
#undef FUNC_NAME

/* ---- standalone losses -------------------------------------------------------------------- */

/* OPTIONS: a keyword list from (moelab router): #:top-k #:score #:sigmoid-eps
 * #:score-offset #:valid #:doc-bounds #:routing-ids #:group #:tracker
 * #:loss-div-factor #:num-layers #:k-in-f?. The tensors and the tracker stay
 * reachable through OPTIONS, which the caller keeps alive. */
static void aux_options(moe_aux_options *o, SCM options, const char *subr)
{
    moe_aux_options_default(o);
    if (scm_ilength(options) < 0 || scm_ilength(options) % 2)
        scm_wrong_type_arg_msg(subr, 3, options, "keyword list");
    for (SCM l = options; scm_is_pair(l); l = SCM_CDDR(l)) {
        SCM key = SCM_CAR(l), v = SCM_CADR(l);
        char name[32];
        if (!scm_is_keyword(key)) scm_wrong_type_arg_msg(subr, 3, key, "keyword");
        moelab_to_name(scm_keyword_to_symbol(key), name, sizeof name, 3, subr, "symbol");
        if (strcmp(name, "top-k") == 0) {
            o->top_k = moelab_to_int64(v, 3, subr);
        } else if (strcmp(name, "score") == 0) {
            char s[32];
            moelab_to_name(v, s, sizeof s, 3, subr, "symbol");
            if (!moe_score_fn_parse(s, &o->score))
                moelab_throw(subr, MOE_ERR_ARG, "#:score expects softmax, sigmoid or sqrtsoftplus, got %s", s);
        } else if (strcmp(name, "sigmoid-eps") == 0) {
            o->sigmoid_eps = moelab_to_double(v, 3, subr);
        } else if (strcmp(name, "score-offset") == 0) {
            o->score_offset = moelab_to_double(v, 3, subr);
        } else if (strcmp(name, "valid") == 0) {
            o->valid = moelab_unwrap_opt(v, 3, subr);
        } else if (strcmp(name, "doc-bounds") == 0) {
            o->doc_bounds = moelab_unwrap_opt(v, 3, subr);
        } else if (strcmp(name, "routing-ids") == 0) {
            o->routing_ids = moelab_unwrap_opt(v, 3, subr);
        } else if (strcmp(name, "group") == 0) {
            o->group = moelab_to_group(v, 3, subr);
        } else if (strcmp(name, "tracker") == 0) {
            o->tracker = scm_is_false(v) ? NULL : moelab_to_tracker(v, 3, subr);
        } else if (strcmp(name, "loss-div-factor") == 0) {
            o->loss_div_factor = moelab_to_double_or(v, 0, 3, subr);
        } else if (strcmp(name, "num-layers") == 0) {
            o->num_layers = moelab_to_int64(v, 3, subr);
        } else if (strcmp(name, "k-in-f?") == 0) {
            o->k_in_f = bool_arg(v, 3, subr);
        } else if (strcmp(name, "convention") == 0) {
            char cv[32];
            if (!moelab_name_text(v, cv, sizeof cv) || !moe_convention_parse(cv, &o->convention)) {
                char *shown = scm_to_utf8_string(scm_object_to_string(v, SCM_UNDEFINED));
                char text[256];
                snprintf(text, sizeof text, "%s", shown);
                free(shown);
                moelab_throw(subr, MOE_ERR_ARG, "#:convention expects one of exact megatron, got %s", text);
            }
        } else {
            moelab_throw(subr, MOE_ERR_ARG, "unknown option #:%s", name);
        }
    }
}

static moe_aux_kind kind_arg(SCM kind, int pos, const char *subr)
{
    char name[64];
    moe_aux_kind k;
    moelab_to_name(kind, name, sizeof name, pos, subr, "symbol");
    if (!moe_aux_kind_parse(name, &k))
        moelab_throw(subr, MOE_ERR_ARG,
                     "unknown loss kind '%s'; known: micro-batch sequence global-batch "
                     "olmo-local-batch olmo-instance megablocks z",
                     name);
    return k;
}

SCM_DEFINE(moelab_load_balancing_loss, "%load-balancing-loss", 3, 0, 0, (SCM kind, SCM logits, SCM options),
           "The unscaled balance loss @var{kind} of @var{logits}.")
#define FUNC_NAME "load-balancing-loss"
{
    moe_aux_kind k = kind_arg(kind, 1, FUNC_NAME);
    moe_tensor *z = moelab_unwrap(logits, 2, FUNC_NAME), *out;
    moe_aux_options o;
    aux_options(&o, options, FUNC_NAME);
    ROUTER_CHECK(FUNC_NAME, moe_load_balancing_loss(&out, k, z, &o));
    scm_remember_upto_here_2(logits, options);
    return moelab_wrap(out);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_z_loss, "%z-loss", 3, 0, 0, (SCM logits, SCM valid, SCM div),
           "The router z-loss of @var{logits} (the sum over valid tokens divided by @var{div}, "
           "or their mean for #f).")
#define FUNC_NAME "z-loss"
{
    moe_tensor *out;
    double d = moelab_to_double_or(div, 0, 3, FUNC_NAME);
    if (!scm_is_false(div) && !(d > 0))
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "#:div-factor must be > 0 (or #f for the mean), got %g", d);
    ROUTER_CHECK(FUNC_NAME, moe_z_loss_div(&out, moelab_unwrap(logits, 1, FUNC_NAME),
                                           moelab_unwrap_opt(valid, 2, FUNC_NAME), d));
    scm_remember_upto_here_2(logits, valid);
    return moelab_wrap(out);
}
#undef FUNC_NAME

SCM_DEFINE(moelab_megablocks_batched_loss, "%megablocks-batched-loss", 3, 0, 0,
           (SCM logits, SCM ids, SCM options),
           "MegaBlocks' loss over a list of layers' logits (and routing ids, or #f).")
#define FUNC_NAME "megablocks-batched-loss"
{
    long n = scm_ilength(logits);
    if (n < 1 || n > INT32_MAX) scm_wrong_type_arg_msg(FUNC_NAME, 1, logits, "non-empty list of tensors");
    if (!scm_is_false(ids) && scm_ilength(ids) != n)
        moelab_throw(FUNC_NAME, MOE_ERR_ARG, "%ld logits but %ld routing-ids given", n, scm_ilength(ids));
    /* collected memory: nothing leaks when an argument check raises */
    moe_tensor **z = scm_gc_malloc_pointerless((size_t)n * sizeof *z, "logits");
    moe_tensor **r = scm_is_false(ids) ? NULL : scm_gc_malloc_pointerless((size_t)n * sizeof *r, "ids");
    long i = 0;
    for (SCM l = logits; scm_is_pair(l); l = SCM_CDR(l)) z[i++] = moelab_unwrap(SCM_CAR(l), 1, FUNC_NAME);
    i = 0;
    for (SCM l = ids; r && scm_is_pair(l); l = SCM_CDR(l)) r[i++] = moelab_unwrap_opt(SCM_CAR(l), 2, FUNC_NAME);
    moe_aux_options o;
    aux_options(&o, options, FUNC_NAME);
    moe_tensor *out;
    ROUTER_CHECK(FUNC_NAME, moe_megablocks_batched_loss(&out, (int)n, z, r, &o));
    scm_remember_upto_here_2(logits, ids);
    scm_remember_upto_here_1(options);
    return moelab_wrap(out);
}
#undef FUNC_NAME

/* ---- balance statistics ------------------------------------------------------------------ */

SCM_DEFINE(moelab_balance_stats, "%balance-stats", 1, 0, 0, (SCM counts),
           "Balance statistics of @var{counts} [E] as an alist.")
#define FUNC_NAME "balance-stats"
{
    moe_balance_stats s;
    ROUTER_CHECK(FUNC_NAME, moe_balance_stats_compute(&s, moelab_unwrap(counts, 1, FUNC_NAME)));
    scm_remember_upto_here_1(counts);
    return scm_list_5(scm_cons(sym("max-violation"), scm_from_double(s.max_violation)),
                      scm_cons(sym("cv"), scm_from_double(s.cv)),
                      scm_cons(sym("max-over-mean"), scm_from_double(s.max_over_mean)),
                      scm_cons(sym("dead-fraction"), scm_from_double(s.dead_fraction)),
                      scm_cons(sym("total"), scm_from_double(s.total)));
}
#undef FUNC_NAME

SCM_DEFINE(moelab_max_violation, "%max-violation", 1, 0, 0, (SCM counts), "MaxVio of @var{counts} [E].")
#define FUNC_NAME "max-violation"
{
    double v;
    ROUTER_CHECK(FUNC_NAME, moe_max_violation(&v, moelab_unwrap(counts, 1, FUNC_NAME)));
    scm_remember_upto_here_1(counts);
    return scm_from_double(v);
}
#undef FUNC_NAME

void moelab_init_router_func(void)
{
#ifndef SCM_MAGIC_SNARFER
#include "router-func.x"
#endif
}
